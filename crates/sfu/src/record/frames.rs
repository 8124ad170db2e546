//! Frame assembly: from a video track's RTP payloads, in sequence order, to whole coded
//! frames as a file stores them. VP8 (RFC 7741) and VP9 (RFC 9628) payloads lose their
//! payload descriptor; H.264 (RFC 6184) single NAL units, STAP-A and FU-A become an
//! Annex-B access unit (each NAL unit after a start code).
//!
//! A frame is complete at the packet with the RTP marker bit. A frame that lost a packet,
//! that never saw its start, or whose marker never came (the next timestamp began first)
//! is broken: it is not stored, and the caller waits for the next keyframe, since every
//! frame after it may refer to it.

/// A video codec the recorder stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    Vp9,
    H264,
}

/// One whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub data: Vec<u8>,
    pub timestamp: u32,
    pub keyframe: bool,
    /// The picture size a keyframe announces (VP8 and VP9 keyframes), if read.
    pub size: Option<(u16, u16)>,
}

/// What one packet completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembled {
    Frame(Frame),
    /// A frame was lost or incomplete: frames after it may not decode until a keyframe.
    Broken,
}

#[derive(Debug)]
pub struct FrameAssembler {
    codec: VideoCodec,
    data: Vec<u8>,
    timestamp: Option<u32>,
    /// The frame in progress saw its first packet and lost none.
    intact: bool,
    keyframe: bool,
    size: Option<(u16, u16)>,
}

const START_CODE: [u8; 4] = [0, 0, 0, 1];

impl FrameAssembler {
    pub fn new(codec: VideoCodec) -> Self {
        Self {
            codec,
            data: Vec::new(),
            timestamp: None,
            intact: false,
            keyframe: false,
            size: None,
        }
    }

    /// Takes the next packet in sequence order; `lost_before` says packets were given up
    /// on just before it. Returns what it completed, if anything (a broken frame is
    /// reported once, when it is abandoned).
    pub fn push(
        &mut self,
        payload: &[u8],
        timestamp: u32,
        marker: bool,
        lost_before: bool,
    ) -> Option<Assembled> {
        let mut broken = false;
        if self.timestamp.is_some_and(|t| t != timestamp) {
            // The last frame's marker never came.
            broken = true;
            self.timestamp = None;
        }
        if lost_before {
            // Whatever was lost might have been this frame's first packets, the previous
            // frame's last ones, or whole frames in between.
            broken = true;
            self.timestamp = None;
        }
        if self.timestamp.is_none() {
            self.data.clear();
            self.timestamp = Some(timestamp);
            self.intact = false;
            self.keyframe = false;
            self.size = None;
            if self.starts_frame(payload) {
                self.intact = true;
            }
        }
        if self.intact && !self.append(payload) {
            self.intact = false;
        }
        if !marker {
            return broken.then_some(Assembled::Broken);
        }
        self.timestamp = None;
        if !self.intact || self.data.is_empty() {
            return Some(Assembled::Broken);
        }
        if broken && !self.keyframe {
            // Whole, but after a broken frame it may refer to: only a keyframe helps.
            return Some(Assembled::Broken);
        }
        Some(Assembled::Frame(Frame {
            data: std::mem::take(&mut self.data),
            timestamp,
            keyframe: self.keyframe,
            size: self.size,
        }))
    }

    /// Whether a packet is the first of a frame.
    fn starts_frame(&self, payload: &[u8]) -> bool {
        match self.codec {
            VideoCodec::Vp8 => vp8_descriptor(payload).is_some_and(|d| d.start),
            VideoCodec::Vp9 => vp9_descriptor(payload).is_some_and(|d| d.start),
            VideoCodec::H264 => match payload.first().map(|b| b & 0x1f) {
                Some(28) => payload.get(1).is_some_and(|b| b & 0x80 != 0),
                Some(1..=24) => true,
                _ => false,
            },
        }
    }

    /// Adds a packet's media to the frame; false when it does not parse.
    fn append(&mut self, payload: &[u8]) -> bool {
        match self.codec {
            VideoCodec::Vp8 => {
                let Some(d) = vp8_descriptor(payload) else {
                    return false;
                };
                let media = &payload[d.len..];
                if self.data.is_empty() {
                    // The VP8 frame tag: bit 0 clear on keyframes (RFC 6386 §9.1).
                    self.keyframe = media.first().is_some_and(|b| b & 0x01 == 0);
                    if self.keyframe && media.len() >= 10 && media[3..6] == [0x9d, 0x01, 0x2a] {
                        let w = u16::from_le_bytes([media[6], media[7]]) & 0x3fff;
                        let h = u16::from_le_bytes([media[8], media[9]]) & 0x3fff;
                        self.size = Some((w, h));
                    }
                }
                self.data.extend_from_slice(media);
                true
            }
            VideoCodec::Vp9 => {
                let Some(d) = vp9_descriptor(payload) else {
                    return false;
                };
                if self.data.is_empty() {
                    self.keyframe = d.keyframe;
                    self.size = d.size;
                }
                self.data.extend_from_slice(&payload[d.len..]);
                true
            }
            VideoCodec::H264 => self.append_h264(payload),
        }
    }

