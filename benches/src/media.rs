//! The load's media: how many packets of which size per frame, and the stamp every payload
//! carries so that a receiver measures latency and loss without sharing state with the sender.
//!
//! Payload layout (little endian). Audio starts with an Opus TOC byte, the stamp follows at
//! byte 1. Video starts with a VP8 payload descriptor (S bit set on a frame's first packet
//! only), then [`VP8_HEADER_LEN`] bytes where a frame's first packet carries its VP8 payload
//! header: a real key frame header (frame tag with P = 0, the start code, width and height) on
//! a keyframe, a frame tag with P = 1 otherwise, zeros on the other packets. The server only
//! starts forwarding a video subscription (and only switches simulcast layers) on a VP8 key
//! frame it can parse, and learns each layer's size from it. The stamp follows at byte 11:
//!
//! | bytes (audio; video + 10) | field |
//! |---|---|
//! | 1..5 | magic `CHLT` |
//! | 5..9 | publisher index (global, across rooms) |
//! | 9 | kind: 0 audio, 1 video |
//! | 10 | phase: 0 warm-up, 1 measured |
//! | 11..19 | the publisher's packet counter of this stream (kind, and layer), from 0 |
//! | 19..27 | send time: ns since [`epoch`] (this process's monotonic clock) |
//! | 27..31 | the publisher's RTP SSRC |
//! | 31..33 | the publisher's RTP sequence number |
//! | 33 | simulcast layer (0 = q, 1 = h, 2 = f), 255 for a stream sent as one encoding |
//!
//! The rest is filler. Sender and receivers live in one process, so the stamp and the
//! arrival time are read from the same clock. The SSRC and sequence number are the ones the
//! publisher's socket saw; the server rewrites both on the way to each subscriber, so this is
//! how a received packet finds its send in the publisher's [`crate::wire::WireLog`].

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chorus_protocol::MediaKind;

const MAGIC: &[u8; 4] = b"CHLT";
/// Bytes of the stamp itself, magic to layer.
const STAMP_BODY: usize = 33;
/// The slot after a video packet's descriptor for the VP8 payload header: a key frame's is
/// 10 bytes (3-byte frame tag, 3-byte start code, width, height).
pub const VP8_HEADER_LEN: usize = 10;
/// Where the stamp starts in an audio payload (after the TOC byte) and in a video payload
/// (after the descriptor and the VP8 header slot).
const AUDIO_STAMP_AT: usize = 1;
const VIDEO_STAMP_AT: usize = 1 + VP8_HEADER_LEN;
/// Bytes of a video payload's codec prefix and stamp: the smallest payload the load sends.
pub const STAMP_LEN: usize = VIDEO_STAMP_AT + STAMP_BODY;
/// VP8 payload descriptor of a frame's first packet: S bit set, partition 0.
const VP8_DESCRIPTOR_START: u8 = 0x10;
/// VP8 payload descriptor of the frame's other packets: a continuation of partition 0.
const VP8_DESCRIPTOR_CONTINUED: u8 = 0x00;
/// VP8 frame tag, first byte: P = 0 (key frame), version 0, show_frame = 1.
const VP8_TAG_KEY: u8 = 0x10;
/// VP8 frame tag, first byte: P = 1 (interframe), version 0, show_frame = 1.
const VP8_TAG_INTER: u8 = 0x11;
/// The start code after a key frame's frame tag.
const VP8_START_CODE: [u8; 3] = [0x9d, 0x01, 0x2a];
/// The layer byte of a stream sent as one encoding.
const NO_LAYER: u8 = 0xff;
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
    /// The simulcast layer (0 the lowest); `None` for a stream sent as one encoding.
    pub layer: Option<u8>,
}

/// Where a video packet sits in its frame, for its VP8 descriptor and header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePart {
    /// The first packet of a key frame of this width and height.
    KeyStart { width: u16, height: u16 },
    /// The first packet of an interframe.
    InterStart,
    /// Any later packet of a frame.
    Continued,
}

