//! What senders and receivers count, and the percentiles made from it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chorus_protocol::MediaKind;
use serde::Serialize;

use crate::media::{Phase, nanos_at, read_stamp};

/// RTP fixed header bytes, added to payload sizes for bit rates.
pub const RTP_HEADER_BYTES: u64 = 12;

/// What one publisher sent on one kind. Shared between its sender task and the report.
#[derive(Debug, Default)]
pub struct SendTally {
    /// Packets handed to the stack during the measured window.
    pub measured: AtomicU64,
    /// Packets handed to the stack, all phases (for the progress line).
    pub total: AtomicU64,
    /// Writes the stack refused.
    pub errors: AtomicU64,
}

impl SendTally {
    pub fn record(&self, phase: Phase) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if phase == Phase::Measured {
            self.measured.fetch_add(1, Ordering::Relaxed);
        }
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

/// Everything one receiving participant counts.
#[derive(Debug, Default, Clone)]
pub struct ReceiverStats {
    /// Added latency of every measured packet, ns (saturating at ~4.3 s).
    pub latencies_ns: Vec<u32>,
    streams: HashMap<(u32, u8), Seen>,
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
    /// Counts one received RTP packet whose payload is `payload`, arrived at `at`.
    pub fn on_packet(&mut self, payload: &[u8], at: Instant) {
        self.all_packets += 1;
        let Some(stamp) = read_stamp(payload) else {
            self.unknown += 1;
            return;
        };
        if stamp.phase != Phase::Measured {
            return;
        }
        let kind = kind_index(stamp.kind);
        if !self
            .streams
            .entry((stamp.publisher, kind))
            .or_default()
            .mark(stamp.counter)
        {
            self.duplicates += 1;
            return;
        }
        self.packets += 1;
        self.bytes += payload.len() as u64 + RTP_HEADER_BYTES;
        let latency = nanos_at(at).saturating_sub(stamp.sent_ns);
        self.latencies_ns
            .push(u32::try_from(latency).unwrap_or(u32::MAX));
    }

    /// Distinct measured packets of one publisher's stream.
    pub fn received_from(&self, publisher: u32, kind: MediaKind) -> u64 {
        self.streams
            .get(&(publisher, kind_index(kind)))
            .map_or(0, |s| s.distinct)
    }
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
            },
        );
        p
    }

    #[test]
    fn counts_distinct_measured_packets() {
        let mut s = ReceiverStats::default();
        let now = Instant::now();
        s.on_packet(&payload(1, 0, Phase::Warmup), now);
        s.on_packet(&payload(1, 1, Phase::Measured), now);
        s.on_packet(&payload(1, 1, Phase::Measured), now);
        s.on_packet(&payload(1, 200, Phase::Measured), now);
        s.on_packet(&payload(2, 5, Phase::Measured), now);
        s.on_packet(b"not ours", now);
        assert_eq!(s.all_packets, 6);
        assert_eq!(s.packets, 3);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.unknown, 1);
        assert_eq!(s.received_from(1, MediaKind::Video), 2);
        assert_eq!(s.received_from(2, MediaKind::Video), 1);
        assert_eq!(s.received_from(2, MediaKind::Audio), 0);
        assert_eq!(s.bytes, 3 * 112);
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
