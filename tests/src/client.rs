//! The simulated browser: one signaling session plus a publisher and a subscriber peer
//! connection, publishing known RTP and recording every RTP packet it receives.
//!
//! Tasks per client:
//! - a **reader** that parses every server frame, records it with its arrival time, answers
//!   `subscribeOffer`s and applies trickled candidates;
//! - a **writer** that owns the sending half of the WebSocket;
//! - per remote track, a **recorder** that files each RTP packet under the
//!   `(participant, track)` that the latest `subscribeOffer` maps its mid to;
//! - while publishing, an audio and a video **sender**, and a task that counts keyframe requests
//!   arriving on the video sender (answering them with a keyframe, as a browser would). A
//!   simulcast camera and each screen share are sent by a `LayeredVideo` loop instead,
//!   one RTP stream per rid (see [`crate::layered`]), and obey `publishLayers`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use chorus_protocol::{
    ByeReason, ChatLine, ClientMessage, ErrorCode, Grants, IceCandidate, MediaKind,
    PROTOCOL_VERSION, ParticipantId, ParticipantInfo, PeerRole, PublishTrack, PublishedMid, RoomId,
    RoomSummary, ServerMessage, SubscribedMid, TrackId, TrackSource,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription,
};
use webrtc::rtp_transceiver::RtpTransceiver;
use webrtc::runtime::Runtime;

use crate::layered::{self, LayeredVideo};
use crate::media::{MediaTag, expected_payload};
use crate::peer::{self, CandidateGate, OPUS_PT, VP8_PT};
use crate::wait;

/// How long signaling round trips may take before a helper gives up.
pub const SIGNALING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long ICE + DTLS may take on loopback before a helper gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// One server message as this client received it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub at: Instant,
    pub message: ServerMessage,
}

/// One RTP packet as the subscriber peer received it.
#[derive(Debug, Clone)]
pub struct ReceivedPacket {
    /// The subscriber m-line it arrived on.
    pub mid: String,
    pub ssrc: u32,
    pub sequence_number: u16,
    pub timestamp: u32,
    pub payload_type: u8,
    pub marker: bool,
    pub payload: Bytes,
    pub at: Instant,
}

/// One RTCP sender report as the subscriber peer received it.
#[derive(Debug, Clone)]
pub struct SenderReportSeen {
    pub ssrc: u32,
    pub ntp_time: u64,
    pub rtp_time: u32,
    pub packet_count: u32,
    pub octet_count: u32,
    pub at: Instant,
}

/// One RTP packet as the publisher sent it.
#[derive(Debug, Clone)]
pub struct SentPacket {
    pub kind: MediaKind,
    pub counter: u32,
    pub ssrc: u32,
    pub sequence_number: u16,
    pub timestamp: u32,
    pub keyframe: bool,
    pub payload: Bytes,
    pub at: Instant,
    /// The publisher m-line it went out on.
    pub mid: String,
    /// The simulcast layer, `None` for a track sent as one encoding.
    pub layer: Option<u8>,
}

/// Writes RTP on one of the publisher's tracks (see [`Client::rtp_writer`]). The packet's
/// SSRC and payload type must be [`ssrc`](RtpWriter::ssrc) and
/// [`payload_type`](RtpWriter::payload_type), or the webrtc crate drops it silently.
#[derive(Clone)]
pub struct RtpWriter {
    track: Arc<TrackLocalStaticRTP>,
    pub ssrc: u32,
    pub payload_type: u8,
    /// The camera's keyframe flag (set by a PLI/FIR, and before the first frame); `None` for
    /// audio and for a simulcast camera, whose layers have their own.
    keyframe: Option<Arc<AtomicBool>>,
}

impl RtpWriter {
    /// Hands one packet to the peer connection.
    pub async fn write_rtp(&self, packet: rtc::rtp::Packet) -> Result<()> {
        self.track.write_rtp(packet).await.context("write_rtp")
    }

    /// Whether the next video frame should be a keyframe: true once before the first frame
    /// and once after each PLI/FIR (the flag is cleared by reading it). Always false for
    /// audio. For callers that send their own media instead of
    /// [`Client::start_media`], which reads the same flag.
    pub fn take_keyframe_request(&self) -> bool {
        self.keyframe
            .as_ref()
            .is_some_and(|k| k.swap(false, Ordering::Relaxed))
    }
}

/// How [`Client::publish_with`] publishes. The default is what [`Client::publish`] does: a
/// microphone and a camera sent as one encoding each.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// The camera's simulcast rids, lowest layer first (`q`, `h`, `f` for Chorus); empty for
    /// one encoding. Anything may be listed, to see what the server makes of bad offers.
    pub camera_rids: Vec<String>,
    /// How long each simulcast layer's packets carry the mid and rid header extensions.
    pub mid_rid: layered::MidRid,
}

impl PublishOptions {
    /// A camera simulcast as `chorus.js` would configure it: rids q, h and f.
    pub fn simulcast() -> Self {
        Self {
            camera_rids: layered::RIDS.iter().map(|r| (*r).to_owned()).collect(),
            ..Self::default()
        }
    }
}

/// How [`Client::connect_with`] sets a client up. The default is what [`Client::connect`]
/// does.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// The webrtc-rs runtime both of the client's peer connections run on (webrtc-rs's
    /// default when `None`). The load generator passes one that timestamps every datagram at
    /// the sockets.
    pub runtime: Option<Arc<dyn Runtime>>,
    /// The audio both peers negotiate beyond plain Opus (RED on both, the audio level on the
    /// publisher only, as a browser would have it with Chorus).
    pub audio: peer::AudioCaps,
}

/// A keyframe request that reached the publisher's video sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeRequestKind {
    Pli,
    Fir,
}

/// When and what kind of keyframe request arrived.
#[derive(Debug, Clone, Copy)]
pub struct KeyframeRequest {
    pub at: Instant,
    pub kind: KeyframeRequestKind,
    pub media_ssrc: u32,
}

/// How fast the publisher sends.
#[derive(Debug, Clone, Copy)]
pub struct MediaRate {
    /// Time between audio packets (20 ms is one Opus frame).
    pub audio_interval: Duration,
    /// Time between video frames (one packet per frame).
    pub video_interval: Duration,
    /// Every n-th video frame is a keyframe (0: only the first, and on request).
    pub keyframe_every: u32,
    /// Answer a PLI/FIR with a keyframe on the next frame, as a browser does.
    pub keyframe_on_request: bool,
}

impl Default for MediaRate {
    fn default() -> Self {
        Self {
            audio_interval: Duration::from_millis(20),
            video_interval: Duration::from_millis(33),
            keyframe_every: 30,
            keyframe_on_request: true,
        }
    }
}

/// The track ids the server gave this client's published m-lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedTracks {
    pub audio: TrackId,
    pub video: TrackId,
}

/// The `joined` reply, unpacked.
#[derive(Debug, Clone)]
pub struct JoinedInfo {
    pub participant_id: ParticipantId,
    pub room: RoomId,
    pub participants: Vec<ParticipantInfo>,
    pub chat_history: Vec<ChatLine>,
    pub grants: Grants,
}

/// The server answered a request with an `error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRefused {
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for ServerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server replied error {:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for ServerRefused {}

/// The server answered `join` with `redirect`: the room lives on another cluster node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirected {
    /// The node's WebSocket URL.
    pub url: String,
}

impl fmt::Display for Redirected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server redirected the join to {}", self.url)
    }
}

impl std::error::Error for Redirected {}

/// The redirect's URL, if `err` is (or wraps) a [`Redirected`].
pub fn redirect_url(err: &anyhow::Error) -> Option<String> {
    err.chain()
        .find_map(|e| e.downcast_ref::<Redirected>())
        .map(|r| r.url.clone())
}

/// The error code, if `err` is (or wraps) a [`ServerRefused`].
pub fn refusal_code(err: &anyhow::Error) -> Option<ErrorCode> {
    err.chain()
        .find_map(|e| e.downcast_ref::<ServerRefused>())
        .map(|r| r.code)
}

/// What the writer task sends.
enum Outgoing {
    Text(String),
    Close,
}

type WsStream = WebSocketStream<TcpStream>;

/// State shared by the client handle and its tasks.
struct Inner {
    name: String,
    out: mpsc::UnboundedSender<Outgoing>,
    /// Every server message, in arrival order.
    log: Mutex<Vec<Logged>>,
    /// Bumped after each log append, so waiters wake without polling.
    log_tick: watch::Sender<usize>,
    /// False once the reader saw the socket end.
    ws_open: AtomicBool,
    participant: Mutex<Option<ParticipantId>>,
    /// Things that went wrong inside the client's tasks (e.g. an offer that did not apply).
    failures: Mutex<Vec<String>>,
    subscriber: Arc<SubscriberState>,
    publisher: Mutex<Option<Arc<Publisher>>>,
    /// Whether the subscriber peer sends transport-cc feedback (see
    /// [`Client::without_downlink_estimate`]).
    transport_cc: AtomicBool,
    /// The latest `publishLayers` per own track. Kept apart from the publisher because the
    /// first one can arrive before [`Client::publish`] has finished.
    publish_layers: Mutex<HashMap<TrackId, Vec<String>>>,
    options: ClientOptions,
}

