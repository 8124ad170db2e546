//! The hub: the registry of live rooms. Signaling sessions join through it; each room is a
//! task of its own (`room_task.rs`) that the hub creates on the first join and that removes
//! itself when its last participant leaves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chorus_protocol::api::{RecordingInfo, RoomDetails};
use chorus_protocol::{
    ClientMessage, ErrorCode, Grants, IceServer, ParticipantId, RoomId, RoomSummary, ServerMessage,
};
use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::MediaError;
use crate::events::RoomEvent;
use crate::handoff::WorkerIndex;
use crate::latency::{JOIN_LATENCY_BUCKETS, LatencyHistogram, LatencySnapshot};
use crate::placement::{WorkerLoad, place_room};
use crate::record::{RecordError, RecordingStats};
use crate::room::{AdminAction, AdminError, RoomLimits};
use crate::room_task;
use crate::worker::{WorkerHandle, WorkerStats};

/// Commands to one room task. Bounded: a session awaits space, which slows only that
/// session's reading of its WebSocket.
pub const ROOM_COMMAND_QUEUE: usize = 256;

/// How long shutdown waits for rooms to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How many times a join retries a room that closed under it.
const JOIN_ATTEMPTS: usize = 3;

/// Produces the ICE servers (and TURN credentials) handed to one participant.
pub type IceServerSource = Arc<dyn Fn(ParticipantId) -> Vec<IceServer> + Send + Sync>;

/// What the hub needs from the config.
#[derive(Clone)]
pub struct HubConfig {
    pub limits: RoomLimits,
    pub max_rooms: usize,
    /// Longest display name, in characters.
    pub max_name_chars: usize,
    pub ice_servers: IceServerSource,
    /// Where room events go (the webhook sender), if anywhere. Bounded
    /// ([`crate::events::EVENT_QUEUE`]); rooms never wait on it.
    pub events: Option<mpsc::Sender<RoomEvent>>,
    /// The rooms' speaker election (`[audio]` in the config).
    pub speakers: crate::speaker::SpeakerSettings,
    /// Recording (`[recording]` in the config).
    pub recording: RecordingSettings,
    /// `media.spread_room_after`: how many of a room's participants live on its worker
    /// before the next goes to another (0: never; see [`crate::placement`]).
    pub spread_room_after: usize,
    /// The first participant id this server hands out (1 for a server alone). Nodes of a
    /// cluster start at [`cluster_id_base`], so that the participants and tracks of a room
    /// that spans nodes never share an id.
    pub first_id: u64,
}

/// A random start for a cluster node's participant and track ids: in [2^51, 2^52), so
/// that ids stay exact as JavaScript numbers (below 2^53) after any number of joins a
/// node sees in its life, and two nodes' ranges meet only if their starts fall within
/// as many ids of each other (about one chance in 2^31 for a million ids each).
pub fn cluster_id_base() -> u64 {
    (1 << 51) | (crate::token::random_u64() & ((1 << 51) - 1))
}

/// Where recordings go, and which rooms are recorded from their first join.
#[derive(Debug, Clone, Default)]
pub struct RecordingSettings {
    /// The base directory; `None`: recording is off (the admin API refuses to start one).
    pub dir: Option<std::path::PathBuf>,
    /// Rooms recorded from their first join, without an admin call.
    pub rooms: Vec<RoomId>,
}

/// Who is joining and what it may do, as its join token says (or, in open mode, the
/// defaults: no identity, the default grants).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// The token's identity: one session per identity and room.
    pub identity: Option<String>,
    pub grants: Grants,
    /// A broadcast ingest (WHIP) publisher rather than a browser: its publisher leg also
    /// accepts the SRTP profile such encoders use ([`crate::peer::INGEST_SRTP_PROFILE`]).
    pub ingest: bool,
}

