//! VP8's RTP payload descriptor (RFC 7741), and keeping one subscription's picture ids and
//! TL0PICIDX continuous when its source changes, sans-IO.
//!
//! Each simulcast layer is its own VP8 stream with its own picture id and TL0PICIDX
//! counters, which start at random values. A receiver's decoder tracks frame references by
//! picture id (Chromium's VP8 reference finder), so a subscription that moves from one
//! layer to another must not show it the new layer's numbers as they are: a jump backwards
//! (about one switch in two) makes every later frame look older than the last one, and the
//! picture freezes until the new layer's numbers pass the old ones, seconds later, however
//! many keyframes come meanwhile. Like the sequence numbers and timestamps
//! ([`crate::rewrite::SeqRewriter`]), a subscription's picture ids and TL0PICIDX go on from
//! the last ones sent whenever the source changes or a paused subscription resumes.
//!
//! The rewritten fields are in the payload, which the publisher's packet shares with every
//! subscription: a subscription whose numbers are offset writes its copy of the payload
//! into a buffer of its own, reused as soon as the peer connection has sent the copies
//! made from it (no allocation in the steady state).

use bytes::{Bytes, BytesMut};

/// The X bit of the first descriptor byte: an extension byte follows.
const X_BIT: u8 = 0x80;
/// The S bit of the first descriptor byte: this packet starts a VP8 partition.
const S_BIT: u8 = 0x10;
/// The PID field of the first descriptor byte: the partition index.
const PID_MASK: u8 = 0x07;
/// The I bit of the extension byte: a PictureID follows.
const I_BIT: u8 = 0x80;
/// The L bit of the extension byte: a TL0PICIDX byte follows.
const L_BIT: u8 = 0x40;
/// The T bit of the extension byte: a TID/Y/KEYIDX byte follows.
const T_BIT: u8 = 0x20;
/// The K bit of the extension byte: a TID/Y/KEYIDX byte follows.
const K_BIT: u8 = 0x10;
/// The M bit of the first PictureID byte: the PictureID is 15 bits, not 7.
const M_BIT: u8 = 0x80;

/// The 15-bit picture id space.
const PICTURE_ID_MASK: u16 = 0x7fff;
/// The 7-bit one.
const SHORT_PICTURE_ID_MASK: u16 = 0x7f;

/// Bytes a subscription's payload buffer grows by when it runs out: a few packets, so
/// that copies queued in the peer connection at once share one allocation.
const SCRATCH_BYTES: usize = 8 * 1024;

/// Where the fields of one packet's payload descriptor are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// The packet starts partition 0 of a frame (S = 1, PID = 0): only such a packet
    /// carries the VP8 payload header.
    pub starts_frame: bool,
    /// Where the VP8 payload starts, after the descriptor.
    pub payload_offset: usize,
    /// Where the PictureID is, and whether it is 15 bits long.
    pub picture_id: Option<(usize, bool)>,
    /// Where the TL0PICIDX byte is.
    pub tl0: Option<usize>,
}

/// Reads a VP8 payload descriptor; `None` when it is truncated.
pub fn descriptor(payload: &[u8]) -> Option<Descriptor> {
    let (&first, _) = payload.split_first()?;
    let mut d = Descriptor {
        starts_frame: first & S_BIT != 0 && first & PID_MASK == 0,
        payload_offset: 1,
        picture_id: None,
        tl0: None,
    };
    if first & X_BIT != 0 {
        let ext = *payload.get(1)?;
        d.payload_offset = 2;
        if ext & I_BIT != 0 {
            let long = *payload.get(d.payload_offset)? & M_BIT != 0;
            if long {
                payload.get(d.payload_offset + 1)?;
            }
            d.picture_id = Some((d.payload_offset, long));
            d.payload_offset += if long { 2 } else { 1 };
        }
        if ext & L_BIT != 0 {
            payload.get(d.payload_offset)?;
            d.tl0 = Some(d.payload_offset);
            d.payload_offset += 1;
        }
        if ext & (T_BIT | K_BIT) != 0 {
            payload.get(d.payload_offset)?;
            d.payload_offset += 1;
        }
    }
    Some(d)
}

fn read_picture_id(payload: &[u8], at: usize, long: bool) -> u16 {
    if long {
        u16::from_be_bytes([payload[at], payload[at + 1]]) & PICTURE_ID_MASK
    } else {
        u16::from(payload[at]) & SHORT_PICTURE_ID_MASK
    }
}

fn write_picture_id(payload: &mut [u8], at: usize, long: bool, id: u16) {
    if long {
        let [high, low] = (id & PICTURE_ID_MASK).to_be_bytes();
        payload[at] = M_BIT | high;
        payload[at + 1] = low;
    } else {
        payload[at] = (id & SHORT_PICTURE_ID_MASK) as u8;
    }
}

/// Whether 15-bit picture id `a` is after `b`.
fn picture_id_newer(a: u16, b: u16) -> bool {
    let d = a.wrapping_sub(b) & PICTURE_ID_MASK;
    d != 0 && d < 0x4000
}

