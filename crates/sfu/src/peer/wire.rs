//! How a forwarded packet and a source's codec cross a node link (`crate::span`): plain
//! bytes and plain fields, so that the link's code never names a webrtc-rs type.

use bytes::{Buf, BufMut, Bytes};
use chorus_protocol::MediaKind;
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec};
use serde::{Deserialize, Serialize};

use super::audio::LevelRead;
use super::{MediaPacket, SourceCodec};

/// A [`LevelRead::Absent`] on the wire (loudness is 0 to 127).
const LEVEL_ABSENT: u8 = 0xFF;
/// A [`LevelRead::Invalid`] on the wire.
const LEVEL_INVALID: u8 = 0xFE;
const FLAG_MARKER: u8 = 1;
const FLAG_PADDING: u8 = 2;
/// level, flags, payload type, sequence number, timestamp, SSRC, CSRC count.
const FIXED: usize = 1 + 1 + 1 + 2 + 4 + 4 + 1;

impl MediaPacket {
    /// Appends the packet as a node link carries it: the audio level read at its origin,
    /// the RTP header fields the forwarder reads (no extension: none is forwarded), the
    /// payload.
    pub fn write_link(&self, out: &mut Vec<u8>) {
        let h = &self.packet.header;
        out.put_u8(match self.level {
            LevelRead::Absent => LEVEL_ABSENT,
            LevelRead::Invalid => LEVEL_INVALID,
            LevelRead::Loudness(l) => l & 0x7F,
        });
        out.put_u8(
            if h.marker { FLAG_MARKER } else { 0 } | if h.padding { FLAG_PADDING } else { 0 },
        );
        out.put_u8(h.payload_type);
        out.put_u16(h.sequence_number);
        out.put_u32(h.timestamp);
        out.put_u32(h.ssrc);
        out.put_u8(u8::try_from(h.csrc.len()).unwrap_or(0));
        for csrc in h.csrc.iter().take(usize::from(u8::MAX)) {
            out.put_u32(*csrc);
        }
        out.put_slice(&self.packet.payload);
    }

    /// A packet read back from [`MediaPacket::write_link`]'s bytes (the payload is a
    /// slice of `bytes`, not a copy); None when they are not one.
    pub fn read_link(mut bytes: Bytes) -> Option<MediaPacket> {
        if bytes.len() < FIXED {
            return None;
        }
        let level = match bytes.get_u8() {
            LEVEL_ABSENT => LevelRead::Absent,
            LEVEL_INVALID => LevelRead::Invalid,
            l => LevelRead::Loudness(l & 0x7F),
        };
        let flags = bytes.get_u8();
        let payload_type = bytes.get_u8() & 0x7F;
        let sequence_number = bytes.get_u16();
        let timestamp = bytes.get_u32();
        let ssrc = bytes.get_u32();
        let csrcs = usize::from(bytes.get_u8());
        if bytes.len() < csrcs * 4 {
            return None;
        }
        let csrc = (0..csrcs).map(|_| bytes.get_u32()).collect();
        let header = rtc::rtp::header::Header {
            version: 2,
            padding: flags & FLAG_PADDING != 0,
            extension: false,
            marker: flags & FLAG_MARKER != 0,
            payload_type,
            sequence_number,
            timestamp,
            ssrc,
            csrc,
            extension_profile: 0,
            extensions: Vec::new(),
            extensions_padding: 0,
        };
        Some(MediaPacket {
            packet: rtc::rtp::packet::Packet {
                header,
                payload: bytes,
            },
            level,
        })
    }
}

/// A source's codec as a node link carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodecWire {
    pub kind: MediaKind,
    pub mime_type: String,
    pub clock_rate: u32,
    pub channels: u16,
    pub fmtp: String,
    /// `(type, parameter)` of each RTCP feedback the codec was negotiated with.
    pub feedback: Vec<(String, String)>,
    pub payload_type: u8,
    pub red: Option<u8>,
}

impl SourceCodec {
    pub fn to_wire(&self) -> CodecWire {
        CodecWire {
            kind: self.kind,
            mime_type: self.codec.mime_type.clone(),
            clock_rate: self.codec.clock_rate,
            channels: self.codec.channels,
            fmtp: self.codec.sdp_fmtp_line.clone(),
            feedback: self
                .codec
                .rtcp_feedback
                .iter()
                .map(|f| (f.typ.clone(), f.parameter.clone()))
                .collect(),
            payload_type: self.payload_type,
            red: self.red,
        }
    }

    pub fn from_wire(wire: CodecWire) -> Self {
        SourceCodec {
            kind: wire.kind,
            codec: RTCRtpCodec {
                mime_type: wire.mime_type,
                clock_rate: wire.clock_rate,
                channels: wire.channels,
                sdp_fmtp_line: wire.fmtp,
                rtcp_feedback: wire
                    .feedback
                    .into_iter()
                    .map(|(typ, parameter)| RTCPFeedback { typ, parameter })
                    .collect(),
            },
            payload_type: wire.payload_type,
            red: wire.red,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_crosses_a_link_unchanged() {
        let packet = MediaPacket {
            packet: rtc::rtp::packet::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    marker: true,
                    payload_type: 96,
                    sequence_number: 65535,
                    timestamp: 0xDEAD_BEEF,
                    ssrc: 0x1234_5678,
                    csrc: vec![7, 8],
                    ..Default::default()
                },
                payload: Bytes::from_static(b"frame bytes"),
            },
            level: LevelRead::Loudness(90),
        };
        let mut out = Vec::new();
        packet.write_link(&mut out);
        let back = MediaPacket::read_link(Bytes::from(out.clone())).expect("reads back");
        assert_eq!(back.packet, packet.packet);
        assert!(matches!(back.level, LevelRead::Loudness(90)));
        // anything shorter than its header is refused, whatever the cut
        for cut in 0..FIXED + 8 {
            assert!(
                MediaPacket::read_link(Bytes::from(out[..cut].to_vec())).is_none(),
                "{cut}"
            );
        }
    }
}
