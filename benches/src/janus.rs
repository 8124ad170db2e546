//! `--target janus`: the same load against Janus's VideoRoom plugin (Debian's `janus` 1.1.2),
//! driven through its plain HTTP API, so that Chorus can be measured beside a real SFU in
//! the same invocation.
//!
//! - Janus is started here from the config the repo ships (`benches/janus/`, copied to a
//!   temporary folder with the HTTP port of `--janus-url` written in), unless `--janus-pid`
//!   names one already running at `--janus-url`.
//! - One Janus session holds every handle; one long-poll loop (`GET /janus/SESSION`) hands
//!   each event to the request that waits for its transaction.
//! - Per room: one handle creates the room. Each publisher attaches a handle, `join`s as a
//!   publisher with its own feed id, then `configure`s with its offer (audio and video,
//!   sendonly) and applies Janus's answer. Each receiver (every subscriber, and every
//!   publisher when a room has more than one) attaches a handle and `join`s as a subscriber
//!   to every feed it receives; Janus offers, the receiver answers with `start`. Candidates
//!   trickle to Janus as the peer finds them; Janus puts its own in its SDP.
//! - The peers are the simulated browsers' peer connections (`chorus_tests::peer`, async
//!   `webrtc`), on the same socket-timestamping runtime as the Chorus run, with the same
//!   sender tasks and stamps, and the same accounting.
//! - CPU is the janus process's (`/proc/PID/stat`). Janus keeps no forwarded-packet count
//!   of its own that the HTTP API shows, so its CPU per packet divides by the distinct
//!   measured packets the receivers counted (for Chorus, with no loss, the two counts are
//!   the same).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::StreamExt;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState,
};

use crate::direct::{Counting, count_track};
use crate::load::{
    MEASURED, Progress, STOP, Sink, Snapshot, Video, WARMUP, apply_window, spawn_publisher,
};
use crate::options::{Options, Roster};
use crate::procfs;
use crate::report::{Collected, Memory, RunReport};
use crate::stats::{Percentiles, ReceiverStats, SendTally};
use crate::wire::{WireLinks, WireLog, wire_runtime};

/// How long joining and negotiating everyone may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one API request may wait for its asynchronous event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long Janus may take to start answering HTTP.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Events fetched per long poll.
const MAX_EVENTS: usize = 50;
/// Quiet time after everyone is connected, before reading idle memory.
const SETTLE: Duration = Duration::from_secs(1);
/// The first room number (rooms are `ROOM_BASE + r`).
const ROOM_BASE: u64 = 1000;

/// The shipped config folder (`benches/janus`).
pub fn default_config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("janus")
}

/// The `janus` binary: `--janus-bin`, else `$JANUS_BIN`, else `janus` on the `PATH`.
pub fn janus_bin(opts: &Options) -> Option<PathBuf> {
    if let Some(bin) = &opts.janus_bin {
        return Some(bin.clone());
    }
    if let Some(bin) = std::env::var_os("JANUS_BIN") {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("janus"))
        .find(|p| p.is_file())
}

/// `http://IP:PORT/PATH` → (address, base path).
fn parse_janus_url(url: &str) -> Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--janus-url must start with http:// (got {url:?})"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, "janus"));
    let addr = host
        .parse()
        .with_context(|| format!("--janus-url needs an IP:port address (got {host:?})"))?;
    Ok((addr, format!("/{}", path.trim_end_matches('/'))))
}

/// One HTTP/1.1 request to Janus (which answers with a Content-Length and closes).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let raw = tokio::time::timeout(timeout, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    })
    .await
    .with_context(|| format!("{method} {path}: no answer in {timeout:?}"))??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {path}: no end of HTTP headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        bail!("{method} {path}: HTTP {status}");
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body).with_context(|| format!("{method} {path}: chunked body"))?
    } else {
        body.to_vec()
    };
    serde_json::from_slice(&body).with_context(|| format!("{method} {path}: JSON"))
}