/// Whether TL0PICIDX `a` is after `b`.
fn tl0_newer(a: u8, b: u8) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 0x80
}

/// Where one packet's numbers are, and what they go out as.
#[derive(Debug, Clone, Copy)]
struct Mapped {
    /// The picture id's byte index in the payload, whether it is 15 bits (else 7), and the
    /// id it goes out as.
    picture: Option<(usize, bool, u16)>,
    /// The TL0PICIDX's byte index, and the value it goes out as.
    tl0: Option<(usize, u8)>,
}

/// One subscription's picture id and TL0PICIDX continuity.
#[derive(Debug, Default)]
pub struct Vp8Rewriter {
    /// The source SSRC the offsets apply to.
    source: Option<u32>,
    /// Added to the source's picture ids (15-bit wrapping).
    picture_offset: u16,
    /// Added to the source's TL0PICIDX.
    tl0_offset: u8,
    /// The newest picture id and TL0PICIDX sent, in output space.
    last_picture: Option<u16>,
    last_tl0: Option<u8>,
    /// Where copies of rewritten payloads are written.
    scratch: BytesMut,
}

impl Clone for Vp8Rewriter {
    /// The numbers, not the buffer.
    fn clone(&self) -> Self {
        Self {
            scratch: BytesMut::new(),
            ..*self
        }
    }
}

impl Vp8Rewriter {
    /// The payload this subscription sends for `payload` of source `ssrc`. `rebase` says
    /// the output goes on from the last packet sent (the first packet of a switch or a
    /// resume; a new source always does). Shared, not copied, while the offsets are zero.
    pub fn apply(&mut self, ssrc: u32, payload: &Bytes, rebase: bool) -> Bytes {
        let Some(d) = descriptor(payload) else {
            return payload.clone();
        };
        if rebase || self.source != Some(ssrc) {
            let first = self.source.is_none();
            self.source = Some(ssrc);
            if let Some((at, long)) = d.picture_id {
                let id = read_picture_id(payload, at, long);
                self.picture_offset = match (first, self.last_picture) {
                    (false, Some(last)) => last.wrapping_add(1).wrapping_sub(id) & PICTURE_ID_MASK,
                    _ => 0,
                };
            }
            if let Some(at) = d.tl0 {
                self.tl0_offset = match (first, self.last_tl0) {
                    (false, Some(last)) => last.wrapping_add(1).wrapping_sub(payload[at]),
                    _ => 0,
                };
            }
        }
        let mapped = self.mapped(payload, &d);
        if let Some((_, _, id)) = mapped.picture
            && self
                .last_picture
                .is_none_or(|last| picture_id_newer(id, last))
        {
            self.last_picture = Some(id);
        }
        if let Some((_, index)) = mapped.tl0
            && self.last_tl0.is_none_or(|last| tl0_newer(index, last))
        {
            self.last_tl0 = Some(index);
        }
        self.write(payload, mapped)
    }

    /// The payload of an earlier packet of the current source again (answering a NACK),
    /// with the numbers it went out with; changes nothing but the buffer.
    pub fn resend(&mut self, payload: &Bytes) -> Bytes {
        let Some(d) = descriptor(payload) else {
            return payload.clone();
        };
        let mapped = self.mapped(payload, &d);
        self.write(payload, mapped)
    }

    /// A packet's numbers under the current offsets.
    fn mapped(&self, payload: &[u8], d: &Descriptor) -> Mapped {
        Mapped {
            picture: d.picture_id.map(|(at, long)| {
                let id = read_picture_id(payload, at, long).wrapping_add(self.picture_offset);
                (at, long, id & PICTURE_ID_MASK)
            }),
            tl0: d
                .tl0
                .map(|at| (at, payload[at].wrapping_add(self.tl0_offset))),
        }
    }