/// A command to a room task.
#[derive(Debug)]
pub(crate) enum RoomCommand {
    Join {
        participant: ParticipantId,
        name: String,
        admission: Admission,
        session: mpsc::Sender<ServerMessage>,
        reply: oneshot::Sender<Result<(), JoinError>>,
        /// For a participant of another node (a room spanning nodes): the remote worker
        /// that holds its media there. None: its media lives on this node.
        via: Option<WorkerHandle>,
    },
    /// A message from a joined participant.
    Client {
        participant: ParticipantId,
        message: ClientMessage,
    },
    /// The participant's WebSocket closed.
    Gone {
        participant: ParticipantId,
    },
    /// The admin API asks who is in the room.
    Describe {
        reply: oneshot::Sender<RoomDetails>,
    },
    /// The admin API starts (`true`) or stops a recording of the room.
    Record {
        on: bool,
        reply: oneshot::Sender<Result<Option<RecordingInfo>, RecordError>>,
    },
    /// The admin API acts on the room.
    Admin {
        action: AdminAction,
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
    /// The server drains: tell the participants.
    Drain {
        seconds: u32,
    },
    Shutdown,
}

/// Why a join failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// Refused by the room or the hub, with the code the client sees.
    #[error("{1}")]
    Refused(ErrorCode, String),
    /// The room closed while the join was queued; the hub retries.
    #[error("the room closed")]
    RoomClosed,
}

impl JoinError {
    pub fn code(&self) -> ErrorCode {
        match self {
            JoinError::Refused(code, _) => *code,
            JoinError::RoomClosed => ErrorCode::Internal,
        }
    }
}

pub(crate) struct RoomEntry {
    pub(crate) tx: mpsc::Sender<RoomCommand>,
    pub(crate) members: Arc<AtomicUsize>,
    pub(crate) generation: u64,
    /// The media worker the room opened on (its home).
    pub(crate) worker: WorkerIndex,
    /// Where its participants live.
    pub(crate) placed: crate::room_workers::Placed,
    /// A satellite room: its task is the node link to the room's owner, and the room is
    /// listed and claimed by the owner, not here (see [`crate::span`]).
    pub(crate) satellite: bool,
}

pub(crate) struct HubInner {
    pub(crate) rooms: DashMap<RoomId, RoomEntry>,
    /// The media workers, by index (at least one).
    pub(crate) workers: Vec<WorkerHandle>,
    pub(crate) config: HubConfig,
    next_participant: AtomicU64,
    next_generation: AtomicU64,
    room_list: watch::Sender<Vec<RoomSummary>>,
    shutting_down: AtomicBool,
    /// Room events the sink had no room for.
    event_drops: AtomicU64,
    /// How long joins take, from request to answer (for `/metrics`).
    join_latency: LatencyHistogram,
    /// The counters of every recording.
    pub(crate) recording: Arc<RecordingStats>,
    /// What the workers and the node links share.
    pub(crate) fabric: Arc<crate::span::Fabric>,
    /// The open node links.
    pub(crate) links: crate::span::Links,
}

/// The registry of rooms. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    pub(crate) inner: Arc<HubInner>,
}

/// A participant's place in a room, held by its signaling session.
#[derive(Debug)]
pub struct Membership {
    pub participant: ParticipantId,
    pub room: RoomId,
    tx: mpsc::Sender<RoomCommand>,
}

impl Membership {
    /// Hands a client message to the room. False when the room is gone.
    pub async fn send(&self, message: ClientMessage) -> bool {
        self.tx
            .send(RoomCommand::Client {
                participant: self.participant,
                message,
            })
            .await
            .is_ok()
    }

    /// Tells the room that the session ended (WebSocket closed without `leave`).
    pub async fn gone(self) {
        let _ = self
            .tx
            .send(RoomCommand::Gone {
                participant: self.participant,
            })
            .await;
    }
}

