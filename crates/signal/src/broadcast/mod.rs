//! Broadcast tools in and out over plain HTTP: WHIP ingest (RFC 9725) at `/whip/{room}`
//! and WHEP playback at `/whep/{room}` (see `docs/whip-whep.md`).
//!
//! Both are adapters over the room machinery the WebSocket sessions use: a WHIP publisher
//! joins its room through [`Hub::join`](chorus_sfu::Hub::join) like any participant, with
//! a message queue that the adapter owns instead of a WebSocket, and its offer goes to the
//! room as a `publishOffer`. What is shared here: the problem bodies (RFC 9457), CORS, and
//! the table of live sessions that `DELETE` ends.

pub mod whip;

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_protocol::ErrorCode;
use dashmap::DashMap;

use crate::origin;

/// The live WHIP and WHEP sessions of the server.
#[derive(Default)]
pub struct Registry {
    pub whip: Arc<Sessions<whip::WhipSession>>,
}

/// The WHIP and WHEP routes.
pub(crate) fn routes() -> axum::Router<crate::AppState> {
    use axum::routing::{options, post};
    axum::Router::new()
        .route(
            "/whip/{room}",
            post(whip::post).options(whip::endpoint_options),
        )
        .route(
            "/whip/{room}/{session}",
            options(whip::resource_options)
                .patch(whip::patch)
                .delete(whip::delete),
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
