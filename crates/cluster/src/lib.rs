//! Chorus clustering: several Chorus servers (nodes) share one Redis, each heartbeats its
//! load there, and every room is placed on one node, the least loaded live one, when
//! someone first joins it. A join that reaches another node is redirected to the room's
//! node. See `docs/cluster.md`.
//!
//! The decisions (where a join goes, which node takes a room) are sans-IO in
//! [`placement`], and the node records and their signatures in [`record`]; [`store`] holds
//! the Redis keys and scripts. This module runs the heartbeat task and answers the
//! signaling side's questions.
//!
//! Not built yet: one room spanning several nodes (media relayed between nodes). The room
//! key names one owner node, which would stay the room's control authority then.

pub mod link;
pub mod links;
pub mod placement;
pub mod record;
pub mod seal;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_protocol::{RoomId, RoomSummary};
use chorus_sfu::Hub;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::link::{LinkRefusal, Role};
use crate::links::LinkConn;
use crate::placement::{Owner, Recent, Route};
use crate::record::NodeRecord;

/// How long one Redis command may take before it counts as a failure. Short: a join that
/// needs placement waits on it, and the heartbeat must not fall behind its TTL.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Between two tries of a placement that found Redis unreachable, or a room whose owner
/// must expire first.
const PLACEMENT_RETRY: Duration = Duration::from_millis(200);

/// What a node needs to know to join a cluster (`[cluster]` in the config).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `redis://host:port[/db]`.
    pub redis_url: String,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// How clients and other nodes reach this node's HTTP side.
    pub advertise_url: String,
    /// Signs and checks node records; at least [`record::MIN_SECRET_BYTES`].
    pub secret: Vec<u8>,
    /// How often the node writes its record.
    pub heartbeat: Duration,
    /// How long a record (and a room claim) lives without a heartbeat: how long a dead
    /// node's rooms stay unavailable.
    pub ttl: Duration,
    /// How long a join that needs Redis waits for it before it is refused with
    /// `clusterUnavailable`.
    pub placement_wait: Duration,
    /// How many of a room's participants its owner holds before it places the next ones
    /// on other nodes (satellites, see [`chorus_sfu::span`]); 0: never, a room lives on
    /// one node.
    pub max_participants_per_node: usize,
}

/// Why the cluster could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("the cluster's Redis is unreachable ({0}); try again shortly")]
    Unavailable(String),
    #[error("no node of the cluster takes new rooms now (all are draining); try again shortly")]
    NoNode,
    #[error("bad cluster settings: {0}")]
    Settings(String),
}

/// Where a join goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinRoute {
    /// Into this node's hub.
    Local,
    /// To another node: its WebSocket URL.
    Redirect { node: String, url: String },
}

/// Counters and the last view of the cluster, for `/api/cluster`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub node_id: String,
    pub draining: bool,
    /// Whether the last Redis command succeeded.
    pub redis_ok: bool,
    /// The live nodes with valid records, this one among them.
    pub nodes: Vec<NodeRecord>,
    /// Node records ignored: a bad signature, unparseable, or under another node's key.
    pub bad_records: u64,
    pub redis_errors: u64,
    /// Rooms this node placed (on itself or another node).
    pub placements: u64,
    /// Joins this node sent to another node.
    pub redirects: u64,
    /// Rooms hosted here that Redis names another owner for (after Redis lost its data).
    pub conflicts: u64,
    /// The node links open now.
    pub links: Vec<chorus_sfu::span::LinkSummary>,
    /// Links from other nodes whose handshake succeeded.
    pub links_accepted: u64,
    /// Links refused (either end), by reason: `malformed`, `unknownNode`, `badProof`,
    /// `unavailable`, `wrongNode`, and `badFrame` for a link ended by a frame that did not
    /// open.
    pub links_refused: BTreeMap<&'static str, u64>,
}

