//! Handing datagrams and media between media workers.
//!
//! Every worker has its own socket on the shared media port (`SO_REUSEPORT`), and the
//! kernel picks the socket that receives a datagram by a hash of its 4-tuple: a peer's
//! datagrams may land on a worker other than the one that owns the peer (its room's). The
//! [`Directory`] says which worker owns each ICE username fragment; a worker that receives
//! a datagram for another worker's peer passes it on through that worker's bounded
//! [`Inbox`], without a lock (a `std` bounded channel is a lock-free array queue), and wakes
//! it once per batch.
//!
//! A misplaced peer costs one hop per *received* datagram: a publisher's packet is
//! handed over once, then forwarded to every subscriber by its owner. Subscribers receive
//! little (RTCP).
//!
//! A room too big for one worker has participants on several (see [`crate::placement`]).
//! Then the publisher's worker also hands each decrypted packet of a track, once per
//! worker that has subscribers of it, to those workers' mirrors of the track
//! ([`Handed::Media`], see `worker/relay.rs`), and a mirror asks the publisher's worker
//! for keyframes the same way ([`Handed::Keyframe`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use bytes::BytesMut;
use chorus_protocol::TrackId;
use dashmap::DashMap;
use tokio::sync::Notify;

use crate::peer::MediaPacket;

/// Datagrams and relayed packets waiting for one worker from the others. 4096 is about
/// 40 ms of a worker receiving 100k datagrams per second all from misplaced peers or other
/// workers' publishers, enough to ride out one slow pass of the owner. When full, the item
/// is dropped and counted ([`HandoffStats::dropped`], [`HandoffStats::relay_dropped`]), as a
/// full socket buffer would drop it: media recovers by NACK or keyframe, ICE by its
/// retransmissions, a keyframe request by its retry.
pub const HANDOFF_QUEUE: usize = 4096;

/// The index of a media worker.
pub type WorkerIndex = u16;

/// Which worker owns each peer, by the ICE username fragment its STUN checks carry.
/// Written when a peer is made or removed, read only for STUN checks: never per RTP packet.
#[derive(Debug, Default)]
pub struct Directory {
    owners: DashMap<String, WorkerIndex>,
}

impl Directory {
    pub fn insert(&self, ufrag: &str, worker: WorkerIndex) {
        self.owners.insert(ufrag.to_owned(), worker);
    }

    pub fn remove(&self, ufrag: &str) {
        self.owners.remove(ufrag);
    }

    pub fn owner(&self, ufrag: &str) -> Option<WorkerIndex> {
        self.owners.get(ufrag).map(|w| *w)
    }
}

/// What one worker hands another.
pub enum Handed {
    /// A datagram that this worker's socket received for the other's peer.
    Datagram {
        from: SocketAddr,
        datagram: BytesMut,
    },
    /// A packet of a track published on this worker, for the other's mirror of it.
    Media {
        track: TrackId,
        layer: u8,
        /// Whether it starts a keyframe, and the frame's size where the codec says (as the
        /// publisher's worker found them, so the mirror need not parse again).
        keyframe: bool,
        size: Option<(u16, u16)>,
        packet: MediaPacket,
    },
    /// A subscriber on the other worker needs a keyframe of this worker's track.
    Keyframe { track: TrackId, layer: u8 },
}

/// Counters of the hand-over, per worker.
#[derive(Debug, Default)]
pub struct HandoffStats {
    /// Datagrams this worker received for another worker's peer and passed on.
    pub sent: AtomicU64,
    /// Of those, the ones the other worker's full inbox refused (dropped).
    pub dropped: AtomicU64,
    /// Datagrams other workers passed to this one.
    pub received: AtomicU64,
    /// Packets of this worker's publishers handed to other workers' mirrors (one per
    /// packet and mirror, whatever the mirror's subscriber count).
    pub relayed: AtomicU64,
    /// Of those, the ones the other worker's full inbox refused (dropped).
    pub relay_dropped: AtomicU64,
    /// Packets other workers handed to this one's mirrors.
    pub relayed_in: AtomicU64,
    /// Mirrors open on this worker: tracks published on another worker that subscribers
    /// here receive (a gauge).
    pub mirrors: AtomicU64,
}

/// The receiving end of one worker's inbox.
pub struct Inbox {
    rx: Receiver<Handed>,
    wake: Arc<Notify>,
}

