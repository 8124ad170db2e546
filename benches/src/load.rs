//! What both targets share: the publishers' sender tasks, the phase switch, the live
//! progress line and the snapshots that bound the measured window.

use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::BytesMut;
use chorus_protocol::MediaKind;
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::Marshal;
use rtc::srtp::context::Context;
use tokio::task::JoinHandle;
use webrtc::runtime::AsyncUdpSocket as _;

use crate::media::{
    FramePart, LAYER_SIZES, MediaShape, Phase, SINGLE_SIZE, Stamp, fill, nanos_at, write_stamp,
    write_vp8_prefix,
};
use crate::procfs;
use crate::stats::SendTally;
use crate::wire::WireSocket;

/// Values of the shared phase switch.
pub(crate) const WARMUP: u8 = 0;
pub(crate) const MEASURED: u8 = 1;
pub(crate) const STOP: u8 = 2;

/// Where a publisher's packets go.
pub(crate) enum Sink {
    /// A real WebRTC publisher peer (async `webrtc` crate).
    Peer(chorus_tests::RtpWriter),
    /// Plain UDP with an SRTP context, for the baseline.
    Srtp(SrtpSender),
    /// One simulcast layer of a real WebRTC publisher's camera (`--simulcast`).
    Layer(chorus_tests::layered::LayerWriter),
    /// A local track of a bare async `webrtc` peer connection (the `--calibrate` run).
    Track {
        track: std::sync::Arc<webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP>,
        ssrc: u32,
        payload_type: u8,
    },
}

/// Sends SRTP on a UDP socket to one address.
pub(crate) struct SrtpSender {
    /// Records its sends, like the peer connections' sockets.
    pub socket: Arc<WireSocket>,
    pub to: SocketAddr,
    pub context: Context,
    pub ssrc: u32,
    pub payload_type: u8,
}

impl Sink {
    fn ssrc(&self) -> u32 {
        match self {
            Sink::Peer(w) => w.ssrc,
            Sink::Layer(w) => w.ssrc(),
            Sink::Srtp(s) => s.ssrc,
            Sink::Track { ssrc, .. } => *ssrc,
        }
    }

    fn payload_type(&self) -> u8 {
        match self {
            Sink::Peer(w) => w.payload_type,
            Sink::Layer(w) => w.payload_type(),
            Sink::Srtp(s) => s.payload_type,
            Sink::Track { payload_type, .. } => *payload_type,
        }
    }

    async fn send(&mut self, packet: Packet) -> Result<()> {
        match self {
            Sink::Peer(w) => w.write_rtp(packet).await,
            Sink::Layer(w) => w.write_rtp(packet).await,
            Sink::Track { track, .. } => {
                use webrtc::media_stream::track_local::TrackLocal as _;
                track.write_rtp(packet).await.context("write_rtp")
            }
            Sink::Srtp(s) => {
                let raw = packet.marshal().context("marshal")?;
                let protected = s
                    .context
                    .encrypt_rtp_with_header(&raw, &packet.header)
                    .context("SRTP protect")?;
                s.socket
                    .send_to(&protected, s.to)
                    .await
                    .context("udp send")?;
                Ok(())
            }
        }
    }

    /// Whether the next frame must be a keyframe besides the first one: a PLI/FIR reached a
    /// real publisher, or a simulcast layer (re)starts. The baseline and the calibration
    /// run forward every packet, so they never ask.
    fn take_keyframe_request(&self) -> bool {
        match self {
            Sink::Peer(w) => w.take_keyframe_request(),
            Sink::Layer(w) => w.take_keyframe_due(),
            Sink::Srtp(_) | Sink::Track { .. } => false,
        }
    }

    /// Dynacast: whether the server wants this stream now (always, but for simulcast layers).
    fn is_active(&self) -> bool {
        match self {
            Sink::Layer(w) => w.is_active(),
            _ => true,
        }
    }
}

fn phase_of(switch: &AtomicU8) -> Option<Phase> {
    match switch.load(Ordering::Relaxed) {
        WARMUP => Some(Phase::Warmup),
        MEASURED => Some(Phase::Measured),
        _ => None,
    }
}

/// A random-enough u32 for initial sequence numbers and timestamps.
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() as u32
}

