//! Chorus signaling over HTTP: the WebSocket at `/ws`, a small REST API under `/api`,
//! Prometheus metrics at `/metrics`, and the static frontend.

pub mod admin;
pub mod auth;
pub mod broadcast;
pub mod limits;
pub mod metrics;
mod node_link;
pub mod origin;
pub mod session;
#[cfg(test)]
mod test_hub;

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chorus_protocol::ErrorCode;
use chorus_sfu::Hub;
use futures_util::{SinkExt, StreamExt};

pub use auth::{Auth, AuthMode};
pub use limits::{IpLimitSettings, IpLimits};
pub use metrics::MetricsSettings;
pub use session::{ClientAddr, Frame, SESSION_QUEUE, SessionLimits};

/// The WebSocket layer's read buffer per connection. Its default (128 KiB, allocated when
/// the socket opens) made an idle lobby page cost the server about 130 KiB; signaling
/// messages are a few hundred bytes to a few KiB (an SDP), and a larger frame is still
/// read whole, the buffer growing for it, up to the message size limit.
const WS_READ_BUFFER: usize = 4 * 1024;

/// Bytes the WebSocket layer collects before it writes to the socket. Every message is
/// flushed as it is sent, so this only bounds the batching within one send.
const WS_WRITE_BUFFER: usize = 4 * 1024;

/// What the HTTP side needs.
#[derive(Clone)]
pub struct SignalConfig {
    pub limits: SessionLimits,
    /// The folder the frontend is served from.
    pub frontend_dir: PathBuf,
    /// Who may join, and whether the room list is public.
    pub auth: Arc<Auth>,
    /// Notified by the admin API's drain request; the server then drains and stops.
    pub drain: Arc<tokio::sync::Notify>,
    /// Origins besides the server's own whose pages may open `/ws` (see [`origin`]).
    pub allowed_origins: Vec<String>,
    /// WebSockets and joins per client IP.
    pub ip_limits: IpLimitSettings,
    /// Whether and how `/metrics` is served.
    pub metrics: MetricsSettings,
    /// This node's cluster membership (`[cluster]`), if it is one of several: joins are
    /// placed through it and room lists show the whole cluster. None: a single server.
    pub cluster: Option<chorus_cluster::Cluster>,
}

#[derive(Clone)]
pub(crate) struct AppState {
    hub: Hub,
    config: Arc<SignalConfig>,
    ip_limits: IpLimits,
    /// The live WHIP and WHEP sessions.
    broadcast: Arc<broadcast::Registry>,
}

/// The application's routes.
pub fn router(hub: Hub, config: SignalConfig) -> Router {
    let metrics = metrics::routes(hub.clone(), &config.metrics);
    let state = AppState {
        hub,
        ip_limits: IpLimits::new(config.ip_limits.clone()),
        config: Arc::new(config),
        broadcast: Arc::default(),
    };
    Router::new()
        .merge(admin::routes())
        .merge(broadcast::routes())
        .route("/ws", get(ws))
        .route("/api/rooms", get(rooms))
        .route("/api/stats", get(stats))
        .route("/api/cluster", get(cluster_status))
        .route(chorus_cluster::link::LINK_PATH, get(node_link::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(index))
        .route("/connectivity", get(connectivity))
        .route("/{*path}", get(asset))
        .with_state(state)
        .merge(metrics)
}

/// An error of the HTTP API, as typed JSON: `{"code": ..., "message": ...}`, with the
/// same codes as the WebSocket's `error` message.
pub fn api_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = chorus_protocol::api::ApiError {
        code,
        message: message.to_owned(),
    };
    (status, axum::Json(body)).into_response()
}

