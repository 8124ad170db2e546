//! What happens in rooms, for the outside world: the events the room state machine emits
//! ([`crate::room::Effect::Event`]) and the hub hands to its event sink (the webhooks).
//!
//! Emitting never waits: the sink is a bounded queue, and an event that does not fit is
//! dropped, counted (`event_drops`) and logged, so that a slow webhook receiver never slows
//! a room.

use chorus_protocol::{ByeReason, ParticipantId, RoomId, TrackId, TrackInfo};
use serde::Serialize;

/// Events between the rooms and their consumer (the webhook sender). Bounded: a burst of
/// joins and leaves (a big room closing: two events per participant and track) fits; when
/// the consumer falls this far behind, events are dropped and counted rather than held.
pub const EVENT_QUEUE: usize = 1024;

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LeaveReason {
    /// It said `leave`.
    Left,
    /// Its WebSocket closed without `leave`.
    Disconnected,
    /// Its session did not keep up with the room's messages and was dropped.
    TooSlow,
    /// Its media connection failed (ICE or DTLS).
    MediaFailed,
    /// A room admin or the operator removed it.
    Removed,
    /// A second session with the same identity took its place.
    Replaced,
    /// The operator closed the room.
    RoomClosed,
    /// The server is shutting down.
    ServerShutdown,
}

impl LeaveReason {
    /// What the participant is told in `bye`, if it is told: one that left or whose
    /// WebSocket is gone is not.
    pub fn bye(self) -> Option<ByeReason> {
        match self {
            LeaveReason::Left | LeaveReason::Disconnected | LeaveReason::TooSlow => None,
            LeaveReason::MediaFailed => Some(ByeReason::MediaFailed),
            LeaveReason::Removed | LeaveReason::Replaced => Some(ByeReason::Removed),
            LeaveReason::RoomClosed => Some(ByeReason::RoomClosed),
            LeaveReason::ServerShutdown => Some(ByeReason::ServerShutdown),
        }
    }
}

/// Something that happened in a room. Serialized as the body of a webhook, with the
/// event's name in `event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "event",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum RoomEvent {
    /// The room's first participant joined.
    RoomStarted { room: RoomId },
    /// The room's last participant left.
    RoomFinished { room: RoomId },
    ParticipantJoined {
        room: RoomId,
        participant_id: ParticipantId,
        /// The join token's identity; absent in open mode.
        #[serde(skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
        name: String,
    },
    ParticipantLeft {
        room: RoomId,
        participant_id: ParticipantId,
        #[serde(skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
        reason: LeaveReason,
    },
    TrackPublished {
        room: RoomId,
        participant_id: ParticipantId,
        track: TrackInfo,
    },
    TrackUnpublished {
        room: RoomId,
        participant_id: ParticipantId,
        track_id: TrackId,
    },
}

impl RoomEvent {
    /// The event's name, as in the body's `event` field.
    pub fn name(&self) -> &'static str {
        match self {
            RoomEvent::RoomStarted { .. } => "roomStarted",
            RoomEvent::RoomFinished { .. } => "roomFinished",
            RoomEvent::ParticipantJoined { .. } => "participantJoined",
            RoomEvent::ParticipantLeft { .. } => "participantLeft",
            RoomEvent::TrackPublished { .. } => "trackPublished",
            RoomEvent::TrackUnpublished { .. } => "trackUnpublished",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_their_name() {
        let room = RoomId::new("standup").expect("room");
        let events = [
            RoomEvent::RoomStarted { room: room.clone() },
            RoomEvent::ParticipantLeft {
                room,
                participant_id: ParticipantId(3),
                identity: Some("ada".into()),
                reason: LeaveReason::Removed,
            },
        ];
        for event in events {
            let json = serde_json::to_value(&event).expect("json");
            assert_eq!(json["event"], event.name());
        }
        let json = serde_json::to_string(&RoomEvent::ParticipantLeft {
            room: RoomId::new("a").expect("room"),
            participant_id: ParticipantId(3),
            identity: None,
            reason: LeaveReason::MediaFailed,
        })
        .expect("json");
        assert_eq!(
            json,
            r#"{"event":"participantLeft","room":"a","participantId":3,"reason":"mediaFailed"}"#
        );
    }
}