/// The payload of an HTTP/1.1 chunked body.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("no chunk size line"))?;
        let size_text = std::str::from_utf8(&body[..end])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("chunk size {size_text:?}"))?;
        body = &body[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or_else(|| anyhow!("short chunk"))?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

/// The interface Janus gathers its candidates on (`ice_enforce_list` in janus.jcfg).
const JANUS_INTERFACE: &str = "chorus-janus0";
/// Its address: RFC 2544's benchmarking range, local to the network namespace.
const JANUS_ADDRESS: &str = "198.18.0.1/32";
/// The simulated browsers' address towards Janus, on the same interface: Janus's ICE agent
/// (libnice) refuses the browsers' loopback candidates.
const CLIENT_ADDRESS: &str = "198.18.0.2/32";

/// Makes sure Janus has an interface to gather candidates on. Janus skips loopback
/// interfaces when it gathers, so in a network namespace that has only loopback (the test
/// suite's, or `unshare --net`) this adds a veth pair with [`JANUS_ADDRESS`] on one end:
/// traffic to it stays inside the namespace like loopback traffic. Anywhere else it refuses
/// rather than touch a real machine's network.
fn ensure_janus_interface() -> Result<()> {
    // /proc/self/net is this network namespace's (/sys/class/net may be another's).
    let dev =
        std::fs::read_to_string("/proc/self/net/dev").context("reading /proc/self/net/dev")?;
    let interfaces: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_owned()))
        .collect();
    if interfaces.iter().any(|i| i == JANUS_INTERFACE) {
        return Ok(());
    }
    if interfaces.iter().any(|i| i != "lo") {
        bail!(
            "Janus gathers no ICE candidates on loopback, and this network namespace has other \
             interfaces ({}), so chorus-loadtest will not add {JANUS_INTERFACE} here: run it in \
             a namespace of its own, e.g. unshare --net sh -c 'ip link set lo up && \
             chorus-loadtest --target janus ...'",
            interfaces.join(", ")
        );
    }
    let peer = "chorus-janus1";
    for args in [
        vec![
            "link",
            "add",
            JANUS_INTERFACE,
            "type",
            "veth",
            "peer",
            "name",
            peer,
        ],
        vec!["addr", "add", JANUS_ADDRESS, "dev", JANUS_INTERFACE],
        vec!["addr", "add", CLIENT_ADDRESS, "dev", JANUS_INTERFACE],
        vec!["link", "set", JANUS_INTERFACE, "up"],
        vec!["link", "set", peer, "up"],
    ] {
        let status = std::process::Command::new("ip")
            .args(&args)
            .status()
            .context("running ip (iproute2)")?;
        anyhow::ensure!(
            status.success(),
            "ip {} failed ({status}); Janus needs a non-loopback interface in the namespace",
            args.join(" ")
        );
    }
    Ok(())
}

/// A Janus started here: killed when dropped.
struct JanusProcess {
    child: tokio::process::Child,
    /// Holds the config copy and the log.
    dir: PathBuf,
}

