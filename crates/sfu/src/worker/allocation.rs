//! The allocation pass of the worker: every [`ALLOCATION_INTERVAL`], each subscriber's
//! [`Allocator`] shares its downlink estimate among its subscriptions, the choices become
//! the targets of the subscriptions' layer switches, keyframes are asked for where a
//! switch waits for one, the subscriber hears of what changed (`streamState`), and each
//! simulcast publisher hears which layers anyone still needs (`publishLayers`, dynacast).
//!
//! The decisions are the sans-IO [`Allocator`] and [`SourceLayers`](crate::source)'s; this
//! module only gathers their inputs from the worker's tables and applies their outputs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chorus_protocol::{MediaKind, ParticipantId, PauseReason, ServerMessage, TrackId};

use super::{MediaNotice, Worker};
use crate::MediaError;
use crate::allocate::{Allocator, Choice, Claim, Tile, highest_needed};
use crate::layer::RIDS;
use crate::probe::Pacer;

/// How often every subscriber's allocation runs, besides right after anything it depends
/// on changed (a subscription, a tile, a connection). Fast enough that a congested link is
/// relieved within the 2 s a user notices, slow enough to cost nothing next to forwarding.
pub(super) const ALLOCATION_INTERVAL: Duration = Duration::from_millis(200);

/// What an audio subscription is reserved before its track's rate is measured: Opus at
/// a voice rate (32 kbit/s) and the overhead of its 50 packets a second on the link (about
/// 26 kbit/s). Once measured, the track's own rate counts instead: RED doubles the
/// payload. Audio is always forwarded; the reserve only keeps video from counting on it.
const AUDIO_RESERVE: u32 = 60_000;

/// The allocation state of one subscriber.
#[derive(Debug, Default)]
pub(super) struct Downlink {
    allocator: Allocator,
    /// How the subscriber shows each subscribed track, as it last said.
    tiles: HashMap<TrackId, Tile>,
    /// What the subscriber was last told of each video (`streamState`).
    reported: HashMap<TrackId, Choice>,
    /// The padding of the probe under way, if any (see `probing.rs`).
    pub(super) pacer: Option<Pacer>,
}

impl Worker {
    /// Records how `participant` shows `track`; an error if it does not subscribe to it.
    pub(super) fn set_tile(
        &mut self,
        participant: ParticipantId,
        track: TrackId,
        tile: Tile,
    ) -> Result<(), MediaError> {
        let media = self
            .participants
            .get_mut(&participant)
            .ok_or(MediaError::UnknownParticipant)?;
        let subscribed = media
            .subscriber
            .as_ref()
            .is_some_and(|peer| peer.outbound_tracks().any(|t| t == track));
        if !subscribed {
            return Err(MediaError::UnknownTrack);
        }
        media.downlink.tiles.insert(track, tile);
        Ok(())
    }

    /// One allocation pass over every subscriber, then dynacast over every track.
    pub(super) fn allocate(&mut self, now: Instant) {
        let mut keyframes: Vec<(TrackId, u8)> = Vec::new();
        let mut tally = Tally::default();
        for (participant, media) in &mut self.participants {
            let Some(peer) = media.subscriber.as_ref().filter(|p| p.is_connected()) else {
                continue;
            };
            let subscribed: Vec<TrackId> = peer.outbound_tracks().collect();
            let downlink = &mut media.downlink;
            downlink.tiles.retain(|t, _| subscribed.contains(t));
            downlink.reported.retain(|t, _| subscribed.contains(t));
            let mut claims = Vec::with_capacity(subscribed.len());
            for track in subscribed {
                // A track a room admin silenced goes to nobody and takes no share; its
                // subscriptions were cut when it was silenced.
                let Some(route) = self.tracks.get_mut(&track).filter(|r| !r.silenced) else {
                    continue;
                };
                let claim = match route.kind {
                    MediaKind::Audio => Claim::Audio {
                        bitrate: route.layers.flowing_rate(0, now).unwrap_or(AUDIO_RESERVE),
                    },
                    MediaKind::Video => Claim::Video {
                        importance: route.importance,
                        layers: route.layers.costs(now),
                        tile: downlink.tiles.get(&track).copied().unwrap_or(Tile::Unknown),
                    },
                };
                claims.push((track, claim));
            }
            // A subscriber that gives no transport-cc feedback has no estimate: no cap.
            let estimate = peer.downlink_estimate();
            let congested = estimate.is_some_and(|e| e.binding(now));
            if let Some(estimate) = estimate {
                tally.estimated += 1;
                tally.congested += u64::from(congested);
                tally.estimate_bps += u64::from(estimate.bps);
            }
            for (track, choice) in downlink.allocator.allocate(estimate, &claims, now) {
                let Some(route) = self.tracks.get_mut(&track) else {
                    continue;
                };
                let Some(sub) = route
                    .subscribers
                    .iter_mut()
                    .find(|s| s.participant == *participant)
                else {
                    continue;
                };
                let target = match choice {
                    Choice::Audio => Some(0),
                    Choice::Layer(layer) => Some(layer),
                    Choice::Paused(reason) => {
                        match reason {
                            PauseReason::LowBandwidth => tally.paused_low_bandwidth += 1,
                            PauseReason::NotVisible => tally.paused_not_visible += 1,
                        }
                        None
                    }
                };
                // Under congestion a layer down stops the higher one at once (see
                // `LayerSwitch::cut_to`); otherwise the old layer plays until the switch.
                if congested {
                    sub.switch.cut_to(target);
                } else {
                    sub.switch.set_target(target);
                }
                if let Some(layer) = sub.switch.needs_keyframe() {
                    keyframes.push((track, layer));
                }
                if route.kind == MediaKind::Video && downlink.reported.get(&track) != Some(&choice)
                {
                    let message = ServerMessage::StreamState {
                        track_id: track,
                        layer: choice.layer(),
                        paused: match choice {
                            Choice::Paused(reason) => Some(reason),
                            _ => None,
                        },
                    };
                    tracing::debug!(%participant, %track, ?choice, "stream state");
                    // Remembered only once told, as for dynacast below.
                    if notify(&media.notices, *participant, message, &self.stats) {
                        downlink.reported.insert(track, choice);
                    }
                }
            }
            let probe = downlink.allocator.probe();
            if downlink.follow_probe(probe) {
                tracing::debug!(%participant, ?probe, "probe");
                self.stats.probes.fetch_add(1, Ordering::Relaxed);
                self.next_pacing = Some(now);
            }
        }
        tally.publish(&self.stats);
        self.recording_pass(now, &mut keyframes);
        self.dynacast(now);
        for (track, layer) in keyframes {
            self.request_keyframe(track, layer, now);
        }
    }

