//! The admin API under `/api/v1/`: rooms, their participants, removing and muting them,
//! closing rooms and sending them notices. Its OpenAPI document, served at
//! `/api/v1/openapi.json`, is generated from the handlers' annotations below.
//!
//! Every request authenticates with one of:
//! - `Authorization: Bearer <token>`: a join token (see [`crate::auth`]) whose grant has
//!   `roomAdmin`; for its room only, or for every room (and the room list) with `"*"`;
//! - `Authorization: Basic base64(KEY:SECRET)`: an API key and its secret, for everything.
//!
//! Every error is an [`ApiError`] with the status that fits it.

use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chorus_protocol::api::{
    ApiError, MessageRequest, MuteRequest, RecordingInfo, RoomDetails, RoomList,
};
use chorus_protocol::{ErrorCode, ParticipantId, RoomId, TrackId};
use chorus_sfu::record::RecordError;
use chorus_sfu::room::{AdminAction, AdminError};
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use crate::AppState;
use crate::auth::{ANY_ROOM, Auth, TokenError, bearer_token, same_secret, unix_now};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chorus admin API",
        description = "Rooms, participants and moderation of a Chorus server. See docs/api.md."
    ),
    paths(
        list_rooms,
        get_room,
        close_room,
        remove_participant,
        mute_track,
        send_message,
        start_recording,
        stop_recording,
        drain
    ),
    modifiers(&Security),
    security(("bearer" = []), ("basic" = []))
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("JWT".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}

/// The OpenAPI document of the admin API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The admin API's routes, under `/api/v1`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/rooms", get(list_rooms))
        .route("/api/v1/rooms/{room}", get(get_room).delete(close_room))
        .route(
            "/api/v1/rooms/{room}/participants/{participant}",
            delete(remove_participant),
        )
        .route(
            "/api/v1/rooms/{room}/participants/{participant}/tracks/{track}/mute",
            post(mute_track),
        )
        .route("/api/v1/rooms/{room}/messages", post(send_message))
        .route(
            "/api/v1/rooms/{room}/recording",
            post(start_recording).delete(stop_recording),
        )
        .route("/api/v1/drain", post(drain))
}

/// A refused request, as the response it becomes.
struct Refusal(StatusCode, ErrorCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let Refusal(status, code, message) = self;
        crate::api_error(status, code, &message)
    }
}

impl From<AdminError> for Refusal {
    fn from(err: AdminError) -> Self {
        let status = match err {
            AdminError::InvalidText(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::NOT_FOUND,
        };
        Refusal(status, err.code(), err.to_string())
    }
}

impl From<RecordError> for Refusal {
    fn from(err: RecordError) -> Self {
        let (status, code) = match err {
            RecordError::NotConfigured => (StatusCode::CONFLICT, ErrorCode::Forbidden),
            RecordError::Directory(..) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
            RecordError::UnknownRoom(_) => (StatusCode::NOT_FOUND, ErrorCode::UnknownRoom),
        };
        Refusal(status, code, err.to_string())
    }
}

impl From<PathRejection> for Refusal {
    fn from(err: PathRejection) -> Self {
        Refusal(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidMessage,
            format!("bad path: {}", err.body_text()),
        )
    }
}

impl From<JsonRejection> for Refusal {
    fn from(err: JsonRejection) -> Self {
        let (status, code) = match &err {
            JsonRejection::MissingJsonContentType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::InvalidMessage,
            ),
            JsonRejection::JsonSyntaxError(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::MalformedJson)
            }
            _ => (StatusCode::BAD_REQUEST, ErrorCode::InvalidMessage),
        };
        Refusal(status, code, err.body_text())
    }
}

type Reply<T> = Result<T, Refusal>;

