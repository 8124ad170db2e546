//! The load's media: how many packets of which size per frame, and the stamp every payload
//! carries so that a receiver measures latency and loss without sharing state with the sender.
//!
//! Payload layout (little endian), after one codec byte (a VP8 payload descriptor for video,
//! an Opus TOC byte for audio):
//!
//! | bytes | field |
//! |---|---|
//! | 1..5 | magic `CHLT` |
//! | 5..9 | publisher index (global, across rooms) |
//! | 9 | kind: 0 audio, 1 video |
//! | 10 | phase: 0 warm-up, 1 measured |
//! | 11..19 | the publisher's per-kind packet counter, from 0 |
//! | 19..27 | send time: ns since [`epoch`] (this process's monotonic clock) |
//! | 27..31 | the publisher's RTP SSRC |
//! | 31..33 | the publisher's RTP sequence number |
//!
//! The rest is filler. Sender and receivers live in one process, so the stamp and the
//! arrival time are read from the same clock. The SSRC and sequence number are the ones the
//! publisher's socket saw; the server rewrites both on the way to each subscriber, so this is
//! how a received packet finds its send in the publisher's [`crate::wire::WireLog`].

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chorus_protocol::MediaKind;

const MAGIC: &[u8; 4] = b"CHLT";
/// Bytes of the stamp, codec byte included: the smallest payload the load sends.
pub const STAMP_LEN: usize = 33;
/// VP8 payload descriptor: S bit set, partition 0.
const VP8_DESCRIPTOR: u8 = 0x10;
/// An Opus TOC byte (SILK wideband 20 ms, mono), so the payload looks like Opus.
const OPUS_TOC: u8 = 0x48;

/// Whether a packet was sent during warm-up or the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Warmup = 0,
    Measured = 1,
}

/// The process-wide zero of send and arrival times.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`] at `at`.
pub fn nanos_at(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_nanos() as u64
}

/// What one stamped payload says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub kind: MediaKind,
    pub phase: Phase,
    pub counter: u64,
    pub sent_ns: u64,
    /// The publisher's SSRC for this kind.
    pub ssrc: u32,
    /// The publisher's RTP sequence number of this packet.
    pub seq: u16,
}

/// Writes the stamp into the first [`STAMP_LEN`] bytes of `payload`.
///
/// # Panics
///
/// If `payload` is shorter than [`STAMP_LEN`].
pub fn write_stamp(payload: &mut [u8], stamp: &Stamp) {
    payload[0] = match stamp.kind {
        MediaKind::Audio => OPUS_TOC,
        MediaKind::Video => VP8_DESCRIPTOR,
    };
    payload[1..5].copy_from_slice(MAGIC);
    payload[5..9].copy_from_slice(&stamp.publisher.to_le_bytes());
    payload[9] = match stamp.kind {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
    };
    payload[10] = stamp.phase as u8;
    payload[11..19].copy_from_slice(&stamp.counter.to_le_bytes());
    payload[19..27].copy_from_slice(&stamp.sent_ns.to_le_bytes());
    payload[27..31].copy_from_slice(&stamp.ssrc.to_le_bytes());
    payload[31..33].copy_from_slice(&stamp.seq.to_le_bytes());
}