    /// Tells each simulcast publisher which of its layers some subscriber needs, when
    /// that changed; layers above it are not sent until someone needs them again.
    ///
    /// A mirror of another worker's track tells that worker instead (see `relay.rs`),
    /// whose own pass counts it with its subscribers.
    fn dynacast(&mut self, now: Instant) {
        for (track, route) in &mut self.tracks {
            if route.layers.count() < 2 {
                continue;
            }
            // a recording needs its layer like a subscriber does
            let recorded = route.record.as_ref().and_then(|tap| tap.target());
            let local = route.subscribers.iter().filter_map(|s| s.switch.target());
            if route.is_mirror(self.index) {
                let highest = highest_needed(local.map(Choice::Layer));
                route.share.set_demand(self.index, highest);
                route.layers.set_wanted(highest, now);
                continue;
            }
            let mirrored = route.share.demands(route.layers.count());
            let highest = highest_needed(local.chain(recorded).chain(mirrored).map(Choice::Layer));
            if route.announced == Some(highest) {
                continue;
            }
            route.layers.set_wanted(highest, now);
            let rids = match highest {
                Some(top) => RIDS[..=usize::from(top)]
                    .iter()
                    .map(|r| (*r).to_owned())
                    .collect(),
                None => Vec::new(),
            };
            tracing::debug!(%track, ?highest, "publish layers");
            if let Some(media) = self.participants.get(&route.publisher) {
                let message = ServerMessage::PublishLayers {
                    track_id: *track,
                    rids,
                };
                // Remembered only once told: a notice the queue refused is sent again on
                // the next pass.
                if notify(&media.notices, route.publisher, message, &self.stats) {
                    route.announced = Some(highest);
                }
            }
        }
    }
}

/// What one allocation pass saw, for the gauges of [`WorkerStats`](super::WorkerStats).
#[derive(Debug, Default)]
struct Tally {
    paused_low_bandwidth: u64,
    paused_not_visible: u64,
    estimated: u64,
    congested: u64,
    estimate_bps: u64,
}

impl Tally {
    fn publish(&self, stats: &super::WorkerStats) {
        for (gauge, value) in [
            (&stats.paused_low_bandwidth, self.paused_low_bandwidth),
            (&stats.paused_not_visible, self.paused_not_visible),
            (&stats.subscribers_estimated, self.estimated),
            (&stats.subscribers_congested, self.congested),
            (&stats.downlink_estimate_bps, self.estimate_bps),
        ] {
            gauge.store(value, Ordering::Relaxed);
        }
    }
}

/// Queues `message` for `participant`; false (and counted) when the queue is full.
fn notify(
    notices: &tokio::sync::mpsc::Sender<MediaNotice>,
    participant: ParticipantId,
    message: ServerMessage,
    stats: &super::WorkerStats,
) -> bool {
    let sent = notices
        .try_send(MediaNotice::Deliver(participant, message))
        .is_ok();
    if !sent {
        stats.notice_drops.fetch_add(1, Ordering::Relaxed);
    }
    sent
}
