//! The worker's side of the speaker election: it reads the levels (per packet, into each
//! audio track's [`LevelMeter`](crate::audio_level::LevelMeter)), reports them to the
//! rooms every [`LEVEL_REPORT_INTERVAL`](crate::audio_level::LEVEL_REPORT_INTERVAL), and
//! ranks the speaker the room elected in allocation.

use std::sync::atomic::Ordering;

use chorus_protocol::{MediaKind, ParticipantId};
use tokio::sync::mpsc;

use super::{MediaNotice, Worker};
use crate::allocate::Importance;

impl Worker {
    /// Sends each room one [`MediaNotice::AudioLevels`] with the mean loudness of each of
    /// its publishers of audio since the last report. Rooms are told apart by their notice
    /// queue (every participant of a room was registered with the room's). Allocates a
    /// little per report, never per packet.
    pub(super) fn report_levels(&mut self) {
        let mut rooms: Vec<(mpsc::Sender<MediaNotice>, Vec<(ParticipantId, u8)>)> = Vec::new();
        for route in self.tracks.values_mut() {
            if route.kind != MediaKind::Audio {
                continue;
            }
            let Some(loudness) = route.level.take() else {
                continue;
            };
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
    /// camera's again. Screen shares keep their own rank.
    pub(super) fn set_speaker(
        &mut self,
        previous: Option<ParticipantId>,
        current: Option<ParticipantId>,
    ) {
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
