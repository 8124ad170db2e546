//! The report: one run's figures, a side-by-side table, and JSON.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chorus_protocol::MediaKind;
use serde::Serialize;

use crate::media::{LAYER_RIDS, LAYER_SIZES, MediaShape};
use crate::options::Roster;
use crate::stats::{LAYERS, Percentiles, ReceiverStats, SendTally, WireUnmatched};

/// What was loaded, and with what.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub rooms: usize,
    pub publishers_per_room: usize,
    pub subscribers_per_room: usize,
    pub participants: usize,
    /// (receiver, publisher, kind) streams.
    pub subscriptions: usize,
    pub media: MediaShape,
    /// Packets per second every publisher sends.
    pub publisher_pps: f64,
    /// Packets per second the forwarder should deliver in total.
    pub offered_forward_pps: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
}

/// One subscription's packet accounting over the measured window.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SubscriptionReport {
    pub receiver: usize,
    pub publisher: u32,
    pub kind: MediaKind,
    /// Packets the publisher handed to its stack in the window.
    pub sent: u64,
    /// Distinct ones of those that arrived.
    pub received: u64,
    pub lost: u64,
    /// `--simulcast` video: the layer this subscription is accounted against, the one it
    /// received most packets of (its tile's layer if none arrived); `sent`, `received` and
    /// `lost` are that layer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<u8>,
    /// `--simulcast` video: the layer the receiver's tile asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tile_layer: Option<u8>,
    /// `--simulcast` video: distinct packets of the other layers that arrived (around a
    /// layer switch), forwarded but not in `received`.
    #[serde(skip_serializing_if = "is_zero")]
    pub other_layer_packets: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `--simulcast`: one layer's figures over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub layer: u8,
    pub rid: String,
    /// The size its key frames announce.
    pub width: u16,
    pub height: u16,
    /// Packets/s all publishers sent on this layer (dynacast stops a layer nobody needs).
    pub sent_pps: f64,
    /// Video subscriptions whose tile asks for this layer.
    pub tiles: u64,
    /// Video subscriptions accounted against this layer (that received most of it).
    pub subscriptions: u64,
    /// Distinct packets of this layer received, all receivers.
    pub forwarded_packets: u64,
    /// Forwarded packets per second of this layer, counted at the receivers.
    pub forwarded_pps: f64,
    /// Forwarded Mbit/s of this layer (RTP payload + 12-byte header).
    pub forwarded_mbps: f64,
    /// Packets the publishers sent on this layer, summed over the subscriptions accounted
    /// against it.
    pub due_packets: u64,
    /// Of those, the ones that did not arrive.
    pub lost_packets: u64,
}

/// Server memory (VmRSS), KiB.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// After start-up, nobody joined.
    pub empty_kib: u64,
    /// Everyone joined and negotiated, nobody sending yet.
    pub idle_kib: u64,
    /// At the end of the measured window.
    pub loaded_kib: u64,
    pub idle_per_participant_kib: f64,
    pub loaded_per_participant_kib: f64,
}

impl Memory {
    /// The figures from the three samples, when all three were read, with the growth per
    /// participant over the empty server.
    pub fn from_samples(
        empty: Option<u64>,
        idle: Option<u64>,
        loaded: Option<u64>,
        participants: usize,
    ) -> Option<Self> {
        let (empty, idle, loaded) = (empty?, idle?, loaded?);
        let n = participants.max(1) as f64;
        Some(Self {
            empty_kib: empty,
            idle_kib: idle,
            loaded_kib: loaded,
            idle_per_participant_kib: idle.saturating_sub(empty) as f64 / n,
            loaded_per_participant_kib: loaded.saturating_sub(empty) as f64 / n,
        })
    }
}

