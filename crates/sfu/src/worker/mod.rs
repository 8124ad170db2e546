//! A media worker: one thread that owns one socket on the shared media port and the peer
//! connections of the rooms placed on it, demultiplexes datagrams to peers, and forwards
//! RTP between them. There are `media.workers` of them (see [`spawn`]).
//!
//! Control reaches a worker only as [`WorkerCommand`]s between batches of datagrams, so
//! the forwarding tables it reads per packet are its own: no lock, no await, no channel
//! hop on the media path. A datagram that the kernel gave to another worker's socket
//! arrives through that worker's hand-over (see [`crate::handoff`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use chorus_protocol::{
    IceCandidate, MediaKind, ParticipantId, PeerRole, PublishTrack, ServerMessage, TrackId,
    TrackSource,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::MediaError;
use crate::allocate::{Importance, LayerCost, Tile};
use crate::audio_level::{LEVEL_REPORT_INTERVAL, LevelMeter};
use crate::batch::{self, RecvBatch, SendBatch};
use crate::handoff::{Directory, Inbox, Outboxes, WorkerIndex};
use crate::history::History;
use crate::idhash::IdHashMap;
use crate::layer::{self, Forward, LayerSwitch};
use crate::peer::{
    ForwardDrop, LevelRead, MediaPacket, OfferedTrack, Peer, PeerEvent, PeerSettings, SourceCodec,
    ntp_time,
};
use crate::source::SourceLayers;
use crate::span::Fabric;
use crate::tcp::{self, TcpEvent};
use crate::token::{random_token, random_u64};

mod allocation;
mod demux;
mod levels;
mod probing;
mod recording;
mod relay;
pub(crate) use relay::{SharedTrack, TrackShares};
mod stats;
mod viewer;

pub use crate::source::KEYFRAME_THROTTLE;
use allocation::{ALLOCATION_INTERVAL, Downlink};

pub use stats::WorkerStats;

/// Commands from rooms to the worker. Bounded: a room awaits room for its command, which
/// slows that room's signaling, never the media path.
pub const WORKER_COMMAND_QUEUE: usize = 1024;

/// How often every subscription sends a sender report. A receiver lines a participant's
/// audio and video up only once it has one for each, so a late joiner waits up to this
/// long for lip sync; 1 s is also what webrtc-rs's own sender-report stage used.
pub const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The longest the worker sleeps without looking at its peers' timers.
const MAX_IDLE: Duration = Duration::from_millis(100);

/// Receive batches handled before the worker looks at commands and timers again, so a
/// flood of media cannot starve signaling.
const RECV_BATCHES_PER_PASS: usize = 8;

/// How often a worker forgets the addresses it learned for other workers' peers that are
/// gone (their ufrag left the directory).
const FOREIGN_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Something the worker tells a room about one of its participants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaNotice {
    /// A peer of this participant failed ICE or DTLS, or closed.
    PeerFailed(ParticipantId),
    /// A message for this participant that the room only delivers (`streamState`,
    /// `publishLayers`).
    Deliver(ParticipantId, ServerMessage),
    /// The mean audio loudness (0–127) of each of the room's publishers of audio over the
    /// last [`LEVEL_REPORT_INTERVAL`], for the room's speaker election.
    AudioLevels(Vec<(ParticipantId, u8)>),
}

/// A track the publisher now sends or stopped sending, as a publish offer left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTrack {
    pub mid: String,
    pub track: TrackId,
    pub kind: MediaKind,
}

/// The result of applying a publisher offer.
#[derive(Debug, Clone)]
pub struct PublishOutcome {
    pub answer: String,
    /// Every track the publisher sends after this offer.
    pub tracks: Vec<PublishedTrack>,
}

/// An offer for a subscriber peer.
#[derive(Debug, Clone)]
pub struct SubscriberOffer {
    pub sdp: String,
    /// mid → track, for every sending m-line.
    pub mids: Vec<(String, TrackId)>,
}

type Reply<T> = oneshot::Sender<Result<T, MediaError>>;

/// A request to the media worker.
#[derive(Debug)]
pub enum WorkerCommand {
    /// A participant enters: later notices about it go to `notices`.
    Register {
        participant: ParticipantId,
        notices: mpsc::Sender<MediaNotice>,
        /// A WHIP publisher (see [`crate::Admission::ingest`]).
        ingest: bool,
    },
    /// Apply a publisher offer (the publisher peer is created on the first one). `tracks`
    /// is what the client declared of its m-lines.
    Publish {
        participant: ParticipantId,
        sdp: String,
        tracks: Vec<PublishTrack>,
        reply: Reply<PublishOutcome>,
    },
    /// How the subscriber shows one of its subscribed tracks.
    TrackSettings {
        participant: ParticipantId,
        track: TrackId,
        tile: Tile,
        reply: Reply<()>,
    },
    /// Make the subscriber peer send exactly `tracks`, and offer the change if there is one.
    SyncSubscriptions {
        participant: ParticipantId,
        tracks: Vec<TrackId>,
        reply: Reply<Option<SubscriberOffer>>,
    },
    /// Apply the subscriber's answer.
    SubscribeAnswer {
        participant: ParticipantId,
        sdp: String,
        reply: Reply<()>,
    },
    /// A trickled candidate.
    Candidate {
        participant: ParticipantId,
        role: PeerRole,
        candidate: IceCandidate,
        reply: Reply<()>,
    },
    /// A WHEP viewer's offer: create its answering subscriber peer (see `viewer.rs`).
    ViewerOffer {
        participant: ParticipantId,
        sdp: String,
        reply: Reply<(String, Vec<crate::peer::ViewerSlot>)>,
    },
    /// Bind a WHEP viewer's slots (by mid) to tracks, or to nothing. The reply lists the
    /// mids whose track's codec the viewer did not accept.
    ViewerBind {
        participant: ParticipantId,
        slots: Vec<(String, Option<TrackId>)>,
        reply: Reply<Vec<String>>,
    },
    /// The participant is gone: close its peers, stop its tracks.
    Remove { participant: ParticipantId },
    /// A room admin muted (or let go of) a track: while silenced it is forwarded to nobody
    /// and its publisher is asked for none of its simulcast layers.
    Silence { track: TrackId, silenced: bool },
    /// The room's first speaker changed: allocation ranks the new one's camera above the
    /// other cameras (below screen shares), and the old one's like the others again.
    Speaker {
        previous: Option<ParticipantId>,
        current: Option<ParticipantId>,
    },
    /// Start (`Some`) or stop (`None`) recording a track (see `worker/recording.rs`).
    Record {
        track: TrackId,
        sink: Option<crate::record::RecordSink>,
    },
}

