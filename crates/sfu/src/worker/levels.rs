//! The worker's side of the speaker election: it reads the levels (per packet, into each
//! audio track's [`LevelMeter`](crate::audio_level::LevelMeter)), reports them to the
//! rooms every [`LEVEL_REPORT_INTERVAL`](crate::audio_level::LEVEL_REPORT_INTERVAL), and
//! ranks the speaker the room elected in allocation.

use std::sync::atomic::Ordering;

use chorus_protocol::{MediaKind, ParticipantId};
use tokio::sync::mpsc;

use super::{MediaNotice, Worker};
use crate::allocate::Importance;

/// One room's report: its notice queue and its publishers' levels.
type RoomLevels = (mpsc::Sender<MediaNotice>, Vec<(ParticipantId, u8)>);

impl Worker {
    /// Sends each room one [`MediaNotice::AudioLevels`] with the mean loudness of each of
    /// its publishers of audio since the last report (silence for a track a room admin
    /// muted, which is forwarded to nobody). Rooms are told apart by their notice
    /// queue (every participant of a room was registered with the room's). Allocates a
    /// little per report, never per packet.
    pub(super) fn report_levels(&mut self) {
        let mut rooms: Vec<RoomLevels> = Vec::new();
        for route in self.tracks.values_mut() {
            if route.kind != MediaKind::Audio {
                continue;
            }
            let Some(loudness) = route.level.take() else {
                continue;
            };
            // Muted by a room admin: nobody hears it, so it speaks to nobody.
            let loudness = if route.silenced { 0 } else { loudness };
            let Some(media) = self.participants.get(&route.publisher) else {
                continue;
            };
            match rooms
                .iter_mut()
                .find(|(tx, _)| tx.same_channel(&media.notices))
            {
                Some((_, levels)) => levels.push((route.publisher, loudness)),
                None => rooms.push((media.notices.clone(), vec![(route.publisher, loudness)])),
            }
        }
        for (tx, levels) in rooms {
            if tx.try_send(MediaNotice::AudioLevels(levels)).is_err() {
                self.stats.notice_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Ranks `current`'s cameras as the active speaker's, and `previous`'s as any
    /// camera's again (and so the cameras they publish later). Screen shares keep their
    /// own rank.
    pub(super) fn set_speaker(
        &mut self,
        previous: Option<ParticipantId>,
        current: Option<ParticipantId>,
    ) {
        self.speakers.retain(|p| Some(*p) != previous);
        if let Some(current) = current
            && !self.speakers.contains(&current)
        {
            self.speakers.push(current);
        }
        for route in self.tracks.values_mut() {
            if route.kind != MediaKind::Video || route.importance == Importance::Screen {
                continue;
            }
            if Some(route.publisher) == current {
                route.importance = Importance::Speaker;
            } else if Some(route.publisher) == previous {
                route.importance = Importance::Other;
            }
        }
    }
}

/// The rank a new track of `publisher` gets: a screen share's, the active speaker's for a
/// camera of a room's first speaker, or any camera's.
pub(super) fn importance_of(
    speakers: &[ParticipantId],
    publisher: ParticipantId,
    kind: MediaKind,
    screen: bool,
) -> Importance {
    if screen {
        Importance::Screen
    } else if kind == MediaKind::Video && speakers.contains(&publisher) {
        Importance::Speaker
    } else {
        Importance::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_first_speaker_s_camera_ranks_as_the_speaker_s() {
        let (ada, bob) = (ParticipantId(1), ParticipantId(2));
        let speakers = [ada];
        assert_eq!(
            importance_of(&speakers, ada, MediaKind::Video, false),
            Importance::Speaker
        );
        assert_eq!(
            importance_of(&speakers, ada, MediaKind::Video, true),
            Importance::Screen,
            "a screen share keeps its rank"
        );
        assert_eq!(
            importance_of(&speakers, ada, MediaKind::Audio, false),
            Importance::Other
        );
        assert_eq!(
            importance_of(&speakers, bob, MediaKind::Video, false),
            Importance::Other
        );
    }
}
