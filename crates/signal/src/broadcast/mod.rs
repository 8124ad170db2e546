//! Broadcast tools in and out over plain HTTP: WHIP ingest (RFC 9725) at `/whip/{room}`
//! and WHEP playback at `/whep/{room}` (see `docs/whip-whep.md`).
//!
//! Both are adapters over the room machinery the WebSocket sessions use: a WHIP publisher
//! joins its room through [`Hub::join`](chorus_sfu::Hub::join) like any participant, with
//! a message queue that the adapter owns instead of a WebSocket, and its offer goes to the
//! room as a `publishOffer`. What is shared here: the problem bodies (RFC 9457), CORS, and
//! the table of live sessions that `DELETE` ends.

pub mod whep;
pub mod whip;

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_cluster::JoinRoute;
use chorus_protocol::{ClientMessage, ErrorCode, ParticipantId, RoomId, ServerMessage};
use chorus_sfu::Membership;
use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::auth::unix_now;
use crate::origin;

/// The live WHIP and WHEP sessions of the server.
#[derive(Default)]
pub struct Registry {
    pub whip: Arc<Sessions<Session>>,
    pub whep: Arc<Sessions<Session>>,
}

/// The methods of a session resource.
const RESOURCE_METHODS: &str = "OPTIONS, PATCH, DELETE";

/// One live WHIP or WHEP session: a participant whose message queue the adapter reads.
pub struct Session {
    pub room: RoomId,
    pub participant: ParticipantId,
    /// The client's ICE username fragment from its offer: a `PATCH` with another one is
    /// an ICE restart.
    pub(crate) client_ufrag: Option<String>,
    /// Taken by `DELETE`, which ends the participant with it.
    pub(crate) membership: Mutex<Option<Membership>>,
}

/// Reads and drops the participant's messages until the room lets it go (the queue
/// ends, or `bye`), then forgets the session.
pub(crate) async fn drain(
    sessions: Arc<Sessions<Session>>,
    id: String,
    session: Arc<Session>,
    mut from_room: mpsc::Receiver<ServerMessage>,
    what: &'static str,
) {
    let reason = loop {
        match from_room.recv().await {
            Some(ServerMessage::Bye { reason }) => break format!("{reason:?}"),
            None => break "left".to_owned(),
            Some(_) => {}
        }
    };
    forget(&sessions, &id, &session, &reason, what);
}

/// Forgets a session whose participant the room has let go.
pub(crate) fn forget(
    sessions: &Sessions<Session>,
    id: &str,
    session: &Arc<Session>,
    reason: &str,
    what: &str,
) {
    // The room has let the participant go: nothing to tell it.
    drop(session.membership.lock().map(|mut m| m.take()));
    if sessions.get(id).is_some_and(|s| Arc::ptr_eq(&s, session)) {
        sessions.remove(id);
    }
    tracing::info!(room = %session.room, participant = %session.participant, session = %id, %reason, "{what} session ended");
}

/// The methods of `/whip/{room}` and `/whep/{room}`.
const ENDPOINT_METHODS: &str = "OPTIONS, POST";

/// `OPTIONS` on `/whip/{room}` or `/whep/{room}`: CORS preflight for `POST`.
pub(crate) async fn endpoint_options(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    headers: HeaderMap,
) -> Response {
    match Cors::of(&headers, &state.config.allowed_origins) {
        Cors::Refused => Cors::refusal(),
        cors => cors.preflight(ENDPOINT_METHODS),
    }
}

/// Answers a `POST /whip/{room}` or `/whep/{room}`: refused for an origin outside the
/// policy, else `work` runs on a task of its own (a client that hangs up mid-request must
/// not leave a participant joined without its peer, which would have nothing to time out)
/// and its response gets the CORS headers.
pub(crate) async fn answer_post<F>(
    state: crate::AppState,
    headers: HeaderMap,
    work: impl FnOnce(crate::AppState, HeaderMap) -> F,
) -> Response
where
    F: std::future::Future<Output = Response> + Send + 'static,
{
    let cors = Cors::of(&headers, &state.config.allowed_origins);
    if matches!(cors, Cors::Refused) {
        return Cors::refusal();
    }
    let work = tokio::spawn(work(state, headers));
    cors.apply(work.await.unwrap_or_else(|_| internal_error()))
}