impl Drop for JanusProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl JanusProcess {
    /// Copies the config folder, writes the HTTP port in, and starts Janus with it.
    fn start(bin: &Path, config: &Path, http: SocketAddr) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "chorus-janus-{}-{}",
            std::process::id(),
            http.port()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for entry in std::fs::read_dir(config)
            .with_context(|| format!("reading the Janus config folder {}", config.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            if !name.to_string_lossy().ends_with(".jcfg") {
                continue;
            }
            let mut text = std::fs::read_to_string(entry.path())?;
            if name == "janus.transport.http.jcfg" {
                text = text.replace("port = 8088", &format!("port = {}", http.port()));
            }
            std::fs::write(dir.join(&name), text)?;
        }
        let log = std::fs::File::create(dir.join("janus.log"))?;
        let child = tokio::process::Command::new(bin)
            .arg("-C")
            .arg(dir.join("janus.jcfg"))
            .arg("-F")
            .arg(&dir)
            .arg("--disable-colors")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { child, dir })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("janus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Waiters for the events of outstanding transactions.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// One Janus session and its long-poll loop.
struct Session {
    addr: SocketAddr,
    base: String,
    id: u64,
    waiters: Waiters,
    next: AtomicU64,
    poller: JoinHandle<()>,
    /// Events Janus sent that nobody waited for and that say something went wrong
    /// (`hangup`, plugin errors), for the error message if setup fails.
    trouble: Arc<Mutex<Vec<String>>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Session {
    async fn create(addr: SocketAddr, base: &str) -> Result<Self> {
        let reply = http(
            addr,
            "POST",
            base,
            Some(&json!({"janus": "create", "transaction": "session"})),
            Duration::from_secs(5),
        )
        .await?;
        let id = reply["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("Janus create: {reply}"))?;
        let waiters: Waiters = Arc::default();
        let trouble: Arc<Mutex<Vec<String>>> = Arc::default();
        let poller = tokio::spawn(poll_events(
            addr,
            format!("{base}/{id}?maxev={MAX_EVENTS}"),
            Arc::clone(&waiters),
            Arc::clone(&trouble),
        ));
        Ok(Self {
            addr,
            base: base.to_owned(),
            id,
            waiters,
            next: AtomicU64::new(1),
            poller,
            trouble,
        })
    }

    fn transaction(&self) -> String {
        format!("t{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// A request answered synchronously (create, attach, trickle, synchronous plugin
    /// requests).
    async fn call(&self, path: &str, mut body: Value) -> Result<Value> {
        body["transaction"] = json!(self.transaction());
        let reply = http(
            self.addr,
            "POST",
            path,
            Some(&body),
            Duration::from_secs(10),
        )
        .await?;
        if reply["janus"] == "error" {
            bail!("Janus: {}", reply["error"]);
        }
        Ok(reply)
    }

    async fn attach(&self) -> Result<u64> {
        let reply = self
            .call(
                &format!("{}/{}", self.base, self.id),
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
            )
            .await?;
        reply["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("attach: {reply}"))
    }

    fn handle_path(&self, handle: u64) -> String {
        format!("{}/{}/{handle}", self.base, self.id)
    }

    /// A plugin request answered synchronously (`create`).
    async fn sync_message(&self, handle: u64, body: Value) -> Result<Value> {
        let reply = self
            .call(
                &self.handle_path(handle),
                json!({"janus": "message", "body": body}),
            )
            .await?;
        let data = reply["plugindata"]["data"].clone();
        if data["videoroom"] == "event" && data.get("error").is_some() {
            bail!("VideoRoom: {}", data["error"]);
        }
        Ok(data)
    }

    /// A plugin request answered by an event (`join`, `configure`, `start`): the event.
    async fn async_message(&self, handle: u64, body: Value, jsep: Option<Value>) -> Result<Value> {
        let transaction = self.transaction();
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(transaction.clone(), tx);
        let mut request = json!({"janus": "message", "body": body, "transaction": transaction});
        if let Some(jsep) = jsep {
            request["jsep"] = jsep;
        }
        let reply = http(
            self.addr,
            "POST",
            &self.handle_path(handle),
            Some(&request),
            Duration::from_secs(10),
        )
        .await?;
        if reply["janus"] != "ack" {
            lock(&self.waiters).remove(&transaction);
            bail!("Janus did not ack {}: {reply}", request["body"]);
        }
        let event = tokio::time::timeout(EVENT_TIMEOUT, rx)
            .await
            .with_context(|| format!("no event for {} in {EVENT_TIMEOUT:?}", request["body"]))?
            .context("the event loop ended")?;
        let data = &event["plugindata"]["data"];
        if data.get("error").is_some() {
            bail!("VideoRoom: {} (for {})", data["error"], request["body"]);
        }
        Ok(event)
    }

    /// Sends one local candidate of a handle's peer connection (`None`: gathering done).
    async fn trickle(&self, handle: u64, candidate: Option<RTCIceCandidateInit>) -> Result<()> {
        let candidate = match candidate {
            Some(c) => json!({
                "candidate": c.candidate,
                "sdpMid": c.sdp_mid,
                "sdpMLineIndex": c.sdp_mline_index,
            }),
            None => json!({"completed": true}),
        };
        self.call(
            &self.handle_path(handle),
            json!({"janus": "trickle", "candidate": candidate}),
        )
        .await?;
        Ok(())
    }

    fn trouble(&self) -> String {
        lock(&self.trouble).join("; ")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The session's long-poll loop: hands each event to the waiter of its transaction.
async fn poll_events(
    addr: SocketAddr,
    path: String,
    waiters: Waiters,
    trouble: Arc<Mutex<Vec<String>>>,
) {
    loop {
        // Janus answers an idle long poll after 30 s with a keepalive.
        let events = match http(addr, "GET", &path, None, Duration::from_secs(40)).await {
            Ok(Value::Array(events)) => events,
            Ok(one) => vec![one],
            Err(err) => {
                tracing::debug!("Janus long poll: {err:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for event in events {
            let waiter = event["transaction"]
                .as_str()
                .and_then(|t| lock(&waiters).remove(t));
            match waiter {
                Some(waiter) => {
                    let _ = waiter.send(event);
                }
                None => {
                    if event["janus"] == "hangup"
                        || event["plugindata"]["data"]["error"].is_string()
                    {
                        lock(&trouble).push(event.to_string());
                    }
                }
            }
        }
    }
}

/// A peer connection's events: candidates to trickle, state, and (receivers) packets.
struct Handler {
    candidates: mpsc::UnboundedSender<Option<RTCIceCandidateInit>>,
    state: watch::Sender<RTCPeerConnectionState>,
    counting: Option<Counting>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.candidates.send(Some(init));
        }
    }

    async fn on_ice_gathering_state_change(
        &self,
        state: webrtc::peer_connection::RTCIceGatheringState,
    ) {
        if state == webrtc::peer_connection::RTCIceGatheringState::Complete {
            let _ = self.candidates.send(None);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(counting) = self.counting.clone() {
            count_track(track, counting);
        }
    }
}

/// One participant's peer connection towards Janus.
struct Peer {
    pc: Arc<dyn PeerConnection>,
    handle: u64,
    state: watch::Receiver<RTCPeerConnectionState>,
    trickler: JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.trickler.abort();
    }
}

async fn new_peer(
    session: &Arc<Session>,
    log: &Arc<WireLog>,
    counting: Option<Counting>,
) -> Result<(
    Arc<dyn PeerConnection>,
    u64,
    watch::Receiver<RTCPeerConnectionState>,
    Trickle,
)> {
    let (candidates, candidates_rx) = mpsc::unbounded_channel();
    let (state, state_rx) = watch::channel(RTCPeerConnectionState::New);
    let handler = Arc::new(Handler {
        candidates,
        state,
        counting,
    });
    let bind = format!("{}:0", CLIENT_ADDRESS.trim_end_matches("/32"));
    let pc = chorus_tests::peer::build_bound(
        handler,
        Some(wire_runtime(Arc::clone(log))),
        true,
        chorus_tests::peer::AudioCaps::default(),
        &bind,
    )
    .await?;
    let handle = session.attach().await?;
    Ok((pc, handle, state_rx, Trickle(candidates_rx)))
}

/// A peer's candidates, to be sent once Janus has its SDP.
struct Trickle(mpsc::UnboundedReceiver<Option<RTCIceCandidateInit>>);

impl Trickle {
    fn start(self, session: &Arc<Session>, handle: u64) -> JoinHandle<()> {
        let session = Arc::clone(session);
        let mut rx = self.0;
        tokio::spawn(async move {
            while let Some(candidate) = rx.recv().await {
                let done = candidate.is_none();
                tracing::debug!("trickle to Janus handle {handle}: {candidate:?}");
                if let Err(err) = session.trickle(handle, candidate).await {
                    tracing::warn!("trickle to Janus: {err:#}");
                }
                if done {
                    break;
                }
            }
        })
    }
}

fn jsep(sdp: &RTCSessionDescription, kind: &str) -> Value {
    json!({"type": kind, "sdp": sdp.sdp})
}

fn local_track(
    id: &str,
    kind: RtpCodecKind,
    ssrc: u32,
    codec: RTCRtpCodec,
) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        format!("{id}-stream"),
        format!("{id}-{kind}"),
        format!("{id} {kind}"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            active: true,
            codec,
            ..Default::default()
        }],
    )))
}

/// A publisher: its peer, its feed id, and its two tracks with their SSRCs.
struct Publisher {
    participant: usize,
    feed: u64,
    peer: Peer,
    audio: (Arc<TrackLocalStaticRTP>, u32),
    video: (Arc<TrackLocalStaticRTP>, u32),
    took: Duration,
}

async fn join_publisher(
    session: &Arc<Session>,
    roster: Roster,
    participant: usize,
    log: &Arc<WireLog>,
) -> Result<Publisher> {
    let start = Instant::now();
    let (room, i) = roster.locate(participant);
    let publisher = roster
        .publisher_of(participant)
        .ok_or_else(|| anyhow!("participant {participant} does not publish"))?;
    let feed = u64::from(publisher) + 1;
    let (pc, handle, state, trickle) = new_peer(session, log, None).await?;
    let base = 0x2000_0000 + (participant as u32) * 2;
    let audio = (
        local_track(
            &format!("p{participant}"),
            RtpCodecKind::Audio,
            base,
            chorus_tests::peer::opus_codec(),
        ),
        base,
    );
    let video = (
        local_track(
            &format!("p{participant}"),
            RtpCodecKind::Video,
            base + 1,
            chorus_tests::peer::vp8_codec(),
        ),
        base + 1,
    );
    for track in [&audio.0, &video.0] {
        pc.add_transceiver_from_track(
            Arc::clone(track) as Arc<dyn TrackLocal>,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![format!("p{participant}-stream")],
                send_encodings: vec![],
            }),
        )
        .await?;
    }
    session
        .async_message(
            handle,
            json!({
                "request": "join", "ptype": "publisher", "room": ROOM_BASE + room as u64,
                "id": feed, "display": format!("r{room}-pub{i}"),
            }),
            None,
        )
        .await
        .with_context(|| format!("publisher {participant} joining"))?;
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer.clone()).await?;
    let event = session
        .async_message(
            handle,
            json!({"request": "configure", "audio": true, "video": true}),
            Some(jsep(&offer, "offer")),
        )
        .await
        .with_context(|| format!("publisher {participant} configuring"))?;
    let answer = event["jsep"]["sdp"]
        .as_str()
        .ok_or_else(|| anyhow!("no answer from Janus: {event}"))?;
    tracing::debug!("Janus answer to publisher {participant}: {answer}");
    pc.set_remote_description(RTCSessionDescription::answer(answer.to_owned())?)
        .await?;
    let trickler = trickle.start(session, handle);
    Ok(Publisher {
        participant,
        feed,
        peer: Peer {
            pc,
            handle,
            state,
            trickler,
        },
        audio,
        video,
        took: start.elapsed(),
    })
}

/// A receiver: its subscriber peer and what it counts.
struct Receiver {
    participant: usize,
    peer: Peer,
    stats: Arc<tokio::sync::Mutex<ReceiverStats>>,
    took: Duration,
}

async fn join_receiver(
    session: &Arc<Session>,
    roster: Roster,
    participant: usize,
    feeds: &HashMap<u32, u64>,
    log: &Arc<WireLog>,
    counting: Counting,
) -> Result<Receiver> {
    let start = Instant::now();
    let (room, _) = roster.locate(participant);
    let stats = Arc::clone(&counting.stats);
    let (pc, handle, state, trickle) = new_peer(session, log, Some(counting)).await?;
    let streams: Vec<Value> = roster
        .sources_of(participant)
        .iter()
        .map(|p| json!({"feed": feeds.get(p).copied().unwrap_or_default()}))
        .collect();
    let event = session
        .async_message(
            handle,
            json!({
                "request": "join", "ptype": "subscriber", "room": ROOM_BASE + room as u64,
                "streams": streams,
            }),
            None,
        )
        .await
        .with_context(|| format!("receiver {participant} subscribing"))?;
    let offer = event["jsep"]["sdp"]
        .as_str()
        .ok_or_else(|| anyhow!("no offer from Janus: {event}"))?;
    pc.set_remote_description(RTCSessionDescription::offer(offer.to_owned())?)
        .await?;
    let answer = pc.create_answer(None).await?;
    pc.set_local_description(answer.clone()).await?;
    session
        .async_message(
            handle,
            json!({"request": "start"}),
            Some(jsep(&answer, "answer")),
        )
        .await
        .with_context(|| format!("receiver {participant} starting"))?;
    let trickler = trickle.start(session, handle);
    Ok(Receiver {
        participant,
        peer: Peer {
            pc,
            handle,
            state,
            trickler,
        },
        stats,
        took: start.elapsed(),
    })
}

async fn wait_connected(peers: &[&Peer], session: &Session) -> Result<()> {
    chorus_tests::wait::poll_until(SETUP_TIMEOUT, "every Janus peer to connect", || {
        peers
            .iter()
            .all(|p| *p.state.borrow() == RTCPeerConnectionState::Connected)
            .then_some(())
    })
    .await
    .with_context(|| {
        let states: Vec<String> = peers
            .iter()
            .map(|p| format!("{}:{:?}", p.handle, *p.state.borrow()))
            .filter(|s| !s.ends_with(":Connected"))
            .collect();
        format!(
            "not connected: {}; Janus said: {}",
            states.join(" "),
            session.trouble()
        )
    })
}

/// Runs the scenario against Janus.
pub(crate) async fn run(opts: &Options, progress: &Progress) -> Result<RunReport> {
    anyhow::ensure!(
        !opts.simulcast && !opts.red && !opts.light,
        "--target janus sends one encoding of plain Opus and VP8 to full simulated browsers: \
         not with --simulcast, --red or --light"
    );
    let roster = opts.roster();
    let shape = opts.shape();
    let (addr, base) = parse_janus_url(&opts.janus_url)?;
    let (process, pid) = match opts.janus_pid {
        Some(pid) => (None, pid),
        None => {
            let bin = janus_bin(opts).ok_or_else(|| {
                anyhow!("no janus binary (apt-get install janus, or pass --janus-bin)")
            })?;
            let config = opts.janus_config.clone().unwrap_or_else(default_config_dir);
            ensure_janus_interface()?;
            progress.say(&format!(
                "starting {} with {} on {addr}",
                bin.display(),
                config.display()
            ));
            let process = JanusProcess::start(&bin, &config, addr)?;
            let pid = process
                .pid()
                .ok_or_else(|| anyhow!("janus exited at once"))?;
            (Some(process), pid)
        }
    };
    let info = format!("{base}/info");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match http(addr, "GET", &info, None, Duration::from_secs(2)).await {
            Ok(v) if v["janus"] == "server_info" => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(v) => bail!("Janus info: {v}"),
            Err(err) => {
                let tail = process
                    .as_ref()
                    .map(JanusProcess::log_tail)
                    .unwrap_or_default();
                return Err(err.context(format!("Janus did not start; its log ends:\n{tail}")));
            }
        }
    }
    if let Some(cpu) = opts.pin_forwarder {
        procfs::set_process_affinity(pid, &[cpu])?;
    }
    let empty_rss = procfs::rss_kib(pid).ok();