/// A handle for sending commands to a running worker.
#[derive(Clone, Debug)]
pub struct WorkerHandle {
    tx: mpsc::Sender<WorkerCommand>,
    stats: Arc<WorkerStats>,
    index: WorkerIndex,
    /// What the workers share with each other and the node links; None for a remote
    /// worker.
    fabric: Option<Arc<Fabric>>,
}

impl WorkerHandle {
    pub async fn send(&self, command: WorkerCommand) -> Result<(), MediaError> {
        self.tx
            .send(command)
            .await
            .map_err(|_| MediaError::WorkerGone)
    }

    /// Sends a command that carries a reply and awaits the reply.
    pub async fn call<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> WorkerCommand,
    ) -> Result<T, MediaError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| MediaError::WorkerGone)?
    }

    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    pub fn index(&self) -> WorkerIndex {
        self.index
    }

    /// A worker on another node, reached through a node link's slot `index` (see
    /// [`crate::span`]); its commands go to `tx`.
    pub(crate) fn remote(tx: mpsc::Sender<WorkerCommand>, index: WorkerIndex) -> Self {
        Self {
            tx,
            stats: Arc::default(),
            index,
            fabric: None,
        }
    }

    /// What the local workers share (every handle [`spawn`] returned has it).
    pub(crate) fn fabric(&self) -> &Arc<Fabric> {
        self.fabric
            .as_ref()
            .unwrap_or_else(|| unreachable!("only local workers' handles make a hub"))
    }
}

/// Where a datagram from a known address goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// One of this worker's peers.
    Local(ParticipantId, PeerRole),
    /// A peer of another worker: hand the datagram over.
    Foreign(WorkerIndex),
}

/// How the forwarder finds keyframes in a track's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyframes {
    /// Audio: every packet can start a stream.
    Always,
    Vp8,
    H264,
    /// A video codec Chorus cannot parse: every packet counts as one, so switches are
    /// immediate (such a track has one layer; resuming it may show a broken frame until
    /// the keyframe that is requested at the same time arrives).
    Unknown,
}

impl Keyframes {
    fn of(kind: MediaKind, codec: Option<&SourceCodec>) -> Self {
        match (kind, codec.map(SourceCodec::mime_type)) {
            (MediaKind::Audio, _) => Keyframes::Always,
            (_, Some(mime)) if mime.eq_ignore_ascii_case("video/vp8") => Keyframes::Vp8,
            (_, Some(mime)) if mime.eq_ignore_ascii_case("video/h264") => Keyframes::H264,
            _ => Keyframes::Unknown,
        }
    }

    /// Whether this packet starts a keyframe, and the frame's size where the codec says.
    fn detect(self, payload: &[u8]) -> (bool, Option<(u16, u16)>) {
        match self {
            Keyframes::Always | Keyframes::Unknown => (true, None),
            Keyframes::Vp8 => match layer::vp8_keyframe_size(payload) {
                Some(size) => (true, Some(size)),
                None => (layer::vp8_is_keyframe(payload), None),
            },
            Keyframes::H264 => (layer::h264_is_keyframe(payload), None),
        }
    }
}

/// One subscriber of a track, with the layer it is switched to.
struct Subscription {
    participant: ParticipantId,
    switch: LayerSwitch,
}

struct TrackRoute {
    publisher: ParticipantId,
    kind: MediaKind,
    importance: Importance,
    codec: Option<SourceCodec>,
    keyframes: Keyframes,
    subscribers: Vec<Subscription>,
    layers: SourceLayers,
    /// Video only, one per layer: the recent packets, to answer NACKs (audio negotiates no
    /// NACK).
    history: Vec<History<MediaPacket>>,
    /// Dynacast: the highest layer the publisher was last told to send (`None`: none),
    /// and whether it was told at all. Tracks with one layer are never told.
    announced: Option<Option<u8>>,
    /// A room admin muted it: allocation gives it to no subscriber.
    silenced: bool,
    /// Audio: its levels since the last report to the room.
    level: LevelMeter,
    /// Its recording, while the room records it.
    record: Option<recording::RecordTap>,
    /// What the workers share of it: its `origin` is the publisher's worker, so the route
    /// is a mirror (see `relay.rs`) on every other worker.
    share: Arc<SharedTrack>,
}

impl TrackRoute {
    /// Whether this is a mirror of a track that another worker than `here` publishes.
    fn is_mirror(&self, here: WorkerIndex) -> bool {
        self.share.origin != here
    }
}

struct ParticipantMedia {
    publisher: Option<Peer>,
    subscriber: Option<Peer>,
    notices: mpsc::Sender<MediaNotice>,
    /// mid → track, for the tracks this participant publishes.
    published: HashMap<String, TrackId>,
    /// What this participant receives: its allocation.
    downlink: Downlink,
    failed: bool,
    /// A WHIP publisher: its publisher leg also accepts [`crate::peer::INGEST_SRTP_PROFILE`].
    ingest: bool,
}

impl ParticipantMedia {
    fn slot(&mut self, role: PeerRole) -> &mut Option<Peer> {
        match role {
            PeerRole::Publisher => &mut self.publisher,
            PeerRole::Subscriber => &mut self.subscriber,
        }
    }
}