/// Who may call: the `Authorization` header, checked against the API keys. `room` is the
/// room the call is about; `None` for calls about every room.
fn authorize(auth: &Auth, headers: &HeaderMap, room: Option<&RoomId>) -> Reply<()> {
    let unauthorized = |message: &str| {
        Refusal(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            message.to_owned(),
        )
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            unauthorized("send Authorization: Bearer <admin token> or Basic <key:secret>")
        })?;
    if let Some(token) = bearer_token(value.as_bytes()) {
        let token = std::str::from_utf8(token).unwrap_or_default();
        let claims = auth.verify(token, unix_now()).map_err(|err| {
            let code = err.code();
            Refusal(StatusCode::UNAUTHORIZED, code, err.to_string())
        })?;
        let grant = &claims.grant;
        let covers = grant.room == ANY_ROOM || room.is_some_and(|r| r.as_str() == grant.room);
        if !grant.grants.room_admin || !covers {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "this token's grant is not roomAdmin for this room (or \"*\" for all)".into(),
            ));
        }
        return Ok(());
    }
    if let Some(encoded) = value.strip_prefix("Basic ") {
        let decoded = BASE64
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| unauthorized("Basic credentials are not base64 of KEY:SECRET"))?;
        let (key, secret) = decoded
            .split_once(':')
            .ok_or_else(|| unauthorized("Basic credentials are not base64 of KEY:SECRET"))?;
        let expected = auth.secret(key).unwrap_or("");
        // Compared in constant time, and a missing key costs the same as a wrong secret.
        if !same_secret(secret.as_bytes(), expected.as_bytes()) || expected.is_empty() {
            return Err(unauthorized(&TokenError::UnknownKey.to_string()));
        }
        return Ok(());
    }
    Err(unauthorized(
        "the Authorization scheme is neither Bearer nor Basic",
    ))
}

/// The room a call names, once the caller may act on it.
fn authorized_room(state: &AppState, headers: &HeaderMap, name: &str) -> Reply<RoomId> {
    let room = RoomId::new(name).map_err(|err| {
        Refusal(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidMessage,
            format!("room {name:?}: {err}"),
        )
    })?;
    authorize(&state.config.auth, headers, Some(&room))?;
    Ok(room)
}

async fn openapi_json() -> Response {
    axum::Json(openapi()).into_response()
}

/// The rooms that have participants. Needs a `"*"` admin grant or an API key.
#[utoipa::path(
    get,
    path = "/api/v1/rooms",
    responses(
        (status = 200, description = "The rooms", body = RoomList),
        (status = 401, description = "No or bad credentials", body = ApiError),
        (status = 403, description = "The token is no admin of every room", body = ApiError)
    )
)]
async fn list_rooms(State(state): State<AppState>, headers: HeaderMap) -> Reply<Response> {
    authorize(&state.config.auth, &headers, None)?;
    Ok(axum::Json(RoomList {
        rooms: state.room_list(),
    })
    .into_response())
}

