//! What senders and receivers count, and the percentiles made from it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chorus_protocol::MediaKind;
use serde::Serialize;

use crate::media::{Phase, nanos_at, read_stamp};
use crate::wire::{WireLinks, WireMatch};

/// RTP fixed header bytes, added to payload sizes for bit rates.
pub const RTP_HEADER_BYTES: u64 = 12;

/// The stream key's layer for a stream sent as one encoding.
const NO_LAYER: u8 = u8::MAX;

/// What one publisher sent on one kind. Shared between its sender task and the report.
#[derive(Debug, Default)]
pub struct SendTally {
    /// Packets handed to the stack during the measured window.
    pub measured: AtomicU64,
    /// Packets handed to the stack, all phases (for the progress line).
    pub total: AtomicU64,
    /// Writes the stack refused.
    pub errors: AtomicU64,
    /// Simulcast video: packets handed to the stack during the measured window, per layer
    /// (included in `measured`).
    pub layers: [AtomicU64; LAYERS],
    /// The first measured packet's counter + 1 (0: none yet), for `--light` accounting.
    pub first_measured: AtomicU64,
    /// The last measured packet's counter + 1.
    pub end_measured: AtomicU64,
}

/// Simulcast layers the load sends (q, h, f).
pub const LAYERS: usize = 3;