/// The worker's state. Runs on one task; see [`spawn`].
pub struct Worker {
    index: WorkerIndex,
    socket: UdpSocket,
    settings: PeerSettings,
    participants: IdHashMap<ParticipantId, ParticipantMedia>,
    by_ufrag: HashMap<String, (ParticipantId, PeerRole)>,
    /// (remote address, over ICE-TCP) → peer, learned from STUN checks.
    by_addr: HashMap<(SocketAddr, bool), Route>,
    /// Which worker owns each ufrag: this one's peers are written here as they are made.
    directory: Arc<Directory>,
    /// Every worker's published tracks, for mirrors (see `relay.rs`).
    shares: Arc<TrackShares>,
    /// The other workers' inboxes, and this one's.
    outboxes: Outboxes,
    handed_in: Inbox,
    /// Workers handed a datagram in the current batch, to wake once at its end.
    to_wake: Vec<bool>,
    /// Addresses routed to another worker, with the ufrag that placed them, swept every
    /// [`FOREIGN_SWEEP_INTERVAL`].
    foreign: Vec<(SocketAddr, String)>,
    next_sweep: Instant,
    /// Writers of the open ICE-TCP connections, by remote address.
    tcp_writers: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    tracks: IdHashMap<TrackId, TrackRoute>,
    next_track: Arc<AtomicU64>,
    stats: Arc<WorkerStats>,
    /// Scratch space reused for every batch.
    events: Vec<PeerEvent>,
    recv_batch: RecvBatch,
    inbox: Vec<(SocketAddr, BytesMut)>,
    sends: SendBatch,
    touched: Vec<ParticipantId>,
    /// Peers whose timers are due, kept between passes so that timer ticks allocate nothing.
    due: Vec<(ParticipantId, PeerRole)>,
    /// When the subscriptions next send sender reports.
    next_reports: Instant,
    /// When the subscribers' allocations next run.
    next_allocation: Instant,
    /// When the padding of the probes under way is next paced; `None` while none is.
    next_pacing: Option<Instant>,
    /// When the audio levels next go to the rooms.
    next_levels: Instant,
    /// Each room's first speaker, as the rooms said (`WorkerCommand::Speaker`).
    speakers: Vec<ParticipantId>,
    /// No peer's timer is due before this: the earliest deadline seen since the last walk
    /// over every peer's deadline, or [`MAX_IDLE`] after it. Passes before it skip that
    /// walk, which at hundreds of peers and thousands of passes a second cost 2 % of the
    /// forwarder.
    timers_from: Instant,
}

/// What woke the worker's loop.
enum Wake {
    /// A command, or `None` when every handle is gone.
    Command(Option<WorkerCommand>),
    /// The UDP socket is readable (or reported an error).
    Readable(std::io::Result<()>),
    /// Another worker handed datagrams over.
    Handed,
    Tcp(TcpEvent),
    /// A timer is due, or [`MAX_IDLE`] passed.
    Timer,
}

/// Starts one worker per socket (the sockets share the media port, see
/// [`crate::net::bind_udp_shared`]), with ICE-TCP on `tcp_listener` if given, and returns
/// their handles in worker order.
///
/// Each worker runs on a thread of its own with a single-threaded runtime: the media path
/// never migrates between threads or waits behind signaling tasks, and its wake-ups stay
/// on one core. Must be called inside a tokio runtime (the ICE-TCP acceptor runs there).
pub fn spawn(
    sockets: Vec<UdpSocket>,
    tcp_listener: Option<tokio::net::TcpListener>,
    settings: &PeerSettings,
    next_track: &Arc<AtomicU64>,
) -> std::io::Result<Vec<WorkerHandle>> {
    let directory = Arc::new(Directory::default());
    let shares = Arc::new(TrackShares::default());
    // One inbox per worker, then one per node link slot (see `crate::span`).
    let (outboxes, mut inboxes) = Outboxes::new(sockets.len() + crate::span::MAX_LINKS);
    let link_inboxes = inboxes.split_off(sockets.len());
    let fabric = Arc::new(Fabric::new(
        shares.clone(),
        outboxes.clone(),
        sockets.len(),
        link_inboxes,
    ));
    let mut tcp_senders = Vec::with_capacity(sockets.len());
    let mut handles = Vec::with_capacity(sockets.len());
    for (i, (socket, inbox)) in sockets.into_iter().zip(inboxes).enumerate() {
        let index = WorkerIndex::try_from(i)
            .map_err(|_| std::io::Error::other("too many media workers"))?;
        let (tx, rx) = mpsc::channel(WORKER_COMMAND_QUEUE);
        let (tcp_tx, tcp_rx) = mpsc::channel(tcp::TCP_INBOUND_QUEUE);
        tcp_senders.push(tcp_tx);
        let stats = Arc::new(WorkerStats::default());
        // Moved to the worker's own runtime: its readiness must come from that reactor.
        let socket = socket.into_std()?;
        let shared = Shared {
            index,
            directory: directory.clone(),
            shares: shares.clone(),
            outboxes: outboxes.clone(),
            inbox,
        };
        let (settings, next_track, worker_stats) =
            (settings.clone(), next_track.clone(), stats.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("chorus-media-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let socket = match UdpSocket::from_std(socket) {
                        Ok(socket) => socket,
                        Err(err) => {
                            tracing::error!(%err, worker = i, "media socket");
                            return;
                        }
                    };
                    Worker::new(socket, settings, next_track, worker_stats, shared)
                        .run(rx, tcp_rx)
                        .await;
                });
            })?;
        handles.push(WorkerHandle {
            tx,
            stats,
            index,
            fabric: Some(fabric.clone()),
        });
    }
    if let Some(listener) = tcp_listener {
        tokio::spawn(tcp::accept_loop(
            listener,
            tcp::TcpRouter::new(tcp_senders, directory),
        ));
    }
    Ok(handles)
}

/// What a worker shares with the others.
struct Shared {
    index: WorkerIndex,
    directory: Arc<Directory>,
    shares: Arc<TrackShares>,
    outboxes: Outboxes,
    inbox: Inbox,
}

