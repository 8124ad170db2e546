//! The JSON bodies of the admin API under `/api/v1/` (see `docs/api.md`). Its OpenAPI
//! document is generated from these types and the handlers' annotations.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ErrorCode, Grants, ParticipantId, RoomId, RoomSummary, TrackId, TrackInfo};

/// Every error of the HTTP API: the same codes as the WebSocket's `error` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    pub code: ErrorCode,
    /// For people; may change between versions.
    pub message: String,
}

/// The rooms that have participants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomList {
    pub rooms: Vec<RoomSummary>,
}

/// One room, with everyone in it (hidden participants included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomDetails {
    pub room: RoomId,
    pub participants: Vec<ParticipantDetails>,
}

/// A participant as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantDetails {
    pub id: ParticipantId,
    /// Its join token's identity; absent in open mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    pub name: String,
    pub grants: Grants,
    pub tracks: Vec<TrackInfo>,
    /// The tracks an admin muted: not forwarded until an admin unmutes them.
    pub admin_muted: Vec<TrackId>,
}

/// Mutes or unmutes a track at the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MuteRequest {
    /// True stops forwarding the track and shows it muted to everyone; false lets its
    /// owner unmute it again.
    pub muted: bool,
}

/// A message from the operator, shown to the room or to one participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageRequest {
    pub text: String,
    /// Only this participant gets it; absent: everyone in the room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_id: Option<ParticipantId>,
}
