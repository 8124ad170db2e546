//! WHIP ingest (RFC 9725): `POST /whip/{room}` with an SDP offer makes the sender a
//! participant of the room that publishes what the offer sends; `DELETE` on the session
//! resource (the `Location` of the `201`) ends it.
//!
//! The publisher joins through the hub like a WebSocket session, with grants narrowed to
//! publishing (it never subscribes and never chats), and its offer goes to the room as a
//! `publishOffer` without declared sources: audio m-lines are microphones, video m-lines
//! cameras, and simulcast rids `q`, `h` and `f` are layers as from a browser. The adapter
//! owns the participant's message queue: it waits there for the `publishAnswer`, then
//! drains it until the room lets the participant go (`DELETE`, a failed peer, a removal,
//! shutdown), when the session resource disappears.
//!
//! `PATCH` takes trickled ICE fragments and ignores them with `204`: the server is
//! ICE-lite, its candidates are in the answer, and it learns the client's addresses from
//! the client's connectivity checks. An ICE restart (a fragment with new credentials) is
//! not supported: `422`, as RFC 9725 section 4.3.1 asks of a resource that supports
//! trickle ICE but not restarts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_protocol::{ClientMessage, ErrorCode, ServerMessage};
use chorus_sfu::{Admission, JoinError};
use tokio::sync::mpsc;

use super::{SDP, Session, TRICKLE_FRAGMENT, accept_offer, allow_join, drain, ice_ufrag, problem};
use crate::AppState;
use crate::session::SESSION_QUEUE;

/// How long a `POST` waits for the room's answer. The worker applies an offer in well
/// under a millisecond; this only bounds a request against a room that is stuck.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// The display name of a WHIP publisher that gave none (open mode without `?name=`).
pub const DEFAULT_NAME: &str = "WHIP publisher";

/// `?name=` on the endpoint: the display name in open mode (a token's name wins).
#[derive(Debug, serde::Deserialize)]
pub struct PublishQuery {
    name: Option<String>,
}

/// `POST /whip/{room}`: an offer in, a publishing participant and its answer out.
pub(crate) async fn post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(room): UrlPath<String>,
    Query(query): Query<PublishQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    super::answer_post(state, headers, |state, headers| async move {
        publish(&state, peer, room, query, &headers, &body).await
    })
    .await
}

async fn publish(
    state: &AppState,
    peer: SocketAddr,
    room: String,
    query: PublishQuery,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let (room, sdp, admitted) = match accept_offer(state, room, headers, body, "WHIP") {
        Ok(accepted) => accepted,
        Err(refusal) => return refusal,
    };
    let mut grants = admitted.admission.grants;
    if !grants.can_publish || grants.hidden {
        return problem(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "the token's grants do not allow publishing (canPublish)",
        );
    }
    if let Err(refusal) = super::placed_here(
        state,
        "whip",
        &room,
        query.name.as_deref().map(|n| ("name", n)),
    )
    .await
    {
        return refusal;
    }
    if let Err(refusal) = allow_join(state, peer, headers) {
        return refusal;
    }
    // A publisher only: no subscriber peer, no chat.
    grants.can_subscribe = false;
    grants.can_chat = false;
    let admission = Admission {
        identity: admitted.admission.identity,
        grants,
        ingest: true,
    };
    let name = admitted
        .name
        .or(query.name)
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_NAME.to_owned());
    let client_ufrag = ice_ufrag(&sdp).map(str::to_owned);
    let (to_session, mut from_room) = mpsc::channel(SESSION_QUEUE);
    let membership = match state
        .hub
        .join(room.clone(), name, admission, to_session)
        .await
    {
        Ok(membership) => membership,
        Err(err) => return join_refusal(&err),
    };
    if !membership
        .send(ClientMessage::PublishOffer {
            sdp,
            tracks: Vec::new(),
        })
        .await
    {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            "the room closed",
        );
    }
    let answer = tokio::time::timeout(ANSWER_DEADLINE, wait_for_answer(&mut from_room)).await;
    let answer = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(refusal)) => {
            membership.send(ClientMessage::Leave).await;
            return refusal;
        }
        Err(_) => {
            membership.send(ClientMessage::Leave).await;
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Internal,
                "the room did not answer the offer in time",
            );
        }
    };
    let participant = membership.participant;
    let session = Arc::new(Session {
        room: room.clone(),
        participant,
        client_ufrag,
        membership: Mutex::new(Some(membership)),
    });
    let sessions = state.broadcast.whip.clone();
    let id = sessions.insert(session.clone());
    tracing::info!(%room, %participant, session = %id, "WHIP session started");
    tokio::spawn(drain(sessions, id.clone(), session, from_room, "WHIP"));
    let location = format!("/whip/{}/{id}", encode_segment(room.as_str()));
    let mut response = (StatusCode::CREATED, answer).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert("accept-patch", HeaderValue::from_static(TRICKLE_FRAGMENT));
    response
}