impl Inner {
    fn send(&self, message: &ClientMessage) -> Result<()> {
        let text = serde_json::to_string(message)?;
        self.out
            .send(Outgoing::Text(text))
            .map_err(|_| anyhow!("the WebSocket writer has stopped"))
    }

    fn fail(&self, what: String) {
        tracing::warn!("[{}] {what}", self.name);
        lock(&self.failures).push(what);
    }

    fn publisher(&self) -> Option<Arc<Publisher>> {
        lock(&self.publisher).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends a trickled candidate for `role` once its gate allows.
fn send_candidate(
    out: &mpsc::UnboundedSender<Outgoing>,
    role: PeerRole,
    candidate: String,
    mid: Option<String>,
) {
    let message = ClientMessage::Candidate {
        peer: role,
        candidate: IceCandidate {
            candidate,
            sdp_m_line_index: mid.as_ref().map(|_| 0),
            sdp_mid: mid,
        },
    };
    if let Ok(text) = serde_json::to_string(&message) {
        let _ = out.send(Outgoing::Text(text));
    }
}

/// Callbacks of one peer connection.
struct PeerHandler {
    role: PeerRole,
    out: mpsc::UnboundedSender<Outgoing>,
    gate: Arc<CandidateGate>,
    state: watch::Sender<RTCPeerConnectionState>,
    /// Set on the subscriber peer: where received tracks are recorded.
    subscriber: Option<Weak<SubscriberState>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PeerHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let Ok(init) = event.candidate.to_json() else {
            return;
        };
        if let Some((candidate, mid)) = self.gate.offer(init.candidate) {
            send_candidate(&self.out, self.role, candidate, mid);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!("{:?} peer: {state}", self.role);
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(subscriber) = self.subscriber.as_ref().and_then(Weak::upgrade) else {
            return;
        };
        tokio::spawn(record_track(subscriber, track));
    }
}

/// The subscriber peer connection and the candidate gate that belongs to it.
struct SubscriberPeer {
    pc: Arc<dyn PeerConnection>,
    gate: Arc<CandidateGate>,
    state: watch::Receiver<RTCPeerConnectionState>,
}

/// What the client knows about the media it receives.
struct SubscriberState {
    peer: Mutex<Option<Arc<SubscriberPeer>>>,
    /// mid → (participant, track), from the latest `subscribeOffer`.
    mids: Mutex<HashMap<String, (ParticipantId, TrackId)>>,
    /// Every packet, filed under the track its mid mapped to on arrival.
    received: Mutex<HashMap<(ParticipantId, TrackId), Vec<ReceivedPacket>>>,
    /// Packets whose mid mapped to nothing.
    unmapped: Mutex<Vec<ReceivedPacket>>,
    /// The remote track object per mid, for sending RTCP feedback.
    remotes: Mutex<HashMap<String, Arc<dyn TrackRemote>>>,
    /// How many `subscribeOffer`s were answered.
    answered: AtomicU64,
    /// When set ([`Client::received_stream`]), packets go here instead of being recorded.
    tap: Mutex<Option<mpsc::UnboundedSender<ReceivedPacket>>>,
    sender_reports: Mutex<Vec<SenderReportSeen>>,
}

impl SubscriberState {
    fn new() -> Self {
        Self {
            peer: Mutex::new(None),
            mids: Mutex::new(HashMap::new()),
            received: Mutex::new(HashMap::new()),
            unmapped: Mutex::new(Vec::new()),
            remotes: Mutex::new(HashMap::new()),
            answered: AtomicU64::new(0),
            tap: Mutex::new(None),
            sender_reports: Mutex::new(Vec::new()),
        }
    }

    fn pc(&self) -> Option<Arc<dyn PeerConnection>> {
        lock(&self.peer).as_ref().map(|p| Arc::clone(&p.pc))
    }

    /// The mid of the transceiver whose receiver carries `track`.
    async fn resolve_mid(&self, track: &Arc<dyn TrackRemote>) -> Option<String> {
        let pc = self.pc()?;
        let wanted = Arc::as_ptr(track).cast::<()>() as usize;
        for transceiver in pc.get_transceivers().await {
            let Ok(Some(receiver)) = transceiver.receiver().await else {
                continue;
            };
            if Arc::as_ptr(receiver.track()).cast::<()>() as usize == wanted {
                return transceiver.mid().await.ok().flatten();
            }
        }
        None
    }

    fn record(&self, mid: Option<&str>, packet: rtc::rtp::Packet) {
        // Padding only (the server's bandwidth probes on a paused video): no media, and a
        // browser's jitter buffer drops it too.
        if packet.payload.is_empty() {
            return;
        }
        let at = Instant::now();
        let received = ReceivedPacket {
            mid: mid.unwrap_or_default().to_owned(),
            ssrc: packet.header.ssrc,
            sequence_number: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            payload_type: packet.header.payload_type,
            marker: packet.header.marker,
            payload: packet.payload,
            at,
        };
        if let Some(tap) = lock(&self.tap).as_ref() {
            let _ = tap.send(received);
            return;
        }
        let key = mid.and_then(|m| lock(&self.mids).get(m).copied());
        match key {
            Some(key) => lock(&self.received).entry(key).or_default().push(received),
            None => lock(&self.unmapped).push(received),
        }
    }
}

/// Reads one remote track until it ends, recording its RTP.
async fn record_track(subscriber: Arc<SubscriberState>, track: Arc<dyn TrackRemote>) {
    let mut mid = subscriber.resolve_mid(&track).await;
    if let Some(mid) = &mid {
        lock(&subscriber.remotes).insert(mid.clone(), Arc::clone(&track));
    }
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                if mid.is_none() {
                    mid = subscriber.resolve_mid(&track).await;
                    if let Some(mid) = &mid {
                        lock(&subscriber.remotes).insert(mid.clone(), Arc::clone(&track));
                    }
                }
                subscriber.record(mid.as_deref(), packet);
            }
            TrackRemoteEvent::OnRtcpPacket(packets) => {
                let at = Instant::now();
                let reports = packets
                    .iter()
                    .filter_map(|p| p.as_any().downcast_ref::<SenderReport>())
                    .map(|sr| SenderReportSeen {
                        ssrc: sr.ssrc,
                        ntp_time: sr.ntp_time,
                        rtp_time: sr.rtp_time,
                        packet_count: sr.packet_count,
                        octet_count: sr.octet_count,
                        at,
                    });
                lock(&subscriber.sender_reports).extend(reports);
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

/// The publisher peer connection and its tracks.
struct Publisher {
    pc: Arc<dyn PeerConnection>,
    audio: Arc<TrackLocalStaticRTP>,
    video: Arc<TrackLocalStaticRTP>,
    audio_mid: String,
    video_mid: String,
    /// What the last `publishOffer` declared, one entry per m-line (renegotiations repeat it).
    declared: Mutex<Vec<PublishTrack>>,
    /// The camera when it simulcasts; it is then sent by its own loop, not `send_media`.
    camera: Option<Arc<LayeredVideo>>,
    /// Screen shares added by [`Client::publish_screen`].
    screens: Mutex<Vec<Arc<LayeredVideo>>>,
    /// The rate [`Client::start_media`] was last given, for tracks added later.
    rate: Mutex<MediaRate>,
    /// Keyframe-request readers of the screen shares.
    screen_rtcp: Mutex<Vec<JoinHandle<()>>>,
    audio_ssrc: u32,
    video_ssrc: u32,
    audio_pt: u8,
    video_pt: u8,
    tracks: PublishedTracks,
    state: watch::Receiver<RTCPeerConnectionState>,
    keyframe_requests: Arc<Mutex<Vec<KeyframeRequest>>>,
    /// Set by a keyframe request; the video sender makes its next frame a keyframe.
    want_keyframe: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<SentPacket>>>,
    /// Failed `write_rtp` calls.
    write_errors: Arc<AtomicU64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    rtcp_task: JoinHandle<()>,
}

impl Publisher {
    fn stop_media(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }

    fn abort_rtcp(&self) {
        self.rtcp_task.abort();
        for task in lock(&self.screen_rtcp).drain(..) {
            task.abort();
        }
    }

    /// Every video sent as layers: the simulcast camera, then the screen shares.
    fn layered(&self) -> Vec<Arc<LayeredVideo>> {
        self.camera
            .iter()
            .cloned()
            .chain(lock(&self.screens).iter().cloned())
            .collect()
    }

    async fn close(&self) {
        self.stop_media();
        self.abort_rtcp();
        if let Err(err) = self.pc.close().await {
            tracing::debug!("closing publisher peer: {err}");
        }
    }
}

/// A simulated browser. See the module documentation.
pub struct Client {
    inner: Arc<Inner>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Client {
    /// Opens the WebSocket to `ws://addr/ws`. `name` is the display name used by [`join`]
    /// and inside the media tags, so it must not contain `/`.
    ///
    /// [`join`]: Client::join
    pub async fn connect(addr: SocketAddr, name: &str) -> Result<Self> {
        Self::connect_with(addr, name, ClientOptions::default()).await
    }

    /// [`connect`](Client::connect), with `options`.
    pub async fn connect_with(
        addr: SocketAddr,
        name: &str,
        options: ClientOptions,
    ) -> Result<Self> {
        if name.contains('/') {
            bail!("a client name may not contain '/'");
        }
        let ws = crate::raw::open(addr).await?;
        let (sink, stream) = ws.split();
        let (out, out_rx) = mpsc::unbounded_channel();
        let (log_tick, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            out,
            log: Mutex::new(Vec::new()),
            log_tick,
            ws_open: AtomicBool::new(true),
            participant: Mutex::new(None),
            failures: Mutex::new(Vec::new()),
            subscriber: Arc::new(SubscriberState::new()),
            publisher: Mutex::new(None),
            publish_layers: Mutex::new(HashMap::new()),
            transport_cc: AtomicBool::new(true),
            options,
        });
        let writer = tokio::spawn(write_loop(sink, out_rx));
        let reader = tokio::spawn(read_loop(Arc::clone(&inner), stream));
        Ok(Self {
            inner,
            reader,
            writer,
        })
    }

    /// [`connect`](Client::connect) then [`join`](Client::join).
    pub async fn connect_and_join(addr: SocketAddr, room: &str, name: &str) -> Result<Self> {
        let client = Self::connect(addr, name).await?;
        client.join(room).await?;
        Ok(client)
    }

    /// Makes the subscriber peer negotiate no transport-cc, so the server has no downlink
    /// estimate for this client and caps nothing by bandwidth: what it forwards then
    /// depends only on tiles and on what publishers send. Call before the first
    /// `subscribeOffer` arrives (before joining).
    pub fn without_downlink_estimate(&self) {
        self.inner.transport_cc.store(false, Ordering::Relaxed);
    }

    /// This client's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The participant id from the last `joined`.
    pub fn participant_id(&self) -> Option<ParticipantId> {
        *lock(&self.inner.participant)
    }

    /// The participant id, or an error before joining.
    pub fn id(&self) -> Result<ParticipantId> {
        self.participant_id()
            .ok_or_else(|| anyhow!("{} has not joined", self.inner.name))
    }

    /// Sends any client message as is.
    pub fn send(&self, message: &ClientMessage) -> Result<()> {
        self.inner.send(message)
    }

    /// Sends one raw text frame on the client's own socket.
    pub fn send_text(&self, text: impl Into<String>) -> Result<()> {
        self.inner
            .out
            .send(Outgoing::Text(text.into()))
            .map_err(|_| anyhow!("the WebSocket writer has stopped"))
    }

    /// Sends `join` and waits for `joined` (or fails with [`ServerRefused`]).
    pub async fn join(&self, room: &str) -> Result<JoinedInfo> {
        self.join_with_token(room, None).await
    }

    /// [`join`](Self::join) with a join token, for a server in token mode.
    pub async fn join_with_token(&self, room: &str, token: Option<&str>) -> Result<JoinedInfo> {
        let mark = self.mark();
        self.send(&ClientMessage::Join {
            version: PROTOCOL_VERSION,
            room: RoomId::new(room).map_err(|e| anyhow!("room name {room:?}: {e}"))?,
            name: self.inner.name.clone(),
            token: token.map(str::to_owned),
        })?;
        let reply = self
            .wait_for_after(mark, SIGNALING_TIMEOUT, "joined or error", |m| {
                matches!(
                    m,
                    ServerMessage::Joined { .. }
                        | ServerMessage::Error { .. }
                        | ServerMessage::Redirect { .. }
                )
            })
            .await?;
        match reply {
            ServerMessage::Joined {
                participant_id,
                room,
                participants,
                chat_history,
                grants,
                ..
            } => {
                *lock(&self.inner.participant) = Some(participant_id);
                Ok(JoinedInfo {
                    participant_id,
                    room,
                    participants,
                    chat_history,
                    grants,
                })
            }
            ServerMessage::Error { code, message } => Err(ServerRefused { code, message }.into()),
            ServerMessage::Redirect { url, .. } => Err(Redirected { url }.into()),
            other => bail!("unexpected reply to join: {other:?}"),
        }
    }

    /// Creates the publisher peer with an Opus and a VP8 sendonly track, negotiates it with
    /// `publishOffer`/`publishAnswer`, and waits until it is connected. Media does not flow
    /// until [`start_media`](Client::start_media).
    pub async fn publish(&self) -> Result<PublishedTracks> {
        self.publish_with(PublishOptions::default()).await
    }

    /// [`publish`](Client::publish), with the camera shaped by `options` (e.g. simulcast).
    /// A refused offer is a [`ServerRefused`] and leaves the client without a publisher.
    pub async fn publish_with(&self, options: PublishOptions) -> Result<PublishedTracks> {
        if self.inner.publisher().is_some() {
            bail!("{} already publishes", self.inner.name);
        }
        let name = &self.inner.name;
        let gate = Arc::new(CandidateGate::default());
        let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let handler = Arc::new(PeerHandler {
            role: PeerRole::Publisher,
            out: self.inner.out.clone(),
            gate: Arc::clone(&gate),
            state: state_tx,
            subscriber: None,
        });
        let pc = peer::build_with_audio(
            handler,
            self.inner.options.runtime.clone(),
            true,
            self.inner.options.audio,
        )
        .await?;

        let audio_ssrc = random_u32();
        let video_encodings =
            layered::encodings(&options.camera_rids, &peer::vp8_codec(), random_u32);
        let video_ssrc = video_encodings
            .first()
            .and_then(|e| e.rtp_coding_parameters.ssrc)
            .unwrap_or_else(random_u32);
        let audio = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("{name}-stream"),
            format!("{name}-audio"),
            format!("{name} microphone"),
            RtpCodecKind::Audio,
            vec![encoding(audio_ssrc, peer::opus_codec())],
        )));
        let video = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("{name}-stream"),
            format!("{name}-video"),
            format!("{name} camera"),
            RtpCodecKind::Video,
            video_encodings,
        )));
        let sendonly = || {
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![format!("{name}-stream")],
                send_encodings: vec![],
            })
        };
        let audio_tr = pc
            .add_transceiver_from_track(Arc::clone(&audio) as Arc<dyn TrackLocal>, sendonly())
            .await
            .context("adding the audio transceiver")?;
        let video_tr = pc
            .add_transceiver_from_track(Arc::clone(&video) as Arc<dyn TrackLocal>, sendonly())
            .await
            .context("adding the video transceiver")?;

        let offer = pc.create_offer(None).await.context("create_offer")?;
        pc.set_local_description(offer.clone())
            .await
            .context("set_local_description(offer)")?;
        let sdp = pc.local_description().await.map_or(offer.sdp, |d| d.sdp);
        let audio_mid = mid_of(&audio_tr).await?;
        let video_mid = mid_of(&video_tr).await?;

        let declared = vec![
            PublishTrack {
                mid: audio_mid.clone(),
                source: TrackSource::Microphone,
                layers: Vec::new(),
            },
            layered::declaration(&video_mid, TrackSource::Camera, &options.camera_rids),
        ];
        let mark = self.mark();
        self.send(&ClientMessage::PublishOffer {
            sdp: sdp.clone(),
            tracks: declared.clone(),
        })?;
        let (held, mid) = gate.open(peer::first_mid(&sdp));
        for candidate in held {
            send_candidate(&self.inner.out, PeerRole::Publisher, candidate, mid.clone());
        }

        let mapping = match self.await_publish_answer(&pc, mark).await {
            Ok(mapping) => mapping,
            Err(err) => {
                let _ = pc.close().await;
                return Err(err);
            }
        };
        let track_for = |mid: &str| track_of_mid(&mapping, mid);
        let tracks = PublishedTracks {
            audio: track_for(&audio_mid)?,
            video: track_for(&video_mid)?,
        };

        wait_connected(state_rx.clone(), "publisher peer").await?;
        let audio_pt = negotiated_pt(&audio_tr).await.unwrap_or(OPUS_PT);
        let video_pt = negotiated_pt(&video_tr).await.unwrap_or(VP8_PT);

        let camera = if options.camera_rids.is_empty() {
            None
        } else {
            let camera = LayeredVideo::new(
                name.clone(),
                Arc::clone(&video),
                &video_tr,
                tracks.video,
                options.mid_rid,
            )
            .await?;
            Some(Arc::new(camera))
        };
        let keyframe_requests = Arc::new(Mutex::new(Vec::new()));
        let want_keyframe = Arc::new(AtomicBool::new(true));
        let rtcp_task = tokio::spawn(count_keyframe_requests(
            Arc::clone(&video),
            Arc::clone(&keyframe_requests),
            Arc::clone(&want_keyframe),
            camera.clone(),
        ));
        let publisher = Arc::new(Publisher {
            pc,
            audio,
            video,
            audio_mid,
            video_mid,
            declared: Mutex::new(declared),
            camera,
            screens: Mutex::new(Vec::new()),
            rate: Mutex::new(MediaRate::default()),
            screen_rtcp: Mutex::new(Vec::new()),
            audio_ssrc,
            video_ssrc,
            audio_pt,
            video_pt,
            tracks,
            state: state_rx,
            keyframe_requests,
            want_keyframe,
            sent: Arc::new(Mutex::new(Vec::new())),
            write_errors: Arc::new(AtomicU64::new(0)),
            tasks: Mutex::new(Vec::new()),
            rtcp_task,
        });
        if let Some(camera) = &publisher.camera {
            self.apply_publish_layers(camera);
        }
        *lock(&self.inner.publisher) = Some(publisher);
        Ok(tracks)
    }

    /// Waits for the answer to the `publishOffer` sent after `mark` and applies it; returns
    /// the server's mid → track map. An `error` reply is a [`ServerRefused`].
    async fn await_publish_answer(
        &self,
        pc: &Arc<dyn PeerConnection>,
        mark: usize,
    ) -> Result<Vec<PublishedMid>> {
        let reply = self
            .wait_for_after(mark, SIGNALING_TIMEOUT, "publishAnswer or error", |m| {
                // A joined participant's publishOffer is never out of order: such an error
                // answers a candidate trickled for an earlier offer that the server
                // refused (it has no peer to add it to), and may come after this mark.
                matches!(m, ServerMessage::PublishAnswer { .. })
                    || matches!(m, ServerMessage::Error { code, .. } if *code != ErrorCode::OutOfOrder)
            })
            .await?;
        let (answer_sdp, mapping) = match reply {
            ServerMessage::PublishAnswer { sdp, tracks } => (sdp, tracks),
            ServerMessage::Error { code, message } => {
                return Err(ServerRefused { code, message }.into());
            }
            other => bail!("unexpected reply to publishOffer: {other:?}"),
        };
        pc.set_remote_description(
            RTCSessionDescription::answer(answer_sdp).context("publishAnswer SDP")?,
        )
        .await
        .context("set_remote_description(publishAnswer)")?;
        Ok(mapping)
    }

    /// Applies the last `publishLayers` the server sent for `video`'s track, if any.
    fn apply_publish_layers(&self, video: &LayeredVideo) {
        if let Some(rids) = lock(&self.inner.publish_layers).get(&video.track_id) {
            video.set_active(rids);
        }
    }

    /// Renegotiates the publisher peer with one more video m-line, a screen share sent as
    /// `rids` (one encoding when empty), as a browser does when sharing starts while the
    /// camera is on. Its media starts at once, at the rate of the last
    /// [`start_media`](Client::start_media). Returns the screen's track id.
    pub async fn publish_screen(&self, rids: &[&str]) -> Result<TrackId> {
        let publisher = self
            .inner
            .publisher()
            .ok_or_else(|| anyhow!("{} has not published", self.inner.name))?;
        let name = &self.inner.name;
        let index = lock(&publisher.screens).len();
        let rids: Vec<String> = rids.iter().map(|r| (*r).to_owned()).collect();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("{name}-screen-stream-{index}"),
            format!("{name}-screen-{index}"),
            format!("{name} screen {index}"),
            RtpCodecKind::Video,
            layered::encodings(&rids, &peer::vp8_codec(), random_u32),
        )));
        let pc = &publisher.pc;
        let transceiver = pc
            .add_transceiver_from_track(
                Arc::clone(&track) as Arc<dyn TrackLocal>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![format!("{name}-screen-stream-{index}")],
                    send_encodings: vec![],
                }),
            )
            .await
            .context("adding the screen transceiver")?;
        let offer = pc.create_offer(None).await.context("create_offer")?;
        pc.set_local_description(offer.clone())
            .await
            .context("set_local_description(re-offer)")?;
        let sdp = pc.local_description().await.map_or(offer.sdp, |d| d.sdp);
        let mid = mid_of(&transceiver).await?;
        let mut declared = lock(&publisher.declared).clone();
        declared.push(layered::declaration(&mid, TrackSource::Screen, &rids));
        let mark = self.mark();
        self.send(&ClientMessage::PublishOffer {
            sdp,
            tracks: declared.clone(),
        })?;
        let mapping = self.await_publish_answer(pc, mark).await?;
        *lock(&publisher.declared) = declared;
        let track_id = track_of_mid(&mapping, &mid)?;
        let mid_rid = publisher
            .camera
            .as_ref()
            .map_or(layered::MidRid::default(), |c| c.mid_rid());
        let screen = Arc::new(
            LayeredVideo::new(
                format!("{name}.screen{index}"),
                Arc::clone(&track),
                &transceiver,
                track_id,
                mid_rid,
            )
            .await?,
        );
        self.apply_publish_layers(&screen);
        lock(&publisher.screen_rtcp).push(tokio::spawn(count_keyframe_requests(
            track,
            Arc::clone(&publisher.keyframe_requests),
            Arc::new(AtomicBool::new(false)),
            Some(Arc::clone(&screen)),
        )));
        lock(&publisher.screens).push(Arc::clone(&screen));
        let rate = *lock(&publisher.rate);
        lock(&publisher.tasks).push(tokio::spawn(Arc::clone(&screen).send_loop(
            rate,
            Arc::clone(&publisher.sent),
            Arc::clone(&publisher.write_errors),
        )));
        Ok(track_id)
    }

    /// The SSRC of each layer of the camera, lowest first, with its rid (one entry with an
    /// empty rid without simulcast).
    pub fn camera_layers(&self) -> Vec<(String, u32)> {
        let Some(publisher) = self.inner.publisher() else {
            return Vec::new();
        };
        match &publisher.camera {
            Some(camera) => camera
                .layers
                .iter()
                .map(|l| (l.rid.clone(), l.ssrc))
                .collect(),
            None => vec![(String::new(), publisher.video_ssrc)],
        }
    }

    /// Whether a receiver report from the server acknowledged one of the simulcast camera's
    /// layers (after which a Chromium-like sender stops naming it with mid and rid).
    pub fn camera_acknowledged(&self) -> bool {
        self.inner
            .publisher()
            .and_then(|p| p.camera.as_ref().map(|c| c.any_acknowledged()))
            .unwrap_or(false)
    }

    /// The rids one of this client's layered videos (simulcast camera, screen share) sends
    /// now, after `publishLayers`; `None` for another track.
    pub fn sending_rids(&self, track: TrackId) -> Option<Vec<String>> {
        let publisher = self.inner.publisher()?;
        publisher
            .layered()
            .into_iter()
            .find(|v| v.track_id == track)
            .map(|v| v.active_rids())
    }

    /// Sends `trackSettings` for a subscribed video: how this client shows it.
    pub fn track_settings(
        &self,
        track: TrackId,
        visible: bool,
        width: u32,
        height: u32,
    ) -> Result<()> {
        self.send(&ClientMessage::TrackSettings {
            track_id: track,
            visible,
            width,
            height,
        })
    }

    /// Starts sending known audio and video RTP at `rate` (restarting if already sending).
    pub fn start_media(&self, rate: MediaRate) -> Result<()> {
        let publisher = self
            .inner
            .publisher()
            .ok_or_else(|| anyhow!("{} has not published", self.inner.name))?;
        publisher.stop_media();
        *lock(&publisher.rate) = rate;
        let mut tasks = lock(&publisher.tasks);
        for kind in [MediaKind::Audio, MediaKind::Video] {
            if kind == MediaKind::Video && publisher.camera.is_some() {
                continue;
            }
            tasks.push(tokio::spawn(send_media(
                self.inner.name.clone(),
                kind,
                Arc::clone(&publisher),
                rate,
            )));
        }
        for video in publisher.layered() {
            tasks.push(tokio::spawn(video.send_loop(
                rate,
                Arc::clone(&publisher.sent),
                Arc::clone(&publisher.write_errors),
            )));
        }
        Ok(())
    }

    /// [`publish`](Client::publish) then [`start_media`](Client::start_media).
    pub async fn publish_and_stream(&self, rate: MediaRate) -> Result<PublishedTracks> {
        let tracks = self.publish().await?;
        self.start_media(rate)?;
        Ok(tracks)
    }

    /// Stops the media senders; the peer stays up.
    pub fn stop_media(&self) {
        if let Some(publisher) = self.inner.publisher() {
            publisher.stop_media();
        }
    }

    /// The track ids of this client's published tracks.
    pub fn published(&self) -> Option<PublishedTracks> {
        self.inner.publisher().map(|p| p.tracks)
    }

    /// A handle for writing RTP of one kind on the publisher peer, for callers that shape
    /// their own media (the load generator) instead of [`start_media`](Client::start_media).
    pub fn rtp_writer(&self, kind: MediaKind) -> Option<RtpWriter> {
        self.inner.publisher().map(|p| match kind {
            MediaKind::Audio => RtpWriter {
                track: Arc::clone(&p.audio),
                ssrc: p.audio_ssrc,
                payload_type: p.audio_pt,
                keyframe: None,
            },
            MediaKind::Video => RtpWriter {
                track: Arc::clone(&p.video),
                ssrc: p.video_ssrc,
                payload_type: p.video_pt,
                keyframe: p.camera.is_none().then(|| Arc::clone(&p.want_keyframe)),
            },
        })
    }

    /// The publisher's negotiated header-extension id for `uri`, from the answer it applied.
    pub async fn publisher_extension_id(&self, uri: &str) -> Option<u8> {
        let pc = Arc::clone(&self.inner.publisher()?.pc);
        let sdp = pc.remote_description().await?.sdp;
        sdp.lines().find_map(|l| {
            let rest = l.strip_prefix("a=extmap:")?;
            let (id, u) = rest.split_once(' ')?;
            (u.split_whitespace().next() == Some(uri))
                .then(|| id.split('/').next()?.parse().ok())?
        })
    }

    /// The publisher's SDP answer from the server, as applied.
    pub async fn publisher_answer(&self) -> Option<String> {
        let pc = Arc::clone(&self.inner.publisher()?.pc);
        Some(pc.remote_description().await?.sdp)
    }

    /// The subscriber's own answer, as applied.
    pub async fn subscriber_answer(&self) -> Option<String> {
        let pc = Arc::clone(&lock(&self.inner.subscriber.peer).as_ref()?.pc);
        Some(pc.local_description().await?.sdp)
    }

    /// One writer per layer of the simulcast camera, lowest first (empty without simulcast),
    /// for callers that send their own media instead of [`start_media`](Client::start_media).
    /// Each obeys `publishLayers` and keyframe requests through the same flags as the
    /// client's own sender (see [`layered::LayerWriter`]).
    pub fn camera_layer_writers(&self) -> Vec<layered::LayerWriter> {
        self.inner
            .publisher()
            .and_then(|p| p.camera.clone())
            .map(|camera| {
                (0..camera.layers.len())
                    .map(|index| layered::LayerWriter::new(Arc::clone(&camera), index))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// From now on, every RTP packet the subscriber peer receives goes to the returned
    /// channel instead of being recorded (so [`received`](Client::received) stays empty):
    /// for long runs whose packets would not fit in memory. A later call replaces the channel.
    pub fn received_stream(&self) -> mpsc::UnboundedReceiver<ReceivedPacket> {
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.inner.subscriber.tap) = Some(tx);
        rx
    }

    /// The SSRCs the publisher sends with: (audio, video).
    pub fn published_ssrcs(&self) -> Option<(u32, u32)> {
        self.inner.publisher().map(|p| (p.audio_ssrc, p.video_ssrc))
    }

    /// Every packet the publisher sent so far, both kinds, in send order.
    pub fn sent(&self) -> Vec<SentPacket> {
        self.inner
            .publisher()
            .map(|p| lock(&p.sent).clone())
            .unwrap_or_default()
    }

    /// Failed `write_rtp` calls of the publisher.
    pub fn write_errors(&self) -> u64 {
        self.inner
            .publisher()
            .map_or(0, |p| p.write_errors.load(Ordering::Relaxed))
    }

    /// Keyframe requests (PLI/FIR) that reached the publisher's video sender.
    pub fn keyframe_requests(&self) -> Vec<KeyframeRequest> {
        self.inner
            .publisher()
            .map(|p| lock(&p.keyframe_requests).clone())
            .unwrap_or_default()
    }

    /// The latest mid → (participant, track) map from `subscribeOffer`.
    pub fn subscribed(&self) -> Vec<SubscribedMid> {
        let mut out: Vec<_> = lock(&self.inner.subscriber.mids)
            .iter()
            .map(|(mid, (p, t))| SubscribedMid {
                mid: mid.clone(),
                track_id: *t,
                participant_id: *p,
            })
            .collect();
        out.sort_by(|a, b| a.mid.cmp(&b.mid));
        out
    }

    /// How many `subscribeOffer`s this client has answered.
    pub fn offers_answered(&self) -> u64 {
        self.inner.subscriber.answered.load(Ordering::Relaxed)
    }

    /// Packets received for one remote track, in arrival order.
    pub fn received(&self, participant: ParticipantId, track: TrackId) -> Vec<ReceivedPacket> {
        lock(&self.inner.subscriber.received)
            .get(&(participant, track))
            .cloned()
            .unwrap_or_default()
    }

    /// How many packets arrived for one remote track.
    pub fn received_count(&self, participant: ParticipantId, track: TrackId) -> usize {
        lock(&self.inner.subscriber.received)
            .get(&(participant, track))
            .map_or(0, Vec::len)
    }

    /// Everything received, by (participant, track).
    pub fn received_all(&self) -> HashMap<(ParticipantId, TrackId), Vec<ReceivedPacket>> {
        lock(&self.inner.subscriber.received).clone()
    }

    /// Packets whose mid was not in the latest `subscribeOffer`.
    pub fn unmapped(&self) -> Vec<ReceivedPacket> {
        lock(&self.inner.subscriber.unmapped).clone()
    }

    /// Waits until at least `count` packets arrived for one remote track.
    pub async fn wait_for_packets(
        &self,
        participant: ParticipantId,
        track: TrackId,
        count: usize,
        within: Duration,
    ) -> Result<()> {
        let what = format!(
            "{} to receive {count} packets of {participant}/{track}",
            self.inner.name
        );
        wait::poll_until(within, &what, || {
            (self.received_count(participant, track) >= count).then_some(())
        })
        .await
        .map_err(|e| {
            e.context(format!(
                "received {} so far; subscribed {:?}; unmapped {}",
                self.received_count(participant, track),
                self.subscribed(),
                self.unmapped().len()
            ))
        })
    }

    /// Sends a PLI for a received track, addressed to the SSRC it arrives with.
    pub async fn send_pli(&self, participant: ParticipantId, track: TrackId) -> Result<()> {
        let (remote, media_ssrc) = self.feedback_target(participant, track)?;
        remote
            .write_rtcp(vec![Box::new(PictureLossIndication {
                sender_ssrc: 1,
                media_ssrc,
            })])
            .await
            .context("writing a PLI")
    }

    /// Reports packets of a subscribed track lost (RTCP generic NACK), by the sequence
    /// numbers this client received them under.
    pub async fn send_nack(
        &self,
        participant: ParticipantId,
        track: TrackId,
        sequence_numbers: &[u16],
    ) -> Result<()> {
        let (remote, media_ssrc) = self.feedback_target(participant, track)?;
        remote
            .write_rtcp(vec![Box::new(TransportLayerNack {
                sender_ssrc: 1,
                media_ssrc,
                nacks: nack_pairs_from_sequence_numbers(sequence_numbers),
            })])
            .await
            .context("writing a NACK")
    }

    /// Every sender report the subscriber peer received so far.
    pub fn sender_reports(&self) -> Vec<SenderReportSeen> {
        lock(&self.inner.subscriber.sender_reports).clone()
    }

    /// Sends a FIR for a received track.
    pub async fn send_fir(
        &self,
        participant: ParticipantId,
        track: TrackId,
        seq: u8,
    ) -> Result<()> {
        let (remote, media_ssrc) = self.feedback_target(participant, track)?;
        remote
            .write_rtcp(vec![Box::new(FullIntraRequest {
                sender_ssrc: 1,
                media_ssrc,
                fir: vec![rtc::rtcp::payload_feedbacks::full_intra_request::FirEntry {
                    ssrc: media_ssrc,
                    sequence_number: seq,
                }],
            })])
            .await
            .context("writing a FIR")
    }

    fn feedback_target(
        &self,
        participant: ParticipantId,
        track: TrackId,
    ) -> Result<(Arc<dyn TrackRemote>, u32)> {
        let sub = &self.inner.subscriber;
        let mid = lock(&sub.mids)
            .iter()
            .find(|(_, v)| **v == (participant, track))
            .map(|(mid, _)| mid.clone())
            .ok_or_else(|| anyhow!("no subscribed mid carries {participant}/{track}"))?;
        let remote = lock(&sub.remotes)
            .get(&mid)
            .cloned()
            .ok_or_else(|| anyhow!("no media has arrived on mid {mid} yet"))?;
        let ssrc = lock(&sub.received)
            .get(&(participant, track))
            .and_then(|p| p.last())
            .map(|p| p.ssrc)
            .ok_or_else(|| anyhow!("no packet of {participant}/{track} received yet"))?;
        Ok((remote, ssrc))
    }

    /// Sends `setMute` for one of this client's tracks.
    pub fn set_mute(&self, track: TrackId, muted: bool) -> Result<()> {
        self.send(&ClientMessage::SetMute {
            track_id: track,
            muted,
        })
    }

    /// Sends a chat line.
    pub fn chat(&self, text: &str) -> Result<()> {
        self.send(&ClientMessage::Chat {
            text: text.to_owned(),
        })
    }

    /// Asks for the room list and waits for it.
    pub async fn list_rooms(&self) -> Result<Vec<RoomSummary>> {
        let mark = self.mark();
        self.send(&ClientMessage::ListRooms)?;
        match self
            .wait_for_after(mark, SIGNALING_TIMEOUT, "roomList", |m| {
                matches!(
                    m,
                    ServerMessage::RoomList { .. } | ServerMessage::Error { .. }
                )
            })
            .await?
        {
            ServerMessage::RoomList { rooms } => Ok(rooms),
            ServerMessage::Error { code, message } => Err(ServerRefused { code, message }.into()),
            other => bail!("unexpected reply to listRooms: {other:?}"),
        }
    }

    /// Sends `leave`, stops media and closes both peers. The socket stays open.
    pub async fn leave(&self) -> Result<()> {
        *lock(&self.inner.participant) = None;
        self.send(&ClientMessage::Leave)?;
        self.close_peers().await;
        Ok(())
    }

    /// Closes both peer connections (DTLS close_notify) but keeps the WebSocket open, as a
    /// tab whose media stack died would.
    pub async fn drop_media(&self) {
        self.close_peers().await;
    }

    async fn close_peers(&self) {
        let publisher = lock(&self.inner.publisher).take();
        if let Some(publisher) = publisher {
            publisher.close().await;
        }
        let subscriber = lock(&self.inner.subscriber.peer).take();
        if let Some(subscriber) = subscriber
            && let Err(err) = subscriber.pc.close().await
        {
            tracing::debug!("closing subscriber peer: {err}");
        }
        lock(&self.inner.subscriber.mids).clear();
        lock(&self.inner.subscriber.remotes).clear();
    }

    /// Drops the WebSocket without `leave` or a close frame, and closes both peers, as a
    /// crashed tab or a lost network would.
    pub async fn disconnect_abruptly(&self) {
        self.reader.abort();
        self.writer.abort();
        // Both halves of the socket live in the aborted tasks; wait until they are dropped.
        let _ = wait::poll_until(Duration::from_secs(5), "socket tasks to end", || {
            (self.reader.is_finished() && self.writer.is_finished()).then_some(())
        })
        .await;
        self.inner.ws_open.store(false, Ordering::Relaxed);
        self.close_peers().await;
    }

    /// Closes politely: peers, then a WebSocket close frame.
    pub async fn close(&self) {
        self.close_peers().await;
        let _ = self.inner.out.send(Outgoing::Close);
        let _ = wait::poll_until(Duration::from_secs(5), "the socket to close", || {
            (!self.is_connected()).then_some(())
        })
        .await;
    }

    /// Whether the WebSocket is still open.
    pub fn is_connected(&self) -> bool {
        self.inner.ws_open.load(Ordering::Relaxed)
    }

    /// The publisher peer's connection state.
    pub fn publisher_state(&self) -> Option<RTCPeerConnectionState> {
        self.inner.publisher().map(|p| *p.state.borrow())
    }

    /// The subscriber peer's connection state.
    pub fn subscriber_state(&self) -> Option<RTCPeerConnectionState> {
        lock(&self.inner.subscriber.peer)
            .as_ref()
            .map(|p| *p.state.borrow())
    }

    /// Problems inside the client's own tasks (an offer that would not apply, ...).
    pub fn failures(&self) -> Vec<String> {
        lock(&self.inner.failures).clone()
    }

    /// Every server message received so far.
    pub fn messages(&self) -> Vec<Logged> {
        lock(&self.inner.log).clone()
    }

    /// The rids of the latest `publishLayers` this client got for `track`.
    pub fn latest_publish_layers(&self, track: TrackId) -> Option<Vec<String>> {
        self.messages()
            .into_iter()
            .rev()
            .find_map(|l| match l.message {
                ServerMessage::PublishLayers { track_id, rids } if track_id == track => Some(rids),
                _ => None,
            })
    }

    /// The log position now: pass it to [`wait_for_after`](Client::wait_for_after) to wait only
    /// for messages that arrive later.
    pub fn mark(&self) -> usize {
        lock(&self.inner.log).len()
    }

    /// Server messages since `mark`.
    pub fn messages_since(&self, mark: usize) -> Vec<ServerMessage> {
        lock(&self.inner.log)
            .iter()
            .skip(mark)
            .map(|l| l.message.clone())
            .collect()
    }

    /// Waits for a message matching `pred`, looking at every message received so far first.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        self.wait_for_after(0, within, what, pred).await
    }

    /// Waits for a message matching `pred` among those at or after log position `mark`.
    pub async fn wait_for_after(
        &self,
        mark: usize,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        let deadline = tokio::time::Instant::now() + within;
        let mut rx = self.inner.log_tick.subscribe();
        let mut next = mark;
        loop {
            rx.borrow_and_update();
            {
                let log = lock(&self.inner.log);
                while next < log.len() {
                    if pred(&log[next].message) {
                        return Ok(log[next].message.clone());
                    }
                    next += 1;
                }
            }
            let closed = !self.is_connected();
            let timed_out = !closed
                && tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_err();
            if closed || timed_out {
                let seen: Vec<String> = self.messages_since(mark).iter().map(short).collect();
                bail!(
                    "{}: {} waiting for {what}; messages since mark: {seen:?}",
                    self.inner.name,
                    if closed {
                        "the socket closed".to_owned()
                    } else {
                        format!("timed out after {within:?}")
                    }
                );
            }
        }
    }

    /// Waits for an `error` with `code` at or after log position `mark`.
    pub async fn wait_for_error_after(&self, mark: usize, code: ErrorCode) -> Result<()> {
        self.wait_for_after(
            mark,
            SIGNALING_TIMEOUT,
            &format!("error {code:?}"),
            |m| matches!(m, ServerMessage::Error { code: got, .. } if *got == code),
        )
        .await
        .map(drop)
    }

    /// Waits for `bye` with `reason`.
    pub async fn wait_for_bye(&self, reason: ByeReason) -> Result<()> {
        self.wait_for(
            SIGNALING_TIMEOUT,
            &format!("bye {reason:?}"),
            |m| matches!(m, ServerMessage::Bye { reason: got } if *got == reason),
        )
        .await
        .map(drop)
    }

    /// Waits for `participantLeft` of `participant`.
    pub async fn wait_for_left(&self, participant: ParticipantId) -> Result<()> {
        self.wait_for(SIGNALING_TIMEOUT, "participantLeft", |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == participant)
        })
        .await
        .map(drop)
    }

    /// Waits until the server has closed the WebSocket.
    pub async fn wait_closed(&self, within: Duration) -> Result<()> {
        wait::poll_until(within, "the WebSocket to close", || {
            (!self.is_connected()).then_some(())
        })
        .await
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
        if let Some(publisher) = lock(&self.inner.publisher).take() {
            publisher.stop_media();
            publisher.abort_rtcp();
            let pc = Arc::clone(&publisher.pc);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = pc.close().await;
                });
            }
        }
        if let Some(peer) = lock(&self.inner.subscriber.peer).take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = peer.pc.close().await;
            });
        }
    }
}

