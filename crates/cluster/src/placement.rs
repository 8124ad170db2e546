//! The placement decisions, sans-IO: where a join goes, and which node takes a new room.
//!
//! Liveness is never decided here from clocks. A node is live while its key exists in
//! Redis (the key's TTL runs on the Redis server's clock); the caller hands in the records
//! it could read and verify, and nothing else. The `sentAtMs` a record carries is never
//! compared with anything, so a node whose clock is skewed cannot make another look dead,
//! nor itself look fresher.

use std::time::{Duration, Instant};

use crate::record::NodeRecord;

/// A node whose media worker is busier than this share of its core takes a new room only
/// when every node is.
pub const CPU_HIGH: f64 = 0.85;

/// What a join that reached this node should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Join here: the room lives here (or is claimed for this node).
    Local,
    /// The room lives on another live node: send the client there.
    Redirect { node: String, url: String },
    /// The room has no owner: choose a node and claim it.
    Place,
    /// The room's owner is gone (its node key expired): take the room over, atomically,
    /// on the condition that `stale` is still the owner and still has no node key.
    Reclaim { stale: String },
    /// The room's owner has a key but no valid record (a bad signature): wait for the
    /// room key to expire.
    Wait,
}

/// What the owner lookup found, for [`route`].
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    /// The room key does not exist.
    None,
    /// The room key names this node.
    Me,
    /// Another node owns the room: its verified record, if its key holds one.
    Other {
        id: &'a str,
        record: Option<&'a NodeRecord>,
        /// Whether its node key exists at all (with or without a valid record).
        key_exists: bool,
    },
}

/// Decides what a join for a room does.
///
/// - `hosted_here`: this node's hub has the room now. Such a join always stays here, even if
///   Redis names another owner (which can only happen after Redis lost its data: see
///   docs/cluster.md), so that joins to a running call never depend on Redis.
/// - `draining`: this node takes no new rooms; a room claimed for it but not started here
///   is placed again elsewhere.
pub fn route(hosted_here: bool, draining: bool, owner: Owner<'_>) -> Route {
    if hosted_here {
        return Route::Local;
    }
    match owner {
        Owner::None => Route::Place,
        Owner::Me if draining => Route::Place,
        Owner::Me => Route::Local,
        Owner::Other {
            id,
            record: Some(record),
            ..
        } => Route::Redirect {
            // A draining owner keeps its rooms: their joins still go there (and it
            // refuses them with `serverDraining`, as a single server does).
            node: id.to_owned(),
            url: record.ws_url(),
        },
        Owner::Other {
            id,
            record: None,
            key_exists: false,
        } => Route::Reclaim {
            stale: id.to_owned(),
        },
        Owner::Other {
            record: None,
            key_exists: true,
            ..
        } => Route::Wait,
    }
}

/// Rooms this node has placed on other nodes recently, which their records cannot show
/// yet (a record is at most one heartbeat old). Counted as load for a while, so that a
/// burst of new rooms does not all go to the node that looked emptiest a moment ago.
#[derive(Debug, Default)]
pub struct Recent {
    placed: Vec<(String, Instant)>,
}

impl Recent {
    /// Remembers that a room went to `node` at `now`.
    pub fn placed(&mut self, node: &str, now: Instant) {
        self.placed.push((node.to_owned(), now));
    }

    /// Rooms placed on `node` within `window` before `now`.
    pub fn count(&self, node: &str, now: Instant, window: Duration) -> u64 {
        self.placed
            .iter()
            .filter(|(n, at)| n == node && now.saturating_duration_since(*at) < window)
            .count() as u64
    }

    /// Forgets placements older than `window`.
    pub fn expire(&mut self, now: Instant, window: Duration) {
        self.placed
            .retain(|(_, at)| now.saturating_duration_since(*at) < window);
    }
}

/// A node's load for placement: its participants, plus one for each room it hosts (a room
/// costs a task and its signaling even when small), plus the rooms placed on it recently.
pub fn load_of(record: &NodeRecord, recent: u64) -> u64 {
    record.participants + record.rooms.len() as u64 + recent
}