/// One target's figures (Chorus or the baseline).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// "chorus" or "baseline".
    pub target: String,
    /// The measured window, seconds.
    pub window_s: f64,
    /// Packets the publishers sent in the window.
    pub sent_packets: u64,
    /// Packets due at receivers (sent × receivers, summed per subscription).
    pub expected_packets: u64,
    pub received_packets: u64,
    pub lost_packets: u64,
    pub loss_pct: f64,
    pub duplicates: u64,
    /// Writes the sending stacks refused.
    pub send_errors: u64,
    /// Forwarded packets per second, counted at the receivers.
    pub forwarded_pps: f64,
    /// Forwarded Mbit/s (RTP payload + 12-byte header), counted at the receivers.
    pub forwarded_mbps: f64,
    /// End-to-end latency of every measured packet, ms: from the sending application's
    /// `write_rtp` to the receiving application (both client stacks included).
    pub latency_ms: Percentiles,
    /// Server latency at the sockets, ms: from just before the publisher's send system call to
    /// the kernel's receive timestamp on the subscriber's socket (see `wire.rs`).
    pub wire_latency_ms: Percentiles,
    /// Measured packets left out of `wire_latency_ms` because a socket time was missing.
    pub wire_unmatched: WireUnmatched,
    /// From opening the WebSocket until the participant's peers are connected, ms.
    pub join_ms: Option<Percentiles>,
    /// Packets the forwarder itself says it forwarded in the window.
    pub forwarder_packets: Option<u64>,
    /// Forwarder CPU time in the window, s (Chorus: the whole process; baseline: its thread).
    pub cpu_s: Option<f64>,
    /// Forwarder CPU as a share of one core, %.
    pub cpu_pct: Option<f64>,
    /// µs of forwarder CPU per forwarded packet.
    pub cpu_us_per_packet: Option<f64>,
    /// Forwarded packets per second per core of forwarder CPU.
    pub pps_per_core: Option<f64>,
    pub memory: Option<Memory>,
    /// CPU of this load generator in the window, % of one core (baseline: without the
    /// forwarder thread, which runs in this process).
    pub generator_cpu_pct: Option<f64>,
    /// Busy share of the whole machine in the window, %.
    pub machine_busy_pct: Option<f64>,
    /// CPU the machine spent on anything but the forwarder and this generator in the window
    /// (other processes, the kernel's own threads, time the hypervisor took), % of one core.
    /// Near 0 in a clean run; see [`DISTURBED_PCT`].
    pub other_load_pct: Option<f64>,
    /// Extra forwarder counters (Chorus: forward_drops, send_drops, unrouted).
    pub forwarder_counters: serde_json::Map<String, serde_json::Value>,
    pub subscriptions: Vec<SubscriptionReport>,
    /// `--simulcast`: per layer, lowest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerReport>,
    /// `--simulcast`: the server's last `streamState` of every video subscription at the
    /// end of the window, counted by what it said (a rid, or `paused:<reason>`, or `none`
    /// when it said nothing).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub stream_states: std::collections::BTreeMap<String, u64>,
    /// `--light`: the light receivers' own figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub light: Option<crate::light::LightReport>,
}

/// Chorus relative to the baseline (or to Janus), from the same invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Chorus packets/s per core ÷ baseline packets/s per core (the target is ≥ 0.6).
    pub pps_per_core: Option<f64>,
    /// Chorus µs per packet ÷ baseline µs per packet.
    pub cpu_per_packet: Option<f64>,
    pub latency_p50: f64,
    pub latency_p99: f64,
    pub wire_latency_p50: f64,
    pub wire_latency_p99: f64,
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub machine: Machine,
    pub chorus: Option<RunReport>,
    pub baseline: Option<RunReport>,
    /// `--target janus`: Janus's VideoRoom with the same load.
    pub janus: Option<RunReport>,
    pub ratio: Option<Ratios>,
    /// Chorus relative to Janus, from the same invocation (CPU per packet < 1: Chorus
    /// spends less).
    pub janus_ratio: Option<Ratios>,
    /// `--ramp`: every step, and the saturation figure.
    pub ramp: Option<crate::ramp::RampReport>,
    /// `--calibrate`: latency of one simulated browser sending straight to another (no
    /// server), ms: the client stacks' share of Chorus's end-to-end latency figures.
    pub client_stacks_latency_ms: Option<Percentiles>,
    /// `--calibrate`: the same run's latency at the sockets, ms: the kernel's loopback share of
    /// the server latency figures.
    pub loopback_wire_latency_ms: Option<Percentiles>,
    /// `--calibrate`: measured packets of that run without a socket time.
    pub loopback_wire_unmatched: Option<WireUnmatched>,
}

/// The measured window's raw material, common to both targets.
pub(crate) struct Collected<'a> {
    pub roster: Roster,
    pub shape: MediaShape,
    /// Per global publisher: [audio, video].
    pub tallies: &'a [[Arc<SendTally>; 2]],
    /// Per participant: what it received (None for those that receive nothing).
    pub receivers: Vec<Option<ReceiverStats>>,
    pub window: Duration,
}

