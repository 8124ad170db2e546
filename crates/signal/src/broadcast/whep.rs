//! WHEP playback: `POST /whep/{room}` with a recvonly SDP offer makes the sender a hidden
//! viewer of the room, answered by a subscriber peer of its own (the client offers, the
//! server answers). Each audio and video m-line of the offer is a slot that carries one
//! participant's track at a time, chosen by [`chorus_sfu::viewer::Stage`]: the pinned
//! participant (`?participant=`, an id such as `p3` or a display name), else the room's
//! latest speaker, else the first to join. When the choice changes (a new speaker, a
//! participant left or published), the slot's source changes on the same m-line: the
//! viewer's stream goes on with the same SSRC and continuous numbers, and the new source
//! starts on its next keyframe, which the server asks for at once.
//!
//! `PATCH` and `DELETE` on the session resource work as for WHIP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_protocol::{
    ClientMessage, ErrorCode, Grants, ParticipantId, RoomId, ServerMessage, TrackId,
};
use chorus_sfu::viewer::Stage;
use chorus_sfu::{Admission, Hub, MediaError};
use tokio::sync::mpsc;

use super::whip::{encode_segment, join_refusal};
use super::{
    SDP, Session, Sessions, TRICKLE_FRAGMENT, accept_offer, allow_join, forget, ice_ufrag, problem,
};
use crate::AppState;
use crate::session::SESSION_QUEUE;

/// How long a `POST` waits for the room to admit the viewer. A join takes well under a
/// millisecond; this only bounds a request against a room that is stuck.
const JOIN_DEADLINE: Duration = Duration::from_secs(10);

/// The display name of a WHEP viewer without a token name (it is hidden: only logs and
/// the admin API show it).
pub const DEFAULT_NAME: &str = "WHEP viewer";

/// `?participant=` on the endpoint: whom the viewer watches first.
#[derive(Debug, serde::Deserialize)]
pub struct ViewQuery {
    participant: Option<String>,
}

/// `POST /whep/{room}`: a recvonly offer in, a viewer and its answer out.
pub(crate) async fn post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(room): UrlPath<String>,
    Query(query): Query<ViewQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    super::answer_post(state, headers, |state, headers| async move {
        view(&state, peer, room, query, &headers, &body).await
    })
    .await
}

