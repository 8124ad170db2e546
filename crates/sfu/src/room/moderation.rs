//! What a room admin (the `roomAdmin` grant) or the operator (the admin API) may do to
//! other participants: remove them, and mute their tracks so that the server stops
//! forwarding them. Part of the room's sans-IO state machine.
//!
//! An admin mute shows as `muteChanged` to everyone and holds until an admin lifts it;
//! meanwhile the owner's own unmute is refused. Lifting it resumes forwarding but leaves
//! the track muted until its owner unmutes.

use chorus_protocol::api::{ParticipantDetails, RoomDetails};
use chorus_protocol::{ErrorCode, ParticipantId, RoomId, ServerMessage, TrackId};

use super::{Effect, Room, error};
use crate::events::LeaveReason;

impl Room {
    /// Whether `by` may moderate: the operator (`None`) always, a participant with the
    /// `roomAdmin` grant. Otherwise `by` is told why not.
    fn may_moderate(&self, by: Option<ParticipantId>, out: &mut Vec<Effect>) -> bool {
        let Some(by) = by else {
            return true;
        };
        if self.members.get(&by).is_some_and(|m| m.grants.room_admin) {
            return true;
        }
        out.push(error(
            by,
            ErrorCode::Forbidden,
            "only a room admin may remove or mute others",
        ));
        false
    }

    /// Tells `by` (if a participant) that `target` is not here.
    fn no_such_participant(
        by: Option<ParticipantId>,
        target: ParticipantId,
        out: &mut Vec<Effect>,
    ) {
        if let Some(by) = by {
            out.push(error(
                by,
                ErrorCode::UnknownParticipant,
                format!("participant {target} is not in this room"),
            ));
        }
    }

    pub(super) fn remove_by(
        &mut self,
        by: Option<ParticipantId>,
        target: ParticipantId,
        out: &mut Vec<Effect>,
    ) {
        if !self.may_moderate(by, out) {
            return;
        }
        if !self.members.contains_key(&target) {
            Self::no_such_participant(by, target, out);
            return;
        }
        self.leave(target, LeaveReason::Removed, out);
    }

    pub(super) fn mute_track(
        &mut self,
        by: Option<ParticipantId>,
        target: ParticipantId,
        track: TrackId,
        muted: bool,
        out: &mut Vec<Effect>,
    ) {
        if !self.may_moderate(by, out) {
            return;
        }
        let Some(member) = self.members.get_mut(&target) else {
            Self::no_such_participant(by, target, out);
            return;
        };
        let Some(info) = member.tracks.get_mut(&track) else {
            if let Some(by) = by {
                out.push(error(
                    by,
                    ErrorCode::UnknownTrack,
                    format!("participant {target} publishes no track {}", track.0),
                ));
            }
            return;
        };
        let was_silenced = if muted {
            !member.silenced.insert(track)
        } else {
            member.silenced.remove(&track)
        };
        if was_silenced != muted {
            out.push(Effect::Silence {
                track,
                silenced: muted,
            });
        }
        // Lifting an admin mute lets the owner unmute; it does not unmute for them.
        if muted && !info.muted {
            info.muted = true;
            self.broadcast(
                &ServerMessage::MuteChanged {
                    participant_id: target,
                    track_id: track,
                    muted: true,
                },
                out,
            );
        }
    }
}

/// What the operator does to a room through the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAction {
    /// The participant gets `bye` with reason `removed`.
    Remove { participant: ParticipantId },
    /// Stop (or resume) forwarding one of its tracks.
    MuteTrack {
        participant: ParticipantId,
        track: TrackId,
        muted: bool,
    },
    /// Everyone gets `bye` with reason `roomClosed`.
    Close,
    /// A `notice` to everyone, or to one participant. `time` is ms since the Unix epoch.
    Notice {
        to: Option<ParticipantId>,
        text: String,
        time: u64,
    },
}

/// Why the room refused an admin action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("no room {0} has participants")]
    UnknownRoom(RoomId),
    #[error("participant {0} is not in this room")]
    UnknownParticipant(ParticipantId),
    #[error("participant {0} publishes no track {1}")]
    UnknownTrack(ParticipantId, TrackId),
    #[error("a message has 1 to {0} characters")]
    InvalidText(usize),
}

impl AdminError {
    /// The code the API answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            AdminError::UnknownRoom(_) => ErrorCode::UnknownRoom,
            AdminError::UnknownParticipant(_) => ErrorCode::UnknownParticipant,
            AdminError::UnknownTrack(..) => ErrorCode::UnknownTrack,
            AdminError::InvalidText(_) => ErrorCode::InvalidChat,
        }
    }
}

impl Room {
    /// Performs an operator's action, or says why not (and changes nothing).
    pub fn admin(&mut self, action: AdminAction) -> Result<Vec<Effect>, AdminError> {
        let mut out = Vec::new();
        match action {
            AdminAction::Remove { participant } => {
                self.known(participant)?;
                self.remove_by(None, participant, &mut out);
            }
            AdminAction::MuteTrack {
                participant,
                track,
                muted,
            } => {
                if !self.known(participant)?.tracks.contains_key(&track) {
                    return Err(AdminError::UnknownTrack(participant, track));
                }
                self.mute_track(None, participant, track, muted, &mut out);
            }
            AdminAction::Close => out = self.handle(super::Input::Close),
            AdminAction::Notice { to, text, time } => {
                let text = text.trim().to_owned();
                let chars = text.chars().count();
                if chars == 0 || chars > self.limits.max_chat_chars {
                    return Err(AdminError::InvalidText(self.limits.max_chat_chars));
                }
                let notice = ServerMessage::Notice { text, time };
                match to {
                    Some(participant) => {
                        self.known(participant)?;
                        out.push(Effect::Send(participant, notice));
                    }
                    None => self.broadcast(&notice, &mut out),
                }
            }
        }
        Ok(out)
    }

    fn known(&self, participant: ParticipantId) -> Result<&super::Member, AdminError> {
        self.members
            .get(&participant)
            .ok_or(AdminError::UnknownParticipant(participant))
    }

    /// Everyone in the room, hidden participants included, as the operator sees them.
    pub fn details(&self) -> RoomDetails {
        RoomDetails {
            room: self.id.clone(),
            participants: self
                .members
                .iter()
                .map(|(id, m)| ParticipantDetails {
                    id: *id,
                    identity: m.identity.clone(),
                    name: m.name.clone(),
                    grants: m.grants.clone(),
                    tracks: m.tracks.values().cloned().collect(),
                    admin_muted: m.silenced.iter().copied().collect(),
                })
                .collect(),
            // the room task fills it in
            recording: None,
        }
    }
}