pub(crate) fn kinds(shape: &MediaShape) -> Vec<MediaKind> {
    if shape.audio {
        vec![MediaKind::Audio, MediaKind::Video]
    } else {
        vec![MediaKind::Video]
    }
}

fn kind_slot(kind: MediaKind) -> usize {
    match kind {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
    }
}

impl Collected<'_> {
    /// The receiver-side half of a run report; CPU and memory are filled in by the caller.
    pub fn into_report(mut self, target: &str) -> RunReport {
        let window = self.window.as_secs_f64();
        let kinds = kinds(&self.shape);
        let mut subscriptions = Vec::new();
        for (participant, stats) in self.receivers.iter().enumerate() {
            let Some(stats) = stats else { continue };
            for publisher in self.roster.sources_of(participant) {
                for &kind in &kinds {
                    let tally = &self.tallies[publisher as usize][kind_slot(kind)];
                    if self.shape.simulcast && kind == MediaKind::Video {
                        subscriptions.push(self.layered_subscription(
                            participant,
                            publisher,
                            stats,
                            tally,
                        ));
                        continue;
                    }
                    let sent = tally.measured.load(Ordering::Relaxed);
                    let received = stats.received_from(publisher, kind).min(sent);
                    subscriptions.push(SubscriptionReport {
                        receiver: participant,
                        publisher,
                        kind,
                        sent,
                        received,
                        lost: sent - received,
                        layer: None,
                        tile_layer: None,
                        other_layer_packets: 0,
                    });
                }
            }
        }
        let sent_packets = self
            .tallies
            .iter()
            .flat_map(|t| t.iter())
            .map(|t| t.measured.load(Ordering::Relaxed))
            .sum();
        let send_errors = self
            .tallies
            .iter()
            .flat_map(|t| t.iter())
            .map(|t| t.errors.load(Ordering::Relaxed))
            .sum();
        let expected: u64 = subscriptions.iter().map(|s| s.sent).sum();
        let received: u64 = subscriptions.iter().map(|s| s.received).sum();
        let lost: u64 = subscriptions.iter().map(|s| s.lost).sum();
        let bytes: u64 = self.receivers.iter().flatten().map(|s| s.bytes).sum();
        let layers = if self.shape.simulcast {
            self.layer_reports(&subscriptions, window)
        } else {
            Vec::new()
        };
        // Simulcast: packets of a layer a subscription is not accounted against were
        // forwarded too.
        let forwarded = received
            + subscriptions
                .iter()
                .map(|s| s.other_layer_packets)
                .sum::<u64>();
        let duplicates = self.receivers.iter().flatten().map(|s| s.duplicates).sum();
        let mut latencies: Vec<u32> = Vec::with_capacity(received as usize);
        let mut wire_latencies: Vec<u32> = Vec::with_capacity(received as usize);
        let mut wire_unmatched = WireUnmatched::default();
        for stats in self.receivers.iter_mut().flatten() {
            latencies.append(&mut stats.latencies_ns);
            wire_latencies.append(&mut stats.wire_latencies_ns);
            wire_unmatched.add(&stats.wire_unmatched);
        }
        RunReport {
            target: target.to_owned(),
            window_s: window,
            sent_packets,
            expected_packets: expected,
            received_packets: received,
            lost_packets: lost,
            loss_pct: if expected > 0 {
                lost as f64 * 100.0 / expected as f64
            } else {
                0.0
            },
            duplicates,
            send_errors,
            forwarded_pps: forwarded as f64 / window,
            forwarded_mbps: bytes as f64 * 8.0 / window / 1e6,
            latency_ms: Percentiles::from_nanos(&mut latencies),
            wire_latency_ms: Percentiles::from_nanos(&mut wire_latencies),
            wire_unmatched,
            join_ms: None,
            forwarder_packets: None,
            cpu_s: None,
            cpu_pct: None,
            cpu_us_per_packet: None,
            pps_per_core: None,
            memory: None,
            generator_cpu_pct: None,
            machine_busy_pct: None,
            other_load_pct: None,
            forwarder_counters: serde_json::Map::new(),
            subscriptions,
            layers,
            stream_states: std::collections::BTreeMap::new(),
            light: None,
        }
    }

    /// A simulcast video subscription, accounted against the layer it received most of.
    fn layered_subscription(
        &self,
        receiver: usize,
        publisher: u32,
        stats: &ReceiverStats,
        tally: &SendTally,
    ) -> SubscriptionReport {
        let got: Vec<u64> = (0..LAYERS)
            .map(|l| stats.received_from_layer(publisher, l))
            .collect();
        let tile = self.roster.tile_layer(receiver).unwrap_or(LAYERS - 1);
        let all: u64 = got.iter().sum();
        // the most received; on a tie the higher layer, the one switched to
        let main = if all == 0 {
            tile
        } else {
            (0..LAYERS).max_by_key(|&l| (got[l], l)).unwrap_or(tile)
        };
        let sent = tally.measured_layer(main);
        let received = got[main].min(sent);
        SubscriptionReport {
            receiver,
            publisher,
            kind: MediaKind::Video,
            sent,
            received,
            lost: sent - received,
            layer: Some(main as u8),
            tile_layer: Some(tile as u8),
            other_layer_packets: all - got[main],
        }
    }

    /// Per-layer figures of a `--simulcast` run.
    fn layer_reports(&self, subscriptions: &[SubscriptionReport], window: f64) -> Vec<LayerReport> {
        (0..LAYERS)
            .map(|l| {
                let video = subscriptions.iter().filter(|s| s.kind == MediaKind::Video);
                let on = |s: &&SubscriptionReport| s.layer == Some(l as u8);
                let packets: u64 = self
                    .receivers
                    .iter()
                    .flatten()
                    .map(|r| r.layer_packets[l])
                    .sum();
                let bytes: u64 = self
                    .receivers
                    .iter()
                    .flatten()
                    .map(|r| r.layer_bytes[l])
                    .sum();
                let sent: u64 = self.tallies.iter().map(|t| t[1].measured_layer(l)).sum();
                let (width, height) = LAYER_SIZES[l];
                LayerReport {
                    layer: l as u8,
                    rid: LAYER_RIDS[l].to_owned(),
                    width,
                    height,
                    sent_pps: sent as f64 / window,
                    tiles: video
                        .clone()
                        .filter(|s| s.tile_layer == Some(l as u8))
                        .count() as u64,
                    subscriptions: video.clone().filter(on).count() as u64,
                    forwarded_packets: packets,
                    forwarded_pps: packets as f64 / window,
                    forwarded_mbps: bytes as f64 * 8.0 / window / 1e6,
                    due_packets: video.clone().filter(on).map(|s| s.sent).sum(),
                    lost_packets: video.filter(on).map(|s| s.lost).sum(),
                }
            })
            .collect()
    }
}