async fn view(
    state: &AppState,
    peer: SocketAddr,
    room: String,
    query: ViewQuery,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let (room, sdp, admitted) = match accept_offer(state, room, headers, body, "WHEP") {
        Ok(accepted) => accepted,
        Err(refusal) => return refusal,
    };
    if !admitted.admission.grants.can_subscribe {
        return problem(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "the token's grants do not allow receiving (canSubscribe)",
        );
    }
    if let Err(refusal) = super::placed_here(
        state,
        "whep",
        &room,
        query.participant.as_deref().map(|p| ("participant", p)),
    )
    .await
    {
        return refusal;
    }
    if let Err(refusal) = allow_join(state, peer, headers) {
        return refusal;
    }
    // Hidden, and no subscriber leg of the web app's kind: the viewer's own peer takes
    // its place.
    let admission = Admission {
        identity: admitted.admission.identity,
        grants: Grants {
            can_publish: false,
            can_publish_sources: Vec::new(),
            can_subscribe: false,
            can_chat: false,
            room_admin: false,
            hidden: true,
        },
        ingest: false,
    };
    let name = admitted
        .name
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
    let participant = membership.participant;
    let mut stage = Stage::new(query.participant);
    let joined = tokio::time::timeout(JOIN_DEADLINE, async {
        loop {
            match from_room.recv().await {
                Some(message @ ServerMessage::Joined { .. }) => {
                    stage.on_message(&message);
                    return true;
                }
                Some(message) => {
                    stage.on_message(&message);
                }
                None => return false,
            }
        }
    })
    .await;
    if !matches!(joined, Ok(true)) {
        membership.send(ClientMessage::Leave).await;
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            "the room did not admit the viewer",
        );
    }
    let (answer, slots) = match state.hub.view(&room, participant, sdp).await {
        Ok(answered) => answered,
        Err(err) => {
            membership.send(ClientMessage::Leave).await;
            let status = match err {
                MediaError::InvalidSdp(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return problem(status, err.code(), err.to_string());
        }
    };
    let chosen = stage.choose(&slots);
    bind(&state.hub, &room, participant, &chosen, &stage).await;
    let session = Arc::new(Session {
        room: room.clone(),
        participant,
        client_ufrag,
        membership: Mutex::new(Some(membership)),
    });
    let sessions = state.broadcast.whep.clone();
    let id = sessions.insert(session.clone());
    tracing::info!(%room, %participant, session = %id, slots = slots.len(), "WHEP session started");
    tokio::spawn(follow(Follow {
        hub: state.hub.clone(),
        sessions,
        id: id.clone(),
        session,
        from_room,
        stage,
        slots,
        chosen,
    }));
    let location = format!("/whep/{}/{id}", encode_segment(room.as_str()));
    let mut response = (StatusCode::CREATED, answer).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert("accept-patch", HeaderValue::from_static(TRICKLE_FRAGMENT));
    response
}

/// Binds the slots as chosen; logs what the viewer refused.
async fn bind(
    hub: &Hub,
    room: &RoomId,
    participant: ParticipantId,
    slots: &[(String, Option<TrackId>)],
    stage: &Stage,
) {
    match hub.bind_view(room, participant, slots.to_vec()).await {
        Ok(refused) if !refused.is_empty() => {
            tracing::info!(%participant, ?refused, "WHEP viewer did not accept a track's codec on these m-lines");
        }
        Ok(_) => {
            let sources: Vec<_> = slots
                .iter()
                .map(|(mid, t)| (mid.as_str(), t.and_then(|t| stage.owner_of(t))))
                .collect();
            tracing::debug!(%participant, ?sources, "WHEP viewer slots bound");
        }
        Err(err) => tracing::debug!(%participant, %err, "WHEP viewer slots not bound"),
    }
}

/// A live viewer, following its room.
struct Follow {
    hub: Hub,
    sessions: Arc<Sessions<Session>>,
    id: String,
    session: Arc<Session>,
    from_room: mpsc::Receiver<ServerMessage>,
    stage: Stage,
    slots: Vec<chorus_sfu::peer::ViewerSlot>,
    chosen: Vec<(String, Option<TrackId>)>,
}

/// Reads the viewer's messages until the room lets it go, and moves its slots whenever
/// the room changes their choice.
async fn follow(mut f: Follow) {
    let reason = loop {
        match f.from_room.recv().await {
            Some(ServerMessage::Bye { reason }) => break format!("{reason:?}"),
            None => break "left".to_owned(),
            Some(message) => {
                if !f.stage.on_message(&message) {
                    continue;
                }
                let next = f.stage.choose(&f.slots);
                if next == f.chosen {
                    continue;
                }
                let changed: Vec<_> = next
                    .iter()
                    .filter(|slot| !f.chosen.contains(slot))
                    .cloned()
                    .collect();
                bind(
                    &f.hub,
                    &f.session.room,
                    f.session.participant,
                    &changed,
                    &f.stage,
                )
                .await;
                f.chosen = next;
            }
        }
    };
    forget(&f.sessions, &f.id, &f.session, &reason, "WHEP");
}

/// `PATCH /whep/{room}/{session}`: trickled candidates are accepted and ignored.
pub(crate) async fn patch(
    State(state): State<AppState>,
    UrlPath((room, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sessions = state.broadcast.whep.clone();
    super::patch_resource(&state, &sessions, &room, &id, &headers, &body)
}

/// `DELETE /whep/{room}/{session}`: the viewer leaves.
pub(crate) async fn delete(
    State(state): State<AppState>,
    UrlPath((room, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let sessions = state.broadcast.whep.clone();
    super::delete_resource(&state, &sessions, &room, &id, &headers).await
}
