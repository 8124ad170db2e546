//! Chorus signaling protocol: the JSON messages a client and the server
//! exchange over the WebSocket at `/ws`.
//!
//! Two enums, one per direction, internally tagged by `type` in camelCase.
//! Text frames are parsed once, at the edge, by [`ClientMessage::parse`]; everything after
//! that is typed. `docs/protocol.md` documents every message with an example, and
//! `fixtures/` holds one JSON file per variant that both the Rust round-trip tests and the
//! frontend tests read.

pub mod api;
mod ids;

pub use ids::{IdError, ParticipantId, RoomId, TrackId};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The protocol version this crate speaks. A client names it in `join`; the server
/// refuses other versions with [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Which of a participant's two peer connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerRole {
    /// The client offers and the server answers; carries the participant's own media.
    Publisher,
    /// The server offers and the client answers; carries everyone else's media.
    Subscriber,
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum MediaKind {
    Audio,
    Video,
}

/// What a published track carries, so that receivers can lay it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum TrackSource {
    /// A microphone.
    Microphone,
    /// A camera.
    #[default]
    Camera,
    /// A shared screen or window: shown as a large tile.
    Screen,
}

/// One ICE candidate, as `RTCIceCandidateInit` has it in the browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    /// The `candidate:` line, without `a=`. Empty means end of candidates.
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
}

/// One entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// What the client says about one m-line of its publisher offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishTrack {
    /// The transceiver's `mid` in the offer.
    pub mid: String,
    pub source: TrackSource,
    /// The simulcast layers the client sends on this m-line, as it configured them. The
    /// server weighs layers by these until it has measured them. Empty for a single layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<PublishLayer>,
}

/// One simulcast encoding a client sends, as its `sendEncodings` configure it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishLayer {
    /// `q`, `h` or `f` (quarter, half, full resolution): layers 0, 1 and 2.
    pub rid: String,
    /// The encoding's `maxBitrate`, in bits per second.
    pub max_bitrate: u32,
    /// The resolution it is scaled to, in pixels.
    pub width: u32,
    pub height: u32,
}

/// Why the server forwards no video of a subscribed track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PauseReason {
    /// Not even the track's lowest layer fits the subscriber's downlink estimate.
    LowBandwidth,
    /// The subscriber said it does not show the track (`trackSettings` with
    /// `visible: false`).
    NotVisible,
}

/// What a participant may do in its room. In `open` auth mode everyone gets the default
/// (everything but `roomAdmin` and `hidden`); in `token` mode the join token's grant says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Grants {
    /// May publish tracks at all. Without it the participant gets no publisher peer and
    /// its `publishOffer` is refused with `forbidden`.
    pub can_publish: bool,
    /// The sources it may publish; a track of another source is refused.
    pub can_publish_sources: Vec<TrackSource>,
    /// Receives the others' tracks.
    pub can_subscribe: bool,
    /// May send chat.
    pub can_chat: bool,
    /// May remove others from the room and mute their tracks.
    pub room_admin: bool,
    /// Not listed to the others (a recorder, an observer). A hidden participant neither
    /// publishes nor chats, which would show it.
    pub hidden: bool,
}

impl Default for Grants {
    fn default() -> Self {
        Self {
            can_publish: true,
            can_publish_sources: vec![
                TrackSource::Microphone,
                TrackSource::Camera,
                TrackSource::Screen,
            ],
            can_subscribe: true,
            can_chat: true,
            room_admin: false,
            hidden: false,
        }
    }
}

impl Grants {
    /// Whether a track of `source` may be published.
    pub fn may_publish(&self, source: TrackSource) -> bool {
        self.can_publish && !self.hidden && self.can_publish_sources.contains(&source)
    }

    /// Whether chat may be sent.
    pub fn may_chat(&self) -> bool {
        self.can_chat && !self.hidden
    }
}

/// A published track as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackInfo {
    pub id: TrackId,
    pub kind: MediaKind,
    pub source: TrackSource,
    pub muted: bool,
}

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantInfo {
    pub id: ParticipantId,
    pub name: String,
    pub tracks: Vec<TrackInfo>,
}

/// Which of the client's publisher m-lines became which track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedMid {
    pub mid: String,
    pub track_id: TrackId,
}

/// Which subscriber m-line carries which participant's track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribedMid {
    pub mid: String,
    pub track_id: TrackId,
    pub participant_id: ParticipantId,
}

/// A chat line, as kept in the room's bounded history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatLine {
    pub from: ParticipantId,
    pub name: String,
    pub text: String,
    /// Server time, milliseconds since the Unix epoch.
    pub time: u64,
}

/// One room in the room list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomSummary {
    pub room: RoomId,
    pub participants: u32,
}

/// Why the server ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ByeReason {
    /// The server is shutting down.
    ServerShutdown,
    /// The participant's media connection failed (ICE or DTLS).
    MediaFailed,
    /// The same identity joined again elsewhere, or a room admin or the operator removed
    /// the participant.
    Removed,
    /// The operator closed the room.
    RoomClosed,
}