async fn ws(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let origin = header(header::ORIGIN);
    // A page served by another node of the cluster may open a session here (a redirect).
    let cluster_page = match (&state.config.cluster, origin) {
        (Some(cluster), Some(origin)) => cluster.is_node_origin(origin),
        _ => false,
    };
    if !cluster_page
        && !origin::allowed(origin, header(header::HOST), &state.config.allowed_origins)
    {
        tracing::warn!(?origin, "WebSocket refused: origin not allowed");
        return api_error(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this page's origin may not open a session here (http.allowed_origins)",
        );
    }
    // The transport limit is generous; the session answers frames over the configured
    // limit with a typed error and stays open. Beyond this one the socket closes.
    let ip = state.ip_limits.client_ip(peer, &headers);
    let Some(connection) = state.ip_limits.connect(ip) else {
        tracing::warn!(%ip, "WebSocket refused: too many from one address");
        return api_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many open sessions from your address (limits.max_connections_per_ip)",
        );
    };
    let client = ClientAddr {
        ip,
        limits: state.ip_limits.clone(),
    };
    let transport_limit = state
        .config
        .limits
        .max_message_bytes
        .saturating_mul(8)
        .max(1 << 20);
    upgrade
        .max_message_size(transport_limit)
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            serve_socket(state, client, socket).await;
            drop(connection);
        })
}

async fn serve_socket(state: AppState, client: ClientAddr, socket: WebSocket) {
    let (sink, stream) = socket.split();
    let stream = stream.filter_map(|message| async move {
        match message {
            Ok(Message::Text(text)) => Some(Frame::Text(text.as_str().to_owned())),
            Ok(Message::Binary(bytes)) => Some(Frame::Binary(bytes.len())),
            Ok(Message::Close(_)) | Err(_) => Some(Frame::Close),
            // The WebSocket layer answers pings itself; either is a sign of life.
            Ok(Message::Ping(_) | Message::Pong(_)) => Some(Frame::Pong),
        }
    });
    let sink = sink.with(|frame: Frame| async move {
        Ok::<_, axum::Error>(match frame {
            Frame::Text(text) => Message::Text(text.into()),
            Frame::Ping => Message::Ping(Default::default()),
            Frame::Binary(_) | Frame::Close | Frame::Pong => Message::Close(None),
        })
    });
    session::run(
        state.hub,
        state.config.cluster.clone(),
        state.config.limits,
        state.config.auth.clone(),
        client,
        Box::pin(sink),
        Box::pin(stream),
    )
    .await;
}

async fn rooms(State(state): State<AppState>) -> Response {
    if !state.config.auth.room_list_is_public() {
        return api_error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "this server lists its rooms only to invited participants",
        );
    }
    axum::Json(serde_json::json!({ "rooms": state.room_list() })).into_response()
}

/// The cluster as this node sees it: the live nodes and their load, and the counters of
/// placement (404 for a server that is not in a cluster).
async fn cluster_status(State(state): State<AppState>) -> Response {
    match &state.config.cluster {
        Some(cluster) => axum::Json(cluster.status()).into_response(),
        None => api_error(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownRoom,
            "this server is not in a cluster ([cluster] in the config)",
        ),
    }
}

impl AppState {
    /// The room list: the whole cluster's in a cluster, else this server's.
    pub(crate) fn room_list(&self) -> Vec<chorus_protocol::RoomSummary> {
        match &self.config.cluster {
            Some(cluster) => cluster.room_list(),
            None => self.hub.room_list(),
        }
    }
}

async fn stats(State(state): State<AppState>) -> Response {
    axum::Json(state.hub.stats()).into_response()
}

async fn index(State(state): State<AppState>) -> Response {
    serve_file(&state.config.frontend_dir, Path::new("index.html")).await
}

async fn connectivity(State(state): State<AppState>) -> Response {
    serve_file(&state.config.frontend_dir, Path::new("connectivity.html")).await
}

async fn asset(State(state): State<AppState>, UrlPath(path): UrlPath<String>) -> Response {
    let relative = Path::new(&path);
    // Only plain names: no `..`, no absolute paths.
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    serve_file(&state.config.frontend_dir, relative).await
}

async fn serve_file(dir: &Path, relative: &Path) -> Response {
    let path = dir.join(relative);
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type(&path)),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}