/// A one-line description of a server message for error output (SDPs left out).
pub fn short(message: &ServerMessage) -> String {
    match message {
        ServerMessage::PublishAnswer { tracks, .. } => format!("publishAnswer {tracks:?}"),
        ServerMessage::SubscribeOffer { tracks, .. } => format!("subscribeOffer {tracks:?}"),
        ServerMessage::Joined {
            participant_id,
            participants,
            ..
        } => format!(
            "joined as {participant_id} with {:?}",
            participants.iter().map(|p| p.id).collect::<Vec<_>>()
        ),
        other => format!("{other:?}"),
    }
}

fn encoding(
    ssrc: u32,
    codec: rtc::rtp_transceiver::rtp_sender::RTCRtpCodec,
) -> RTCRtpEncodingParameters {
    RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            ssrc: Some(ssrc),
            ..Default::default()
        },
        active: true,
        codec,
        ..Default::default()
    }
}

/// A random-enough u32 without a rand dependency.
pub(crate) fn random_u32() -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    // Never 0: some stacks treat SSRC 0 as "unset".
    (h.finish() as u32).max(1)
}

/// The track the server gave `mid`, from a `publishAnswer`'s map.
fn track_of_mid(mapping: &[PublishedMid], mid: &str) -> Result<TrackId> {
    mapping
        .iter()
        .find(|m| m.mid == mid)
        .map(|m| m.track_id)
        .ok_or_else(|| anyhow!("publishAnswer maps no track to mid {mid}: {mapping:?}"))
}