/// Other load (see [`RunReport::other_load_pct`]) above which a run is reported as
/// disturbed: a fifth of a core is far beyond what the kernel's housekeeping takes, and on
/// this 2-core VM such a run showed three times the usual latency at less forwarder CPU.
pub const DISTURBED_PCT: f64 = 20.0;

impl RunReport {
    /// Fills [`RunReport::other_load_pct`] from the machine's busy share over `cores`.
    pub fn set_other_load(&mut self, cores: usize) {
        if let (Some(busy), Some(forwarder), Some(generator)) =
            (self.machine_busy_pct, self.cpu_pct, self.generator_cpu_pct)
        {
            self.other_load_pct = Some((busy * cores as f64 - forwarder - generator).max(0.0));
        }
    }

    /// Whether something else on the machine took enough CPU to skew this run.
    pub fn disturbed(&self) -> bool {
        self.other_load_pct.is_some_and(|p| p > DISTURBED_PCT)
    }

    /// Fills the CPU figures from the forwarder's CPU time and packet count in the window.
    pub fn set_cpu(&mut self, cpu: Duration, forwarded: u64) {
        let cpu_s = cpu.as_secs_f64();
        self.forwarder_packets = Some(forwarded);
        self.cpu_s = Some(cpu_s);
        self.cpu_pct = Some(cpu_s * 100.0 / self.window_s);
        if forwarded > 0 {
            self.cpu_us_per_packet = Some(cpu_s * 1e6 / forwarded as f64);
        }
        if cpu_s > 0.0 {
            self.pps_per_core = Some(forwarded as f64 / cpu_s);
        }
    }
}

