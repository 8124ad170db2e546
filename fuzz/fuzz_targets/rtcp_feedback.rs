//! A subscriber's decrypted RTCP: webrtc-rs's parse, the feedback tap, and what the peer
//! does with what the tap lets through (transport-cc feedback into the downlink estimate,
//! NACKs mapped back to source packets, keyframe requests), interleaved with forwarded
//! packets so that the feedback names packets the estimator has a record of.
//!
//! Besides raw bytes, an op can take one of a few well-formed compound packets (what a
//! browser sends: receiver report + transport-cc, NACK, PLI, FIR) and change some of its
//! bytes, which reaches the parsers' inner branches far sooner than bytes from nothing.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use chorus_sfu::peer::fuzzing::Feedback;
use libfuzzer_sys::fuzz_target;
use rtc::rtcp::payload_feedbacks::full_intra_request::{FirEntry, FullIntraRequest};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
    PacketStatusChunk, RecvDelta, RunLengthChunk, StatusChunkTypeTcc, StatusVectorChunk,
    SymbolSizeTypeTcc, SymbolTypeTcc, TransportLayerCc,
};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;

/// The subscription's SSRC, which the browser's feedback names.
const SSRC: u32 = 0xabcd_0001;
/// The browser's own RTCP SSRC.
const BROWSER: u32 = 0x0b0b_0001;

/// Well-formed compound packets of the kinds a browser sends.
fn known() -> &'static [Vec<u8>] {
    static KNOWN: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let report = || -> Box<dyn rtc::rtcp::Packet> {
            Box::new(ReceiverReport {
                ssrc: BROWSER,
                reports: vec![ReceptionReport {
                    ssrc: SSRC,
                    fraction_lost: 3,
                    total_lost: 7,
                    last_sequence_number: 1234,
                    jitter: 40,
                    last_sender_report: 0x1234_5678,
                    delay: 100,
                }],
                ..Default::default()
            })
        };
        let received = |delta| RecvDelta {
            type_tcc_packet: if (0..=63_750).contains(&delta) {
                SymbolTypeTcc::PacketReceivedSmallDelta
            } else {
                SymbolTypeTcc::PacketReceivedLargeDelta
            },
            delta,
        };
        let twcc = TransportLayerCc {
            sender_ssrc: BROWSER,
            media_ssrc: SSRC,
            base_sequence_number: 0,
            packet_status_count: 10,
            reference_time: 100,
            fb_pkt_count: 1,
            packet_chunks: vec![
                PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                    type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                    packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
                    run_length: 4,
                }),
                PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                    type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                    symbol_size: SymbolSizeTypeTcc::TwoBit,
                    symbol_list: vec![
                        SymbolTypeTcc::PacketNotReceived,
                        SymbolTypeTcc::PacketReceivedLargeDelta,
                        SymbolTypeTcc::PacketReceivedSmallDelta,
                        SymbolTypeTcc::PacketReceivedSmallDelta,
                        SymbolTypeTcc::PacketNotReceived,
                        SymbolTypeTcc::PacketReceivedSmallDelta,
                        SymbolTypeTcc::PacketNotReceived,
                    ],
                }),
            ],
            recv_deltas: [1000, 250, 4000, 500, 250, -1000, 750, 250]
                .into_iter()
                .map(received)
                .collect(),
        };
        let nack = TransportLayerNack {
            sender_ssrc: BROWSER,
            media_ssrc: SSRC,
            nacks: vec![
                NackPair {
                    packet_id: 10,
                    lost_packets: 0b101,
                },
                NackPair {
                    packet_id: 65_530,
                    lost_packets: 0xffff,
                },
            ],
        };
        let pli = PictureLossIndication {
            sender_ssrc: BROWSER,
            media_ssrc: SSRC,
        };
        let fir = FullIntraRequest {
            sender_ssrc: BROWSER,
            media_ssrc: SSRC,
            fir: vec![FirEntry {
                ssrc: SSRC,
                sequence_number: 1,
            }],
        };
        let compounds: Vec<Vec<Box<dyn rtc::rtcp::Packet>>> = vec![
            vec![report(), Box::new(twcc.clone())],
            vec![Box::new(twcc)],
            vec![report(), Box::new(nack)],
            vec![report(), Box::new(pli)],
            vec![Box::new(fir)],
            vec![report()],
        ];
        compounds
            .iter()
            .map(|packets| {
                rtc::rtcp::packet::marshal(packets)
                    .expect("a known packet")
                    .to_vec()
            })
            .collect()
    })
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A packet forwarded to the subscriber.
    Forward {
        source: u8,
        seq: u16,
        ts: u32,
        switching: bool,
        size: u16,
    },
    /// Decrypted RTCP from the subscriber.
    Rtcp(Vec<u8>),
    /// One of the [`known`] packets, with bytes changed: (offset, xor) pairs.
    Known { which: u8, edits: Vec<(u16, u8)> },
    /// Time passes, in ms.
    Wait(u16),
}

fuzz_target!(|ops: Vec<Op>| {
    let mut now = Instant::now();
    let mut leg = Feedback::new(SSRC, now);
    for op in ops {
        match op {
            Op::Forward {
                source,
                seq,
                ts,
                switching,
                size,
            } => {
                let packet = Packet {
                    header: Header {
                        version: 2,
                        payload_type: 96,
                        sequence_number: seq,
                        timestamp: ts,
                        ssrc: 0x1000 + u32::from(source % 3),
                        ..Default::default()
                    },
                    payload: Bytes::from(vec![0; usize::from(size % 1400)]),
                };
                assert!(leg.forward(&packet, switching, now).is_some());
            }
            Op::Rtcp(_) | Op::Known { .. } => {
                let bytes = match op {
                    Op::Rtcp(bytes) => bytes,
                    Op::Known { which, edits } => {
                        let known = known();
                        let mut bytes = known[usize::from(which) % known.len()].clone();
                        for (at, xor) in edits {
                            let len = bytes.len();
                            bytes[usize::from(at) % len] ^= xor;
                        }
                        bytes
                    }
                    _ => unreachable!(),
                };
                let outcome = leg.rtcp(&bytes, now);
                if !outcome.delivered {
                    assert!(!outcome.keyframe && outcome.lost.is_empty());
                }
                if let Some(bps) = leg.estimate() {
                    assert!(bps > 0, "an estimate of nothing");
                }
            }
            Op::Wait(ms) => now += Duration::from_millis(u64::from(ms)),
        }
    }
});