async fn mid_of(transceiver: &Arc<dyn RtpTransceiver>) -> Result<String> {
    transceiver
        .mid()
        .await
        .context("reading a mid")?
        .ok_or_else(|| anyhow!("transceiver has no mid after set_local_description"))
}

async fn negotiated_pt(transceiver: &Arc<dyn RtpTransceiver>) -> Option<u8> {
    let sender = transceiver.sender().await.ok()??;
    let params = sender.get_parameters().await.ok()?;
    params.rtp_parameters.codecs.first().map(|c| c.payload_type)
}

async fn wait_connected(
    mut state: watch::Receiver<RTCPeerConnectionState>,
    what: &str,
) -> Result<()> {
    let result = wait::within(CONNECT_TIMEOUT, &format!("{what} to connect"), async {
        loop {
            let now = *state.borrow_and_update();
            match now {
                RTCPeerConnectionState::Connected => return Ok(()),
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                    bail!("{what} went {now}")
                }
                _ => {}
            }
            if state.changed().await.is_err() {
                bail!("{what} handler dropped");
            }
        }
    })
    .await;
    result?
}

/// Sends tagged packets of one kind until aborted.
async fn send_media(name: String, kind: MediaKind, publisher: Arc<Publisher>, rate: MediaRate) {
    let (track, ssrc, pt, interval, clock, mid) = match kind {
        MediaKind::Audio => (
            Arc::clone(&publisher.audio),
            publisher.audio_ssrc,
            publisher.audio_pt,
            rate.audio_interval,
            48_000u64,
            publisher.audio_mid.clone(),
        ),
        MediaKind::Video => (
            Arc::clone(&publisher.video),
            publisher.video_ssrc,
            publisher.video_pt,
            rate.video_interval,
            90_000u64,
            publisher.video_mid.clone(),
        ),
    };
    let ts_step = (clock * interval.as_micros() as u64 / 1_000_000) as u32;
    let mut seq = (random_u32() & 0x7fff) as u16;
    let mut timestamp = random_u32();
    let mut counter: u32 = 0;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let keyframe = kind == MediaKind::Video
            && (counter == 0
                || (rate.keyframe_every > 0 && counter.is_multiple_of(rate.keyframe_every))
                || (rate.keyframe_on_request
                    && publisher.want_keyframe.swap(false, Ordering::Relaxed)));
        let payload = expected_payload(&MediaTag {
            sender: name.clone(),
            kind,
            counter,
            keyframe,
            layer: None,
        });
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: kind == MediaKind::Video,
                payload_type: pt,
                sequence_number: seq,
                timestamp,
                ssrc,
                ..Default::default()
            },
            payload: payload.clone(),
        };
        // Logged before the write, so a receiver can never see a packet the log lacks.
        lock(&publisher.sent).push(SentPacket {
            kind,
            counter,
            ssrc,
            sequence_number: seq,
            timestamp,
            keyframe,
            payload,
            at: Instant::now(),
            mid: mid.clone(),
            layer: None,
        });
        if let Err(err) = track.write_rtp(packet).await {
            lock(&publisher.sent).retain(|p| !(p.kind == kind && p.counter == counter));
            publisher.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("[{name}] write_rtp {kind:?}: {err}");
        }
        seq = seq.wrapping_add(1);
        timestamp = timestamp.wrapping_add(ts_step);
        counter += 1;
    }
}