/// Reads a stamp written by [`write_stamp`]; `None` for any other payload.
pub fn read_stamp(payload: &[u8]) -> Option<Stamp> {
    if payload.len() < STAMP_LEN || &payload[1..5] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(payload[i..i + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().unwrap_or([0; 8]));
    let u16_at = |i: usize| u16::from_le_bytes(payload[i..i + 2].try_into().unwrap_or([0; 2]));
    Some(Stamp {
        publisher: u32_at(5),
        kind: match payload[9] {
            0 => MediaKind::Audio,
            1 => MediaKind::Video,
            _ => return None,
        },
        phase: match payload[10] {
            0 => Phase::Warmup,
            1 => Phase::Measured,
            _ => return None,
        },
        counter: u64_at(11),
        sent_ns: u64_at(19),
        ssrc: u32_at(27),
        seq: u16_at(31),
    })
}

/// Filler after the stamp: cheap, and different from packet to packet.
pub fn fill(payload: &mut [u8], counter: u64) {
    for (i, b) in payload.iter_mut().enumerate().skip(STAMP_LEN) {
        *b = (counter as usize).wrapping_mul(31).wrapping_add(i * 7) as u8;
    }
}

/// The media each publisher sends.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct MediaShape {
    /// Video bits per second (RTP payload bytes × 8).
    pub video_bitrate: u64,
    /// Video RTP payload bytes per packet (the last packet of a frame carries the rest).
    pub video_packet_bytes: usize,
    pub fps: u32,
    /// Whether Opus-shaped audio is sent too.
    pub audio: bool,
    /// Audio packets per second (one per 20 ms Opus frame).
    pub audio_pps: u32,
    /// Audio RTP payload bytes per packet (80 B at 50/s is a 32 kbit/s Opus stream).
    pub audio_packet_bytes: usize,
}

impl Default for MediaShape {
    fn default() -> Self {
        Self {
            video_bitrate: 2_500_000,
            video_packet_bytes: 1100,
            fps: 30,
            audio: true,
            audio_pps: 50,
            audio_packet_bytes: 80,
        }
    }
}

impl MediaShape {
    /// Payload sizes of the packets of one video frame, sent as one burst.
    pub fn frame_packets(&self) -> Vec<usize> {
        let frame_bytes = (self.video_bitrate / 8 / u64::from(self.fps.max(1))) as usize;
        let size = self.video_packet_bytes.max(STAMP_LEN);
        let mut out = vec![size; frame_bytes / size];
        let rest = frame_bytes % size;
        if rest > 0 {
            out.push(rest.max(STAMP_LEN));
        }
        if out.is_empty() {
            out.push(STAMP_LEN);
        }
        out
    }

    pub fn frame_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.fps.max(1)))
    }

    pub fn audio_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.audio_pps.max(1)))
    }

    /// Packets per second one publisher sends.
    pub fn packets_per_second(&self) -> f64 {
        let video = self.frame_packets().len() as f64 * f64::from(self.fps);
        let audio = if self.audio {
            f64::from(self.audio_pps)
        } else {
            0.0
        };
        video + audio
    }

    /// RTP timestamp step per video frame (90 kHz clock).
    pub fn video_ts_step(&self) -> u32 {
        90_000 / self.fps.max(1)
    }

    /// RTP timestamp step per audio packet (48 kHz clock).
    pub fn audio_ts_step(&self) -> u32 {
        48_000 / self.audio_pps.max(1)
    }

    pub fn audio_bytes(&self) -> usize {
        self.audio_packet_bytes.max(STAMP_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let stamp = Stamp {
            publisher: 7,
            kind: MediaKind::Video,
            phase: Phase::Measured,
            counter: 123_456_789,
            sent_ns: 987_654_321_000,
            ssrc: 0xDEAD_BEEF,
            seq: 65_000,
        };
        let mut payload = vec![0u8; 100];
        write_stamp(&mut payload, &stamp);
        fill(&mut payload, stamp.counter);
        assert_eq!(read_stamp(&payload), Some(stamp));
        assert_eq!(read_stamp(&payload[..STAMP_LEN - 1]), None);
        assert_eq!(read_stamp(&[0u8; 40]), None);
    }

    #[test]
    fn default_shape_is_2_5_mbit_in_1100_byte_packets() {
        let shape = MediaShape::default();
        let frame = shape.frame_packets();
        assert_eq!(frame.len(), 10);
        assert!(frame[..9].iter().all(|&s| s == 1100));
        let bits: usize = frame.iter().sum::<usize>() * 8 * 30;
        assert!((2_499_000..=2_500_000).contains(&bits), "{bits}");
        assert_eq!(shape.packets_per_second(), 350.0);
    }
}