/// Client to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ClientMessage {
    /// Enter a room (created on first join). Must be the first message of a call.
    Join {
        version: u32,
        room: RoomId,
        name: String,
        /// A join token (a JWT). Required when the server runs in `token` auth mode;
        /// ignored in `open` mode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Leave the room; the session stays open and may join again.
    Leave,
    /// The publisher peer's offer (initial or renegotiation).
    PublishOffer {
        sdp: String,
        /// What each sending m-line carries. An m-line not listed is treated as a camera
        /// (video) or microphone (audio).
        #[serde(default)]
        tracks: Vec<PublishTrack>,
    },
    /// The answer to the server's last `subscribeOffer`.
    SubscribeAnswer { sdp: String },
    /// A trickled ICE candidate for one of the client's peers.
    Candidate {
        peer: PeerRole,
        candidate: IceCandidate,
    },
    /// Mute or unmute one of the client's own tracks.
    SetMute { track_id: TrackId, muted: bool },
    /// Say something to everyone in the room.
    Chat { text: String },
    /// Ask for the room list. A session that has not joined keeps receiving `roomList`
    /// whenever the list changes.
    ListRooms,
    /// How the client shows one subscribed video: the server forwards the lowest layer
    /// that covers the tile, and none while it is hidden.
    TrackSettings {
        track_id: TrackId,
        /// False while the tile is off-screen or hidden: the video is paused.
        visible: bool,
        /// The tile's rendered size in device pixels; 0 when unknown (no cap).
        #[serde(default)]
        width: u32,
        #[serde(default)]
        height: u32,
    },
    /// A room admin (`roomAdmin` grant) removes another participant, who gets `bye` with
    /// reason `removed`.
    RemoveParticipant { participant_id: ParticipantId },
    /// A room admin mutes (or unmutes) another participant's track. The server stops
    /// forwarding it, and the owner cannot unmute it while an admin keeps it muted.
    MuteTrack {
        participant_id: ParticipantId,
        track_id: TrackId,
        muted: bool,
    },
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ServerMessage {
    /// The join succeeded.
    Joined {
        version: u32,
        participant_id: ParticipantId,
        room: RoomId,
        /// This participant's display name: its join token's, or else the one it gave.
        name: String,
        /// Everyone else already present, with their published tracks.
        participants: Vec<ParticipantInfo>,
        /// What to put into `RTCConfiguration.iceServers`.
        ice_servers: Vec<IceServer>,
        /// Recent chat, oldest first.
        chat_history: Vec<ChatLine>,
        /// What this participant may do.
        #[serde(default)]
        grants: Grants,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: ParticipantId,
    },
    TrackPublished {
        participant_id: ParticipantId,
        track: TrackInfo,
    },
    TrackUnpublished {
        participant_id: ParticipantId,
        track_id: TrackId,
    },
    MuteChanged {
        participant_id: ParticipantId,
        track_id: TrackId,
        muted: bool,
    },
    /// The answer to the client's `publishOffer`.
    PublishAnswer {
        sdp: String,
        tracks: Vec<PublishedMid>,
    },
    /// An offer for the subscriber peer; the client replies with `subscribeAnswer`.
    SubscribeOffer {
        sdp: String,
        tracks: Vec<SubscribedMid>,
    },
    Candidate {
        peer: PeerRole,
        candidate: IceCandidate,
    },
    Chat {
        line: ChatLine,
    },
    RoomList {
        rooms: Vec<RoomSummary>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The server ends this participant's call; the WebSocket closes next.
    Bye {
        reason: ByeReason,
    },
    /// The server is draining: it takes no new joins and stops within `seconds`. The call
    /// goes on until then; leave when convenient (or be told `bye` `serverShutdown`).
    Draining {
        seconds: u32,
    },
    /// A message from the operator (the admin API) to the room or to this participant.
    Notice {
        text: String,
        /// Server time, milliseconds since the Unix epoch.
        time: u64,
    },
    /// What the server now forwards of one subscribed video: a layer, or nothing and why.
    /// Sent when it changes.
    StreamState {
        track_id: TrackId,
        /// The simulcast layer (0 is the lowest); absent while paused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layer: Option<u8>,
        /// Why nothing is forwarded; absent while a layer is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        paused: Option<PauseReason>,
    },
    /// Dynacast: the simulcast layers of one of the client's own tracks that some
    /// subscriber needs, by rid. The client sends these and sets `active: false` on the
    /// others. Sent when it changes.
    PublishLayers {
        track_id: TrackId,
        rids: Vec<String>,
    },
    /// Who speaks now, decided by the server from the publishers' audio levels: the first
    /// entry is the speaker to highlight, the others follow loudest first. Empty when
    /// nobody speaks. Sent to everyone in the room when the list (who, or in which order)
    /// changes, at most every 300 ms.
    ActiveSpeakers {
        speakers: Vec<ActiveSpeaker>,
    },
    /// The answer to a `join` on a node of a cluster that does not host the room: the room
    /// lives on another node. The client opens a WebSocket to `url` and sends the same
    /// `join` there (same room, name and token). Nothing else changed on this session; it
    /// stays open and not joined.
    Redirect {
        /// The room the join asked for.
        room: RoomId,
        /// The WebSocket URL of the room's node, e.g. `wss://node2.example.com/ws`.
        url: String,
    },
}

/// One entry of `activeSpeakers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveSpeaker {
    pub participant_id: ParticipantId,
    /// Smoothed loudness from 0 (silence, -127 dBov) to 127 (full scale, 0 dBov): 127
    /// minus the RFC 6464 audio level.
    pub level: u8,
}

/// The code of an `error` message. The session stays open after every one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ErrorCode {
    /// The frame is not JSON, or not a text frame.
    MalformedJson,
    /// The `type` field names no message.
    UnknownType,
    /// The type is known but a field is missing or has the wrong type.
    InvalidMessage,
    /// The frame is larger than the configured maximum message size.
    MessageTooLarge,
    /// The message is not allowed now, such as an answer before any offer.
    OutOfOrder,
    /// An SDP that does not parse or cannot be applied.
    InvalidSdp,
    /// A candidate the peer refused.
    InvalidCandidate,
    /// The client speaks another protocol version.
    UnsupportedVersion,
    /// A display name that is empty or too long. (A malformed room name fails parsing and
    /// gets `invalidMessage`.)
    InvalidName,
    /// The room has reached its participant limit.
    RoomFull,
    /// The server has reached its room limit.
    TooManyRooms,
    /// The message names a track this participant does not own.
    UnknownTrack,
    /// A chat message that is empty or too long.
    InvalidChat,
    /// A simulcast offer the server does not forward: more than three encodings, or rids
    /// other than `q`, `h` and `f`, or one twice.
    InvalidSimulcast,
    /// The join needs a valid token: it had none, or one that is malformed, forged,
    /// signed with an unknown key, not yet valid, or for another room.
    Unauthorized,
    /// The join token has expired; ask for a new invitation.
    TokenExpired,
    /// The participant's grants do not allow this (publishing, a source, chat, an admin
    /// action).
    Forbidden,
    /// The message names a participant who is not in the room.
    UnknownParticipant,
    /// The request names a room that has no participants (admin API).
    UnknownRoom,
    /// Too many messages per second from this session, or too many joins per minute from
    /// this client's IP. The message was dropped; slow down.
    RateLimited,
    /// A per-participant cap: tracks published, subscriptions, ICE candidates per peer, or
    /// the size of an SDP.
    LimitReached,
    /// The server is draining for a restart and takes no new joins; try again shortly.
    ServerDraining,
    /// The server runs in a cluster and cannot reach the cluster's Redis (or every node
    /// is draining), so it cannot tell which node hosts the room; try again shortly. Calls
    /// in progress are not affected.
    ClusterUnavailable,
    /// Something failed inside the server; the call goes on.
    Internal,
}