/// Counts PLI/FIR arriving on a video sender (marked for the application by
/// `peer::KeyframeRequestTap`) and asks the video sender for a keyframe: `want_keyframe`
/// for the one-encoding camera, else the requested layer of `layered`.
async fn count_keyframe_requests(
    video: Arc<TrackLocalStaticRTP>,
    requests: Arc<Mutex<Vec<KeyframeRequest>>>,
    want_keyframe: Arc<AtomicBool>,
    layered: Option<Arc<LayeredVideo>>,
) {
    while let Some(event) = video.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = event else {
            continue;
        };
        let at = Instant::now();
        for packet in packets {
            let any = packet.as_any();
            let request = if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                Some((KeyframeRequestKind::Pli, pli.media_ssrc))
            } else {
                any.downcast_ref::<FullIntraRequest>()
                    .map(|fir| (KeyframeRequestKind::Fir, fir.media_ssrc))
            };
            if let (Some(layered), Some(report)) = (&layered, any.downcast_ref::<ReceiverReport>())
            {
                for block in &report.reports {
                    layered.acknowledged(block.ssrc);
                }
            }
            if let Some((kind, media_ssrc)) = request {
                lock(&requests).push(KeyframeRequest {
                    at,
                    kind,
                    media_ssrc,
                });
                match &layered {
                    Some(layered) => {
                        layered.keyframe_requested(media_ssrc);
                    }
                    None => want_keyframe.store(true, Ordering::Relaxed),
                }
            }
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WsStream, Message>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    while let Some(out) = rx.recv().await {
        let result = match out {
            Outgoing::Text(text) => sink.send(Message::Text(text.into())).await,
            Outgoing::Close => {
                let _ = sink.send(Message::Close(None)).await;
                break;
            }
        };
        if let Err(err) = result {
            tracing::debug!("ws write: {err}");
            break;
        }
    }
}

