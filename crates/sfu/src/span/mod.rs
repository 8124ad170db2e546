//! Rooms that span nodes of a cluster.
//!
//! A room lives on one node, its *owner*: its room task there is the one authority on who
//! is in it, which tracks exist, mutes and chat. When the owner is full
//! (`cluster.max_participants_per_node`), new participants are placed on other nodes,
//! *satellites*. A satellite holds their WebSocket sessions and their media, and nothing
//! of the room's state: it opens a **node link** to the owner (authenticated by the
//! cluster crate), and over it
//!
//! - its sessions join the owner's room and talk to it (`satellite.rs`): the owner's room
//!   sees each of them as a member like any other, whose media lives on a *remote worker*;
//! - the owner's room drives the satellite's media worker for them (`owner.rs`): each
//!   [`crate::worker::WorkerCommand`] for a satellite's participant crosses as a
//!   [`wire::CommandWire`] and its reply comes back;
//! - media crosses once per track and link (`link.rs`): on each node the link is one more
//!   slot of the workers' hand-over ([`crate::handoff`]), so a track published on the owner
//!   is *mirrored* on the satellite exactly as a track published on another worker is
//!   mirrored inside one node, and the other way round. A satellite's track reaches
//!   another satellite through the owner's mirror of it (the links form a star).
//!
//! Keyframe requests and dynacast demand travel back along the same path as between
//! workers; NACKs are answered where the subscriber is, from its mirror's history.

mod link;
mod owner;
mod satellite;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chorus_protocol::RoomId;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::Hub;
use crate::handoff::{Inbox, Outboxes, WorkerIndex};
use crate::worker::TrackShares;

pub use link::serve_link;

/// How many node links one node holds at once: each is one slot of every track's
/// hand-over state. A link beyond this is refused (the satellite's joins fail and its
/// clients try again; the operator sees the warning).
pub const MAX_LINKS: usize = 16;

/// One frame of a node link's WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// The speaking end of a link's WebSocket: frames in, frames out. The socket closes when
/// `outgoing` is dropped; `incoming` ends when the socket does.
#[derive(Debug)]
pub struct LinkConn {
    pub incoming: mpsc::Receiver<Frame>,
    pub outgoing: mpsc::Sender<Frame>,
}

/// What the media workers and the node links share: every track's hand-over state, the
/// inboxes, and the inboxes of the link slots not in use.
pub struct Fabric {
    pub(crate) shares: Arc<TrackShares>,
    pub(crate) outboxes: Outboxes,
    free: Mutex<Vec<(WorkerIndex, Inbox)>>,
}

impl std::fmt::Debug for Fabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fabric").finish_non_exhaustive()
    }
}

impl Fabric {
    /// `link_inboxes`: the inboxes past the workers', one per link slot.
    pub(crate) fn new(
        shares: Arc<TrackShares>,
        outboxes: Outboxes,
        first_link: usize,
        link_inboxes: Vec<Inbox>,
    ) -> Self {
        let free = link_inboxes
            .into_iter()
            .enumerate()
            .filter_map(|(i, inbox)| Some((WorkerIndex::try_from(first_link + i).ok()?, inbox)))
            .rev()
            .collect();
        Self {
            shares,
            outboxes,
            free: Mutex::new(free),
        }
    }

    fn claim(&self) -> Option<(WorkerIndex, Inbox)> {
        lock(&self.free).pop()
    }

    fn release(&self, slot: WorkerIndex, inbox: Inbox) {
        while inbox.try_take().is_some() {}
        lock(&self.free).push((slot, inbox));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A link's counters.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Media packets sent to the other node: one per packet of each track it wants,
    /// whatever the number of its subscribers.
    pub packets_out: AtomicU64,
    pub packets_in: AtomicU64,
    /// Media frames that did not parse, or named a track this node does not mirror.
    pub packets_dropped: AtomicU64,
    /// Tracks the other node wants from this one now (a gauge).
    pub tracks_out: AtomicU64,
    /// Tracks this node wants from the other now (a gauge).
    pub tracks_in: AtomicU64,
}

/// One open link, as `/api/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkSummary {
    /// The node at the other end.
    pub node: String,
    /// Whether this node is the link's owner end (the other node dialled it).
    pub accepted: bool,
    /// The rooms on the link, with how many of their participants live on the satellite.
    pub rooms: HashMap<String, usize>,
    pub packets_out: u64,
    pub packets_in: u64,
    pub packets_dropped: u64,
    pub tracks_out: u64,
    pub tracks_in: u64,
}

/// A link in the hub's registry.
pub(crate) struct LinkEntry {
    accepted: bool,
    stats: Arc<LinkStats>,
    /// The satellite's participants of each room on the link.
    rooms: Arc<Mutex<HashMap<RoomId, usize>>>,
    /// On a satellite: how its rooms reach the link task.
    to_owner: Option<mpsc::Sender<satellite::ToLink>>,
    serial: u64,
}

static SERIAL: AtomicU64 = AtomicU64::new(0);

/// The hub's node links, by (other node, whether this node accepted it).
pub(crate) type Links = dashmap::DashMap<(String, bool), LinkEntry>;

impl Hub {
    /// The open node links.
    pub fn links(&self) -> Vec<LinkSummary> {
        let mut list: Vec<LinkSummary> = self
            .inner
            .links
            .iter()
            .map(|entry| {
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let s = &entry.stats;
                LinkSummary {
                    node: entry.key().0.clone(),
                    accepted: entry.accepted,
                    rooms: lock(&entry.rooms)
                        .iter()
                        .map(|(r, n)| (r.as_str().to_owned(), *n))
                        .collect(),
                    packets_out: get(&s.packets_out),
                    packets_in: get(&s.packets_in),
                    packets_dropped: get(&s.packets_dropped),
                    tracks_out: get(&s.tracks_out),
                    tracks_in: get(&s.tracks_in),
                }
            })
            .collect();
        list.sort_by(|a, b| (&a.node, a.accepted).cmp(&(&b.node, b.accepted)));
        list
    }

    /// Whether `room` is a satellite room here (its owner is another node).
    pub fn is_satellite(&self, room: &RoomId) -> bool {
        self.inner.rooms.get(room).is_some_and(|e| e.satellite)
    }

    /// Whether a link from this node (a satellite) to `owner` is open.
    pub fn has_link_to(&self, owner: &str) -> bool {
        self.inner.links.contains_key(&(owner.to_owned(), false))
    }

    /// The satellites of a room this node owns, with how many of its participants each
    /// holds.
    pub fn satellites(&self, room: &RoomId) -> Vec<(String, usize)> {
        self.inner
            .links
            .iter()
            .filter(|e| e.accepted)
            .filter_map(|e| Some((e.key().0.clone(), *lock(&e.rooms).get(room)?)))
            .collect()
    }

    /// How many of a room's participants have their media on this node (for an owner:
    /// not those on satellites).
    pub fn local_participants(&self, room: &RoomId) -> usize {
        self.inner.rooms.get(room).map_or(0, |e| e.placed.len())
    }

    fn register_link(&self, peer: &str, entry: LinkEntry) {
        self.inner
            .links
            .insert((peer.to_owned(), entry.accepted), entry);
    }

    fn unregister_link(&self, peer: &str, accepted: bool, serial: u64) {
        self.inner
            .links
            .remove_if(&(peer.to_owned(), accepted), |_, e| e.serial == serial);
    }
}