/// Counters for `/api/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct HubStats {
    pub rooms: u64,
    pub participants: u64,
    pub peers: u64,
    pub tracks: u64,
    pub subscriptions: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    pub forward_drops: u64,
    pub unrouted: u64,
    pub send_drops: u64,
    pub keyframe_requests: u64,
    pub retransmitted: u64,
    pub retransmit_misses: u64,
    pub unknown_layer: u64,
    pub layer_switches: u64,
    pub notice_drops: u64,
    /// Room events (webhooks) dropped because their queue was full.
    pub event_drops: u64,
    /// Live tokio tasks in the server's runtime (sessions, rooms, connections ...): a
    /// leak shows as a count that does not come back down.
    pub tasks: u64,
    /// Recordings running now.
    pub recordings: u64,
    /// Packets a recording's full queue dropped (its disk fell behind).
    pub recording_drops: u64,
    /// Recording write errors (a full disk): the file that hit one stopped.
    pub recording_write_errors: u64,
    /// Datagrams one worker's socket received for another worker's peer and passed on.
    pub handoff_datagrams: u64,
    /// Of those, the ones dropped because the owner's inbox was full.
    pub handoff_drops: u64,
    /// Packets (and keyframe requests) one worker handed to another's mirrors of its
    /// tracks, for a room spread over workers.
    pub relayed_packets: u64,
    /// Of those, the ones dropped because the other worker's inbox was full.
    pub relay_drops: u64,
    /// Mirrors open: tracks published on one worker that subscribers on another receive.
    pub mirrors: u64,
    /// Each media worker, in order.
    pub workers: Vec<WorkerSummary>,
}

/// One media worker's share, for `/api/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerSummary {
    /// Rooms placed on it.
    pub rooms: u64,
    pub participants: u64,
    pub peers: u64,
    /// Datagrams its socket received (handed-over ones not included).
    pub datagrams_in: u64,
    pub rtp_forwarded: u64,
    /// Seconds it spent handling datagrams, commands and timers.
    pub busy_seconds: f64,
}

impl Hub {
    /// A hub over the media `workers` (as [`crate::worker::spawn`] returned them).
    ///
    /// # Panics
    /// With no worker.
    pub fn new(workers: Vec<WorkerHandle>, config: HubConfig) -> Self {
        assert!(!workers.is_empty(), "a hub needs a media worker");
        let (room_list, _) = watch::channel(Vec::new());
        let first_id = config.first_id.max(1);
        let fabric = workers[0].fabric().clone();
        Self {
            inner: Arc::new(HubInner {
                rooms: DashMap::new(),
                workers,
                config,
                next_participant: AtomicU64::new(first_id),
                next_generation: AtomicU64::new(1),
                room_list,
                shutting_down: AtomicBool::new(false),
                event_drops: AtomicU64::new(0),
                join_latency: LatencyHistogram::new(JOIN_LATENCY_BUCKETS),
                recording: Arc::new(RecordingStats::default()),
                fabric,
                links: crate::span::Links::default(),
            }),
        }
    }