    let session = Arc::new(Session::create(addr, &base).await?);
    let admin = session.attach().await?;
    for room in 0..roster.rooms {
        session
            .sync_message(
                admin,
                json!({
                    "request": "create", "room": ROOM_BASE + room as u64,
                    "publishers": roster.publishers.max(1), "audiocodec": "opus",
                    "videocodec": "vp8", "bitrate": 0, "fir_freq": 0,
                    "notify_joining": false, "permanent": false,
                }),
            )
            .await
            .with_context(|| format!("creating room {room}"))?;
    }

    // Publishers first, then receivers (they subscribe to the publishers' feeds).
    let logs: Vec<Arc<WireLog>> = (0..roster.participants()).map(|_| WireLog::new()).collect();
    let who: Vec<usize> = (0..roster.participants())
        .filter(|p| roster.publisher_of(*p).is_some())
        .collect();
    progress.say(&format!("joining {} publishers to Janus", who.len()));
    let results: Vec<Result<Publisher>> = futures_util::stream::iter(who)
        .map(|p| join_publisher(&session, roster, p, &logs[p]))
        .buffer_unordered(opts.join_concurrency.max(1))
        .collect()
        .await;
    let mut publishers = Vec::new();
    for r in results {
        publishers.push(r.with_context(|| session.trouble())?);
    }
    publishers.sort_by_key(|p| p.participant);
    wait_connected(
        &publishers.iter().map(|p| &p.peer).collect::<Vec<_>>(),
        &session,
    )
    .await?;
    let feeds: HashMap<u32, u64> = publishers
        .iter()
        .filter_map(|p| Some((roster.publisher_of(p.participant)?, p.feed)))
        .collect();
    let mut by_publisher: Vec<(u32, Arc<WireLog>)> = publishers
        .iter()
        .filter_map(|p| {
            Some((
                roster.publisher_of(p.participant)?,
                Arc::clone(&logs[p.participant]),
            ))
        })
        .collect();
    by_publisher.sort_by_key(|(p, _)| *p);
    let publisher_logs: Arc<[Arc<WireLog>]> = by_publisher.into_iter().map(|(_, l)| l).collect();