    fn append_h264(&mut self, payload: &[u8]) -> bool {
        let Some(&header) = payload.first() else {
            return false;
        };
        match header & 0x1f {
            1..=23 => {
                self.nal(payload);
                true
            }
            24 => {
                // STAP-A: 16-bit sizes, each followed by a NAL unit.
                let mut rest = &payload[1..];
                while rest.len() >= 2 {
                    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    let Some(nal) = rest.get(2..2 + len) else {
                        return false;
                    };
                    if !nal.is_empty() {
                        self.nal(nal);
                    }
                    rest = &rest[2 + len..];
                }
                true
            }
            28 => {
                // FU-A: the indicator's F and NRI, the FU header's type.
                let Some(&fu) = payload.get(1) else {
                    return false;
                };
                if fu & 0x80 != 0 {
                    self.data.extend_from_slice(&START_CODE);
                    let nal_header = (header & 0xe0) | (fu & 0x1f);
                    self.data.push(nal_header);
                    if fu & 0x1f == 5 {
                        self.keyframe = true;
                    }
                }
                self.data.extend_from_slice(&payload[2..]);
                true
            }
            _ => false,
        }
    }

    fn nal(&mut self, nal: &[u8]) {
        if nal[0] & 0x1f == 5 {
            self.keyframe = true;
        }
        self.data.extend_from_slice(&START_CODE);
        self.data.extend_from_slice(nal);
    }
}

/// What a VP8 payload descriptor says.
struct Vp8Descriptor {
    len: usize,
    /// Start of partition 0: the frame's first packet.
    start: bool,
}

fn vp8_descriptor(payload: &[u8]) -> Option<Vp8Descriptor> {
    let first = *payload.first()?;
    let mut len = 1;
    if first & 0x80 != 0 {
        let ext = *payload.get(1)?;
        len += 1;
        if ext & 0x80 != 0 {
            // PictureID: 7 or 15 bits
            len += if payload.get(len)? & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            len += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            len += 1; // TID/Y/KEYIDX
        }
    }
    if len >= payload.len() {
        return None;
    }
    Some(Vp8Descriptor {
        len,
        start: first & 0x10 != 0 && first & 0x07 == 0,
    })
}

/// What a VP9 payload descriptor says (RFC 9628 §4.2, flexible and non-flexible modes).
struct Vp9Descriptor {
    len: usize,
    /// B: the first packet of a frame.
    start: bool,
    /// Not inter-predicted (P clear) on the first packet of a frame: a keyframe.
    keyframe: bool,
    size: Option<(u16, u16)>,
}