impl Worker {
    fn new(
        socket: UdpSocket,
        settings: PeerSettings,
        next_track: Arc<AtomicU64>,
        stats: Arc<WorkerStats>,
        shared: Shared,
    ) -> Self {
        Self {
            index: shared.index,
            socket,
            settings,
            participants: IdHashMap::default(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            to_wake: vec![false; shared.outboxes.len()],
            directory: shared.directory,
            shares: shared.shares,
            outboxes: shared.outboxes,
            handed_in: shared.inbox,
            foreign: Vec::new(),
            next_sweep: Instant::now() + FOREIGN_SWEEP_INTERVAL,
            tcp_writers: HashMap::new(),
            tracks: IdHashMap::default(),
            next_track,
            stats,
            events: Vec::new(),
            recv_batch: RecvBatch::default(),
            inbox: Vec::with_capacity(batch::BATCH),
            sends: SendBatch::default(),
            touched: Vec::new(),
            due: Vec::new(),
            next_reports: Instant::now() + SENDER_REPORT_INTERVAL,
            next_allocation: Instant::now(),
            next_pacing: None,
            next_levels: Instant::now() + LEVEL_REPORT_INTERVAL,
            speakers: Vec::new(),
            timers_from: Instant::now(),
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<WorkerCommand>,
        mut tcp_events: mpsc::Receiver<TcpEvent>,
    ) {
        // When the worker last woke up: from then until it waits again, it is busy.
        let mut woke = Instant::now();
        loop {
            let now = Instant::now();
            let deadline = self.poll_timeouts(now).min(now + MAX_IDLE);
            let waits = Instant::now();
            self.stats.busy_nanos.fetch_add(
                u64::try_from(waits.duration_since(woke).as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            let wake = tokio::select! {
                command = commands.recv() => Wake::Command(command),
                readable = self.socket.readable() => Wake::Readable(readable),
                () = self.handed_in.ready() => Wake::Handed,
                Some(event) = tcp_events.recv() => Wake::Tcp(event),
                _ = tokio::time::sleep_until(deadline.into()) => Wake::Timer,
            };
            woke = Instant::now();
            match wake {
                Wake::Command(Some(command)) => self.handle_command(command),
                Wake::Command(None) => break,
                Wake::Readable(readable) => {
                    if let Err(err) = readable {
                        tracing::debug!(%err, "udp readable");
                    }
                    self.receive_batches();
                }
                Wake::Tcp(event) => self.handle_tcp(event),
                Wake::Handed | Wake::Timer => {}
            }
            // Every pass, whatever woke it: a wake-up that raced another branch loses no
            // handed datagram.
            self.receive_handed();
            self.handle_timeouts(Instant::now());
            self.flush();
        }
        let all: Vec<ParticipantId> = self.participants.keys().copied().collect();
        for participant in all {
            self.remove(participant);
        }
    }

    fn peer_mut(&mut self, key: (ParticipantId, PeerRole)) -> Option<&mut Peer> {
        self.participants.get_mut(&key.0)?.slot(key.1).as_mut()
    }

    /// Reads and handles up to [`RECV_BATCHES_PER_PASS`] batches of datagrams, flushing
    /// what they produced after each batch.
    fn receive_batches(&mut self) {
        let fd = batch::raw_fd(&self.socket);
        for _ in 0..RECV_BATCHES_PER_PASS {
            let mut inbox = std::mem::take(&mut self.inbox);
            let received = self.socket.try_io(Interest::READABLE, || {
                self.recv_batch
                    .recv(fd, |from, datagram| inbox.push((from, datagram)))
            });
            let now = Instant::now();
            for (from, datagram) in inbox.drain(..) {
                self.handle_datagram(from, false, datagram, now, false);
            }
            self.inbox = inbox;
            self.flush();
            match received {
                Ok(n) if n == batch::BATCH => continue,
                Ok(_) => break,
                Err(err) => {
                    if err.kind() != std::io::ErrorKind::WouldBlock {
                        tracing::debug!(%err, "recvmmsg");
                    }
                    break;
                }
            }
        }
    }

    fn handle_tcp(&mut self, event: TcpEvent) {
        match event {
            TcpEvent::Opened { from, writer } => {
                self.tcp_writers.insert(from, writer);
            }
            TcpEvent::Frame { from, data } => {
                let now = Instant::now();
                self.handle_datagram(from, true, data, now, false);
            }
            TcpEvent::Closed { from } => {
                self.tcp_writers.remove(&from);
                self.by_addr.remove(&(from, true));
            }
        }
    }

    /// Reads what a peer produced: forwards its RTP, acts on its events.
    fn drain_peer(&mut self, key: (ParticipantId, PeerRole), now: Instant) {
        let (participant, role) = key;
        let Some(media) = self.participants.get_mut(&participant) else {
            return;
        };
        // Take the peer out so that forwarding can borrow the other peers.
        let Some(mut peer) = media.slot(role).take() else {
            return;
        };
        let mut events = std::mem::take(&mut self.events);
        peer.poll_events(&mut events);
        {
            let participants = &mut self.participants;
            let tracks = &mut self.tracks;
            let stats = &self.stats;
            let touched = &mut self.touched;
            let (outboxes, to_wake) = (&self.outboxes, &mut self.to_wake);
            peer.poll_media(
                |track, layer, packet| {
                    let wire_len = packet.wire_len();
                    stats.rtp_in.fetch_add(1, Ordering::Relaxed);
                    stats
                        .rtp_bytes_in
                        .fetch_add(wire_len as u64, Ordering::Relaxed);
                    let Some(route) = tracks.get_mut(&track) else {
                        return;
                    };
                    match packet.audio_level() {
                        LevelRead::Absent => {}
                        LevelRead::Loudness(loudness) => route.level.record(loudness),
                        LevelRead::Invalid => {
                            stats.audio_levels_invalid.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let (keyframe, size) = route.keyframes.detect(packet.payload());
                    route.layers.on_packet(layer, packet.link_len(), size, now);
                    if route.share.is_fed() {
                        relay::hand_over(
                            &route.share,
                            outboxes,
                            to_wake,
                            &stats.handoff,
                            track,
                            layer,
                            (keyframe, size),
                            &packet,
                        );
                    }
                    fan_out(
                        &mut route.subscribers,
                        participants,
                        stats,
                        touched,
                        track,
                        layer,
                        keyframe,
                        &packet,
                        now,
                    );
                    if let Some(tap) = route.record.as_mut() {
                        tap.on_packet(layer, keyframe, &packet, now);
                    }
                    if let Some(history) = route.history.get_mut(usize::from(layer)) {
                        history.store(packet.ssrc(), packet.sequence_number(), packet);
                    }
                },
                &mut events,
            );
        }
        if let Some(media) = self.participants.get_mut(&participant) {
            *media.slot(role) = Some(peer);
        }
        for event in events.drain(..) {
            match event {
                PeerEvent::Connected => {
                    tracing::debug!(%participant, ?role, "peer connected");
                    // Counted while the peer exists and has not failed: removal and
                    // failure take it back off.
                    if self.peer_mut(key).is_some_and(|p| !p.has_failed()) {
                        self.stats.peers_connected.fetch_add(1, Ordering::Relaxed);
                    }
                    // its subscriptions start now, each on a keyframe
                    self.next_allocation = now;
                }
                PeerEvent::UnknownLayer => {
                    self.stats.unknown_layer.fetch_add(1, Ordering::Relaxed);
                }
                PeerEvent::Failed => {
                    tracing::info!(%participant, ?role, "peer failed");
                    self.stats.peers_failed.fetch_add(1, Ordering::Relaxed);
                    if self.peer_mut(key).is_some_and(|p| p.is_connected()) {
                        self.stats.peers_connected.fetch_sub(1, Ordering::Relaxed);
                    }
                    if let Some(media) = self.participants.get_mut(&participant)
                        && !media.failed
                    {
                        media.failed = true;
                        if media
                            .notices
                            .try_send(MediaNotice::PeerFailed(participant))
                            .is_err()
                        {
                            tracing::warn!(%participant, "room notice queue full");
                        }
                    }
                }
                PeerEvent::KeyframeRequested(track) => {
                    self.stats
                        .keyframe_requests_received
                        .fetch_add(1, Ordering::Relaxed);
                    // the layer this subscriber gets, or is about to
                    let layer = self.tracks.get(&track).and_then(|route| {
                        let sub = route
                            .subscribers
                            .iter()
                            .find(|s| s.participant == participant)?;
                        sub.switch.current().or(sub.switch.target())
                    });
                    tracing::debug!(%participant, %track, ?layer, "keyframe requested by a subscriber");
                    if let Some(layer) = layer {
                        self.request_keyframe(track, layer, now);
                    }
                }
                PeerEvent::ResendRequested { track, lost } => {
                    self.stats.nacks_received.fetch_add(1, Ordering::Relaxed);
                    self.resend(participant, track, &lost, now);
                }
            }
        }
        self.events = events;
    }

    /// Answers a subscriber's NACK from the track's history.
    fn resend(
        &mut self,
        subscriber: ParticipantId,
        track: TrackId,
        lost: &[(u32, u16)],
        now: Instant,
    ) {
        let history = self.tracks.get(&track).map(|r| r.history.as_slice());
        let Some(peer) = self
            .participants
            .get_mut(&subscriber)
            .and_then(|m| m.subscriber.as_mut())
        else {
            return;
        };
        for &(ssrc, seq) in lost {
            let sent = history
                .and_then(|layers| layers.iter().find_map(|h| h.get(ssrc, seq)))
                .is_some_and(|packet| peer.resend(track, packet, now).is_ok());
            let counter = if sent {
                &self.stats.retransmitted
            } else {
                &self.stats.retransmit_misses
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.touched.push(subscriber);
    }

    /// Every subscription that has sent media reports it (RTCP sender reports).
    fn send_reports(&mut self, now: Instant) {
        let ntp = ntp_time(std::time::SystemTime::now());
        for (participant, media) in &mut self.participants {
            if let Some(peer) = &mut media.subscriber {
                peer.send_reports(now, ntp);
                self.touched.push(*participant);
            }
        }
        self.next_reports = now + SENDER_REPORT_INTERVAL;
    }

    /// Asks a track's publisher for a keyframe on one layer, at most once per
    /// [`KEYFRAME_THROTTLE`] per layer.
    fn request_keyframe(&mut self, track: TrackId, layer: u8, now: Instant) {
        let Some(route) = self.tracks.get_mut(&track) else {
            return;
        };
        let Some(state) = route.layers.layer_mut(layer) else {
            return;
        };
        if !state.keyframes.try_request(now) {
            return;
        }
        if route.is_mirror(self.index) {
            let origin = route.share.origin;
            self.request_relayed_keyframe(origin, track, layer);
            return;
        }
        let publisher = route.publisher;
        if let Some(peer) = self
            .participants
            .get_mut(&publisher)
            .and_then(|m| m.publisher.as_mut())
        {
            match peer.request_keyframe(track, layer, now) {
                Ok(true) => {
                    tracing::debug!(%track, layer, "keyframe request sent");
                    self.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                    self.touched.push(publisher);
                }
                Ok(false) => {}
                Err(err) => tracing::debug!(%track, %err, "keyframe request"),
            }
        }
    }

    fn poll_timeouts(&self, now: Instant) -> Instant {
        let mut earliest = self
            .next_reports
            .min(self.timers_from)
            .min(self.next_allocation)
            .min(self.next_levels)
            .min(self.next_pacing.unwrap_or(self.next_levels));
        for route in self.tracks.values() {
            if let Some(due) = route.layers.keyframe_due() {
                earliest = earliest.min(due);
            }
        }
        earliest.max(now)
    }

    fn handle_timeouts(&mut self, now: Instant) {
        if now >= self.next_reports {
            self.send_reports(now);
        }
        if now >= self.timers_from {
            self.run_due_timers(now);
        }
        if now >= self.next_allocation {
            self.allocate(now);
            self.next_allocation = now + ALLOCATION_INTERVAL;
        }
        if self.next_pacing.is_some_and(|t| now >= t) {
            self.pace_probes(now);
        }
        if now >= self.next_levels {
            self.report_levels();
            self.next_levels = now + LEVEL_REPORT_INTERVAL;
        }
        if now >= self.next_sweep {
            self.sweep_foreign();
            self.next_sweep = now + FOREIGN_SWEEP_INTERVAL;
        }
        let pending: Vec<(TrackId, u8)> = self
            .tracks
            .iter()
            .flat_map(|(t, r)| r.layers.keyframes_due(now).map(move |layer| (*t, layer)))
            .collect();
        for (track, layer) in pending {
            self.request_keyframe(track, layer, now);
        }
    }

    /// Lets every peer whose deadline has come run its timers, and finds the next deadline
    /// of the others (the ones run now are touched: flush reads theirs).
    fn run_due_timers(&mut self, now: Instant) {
        self.timers_from = now + MAX_IDLE;
        let mut due = std::mem::take(&mut self.due);
        for (participant, media) in &mut self.participants {
            for (role, peer) in [
                (PeerRole::Publisher, &mut media.publisher),
                (PeerRole::Subscriber, &mut media.subscriber),
            ] {
                let Some(peer) = peer else { continue };
                match peer.next_timeout() {
                    Some(t) if t <= now => {
                        peer.handle_timeout(now);
                        due.push((*participant, role));
                    }
                    Some(t) => self.timers_from = self.timers_from.min(t),
                    None => {}
                }
            }
        }
        for key in due.drain(..) {
            self.touched.push(key.0);
            self.drain_peer(key, now);
        }
        self.due = due;
    }

    /// Sends everything the touched peers queued. Each peer's datagrams go to the kernel
    /// as soon as that peer is drained (one `sendmmsg`, its run to one address as one GSO
    /// message), so the first subscribers of a burst do not wait for the last ones'
    /// SRTP work: the extra system call per peer costs far less than the wait it saves.
    /// Their timers are re-read only once everything has been sent: asking webrtc-rs walks
    /// its whole stack, which no datagram should wait for.
    fn flush(&mut self) {
        self.wake_handed();
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for participant in &touched {
            let Some(media) = self.participants.get_mut(participant) else {
                continue;
            };
            for peer in [&mut media.publisher, &mut media.subscriber]
                .into_iter()
                .flatten()
            {
                let mut out = Outbox {
                    sends: &mut self.sends,
                    tcp_writers: &self.tcp_writers,
                    stats: &self.stats,
                };
                peer.poll_transmit(|to, tcp, datagram| out.send(to, tcp, datagram));
                Self::send_queued(&mut self.sends, &self.socket, &self.stats);
            }
        }
        for participant in touched.drain(..) {
            if let Some(media) = self.participants.get_mut(&participant) {
                for peer in [&mut media.publisher, &mut media.subscriber]
                    .into_iter()
                    .flatten()
                {
                    peer.refresh_timeout();
                    if let Some(t) = peer.next_timeout() {
                        self.timers_from = self.timers_from.min(t);
                    }
                }
            }
        }
        self.touched = touched;
    }

    /// Hands the queued UDP datagrams to the kernel, [`batch::BATCH`] per system call.
    fn send_queued(sends: &mut SendBatch, socket: &UdpSocket, stats: &WorkerStats) {
        if sends.is_empty() {
            return;
        }
        let (sent, dropped) = sends.flush(batch::raw_fd(socket));
        stats
            .datagrams_out
            .fetch_add(sent as u64, Ordering::Relaxed);
        stats
            .send_drops
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }

    /// Creates the participant's peer of `role` unless it exists; it is routed by a fresh
    /// ufrag from then on.
    fn ensure_peer(
        &mut self,
        participant: ParticipantId,
        role: PeerRole,
    ) -> Result<(), MediaError> {
        let media = self
            .participants
            .get_mut(&participant)
            .ok_or(MediaError::UnknownParticipant)?;
        let ingest = media.ingest && role == PeerRole::Publisher;
        let slot = media.slot(role);
        if slot.is_none() {
            let ufrag = random_token(16);
            let pwd = random_token(32);
            let ingest_settings;
            let settings = if ingest {
                ingest_settings = crate::peer::ingest_settings(&self.settings);
                &ingest_settings
            } else {
                &self.settings
            };
            *slot = Some(Peer::new(settings, role, &ufrag, &pwd, Instant::now())?);
            self.directory.insert(&ufrag, self.index);
            self.by_ufrag.insert(ufrag, (participant, role));
            self.stats.peers.fetch_add(1, Ordering::Relaxed);
            self.timers_from = Instant::now();
        }
        Ok(())
    }

    fn handle_command(&mut self, command: WorkerCommand) {
        let now = Instant::now();
        match command {
            WorkerCommand::Register {
                participant,
                notices,
                ingest,
            } => {
                self.participants.insert(
                    participant,
                    ParticipantMedia {
                        publisher: None,
                        subscriber: None,
                        notices,
                        published: HashMap::new(),
                        downlink: Downlink::default(),
                        failed: false,
                        ingest,
                    },
                );
            }
            WorkerCommand::Publish {
                participant,
                sdp,
                tracks,
                reply,
            } => {
                let result = self.publish(participant, sdp, &tracks, now);
                let _ = reply.send(result);
            }
            WorkerCommand::TrackSettings {
                participant,
                track,
                tile,
                reply,
            } => {
                let result = self.set_tile(participant, track, tile);
                self.next_allocation = now;
                let _ = reply.send(result);
            }
            WorkerCommand::SyncSubscriptions {
                participant,
                tracks,
                reply,
            } => {
                let result = self.sync_subscriptions(participant, &tracks, now);
                let _ = reply.send(result);
            }
            WorkerCommand::SubscribeAnswer {
                participant,
                sdp,
                reply,
            } => {
                let result = match self.peer_mut((participant, PeerRole::Subscriber)) {
                    Some(peer) => peer.apply_answer(sdp, now),
                    None => Err(MediaError::NoOffer),
                };
                if result.is_ok() {
                    // newly negotiated video starts on a keyframe, which allocation asks for
                    self.next_allocation = now;
                }
                self.touched.push(participant);
                let _ = reply.send(result);
            }
            WorkerCommand::Candidate {
                participant,
                role,
                candidate,
                reply,
            } => {
                let result = match self.peer_mut((participant, role)) {
                    Some(peer) => peer.add_remote_candidate(candidate),
                    None => Err(MediaError::NoOffer),
                };
                let _ = reply.send(result);
            }
            WorkerCommand::Remove { participant } => self.remove(participant),
            WorkerCommand::ViewerOffer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.viewer_offer(participant, sdp, now));
            }
            WorkerCommand::ViewerBind {
                participant,
                slots,
                reply,
            } => {
                let _ = reply.send(self.viewer_bind(participant, slots, now));
            }
            WorkerCommand::Speaker { previous, current } => {
                self.set_speaker(previous, current);
                self.next_allocation = now;
            }
            WorkerCommand::Record { track, sink } => self.set_recording(track, sink, now),
            WorkerCommand::Silence { track, silenced } => {
                if let Some(route) = self.tracks.get_mut(&track) {
                    route.silenced = silenced;
                    if !route.is_mirror(self.index) {
                        route.share.silenced.store(silenced, Ordering::Relaxed);
                    }
                    if silenced {
                        // At once, not at the next allocation pass.
                        for sub in &mut route.subscribers {
                            sub.switch.set_target(None);
                        }
                        if let Some(tap) = route.record.as_mut() {
                            tap.silence();
                        }
                    }
                    self.next_allocation = now;
                }
            }
        }
    }

    fn publish(
        &mut self,
        participant: ParticipantId,
        sdp: String,
        declared: &[PublishTrack],
        now: Instant,
    ) -> Result<PublishOutcome, MediaError> {
        // Refused before anything is applied, so that a bad offer changes nothing.
        let simulcast = layer::offered_layers(&sdp)?;
        self.ensure_peer(participant, PeerRole::Publisher)?;
        let media = self
            .participants
            .get_mut(&participant)
            .ok_or(MediaError::UnknownParticipant)?;
        let peer = media
            .publisher
            .as_mut()
            .ok_or(MediaError::UnknownParticipant)?;
        let (answer, offered) = peer.apply_offer(sdp, now)?;
        let mut tracks = Vec::new();
        let mut gone = Vec::new();
        for OfferedTrack { mid, kind, active } in offered {
            match (media.published.get(&mid).copied(), active) {
                (Some(track), true) => tracks.push(PublishedTrack { mid, track, kind }),
                (Some(track), false) => {
                    media.published.remove(&mid);
                    peer.unbind_inbound(track);
                    gone.push(track);
                }
                (None, true) => {
                    let track = TrackId(self.next_track.fetch_add(1, Ordering::Relaxed));
                    let layers = simulcast
                        .iter()
                        .find(|(m, _)| *m == mid)
                        .map(|(_, layers)| layers.as_slice());
                    peer.bind_inbound(&mid, track, layers.is_some());
                    let codec = peer.source_codec(&mid);
                    media.published.insert(mid.clone(), track);
                    let declaration = declared.iter().find(|t| t.mid == mid);
                    let count = layers
                        .and_then(|l| l.iter().max())
                        .map_or(1, |top| usize::from(*top) + 1);
                    let costs: Vec<Option<LayerCost>> = layer::RIDS[..count]
                        .iter()
                        .map(|rid| {
                            let l = declaration?.layers.iter().find(|l| l.rid == *rid)?;
                            Some(LayerCost {
                                bitrate: l.max_bitrate,
                                width: u16::try_from(l.width).unwrap_or(u16::MAX),
                                height: u16::try_from(l.height).unwrap_or(u16::MAX),
                            })
                        })
                        .collect();
                    let screen = declaration.map(|t| t.source) == Some(TrackSource::Screen);
                    let importance =
                        levels::importance_of(&self.speakers, participant, kind, screen);
                    let share = Arc::new(SharedTrack::new(
                        self.index,
                        self.to_wake.len(),
                        participant,
                        kind,
                        codec.clone(),
                        costs.clone(),
                        screen,
                    ));
                    self.shares.insert(track, share.clone());
                    let history = if kind == MediaKind::Video {
                        (0..count).map(|_| History::default()).collect()
                    } else {
                        Vec::new()
                    };
                    self.tracks.insert(
                        track,
                        TrackRoute {
                            publisher: participant,
                            kind,
                            importance,
                            keyframes: Keyframes::of(kind, codec.as_ref()),
                            codec,
                            subscribers: Vec::new(),
                            layers: SourceLayers::new(count, &costs, now),
                            history,
                            announced: None,
                            silenced: false,
                            level: LevelMeter::default(),
                            record: None,
                            share,
                        },
                    );
                    self.stats.tracks.fetch_add(1, Ordering::Relaxed);
                    tracks.push(PublishedTrack { mid, track, kind });
                }
                (None, false) => {}
            }
        }
        for track in gone {
            self.drop_track(track);
        }
        self.touched.push(participant);
        Ok(PublishOutcome { answer, tracks })
    }

    /// Ends a track published here (its mirrors on other workers close as their
    /// subscribers leave it).
    fn drop_track(&mut self, track: TrackId) {
        self.shares.remove(&track);
        if let Some(route) = self.tracks.remove(&track) {
            self.stats.tracks.fetch_sub(1, Ordering::Relaxed);
            self.stats
                .subscriptions
                .fetch_sub(route.subscribers.len() as u64, Ordering::Relaxed);
        }
    }

    fn sync_subscriptions(
        &mut self,
        participant: ParticipantId,
        wanted: &[TrackId],
        now: Instant,
    ) -> Result<Option<SubscriberOffer>, MediaError> {
        self.ensure_peer(participant, PeerRole::Subscriber)?;
        // tracks published on other workers are received through mirrors here
        for track in wanted {
            self.route_or_mirror(*track, now);
        }
        let result = self.apply_subscriptions(participant, wanted, now);
        self.close_idle_mirrors();
        result
    }

    fn apply_subscriptions(
        &mut self,
        participant: ParticipantId,
        wanted: &[TrackId],
        now: Instant,
    ) -> Result<Option<SubscriberOffer>, MediaError> {
        let Some(peer) = self
            .participants
            .get_mut(&participant)
            .and_then(|m| m.subscriber.as_mut())
        else {
            return Err(MediaError::UnknownParticipant);
        };
        let current: Vec<TrackId> = peer.outbound_tracks().collect();
        let mut changed = false;
        for track in &current {
            if !wanted.contains(track) {
                peer.remove_outbound(*track);
                if let Some(route) = self.tracks.get_mut(track) {
                    route.subscribers.retain(|s| s.participant != participant);
                    self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
                }
                changed = true;
            }
        }
        for track in wanted {
            if current.contains(track) {
                continue;
            }
            let Some(route) = self.tracks.get_mut(track) else {
                continue;
            };
            let Some(codec) = route.codec.clone() else {
                continue;
            };
            let ssrc = random_ssrc();
            peer.add_outbound(*track, codec, ssrc)?;
            // Nothing flows until allocation picks a layer, on the next pass.
            route.subscribers.push(Subscription {
                participant,
                switch: LayerSwitch::new(),
            });
            self.next_allocation = now;
            self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
            changed = true;
        }
        if !changed {
            return Ok(None);
        }
        let (sdp, mids) = peer.create_offer(now)?;
        self.touched.push(participant);
        Ok(Some(SubscriberOffer { sdp, mids }))
    }

    fn remove(&mut self, participant: ParticipantId) {
        let Some(mut media) = self.participants.remove(&participant) else {
            return;
        };
        self.speakers.retain(|p| *p != participant);
        for peer in [&mut media.publisher, &mut media.subscriber]
            .into_iter()
            .flatten()
        {
            peer.close();
            let mut out = Outbox {
                sends: &mut self.sends,
                tcp_writers: &self.tcp_writers,
                stats: &self.stats,
            };
            peer.poll_transmit(|to, tcp, datagram| out.send(to, tcp, datagram));
            self.stats.peers.fetch_sub(1, Ordering::Relaxed);
            if peer.has_failed() {
                self.stats.peers_failed.fetch_sub(1, Ordering::Relaxed);
            } else if peer.is_connected() {
                self.stats.peers_connected.fetch_sub(1, Ordering::Relaxed);
            }
        }
        for track in media.published.into_values() {
            self.drop_track(track);
        }
        let mut removed_subs = 0;
        for route in self.tracks.values_mut() {
            let before = route.subscribers.len();
            route.subscribers.retain(|s| s.participant != participant);
            removed_subs += (before - route.subscribers.len()) as u64;
        }
        self.stats
            .subscriptions
            .fetch_sub(removed_subs, Ordering::Relaxed);
        self.close_idle_mirrors();
        let directory = &self.directory;
        self.by_ufrag.retain(|ufrag, (p, _)| {
            let keep = *p != participant;
            if !keep {
                directory.remove(ufrag);
            }
            keep
        });
        self.by_addr
            .retain(|_, route| !matches!(route, Route::Local(p, _) if *p == participant));
    }
}

/// Where outgoing datagrams go: the UDP send batch, or an ICE-TCP connection's queue.
struct Outbox<'a> {
    sends: &'a mut SendBatch,
    tcp_writers: &'a HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    stats: &'a WorkerStats,
}

impl Outbox<'_> {
    fn send(&mut self, to: SocketAddr, tcp: bool, datagram: BytesMut) {
        if !tcp {
            self.sends.push(to, datagram);
            return;
        }
        let sent = match (self.tcp_writers.get(&to), tcp::frame(&datagram)) {
            (Some(writer), Some(frame)) => writer.try_send(frame).is_ok(),
            _ => false,
        };
        let counter = if sent {
            &self.stats.datagrams_out
        } else {
            &self.stats.send_drops
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends one packet of `track` to each of its subscribers here whose layer switch takes
/// it, and counts the copies.
#[allow(clippy::too_many_arguments)]
fn fan_out(
    subscribers: &mut [Subscription],
    participants: &mut IdHashMap<ParticipantId, ParticipantMedia>,
    stats: &WorkerStats,
    touched: &mut Vec<ParticipantId>,
    track: TrackId,
    layer: u8,
    keyframe: bool,
    packet: &MediaPacket,
    now: Instant,
) {
    let wire_len = packet.wire_len();
    // Copies sent, counted once per packet rather than once per copy.
    let mut forwarded: u64 = 0;
    for subscription in subscribers.iter_mut() {
        let before = subscription.switch.clone();
        let forward = subscription.switch.on_packet(layer, keyframe);
        if forward == Forward::Drop {
            continue;
        }
        let subscriber = subscription.participant;
        let Some(sub) = participants
            .get_mut(&subscriber)
            .and_then(|m| m.subscriber.as_mut())
        else {
            continue;
        };
        let sent = if forward == Forward::SwitchAndSend {
            sub.forward_switch(track, packet, now)
        } else {
            sub.forward(track, packet, now)
        };
        if sent.is_err() {
            // The keyframe did not reach the subscriber: the switch waits
            // for the next one.
            subscription.switch = before;
        } else if forward == Forward::SwitchAndSend {
            stats.layer_switches.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%track, %subscriber, layer, "layer switch");
        }
        match sent {
            Ok(()) => {
                forwarded += 1;
                touched.push(subscriber);
            }
            Err(reason) => {
                if !matches!(
                    reason,
                    ForwardDrop::NotConnected | ForwardDrop::NotNegotiated
                ) {
                    tracing::trace!(?reason, %track, "forward drop");
                }
                stats.forward_drops.fetch_add(1, Ordering::Relaxed);
                stats.forward_drops_by_reason[reason.index()].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if forwarded > 0 {
        stats.rtp_forwarded.fetch_add(forwarded, Ordering::Relaxed);
        stats
            .rtp_bytes_forwarded
            .fetch_add(forwarded * wire_len as u64, Ordering::Relaxed);
    }
}

fn random_ssrc() -> u32 {
    (random_u64() as u32) | 1
}
