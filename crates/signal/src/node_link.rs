//! `GET /cluster/link`: the WebSocket where other nodes of the cluster open node links to
//! this one. The handshake and what follows it live in `chorus_cluster`; this module
//! only pumps the socket's frames to it.

use std::net::SocketAddr;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chorus_cluster::Cluster;
use chorus_cluster::links::{self, Frame, Incoming};
use chorus_protocol::ErrorCode;
use futures_util::StreamExt;

use crate::{AppState, api_error};

/// The largest frame a node link takes: handshake messages are a few hundred bytes, and
/// an RTP packet with its framing stays well under this.
const MAX_LINK_FRAME: usize = 64 * 1024;

pub(crate) async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(cluster) = state.config.cluster.clone() else {
        return api_error(
            StatusCode::NOT_FOUND,
            ErrorCode::ClusterUnavailable,
            "this server is not in a cluster ([cluster] in the config)",
        );
    };
    // Every attempt costs a Redis read: the same per-address cap as sessions.
    let ip = state.ip_limits.client_ip(peer, &headers);
    let Some(connection) = state.ip_limits.connect(ip) else {
        return api_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many open connections from your address (limits.max_connections_per_ip)",
        );
    };
    upgrade
        .max_message_size(MAX_LINK_FRAME)
        .on_upgrade(move |socket| async move {
            serve(cluster, socket).await;
            drop(connection);
        })
}

async fn serve(cluster: Cluster, socket: WebSocket) {
    let (sink, stream) = socket.split();
    let (conn, reader, writer) = links::pump(
        sink,
        stream,
        |frame| match frame {
            Frame::Text(text) => Message::Text(text.into()),
            Frame::Binary(bytes) => Message::Binary(bytes.into()),
        },
        |message| match message {
            Message::Text(text) => Incoming::Frame(Frame::Text(text.as_str().to_owned())),
            Message::Binary(bytes) => Incoming::Frame(Frame::Binary(bytes.to_vec())),
            Message::Close(_) => Incoming::Close,
            Message::Ping(_) | Message::Pong(_) => Incoming::Skip,
        },
    );
    cluster.accept_link(conn).await;
    reader.abort();
    let _ = writer.await;
}