    /// Joins `room` as `name`, with what `admission` allows; the room's messages for this
    /// participant go to `session`.
    pub async fn join(
        &self,
        room: RoomId,
        name: String,
        admission: Admission,
        session: mpsc::Sender<ServerMessage>,
    ) -> Result<Membership, JoinError> {
        let _timer = self.inner.join_latency.start();
        let name = name.trim().to_owned();
        let chars = name.chars().count();
        if chars == 0 || chars > self.inner.config.max_name_chars {
            return Err(JoinError::Refused(
                ErrorCode::InvalidName,
                format!(
                    "a display name has 1 to {} characters",
                    self.inner.config.max_name_chars
                ),
            ));
        }
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(JoinError::Refused(
                ErrorCode::ServerDraining,
                "the server is draining for a restart; try again shortly".into(),
            ));
        }
        let participant =
            ParticipantId(self.inner.next_participant.fetch_add(1, Ordering::Relaxed));
        let tx = self
            .enter(&room, participant, &name, &admission, &session, None)
            .await?;
        Ok(Membership {
            participant,
            room,
            tx,
        })
    }

    /// A participant of a satellite node (`via`: its remote worker there) joins a room
    /// this node owns, under the id the satellite gave it (see [`crate::span`]).
    pub(crate) async fn join_remote(
        &self,
        room: RoomId,
        participant: ParticipantId,
        name: String,
        admission: Admission,
        session: mpsc::Sender<ServerMessage>,
        via: WorkerHandle,
    ) -> Result<(), JoinError> {
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(JoinError::Refused(
                ErrorCode::ServerDraining,
                "the room's node is draining; try again shortly".into(),
            ));
        }
        self.enter(&room, participant, &name, &admission, &session, Some(via))
            .await
            .map(drop)
    }

    /// Queues the join in the room's task (opening the room if needed) and awaits it;
    /// tries again when the room closed under it.
    async fn enter(
        &self,
        room: &RoomId,
        participant: ParticipantId,
        name: &str,
        admission: &Admission,
        session: &mpsc::Sender<ServerMessage>,
        via: Option<WorkerHandle>,
    ) -> Result<mpsc::Sender<RoomCommand>, JoinError> {
        for _ in 0..JOIN_ATTEMPTS {
            let tx = self.room_sender(room)?;
            let (reply, rx) = oneshot::channel();
            let sent = tx
                .send(RoomCommand::Join {
                    participant,
                    name: name.to_owned(),
                    admission: admission.clone(),
                    session: session.clone(),
                    reply,
                    via: via.clone(),
                })
                .await;
            if sent.is_err() {
                continue;
            }
            match rx.await {
                Ok(Ok(())) => return Ok(tx),
                Ok(Err(JoinError::RoomClosed)) | Err(_) => continue,
                Ok(Err(err)) => return Err(err),
            }
        }
        Err(JoinError::RoomClosed)
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.inner.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// The live room's command sender, creating the room if there is none.
    fn room_sender(&self, room: &RoomId) -> Result<mpsc::Sender<RoomCommand>, JoinError> {
        if let Some(entry) = self.inner.rooms.get(room) {
            return Ok(entry.tx.clone());
        }
        if self.inner.rooms.len() >= self.inner.config.max_rooms {
            return Err(JoinError::Refused(
                ErrorCode::TooManyRooms,
                format!(
                    "the server holds its maximum of {} rooms",
                    self.inner.config.max_rooms
                ),
            ));
        }
        let worker = self.place_room();
        let entry = self.inner.rooms.entry(room.clone()).or_insert_with(|| {
            let generation = self.next_generation();
            room_task::spawn(self.clone(), room.clone(), generation, worker)
        });
        Ok(entry.tx.clone())
    }

    /// The worker for a new room: the least loaded (see [`crate::placement`]).
    pub(crate) fn place_room(&self) -> WorkerHandle {
        let workers = &self.inner.workers;
        let index = usize::from(place_room(&self.worker_loads()));
        workers.get(index).unwrap_or(&workers[0]).clone()
    }

    /// What each worker carries: the rooms that opened on it, and the participants that
    /// live on it (of whatever room).
    pub(crate) fn worker_loads(&self) -> Vec<WorkerLoad> {
        let mut loads = vec![WorkerLoad::default(); self.inner.workers.len()];
        for entry in &self.inner.rooms {
            if let Some(load) = loads.get_mut(usize::from(entry.worker)) {
                load.rooms += 1;
            }
            for placed in entry.placed.iter() {
                if let Some(load) = loads.get_mut(usize::from(*placed.value())) {
                    load.participants += 1;
                }
            }
        }
        loads
    }

    /// The media worker of a participant of a live room.
    pub(crate) fn worker_of(
        &self,
        room: &RoomId,
        participant: ParticipantId,
    ) -> Result<WorkerHandle, MediaError> {
        let index = self
            .inner
            .rooms
            .get(room)
            .and_then(|entry| entry.placed.get(&participant).map(|w| usize::from(*w)))
            .ok_or(MediaError::UnknownParticipant)?;
        Ok(self.inner.workers[index].clone())
    }

    /// Called by a room task when it has emptied: forget it (if it is still the live one).
    pub(crate) fn room_closed(&self, room: &RoomId, generation: u64) {
        self.inner
            .rooms
            .remove_if(room, |_, entry| entry.generation == generation);
        self.publish_room_list();
    }

    /// Recomputes the room list and wakes its watchers.
    pub(crate) fn publish_room_list(&self) {
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

    /// The rooms that have participants, by name.
    pub fn room_list(&self) -> Vec<RoomSummary> {
        let mut list: Vec<RoomSummary> = self
            .inner
            .rooms
            .iter()
            .filter(|entry| !entry.satellite)
            .filter_map(|entry| {
                let participants = entry.members.load(Ordering::Relaxed);
                (participants > 0).then(|| RoomSummary {
                    room: entry.key().clone(),
                    participants: u32::try_from(participants).unwrap_or(u32::MAX),
                })
            })
            .collect();
        list.sort_by(|a, b| a.room.cmp(&b.room));
        list
    }

    /// Whether this server has `room` now (for cluster placement: a join for a room held
    /// here stays here).
    pub fn hosts(&self, room: &RoomId) -> bool {
        self.inner.rooms.contains_key(room)
    }

    /// A receiver that changes whenever the room list does.
    pub fn watch_rooms(&self) -> watch::Receiver<Vec<RoomSummary>> {
        self.inner.room_list.subscribe()
    }

    pub fn stats(&self) -> HubStats {
        let w = &self.worker_stats();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut workers: Vec<WorkerSummary> = self
            .inner
            .workers
            .iter()
            .map(|handle| {
                let s = handle.stats();
                WorkerSummary {
                    rooms: 0,
                    participants: 0,
                    peers: get(&s.peers),
                    datagrams_in: get(&s.datagrams_in),
                    rtp_forwarded: get(&s.rtp_forwarded),
                    busy_seconds: Duration::from_nanos(get(&s.busy_nanos)).as_secs_f64(),
                }
            })
            .collect();
        for (summary, load) in workers.iter_mut().zip(self.worker_loads()) {
            summary.rooms = load.rooms as u64;
            summary.participants = load.participants as u64;
        }
        HubStats {
            rooms: self.inner.rooms.len() as u64,
            participants: self
                .inner
                .rooms
                .iter()
                .map(|e| e.members.load(Ordering::Relaxed) as u64)
                .sum(),
            peers: get(&w.peers),
            tracks: get(&w.tracks),
            subscriptions: get(&w.subscriptions),
            datagrams_in: get(&w.datagrams_in),
            datagrams_out: get(&w.datagrams_out),
            rtp_in: get(&w.rtp_in),
            rtp_forwarded: get(&w.rtp_forwarded),
            forward_drops: get(&w.forward_drops),
            unrouted: get(&w.unrouted),
            send_drops: get(&w.send_drops),
            keyframe_requests: get(&w.keyframe_requests),
            retransmitted: get(&w.retransmitted),
            retransmit_misses: get(&w.retransmit_misses),
            unknown_layer: get(&w.unknown_layer),
            layer_switches: get(&w.layer_switches),
            notice_drops: get(&w.notice_drops),
            event_drops: get(&self.inner.event_drops),
            recordings: get(&self.inner.recording.active),
            recording_drops: get(&self.inner.recording.dropped_packets),
            recording_write_errors: get(&self.inner.recording.write_errors),
            handoff_datagrams: get(&w.handoff.sent),
            handoff_drops: get(&w.handoff.dropped),
            relayed_packets: get(&w.handoff.relayed),
            relay_drops: get(&w.handoff.relay_dropped),
            mirrors: get(&w.handoff.mirrors),
            workers,
            tasks: tokio::runtime::Handle::try_current()
                .map(|runtime| runtime.metrics().num_alive_tasks() as u64)
                .unwrap_or(0),
        }
    }

    /// The live room's command sender, if the room exists.
    fn existing(&self, room: &RoomId) -> Result<mpsc::Sender<RoomCommand>, AdminError> {
        self.inner
            .rooms
            .get(room)
            .map(|entry| entry.tx.clone())
            .ok_or_else(|| AdminError::UnknownRoom(room.clone()))
    }

    /// Who is in `room` (for the admin API).
    pub async fn room_details(&self, room: &RoomId) -> Result<RoomDetails, AdminError> {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .existing(room)?
            .send(RoomCommand::Describe { reply })
            .await;
        match (sent, rx.await) {
            (Ok(()), Ok(details)) => Ok(details),
            // It closed in between: it has no participants any more.
            _ => Err(AdminError::UnknownRoom(room.clone())),
        }
    }

    /// Performs an operator's action on `room` (for the admin API).
    pub async fn admin(&self, room: &RoomId, action: AdminAction) -> Result<(), AdminError> {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .existing(room)?
            .send(RoomCommand::Admin { action, reply })
            .await;
        match (sent, rx.await) {
            (Ok(()), Ok(result)) => result,
            _ => Err(AdminError::UnknownRoom(room.clone())),
        }
    }

    /// Starts (`on`) or stops recording `room` (for the admin API). Starting a room that
    /// records already, or stopping one that does not, changes nothing. Returns the
    /// recording as it runs (`None` once stopped).
    pub async fn set_recording(
        &self,
        room: &RoomId,
        on: bool,
    ) -> Result<Option<RecordingInfo>, RecordError> {
        if on && self.inner.config.recording.dir.is_none() {
            return Err(RecordError::NotConfigured);
        }
        let (reply, rx) = oneshot::channel();
        let tx = self
            .existing(room)
            .map_err(|_| RecordError::UnknownRoom(room.clone()))?;
        let sent = tx.send(RoomCommand::Record { on, reply }).await;
        match (sent, rx.await) {
            (Ok(()), Ok(result)) => result,
            _ => Err(RecordError::UnknownRoom(room.clone())),
        }
    }

    /// The counters of every recording (for `/api/stats` and `/metrics`).
    pub fn recording_stats(&self) -> &RecordingStats {
        &self.inner.recording
    }

    /// Hands a room event to the sink without waiting; a full sink drops it (counted).
    pub(crate) fn emit(&self, event: RoomEvent) {
        let Some(sink) = &self.inner.config.events else {
            return;
        };
        if let Err(err) = sink.try_send(event) {
            let dropped = self.inner.event_drops.fetch_add(1, Ordering::Relaxed) + 1;
            if let mpsc::error::TrySendError::Full(event) = err {
                tracing::warn!(
                    event = event.name(),
                    dropped,
                    "event queue full; event dropped"
                );
            }
        }
    }

    /// Every media worker's counters added up, as they are now (for `/metrics`).
    pub fn worker_stats(&self) -> WorkerStats {
        WorkerStats::sum(self.inner.workers.iter().map(WorkerHandle::stats))
    }

    /// How many media workers there are.
    pub fn worker_count(&self) -> usize {
        self.inner.workers.len()
    }

    /// Each media worker's counters, in worker order (for `/metrics`).
    pub fn each_worker_stats(&self) -> impl Iterator<Item = &WorkerStats> {
        self.inner.workers.iter().map(WorkerHandle::stats)
    }

    /// How long joins took, from request to answer, accepted or refused.
    pub fn join_latency(&self) -> LatencySnapshot {
        self.inner.join_latency.snapshot()
    }

    /// Drains: refuses new joins (`serverDraining`), tells every participant that the
    /// server stops within `grace`, and waits until the rooms are empty or `grace` has
    /// passed. True when they emptied. Calls go on meanwhile; [`shutdown`](Self::shutdown)
    /// ends the rest.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        let seconds = u32::try_from(grace.as_secs()).unwrap_or(u32::MAX);
        let senders: Vec<_> = self.inner.rooms.iter().map(|e| e.tx.clone()).collect();
        for tx in senders {
            let _ = tx.send(RoomCommand::Drain { seconds }).await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !self.inner.rooms.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.inner.rooms.is_empty()
    }

    /// Tells every participant the server is going away, and waits (briefly) for the rooms
    /// to close.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        let senders: Vec<_> = self.inner.rooms.iter().map(|e| e.tx.clone()).collect();
        for tx in senders {
            let _ = tx.send(RoomCommand::Shutdown).await;
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !self.inner.rooms.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