/// Waits for the room's `publishAnswer`; a refusal becomes the problem to reply with.
async fn wait_for_answer(
    from_room: &mut mpsc::Receiver<ServerMessage>,
) -> Result<String, Response> {
    // Per-track refusals (a source the grants exclude, too many tracks) come as errors
    // before the answer; the answer then lists only the tracks that were published.
    let mut refused: Option<(ErrorCode, String)> = None;
    loop {
        match from_room.recv().await {
            Some(ServerMessage::PublishAnswer { sdp, tracks }) => {
                if tracks.is_empty() {
                    let (code, detail) = refused.unwrap_or((
                        ErrorCode::InvalidSdp,
                        "the offer sends no audio or video the server could take".to_owned(),
                    ));
                    let status = if code == ErrorCode::InvalidSdp {
                        StatusCode::BAD_REQUEST
                    } else {
                        StatusCode::FORBIDDEN
                    };
                    return Err(problem(status, code, detail));
                }
                return Ok(sdp);
            }
            Some(ServerMessage::Error { code, message }) => match code {
                ErrorCode::Forbidden | ErrorCode::LimitReached => refused = Some((code, message)),
                ErrorCode::Internal => {
                    return Err(problem(StatusCode::INTERNAL_SERVER_ERROR, code, message));
                }
                _ => return Err(problem(StatusCode::BAD_REQUEST, code, message)),
            },
            Some(ServerMessage::Bye { .. }) | None => {
                return Err(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Internal,
                    "the room ended the session before answering",
                ));
            }
            Some(_) => {}
        }
    }
}

/// The HTTP answer to a refused join.
pub(super) fn join_refusal(err: &JoinError) -> Response {
    let status = match err.code() {
        ErrorCode::InvalidName => StatusCode::BAD_REQUEST,
        ErrorCode::Forbidden | ErrorCode::Unauthorized => StatusCode::FORBIDDEN,
        ErrorCode::RoomFull | ErrorCode::TooManyRooms | ErrorCode::ServerDraining => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    problem(status, err.code(), err.to_string())
}

/// A room name as one URL path segment (room names are letters, digits, `-`, `_` and
/// `.`, but letters may be any script's).
pub(super) fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `PATCH /whip/{room}/{session}`: trickled candidates are accepted and ignored.
pub(crate) async fn patch(
    State(state): State<AppState>,
    UrlPath((room, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sessions = state.broadcast.whip.clone();
    super::patch_resource(&state, &sessions, &room, &id, &headers, &body)
}

/// `DELETE /whip/{room}/{session}`: the participant leaves.
pub(crate) async fn delete(
    State(state): State<AppState>,
    UrlPath((room, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let sessions = state.broadcast.whip.clone();
    super::delete_resource(&state, &sessions, &room, &id, &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ufrags_and_segments() {
        assert_eq!(
            ice_ufrag("v=0\r\na=ice-ufrag:abcd\r\na=ice-pwd:x\r\n"),
            Some("abcd")
        );
        assert_eq!(ice_ufrag("v=0\r\n"), None);
        assert_eq!(encode_segment("stand-up_1.a"), "stand-up_1.a");
        assert_eq!(encode_segment("café"), "caf%C3%A9");
    }
}