impl SendTally {
    pub fn record(&self, phase: Phase) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if phase == Phase::Measured {
            self.measured.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// [`record`](Self::record) for a packet of simulcast layer `layer`.
    pub fn record_layer(&self, phase: Phase, layer: u8) {
        self.record(phase);
        if phase == Phase::Measured
            && let Some(count) = self.layers.get(usize::from(layer))
        {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Notes the counter of a packet handed to the stack (see [`counter_range`](Self::counter_range)).
    pub fn note_counter(&self, phase: Phase, counter: u64) {
        if phase == Phase::Measured {
            let _ = self.first_measured.compare_exchange(
                0,
                counter + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            self.end_measured.fetch_max(counter + 1, Ordering::Relaxed);
        }
    }

    /// The packet counters of the measured window, `from..to`, if any packet was measured.
    pub fn counter_range(&self) -> Option<(u64, u64)> {
        let first = self.first_measured.load(Ordering::Relaxed).checked_sub(1)?;
        Some((first, self.end_measured.load(Ordering::Relaxed)))
    }

    /// Measured packets of simulcast layer `layer`.
    pub fn measured_layer(&self, layer: usize) -> u64 {
        self.layers
            .get(layer)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Which counters of one (publisher, kind) stream arrived in the measured window.
#[derive(Debug, Default, Clone)]
struct Seen {
    bits: Vec<u64>,
    distinct: u64,
}

impl Seen {
    /// Marks `counter`; returns false when it was already marked (a duplicate).
    fn mark(&mut self, counter: u64) -> bool {
        let word = (counter / 64) as usize;
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let bit = 1u64 << (counter % 64);
        if self.bits[word] & bit != 0 {
            return false;
        }
        self.bits[word] |= bit;
        self.distinct += 1;
        true
    }
}

/// One RTP packet as a receiver got it.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub payload: &'a [u8],
    /// When the receiving application got it.
    pub at: Instant,
    /// SSRC and sequence number as they arrived (the server's, not the publisher's).
    pub ssrc: u32,
    pub seq: u16,
}

/// Measured packets whose server latency at the sockets could not be found. Expected to be
/// (about) zero; counted so that a gap in the wire figure never goes unseen.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct WireUnmatched {
    /// No kernel arrival time on the receiver's socket.
    pub no_arrival: u64,
    /// No send time on the publisher's socket.
    pub no_send: u64,
}

impl WireUnmatched {
    pub fn total(&self) -> u64 {
        self.no_arrival + self.no_send
    }

    pub fn add(&mut self, other: &Self) {
        self.no_arrival += other.no_arrival;
        self.no_send += other.no_send;
    }
}

/// Everything one receiving participant counts.
#[derive(Debug, Default, Clone)]
pub struct ReceiverStats {
    /// End-to-end (application to application) latency of every measured packet, ns
    /// (saturating at ~4.3 s).
    pub latencies_ns: Vec<u32>,
    /// Server latency at the sockets of every measured packet whose wire times were found, ns
    /// (see [`crate::wire`]).
    pub wire_latencies_ns: Vec<u32>,
    pub wire_unmatched: WireUnmatched,
    /// By (publisher, kind, layer): a stream sent as one encoding is layer [`NO_LAYER`].
    streams: HashMap<(u32, u8, u8), Seen>,
    /// Simulcast video: distinct measured packets and their RTP bytes per layer (all
    /// publishers), included in `packets` and `bytes`.
    pub layer_packets: [u64; LAYERS],
    pub layer_bytes: [u64; LAYERS],
    /// Distinct measured packets and their RTP bytes (payload + fixed header).
    pub packets: u64,
    pub bytes: u64,
    /// Measured packets that arrived twice (retransmissions).
    pub duplicates: u64,
    /// Packets of every phase, for the progress line.
    pub all_packets: u64,
    /// Packets without a stamp.
    pub unknown: u64,
}

impl ReceiverStats {
    /// Counts one received RTP packet; `wire` finds its server latency at the sockets.
    pub fn on_packet(&mut self, packet: &Arrival<'_>, wire: Option<&WireLinks>) {
        self.all_packets += 1;
        let payload = packet.payload;
        // A RED copy (a publisher that negotiated RED receives it as sent): the stamp is in
        // the primary block.
        let stamp = read_stamp(payload).or_else(|| {
            let (_, primary) = chorus_sfu::red::primary(payload).ok()?;
            read_stamp(&payload[primary])
        });
        let Some(stamp) = stamp else {
            self.unknown += 1;
            return;
        };
        // Looked up for every packet, warm-up and duplicates included: the lookup is what
        // removes the arrival from the receiver's log.
        let wire = wire.map(|w| w.resolve(&stamp, packet.ssrc, packet.seq));
        if stamp.phase != Phase::Measured {
            return;
        }
        let kind = kind_index(stamp.kind);
        let layer = stamp.layer.unwrap_or(NO_LAYER);
        if !self
            .streams
            .entry((stamp.publisher, kind, layer))
            .or_default()
            .mark(stamp.counter)
        {
            self.duplicates += 1;
            return;
        }
        let bytes = payload.len() as u64 + RTP_HEADER_BYTES;
        self.packets += 1;
        self.bytes += bytes;
        if let Some(layer) = stamp.layer.map(usize::from).filter(|l| *l < LAYERS) {
            self.layer_packets[layer] += 1;
            self.layer_bytes[layer] += bytes;
        }
        let latency = nanos_at(packet.at).saturating_sub(stamp.sent_ns);
        self.latencies_ns.push(saturate(latency));
        match wire {
            Some(WireMatch::Latency(ns)) => self.wire_latencies_ns.push(saturate(ns)),
            Some(WireMatch::NoArrival) => self.wire_unmatched.no_arrival += 1,
            Some(WireMatch::NoSend) => self.wire_unmatched.no_send += 1,
            None => {}
        }
    }

    /// Distinct measured packets of one publisher's stream sent as one encoding.
    pub fn received_from(&self, publisher: u32, kind: MediaKind) -> u64 {
        self.streams
            .get(&(publisher, kind_index(kind), NO_LAYER))
            .map_or(0, |s| s.distinct)
    }

    /// Distinct measured packets of one simulcast layer of a publisher's video.
    pub fn received_from_layer(&self, publisher: u32, layer: usize) -> u64 {
        u8::try_from(layer)
            .ok()
            .and_then(|layer| {
                self.streams
                    .get(&(publisher, kind_index(MediaKind::Video), layer))
            })
            .map_or(0, |s| s.distinct)
    }
}

fn saturate(ns: u64) -> u32 {
    u32::try_from(ns).unwrap_or(u32::MAX)
}

fn kind_index(kind: MediaKind) -> u8 {
    match kind {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
    }
}

/// Percentiles of a sample set, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub samples: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From nanosecond samples (sorted in place).
    pub fn from_nanos(samples: &mut [u32]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            // nearest rank
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            f64::from(samples[rank - 1]) / 1e6
        };
        Self {
            samples: samples.len() as u64,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        }
    }

    /// From durations in milliseconds.
    pub fn from_millis(samples: &[f64]) -> Self {
        let mut nanos: Vec<u32> = samples
            .iter()
            .map(|ms| (ms * 1e6).clamp(0.0, f64::from(u32::MAX)) as u32)
            .collect();
        Self::from_nanos(&mut nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{Stamp, write_stamp};

    fn payload(publisher: u32, counter: u64, phase: Phase) -> Vec<u8> {
        let mut p = vec![0u8; 100];
        write_stamp(
            &mut p,
            &Stamp {
                publisher,
                kind: MediaKind::Video,
                phase,
                counter,
                sent_ns: nanos_at(Instant::now()),
                ssrc: 10 + publisher,
                seq: counter as u16,
                layer: None,
            },
        );
        p
    }

    fn arrival(payload: &[u8], seq: u16) -> Arrival<'_> {
        Arrival {
            payload,
            at: Instant::now(),
            ssrc: 99,
            seq,
        }
    }

    #[test]
    fn counts_distinct_measured_packets() {
        let mut s = ReceiverStats::default();
        let mut on = |p: &[u8]| s.on_packet(&arrival(p, 0), None);
        on(&payload(1, 0, Phase::Warmup));
        on(&payload(1, 1, Phase::Measured));
        on(&payload(1, 1, Phase::Measured));
        on(&payload(1, 200, Phase::Measured));
        on(&payload(2, 5, Phase::Measured));
        on(b"not ours");
        assert_eq!(s.all_packets, 6);
        assert_eq!(s.packets, 3);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.unknown, 1);
        assert_eq!(s.received_from(1, MediaKind::Video), 2);
        assert_eq!(s.received_from(2, MediaKind::Video), 1);
        assert_eq!(s.received_from(2, MediaKind::Audio), 0);
        assert_eq!(s.bytes, 3 * 112);
        assert!(s.wire_latencies_ns.is_empty());
        assert_eq!(s.wire_unmatched, WireUnmatched::default());
    }

    #[test]
    fn wire_latency_joins_the_publishers_send_and_the_receivers_arrival() {
        use crate::wire::WireLog;
        let rtp = |ssrc: u32, seq: u16| {
            let mut d = vec![0u8; 20];
            d[0] = 0x80;
            d[1] = 96;
            d[2..4].copy_from_slice(&seq.to_be_bytes());
            d[8..12].copy_from_slice(&ssrc.to_be_bytes());
            d
        };
        let (publisher, receiver) = (WireLog::new(), WireLog::new());
        let links = WireLinks {
            own: std::sync::Arc::clone(&receiver),
            publishers: vec![WireLog::new(), std::sync::Arc::clone(&publisher)].into(),
        };
        let mut s = ReceiverStats::default();
        // Publisher 1 sends with ssrc 11, seq = counter; the server forwards as ssrc 99.
        publisher.record_send(&rtp(11, 1), 5_000);
        receiver.record_receive(&rtp(99, 501), Some(7_500));
        s.on_packet(&arrival(&payload(1, 1, Phase::Measured), 501), Some(&links));
        receiver.record_receive(&rtp(99, 502), Some(7_600));
        s.on_packet(&arrival(&payload(1, 2, Phase::Measured), 502), Some(&links));
        s.on_packet(&arrival(&payload(1, 3, Phase::Measured), 503), Some(&links));
        assert_eq!(s.wire_latencies_ns, vec![2_500]);
        assert_eq!(
            s.wire_unmatched,
            WireUnmatched {
                no_arrival: 1,
                no_send: 1
            }
        );
        assert_eq!(s.latencies_ns.len(), 3);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        let p = Percentiles::from_nanos(&mut samples);
        assert_eq!(p.samples, 1000);
        assert_eq!(p.p50, 0.5);
        assert_eq!(p.p99, 0.99);
        assert_eq!(p.p999, 0.999);
        assert_eq!(p.max, 1.0);
        assert_eq!(Percentiles::from_nanos(&mut []).p50, 0.0);
    }
}