/// Why a text frame is not a [`ClientMessage`].
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("malformed JSON: {0}")]
    Json(serde_json::Error),
    /// JSON, but its `type` is missing or names no message.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A known type with missing or wrong fields.
    #[error("invalid {kind} message: {source}")]
    Invalid {
        kind: String,
        source: serde_json::Error,
    },
}

impl ParseError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ParseError::Json(_) => ErrorCode::MalformedJson,
            ParseError::UnknownType(_) => ErrorCode::UnknownType,
            ParseError::Invalid { .. } => ErrorCode::InvalidMessage,
        }
    }
}

/// The `type` names of every client message, to tell an unknown type from a bad field.
pub const CLIENT_TYPES: &[&str] = &[
    "join",
    "leave",
    "publishOffer",
    "subscribeAnswer",
    "candidate",
    "setMute",
    "chat",
    "listRooms",
    "trackSettings",
    "removeParticipant",
    "muteTrack",
];

impl ClientMessage {
    /// Parses one text frame. The slow path (classifying a failure) runs only on error.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        match serde_json::from_str(text) {
            Ok(message) => Ok(message),
            Err(err) => {
                #[derive(Deserialize)]
                struct Tag {
                    #[serde(rename = "type")]
                    kind: Option<serde_json::Value>,
                }
                let Ok(tag) = serde_json::from_str::<Tag>(text) else {
                    return Err(ParseError::Json(err));
                };
                match tag.kind {
                    Some(serde_json::Value::String(kind))
                        if CLIENT_TYPES.contains(&kind.as_str()) =>
                    {
                        Err(ParseError::Invalid { kind, source: err })
                    }
                    Some(other) => Err(ParseError::UnknownType(match other {
                        serde_json::Value::String(s) => s,
                        v => v.to_string(),
                    })),
                    None => Err(ParseError::UnknownType(String::new())),
                }
            }
        }
    }
}

impl ServerMessage {
    /// Builds an `error` message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }

    /// Serializes to the text of one WebSocket frame.
    pub fn to_json(&self) -> String {
        // Serializing these plain types cannot fail: no maps with non-string keys, no
        // custom serializers.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests;