/// Writes a video payload's VP8 descriptor and header slot (the bytes before the stamp).
///
/// # Panics
///
/// If `payload` is shorter than [`STAMP_LEN`].
pub fn write_vp8_prefix(payload: &mut [u8], part: FramePart) {
    let header = &mut payload[1..VIDEO_STAMP_AT];
    header.fill(0);
    payload[0] = match part {
        FramePart::Continued => VP8_DESCRIPTOR_CONTINUED,
        FramePart::KeyStart { .. } | FramePart::InterStart => VP8_DESCRIPTOR_START,
    };
    match part {
        FramePart::KeyStart { width, height } => {
            let header = &mut payload[1..VIDEO_STAMP_AT];
            header[0] = VP8_TAG_KEY;
            header[3..6].copy_from_slice(&VP8_START_CODE);
            // the top two bits are the scaling mode, 0
            header[6..8].copy_from_slice(&(width & 0x3fff).to_le_bytes());
            header[8..10].copy_from_slice(&(height & 0x3fff).to_le_bytes());
        }
        FramePart::InterStart => payload[1] = VP8_TAG_INTER,
        FramePart::Continued => {}
    }
}

/// Writes the stamp after the codec prefix of `payload`: the Opus TOC byte for audio (written
/// here), the VP8 descriptor and header slot for video (written by [`write_vp8_prefix`]).
///
/// # Panics
///
/// If `payload` is shorter than [`STAMP_LEN`] (video) or 34 bytes (audio).
pub fn write_stamp(payload: &mut [u8], stamp: &Stamp) {
    let at = match stamp.kind {
        MediaKind::Audio => {
            payload[0] = OPUS_TOC;
            AUDIO_STAMP_AT
        }
        MediaKind::Video => VIDEO_STAMP_AT,
    };
    let body = &mut payload[at..at + STAMP_BODY];
    body[0..4].copy_from_slice(MAGIC);
    body[4..8].copy_from_slice(&stamp.publisher.to_le_bytes());
    body[8] = match stamp.kind {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
    };
    body[9] = stamp.phase as u8;
    body[10..18].copy_from_slice(&stamp.counter.to_le_bytes());
    body[18..26].copy_from_slice(&stamp.sent_ns.to_le_bytes());
    body[26..30].copy_from_slice(&stamp.ssrc.to_le_bytes());
    body[30..32].copy_from_slice(&stamp.seq.to_le_bytes());
    body[32] = stamp.layer.unwrap_or(NO_LAYER);
}

