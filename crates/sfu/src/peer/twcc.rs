//! Transport-wide congestion control on the subscriber leg: the stamp that numbers every
//! forwarded packet, and the reading of the browser's feedback into the estimator's terms.
//!
//! The subscriber negotiates the transport-cc header extension (draft-holmer-rmcat-
//! transport-wide-cc-extensions-01) and its `transport-cc` RTCP feedback. Every packet
//! Chorus sends on that peer, of every subscription and retransmissions included, carries
//! the next transport-wide sequence number; the browser answers with which of them arrived
//! and when, and [`crate::estimate`] turns that into the subscriber's downlink estimate.

use std::time::Instant;

use bytes::Bytes;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
    PacketStatusChunk, SymbolTypeTcc, TransportLayerCc,
};
use rtc::rtp::header::{EXTENSION_PROFILE_ONE_BYTE, Extension};
use rtc::rtp::packet::Packet;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};

use crate::estimate::{Arrival, Estimator, INITIAL_BPS, twcc_arrivals};

/// The transport-cc header extension's URI.
pub(super) const URI: &str = rtc::sdp::extmap::TRANSPORT_CC_URI;

/// What an SRTP packet adds to the RTP packet it protects (the AES-GCM tag; the HMAC of
/// the AES-CM profiles is 10 or 4 bytes), and the UDP and IPv4 headers around it: the
/// estimator weighs what the link carries, not what the codec made.
const WIRE_OVERHEAD: usize = 16 + 8 + 20;

/// The transport-cc extension block a copy carries (profile, length, one byte of id and
/// length, two of number, one of padding).
const EXTENSION_BLOCK: usize = 8;

/// The padding webrtc-rs's RTP writer appends to a packet whose padding bit is set and
/// whose payload is empty (a probe's padding-only packet, see `Peer::send_padding`).
pub(super) const PADDING_BYTES: usize = 4;

/// What a forwarded copy weighs beyond its RTP header and payload.
pub(crate) const COPY_OVERHEAD: usize = EXTENSION_BLOCK + WIRE_OVERHEAD;

/// Offers transport-cc on a subscriber leg: the header extension on audio and video (every
/// packet on the link counts), and the `transport-cc` feedback on both kinds of codec.
pub(super) fn negotiate(engine: &mut MediaEngine) -> Result<(), rtc::shared::error::Error> {
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        engine.register_feedback(
            RTCPFeedback {
                typ: "transport-cc".to_owned(),
                parameter: String::new(),
            },
            kind,
        );
        engine.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: URI.to_owned(),
            },
            kind,
            None,
        )?;
    }
    Ok(())
}

/// Every 16-bit sequence number, big-endian, one after another: the stamp's payload is a
/// two-byte slice of this table. webrtc-rs's header extension owns its payload as `Bytes`,
/// and a `Bytes` of a static slice is free to make, where one of a fresh buffer would be an
/// allocation per forwarded packet.
static SEQ_BYTES: [u8; 2 << 16] = {
    let mut table = [0u8; 2 << 16];
    let mut seq = 0usize;
    while seq < 1 << 16 {
        table[2 * seq] = (seq >> 8) as u8;
        table[2 * seq + 1] = seq as u8;
        seq += 1;
    }
    table
};

/// The transport-cc extension carrying `seq`, under the id the subscriber negotiated.
pub(super) fn extension(id: u8, seq: u16) -> Extension {
    let at = 2 * usize::from(seq);
    Extension {
        id,
        payload: Bytes::from_static(&SEQ_BYTES[at..at + 2]),
    }
}

/// The send side of one subscriber peer: the numbering of its packets and the estimate of
/// its downlink that the feedback on them gives.
pub(super) struct SendSide {
    /// The transport-wide number of the next packet.
    next: u16,
    estimator: Estimator,
    /// Whether any feedback has come: until then there is no estimate to go by (a client
    /// that negotiated no transport-cc never sends any).
    fed: bool,
    /// The packets of the feedback being read, reused from one feedback to the next.
    arrivals: Vec<Arrival>,
}

impl SendSide {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            next: 0,
            estimator: Estimator::new(INITIAL_BPS, now),
            fed: false,
            arrivals: Vec::new(),
        }
    }

    /// Numbers one packet going out now, under the negotiated extension `id`, and tells
    /// the estimator of it. The one allocation is the header's list of one extension:
    /// webrtc-rs's RTP header owns its extensions in a `Vec`, and its SRTP stage drops the
    /// packet after encrypting, so a list cannot be handed back and reused.
    pub(super) fn stamp(&mut self, packet: &mut Packet, id: u8, now: Instant) {
        let seq = self.next;
        self.next = seq.wrapping_add(1);
        let header = &mut packet.header;
        header.extension = true;
        header.extension_profile = EXTENSION_PROFILE_ONE_BYTE;
        header.extensions = vec![extension(id, seq)];
        let size = 12
            + 4 * header.csrc.len()
            + packet.payload.len()
            + usize::from(header.padding) * PADDING_BYTES
            + COPY_OVERHEAD;
        self.estimator.on_sent(seq, size, now);
    }

    /// Reads one transport-cc feedback from the browser.
    pub(super) fn on_feedback(&mut self, cc: &TransportLayerCc, now: Instant) {
        arrivals(cc, &mut self.arrivals);
        self.estimator.on_feedback(&self.arrivals, now);
        self.fed = true;
    }

    /// The downlink estimate in bits per second, once feedback has come, when it was last
    /// cut for congestion, and what arrives.
    pub(super) fn estimate(&self) -> Option<crate::allocate::Estimate> {
        self.fed.then(|| crate::allocate::Estimate {
            bps: self.estimator.estimate(),
            congested_at: self.estimator.last_decrease(),
            acked_bps: self.estimator.acked_bps(),
        })
    }
}