/// Sends one publisher's video as one encoding: a burst of packets per frame, until the
/// switch says stop. The first frame is a VP8 key frame, and so is the frame after each
/// keyframe request.
pub(crate) async fn send_video(
    mut sink: Sink,
    shape: MediaShape,
    publisher: u32,
    switch: Arc<AtomicU8>,
    tally: Arc<SendTally>,
) {
    let sizes = shape.frame_packets();
    let (width, height) = SINGLE_SIZE;
    let mut seq = random_u32() as u16;
    let mut ts = random_u32();
    let mut counter = 0u64;
    let mut first = true;
    let mut ticker = tokio::time::interval(shape.frame_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let keyframe = sink.take_keyframe_request() || std::mem::take(&mut first);
        for (i, &size) in sizes.iter().enumerate() {
            let Some(phase) = phase_of(&switch) else {
                return;
            };
            let part = match (i, keyframe) {
                (0, true) => FramePart::KeyStart { width, height },
                (0, false) => FramePart::InterStart,
                _ => FramePart::Continued,
            };
            let packet = stamped_packet(
                &sink,
                Stamped {
                    kind: MediaKind::Video,
                    publisher,
                    phase,
                    counter,
                    size,
                    part: Some(part),
                    layer: None,
                },
                (seq, ts, i + 1 == sizes.len()),
            );
            match sink.send(packet).await {
                Ok(()) => {
                    tally.record(phase);
                    tally.note_counter(phase, counter);
                }
                Err(err) => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("video send: {err:#}");
                }
            }
            seq = seq.wrapping_add(1);
            counter += 1;
        }
        ts = ts.wrapping_add(shape.video_ts_step());
    }
}

/// One simulcast layer's RTP stream state in [`send_layers`].
struct LayerStream {
    sink: Sink,
    sizes: Vec<usize>,
    size: (u16, u16),
    seq: u16,
    ts_base: u32,
    counter: u64,
}

/// Sends one publisher's video as simulcast layers (`--simulcast`): each frame tick, a burst
/// on every layer the server wants (dynacast), lowest first, as a browser's encoders
/// deliver them. Each layer is its own RTP stream (SSRC, sequence numbers, timestamp origin,
/// packet counter); its first frame, its first frame after dynacast turned it back on and
/// the frame after a keyframe request for it are VP8 key frames announcing its size.
pub(crate) async fn send_layers(
    layers: Vec<Sink>,
    shape: MediaShape,
    publisher: u32,
    switch: Arc<AtomicU8>,
    tally: Arc<SendTally>,
) {
    let mut streams: Vec<LayerStream> = layers
        .into_iter()
        .enumerate()
        .map(|(index, sink)| LayerStream {
            sink,
            sizes: shape.layer_frame_packets(index),
            size: LAYER_SIZES[index.min(LAYER_SIZES.len() - 1)],
            seq: random_u32() as u16,
            ts_base: random_u32(),
            counter: 0,
        })
        .collect();
    let mut frame = 0u32;
    let mut ticker = tokio::time::interval(shape.frame_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for (index, stream) in streams.iter_mut().enumerate() {
            if !stream.sink.is_active() {
                continue;
            }
            // The capture clock runs on while a layer is paused, as a camera's does.
            let ts = stream
                .ts_base
                .wrapping_add(frame.wrapping_mul(shape.video_ts_step()));
            let keyframe = stream.sink.take_keyframe_request();
            let layer = index as u8;
            for (i, &size) in stream.sizes.iter().enumerate() {
                let Some(phase) = phase_of(&switch) else {
                    return;
                };
                let part = match (i, keyframe) {
                    (0, true) => FramePart::KeyStart {
                        width: stream.size.0,
                        height: stream.size.1,
                    },
                    (0, false) => FramePart::InterStart,
                    _ => FramePart::Continued,
                };
                let packet = stamped_packet(
                    &stream.sink,
                    Stamped {
                        kind: MediaKind::Video,
                        publisher,
                        phase,
                        counter: stream.counter,
                        size,
                        part: Some(part),
                        layer: Some(layer),
                    },
                    (stream.seq, ts, i + 1 == stream.sizes.len()),
                );
                match stream.sink.send(packet).await {
                    Ok(()) => tally.record_layer(phase, layer),
                    Err(err) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("video layer {layer} send: {err:#}");
                    }
                }
                stream.seq = stream.seq.wrapping_add(1);
                stream.counter += 1;
            }
        }
        frame = frame.wrapping_add(1);
    }
}