    let seen = Arc::new(AtomicU64::new(0));
    let who: Vec<usize> = (0..roster.participants())
        .filter(|p| roster.receives(*p))
        .collect();
    progress.say(&format!("joining {} receivers to Janus", who.len()));
    let results: Vec<Result<Receiver>> = futures_util::stream::iter(who)
        .map(|p| {
            let counting = Counting {
                stats: Arc::default(),
                wire: WireLinks {
                    own: Arc::clone(&logs[p]),
                    publishers: Arc::clone(&publisher_logs),
                },
                seen: Some(Arc::clone(&seen)),
            };
            join_receiver(&session, roster, p, &feeds, &logs[p], counting)
        })
        .buffer_unordered(opts.join_concurrency.max(1))
        .collect()
        .await;
    let mut receivers = Vec::new();
    for r in results {
        receivers.push(r.with_context(|| session.trouble())?);
    }
    receivers.sort_by_key(|r| r.participant);
    progress.say("waiting until every Janus subscription is connected");
    wait_connected(
        &receivers.iter().map(|r| &r.peer).collect::<Vec<_>>(),
        &session,
    )
    .await?;
    tokio::time::sleep(SETTLE).await;
    let idle_rss = procfs::rss_kib(pid).ok();
    let mut join_ms: Vec<f64> = publishers
        .iter()
        .map(|p| p.took.as_secs_f64() * 1e3)
        .collect();
    join_ms.extend(receivers.iter().map(|r| r.took.as_secs_f64() * 1e3));