fn vp9_descriptor(payload: &[u8]) -> Option<Vp9Descriptor> {
    let first = *payload.first()?;
    let (i, p, l, f, b, _e, v) = (
        first & 0x80 != 0,
        first & 0x40 != 0,
        first & 0x20 != 0,
        first & 0x10 != 0,
        first & 0x08 != 0,
        first & 0x04 != 0,
        first & 0x02 != 0,
    );
    let mut at = 1;
    if i {
        at += if payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
    }
    let mut spatial = 0;
    if l {
        spatial = (payload.get(at)? >> 1) & 0x07;
        at += 1;
        if !f {
            at += 1; // TL0PICIDX
        }
    }
    if f && p {
        // up to three reference indices, N bit chains them
        for _ in 0..3 {
            let diff = *payload.get(at)?;
            at += 1;
            if diff & 0x01 == 0 {
                break;
            }
        }
    }
    let mut size = None;
    if v {
        let ss = *payload.get(at)?;
        at += 1;
        let layers = usize::from(ss >> 5) + 1;
        let has_size = ss & 0x10 != 0;
        let has_group = ss & 0x08 != 0;
        if has_size {
            for layer in 0..layers {
                let bytes = payload.get(at..at + 4)?;
                if layer + 1 == layers {
                    size = Some((
                        u16::from_be_bytes([bytes[0], bytes[1]]),
                        u16::from_be_bytes([bytes[2], bytes[3]]),
                    ));
                }
                at += 4;
            }
        }
        if has_group {
            let pictures = usize::from(*payload.get(at)?);
            at += 1;
            for _ in 0..pictures {
                let refs = usize::from((payload.get(at)? >> 2) & 0x03);
                at += 1 + refs;
            }
        }
    }
    if at >= payload.len() {
        return None;
    }
    Some(Vp9Descriptor {
        len: at,
        start: b,
        keyframe: b && !p && spatial == 0,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp8_key(size: (u16, u16)) -> Vec<u8> {
        let mut out = vec![0x10, 0x50, 0x01, 0x00, 0x9d, 0x01, 0x2a];
        out.extend_from_slice(&size.0.to_le_bytes());
        out.extend_from_slice(&size.1.to_le_bytes());
        out.extend_from_slice(&[7; 20]);
        out
    }

    #[test]
    fn vp8_frames_lose_their_descriptors_and_join_across_packets() {
        let mut a = FrameAssembler::new(VideoCodec::Vp8);
        let first = vp8_key((320, 240));
        assert_eq!(a.push(&first, 100, false, false), None);
        // continuation: S clear, extended descriptor with a 15-bit picture id
        let second = [0x80, 0x80, 0x81, 0x02, 9, 9, 9];
        let Some(Assembled::Frame(frame)) = a.push(&second, 100, true, false) else {
            panic!("a frame");
        };
        assert!(frame.keyframe);
        assert_eq!(frame.size, Some((320, 240)));
        let mut want = first[1..].to_vec();
        want.extend_from_slice(&[9, 9, 9]);
        assert_eq!(frame.data, want);
        // a delta frame in one packet
        let Some(Assembled::Frame(delta)) = a.push(&[0x10, 0x01, 2, 3], 3100, true, false) else {
            panic!("a frame");
        };
        assert!(!delta.keyframe);
        assert_eq!(delta.data, vec![0x01, 2, 3]);
    }

    #[test]
    fn a_lost_or_unfinished_frame_is_broken() {
        let mut a = FrameAssembler::new(VideoCodec::Vp8);
        assert_eq!(a.push(&[0x10, 0x01, 1], 100, false, false), None);
        // the next timestamp starts before the marker came
        assert_eq!(
            a.push(&[0x10, 0x01, 2], 200, false, false),
            Some(Assembled::Broken)
        );
        // its last packet comes after a loss
        assert_eq!(a.push(&[0x00, 3], 200, true, true), Some(Assembled::Broken));
        // a frame whose first packet was lost never starts
        assert_eq!(
            a.push(&[0x00, 4], 300, true, false),
            Some(Assembled::Broken)
        );
        // a keyframe after a loss is whole
        let key = vp8_key((64, 48));
        assert!(matches!(
            a.push(&key, 400, true, true),
            Some(Assembled::Frame(Frame { keyframe: true, .. }))
        ));
    }

    #[test]
    fn h264_single_stap_a_and_fu_a_become_annex_b() {
        let mut a = FrameAssembler::new(VideoCodec::H264);
        let sps = [0x67, 1, 2];
        let pps = [0x68, 3];
        let mut stap = vec![0x78];
        for nal in [&sps[..], &pps[..]] {
            stap.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            stap.extend_from_slice(nal);
        }
        assert_eq!(a.push(&stap, 7, false, false), None);
        // an IDR slice (NRI 3, type 5) in two fragments
        assert_eq!(a.push(&[0x7c, 0x85, 10, 11], 7, false, false), None);
        let Some(Assembled::Frame(frame)) = a.push(&[0x7c, 0x45, 12], 7, true, false) else {
            panic!("a frame");
        };
        assert!(frame.keyframe);
        assert_eq!(
            frame.data,
            vec![
                0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 10, 11, 12
            ]
        );
        let Some(Assembled::Frame(p)) = a.push(&[0x41, 5, 6], 8, true, false) else {
            panic!("a frame");
        };
        assert!(!p.keyframe);
        assert_eq!(p.data, vec![0, 0, 0, 1, 0x41, 5, 6]);
    }

    #[test]
    fn vp9_descriptors_in_both_modes() {
        let mut a = FrameAssembler::new(VideoCodec::Vp9);
        // non-flexible keyframe: I (7-bit id), B, V with one layer's size
        let mut key = vec![0x8a, 0x05, 0x10, 0x01, 0x40, 0x00, 0xf0];
        key.extend_from_slice(&[0x82, 0x49, 0x83]);
        let Some(Assembled::Frame(frame)) = a.push(&key, 1, true, false) else {
            panic!("a frame");
        };
        assert!(frame.keyframe);
        assert_eq!(frame.size, Some((320, 240)));
        assert_eq!(frame.data, vec![0x82, 0x49, 0x83]);
        // flexible inter frame: I, P, F, B, E with one reference
        let Some(Assembled::Frame(inter)) = a.push(&[0xdc, 0x06, 0x02, 0x86, 0x00], 2, true, false)
        else {
            panic!("a frame");
        };
        assert!(!inter.keyframe);
        assert_eq!(inter.data, vec![0x86, 0x00]);
    }
}