/// Sends one publisher's audio: one packet per tick.
pub(crate) async fn send_audio(
    mut sink: Sink,
    shape: MediaShape,
    publisher: u32,
    switch: Arc<AtomicU8>,
    tally: Arc<SendTally>,
) {
    let mut seq = random_u32() as u16;
    let mut ts = random_u32();
    let mut counter = 0u64;
    let mut ticker = tokio::time::interval(shape.audio_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // RED: the previous frame, repeated before each new one (a WebRTC publisher), or the
    // same number of bytes in a plain packet (the baseline's sinks negotiate no RED).
    let red_peer = shape.red && matches!(sink, Sink::Peer(_));
    let size = if shape.red && !red_peer {
        2 * shape.audio_bytes() + RED_OVERHEAD
    } else {
        shape.audio_bytes()
    };
    let mut previous: Option<bytes::Bytes> = None;
    loop {
        ticker.tick().await;
        let Some(phase) = phase_of(&switch) else {
            return;
        };
        let mut packet = stamped_packet(
            &sink,
            Stamped {
                kind: MediaKind::Audio,
                publisher,
                phase,
                counter,
                size,
                part: None,
                layer: None,
            },
            (seq, ts, true),
        );
        if red_peer {
            let primary = packet.payload.clone();
            packet.payload = red_payload(previous.as_deref(), &primary, shape.audio_ts_step());
            packet.header.payload_type = RED_PT;
            previous = Some(primary);
        }
        match sink.send(packet).await {
            Ok(()) => {
                tally.record(phase);
                tally.note_counter(phase, counter);
            }
            Err(err) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("audio send: {err:#}");
            }
        }
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(shape.audio_ts_step());
        counter += 1;
    }
}

/// Opus RED's payload type in Chromium's offers and the simulated browsers'.
const RED_PT: u8 = 63;
/// The Opus payload type RED's blocks carry.
const OPUS_PT: u8 = 111;
/// A RED payload's headers with one redundant block: 4 bytes for it, 1 for the primary.
const RED_OVERHEAD: usize = 5;

/// An RFC 2198 payload: `previous` (`offset` ticks old) as the redundant block when there
/// is one, then `primary`.
fn red_payload(previous: Option<&[u8]>, primary: &[u8], offset: u32) -> bytes::Bytes {
    let mut p = BytesMut::with_capacity(RED_OVERHEAD + 2 * primary.len());
    if let Some(prev) = previous {
        let word = (1u32 << 31)
            | (u32::from(OPUS_PT) << 24)
            | ((offset & 0x3fff) << 10)
            | (prev.len() as u32 & 0x3ff);
        p.extend_from_slice(&word.to_be_bytes());
        p.extend_from_slice(&[OPUS_PT]);
        p.extend_from_slice(prev);
    } else {
        p.extend_from_slice(&[OPUS_PT]);
    }
    p.extend_from_slice(primary);
    p.freeze()
}

/// What one stamped payload is, besides its RTP header.
#[derive(Clone, Copy)]
struct Stamped {
    kind: MediaKind,
    publisher: u32,
    phase: Phase,
    counter: u64,
    size: usize,
    /// Video: where the packet sits in its frame.
    part: Option<FramePart>,
    layer: Option<u8>,
}

fn stamped_packet(sink: &Sink, what: Stamped, (seq, ts, marker): (u16, u32, bool)) -> Packet {
    let mut payload = BytesMut::zeroed(what.size);
    fill(&mut payload, what.counter);
    if let Some(part) = what.part {
        write_vp8_prefix(&mut payload, part);
    }
    write_stamp(
        &mut payload,
        &Stamp {
            publisher: what.publisher,
            kind: what.kind,
            phase: what.phase,
            counter: what.counter,
            sent_ns: nanos_at(Instant::now()),
            ssrc: sink.ssrc(),
            seq,
            layer: what.layer,
        },
    );
    Packet {
        header: Header {
            version: 2,
            marker,
            payload_type: sink.payload_type(),
            sequence_number: seq,
            timestamp: ts,
            ssrc: sink.ssrc(),
            ..Default::default()
        },
        payload: payload.freeze(),
    }
}

/// A reader of how many packets all publishers have sent so far, for the progress line.
pub(crate) fn sent_total(tallies: &[[Arc<SendTally>; 2]]) -> impl Fn() -> u64 + Send + 'static {
    let tallies = tallies.to_vec();
    move || {
        tallies
            .iter()
            .flat_map(|t| t.iter())
            .map(|t| t.total.load(Ordering::Relaxed))
            .sum()
    }
}

/// How a publisher's video goes out.
pub(crate) enum Video {
    /// One encoding.
    One(Sink),
    /// Simulcast layers, lowest first.
    Layers(Vec<Sink>),
}

/// Starts a publisher's senders: video, and audio when the shape has it.
pub(crate) fn spawn_publisher(
    video: Video,
    audio: Option<Sink>,
    shape: MediaShape,
    publisher: u32,
    switch: &Arc<AtomicU8>,
    tallies: &[Arc<SendTally>; 2],
) -> Vec<JoinHandle<()>> {
    let (switch_v, tally_v) = (Arc::clone(switch), Arc::clone(&tallies[1]));
    let mut tasks = vec![match video {
        Video::One(sink) => tokio::spawn(send_video(sink, shape, publisher, switch_v, tally_v)),
        Video::Layers(sinks) => {
            tokio::spawn(send_layers(sinks, shape, publisher, switch_v, tally_v))
        }
    }];
    if let Some(audio) = audio.filter(|_| shape.audio) {
        tasks.push(tokio::spawn(send_audio(
            audio,
            shape,
            publisher,
            Arc::clone(switch),
            Arc::clone(&tallies[0]),
        )));
    }
    tasks
}

