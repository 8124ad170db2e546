//! What a room admin (the `roomAdmin` grant) or the operator (the admin API) may do to
//! other participants: remove them, and mute their tracks so that the server stops
//! forwarding them. Part of the room's sans-IO state machine.
//!
//! An admin mute shows as `muteChanged` to everyone and holds until an admin lifts it;
//! meanwhile the owner's own unmute is refused. Lifting it resumes forwarding but leaves
//! the track muted until its owner unmutes.

use chorus_protocol::{ErrorCode, ParticipantId, ServerMessage, TrackId};

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
