//! Rooms that span workers: mirrors of the tracks that other workers publish.
//!
//! A track lives on its publisher's worker. A worker whose participants subscribe to a
//! track published on another keeps a *mirror* of it: a [`TrackRoute`] like any other,
//! with its own subscriptions and layer switches, its own history (NACKs are answered
//! where the subscriber lives) and its own layer meters (allocation reads them). The
//! publisher's worker hands each decrypted packet over once per mirroring worker
//! ([`Handed::Media`]), whatever the number of subscribers there; the mirror's worker
//! rewrites and encrypts the copies. Keyframe requests go back the same way
//! ([`Handed::Keyframe`]). Which layers the mirror's subscribers need (dynacast) reaches
//! the publisher's worker through the track's [`SharedTrack`].
//!
//! What the workers share of a track is its [`SharedTrack`], in the [`TrackShares`]
//! registry: written when a track is published or ends and when a mirror opens or closes;
//! read per packet only through atomics (which workers want the packets), never a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Instant;

use chorus_protocol::{MediaKind, ParticipantId, TrackId};
use dashmap::DashMap;

use super::{Keyframes, TrackRoute, Worker, fan_out, levels};
use crate::allocate::LayerCost;
use crate::audio_level::LevelMeter;
use crate::handoff::{Handed, HandoffStats, Outboxes, WorkerIndex};
use crate::history::History;
use crate::peer::{MediaPacket, SourceCodec};
use crate::source::SourceLayers;

/// Every published track's [`SharedTrack`], by id.
pub(crate) type TrackShares = DashMap<TrackId, Arc<SharedTrack>>;

/// `SharedTrack::demand` of a worker that wants no layer.
const DEMAND_NONE: u8 = 0;
/// `SharedTrack::demand` of a worker that has not said yet: every layer, so that nothing
/// its subscribers are about to be given is paused.
const DEMAND_UNTOLD: u8 = u8::MAX;

/// What a track's publisher's worker shares with the workers that mirror it.
#[derive(Debug)]
pub struct SharedTrack {
    /// The publisher's worker.
    pub origin: WorkerIndex,
    pub publisher: ParticipantId,
    pub kind: MediaKind,
    pub codec: Option<SourceCodec>,
    /// What the publisher declared of each layer.
    pub costs: Vec<Option<LayerCost>>,
    /// A screen share (ranked above cameras).
    pub screen: bool,
    /// A room admin silenced it (set by its publisher's worker), so that a mirror opened
    /// later starts silenced too.
    pub silenced: AtomicBool,
    /// By worker: whether it mirrors the track and wants its packets.
    feeds: Box<[AtomicBool]>,
    /// How many of `feeds` are set: the per-packet test.
    fed: AtomicUsize,
    /// By worker: the highest layer its subscribers need, plus one ([`DEMAND_NONE`]: none).
    demand: Box<[AtomicU8]>,
}

impl SharedTrack {
    pub fn new(
        origin: WorkerIndex,
        workers: usize,
        publisher: ParticipantId,
        kind: MediaKind,
        codec: Option<SourceCodec>,
        costs: Vec<Option<LayerCost>>,
        screen: bool,
    ) -> Self {
        Self {
            origin,
            publisher,
            kind,
            codec,
            costs,
            screen,
            silenced: AtomicBool::new(false),
            feeds: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            fed: AtomicUsize::new(0),
            demand: (0..workers).map(|_| AtomicU8::new(DEMAND_UNTOLD)).collect(),
        }
    }