/// CPU and packet counters at one instant, for the window's start and end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    pub at: Instant,
    /// The forwarder's CPU time (process or thread).
    pub forwarder_cpu: Option<Duration>,
    /// The forwarder's own count of forwarded packets.
    pub forwarded: Option<u64>,
    pub generator_cpu: Option<Duration>,
    pub machine: Option<(u64, u64)>,
}

impl Snapshot {
    pub fn take(forwarder_cpu: Option<Duration>, forwarded: Option<u64>) -> Self {
        Self {
            at: Instant::now(),
            forwarder_cpu,
            forwarded,
            generator_cpu: procfs::process_cpu(std::process::id()).ok(),
            machine: procfs::machine_jiffies().ok(),
        }
    }
}

/// The window's figures from two snapshots, written into `report`.
pub(crate) fn apply_window(report: &mut crate::report::RunReport, a: &Snapshot, b: &Snapshot) {
    let window = b.at.duration_since(a.at).as_secs_f64();
    if let (Some(c0), Some(c1), Some(f0), Some(f1)) =
        (a.forwarder_cpu, b.forwarder_cpu, a.forwarded, b.forwarded)
    {
        report.set_cpu(c1.saturating_sub(c0), f1.saturating_sub(f0));
    }
    if let (Some(g0), Some(g1)) = (a.generator_cpu, b.generator_cpu) {
        report.generator_cpu_pct = Some(g1.saturating_sub(g0).as_secs_f64() * 100.0 / window);
    }
    if let (Some((busy0, total0)), Some((busy1, total1))) = (a.machine, b.machine)
        && total1 > total0
    {
        report.machine_busy_pct = Some((busy1 - busy0) as f64 * 100.0 / (total1 - total0) as f64);
    }
}

/// Prints a live progress line on stderr: rewritten in place on a terminal, one line every
/// few seconds otherwise.
pub(crate) struct Progress {
    enabled: bool,
    tty: bool,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Says what is happening now (joining, ...), on its own line.
    pub fn say(&self, what: &str) {
        if self.enabled {
            if self.tty {
                eprint!("\r\x1b[2K");
            }
            eprintln!("{what}");
        }
    }

    /// Runs until `switch` says stop, printing send and receive rates and forwarder CPU.
    pub fn spawn(
        &self,
        target: &'static str,
        switch: Arc<AtomicU8>,
        sent: impl Fn() -> u64 + Send + 'static,
        received: impl Fn() -> u64 + Send + 'static,
        forwarder_cpu: impl Fn() -> Option<Duration> + Send + 'static,
    ) -> Option<JoinHandle<()>> {
        if !self.enabled {
            return None;
        }
        let tty = self.tty;
        Some(tokio::spawn(async move {
            let start = Instant::now();
            let mut last = (Instant::now(), sent(), received(), forwarder_cpu());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut n = 0u64;
            loop {
                tick.tick().await;
                let phase = switch.load(Ordering::Relaxed);
                if phase == STOP {
                    break;
                }
                let now = (Instant::now(), sent(), received(), forwarder_cpu());
                let dt = now.0.duration_since(last.0).as_secs_f64();
                let cpu = match (last.3, now.3) {
                    (Some(a), Some(b)) => {
                        format!("{:5.1} %", b.saturating_sub(a).as_secs_f64() * 100.0 / dt)
                    }
                    _ => "-".to_owned(),
                };
                let line = format!(
                    "[{target} {:>5.1}s {}] sent {:>8.0} pkt/s  received {:>8.0} pkt/s  forwarder CPU {cpu}",
                    start.elapsed().as_secs_f64(),
                    if phase == WARMUP {
                        "warm-up "
                    } else {
                        "measured"
                    },
                    (now.1 - last.1) as f64 / dt,
                    (now.2 - last.2) as f64 / dt,
                );
                n += 1;
                if tty {
                    eprint!("\r\x1b[2K{line}");
                    let _ = std::io::stderr().flush();
                } else if n.is_multiple_of(5) {
                    eprintln!("{line}");
                }
                last = now;
            }
            if tty {
                eprint!("\r\x1b[2K");
            }
        }))
    }
}

/// A counter of every packet any receiver saw, for the progress line.
pub(crate) type ReceivedCounter = Arc<AtomicU64>;