impl Inbox {
    /// Waits until another worker handed something over (returns at once if it did since
    /// the last wait).
    pub async fn ready(&self) {
        self.wake.notified().await;
    }

    /// Makes the next [`Inbox::ready`] return at once (the owner stopped reading with
    /// datagrams left).
    pub fn wake_again(&self) {
        self.wake.notify_one();
    }

    /// What [`Inbox::ready`] waits on, to wait without borrowing the inbox (a task that
    /// must be `Send` cannot hold one across an await).
    pub fn notify(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The next handed-over item, if one waits.
    pub fn try_take(&self) -> Option<Handed> {
        self.rx.try_recv().ok()
    }
}

/// The sending ends of every worker's inbox; each worker holds a clone.
#[derive(Clone)]
pub struct Outboxes {
    to: Vec<(SyncSender<Handed>, Arc<Notify>)>,
}

impl Outboxes {
    /// Makes the inboxes of `workers` workers and the senders to them.
    pub fn new(workers: usize) -> (Self, Vec<Inbox>) {
        let mut to = Vec::with_capacity(workers);
        let mut inboxes = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::sync_channel(HANDOFF_QUEUE);
            let wake = Arc::new(Notify::new());
            to.push((tx, wake.clone()));
            inboxes.push(Inbox { rx, wake });
        }
        (Self { to }, inboxes)
    }

    /// Queues an item for `worker`, counted as `sent`, or drops it (false, counted as
    /// `dropped` too) when its inbox is full or gone. The worker is not woken yet: see
    /// [`Outboxes::wake`].
    pub fn push(
        &self,
        worker: WorkerIndex,
        handed: Handed,
        sent: &AtomicU64,
        dropped: &AtomicU64,
    ) -> bool {
        sent.fetch_add(1, Ordering::Relaxed);
        let queued =
            self.to
                .get(usize::from(worker))
                .is_some_and(|(tx, _)| match tx.try_send(handed) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
                });
        if !queued {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Wakes `worker` to read its inbox; called once per batch that pushed to it.
    pub fn wake(&self, worker: WorkerIndex) {
        if let Some((_, wake)) = self.to.get(usize::from(worker)) {
            wake.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.to.len()
    }

    pub fn is_empty(&self) -> bool {
        self.to.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handed(n: u8) -> Handed {
        Handed::Datagram {
            from: SocketAddr::from(([127, 0, 0, 1], 4000 + u16::from(n))),
            datagram: BytesMut::from(&[n; 3][..]),
        }
    }

    fn first_byte(handed: Handed) -> u8 {
        match handed {
            Handed::Datagram { datagram, .. } => datagram[0],
            _ => panic!("not a datagram"),
        }
    }

    fn push(out: &Outboxes, worker: WorkerIndex, n: u8, stats: &HandoffStats) -> bool {
        out.push(worker, handed(n), &stats.sent, &stats.dropped)
    }

    #[tokio::test]
    async fn datagrams_reach_the_owner_in_order_and_wake_it() {
        let (out, inboxes) = Outboxes::new(2);
        let stats = HandoffStats::default();
        for n in 0..5 {
            assert!(push(&out, 1, n, &stats));
        }
        out.wake(1);
        tokio::time::timeout(std::time::Duration::from_secs(1), inboxes[1].ready())
            .await
            .expect("woken");
        let got: Vec<u8> = std::iter::from_fn(|| inboxes[1].try_take())
            .map(first_byte)
            .collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert!(inboxes[0].try_take().is_none());
        assert_eq!(stats.sent.load(Ordering::Relaxed), 5);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_inbox_drops_and_counts() {
        let (out, inboxes) = Outboxes::new(1);
        let stats = HandoffStats::default();
        for n in 0..HANDOFF_QUEUE {
            assert!(push(&out, 0, n as u8, &stats));
        }
        assert!(!push(&out, 0, 1, &stats));
        assert!(!push(&out, 7, 1, &stats), "no such worker");
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        assert!(inboxes[0].try_take().is_some());
        assert!(push(&out, 0, 2, &stats), "room again after one is taken");
    }

    #[test]
    fn the_directory_names_owners() {
        let d = Directory::default();
        d.insert("abc", 1);
        assert_eq!(d.owner("abc"), Some(1));
        d.remove("abc");
        assert_eq!(d.owner("abc"), None);
    }
}