    fn write(&mut self, payload: &Bytes, mapped: Mapped) -> Bytes {
        if self.picture_offset == 0 && self.tl0_offset == 0 {
            return payload.clone();
        }
        if self.scratch.capacity() < payload.len() {
            // Reclaims the buffer when every copy made from it was sent and dropped.
            self.scratch.reserve(payload.len().max(SCRATCH_BYTES));
        }
        self.scratch.extend_from_slice(payload);
        if let Some((at, long, id)) = mapped.picture {
            write_picture_id(&mut self.scratch, at, long, id);
        }
        if let Some((at, index)) = mapped.tl0 {
            self.scratch[at] = index;
        }
        self.scratch.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 payload with a 15-bit picture id, a TL0PICIDX, a TID byte and one media byte.
    fn packet(picture_id: u16, tl0: u8, start: bool) -> Bytes {
        let first = X_BIT | if start { S_BIT } else { 0 };
        let [high, low] = picture_id.to_be_bytes();
        Bytes::from(vec![
            first,
            I_BIT | L_BIT | T_BIT,
            M_BIT | high,
            low,
            tl0,
            0x20,
            0xAB,
        ])
    }

    fn fields(payload: &[u8]) -> (u16, u8) {
        let d = descriptor(payload).unwrap();
        let (at, long) = d.picture_id.unwrap();
        (read_picture_id(payload, at, long), payload[d.tl0.unwrap()])
    }

    #[test]
    fn reads_the_descriptor_fields() {
        let d = descriptor(&packet(0x1234, 9, true)).unwrap();
        assert_eq!(
            d,
            Descriptor {
                starts_frame: true,
                payload_offset: 6,
                picture_id: Some((2, true)),
                tl0: Some(4),
            }
        );
        let short = [X_BIT, I_BIT, 0x05, 0x00];
        assert_eq!(descriptor(&short).unwrap().picture_id, Some((2, false)));
        assert_eq!(descriptor(&short).unwrap().payload_offset, 3);
        assert_eq!(descriptor(&[0x10]).unwrap().payload_offset, 1);
        assert_eq!(descriptor(&[X_BIT, I_BIT, M_BIT]), None, "truncated id");
        assert_eq!(descriptor(&[]), None);
    }

    #[test]
    fn the_first_source_goes_out_as_it_came_and_shares_its_payload() {
        let mut vp8 = Vp8Rewriter::default();
        let p = packet(30_000, 200, true);
        let out = vp8.apply(1, &p, true);
        assert_eq!(out, p);
        assert_eq!(out.as_ptr(), p.as_ptr(), "no copy");
        assert_eq!(
            fields(&vp8.apply(1, &packet(30_001, 200, false), false)),
            (30_001, 200)
        );
    }

    #[test]
    fn a_switch_to_another_layer_continues_the_numbers_whichever_way_they_jump() {
        for (new_id, new_tl0) in [(5u16, 3u8), (32_000, 250), (1000, 100)] {
            let mut vp8 = Vp8Rewriter::default();
            vp8.apply(1, &packet(20_000, 40, true), false);
            vp8.apply(1, &packet(20_001, 41, true), false);
            // The new layer's keyframe follows the last picture sent.
            let out = vp8.apply(2, &packet(new_id, new_tl0, true), true);
            assert_eq!(fields(&out), (20_002, 42), "from {new_id}/{new_tl0}");
            assert_eq!(out[6], 0xAB, "the media is untouched");
            let next = vp8.apply(
                2,
                &packet(new_id.wrapping_add(1) & 0x7fff, new_tl0, false),
                false,
            );
            assert_eq!(fields(&next), (20_003, 42));
            let later = vp8.apply(
                2,
                &packet(
                    new_id.wrapping_add(2) & 0x7fff,
                    new_tl0.wrapping_add(1),
                    true,
                ),
                false,
            );
            assert_eq!(fields(&later), (20_004, 43));
            // A NACKed packet of the new layer goes out again as it first did.
            assert_eq!(
                fields(&vp8.resend(&packet(new_id.wrapping_add(1) & 0x7fff, new_tl0, false))),
                (20_003, 42)
            );
        }
    }

    #[test]
    fn picture_ids_wrap_at_15_bits_and_a_resume_on_the_same_layer_continues_too() {
        let mut vp8 = Vp8Rewriter::default();
        vp8.apply(1, &packet(0x7ffe, 255, true), false);
        vp8.apply(1, &packet(0x7fff, 255, false), false);
        vp8.apply(1, &packet(0, 0, true), false);
        // Paused for a while, then resumed on a keyframe of the same layer.
        let out = vp8.apply(1, &packet(900, 77, true), true);
        assert_eq!(fields(&out), (1, 1));
    }

    #[test]
    fn packets_without_the_fields_pass_untouched() {
        let mut vp8 = Vp8Rewriter::default();
        vp8.apply(1, &packet(100, 1, true), false);
        vp8.apply(2, &packet(7000, 9, true), true);
        let bare = Bytes::from_static(&[0x10, 0x00, 0x01]);
        assert_eq!(vp8.apply(2, &bare, false), bare);
        let truncated = Bytes::from_static(&[X_BIT]);
        assert_eq!(vp8.apply(2, &truncated, false), truncated);
    }

    #[test]
    fn the_copies_reuse_one_buffer_once_they_are_dropped() {
        // Packets of a real size: a few fill the buffer.
        let big = |id: u16| {
            let mut p = packet(id, 50, false).to_vec();
            p.resize(1200, 0xAB);
            Bytes::from(p)
        };
        let mut vp8 = Vp8Rewriter::default();
        vp8.apply(1, &packet(100, 1, true), false);
        let first = vp8.apply(2, &big(9000), true);
        let start = first.as_ptr() as usize;
        drop(first);
        for i in 1..200u16 {
            let out = vp8.apply(2, &big(9000 + i), false);
            assert_eq!(fields(&out).0, 101 + i);
            let at = out.as_ptr() as usize;
            assert!(
                (start..start + SCRATCH_BYTES).contains(&at),
                "copy {i} is in the first buffer, reclaimed"
            );
        }
    }
}