/// One room, with its participants (hidden ones included) and their tracks.
#[utoipa::path(
    get,
    path = "/api/v1/rooms/{room}",
    params(("room" = String, Path, description = "The room's name", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]+$", example = "standup")),
    responses(
        (status = 200, description = "The room", body = RoomDetails),
        (status = 400, description = "A malformed room name", body = ApiError),
        (status = 401, description = "No or bad credentials", body = ApiError),
        (status = 403, description = "No admin grant for this room", body = ApiError),
        (status = 404, description = "No such room", body = ApiError)
    )
)]
async fn get_room(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Reply<Response> {
    let Path(room) = path?;
    let room = authorized_room(&state, &headers, &room)?;
    let details = state.hub.room_details(&room).await?;
    Ok(axum::Json(details).into_response())
}

/// Closes a room: everyone gets `bye` with reason `roomClosed`.
#[utoipa::path(
    delete,
    path = "/api/v1/rooms/{room}",
    params(("room" = String, Path, description = "The room's name", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]+$", example = "standup")),
    responses(
        (status = 204, description = "Closed"),
        (status = 400, description = "A malformed room name", body = ApiError),
        (status = 401, description = "No or bad credentials", body = ApiError),
        (status = 403, description = "No admin grant for this room", body = ApiError),
        (status = 404, description = "No such room", body = ApiError)
    )
)]
async fn close_room(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Reply<StatusCode> {
    let Path(room) = path?;
    let room = authorized_room(&state, &headers, &room)?;
    state.hub.admin(&room, AdminAction::Close).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts recording a room: each of its tracks (and each published later) to a file of
/// its own, with a sidecar JSON (see docs/recording.md). A room that records already goes
/// on as it is. The recording ends with `DELETE`, or when the room closes (its last
/// participant left, or the server drained).
#[utoipa::path(
    post,
    path = "/api/v1/rooms/{room}/recording",
    params(("room" = String, Path, description = "The room's name", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]+$", example = "standup")),
    responses(
        (status = 200, description = "Recording", body = RecordingInfo),
        (status = 400, description = "A malformed room name", body = ApiError),
        (status = 401, description = "No or bad credentials", body = ApiError),
        (status = 403, description = "No admin grant for this room", body = ApiError),
        (status = 404, description = "No such room", body = ApiError),
        (status = 409, description = "Recording is not configured on this server ([recording] dir)", body = ApiError),
        (status = 500, description = "The recording directory could not be made", body = ApiError)
    )
)]
async fn start_recording(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Reply<Response> {
    let Path(room) = path?;
    let room = authorized_room(&state, &headers, &room)?;
    let info = state.hub.set_recording(&room, true).await?;
    Ok(axum::Json(info).into_response())
}

/// Stops recording a room: the files are finished and the sidecar says so. A room that
/// does not record is left as it is.
#[utoipa::path(
    delete,
    path = "/api/v1/rooms/{room}/recording",
    params(("room" = String, Path, description = "The room's name", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]+$", example = "standup")),
    responses(
        (status = 204, description = "Not recording (any more)"),
        (status = 400, description = "A malformed room name", body = ApiError),
        (status = 401, description = "No or bad credentials", body = ApiError),
        (status = 403, description = "No admin grant for this room", body = ApiError),
        (status = 404, description = "No such room", body = ApiError)
    )
)]
async fn stop_recording(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Reply<StatusCode> {
    let Path(room) = path?;
    let room = authorized_room(&state, &headers, &room)?;
    state.hub.set_recording(&room, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a participant: it gets `bye` with reason `removed`, the others
/// `participantLeft`.
#[utoipa::path(
    delete,
    path = "/api/v1/rooms/{room}/participants/{participant}",
    params(
        ("room" = String, Path, description = "The room's name", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]+$", example = "standup"),
        ("participant" = u64, Path, description = "The participant's id", example = 1)
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "A malformed room name or id", body = ApiError),
        (status = 401, description = "No or bad credentials", body = ApiError),
        (status = 403, description = "No admin grant for this room", body = ApiError),
        (status = 404, description = "No such room or participant", body = ApiError)
    )
)]
async fn remove_participant(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, u64)>, PathRejection>,
) -> Reply<StatusCode> {
    let Path((room, participant)) = path?;
    let room = authorized_room(&state, &headers, &room)?;
    let action = AdminAction::Remove {
        participant: ParticipantId(participant),
    };
    state.hub.admin(&room, action).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Mutes a participant's track at the server: it is forwarded to nobody, everyone sees it
/// muted, and its owner cannot unmute it until an admin does (`muted: false`).
#[utoipa::path(
    post,
    path = "/api/v1/rooms/{room}/participants/{participant}/tracks/{track}/mute",
    params(
        ("room" = String, Path, description = "The room's name", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]+$", example = "standup"),
        ("participant" = u64, Path, description = "The participant's id", example = 1),
        ("track" = u64, Path, description = "The track's id", example = 1)
    ),
    request_body = MuteRequest,
    responses(
        (status = 204, description = "Done"),
        (status = 400, description = "A malformed path or body", body = ApiError),
        (status = 401, description = "No or bad credentials", body = ApiError),
        (status = 403, description = "No admin grant for this room", body = ApiError),
        (status = 404, description = "No such room, participant or track", body = ApiError),
        (status = 415, description = "The body is not application/json", body = ApiError)
    )
)]
async fn mute_track(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, u64, u64)>, PathRejection>,
    body: Result<axum::Json<MuteRequest>, JsonRejection>,
) -> Reply<StatusCode> {
    let Path((room, participant, track)) = path?;
    let room = authorized_room(&state, &headers, &room)?;
    let axum::Json(MuteRequest { muted }) = body?;
    let action = AdminAction::MuteTrack {
        participant: ParticipantId(participant),
        track: TrackId(track),
        muted,
    };
    state.hub.admin(&room, action).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a `notice` to everyone in the room, or to one participant.
#[utoipa::path(
    post,
    path = "/api/v1/rooms/{room}/messages",
    params(("room" = String, Path, description = "The room's name", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]+$", example = "standup")),
    request_body = MessageRequest,
    responses(
        (status = 204, description = "Sent"),
        (status = 400, description = "A malformed path or body, or an empty or too long text", body = ApiError),
        (status = 401, description = "No or bad credentials", body = ApiError),
        (status = 403, description = "No admin grant for this room", body = ApiError),
        (status = 404, description = "No such room or participant", body = ApiError),
        (status = 415, description = "The body is not application/json", body = ApiError)
    )
)]
async fn send_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<axum::Json<MessageRequest>, JsonRejection>,
) -> Reply<StatusCode> {
    let Path(room) = path?;
    let room = authorized_room(&state, &headers, &room)?;
    let axum::Json(MessageRequest {
        text,
        participant_id,
    }) = body?;
    let action = AdminAction::Notice {
        to: participant_id,
        text,
        time: 0,
    };
    state.hub.admin(&room, action).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Drains the server: it takes no new joins (`serverDraining`), tells everyone
/// (`draining`), waits up to `shutdown.grace_secs` for the rooms to empty, ends the calls
/// left and exits. Needs a `"*"` admin grant or an API key.
#[utoipa::path(
    post,
    path = "/api/v1/drain",
    responses(
        (status = 202, description = "Draining"),
        (status = 401, description = "No or bad credentials", body = ApiError),
        (status = 403, description = "The token is no admin of every room", body = ApiError)
    )
)]
async fn drain(State(state): State<AppState>, headers: HeaderMap) -> Reply<StatusCode> {
    authorize(&state.config.auth, &headers, None)?;
    tracing::info!("drain requested through the admin API");
    state.config.drain.notify_one();
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use axum::http::HeaderValue;

    use super::*;
    use crate::auth::{AuthMode, Claims, Grant, sign};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth() -> Auth {
        Auth::new(
            AuthMode::Token,
            HashMap::from([("KEY".to_owned(), SECRET.to_owned())]),
            false,
        )
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    fn bearer(room: &str, admin: bool) -> HeaderMap {
        let mut claims = Claims {
            iss: "KEY".into(),
            sub: "ops".into(),
            name: None,
            exp: unix_now() + 60,
            nbf: None,
            grant: Grant {
                room: room.into(),
                grants: Default::default(),
            },
        };
        claims.grant.grants.room_admin = admin;
        headers(&format!("Bearer {}", sign(&claims, SECRET).expect("sign")))
    }

    fn status(result: Reply<()>) -> Option<StatusCode> {
        result.err().map(|Refusal(status, ..)| status)
    }

    #[test]
    fn admin_tokens_cover_their_room_and_keys_cover_everything() {
        let auth = auth();
        let standup = RoomId::new("standup").expect("room");
        let other = RoomId::new("other").expect("room");
        assert_eq!(
            status(authorize(&auth, &bearer("standup", true), Some(&standup))),
            None
        );
        assert_eq!(
            status(authorize(&auth, &bearer("standup", true), Some(&other))),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(authorize(&auth, &bearer("standup", true), None)),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(status(authorize(&auth, &bearer("*", true), None)), None);
        assert_eq!(
            status(authorize(&auth, &bearer("*", false), Some(&standup))),
            Some(StatusCode::FORBIDDEN)
        );
        let basic = |creds: &str| headers(&format!("Basic {}", BASE64.encode(creds)));
        assert_eq!(
            status(authorize(&auth, &basic(&format!("KEY:{SECRET}")), None)),
            None
        );
        for bad in ["KEY:wrong", "NOKEY:", "KEY", ":"] {
            assert_eq!(
                status(authorize(&auth, &basic(bad), None)),
                Some(StatusCode::UNAUTHORIZED),
                "{bad}"
            );
        }
        assert_eq!(
            status(authorize(&auth, &HeaderMap::new(), None)),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            status(authorize(&auth, &headers("Bearer nonsense"), None)),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            status(authorize(&auth, &headers("Digest x"), None)),
            Some(StatusCode::UNAUTHORIZED)
        );
    }

    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc = serde_json::to_value(openapi()).expect("json");
        let paths = doc["paths"].as_object().expect("paths");
        assert_eq!(paths.len(), 7, "{:?}", paths.keys().collect::<Vec<_>>());
        for schema in [
            "ApiError",
            "RoomDetails",
            "RecordingInfo",
            "RoomList",
            "MuteRequest",
            "Grants",
        ] {
            assert!(
                doc["components"]["schemas"][schema].is_object(),
                "schema {schema} missing"
            );
        }
    }
}
