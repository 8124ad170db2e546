//! One node link's task: the media and track state both ends share, and the loop that
//! runs the owner's or the satellite's side of it.
//!
//! The link holds a slot of the workers' hand-over ([`Fabric`]): its inbox receives what
//! the local workers hand to the far node (packets of the tracks it wants, keyframe
//! requests for the tracks it feeds here), and the far node's packets are handed from
//! here to the local workers (and, on an owner, to the other links) that mirror them.
//! Which tracks the far node wants, and which layers, is polled from each track's
//! [`SharedTrack`] every [`POLL`] and sent when it changes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chorus_protocol::TrackId;
use tokio::sync::mpsc;

use super::owner::OwnerSide;
use super::satellite::SatelliteSide;
use super::wire::{SpanMessage, TrackWire, read_media, write_media};
use super::{Fabric, Frame, LinkConn, LinkEntry, LinkStats, SERIAL, lock};
use crate::Hub;
use crate::handoff::{Handed, WorkerIndex};
use crate::worker::SharedTrack;

/// How often a link compares what its node wants of the far node's tracks with what it
/// last said, and looks for tracks it described that ended.
const POLL: Duration = Duration::from_millis(50);

/// How often each end of a link says it is alive (when a link is idle, this is all it
/// sends).
const KEEPALIVE: Duration = Duration::from_secs(1);

/// How long a link may hear nothing from the far node before it is closed: the far node
/// hangs, or the network between the two dropped without a TCP reset. Then the owner's
/// rooms let the satellite's participants go, and the satellite closes their sessions so
/// that their clients rejoin, as after a node's death.
const LINK_SILENCE: Duration = Duration::from_secs(5);

/// Requests from a satellite's rooms to its link task. Each carries one session's
/// command; the sessions await space, which slows only their own reading.
pub(super) const TO_LINK_QUEUE: usize = 256;

/// What both sides of a link do with tracks.
pub(super) struct Core {
    pub(super) hub: Hub,
    pub(super) peer: String,
    pub(super) slot: WorkerIndex,
    pub(super) out: mpsc::Sender<Frame>,
    pub(super) stats: Arc<LinkStats>,
    /// The satellite's participants of each room on the link.
    pub(super) rooms: Arc<Mutex<HashMap<chorus_protocol::RoomId, usize>>>,
    tracks: Mutex<Tracks>,
    /// Counts packets handed to the local workers (every hand-over counts what it sends).
    handed: AtomicU64,
}

#[derive(Default)]
struct Tracks {
    /// Tracks of this node described to the far node.
    exported: HashSet<TrackId>,
    /// Tracks of the far node mirrored here, with the `want` last sent for each.
    imported: HashMap<TrackId, Option<(bool, Option<u8>)>>,
}

impl Core {
    fn fabric(&self) -> &Fabric {
        &self.hub.inner.fabric
    }

    /// Sends a control message; a closed link shows as its receive ending.
    pub(super) async fn send(&self, message: &SpanMessage) {
        if let Ok(text) = serde_json::to_string(message) {
            let _ = self.out.send(Frame::Text(text)).await;
        }
    }

    /// The description of a local track for the far node (which then may mirror it), or
    /// None when the track is gone or is the far node's own.
    pub(super) fn describe(&self, track: TrackId) -> Option<TrackWire> {
        let share = self.fabric().shares.get(&track).map(|s| s.clone())?;
        if share.origin == self.slot {
            return None;
        }
        lock(&self.tracks).exported.insert(track);
        Some(TrackWire {
            track,
            publisher: share.publisher,
            kind: share.kind,
            codec: share.codec.as_ref().map(|c| c.to_wire()),
            costs: share
                .costs
                .iter()
                .map(|c| c.map(|c| (c.bitrate, c.width, c.height)))
                .collect(),
            screen: share.screen,
            silenced: share.silenced.load(Ordering::Relaxed),
        })
    }

    /// Makes a track of the far node known here, fed through this link.
    pub(super) fn import(&self, wire: TrackWire) {
        let shares = &self.fabric().shares;
        if shares.contains_key(&wire.track) {
            return;
        }
        let costs = wire.costs();
        let share = SharedTrack::new(
            self.slot,
            self.fabric().outboxes.len(),
            wire.publisher,
            wire.kind,
            wire.codec.map(crate::peer::SourceCodec::from_wire),
            costs,
            wire.screen,
        );
        share.silenced.store(wire.silenced, Ordering::Relaxed);
        shares.insert(wire.track, Arc::new(share));
        lock(&self.tracks).imported.insert(wire.track, None);
    }