/// Reads a stamp written by [`write_stamp`]; `None` for any other payload.
pub fn read_stamp(payload: &[u8]) -> Option<Stamp> {
    // The magic cannot appear at the audio position of a video payload: byte 1 is a VP8
    // frame tag (0x10 or 0x11) or 0.
    let body = [AUDIO_STAMP_AT, VIDEO_STAMP_AT]
        .into_iter()
        .filter_map(|at| payload.get(at..at + STAMP_BODY))
        .find(|body| &body[0..4] == MAGIC)?;
    let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap_or([0; 8]));
    let u16_at = |i: usize| u16::from_le_bytes(body[i..i + 2].try_into().unwrap_or([0; 2]));
    Some(Stamp {
        publisher: u32_at(4),
        kind: match body[8] {
            0 => MediaKind::Audio,
            1 => MediaKind::Video,
            _ => return None,
        },
        phase: match body[9] {
            0 => Phase::Warmup,
            1 => Phase::Measured,
            _ => return None,
        },
        counter: u64_at(10),
        sent_ns: u64_at(18),
        ssrc: u32_at(26),
        seq: u16_at(30),
        layer: match body[32] {
            NO_LAYER => None,
            layer => Some(layer),
        },
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
    /// Video sent as three simulcast layers (rids q, h, f) sharing `video_bitrate` as
    /// [`LAYER_SHARES`] says, instead of one encoding.
    pub simulcast: bool,
    /// Audio as Opus RED (RFC 2198): each packet repeats the previous frame before its own
    /// (see `load::send_audio`).
    pub red: bool,
}

/// The simulcast layers' shares of the video bit rate, lowest first: about what a camera's
/// ladder of 320×180, 640×360 and 1280×720 at 30 fps sends (150 kbit/s, 500 kbit/s and
/// 1.85 Mbit/s of 2.5 Mbit/s).
pub const LAYER_SHARES: [f64; 3] = [0.06, 0.20, 0.74];

/// The simulcast layers' sizes, lowest first: a quarter, half and full of 1280×720. Written
/// in each layer's key frames, which is where the server learns them from.
pub const LAYER_SIZES: [(u16, u16); 3] = [(320, 180), (640, 360), (1280, 720)];

/// The size written in the key frames of video sent as one encoding.
pub const SINGLE_SIZE: (u16, u16) = (1280, 720);

/// The rids of the simulcast layers, lowest first (Chorus's `q`, `h`, `f`).
pub const LAYER_RIDS: [&str; 3] = ["q", "h", "f"];

impl Default for MediaShape {
    fn default() -> Self {
        Self {
            video_bitrate: 2_500_000,
            video_packet_bytes: 1100,
            fps: 30,
            audio: true,
            audio_pps: 50,
            audio_packet_bytes: 80,
            simulcast: false,
            red: false,
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

    /// Payload sizes of the packets of one frame of simulcast layer `layer`: its share of
    /// the bit rate, cut into as few packets of at most `video_packet_bytes` as hold it, of
    /// equal size (as a VP8 packetizer does), so a small layer sends small packets.
    pub fn layer_frame_packets(&self, layer: usize) -> Vec<usize> {
        let share = LAYER_SHARES[layer.min(LAYER_SHARES.len() - 1)];
        let frame_bytes =
            ((self.video_bitrate as f64 * share) / 8.0 / f64::from(self.fps.max(1))) as usize;
        let frame_bytes = frame_bytes.max(STAMP_LEN);
        let max = self.video_packet_bytes.max(STAMP_LEN);
        let count = frame_bytes.div_ceil(max);
        let (size, extra) = (frame_bytes / count, frame_bytes % count);
        // the first `extra` packets carry one byte more, so the sizes add up to the frame
        (0..count).map(|i| size + usize::from(i < extra)).collect()
    }

    /// Video packets per second of simulcast layer `layer`, or of the one encoding (`None`).
    pub fn video_pps(&self, layer: Option<usize>) -> f64 {
        let per_frame = match layer {
            Some(layer) => self.layer_frame_packets(layer).len(),
            None => self.frame_packets().len(),
        };
        per_frame as f64 * f64::from(self.fps)
    }

    /// Audio packets per second, 0 without audio.
    pub fn audio_pps(&self) -> f64 {
        if self.audio {
            f64::from(self.audio_pps)
        } else {
            0.0
        }
    }

    pub fn frame_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.fps.max(1)))
    }

    pub fn audio_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.audio_pps.max(1)))
    }

    /// Packets per second one publisher sends (simulcast: all three layers).
    pub fn packets_per_second(&self) -> f64 {
        let video = if self.simulcast {
            (0..LAYER_SHARES.len())
                .map(|l| self.video_pps(Some(l)))
                .sum()
        } else {
            self.video_pps(None)
        };
        video + self.audio_pps()
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
            layer: Some(2),
        };
        for part in [
            FramePart::KeyStart {
                width: 1280,
                height: 720,
            },
            FramePart::InterStart,
            FramePart::Continued,
        ] {
            let mut payload = vec![0u8; 100];
            write_vp8_prefix(&mut payload, part);
            write_stamp(&mut payload, &stamp);
            fill(&mut payload, stamp.counter);
            assert_eq!(read_stamp(&payload), Some(stamp));
            assert_eq!(read_stamp(&payload[..STAMP_LEN - 1]), None);
            // what the server reads of it
            assert_eq!(
                chorus_sfu::layer::vp8_is_keyframe(&payload),
                matches!(part, FramePart::KeyStart { .. })
            );
            let size = chorus_sfu::layer::vp8_keyframe_size(&payload);
            assert_eq!(
                size,
                matches!(part, FramePart::KeyStart { .. }).then_some((1280, 720))
            );
        }
        let audio = Stamp {
            kind: MediaKind::Audio,
            layer: None,
            ..stamp
        };
        let mut payload = vec![0u8; 80];
        write_stamp(&mut payload, &audio);
        fill(&mut payload, audio.counter);
        assert_eq!(read_stamp(&payload), Some(audio));
        assert_eq!(read_stamp(&[0u8; 60]), None);
    }

    #[test]
    fn simulcast_layers_split_the_bit_rate_like_a_camera() {
        let shape = MediaShape {
            simulcast: true,
            ..MediaShape::default()
        };
        let frames: Vec<Vec<usize>> = (0..3).map(|l| shape.layer_frame_packets(l)).collect();
        assert_eq!(frames[0], vec![625]);
        assert_eq!(frames[1], vec![1042, 1041]);
        assert_eq!(frames[2].len(), 8);
        assert!(frames[2].iter().all(|&s| (963..=964).contains(&s)));
        let kbit = |f: &Vec<usize>| f.iter().sum::<usize>() * 8 * 30 / 1000;
        // whole bytes per frame: up to 1 kbit/s under the share
        for (frame, want) in frames.iter().zip([150, 500, 1850]) {
            assert!((want - 1..=want).contains(&kbit(frame)), "{frame:?}");
        }
        assert_eq!(shape.packets_per_second(), 30.0 + 60.0 + 240.0 + 50.0);
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