    let switch = Arc::new(AtomicU8::new(WARMUP));
    let tallies: Vec<[Arc<SendTally>; 2]> = (0..roster.publishers_total())
        .map(|_| [Arc::default(), Arc::default()])
        .collect();
    let mut senders = Vec::new();
    for p in &publishers {
        let Some(publisher) = roster.publisher_of(p.participant) else {
            continue;
        };
        let sink = |(track, ssrc): &(Arc<TrackLocalStaticRTP>, u32), payload_type| Sink::Track {
            track: Arc::clone(track),
            ssrc: *ssrc,
            payload_type,
        };
        senders.extend(spawn_publisher(
            Video::One(sink(&p.video, chorus_tests::peer::VP8_PT)),
            Some(sink(&p.audio, chorus_tests::peer::OPUS_PT)),
            shape,
            publisher,
            &switch,
            &tallies[publisher as usize],
        ));
    }
    let progress_task = progress.spawn(
        "janus",
        Arc::clone(&switch),
        crate::load::sent_total(&tallies),
        {
            let seen = Arc::clone(&seen);
            move || seen.load(Ordering::Relaxed)
        },
        move || procfs::process_cpu(pid).ok(),
    );
    tokio::time::sleep(opts.warmup()).await;
    switch.store(MEASURED, Ordering::Relaxed);
    let a = Snapshot::take(procfs::process_cpu(pid).ok(), None);
    tokio::time::sleep(opts.duration()).await;
    let b = Snapshot::take(procfs::process_cpu(pid).ok(), None);
    switch.store(STOP, Ordering::Relaxed);
    let loaded_rss = procfs::rss_kib(pid).ok();
    if let Some(task) = progress_task {
        let _ = task.await;
    }
    for task in senders {
        let _ = task.await;
    }
    tokio::time::sleep(opts.drain()).await;
    let mut per_participant: Vec<Option<ReceiverStats>> = vec![None; roster.participants()];
    for r in &receivers {
        per_participant[r.participant] = Some(r.stats.lock().await.clone());
    }
    let mut report = Collected {
        roster,
        shape,
        tallies: &tallies,
        receivers: per_participant,
        window: b.at.duration_since(a.at),
    }
    .into_report("janus");
    apply_window(&mut report, &a, &b);
    if let (Some(c0), Some(c1)) = (a.forwarder_cpu, b.forwarder_cpu) {
        // No count of Janus's own: the distinct measured packets the receivers counted.
        report.set_cpu(c1.saturating_sub(c0), report.received_packets);
    }
    report.join_ms = Some(Percentiles::from_millis(&join_ms));
    report.memory = Memory::from_samples(empty_rss, idle_rss, loaded_rss, roster.participants());

    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for p in publishers
            .iter()
            .map(|p| &p.peer)
            .chain(receivers.iter().map(|r| &r.peer))
        {
            let _ = p.pc.close().await;
        }
    })
    .await;
    drop(publishers);
    drop(receivers);
    drop(session);
    drop(process);
    Ok(report)
}