impl RunReport {
    /// `--simulcast`: the per-layer figures, and what the server last said of each video
    /// subscription.
    fn layer_table(&self, out: &mut String) {
        if self.layers.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "\n{} simulcast layers (forwarded = distinct packets counted at the receivers)",
            self.target
        );
        let _ = writeln!(
            out,
            "{:<16}{:>12}{:>8}{:>8}{:>16}{:>14}{:>12}",
            "layer", "sent pkt/s", "tiles", "subs", "forwarded pkt/s", "fwd Mbit/s", "loss %"
        );
        for l in &self.layers {
            let loss = if l.due_packets > 0 {
                format!(
                    "{:.3}",
                    l.lost_packets as f64 * 100.0 / l.due_packets as f64
                )
            } else {
                "-".to_owned()
            };
            let _ = writeln!(
                out,
                "{:<16}{:>12.0}{:>8}{:>8}{:>16.0}{:>14.2}{:>12}",
                format!("{} {} {}x{}", l.layer, l.rid, l.width, l.height),
                l.sent_pps,
                l.tiles,
                l.subscriptions,
                l.forwarded_pps,
                l.forwarded_mbps,
                loss
            );
        }
        let other: u64 = self
            .subscriptions
            .iter()
            .map(|s| s.other_layer_packets)
            .sum();
        let _ = writeln!(
            out,
            "(tiles: subscriptions whose tile asks for the layer; subs: those that received most of it; {other} packets arrived on a subscription's other layers)"
        );
        if !self.stream_states.is_empty() {
            let states: Vec<String> = self
                .stream_states
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(
                out,
                "server's last streamState per video subscription: {}",
                states.join(" ")
            );
        }
    }
}

impl Report {
    /// Derives what needs more than one run's figures: each run's other load, and the ratios.
    pub fn finish(&mut self) {
        let cores = self.machine.cores;
        for run in [&mut self.chorus, &mut self.baseline, &mut self.janus]
            .into_iter()
            .flatten()
        {
            run.set_other_load(cores);
        }
        self.ratio = Self::ratio_of(self.chorus.as_ref(), self.baseline.as_ref());
        self.janus_ratio = Self::ratio_of(self.chorus.as_ref(), self.janus.as_ref());
    }