async fn read_loop(inner: Arc<Inner>, mut stream: SplitStream<WsStream>) {
    while let Some(frame) = stream.next().await {
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) => break,
            Ok(Message::Binary(_)) => {
                inner.fail("the server sent a binary frame".to_owned());
                continue;
            }
            Ok(_) => continue,
            Err(err) => {
                tracing::debug!("[{}] ws read: {err}", inner.name);
                break;
            }
        };
        let message: ServerMessage = match serde_json::from_str(&text) {
            Ok(message) => message,
            Err(err) => {
                inner.fail(format!("unparsable server frame ({err}): {text}"));
                continue;
            }
        };
        tracing::debug!("[{}] <- {}", inner.name, short(&message));
        let len = {
            let mut log = lock(&inner.log);
            log.push(Logged {
                at: Instant::now(),
                message: message.clone(),
            });
            log.len()
        };
        inner.log_tick.send_replace(len);
        match message {
            ServerMessage::Joined { participant_id, .. } => {
                *lock(&inner.participant) = Some(participant_id);
            }
            ServerMessage::SubscribeOffer { .. } if lock(&inner.participant).is_none() => {
                // Sent before the server saw our `leave`: a client that left ignores it.
                tracing::debug!("[{}] ignoring a subscribeOffer after leave", inner.name);
            }
            ServerMessage::SubscribeOffer { sdp, tracks } => {
                if let Err(err) = answer_subscribe_offer(&inner, sdp, tracks).await {
                    if lock(&inner.participant).is_none() {
                        // `leave` closed the peer while the offer was being applied.
                        tracing::debug!("[{}] subscribeOffer raced leave: {err:#}", inner.name);
                    } else {
                        inner.fail(format!("answering subscribeOffer: {err:#}"));
                    }
                }
            }
            ServerMessage::Candidate { peer, candidate } => {
                if let Err(err) = add_remote_candidate(&inner, peer, candidate).await {
                    inner.fail(format!("adding a server candidate: {err:#}"));
                }
            }
            ServerMessage::PublishLayers { track_id, rids } => {
                // Dynacast, obeyed as chorus.js would: stop the layers not listed.
                if let Some(publisher) = inner.publisher()
                    && let Some(video) = publisher
                        .layered()
                        .into_iter()
                        .find(|v| v.track_id == track_id)
                {
                    video.set_active(&rids);
                }
                lock(&inner.publish_layers).insert(track_id, rids);
            }
            _ => {}
        }
    }
    inner.ws_open.store(false, Ordering::Relaxed);
    inner.log_tick.send_modify(|_| {});
}

