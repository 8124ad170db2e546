//! The RTP path after decryption, for one subscription of a simulcast video: keyframe
//! detection (VP8, H.264), the layer switch, the header rewrite, the NACK history and the
//! retransmission lookup, driven by a sequence of packets, allocation decisions and NACKs.
//!
//! Checked on the way: a VP8 keyframe size comes only with a keyframe; a packet is sent
//! only on the layer being forwarded; a copy carries the subscription's SSRC and mapped
//! payload type; whatever `source_of` says a sent number was is the packet sent; and a
//! retransmission carries the number it first had, and the payload it first had. A VP8
//! copy differs from its source only in the descriptor's picture id and TL0PICIDX, which
//! the subscription keeps continuous across switches (`vp8::Vp8Rewriter`).
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use chorus_sfu::history::History;
use chorus_sfu::layer::{
    Forward, LayerSwitch, h264_is_keyframe, vp8_is_keyframe, vp8_keyframe_size,
};
use chorus_sfu::peer::HeaderRewrite;
use chorus_sfu::vp8::{Vp8Rewriter, descriptor};
use libfuzzer_sys::fuzz_target;
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::Unmarshal;

/// The subscription's own SSRC.
const OUT_SSRC: u32 = 0x5eed_0001;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Codec {
    Vp8,
    H264,
    /// Audio, or a codec the switch cannot parse: every packet counts as a keyframe.
    Other,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A packet of one layer, from one of a few source SSRCs.
    Packet {
        layer: u8,
        source: u8,
        seq: u16,
        ts: u32,
        payload_type: u8,
        marker: bool,
        payload: Vec<u8>,
    },
    /// A packet exactly as decrypted bytes: webrtc-rs's parse, then layer `layer`.
    Raw { layer: u8, bytes: Vec<u8> },
    /// Allocation picks a layer (or pauses).
    Target(Option<u8>),
    /// Congestion cuts to a layer at once.
    Cut(Option<u8>),
    /// The subscriber NACKs one of its sequence numbers.
    Nack(u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    codec: Codec,
    ops: Vec<Op>,
}

struct Subscription {
    codec: Codec,
    switch: LayerSwitch,
    rewrite: HeaderRewrite,
    /// One history per layer, as the worker keeps them.
    history: [History<Packet>; 3],
}

impl Subscription {
    fn packet(&mut self, layer: u8, packet: Packet) {
        let payload = &packet.payload[..];
        let keyframe = match self.codec {
            Codec::Vp8 => {
                let keyframe = vp8_is_keyframe(payload);
                if vp8_keyframe_size(payload).is_some() {
                    assert!(keyframe, "a VP8 size from a packet that is not a keyframe");
                }
                keyframe
            }
            Codec::H264 => h264_is_keyframe(payload),
            Codec::Other => true,
        };
        let decision = self.switch.on_packet(layer, keyframe);
        let copy = match decision {
            Forward::Drop => None,
            Forward::Send => {
                assert_eq!(self.switch.current(), Some(layer));
                self.rewrite.apply(&packet).ok()
            }
            Forward::SwitchAndSend => {
                assert!(keyframe);
                assert_eq!(self.switch.current(), Some(layer));
                self.rewrite.apply_switching(&packet).ok()
            }
        };
        if let Some(copy) = copy {
            let h = &copy.header;
            assert_eq!(h.ssrc, OUT_SSRC);
            assert_eq!(
                Some(h.payload_type),
                self.rewrite.pt.get(packet.header.payload_type)
            );
            assert!(
                h.extensions.is_empty() && !h.extension,
                "a source extension went through"
            );
            assert_eq!(copy.payload.len(), packet.payload.len());
            let rewritten = match (self.codec, descriptor(&packet.payload)) {
                (Codec::Vp8, Some(d)) => {
                    let mut at: Vec<usize> = d.tl0.into_iter().collect();
                    if let Some((i, long)) = d.picture_id {
                        at.push(i);
                        if long {
                            at.push(i + 1);
                        }
                    }
                    at
                }
                _ => Vec::new(),
            };
            for (i, (a, b)) in copy.payload.iter().zip(packet.payload.iter()).enumerate() {
                assert!(
                    a == b || rewritten.contains(&i),
                    "byte {i} of the payload changed"
                );
            }
            if let Some(source) = self.rewrite.seq.source_of(h.sequence_number) {
                assert_eq!(source, (packet.header.ssrc, packet.header.sequence_number));
            }
            if let Ok(again) = self.rewrite.resend(&packet) {
                assert_eq!(
                    (again.header.sequence_number, again.header.timestamp),
                    (h.sequence_number, h.timestamp)
                );
                assert_eq!(again.payload, copy.payload);
            }
        }
        if let Some(history) = self.history.get_mut(usize::from(layer)) {
            history.store(packet.header.ssrc, packet.header.sequence_number, packet);
        }
    }

    fn nack(&mut self, out_seq: u16) {
        let Some((ssrc, seq)) = self.rewrite.seq.source_of(out_seq) else {
            return;
        };
        for history in &self.history {
            if let Some(packet) = history.get(ssrc, seq) {
                assert_eq!(
                    (packet.header.ssrc, packet.header.sequence_number),
                    (ssrc, seq)
                );
                if let Ok(again) = self.rewrite.resend(packet) {
                    assert_eq!(again.header.sequence_number, out_seq);
                    assert_eq!(again.header.ssrc, OUT_SSRC);
                }
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut rewrite = HeaderRewrite::new(OUT_SSRC);
    // The subscriber negotiated VP8 as 96, H.264 as 102 and Opus as 111 (each source PT
    // maps to another number, as between two browsers).
    rewrite.pt.insert(96, 98);
    rewrite.pt.insert(102, 100);
    rewrite.pt.insert(111, 109);
    if matches!(input.codec, Codec::Vp8) {
        rewrite.vp8 = Some(Vp8Rewriter::default());
    }
    let mut sub = Subscription {
        codec: input.codec,
        switch: LayerSwitch::new(),
        rewrite,
        history: Default::default(),
    };
    for op in input.ops {
        match op {
            Op::Packet {
                layer,
                source,
                seq,
                ts,
                payload_type,
                marker,
                payload,
            } => {
                let packet = Packet {
                    header: Header {
                        version: 2,
                        marker,
                        payload_type: payload_type & 0x7f,
                        sequence_number: seq,
                        timestamp: ts,
                        ssrc: 0x1000 + u32::from(source % 4),
                        ..Default::default()
                    },
                    payload: Bytes::from(payload),
                };
                sub.packet(layer % 4, packet);
            }
            Op::Raw { layer, bytes } => {
                if let Ok(packet) = Packet::unmarshal(&mut &bytes[..]) {
                    sub.packet(layer % 4, packet);
                }
            }
            Op::Target(target) => sub.switch.set_target(target),
            Op::Cut(target) => sub.switch.cut_to(target),
            Op::Nack(seq) => sub.nack(seq),
        }
    }
});