struct Inner {
    settings: ClusterSettings,
    hub: Hub,
    redis: ConnectionManager,
    draining: AtomicBool,
    /// Set by [`Cluster::leave`]: no more heartbeats, which would write the record again.
    left: AtomicBool,
    /// Wakes the heartbeat task early (a drain began).
    wake: Notify,
    recent: Mutex<Recent>,
    /// The other nodes' verified records from the last heartbeat.
    others: Mutex<Vec<NodeRecord>>,
    /// Rooms this node hosted at its last heartbeat (to release the ones that emptied).
    hosted: Mutex<BTreeSet<String>>,
    /// The counters behind the worker's load, at the last heartbeat.
    last_sample: Mutex<(Instant, u64, u64)>,
    room_list: watch::Sender<Vec<RoomSummary>>,
    /// Node ids whose bad record was already logged.
    warned: Mutex<HashSet<String>>,
    redis_ok: AtomicBool,
    bad_records: AtomicU64,
    redis_errors: AtomicU64,
    placements: AtomicU64,
    redirects: AtomicU64,
    conflicts: AtomicU64,
    /// Held while this node dials a link, so that concurrent joins open one.
    dialing: tokio::sync::Mutex<()>,
    /// Satellites chosen for full rooms lately, by `room\nnode` (counted until the
    /// participants sent there have joined).
    sent_to_satellites: Mutex<Recent>,
    links_accepted: AtomicU64,
    /// By [`LinkRefusal::ALL`]'s order.
    links_refused: [AtomicU64; LinkRefusal::ALL.len()],
}