/// A stable pseudo-random rank of `node` for `room` (rendezvous hashing): ties between
/// equally loaded nodes go to a different node for different rooms, the same for the same.
fn tie_rank(room: &str, node: &str) -> u64 {
    // FNV-1a 64 over room, a separator and node.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in room.bytes().chain([0xff]).chain(node.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Chooses the node for a new room among `nodes` (the live ones, with verified records,
/// this node's own among them): never a draining node; a node over [`CPU_HIGH`] only when
/// all are; then the least [`load_of`] (with `recent(id)` placements); ties by rendezvous
/// rank. None when every node drains.
pub fn choose<'a>(
    room: &str,
    nodes: &'a [NodeRecord],
    recent: impl Fn(&str) -> u64,
) -> Option<&'a NodeRecord> {
    nodes.iter().filter(|n| !n.draining).min_by_key(|n| {
        (
            n.cpu >= CPU_HIGH,
            load_of(n, recent(&n.id)),
            std::cmp::Reverse(tie_rank(room, &n.id)),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    fn node(id: &str, participants: u64) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            url: format!("http://{id}.example:8080"),
            draining: false,
            participants,
            forwarded_pps: 0,
            cpu: 0.1,
            rooms: BTreeMap::new(),
            sent_at_ms: 1_000,
        }
    }

    #[test]
    fn a_room_goes_to_the_least_loaded_node() {
        let nodes = [node("a", 10), node("b", 2), node("c", 5)];
        assert_eq!(choose("r", &nodes, |_| 0).map(|n| n.id.as_str()), Some("b"));
        // rooms count too: b's two rooms make it heavier than c
        let mut b = node("b", 2);
        b.rooms = BTreeMap::from([("x".into(), 1), ("y".into(), 1), ("z".into(), 0)]);
        let mut c = node("c", 3);
        c.rooms = BTreeMap::from([("w".into(), 3)]);
        assert_eq!(
            choose("r", &[node("a", 10), b, c], |_| 0).map(|n| n.id.as_str()),
            Some("c")
        );
    }

    #[test]
    fn draining_and_busy_nodes_are_passed_over() {
        let mut a = node("a", 0);
        a.draining = true;
        let mut b = node("b", 0);
        b.cpu = 0.95;
        let c = node("c", 50);
        assert_eq!(
            choose("r", &[a.clone(), b.clone(), c], |_| 0).map(|n| n.id.as_str()),
            Some("c")
        );
        // all busy: the least loaded of them; all draining: none
        let mut c = node("c", 50);
        c.cpu = 0.9;
        assert_eq!(
            choose("r", &[a.clone(), b, c], |_| 0).map(|n| n.id.as_str()),
            Some("b")
        );
        assert!(choose("r", &[a], |_| 0).is_none());
    }

    #[test]
    fn recent_placements_spread_a_burst_of_rooms() {
        let nodes = [node("a", 0), node("b", 0), node("c", 0)];
        let mut recent = Recent::default();
        let t0 = Instant::now();
        let window = Duration::from_secs(2);
        let mut per_node: HashMap<String, u32> = HashMap::new();
        for i in 0..30 {
            let room = format!("room-{i}");
            let chosen = choose(&room, &nodes, |id| recent.count(id, t0, window)).expect("a node");
            recent.placed(&chosen.id, t0);
            *per_node.entry(chosen.id.clone()).or_default() += 1;
        }
        assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![10; 3]);
        // placements are forgotten after the window
        let later = t0 + window;
        assert_eq!(recent.count("a", later, window), 0);
        recent.expire(later, window);
        assert!(recent.placed.is_empty());
    }

    #[test]
    fn ties_are_broken_differently_for_different_rooms() {
        let nodes = [node("a", 0), node("b", 0), node("c", 0)];
        let chosen: std::collections::HashSet<_> = (0..20)
            .filter_map(|i| choose(&format!("room-{i}"), &nodes, |_| 0))
            .map(|n| n.id.clone())
            .collect();
        assert_eq!(chosen.len(), 3, "every node wins some ties");
        // and the same room always gets the same answer
        let first = choose("standup", &nodes, |_| 0).map(|n| n.id.clone());
        assert_eq!(
            choose("standup", &nodes, |_| 0).map(|n| n.id.clone()),
            first
        );
    }

    #[test]
    fn routes() {
        let b = node("b", 1);
        // a room hosted here stays here, whatever Redis says
        assert_eq!(route(true, false, Owner::None), Route::Local);
        assert_eq!(
            route(
                true,
                true,
                Owner::Other {
                    id: "b",
                    record: Some(&b),
                    key_exists: true
                }
            ),
            Route::Local
        );
        assert_eq!(route(false, false, Owner::None), Route::Place);
        assert_eq!(route(false, false, Owner::Me), Route::Local);
        // a draining node does not start a room claimed for it
        assert_eq!(route(false, true, Owner::Me), Route::Place);
        assert_eq!(
            route(
                false,
                true,
                Owner::Other {
                    id: "b",
                    record: Some(&b),
                    key_exists: true
                }
            ),
            Route::Redirect {
                node: "b".into(),
                url: "ws://b.example:8080/ws".into()
            }
        );
        assert_eq!(
            route(
                false,
                false,
                Owner::Other {
                    id: "b",
                    record: None,
                    key_exists: false
                }
            ),
            Route::Reclaim { stale: "b".into() }
        );
        assert_eq!(
            route(
                false,
                false,
                Owner::Other {
                    id: "b",
                    record: None,
                    key_exists: true
                }
            ),
            Route::Wait
        );
    }

    #[test]
    fn a_skewed_clock_changes_nothing() {
        // Records from nodes whose clocks are far ahead or behind are live all the same
        // (their keys exist), are chosen by load alone, and their rooms are not taken over.
        let mut ahead = node("ahead", 5);
        ahead.sent_at_ms = u64::MAX / 2;
        let mut behind = node("behind", 1);
        behind.sent_at_ms = 0;
        let nodes = [ahead.clone(), behind.clone()];
        assert_eq!(
            choose("r", &nodes, |_| 0).map(|n| n.id.as_str()),
            Some("behind")
        );
        for owner in [&ahead, &behind] {
            assert!(matches!(
                route(
                    false,
                    false,
                    Owner::Other {
                        id: &owner.id,
                        record: Some(owner),
                        key_exists: true
                    }
                ),
                Route::Redirect { .. }
            ));
        }
    }
}