    /// Starts (`true`) or stops feeding `worker`'s mirror.
    pub fn set_fed(&self, worker: WorkerIndex, on: bool) {
        let Some(feed) = self.feeds.get(usize::from(worker)) else {
            return;
        };
        if on && let Some(demand) = self.demand.get(usize::from(worker)) {
            demand.store(DEMAND_UNTOLD, Ordering::Relaxed);
        }
        if feed.swap(on, Ordering::AcqRel) != on {
            if on {
                self.fed.fetch_add(1, Ordering::AcqRel);
            } else {
                self.fed.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Whether any worker mirrors the track (one atomic load: the per-packet test).
    pub fn is_fed(&self) -> bool {
        self.fed.load(Ordering::Relaxed) > 0
    }

    /// The workers that mirror the track.
    pub fn fed_workers(&self) -> impl Iterator<Item = WorkerIndex> + '_ {
        self.feeds
            .iter()
            .enumerate()
            .filter(|(_, f)| f.load(Ordering::Relaxed))
            .filter_map(|(w, _)| WorkerIndex::try_from(w).ok())
    }

    /// Records the highest layer `worker`'s subscribers need.
    pub fn set_demand(&self, worker: WorkerIndex, highest: Option<u8>) {
        if let Some(demand) = self.demand.get(usize::from(worker)) {
            let value = highest.map_or(DEMAND_NONE, |l| l.saturating_add(1).min(DEMAND_UNTOLD - 1));
            demand.store(value, Ordering::Relaxed);
        }
    }

    /// The highest layer each mirroring worker needs (of `count` layers); a worker that has
    /// not said needs the top one.
    pub fn demands(&self, count: usize) -> impl Iterator<Item = u8> + '_ {
        let top = u8::try_from(count.saturating_sub(1)).unwrap_or(u8::MAX);
        self.feeds
            .iter()
            .zip(self.demand.iter())
            .filter(|(f, _)| f.load(Ordering::Relaxed))
            .filter_map(move |(_, d)| match d.load(Ordering::Relaxed) {
                DEMAND_NONE => None,
                DEMAND_UNTOLD => Some(top),
                n => Some((n - 1).min(top)),
            })
    }
}

/// Hands one packet of a track published here to every worker that mirrors it; counts
/// what the full inboxes refused. Allocates nothing (see [`MediaPacket::relay_copy`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn hand_over(
    share: &SharedTrack,
    outboxes: &Outboxes,
    to_wake: &mut [bool],
    stats: &HandoffStats,
    track: TrackId,
    layer: u8,
    (keyframe, size): (bool, Option<(u16, u16)>),
    packet: &MediaPacket,
) {
    for worker in share.fed_workers() {
        let handed = Handed::Media {
            track,
            layer,
            keyframe,
            size,
            packet: packet.relay_copy(),
        };
        if outboxes.push(worker, handed, &stats.relayed, &stats.relay_dropped) {
            to_wake[usize::from(worker)] = true;
        }
    }
}

impl Worker {
    /// The route of `track` here: its own if published here, else a mirror, opened now
    /// if the track is published on another worker.
    pub(super) fn route_or_mirror(
        &mut self,
        track: TrackId,
        now: Instant,
    ) -> Option<&mut TrackRoute> {
        if !self.tracks.contains_key(&track) {
            let share = self.shares.get(&track).map(|s| s.clone())?;
            if share.origin == self.index {
                return None;
            }
            let history = if share.kind == MediaKind::Video {
                (0..share.costs.len()).map(|_| History::default()).collect()
            } else {
                Vec::new()
            };
            let route = TrackRoute {
                publisher: share.publisher,
                kind: share.kind,
                importance: levels::importance_of(
                    &self.speakers,
                    share.publisher,
                    share.kind,
                    share.screen,
                ),
                keyframes: Keyframes::of(share.kind, share.codec.as_ref()),
                codec: share.codec.clone(),
                subscribers: Vec::new(),
                layers: SourceLayers::new(share.costs.len(), &share.costs, now),
                history,
                announced: None,
                silenced: share.silenced.load(Ordering::Relaxed),
                level: LevelMeter::default(),
                record: None,
                share: share.clone(),
            };
            self.tracks.insert(track, route);
            share.set_fed(self.index, true);
            self.stats.handoff.mirrors.fetch_add(1, Ordering::Relaxed);
        }
        self.tracks.get_mut(&track)
    }

