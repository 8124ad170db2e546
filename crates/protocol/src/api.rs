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
    /// The room's recording, while one runs (see `docs/recording.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingInfo>,
}

/// A room's recording as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingInfo {
    /// The recording's own directory on the server: the track files and `recording.json`.
    pub directory: String,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// Tracks with a file so far.
    pub files: u32,
    /// Packets dropped because the recorder's queue was full (the disk fell behind).
    pub dropped_packets: u64,
    /// The first write error (a full disk, say): the files it hit stopped; the call goes
    /// on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