async fn answer_subscribe_offer(
    inner: &Arc<Inner>,
    sdp: String,
    tracks: Vec<SubscribedMid>,
) -> Result<()> {
    let sub = &inner.subscriber;
    let existing = lock(&sub.peer).clone();
    let peer = match existing {
        Some(peer) => peer,
        None => {
            let gate = Arc::new(CandidateGate::default());
            let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
            let handler = Arc::new(PeerHandler {
                role: PeerRole::Subscriber,
                out: inner.out.clone(),
                gate: Arc::clone(&gate),
                state: state_tx,
                subscriber: Some(Arc::downgrade(sub)),
            });
            let pc = peer::build_with_audio(
                handler,
                inner.options.runtime.clone(),
                inner.transport_cc.load(Ordering::Relaxed),
                peer::AudioCaps {
                    audio_level: false,
                    ..inner.options.audio
                },
            )
            .await?;
            let peer = Arc::new(SubscriberPeer {
                pc,
                gate,
                state: state_rx,
            });
            *lock(&sub.peer) = Some(Arc::clone(&peer));
            peer
        }
    };
    *lock(&sub.mids) = tracks
        .iter()
        .map(|t| (t.mid.clone(), (t.participant_id, t.track_id)))
        .collect();
    peer.pc
        .set_remote_description(RTCSessionDescription::offer(sdp).context("subscribeOffer SDP")?)
        .await
        .context("set_remote_description(subscribeOffer)")?;
    let answer = peer.pc.create_answer(None).await.context("create_answer")?;
    peer.pc
        .set_local_description(answer.clone())
        .await
        .context("set_local_description(answer)")?;
    let sdp = peer
        .pc
        .local_description()
        .await
        .map_or(answer.sdp, |d| d.sdp);
    inner.send(&ClientMessage::SubscribeAnswer { sdp: sdp.clone() })?;
    sub.answered.fetch_add(1, Ordering::Relaxed);
    let (held, mid) = peer.gate.open(peer::first_mid(&sdp));
    for candidate in held {
        send_candidate(&inner.out, PeerRole::Subscriber, candidate, mid.clone());
    }
    Ok(())
}