    /// Closes the mirrors that no subscriber here uses any more: their publisher's worker
    /// stops handing their packets over.
    pub(super) fn close_idle_mirrors(&mut self) {
        let (index, stats) = (self.index, &self.stats);
        self.tracks.retain(|_, route| {
            let idle = route.is_mirror(index) && route.subscribers.is_empty();
            if idle {
                route.share.set_fed(index, false);
                stats.handoff.mirrors.fetch_sub(1, Ordering::Relaxed);
            }
            !idle
        });
    }

    /// A packet that another worker handed to this one's mirror of `track`: forwarded to
    /// the subscribers here as the publisher's worker forwards to its own.
    pub(super) fn relayed(
        &mut self,
        track: TrackId,
        layer: u8,
        (keyframe, size): (bool, Option<(u16, u16)>),
        packet: MediaPacket,
        now: Instant,
    ) {
        self.stats
            .handoff
            .relayed_in
            .fetch_add(1, Ordering::Relaxed);
        let here = self.index;
        let Some(route) = self.tracks.get_mut(&track).filter(|r| r.is_mirror(here)) else {
            // the mirror closed while the packet was on its way
            return;
        };
        route.layers.on_packet(layer, packet.link_len(), size, now);
        fan_out(
            &mut route.subscribers,
            &mut self.participants,
            &self.stats,
            &mut self.touched,
            track,
            layer,
            keyframe,
            &packet,
            now,
        );
        if let Some(history) = route.history.get_mut(usize::from(layer)) {
            history.store(packet.ssrc(), packet.sequence_number(), packet);
        }
    }

    /// Asks the publisher's worker of a mirrored track for a keyframe of `layer`.
    pub(super) fn request_relayed_keyframe(
        &mut self,
        origin: WorkerIndex,
        track: TrackId,
        layer: u8,
    ) {
        let stats = &self.stats.handoff;
        // counted with the relayed packets: both are what this worker asks of another
        if self.outboxes.push(
            origin,
            Handed::Keyframe { track, layer },
            &stats.relayed,
            &stats.relay_dropped,
        ) {
            self.to_wake[usize::from(origin)] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(workers: usize) -> SharedTrack {
        SharedTrack::new(
            0,
            workers,
            ParticipantId(1),
            MediaKind::Video,
            None,
            vec![None; 3],
            false,
        )
    }

    #[test]
    fn feeds_are_counted_once_each() {
        let s = share(3);
        assert!(!s.is_fed());
        s.set_fed(1, true);
        s.set_fed(1, true);
        s.set_fed(2, true);
        assert!(s.is_fed());
        assert_eq!(s.fed_workers().collect::<Vec<_>>(), vec![1, 2]);
        s.set_fed(1, false);
        s.set_fed(1, false);
        assert_eq!(s.fed_workers().collect::<Vec<_>>(), vec![2]);
        s.set_fed(2, false);
        assert!(!s.is_fed());
        s.set_fed(9, true);
        assert!(!s.is_fed(), "no such worker");
    }

    #[test]
    fn a_new_mirror_needs_every_layer_until_it_says() {
        let s = share(3);
        s.set_fed(1, true);
        assert_eq!(s.demands(3).collect::<Vec<_>>(), vec![2]);
        s.set_demand(1, Some(0));
        assert_eq!(s.demands(3).collect::<Vec<_>>(), vec![0]);
        s.set_demand(1, None);
        assert_eq!(s.demands(3).count(), 0);
        // a worker that stopped mirroring needs nothing, and says again when it is back
        s.set_fed(2, true);
        s.set_demand(2, Some(1));
        s.set_fed(2, false);
        assert_eq!(s.demands(3).count(), 0);
        s.set_fed(2, true);
        assert_eq!(s.demands(3).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn demands_stay_within_the_track_layers() {
        let s = share(2);
        s.set_fed(1, true);
        s.set_demand(1, Some(7));
        assert_eq!(s.demands(3).collect::<Vec<_>>(), vec![2]);
        s.set_demand(1, Some(u8::MAX));
        assert_eq!(s.demands(1).collect::<Vec<_>>(), vec![0]);
    }
}