/// What one transport-cc feedback says, per packet (see [`twcc_arrivals`], which reads
/// the numbers; this only lays webrtc-rs's parse out as those numbers). The status chunks
/// give each packet's symbol in order, run-length or vector; the receive deltas are
/// already in microseconds in webrtc-rs's parse. `out` is cleared first, so that one
/// buffer serves every feedback.
pub(super) fn arrivals(cc: &TransportLayerCc, out: &mut Vec<Arrival>) {
    let symbols = cc.packet_chunks.iter().flat_map(|chunk| {
        let (run, list): (_, &[SymbolTypeTcc]) = match chunk {
            PacketStatusChunk::RunLengthChunk(run) => (
                std::iter::repeat_n(run.packet_status_symbol, usize::from(run.run_length)),
                &[],
            ),
            PacketStatusChunk::StatusVectorChunk(vector) => (
                std::iter::repeat_n(SymbolTypeTcc::PacketNotReceived, 0),
                &vector.symbol_list,
            ),
        };
        run.chain(list.iter().copied()).map(|symbol| symbol as u8)
    });
    twcc_arrivals(
        cc.base_sequence_number,
        cc.reference_time,
        cc.packet_status_count,
        symbols,
        cc.recv_deltas.iter().map(|d| d.delta),
        out,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        RecvDelta, RunLengthChunk, StatusChunkTypeTcc, StatusVectorChunk, SymbolSizeTypeTcc,
    };

    #[test]
    fn the_stamp_is_the_sequence_number_big_endian() {
        for seq in [0u16, 1, 0x1234, 0xff00, u16::MAX] {
            let ext = extension(5, seq);
            assert_eq!(ext.id, 5);
            assert_eq!(&ext.payload[..], &seq.to_be_bytes());
        }
    }

    #[test]
    fn every_packet_gets_the_next_number_and_the_numbers_wrap() {
        let now = Instant::now();
        let mut side = SendSide::new(now);
        side.next = u16::MAX;
        let mut numbers = Vec::new();
        for _ in 0..2 {
            let mut packet = Packet::default();
            side.stamp(&mut packet, 3, now);
            assert!(packet.header.extension);
            assert_eq!(packet.header.extension_profile, EXTENSION_PROFILE_ONE_BYTE);
            let payload = packet.header.get_extension(3).expect("stamped");
            numbers.push(u16::from_be_bytes([payload[0], payload[1]]));
        }
        assert_eq!(numbers, [u16::MAX, 0]);
    }

    fn received(delta_us: i64) -> RecvDelta {
        RecvDelta {
            type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
            delta: delta_us,
        }
    }

    #[test]
    fn feedback_reads_runs_and_vectors_in_order_with_accumulated_times() {
        let cc = TransportLayerCc {
            base_sequence_number: u16::MAX - 1,
            packet_status_count: 5,
            reference_time: 2,
            packet_chunks: vec![
                PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                    type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                    packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
                    run_length: 2,
                }),
                PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                    type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                    symbol_size: SymbolSizeTypeTcc::TwoBit,
                    symbol_list: vec![
                        SymbolTypeTcc::PacketNotReceived,
                        SymbolTypeTcc::PacketReceivedLargeDelta,
                        SymbolTypeTcc::PacketReceivedSmallDelta,
                        // Padding symbols past the status count are ignored.
                        SymbolTypeTcc::PacketNotReceived,
                    ],
                }),
            ],
            recv_deltas: vec![received(1000), received(250), received(-500), received(750)],
            ..Default::default()
        };
        let mut out = Vec::new();
        arrivals(&cc, &mut out);
        let base = 128_000;
        assert_eq!(
            out,
            vec![
                Arrival {
                    seq: u16::MAX - 1,
                    at_us: Some(base + 1000)
                },
                Arrival {
                    seq: u16::MAX,
                    at_us: Some(base + 1250)
                },
                Arrival {
                    seq: 0,
                    at_us: None
                },
                Arrival {
                    seq: 1,
                    at_us: Some(base + 750)
                },
                Arrival {
                    seq: 2,
                    at_us: Some(base + 1500)
                },
            ]
        );
    }

    #[test]
    fn a_feedback_short_of_deltas_is_read_as_far_as_it_goes() {
        let cc = TransportLayerCc {
            base_sequence_number: 10,
            packet_status_count: 3,
            packet_chunks: vec![PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
                run_length: 3,
            })],
            recv_deltas: vec![received(250)],
            ..Default::default()
        };
        let mut out = vec![Arrival {
            seq: 1,
            at_us: None,
        }];
        arrivals(&cc, &mut out);
        assert_eq!(
            out,
            vec![Arrival {
                seq: 10,
                at_us: Some(250)
            }]
        );
    }
}