/// This node's membership of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Cluster {
    /// Connects (lazily: a Redis that is down at start-up is retried) and starts the
    /// heartbeat task. Must run inside a tokio runtime.
    pub fn start(settings: ClusterSettings, hub: Hub) -> Result<Self, ClusterError> {
        if settings.secret.len() < record::MIN_SECRET_BYTES {
            return Err(ClusterError::Settings(format!(
                "cluster.secret has {} bytes; it needs at least {}",
                settings.secret.len(),
                record::MIN_SECRET_BYTES
            )));
        }
        let client = redis::Client::open(settings.redis_url.as_str())
            .map_err(|e| ClusterError::Settings(format!("cluster.redis: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| ClusterError::Settings(format!("cluster.redis: {e}")))?;
        let stats = hub.worker_stats();
        let sample = (
            Instant::now(),
            stats.rtp_forwarded.load(Ordering::Relaxed),
            stats.busy_nanos.load(Ordering::Relaxed),
        );
        let (room_list, _) = watch::channel(Vec::new());
        let cluster = Self {
            inner: Arc::new(Inner {
                settings,
                hub,
                redis,
                draining: AtomicBool::new(false),
                left: AtomicBool::new(false),
                wake: Notify::new(),
                recent: Mutex::new(Recent::default()),
                others: Mutex::new(Vec::new()),
                hosted: Mutex::new(BTreeSet::new()),
                last_sample: Mutex::new(sample),
                room_list,
                warned: Mutex::new(HashSet::new()),
                redis_ok: AtomicBool::new(false),
                bad_records: AtomicU64::new(0),
                redis_errors: AtomicU64::new(0),
                placements: AtomicU64::new(0),
                redirects: AtomicU64::new(0),
                conflicts: AtomicU64::new(0),
                dialing: tokio::sync::Mutex::new(()),
                sent_to_satellites: Mutex::new(Recent::default()),
                links_accepted: AtomicU64::new(0),
                links_refused: Default::default(),
            }),
        };
        cluster.publish_room_list();
        tokio::spawn(heartbeat_loop(Arc::downgrade(&cluster.inner)));
        Ok(cluster)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.settings.node_id
    }

    /// Marks this node draining: its next heartbeat (sent now) says so, and placement
    /// passes it over.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
        self.inner.wake.notify_one();
    }

    /// Where a join for `room` goes. Waits up to `placement_wait` for Redis.
    pub async fn route_join(&self, room: &RoomId) -> Result<JoinRoute, ClusterError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.settings.placement_wait;
        loop {
            // A room held here needs Redis only when it is full (to name a satellite).
            if inner.hub.hosts(room) {
                if !inner.hub.is_satellite(room) {
                    if let Some(route) = self.overflow(room).await {
                        return Ok(route);
                    }
                    return Ok(JoinRoute::Local);
                }
                // a full satellite sends the join to the owner, which picks another
                if !self.full_here(room) {
                    return Ok(JoinRoute::Local);
                }
            }
            let last_error = match self.try_route(room.as_str()).await {
                Ok(Some(route)) => {
                    if let JoinRoute::Redirect { node, .. } = &route {
                        inner.redirects.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%room, %node, "join redirected");
                    }
                    return Ok(route);
                }
                Ok(None) => None,
                Err(ClusterError::Unavailable(err)) => Some(ClusterError::Unavailable(err)),
                Err(err) => return Err(err),
            };
            if tokio::time::Instant::now() + PLACEMENT_RETRY > deadline {
                return Err(last_error.unwrap_or_else(|| {
                    ClusterError::Unavailable(format!(
                        "room {room}'s node did not answer or expire within {:?}",
                        inner.settings.placement_wait
                    ))
                }));
            }
            tokio::time::sleep(PLACEMENT_RETRY).await;
        }
    }

    /// One try: Ok(None) means try again shortly.
    async fn try_route(&self, room: &str) -> Result<Option<JoinRoute>, ClusterError> {
        let inner = &self.inner;
        let me = inner.settings.node_id.as_str();
        let mut redis = inner.redis.clone();
        let owner_id = self.redis_result(store::owner(&mut redis, room).await)?;
        let draining = inner.draining.load(Ordering::Relaxed);
        let mut owner_record = None;
        let mut key_exists = false;
        if let Some(id) = owner_id.as_deref().filter(|id| *id != me) {
            let value = self.redis_result(store::node(&mut redis, id).await)?;
            key_exists = value.is_some();
            owner_record = value.and_then(|v| self.verify(id, &v));
        }
        // The owner of a full room sent this join here: join as its satellite.
        let room_id = RoomId::new(room).map_err(|e| ClusterError::Settings(e.to_string()))?;
        if let Some(record) = &owner_record
            && inner.settings.max_participants_per_node > 0
            && !draining
            && !self.full_here(&room_id)
            && self.redis_result(store::is_satellite(&mut redis, room, me).await)?
        {
            self.ensure_link(record).await?;
            if inner.hub.open_satellite(&room_id, &record.id) {
                return Ok(Some(JoinRoute::Local));
            }
            return Ok(None);
        }
        let owner = match owner_id.as_deref() {
            None => Owner::None,
            Some(id) if id == me => Owner::Me,
            Some(id) => Owner::Other {
                id,
                record: owner_record.as_ref(),
                key_exists,
            },
        };
        let stale = match placement::route(false, draining, owner) {
            Route::Local => return Ok(Some(JoinRoute::Local)),
            Route::Redirect { node, url } => return Ok(Some(JoinRoute::Redirect { node, url })),
            Route::Wait => return Ok(None),
            Route::Place => owner_id.clone().filter(|id| id == me),
            Route::Reclaim { stale } => Some(stale),
        };
        // Choose among the live nodes, this one as it is now.
        let mut nodes = self.read_nodes(&mut redis).await?;
        nodes.retain(|n| n.id != me);
        nodes.push(self.own_record(false));
        let now = Instant::now();
        let window = inner.settings.heartbeat * 2;
        let chosen = {
            let recent = lock(&inner.recent);
            placement::choose(room, &nodes, |id| recent.count(id, now, window)).cloned()
        };
        let Some(chosen) = chosen else {
            return Err(ClusterError::NoNode);
        };
        let won = self.redis_result(
            store::claim(
                &mut redis,
                room,
                &chosen.id,
                stale.as_deref(),
                me,
                inner.settings.ttl,
            )
            .await,
        )?;
        if won != chosen.id {
            // Another node placed it first: follow its choice on the next try.
            return Ok(None);
        }
        inner.placements.fetch_add(1, Ordering::Relaxed);
        {
            let mut recent = lock(&inner.recent);
            recent.expire(now, window);
            recent.placed(&chosen.id, now);
        }
        tracing::info!(%room, node = %chosen.id, "room placed");
        Ok(Some(if chosen.id == me {
            JoinRoute::Local
        } else {
            JoinRoute::Redirect {
                url: chosen.ws_url(),
                node: chosen.id,
            }
        }))
    }

    /// Counts a Redis failure and turns it into [`ClusterError::Unavailable`].
    fn redis_result<T>(&self, result: redis::RedisResult<T>) -> Result<T, ClusterError> {
        match result {
            Ok(value) => {
                self.inner.redis_ok.store(true, Ordering::Relaxed);
                Ok(value)
            }
            Err(err) => {
                self.inner.redis_ok.store(false, Ordering::Relaxed);
                self.inner.redis_errors.fetch_add(1, Ordering::Relaxed);
                Err(ClusterError::Unavailable(err.to_string()))
            }
        }
    }

    /// Verifies a stored record; a bad one is counted (and logged once per node) and None.
    fn verify(&self, id: &str, value: &str) -> Option<NodeRecord> {
        match NodeRecord::verify(value, id, &self.inner.settings.secret) {
            Ok(record) => Some(record),
            Err(err) => {
                self.inner.bad_records.fetch_add(1, Ordering::Relaxed);
                if lock(&self.inner.warned).insert(id.to_owned()) {
                    tracing::warn!(node = %id, %err, "ignoring a node record");
                }
                None
            }
        }
    }

    /// The other live nodes' verified records; forgets ids whose key expired.
    async fn read_nodes(
        &self,
        redis: &mut ConnectionManager,
    ) -> Result<Vec<NodeRecord>, ClusterError> {
        let listed = self.redis_result(store::nodes(redis).await)?;
        let mut gone = Vec::new();
        let mut records = Vec::new();
        for (id, value) in listed {
            match value {
                None => gone.push(id),
                Some(value) => records.extend(self.verify(&id, &value)),
            }
        }
        self.redis_result(store::forget_nodes(redis, &gone).await)?;
        Ok(records)
    }

    /// This node's record as of now. `sample` moves the load window on (the heartbeat
    /// does; a placement only reads).
    fn own_record(&self, sample: bool) -> NodeRecord {
        let inner = &self.inner;
        let stats = inner.hub.worker_stats();
        let forwarded = stats.rtp_forwarded.load(Ordering::Relaxed);
        let busy = stats.busy_nanos.load(Ordering::Relaxed);
        let now = Instant::now();
        let (forwarded_pps, cpu) = {
            let mut last = lock(&inner.last_sample);
            let elapsed = now.duration_since(last.0).as_secs_f64();
            let rates = if elapsed > 0.05 {
                (
                    (forwarded.saturating_sub(last.1) as f64 / elapsed) as u64,
                    // The mean over the workers: 1.0 is every worker's core full.
                    (busy.saturating_sub(last.2) as f64
                        / 1e9
                        / elapsed
                        / inner.hub.worker_count() as f64)
                        .clamp(0.0, 1.0),
                )
            } else {
                (0, 0.0)
            };
            if sample {
                *last = (now, forwarded, busy);
            }
            rates
        };
        let rooms: BTreeMap<String, u32> = inner
            .hub
            .room_list()
            .into_iter()
            .map(|r| (r.room.as_str().to_owned(), r.participants))
            .collect();
        NodeRecord {
            id: inner.settings.node_id.clone(),
            url: inner.settings.advertise_url.clone(),
            draining: inner.draining.load(Ordering::Relaxed),
            participants: rooms.values().map(|&n| u64::from(n)).sum(),
            forwarded_pps,
            cpu,
            rooms,
            sent_at_ms: unix_ms(),
        }
    }

    /// The rooms of the whole cluster: this node's as they are now, the others' from
    /// their last heartbeat. A room two nodes host (after Redis lost its data) is listed
    /// once, with both counts added.
    pub fn room_list(&self) -> Vec<RoomSummary> {
        let mut rooms: BTreeMap<String, u32> = BTreeMap::new();
        for summary in self.inner.hub.room_list() {
            rooms.insert(summary.room.as_str().to_owned(), summary.participants);
        }
        for node in lock(&self.inner.others).iter() {
            for (room, &n) in &node.rooms {
                let entry = rooms.entry(room.clone()).or_default();
                *entry = entry.saturating_add(n);
            }
        }
        rooms
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .filter_map(|(room, participants)| {
                Some(RoomSummary {
                    room: RoomId::new(&room).ok()?,
                    participants,
                })
            })
            .collect()
    }

    /// A receiver that changes whenever the cluster's room list does.
    pub fn watch_rooms(&self) -> watch::Receiver<Vec<RoomSummary>> {
        self.inner.room_list.subscribe()
    }

    fn publish_room_list(&self) {
        let list = self.room_list();
        self.inner.room_list.send_if_modified(|current| {
            if *current == list {
                false
            } else {
                *current = list;
                true
            }
        });
    }

    /// Whether `origin` is the origin of a live node of this cluster (whose pages may open
    /// a session here).
    pub fn is_node_origin(&self, origin: &str) -> bool {
        record::origin_of(&self.inner.settings.advertise_url) == origin
            || lock(&self.inner.others)
                .iter()
                .any(|n| n.origin() == origin)
    }

    /// Counters and the last view of the nodes.
    pub fn status(&self) -> ClusterStatus {
        let inner = &self.inner;
        let mut nodes = lock(&inner.others).clone();
        nodes.push(self.own_record(false));
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        ClusterStatus {
            node_id: inner.settings.node_id.clone(),
            draining: inner.draining.load(Ordering::Relaxed),
            redis_ok: inner.redis_ok.load(Ordering::Relaxed),
            nodes,
            bad_records: inner.bad_records.load(Ordering::Relaxed),
            redis_errors: inner.redis_errors.load(Ordering::Relaxed),
            placements: inner.placements.load(Ordering::Relaxed),
            redirects: inner.redirects.load(Ordering::Relaxed),
            conflicts: inner.conflicts.load(Ordering::Relaxed),
            links: inner.hub.links(),
            links_accepted: inner.links_accepted.load(Ordering::Relaxed),
            links_refused: LinkRefusal::ALL
                .iter()
                .zip(&inner.links_refused)
                .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// Takes a node link whose WebSocket reached [`link::LINK_PATH`] here: runs the
    /// owner's side of the handshake, checking the caller against Redis, and keeps the
    /// link until the other node closes it.
    pub async fn accept_link(&self, conn: LinkConn) {
        let inner = &self.inner;
        let live = async |node: String| {
            let mut redis = inner.redis.clone();
            let value = self
                .redis_result(store::node(&mut redis, &node).await)
                .map_err(drop)?;
            Ok(value.and_then(|v| self.verify(&node, &v)).is_some())
        };
        let me = inner.settings.node_id.as_str();
        let link = match links::accept(conn, me, &inner.settings.secret, live).await {
            Ok(Some(link)) => link,
            Ok(None) => return,
            Err(refusal) => {
                self.count_refusal(refusal);
                return;
            }
        };
        inner.links_accepted.fetch_add(1, Ordering::Relaxed);
        let node = link.ids.satellite.clone();
        let cluster = self.clone();
        let conn = links::sealed(link, &inner.settings.secret, Role::Owner, move |refusal| {
            cluster.count_refusal(refusal);
        });
        chorus_sfu::span::serve_link(inner.hub.clone(), node, true, conn).await;
    }

    /// Opens this node's link to `owner` (as a satellite of its rooms) unless one is open.
    async fn ensure_link(&self, owner: &NodeRecord) -> Result<(), ClusterError> {
        let inner = &self.inner;
        let _one_at_a_time = inner.dialing.lock().await;
        if inner.hub.has_link_to(&owner.id) {
            return Ok(());
        }
        let me = inner.settings.node_id.as_str();
        let link = links::dial(&owner.url, me, &owner.id, &inner.settings.secret)
            .await
            .map_err(|err| {
                if let links::DialError::Refused(refusal) = &err {
                    self.count_refusal(*refusal);
                }
                ClusterError::Unavailable(format!("node link to {}: {err}", owner.id))
            })?;
        let cluster = self.clone();
        let conn = links::sealed(
            link,
            &inner.settings.secret,
            Role::Satellite,
            move |refusal| {
                cluster.count_refusal(refusal);
            },
        );
        tokio::spawn(chorus_sfu::span::serve_link(
            inner.hub.clone(),
            owner.id.clone(),
            false,
            conn,
        ));
        // The link registers itself as it starts.
        for _ in 0..100 {
            if inner.hub.has_link_to(&owner.id) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(ClusterError::Unavailable(format!(
            "node link to {} did not start",
            owner.id
        )))
    }

    /// Whether this node holds `max_participants_per_node` of the room's participants.
    fn full_here(&self, room: &RoomId) -> bool {
        let cap = self.inner.settings.max_participants_per_node;
        cap > 0 && self.inner.hub.local_participants(room) >= cap
    }

    /// For a full room this node owns: the satellite its next participant goes to, or
    /// None (join here: the room is not full, no other node can take it, or Redis failed).
    async fn overflow(&self, room: &RoomId) -> Option<JoinRoute> {
        let inner = &self.inner;
        if !self.full_here(room) {
            return None;
        }
        let cap = inner.settings.max_participants_per_node;
        let now = Instant::now();
        let window = inner.settings.heartbeat * 2;
        let joined: BTreeMap<String, usize> = inner.hub.satellites(room).into_iter().collect();
        let key = |node: &str| format!("{room}\n{node}");
        let candidates: Vec<NodeRecord> = lock(&inner.others)
            .iter()
            .filter(|n| !n.draining)
            .cloned()
            .collect();
        let chosen = {
            let mut sent = lock(&inner.sent_to_satellites);
            sent.expire(now, window);
            // there, or on their way there
            let count = |node: &str| {
                let recent = usize::try_from(sent.count(&key(node), now, window)).unwrap_or(0);
                joined.get(node).copied().unwrap_or(0).max(recent)
            };
            let known = |node: &str| joined.contains_key(node) || count(node) > 0;
            // fill the room's satellites first, then open one on the least loaded node
            let chosen = candidates
                .iter()
                .filter(|n| known(&n.id) && count(&n.id) < cap)
                .min_by(|a, b| a.id.cmp(&b.id))
                .or_else(|| {
                    let fresh: Vec<NodeRecord> = candidates
                        .iter()
                        .filter(|n| !known(&n.id))
                        .cloned()
                        .collect();
                    placement::choose(room.as_str(), &fresh, |_| 0)
                        .and_then(|c| candidates.iter().find(|n| n.id == c.id))
                })
                .cloned();
            if let Some(node) = &chosen {
                sent.placed(&key(&node.id), now);
            }
            chosen
        }?;
        let mut redis = inner.redis.clone();
        let named =
            store::add_satellite(&mut redis, room.as_str(), &chosen.id, inner.settings.ttl).await;
        if let Err(err) = self.redis_result(named) {
            tracing::warn!(%room, %err, "room full, but no satellite could be named; joining here");
            return None;
        }
        inner.redirects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%room, node = %chosen.id, "room full here; next participant to a satellite");
        Some(JoinRoute::Redirect {
            url: chosen.ws_url(),
            node: chosen.id,
        })
    }

    fn count_refusal(&self, refusal: LinkRefusal) {
        tracing::warn!(%refusal, "node link refused");
        if let Some(i) = LinkRefusal::ALL.iter().position(|r| *r == refusal) {
            self.inner.links_refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One heartbeat: write the record, renew the claims of the rooms held here, release
    /// those that emptied, and read the other nodes.
    async fn beat(&self) -> Result<(), ClusterError> {
        let inner = &self.inner;
        if inner.left.load(Ordering::Relaxed) {
            return Ok(());
        }
        let me = inner.settings.node_id.as_str();
        let mut redis = inner.redis.clone();
        let record = self.own_record(true);
        let signed = record.sign(&inner.settings.secret);
        self.redis_result(store::heartbeat(&mut redis, me, &signed, inner.settings.ttl).await)?;
        let now_hosted: BTreeSet<String> = record.rooms.keys().cloned().collect();
        let emptied: Vec<String> = lock(&inner.hosted)
            .difference(&now_hosted)
            .cloned()
            .collect();
        self.redis_result(store::release(&mut redis, &emptied, me).await)?;
        let hosted: Vec<String> = now_hosted.iter().cloned().collect();
        let conflicts =
            self.redis_result(store::refresh(&mut redis, &hosted, me, inner.settings.ttl).await)?;
        if !conflicts.is_empty() {
            inner
                .conflicts
                .fetch_add(conflicts.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                ?conflicts,
                "rooms held here are owned by another node in Redis (Redis lost its data?); \
                 their calls go on here, new joins go to the owner"
            );
        }
        let satellites: Vec<(String, Vec<(String, usize)>)> = hosted
            .iter()
            .filter_map(|room| {
                let id = RoomId::new(room.as_str()).ok()?;
                let list = inner.hub.satellites(&id);
                (!list.is_empty()).then(|| (room.clone(), list))
            })
            .collect();
        self.redis_result(
            store::renew_satellites(&mut redis, &satellites, inner.settings.ttl).await,
        )?;
        *lock(&inner.hosted) = now_hosted;
        let mut others = self.read_nodes(&mut redis).await?;
        others.retain(|n| n.id != me);
        *lock(&inner.others) = others;
        Ok(())
    }

    /// Leaves the cluster at shutdown: releases the rooms still claimed and removes the
    /// node's record, so that nobody waits for its TTL.
    pub async fn leave(&self) {
        let inner = &self.inner;
        inner.left.store(true, Ordering::Relaxed);
        inner.wake.notify_one();
        let me = inner.settings.node_id.as_str();
        let mut redis = inner.redis.clone();
        let hosted: Vec<String> = std::mem::take(&mut *lock(&inner.hosted))
            .into_iter()
            .collect();
        let result = async {
            store::release(&mut redis, &hosted, me).await?;
            store::leave(&mut redis, me).await
        };
        match tokio::time::timeout(REDIS_TIMEOUT * 4, result).await {
            Ok(Ok(())) => tracing::info!("left the cluster"),
            Ok(Err(err)) => tracing::warn!(%err, "leaving the cluster"),
            Err(_) => tracing::warn!("leaving the cluster: Redis did not answer"),
        }
    }
}

/// Heartbeats until the cluster handle is dropped: every `heartbeat`, at once when a drain
/// begins, and when the local room list changes (so an emptied room is released without
/// waiting).
async fn heartbeat_loop(weak: std::sync::Weak<Inner>) {
    let (interval, mut rooms) = match weak.upgrade() {
        Some(inner) => (inner.settings.heartbeat, inner.hub.watch_rooms()),
        None => return,
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_ok = true;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.left.load(Ordering::Relaxed) {
            return;
        }
        let cluster = Cluster { inner };
        match cluster.beat().await {
            Ok(()) => {
                if !was_ok {
                    tracing::info!("cluster Redis reachable again");
                }
                was_ok = true;
            }
            Err(err) => {
                if was_ok {
                    tracing::warn!(%err, "cluster heartbeat failed; calls go on, placement waits");
                }
                was_ok = false;
            }
        }
        cluster.publish_room_list();
        let wake = async { cluster.inner.wake.notified().await };
        tokio::select! {
            _ = ticks.tick() => {}
            () = wake => {}
            changed = rooms.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