/// `OPTIONS` on a session resource: CORS preflight for `PATCH` and `DELETE`.
pub(crate) async fn resource_options(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    headers: HeaderMap,
) -> Response {
    match Cors::of(&headers, &state.config.allowed_origins) {
        Cors::Refused => Cors::refusal(),
        cors => cors.preflight(RESOURCE_METHODS),
    }
}

/// `PATCH` on a session resource: trickled candidates are accepted and ignored (`204`);
/// an ICE restart is refused (`422`).
pub(crate) fn patch_resource(
    state: &crate::AppState,
    sessions: &Sessions<Session>,
    room: &str,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let cors = Cors::of(headers, &state.config.allowed_origins);
    if matches!(cors, Cors::Refused) {
        return Cors::refusal();
    }
    let Some(session) = sessions.get(id).filter(|s| s.room.as_str() == room) else {
        return cors.apply(unknown_session());
    };
    if !has_content_type(headers, TRICKLE_FRAGMENT) {
        return cors.apply(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::InvalidMessage,
            "PATCH takes Content-Type: application/trickle-ice-sdpfrag",
        ));
    }
    let fragment = String::from_utf8_lossy(body);
    let restart = ice_ufrag(&fragment)
        .is_some_and(|ufrag| session.client_ufrag.as_deref().is_some_and(|u| u != ufrag));
    if restart {
        return cors.apply(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidCandidate,
            "ICE restarts are not supported: DELETE the session and start again",
        ));
    }
    cors.apply(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE` on a session resource: the participant leaves.
pub(crate) async fn delete_resource(
    state: &crate::AppState,
    sessions: &Sessions<Session>,
    room: &str,
    id: &str,
    headers: &HeaderMap,
) -> Response {
    let cors = Cors::of(headers, &state.config.allowed_origins);
    if matches!(cors, Cors::Refused) {
        return Cors::refusal();
    }
    let found = sessions
        .get(id)
        .filter(|s| s.room.as_str() == room)
        .and_then(|_| sessions.remove(id));
    let Some(session) = found else {
        return cors.apply(unknown_session());
    };
    let membership = session.membership.lock().ok().and_then(|mut m| m.take());
    if let Some(membership) = membership {
        membership.send(ClientMessage::Leave).await;
    }
    tracing::info!(%room, participant = %session.participant, session = %id, "session deleted");
    cors.apply(StatusCode::OK.into_response())
}

/// The answer when a request's task failed (it panicked): nothing of it is left running.
pub(crate) fn internal_error() -> Response {
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        "the request failed inside the server",
    )
}

fn unknown_session() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        ErrorCode::UnknownParticipant,
        "no such session (it ended, or it never existed)",
    )
}

/// The first `a=ice-ufrag:` of an SDP or SDP fragment.
pub(crate) fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
}

/// The WHIP and WHEP routes.
pub(crate) fn routes() -> axum::Router<crate::AppState> {
    use axum::routing::{options, post};
    axum::Router::new()
        .route("/whip/{room}", post(whip::post).options(endpoint_options))
        .route(
            "/whip/{room}/{session}",
            options(resource_options)
                .patch(whip::patch)
                .delete(whip::delete),
        )
        .route("/whep/{room}", post(whep::post).options(endpoint_options))
        .route(
            "/whep/{room}/{session}",
            options(resource_options)
                .patch(whep::patch)
                .delete(whep::delete),
        )
}

/// The media type of an SDP offer or answer (RFC 9725 section 4.2).
pub const SDP: &str = "application/sdp";
/// The media type of a trickled ICE fragment (RFC 8840).
pub const TRICKLE_FRAGMENT: &str = "application/trickle-ice-sdpfrag";
/// The media type of an error body (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error of the WHIP/WHEP endpoints, as an RFC 9457 problem: `type`, `title`, `status`,
/// `detail`, and the `code` the WebSocket's `error` message would carry.
pub fn problem(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> Response {
    let code_name = serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let body = serde_json::json!({
        "type": format!("https://chorus.invalid/problems/{code_name}"),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail.into(),
        "code": code,
    });
    (
        status,
        [(header::CONTENT_TYPE, PROBLEM_JSON)],
        body.to_string(),
    )
        .into_response()
}

/// Whether the request's `Content-Type` is `expected` (parameters such as `charset` and
/// letter case aside).
pub fn has_content_type(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The CORS decision for one request: browser WHIP/WHEP clients on other origins are
/// let in by the same `http.allowed_origins` policy as the WebSocket (see [`origin`]).
/// Requests without `Origin` (OBS, ffmpeg, GStreamer, aiortc) are not browsers and pass.
#[derive(Debug, Clone)]
pub enum Cors {
    /// No `Origin`: no CORS headers.
    NotBrowser,
    /// An allowed origin, echoed in `Access-Control-Allow-Origin`.
    Allowed(HeaderValue),
    /// An origin the policy refuses.
    Refused,
}

impl Cors {
    pub fn of(headers: &HeaderMap, allowed: &[String]) -> Self {
        let value = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let Some(origin_header) = headers.get(header::ORIGIN) else {
            return Cors::NotBrowser;
        };
        if origin::allowed(value(header::ORIGIN), value(header::HOST), allowed) {
            Cors::Allowed(origin_header.clone())
        } else {
            Cors::Refused
        }
    }

    /// The refusal of a cross-origin request the policy does not allow.
    pub fn refusal() -> Response {
        problem(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this page's origin may not use this endpoint (http.allowed_origins)",
        )
    }

    /// Adds the CORS headers an actual (not preflight) response needs.
    pub fn apply(&self, mut response: Response) -> Response {
        if let Cors::Allowed(origin) = self {
            let headers = response.headers_mut();
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(header::VARY, HeaderValue::from_static("Origin"));
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("Location, Link, ETag, Accept-Patch, Accept-Post"),
            );
        }
        response
    }

    /// The answer to a preflight (`OPTIONS`) for a resource that takes `methods`.
    pub fn preflight(&self, methods: &'static str) -> Response {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::ALLOW, HeaderValue::from_static(methods));
        if methods.contains("POST") {
            headers.insert("accept-post", HeaderValue::from_static(SDP));
        }
        if let Cors::Allowed(origin) = self {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(header::VARY, HeaderValue::from_static("Origin"));
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(methods),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization, Content-Type, If-Match"),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
        response
    }
}

/// The checks every offer passes before anything is created for it: the room name,
/// the content type, the size, a quick look at the SDP, and the token. Returns the room,
/// the offer and what the token (or open mode) admits.
// The refusal is the response itself, built once per refused request: boxing it buys
// nothing.
#[allow(clippy::result_large_err)]
pub(crate) fn accept_offer(
    state: &crate::AppState,
    room: String,
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> Result<(RoomId, String, crate::auth::Admitted), Response> {
    let room = match RoomId::new(room) {
        Ok(room) => room,
        Err(err) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidMessage,
                err.to_string(),
            ));
        }
    };
    if !has_content_type(headers, SDP) {
        return Err(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::InvalidMessage,
            format!("a {what} offer is sent as Content-Type: application/sdp"),
        ));
    }
    let max = state.config.limits.max_sdp_bytes;
    if body.len() > max {
        return Err(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::LimitReached,
            format!(
                "an SDP of {} bytes is over the limit of {max} (limits.max_sdp_bytes)",
                body.len()
            ),
        ));
    }
    let sdp = match check_offer(body) {
        Ok(sdp) => sdp.to_owned(),
        Err((code, detail)) => return Err(problem(StatusCode::BAD_REQUEST, code, detail)),
    };
    let admitted = match state.config.auth.admit(bearer(headers), &room, unix_now()) {
        Ok(admitted) => admitted,
        Err(err) => {
            tracing::info!(%room, %err, "{what} request refused");
            let mut response = problem(StatusCode::UNAUTHORIZED, err.code(), err.to_string());
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Err(response);
        }
    };
    Ok((room, sdp, admitted))
}

/// In a cluster, whether the room lives on this node: else `307 Temporary Redirect` to the
/// same endpoint on the room's node (RFC 9725 section 4.5 lets WHIP and WHEP clients
/// follow it), or `503` when the cluster cannot say (Redis unreachable, every node
/// draining). `query` is the endpoint's query string, kept across the redirect.
pub(crate) async fn placed_here(
    state: &crate::AppState,
    endpoint: &str,
    room: &RoomId,
    query: Option<(&str, &str)>,
) -> Result<(), Response> {
    let Some(cluster) = &state.config.cluster else {
        return Ok(());
    };
    match cluster.route_join(room).await {
        Ok(JoinRoute::Local) => Ok(()),
        Ok(JoinRoute::Redirect { url, .. }) => {
            let mut location = format!(
                "{}/{endpoint}/{}",
                chorus_cluster::record::http_url(&url),
                whip::encode_segment(room.as_str())
            );
            if let Some((key, value)) = query {
                location.push_str(&format!("?{key}={}", whip::encode_segment(value)));
            }
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            Err(response)
        }
        Err(err) => Err(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ClusterUnavailable,
            err.to_string(),
        )),
    }
}

/// The per-address join limit, which WHIP and WHEP sessions count towards like joins.
#[allow(clippy::result_large_err)]
pub(crate) fn allow_join(
    state: &crate::AppState,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
) -> Result<(), Response> {
    let ip = state.ip_limits.client_ip(peer, headers);
    if state.ip_limits.allow_join(ip, std::time::Instant::now()) {
        Ok(())
    } else {
        Err(problem(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many joins from your address in the last minute",
        ))
    }
}

/// A quick look at an offer before anything is created for it: a clear 400 for what is
/// not an SDP at all or carries no audio or video. webrtc-rs checks the rest when the
/// offer is applied.
pub fn check_offer(body: &[u8]) -> Result<&str, (ErrorCode, String)> {
    let text = std::str::from_utf8(body).map_err(|_| {
        (
            ErrorCode::InvalidSdp,
            "the offer is not UTF-8 text".to_owned(),
        )
    })?;
    if !text.trim_start().starts_with("v=0") {
        return Err((
            ErrorCode::InvalidSdp,
            "the body is not an SDP offer (it must start with v=0)".to_owned(),
        ));
    }
    let media = text
        .lines()
        .filter(|l| l.starts_with("m=audio ") || l.starts_with("m=video "))
        .count();
    if media == 0 {
        return Err((
            ErrorCode::InvalidSdp,
            "the offer has no audio or video section".to_owned(),
        ));
    }
    Ok(text)
}

/// The live sessions of one kind, by their resource id (the last segment of the
/// `Location` URL, random and unguessable: it is what lets its holder end the session).
pub struct Sessions<T> {
    map: DashMap<String, Arc<T>>,
}

impl<T> Default for Sessions<T> {
    fn default() -> Self {
        Self {
            map: DashMap::new(),
        }
    }
}

impl<T> Sessions<T> {
    /// Registers a session under a fresh id; returns the id.
    pub fn insert(&self, session: Arc<T>) -> String {
        loop {
            let id = chorus_sfu::token::random_token(24);
            if let dashmap::Entry::Vacant(entry) = self.map.entry(id.clone()) {
                entry.insert(session);
                return id;
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<T>> {
        self.map.get(id).map(|e| e.value().clone())
    }

    pub fn remove(&self, id: &str) -> Option<Arc<T>> {
        self.map.remove(id).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_checked_for_media() {
        assert!(check_offer(b"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n").is_ok());
        assert!(check_offer(b"hello").is_err());
        assert!(
            check_offer(b"v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n").is_err()
        );
        assert!(check_offer(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn bearer_tokens_are_read() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn content_types_ignore_parameters() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/SDP; charset=utf-8"),
        );
        assert!(has_content_type(&headers, SDP));
        assert!(!has_content_type(&headers, TRICKLE_FRAGMENT));
    }
}