    /// A message both sides handle alike; returns the message if it is not one.
    pub(super) fn on_track_message(&self, message: SpanMessage) -> Option<SpanMessage> {
        let shares = &self.fabric().shares;
        match message {
            SpanMessage::Want {
                track,
                fed,
                highest,
            } => {
                if let Some(share) = shares.get(&track).filter(|s| s.origin != self.slot) {
                    share.set_fed(self.slot, fed);
                    if fed {
                        share.set_demand(self.slot, highest);
                    }
                }
            }
            SpanMessage::Keyframe { track, layer } => {
                let origin = shares
                    .get(&track)
                    .map(|s| s.origin)
                    .filter(|o| *o != self.slot);
                if let Some(origin) = origin {
                    let outboxes = &self.fabric().outboxes;
                    let handed = Handed::Keyframe { track, layer };
                    if outboxes.push(origin, handed, &self.handed, &self.stats.packets_dropped) {
                        outboxes.wake(origin);
                    }
                }
            }
            SpanMessage::TrackEnded { track } => {
                shares.remove_if(&track, |_, s| s.origin == self.slot);
                lock(&self.tracks).imported.remove(&track);
            }
            SpanMessage::Alive => {}
            other => return Some(other),
        }
        None
    }

    /// A packet from the far node: handed to every local worker (and other link) that
    /// mirrors its track.
    fn on_media(&self, bytes: Vec<u8>, to_wake: &mut Vec<WorkerIndex>) {
        let Some(frame) = read_media(Bytes::from(bytes)) else {
            self.stats.packets_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
        let Some(share) = self
            .fabric()
            .shares
            .get(&frame.track)
            .filter(|s| s.origin == self.slot)
            .map(|s| s.clone())
        else {
            self.stats.packets_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let outboxes = &self.fabric().outboxes;
        for to in share.fed_workers().filter(|w| *w != self.slot) {
            let handed = Handed::Media {
                track: frame.track,
                layer: frame.layer,
                keyframe: frame.keyframe,
                size: frame.size,
                packet: frame.packet.relay_copy(),
            };
            if outboxes.push(to, handed, &self.handed, &self.stats.packets_dropped)
                && !to_wake.contains(&to)
            {
                to_wake.push(to);
            }
        }
    }

    /// Sends what the local workers handed to this link.
    async fn send_handed(&self, handed: Vec<Handed>) {
        for handed in handed {
            match handed {
                Handed::Media {
                    track,
                    layer,
                    keyframe,
                    size,
                    packet,
                } => {
                    let mut bytes = Vec::with_capacity(packet.wire_len() + 32);
                    write_media(&mut bytes, track, layer, keyframe, size, &packet);
                    self.stats.packets_out.fetch_add(1, Ordering::Relaxed);
                    let _ = self.out.send(Frame::Binary(bytes)).await;
                }
                Handed::Keyframe { track, layer } => {
                    self.send(&SpanMessage::Keyframe { track, layer }).await;
                }
                Handed::Datagram { .. } => {}
            }
        }
    }

    /// Tells the far node what this one now wants of its tracks, and which of this
    /// node's described tracks ended.
    async fn poll(&self) {
        let mut messages = Vec::new();
        {
            let shares = &self.fabric().shares;
            let mut tracks = lock(&self.tracks);
            let mut out = 0;
            tracks.exported.retain(|track| match shares.get(track) {
                Some(share) => {
                    out += u64::from(share.fed_workers().any(|w| w == self.slot));
                    true
                }
                None => {
                    messages.push(SpanMessage::TrackEnded { track: *track });
                    false
                }
            });
            self.stats.tracks_out.store(out, Ordering::Relaxed);
            let mut fed_in = 0;
            tracks.imported.retain(|track, said| {
                let Some(share) = shares.get(track).filter(|s| s.origin == self.slot) else {
                    return false;
                };
                let fed = share.is_fed();
                let highest = share.demands(share.costs.len().max(1)).max();
                fed_in += u64::from(fed);
                let now = (fed, highest);
                if *said != Some(now) {
                    *said = Some(now);
                    messages.push(SpanMessage::Want {
                        track: *track,
                        fed,
                        highest,
                    });
                }
                true
            });
            self.stats.tracks_in.store(fed_in, Ordering::Relaxed);
        }
        for message in &messages {
            self.send(message).await;
        }
    }

    /// The link is gone: the far node's tracks are forgotten here, and this node's stop
    /// being fed to it.
    fn close(&self) {
        let shares = &self.fabric().shares;
        let tracks = std::mem::take(&mut *lock(&self.tracks));
        for track in tracks.imported.keys() {
            shares.remove_if(track, |_, s| s.origin == self.slot);
        }
        for track in &tracks.exported {
            if let Some(share) = shares.get(track) {
                share.set_fed(self.slot, false);
            }
        }
    }
}

/// The most frames a link handles before it wakes the workers it handed packets to.
const LINK_BATCH: usize = 64;

async fn on_text(core: &Core, side: &mut Side, text: &str) {
    match serde_json::from_str::<SpanMessage>(text) {
        Ok(message) => {
            if let Some(message) = core.on_track_message(message) {
                match side {
                    Side::Owner(o) => o.on_message(message).await,
                    Side::Satellite(s) => s.on_message(message).await,
                }
            }
        }
        Err(err) => {
            tracing::warn!(peer = %core.peer, %err, "node link: a message that does not parse");
        }
    }
}

enum Side {
    Owner(OwnerSide),
    Satellite(SatelliteSide),
}

/// Runs a node link whose handshake succeeded, until either end closes it: `accepted`
/// when the far node dialled this one (this node owns the link's rooms), else this node
/// is the satellite.
pub async fn serve_link(hub: Hub, peer: String, accepted: bool, conn: LinkConn) {
    let LinkConn {
        mut incoming,
        outgoing,
    } = conn;
    let Some((slot, inbox)) = hub.inner.fabric.claim() else {
        tracing::warn!(%peer, "node link refused: {} links are open", super::MAX_LINKS);
        return;
    };
    let core = Arc::new(Core {
        hub: hub.clone(),
        peer: peer.clone(),
        slot,
        out: outgoing,
        stats: Arc::default(),
        rooms: Arc::default(),
        tracks: Mutex::default(),
        handed: AtomicU64::new(0),
    });
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let (mut side, to_owner) = if accepted {
        (Side::Owner(OwnerSide::new(core.clone())), None)
    } else {
        let (tx, rx) = mpsc::channel(TO_LINK_QUEUE);
        (
            Side::Satellite(SatelliteSide::new(core.clone(), rx)),
            Some(tx),
        )
    };
    hub.register_link(
        &peer,
        LinkEntry {
            accepted,
            stats: core.stats.clone(),
            rooms: core.rooms.clone(),
            to_owner,
            serial,
        },
    );
    tracing::info!(%peer, accepted, slot, "node link up");
    let mut poll = tokio::time::interval(POLL);
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    let mut heard = tokio::time::Instant::now();
    let handed_in = inbox.notify();
    loop {
        let request = async {
            match &mut side {
                Side::Satellite(s) => s.next_request().await,
                Side::Owner(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = incoming.recv() => {
                let Some(mut frame) = frame else { break };
                heard = tokio::time::Instant::now();
                // What arrived meanwhile goes in the same pass, and each worker that got
                // packets is woken once for all of them.
                let mut to_wake = Vec::new();
                for _ in 0..LINK_BATCH {
                    match frame {
                        Frame::Binary(bytes) => core.on_media(bytes, &mut to_wake),
                        Frame::Text(text) => on_text(&core, &mut side, &text).await,
                    }
                    match incoming.try_recv() {
                        Ok(next) => frame = next,
                        Err(_) => break,
                    }
                }
                for worker in to_wake {
                    core.fabric().outboxes.wake(worker);
                }
            }
            () = handed_in.notified() => {
                let handed: Vec<Handed> = std::iter::from_fn(|| inbox.try_take()).collect();
                core.send_handed(handed).await;
            }
            _ = poll.tick() => core.poll().await,
            _ = keepalive.tick() => {
                if heard.elapsed() > LINK_SILENCE {
                    tracing::warn!(%peer, "node link silent for {:?}; closing it", heard.elapsed());
                    break;
                }
                core.send(&SpanMessage::Alive).await;
            }
            Some(request) = request => {
                if let Side::Satellite(s) = &mut side {
                    s.on_request(request).await;
                }
            }
        }
    }
    tracing::info!(%peer, accepted, "node link closed");
    match side {
        Side::Owner(o) => o.close().await,
        Side::Satellite(s) => s.close(),
    }
    core.close();
    hub.unregister_link(&peer, accepted, serial);
    hub.inner.fabric.release(slot, inbox);
}
