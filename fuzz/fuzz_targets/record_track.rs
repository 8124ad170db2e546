//! The recorder's side of a published track: RTP packets from a publisher (any payload,
//! numbers, clocks, SSRCs, layer switches and arrival times) into a sans-IO
//! `TrackRecorder`, through its jitter buffer, RED unwrapping, frame assembly (VP8, VP9
//! and H.264 depacketizers) and container writers (Ogg Opus, IVF, Annex-B), into memory.
//! Nothing may panic; a finished file starts with its container's signature, and the
//! report's byte count is the file's length.
#![no_main]

use std::io::{self, Cursor};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use chorus_sfu::record::TrackCodec;
use chorus_sfu::record::frames::VideoCodec;
use chorus_sfu::record::track::{RecordPacket, TrackRecorder};
use libfuzzer_sys::fuzz_target;

/// The publisher's RED payload type, when the track has RED.
const RED_PT: u8 = 63;

#[derive(Arbitrary, Debug)]
enum Codec {
    Opus,
    OpusRed,
    Vp8,
    Vp9,
    H264,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A packet: numbers and clock move on from the last one by the deltas given.
    Packet {
        /// One of four SSRCs.
        ssrc: u8,
        seq_delta: i8,
        ts_delta: i16,
        marker: bool,
        red: bool,
        switched: bool,
        payload: Vec<u8>,
        /// How long after the previous event it arrives, in ms.
        after_ms: u8,
    },
    /// Time passes (ms) and the recorder writes what its jitter buffer lets go.
    Poll(u16),
    /// The buffered data is flushed.
    Flush,
}

#[derive(Arbitrary, Debug)]
struct Input {
    codec: Codec,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let codec = match input.codec {
        Codec::Opus => TrackCodec::Opus { red: None },
        Codec::OpusRed => TrackCodec::Opus { red: Some(RED_PT) },
        Codec::Vp8 => TrackCodec::Video(VideoCodec::Vp8),
        Codec::Vp9 => TrackCodec::Video(VideoCodec::Vp9),
        Codec::H264 => TrackCodec::Video(VideoCodec::H264),
    };
    let mut recorder: TrackRecorder<Cursor<Vec<u8>>> = TrackRecorder::new(codec);
    let mut opened = 0u32;
    let mut open = || -> io::Result<Cursor<Vec<u8>>> {
        opened += 1;
        Ok(Cursor::new(Vec::new()))
    };
    let mut now = Instant::now();
    let (mut seq, mut ts) = (1000u16, 90_000u32);
    for op in input.ops {
        match op {
            Op::Packet {
                ssrc,
                seq_delta,
                ts_delta,
                marker,
                red,
                switched,
                payload,
                after_ms,
            } => {
                now += Duration::from_millis(u64::from(after_ms));
                seq = seq.wrapping_add_signed(i16::from(seq_delta));
                ts = ts.wrapping_add_signed(i32::from(ts_delta));
                let packet = RecordPacket {
                    ssrc: 0x1000 + u32::from(ssrc % 4),
                    sequence: seq,
                    timestamp: ts,
                    marker,
                    payload_type: if red { RED_PT } else { 111 },
                    switched,
                    payload: Bytes::from(payload),
                    arrival: now,
                };
                recorder
                    .push(packet, &mut open)
                    .expect("memory writes do not fail");
            }
            Op::Poll(ms) => {
                now += Duration::from_millis(u64::from(ms));
                recorder
                    .poll(now, &mut open)
                    .expect("memory writes do not fail");
            }
            Op::Flush => recorder.flush().expect("memory flushes do not fail"),
        }
        let _ = recorder.take_keyframe_wanted();
    }
    let file = recorder
        .finish(&mut open)
        .expect("memory writes do not fail");
    let report = recorder.report().clone();
    assert!(opened <= 1, "one file per track");
    match file {
        Some(out) => {
            let bytes = out.into_inner();
            assert!(report.started.is_some());
            let signature: &[u8] = match codec {
                TrackCodec::Opus { .. } => b"OggS",
                TrackCodec::Video(VideoCodec::Vp8 | VideoCodec::Vp9) => b"DKIF",
                TrackCodec::Video(VideoCodec::H264) => &[0, 0, 0, 1],
            };
            assert!(
                bytes.is_empty() && matches!(codec, TrackCodec::Video(VideoCodec::H264))
                    || bytes.starts_with(signature),
                "a {codec:?} file starts with its signature"
            );
            assert!(
                report.bytes <= bytes.len() as u64,
                "{report:?} for {} bytes",
                bytes.len()
            );
        }
        None => assert_eq!(opened, 0),
    }
});