async fn add_remote_candidate(
    inner: &Arc<Inner>,
    role: PeerRole,
    candidate: IceCandidate,
) -> Result<()> {
    if candidate.candidate.is_empty() {
        return Ok(());
    }
    let pc = match role {
        PeerRole::Publisher => inner.publisher().map(|p| Arc::clone(&p.pc)),
        PeerRole::Subscriber => inner.subscriber.pc(),
    };
    let Some(pc) = pc else {
        bail!("a {role:?} candidate arrived before that peer exists");
    };
    pc.add_ice_candidate(RTCIceCandidateInit {
        candidate: candidate.candidate,
        sdp_mid: candidate.sdp_mid,
        sdp_mline_index: candidate.sdp_m_line_index,
        ..Default::default()
    })
    .await
    .context("add_ice_candidate")
}

#[cfg(test)]
mod tests {
    //! The client's media and feedback paths against itself: a publisher peer connected
    //! directly to a subscriber peer, no server in between.

    use super::*;

    fn handler(
        role: PeerRole,
        out: mpsc::UnboundedSender<Outgoing>,
        gate: Arc<CandidateGate>,
        subscriber: Option<Weak<SubscriberState>>,
    ) -> (Arc<PeerHandler>, watch::Receiver<RTCPeerConnectionState>) {
        let (state, rx) = watch::channel(RTCPeerConnectionState::New);
        let handler = Arc::new(PeerHandler {
            role,
            out,
            gate,
            state,
            subscriber,
        });
        (handler, rx)
    }

    /// Hands every candidate one peer trickles to the other.
    fn forward_candidates(
        mut rx: mpsc::UnboundedReceiver<Outgoing>,
        to: Arc<dyn PeerConnection>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(Outgoing::Text(text)) = rx.recv().await {
                let Ok(ClientMessage::Candidate { candidate, .. }) = ClientMessage::parse(&text)
                else {
                    continue;
                };
                let _ = to
                    .add_ice_candidate(RTCIceCandidateInit {
                        candidate: candidate.candidate,
                        sdp_mid: candidate.sdp_mid,
                        sdp_mline_index: candidate.sdp_m_line_index,
                        ..Default::default()
                    })
                    .await;
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn media_and_keyframe_requests_flow_between_two_client_peers() -> Result<()> {
        crate::init_tracing();
        let (pub_out, pub_out_rx) = mpsc::unbounded_channel();
        let (sub_out, sub_out_rx) = mpsc::unbounded_channel();
        let pub_gate = Arc::new(CandidateGate::default());
        let sub_gate = Arc::new(CandidateGate::default());
        let subscriber = Arc::new(SubscriberState::new());

        let (pub_handler, pub_state) =
            handler(PeerRole::Publisher, pub_out, Arc::clone(&pub_gate), None);
        let (sub_handler, sub_state) = handler(
            PeerRole::Subscriber,
            sub_out,
            Arc::clone(&sub_gate),
            Some(Arc::downgrade(&subscriber)),
        );
        let pub_pc = peer::build(pub_handler).await?;
        let sub_pc = peer::build(sub_handler).await?;
        *lock(&subscriber.peer) = Some(Arc::new(SubscriberPeer {
            pc: Arc::clone(&sub_pc),
            gate: Arc::clone(&sub_gate),
            state: sub_state.clone(),
        }));
        let f1 = forward_candidates(pub_out_rx, Arc::clone(&sub_pc));
        let f2 = forward_candidates(sub_out_rx, Arc::clone(&pub_pc));

        let video_ssrc = random_u32();
        let video = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "s".to_owned(),
            "self-video".to_owned(),
            "self camera".to_owned(),
            RtpCodecKind::Video,
            vec![encoding(video_ssrc, peer::vp8_codec())],
        )));
        let tr = pub_pc
            .add_transceiver_from_track(
                Arc::clone(&video) as Arc<dyn TrackLocal>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .await?;
        let offer = pub_pc.create_offer(None).await?;
        pub_pc.set_local_description(offer).await?;
        let offer_sdp = pub_pc.local_description().await.context("offer")?.sdp;
        let mid = mid_of(&tr).await?;
        *lock(&subscriber.mids) = [(mid.clone(), (ParticipantId(1), TrackId(2)))].into();
        sub_pc
            .set_remote_description(RTCSessionDescription::offer(offer_sdp.clone())?)
            .await?;
        let answer = sub_pc.create_answer(None).await?;
        sub_pc.set_local_description(answer).await?;
        let answer_sdp = sub_pc.local_description().await.context("answer")?.sdp;
        pub_pc
            .set_remote_description(RTCSessionDescription::answer(answer_sdp.clone())?)
            .await?;
        // Candidates gathered before the gates opened go straight to the other side.
        for (gate, sdp, target) in [
            (&pub_gate, &offer_sdp, &sub_pc),
            (&sub_gate, &answer_sdp, &pub_pc),
        ] {
            let (held, _) = gate.open(peer::first_mid(sdp));
            for candidate in held {
                let _ = target
                    .add_ice_candidate(RTCIceCandidateInit {
                        candidate,
                        ..Default::default()
                    })
                    .await;
            }
        }
        wait_connected(pub_state, "publisher").await?;
        wait_connected(sub_state, "subscriber").await?;
        let pt = negotiated_pt(&tr).await.unwrap_or(VP8_PT);

        let sender = tokio::spawn({
            let video = Arc::clone(&video);
            async move {
                for counter in 0..u16::MAX {
                    let payload = expected_payload(&MediaTag {
                        sender: "self".into(),
                        kind: MediaKind::Video,
                        counter: counter.into(),
                        keyframe: counter % 10 == 0,
                        layer: None,
                    });
                    let _ = video
                        .write_rtp(rtc::rtp::Packet {
                            header: rtc::rtp::header::Header {
                                version: 2,
                                marker: true,
                                payload_type: pt,
                                sequence_number: counter,
                                timestamp: u32::from(counter) * 3000,
                                ssrc: video_ssrc,
                                ..Default::default()
                            },
                            payload,
                        })
                        .await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        let key = (ParticipantId(1), TrackId(2));
        wait::poll_until(
            Duration::from_secs(10),
            "20 packets at the subscriber",
            || (lock(&subscriber.received).get(&key).map_or(0, Vec::len) >= 20).then_some(()),
        )
        .await?;
        let got = lock(&subscriber.received)
            .get(&key)
            .cloned()
            .unwrap_or_default();
        for packet in &got {
            let tag = crate::media::parse_tag(&packet.payload).context("tag")?;
            assert_eq!(packet.payload, expected_payload(&tag));
            assert_eq!(packet.ssrc, video_ssrc);
            assert_eq!(packet.mid, mid);
        }
        assert!(crate::sequence_breaks(&got).is_empty());

        let requests = Arc::new(Mutex::new(Vec::new()));
        let want = Arc::new(AtomicBool::new(false));
        let counter = tokio::spawn(count_keyframe_requests(
            Arc::clone(&video),
            Arc::clone(&requests),
            Arc::clone(&want),
            None,
        ));
        let remote = lock(&subscriber.remotes)
            .get(&mid)
            .cloned()
            .context("remote track")?;
        remote
            .write_rtcp(vec![Box::new(PictureLossIndication {
                sender_ssrc: 1,
                media_ssrc: video_ssrc,
            })])
            .await?;
        wait::poll_until(Duration::from_secs(10), "the PLI at the publisher", || {
            (!lock(&requests).is_empty()).then_some(())
        })
        .await?;
        assert_eq!(lock(&requests)[0].media_ssrc, video_ssrc);
        assert!(want.load(Ordering::Relaxed));

        sender.abort();
        counter.abort();
        f1.abort();
        f2.abort();
        pub_pc.close().await?;
        sub_pc.close().await?;
        Ok(())
    }
}