    fn ratio_of(c: Option<&RunReport>, b: Option<&RunReport>) -> Option<Ratios> {
        let (Some(c), Some(b)) = (c, b) else {
            return None;
        };
        let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        Some(Ratios {
            pps_per_core: div(c.pps_per_core, b.pps_per_core),
            cpu_per_packet: div(c.cpu_us_per_packet, b.cpu_us_per_packet),
            latency_p50: safe_div(c.latency_ms.p50, b.latency_ms.p50),
            latency_p99: safe_div(c.latency_ms.p99, b.latency_ms.p99),
            wire_latency_p50: safe_div(c.wire_latency_ms.p50, b.wire_latency_ms.p50),
            wire_latency_p99: safe_div(c.wire_latency_ms.p99, b.wire_latency_ms.p99),
        })
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let s = &self.scenario;
        let mut out = String::new();
        if let Some(ramp) = &self.ramp {
            let _ = writeln!(
                out,
                "ramp of: {} room(s) per step x ({} publishers + {} subscribers); machine: {} cores, {}",
                s.rooms,
                s.publishers_per_room,
                s.subscribers_per_room,
                self.machine.cores,
                self.machine.cpu
            );
            out.push_str(&ramp.table());
            return out;
        }
        let frame = s.media.frame_packets();
        let _ = writeln!(
            out,
            "scenario: {} room(s) x ({} publishers + {} subscribers) = {} participants, {} subscriptions",
            s.rooms, s.publishers_per_room, s.subscribers_per_room, s.participants, s.subscriptions
        );
        let _ = writeln!(
            out,
            "media per publisher: video {:.2} Mbit/s at {} fps in {} packets/frame of <= {} B{}; {:.0} packets/s",
            s.media.video_bitrate as f64 / 1e6,
            s.media.fps,
            frame.len(),
            s.media.video_packet_bytes,
            if s.media.audio {
                format!(
                    ", audio {} packets/s of {} B",
                    s.media.audio_pps,
                    s.media.audio_bytes()
                )
            } else {
                ", no audio".to_owned()
            },
            s.publisher_pps
        );
        if s.media.simulcast {
            let layers: Vec<String> = (0..LAYERS)
                .map(|l| {
                    let frame = s.media.layer_frame_packets(l);
                    let (w, h) = LAYER_SIZES[l];
                    format!(
                        "{} {w}x{h} {:.2} Mbit/s in {} x ~{} B",
                        LAYER_RIDS[l],
                        frame.iter().sum::<usize>() as f64 * 8.0 * f64::from(s.media.fps) / 1e6,
                        frame.len(),
                        frame.first().copied().unwrap_or(0)
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "simulcast: the video is sent as layers {} (each receiver gets one; offered counts each receiver's tile layer)",
                layers.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "offered: {:.0} forwarded packets/s; warm-up {} s, measured {} s; machine: {} cores, {}",
            s.offered_forward_pps, s.warmup_s, s.duration_s, self.machine.cores, self.machine.cpu
        );
        let runs: Vec<&RunReport> = [&self.chorus, &self.baseline, &self.janus]
            .into_iter()
            .flatten()
            .collect();
        // Ratio columns: Chorus over each other target.
        let chorus_first = runs.first().is_some_and(|r| r.target == "chorus");
        let others = if chorus_first { runs.len() - 1 } else { 0 };
        let _ = write!(out, "\n{:<34}", "");
        for r in &runs {
            let _ = write!(out, "{:>14}", r.target);
        }
        for r in runs.iter().skip(1).take(others) {
            let _ = write!(out, "{:>18}", format!("chorus/{}", r.target));
        }
        out.push('\n');
        let opt = |v: Option<f64>, prec: usize| match v {
            Some(v) => format!("{v:.prec$}"),
            None => "-".to_owned(),
        };
        type Getter = fn(&RunReport) -> Option<f64>;
        let rows: Vec<(&str, Getter, usize)> = vec![
            (
                "forwarded packets/s (receivers)",
                |r| Some(r.forwarded_pps),
                0,
            ),
            (
                "forwarded Mbit/s (receivers)",
                |r| Some(r.forwarded_mbps),
                1,
            ),
            (
                "packets sent by publishers",
                |r| Some(r.sent_packets as f64),
                0,
            ),
            (
                "packets due at receivers",
                |r| Some(r.expected_packets as f64),
                0,
            ),
            (
                "packets received (distinct)",
                |r| Some(r.received_packets as f64),
                0,
            ),
            ("loss %", |r| Some(r.loss_pct), 3),
            (
                "server latency (wire) p50 ms",
                |r| Some(r.wire_latency_ms.p50),
                3,
            ),
            (
                "server latency (wire) p90 ms",
                |r| Some(r.wire_latency_ms.p90),
                3,
            ),
            (
                "server latency (wire) p99 ms",
                |r| Some(r.wire_latency_ms.p99),
                3,
            ),
            (
                "server latency (wire) p99.9 ms",
                |r| Some(r.wire_latency_ms.p999),
                3,
            ),
            (
                "server latency (wire) max ms",
                |r| Some(r.wire_latency_ms.max),
                3,
            ),
            (
                "server latency unmatched packets",
                |r| Some(r.wire_unmatched.total() as f64),
                0,
            ),
            (
                "end-to-end latency (app) p50 ms",
                |r| Some(r.latency_ms.p50),
                3,
            ),
            (
                "end-to-end latency (app) p90 ms",
                |r| Some(r.latency_ms.p90),
                3,
            ),
            (
                "end-to-end latency (app) p99 ms",
                |r| Some(r.latency_ms.p99),
                3,
            ),
            (
                "end-to-end latency (app) p99.9 ms",
                |r| Some(r.latency_ms.p999),
                3,
            ),
            (
                "end-to-end latency (app) max ms",
                |r| Some(r.latency_ms.max),
                3,
            ),
            ("join p50 ms", |r| r.join_ms.map(|j| j.p50), 1),
            ("join p99 ms", |r| r.join_ms.map(|j| j.p99), 1),
            ("forwarder CPU s", |r| r.cpu_s, 2),
            ("forwarder CPU % of a core", |r| r.cpu_pct, 1),
            (
                "forwarder packets (own count)",
                |r| r.forwarder_packets.map(|p| p as f64),
                0,
            ),
            ("CPU us per forwarded packet", |r| r.cpu_us_per_packet, 2),
            ("forwarded packets/s per core", |r| r.pps_per_core, 0),
            (
                "RSS empty MiB",
                |r| r.memory.as_ref().map(|m| m.empty_kib as f64 / 1024.0),
                1,
            ),
            (
                "RSS idle (joined, silent) MiB",
                |r| r.memory.as_ref().map(|m| m.idle_kib as f64 / 1024.0),
                1,
            ),
            (
                "RSS loaded MiB",
                |r| r.memory.as_ref().map(|m| m.loaded_kib as f64 / 1024.0),
                1,
            ),
            (
                "RSS per idle participant KiB",
                |r| r.memory.as_ref().map(|m| m.idle_per_participant_kib),
                0,
            ),
            (
                "RSS per loaded participant KiB",
                |r| r.memory.as_ref().map(|m| m.loaded_per_participant_kib),
                0,
            ),
            ("load generator CPU % of a core", |r| r.generator_cpu_pct, 1),
            (
                "light receiver CPU % of a core",
                |r| r.light.as_ref().map(|l| l.cpu_s * 100.0 / r.window_s),
                1,
            ),
            (
                "light receiver us per packet",
                |r| r.light.as_ref().and_then(|l| l.us_per_packet),
                3,
            ),
            (
                "light samples decrypted",
                |r| r.light.as_ref().map(|l| l.samples as f64),
                0,
            ),
            (
                "light subscriptions unaccounted",
                |r| r.light.as_ref().map(|l| l.unaccounted.total() as f64),
                0,
            ),
            ("machine busy %", |r| r.machine_busy_pct, 1),
            ("other load % of a core", |r| r.other_load_pct, 1),
        ];
        for (label, get, prec) in rows {
            let _ = write!(out, "{label:<34}");
            let values: Vec<Option<f64>> = runs.iter().map(|r| get(r)).collect();
            for v in &values {
                let _ = write!(out, "{:>14}", opt(*v, prec));
            }
            for other in values.iter().skip(1).take(others) {
                let ratio = match (values[0], *other) {
                    (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
                    _ => "-".into(),
                };
                let _ = write!(out, "{ratio:>18}");
            }
            out.push('\n');
        }
        for r in &runs {
            r.layer_table(&mut out);
        }
        for r in &runs {
            if let Some(other) = r.other_load_pct.filter(|_| r.disturbed()) {
                let _ = writeln!(
                    out,
                    "{}: DISTURBED: {other:.0} % of a core went to something else on the machine during the window; repeat the run",
                    r.target
                );
            }
            if !r.forwarder_counters.is_empty() {
                let counters: Vec<String> = r
                    .forwarder_counters
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let _ = writeln!(out, "{} counters: {}", r.target, counters.join(" "));
            }
            if let Some(u) = r.light.as_ref().map(|l| l.unaccounted)
                && u.total() > 0
            {
                let _ = writeln!(
                    out,
                    "{}: light subscriptions unaccounted: no sample {}, no stream {}, no tally {}, sample before the stream {}",
                    r.target, u.no_sample, u.no_stream, u.no_tally, u.before_stream
                );
            }
            let worst = r.subscriptions.iter().max_by_key(|s| s.lost);
            if let Some(w) = worst.filter(|w| w.lost > 0) {
                let _ = writeln!(
                    out,
                    "{}: worst subscription: receiver {} <- publisher {} {:?}: {} of {} lost",
                    r.target, w.receiver, w.publisher, w.kind, w.lost, w.sent
                );
            }
        }
        if let Some(c) = &self.client_stacks_latency_ms {
            let _ = writeln!(
                out,
                "client stacks alone (browser -> browser, no server): end-to-end latency p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} ms",
                c.p50, c.p90, c.p99, c.p999
            );
        }
        if let Some(w) = &self.loopback_wire_latency_ms {
            let unmatched = self.loopback_wire_unmatched.map_or(0, |u| u.total());
            let _ = writeln!(
                out,
                "kernel loopback alone (same run, at the sockets): wire latency p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} ms, {unmatched} unmatched",
                w.p50, w.p90, w.p99, w.p999
            );
        }
        if let Some(ratio) = &self.ratio
            && let Some(share) = ratio.pps_per_core
        {
            let _ = writeln!(
                out,
                "\nchorus reaches {:.0} % of the baseline's forwarded packets/s per core",
                share * 100.0
            );
        }
        if let Some(ratio) = &self.janus_ratio
            && let Some(cpu) = ratio.cpu_per_packet
        {
            let _ = writeln!(
                out,
                "chorus spends {:.2}x Janus's CPU per forwarded packet; server latency p50 {:.2}x, p99 {:.2}x Janus's",
                cpu, ratio.wire_latency_p50, ratio.wire_latency_p99
            );
        }
        out
    }
}

fn safe_div(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}
