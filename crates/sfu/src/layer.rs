//! Simulcast layer switching for one subscription, sans-IO.
//!
//! A simulcast sender publishes up to three encodings of the same video (layer 0 is the
//! lowest resolution, layer 2 the highest). A subscriber receives exactly one of them at a
//! time. Switching from one layer to another is only safe on a keyframe of the new layer:
//! a decoder fed delta frames of a stream it has never seen a keyframe of shows garbage or
//! freezes. This module decides, packet by packet, what to forward; it knows nothing of
//! sockets, clocks or webrtc-rs, so that it can be tested with plain numbers and bytes.
//!
//! The VP8 helpers parse just enough of the RFC 7741 payload descriptor and the VP8 key
//! frame header to tell whether a packet starts a keyframe, and of what size.

/// The highest layer index a simulcast track has: one per rid of [`RIDS`], 0, 1 and 2.
///
/// Browsers never send more than three simulcast encodings, so a larger target can only be
/// a caller's mistake; [`LayerSwitch::set_target`] clamps to this.
pub const MAX_LAYER: u8 = (RIDS.len() - 1) as u8;

/// The rids a publisher may use for its simulcast layers, lowest first: quarter, half and
/// full resolution, as `chorus.js` publishes them. Layer `i` is `RIDS[i]`.
pub const RIDS: [&str; 3] = ["q", "h", "f"];

/// The P bit of the first VP8 payload header byte: 0 for a key frame, 1 for an interframe.
const P_BIT: u8 = 0x01;
/// The start code that follows the 3-byte frame tag of every VP8 key frame.
const START_CODE: [u8; 3] = [0x9d, 0x01, 0x2a];

/// Where the VP8 payload (after the RFC 7741 descriptor) starts, if this packet begins
/// partition 0 of a frame.
///
/// Only the first packet of partition 0 carries the payload header, so any other packet
/// cannot tell us the frame type; `None` then, and on any truncated descriptor.
fn partition_start(payload: &[u8]) -> Option<usize> {
    let d = crate::vp8::descriptor(payload).filter(|d| d.starts_frame)?;
    // The payload header's first byte must be present, or the packet is truncated.
    payload.get(d.payload_offset)?;
    Some(d.payload_offset)
}

/// Whether this VP8 RTP payload is the first packet of a key frame.
///
/// The layer switch needs this to know when a subscriber can move to a new layer: only
/// there can its decoder start afresh. It parses the RFC 7741 descriptor (X bit, then the
/// I/L/T/K extension fields, with a 7- or 15-bit PictureID), requires the start of
/// partition 0 (S = 1, PID = 0), and checks the P bit of the VP8 payload header. Any
/// truncated input is `false`: a packet we cannot read is never a safe switching point.
pub fn vp8_is_keyframe(payload: &[u8]) -> bool {
    partition_start(payload)
        .and_then(|offset| payload.get(offset))
        .is_some_and(|&header| header & P_BIT == 0)
}

/// The width and height of a key frame, from the first packet of that key frame.
///
/// The SFU learns the real resolution of each simulcast layer from this, rather than
/// trusting what the sender announced, so that allocation can pick layers by size. The
/// VP8 key frame header is a 3-byte frame tag, the start code `9d 01 2a`, then width and
/// height as 16-bit little-endian numbers whose low 14 bits are the size (the top two are
/// the scaling mode). `None` for anything but a well-formed key frame start.
pub fn vp8_keyframe_size(payload: &[u8]) -> Option<(u16, u16)> {
    let offset = partition_start(payload)?;
    let header = payload.get(offset..)?.get(..10)?;
    if header[0] & P_BIT != 0 || header[3..6] != START_CODE {
        return None;
    }
    let width = u16::from_le_bytes([header[6], header[7]]) & 0x3fff;
    let height = u16::from_le_bytes([header[8], header[9]]) & 0x3fff;
    Some((width, height))
}

/// What to do with one packet of a subscribed simulcast track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Not for this subscriber: another layer, or the subscription is paused.
    Drop,
    /// Forward as is, on the layer the subscriber already receives.
    Send,
    /// The first packet of the new layer's keyframe, or of the keyframe that resumes a
    /// paused subscription: the switch is done. The caller forwards it after rebasing the
    /// sequence numbers (and, on another layer, the timestamps), so that the subscriber's
    /// stream goes on from its last packet.
    SwitchAndSend,
}

/// The layer switching state of one subscription of a simulcast track.
///
/// It holds the layer being forwarded (`current`) and the layer wanted (`target`). The two
/// differ while a switch is pending: the switch completes only on a keyframe of the
/// target, and until then the old layer keeps flowing so the subscriber's video does not
/// freeze.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerSwitch {
    /// The layer being forwarded, `None` when nothing is.
    current: Option<u8>,
    /// The layer wanted, `None` when paused.
    target: Option<u8>,
}

impl LayerSwitch {
    /// A subscription that forwards nothing yet: no current layer and no target, since
    /// allocation has not picked a layer for it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Choose the layer to move to, or `None` to pause.
    ///
    /// A different layer than the current one makes a switch pending, completed by the
    /// next keyframe of that layer (see [`needs_keyframe`](Self::needs_keyframe)). Pausing
    /// takes effect at once: there is no reason to keep sending a layer nobody wants,
    /// and the bandwidth is usually needed elsewhere. A target above [`MAX_LAYER`] is
    /// clamped to it.
    pub fn set_target(&mut self, target: Option<u8>) {
        self.target = target.map(|layer| layer.min(MAX_LAYER));
        if self.target.is_none() {
            self.current = None;
        }
    }

    /// [`set_target`](Self::set_target), except that a move down takes effect at once:
    /// nothing is forwarded until the keyframe of the lower layer. For congestion, where
    /// every packet over what the link carries queues ahead of the audio; the picture holds
    /// for the time a keyframe takes instead.
    pub fn cut_to(&mut self, target: Option<u8>) {
        self.set_target(target);
        if self.current > self.target {
            self.current = None;
        }
    }

    /// The layer being forwarded, `None` when nothing is (new, paused, or resuming and
    /// still waiting for a keyframe).
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// The layer wanted, `None` when paused.
    pub fn target(&self) -> Option<u8> {
        self.target
    }

    /// The layer a keyframe must be requested on (by PLI or FIR) while a switch to it is
    /// pending, `None` otherwise.
    ///
    /// Waiting for the sender's next periodic keyframe could take seconds; asking for one
    /// makes the switch quick. The caller may ask repeatedly while this stays `Some`,
    /// subject to its own rate limit.
    pub fn needs_keyframe(&self) -> Option<u8> {
        self.target.filter(|&target| self.current != Some(target))
    }

    /// Decide what to do with one packet of `layer`, `keyframe` telling whether it is the
    /// first packet of a keyframe (see [`vp8_is_keyframe`]).
    ///
    /// A keyframe of a pending target completes the switch. Otherwise packets of the
    /// current layer are sent, so the old layer keeps playing until the new one can start,
    /// and every other packet is dropped.
    pub fn on_packet(&mut self, layer: u8, keyframe: bool) -> Forward {
        if keyframe && self.needs_keyframe() == Some(layer) {
            self.current = Some(layer);
            return Forward::SwitchAndSend;
        }
        if self.current == Some(layer) {
            Forward::Send
        } else {
            Forward::Drop
        }
    }
}

/// Why a publisher's simulcast offer for one m-line is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimulcastError {
    /// More encodings than Chorus forwards layers.
    #[error("{0} simulcast encodings offered; at most 3 (rids q, h, f) are accepted")]
    TooManyLayers(usize),
    /// A rid other than `q`, `h` and `f`: the server could not tell which layer it is.
    #[error("unknown simulcast rid {0:?}; the rids are q, h and f")]
    UnknownRid(String),
    /// The same rid twice.
    #[error("simulcast rid {0:?} offered twice")]
    DuplicateRid(String),
}

/// The layer index of each rid a publisher offers on one m-line, in the order offered.
/// Refuses more than three, unknown and repeated rids, so that every layer index the
/// switch and the allocator see names one known resolution.
pub fn layers_of_rids<S: AsRef<str>>(rids: &[S]) -> Result<Vec<u8>, SimulcastError> {
    if rids.len() > RIDS.len() {
        return Err(SimulcastError::TooManyLayers(rids.len()));
    }
    let mut layers = Vec::with_capacity(rids.len());
    for rid in rids {
        let rid = rid.as_ref();
        let Some(layer) = RIDS.iter().position(|known| *known == rid) else {
            return Err(SimulcastError::UnknownRid(rid.to_owned()));
        };
        let layer = layer as u8;
        if layers.contains(&layer) {
            return Err(SimulcastError::DuplicateRid(rid.to_owned()));
        }
        layers.push(layer);
    }
    Ok(layers)
}

/// The send rids of each m-line of an offer, by mid, in the order offered: what a
/// simulcast offer's `a=rid:<id> send` lines say. m-lines without rids are left out. Read
/// before the offer is applied, so that a bad simulcast offer is refused whole.
pub fn offered_rids(sdp: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut section: Option<(Option<String>, Vec<String>)> = None;
    let mut flush = |section: Option<(Option<String>, Vec<String>)>| {
        if let Some((Some(mid), rids)) = section
            && !rids.is_empty()
        {
            out.push((mid, rids));
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("m=") {
            flush(section.take());
            section = Some((None, Vec::new()));
        } else if let Some((mid, rids)) = section.as_mut() {
            if let Some(value) = line.strip_prefix("a=mid:") {
                *mid = Some(value.trim().to_owned());
            } else if let Some(value) = line.strip_prefix("a=rid:") {
                let mut parts = value.split_whitespace();
                if let (Some(id), Some("send")) = (parts.next(), parts.next()) {
                    rids.push(id.to_owned());
                }
            }
        }
    }
    flush(section);
    out
}

/// The layers of each simulcast m-line of an offer, by mid: [`offered_rids`] checked with
/// [`layers_of_rids`].
pub fn offered_layers(sdp: &str) -> Result<Vec<(String, Vec<u8>)>, SimulcastError> {
    offered_rids(sdp)
        .into_iter()
        .map(|(mid, rids)| Ok((mid, layers_of_rids(&rids)?)))
        .collect()
}

/// Whether this H.264 RTP payload (RFC 6184) starts an IDR picture, or carries the
/// parameter sets that precede one: a single NAL unit of type 5 or 7, a STAP-A holding
/// one, or the first fragment of an FU-A of type 5.
pub fn h264_is_keyframe(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        IDR | SPS => true,
        STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() > 2 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let Some(&nal) = rest.get(2) else { break };
                if matches!(nal & 0x1f, IDR | SPS) {
                    return true;
                }
                rest = rest.get(2 + size..).unwrap_or_default();
            }
            false
        }
        FU_A => payload
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && fu & 0x1f == IDR),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal descriptor (no X) of a key frame start, with a full key frame header.
    fn keyframe_minimal() -> Vec<u8> {
        vec![
            0x10, // X=0 R=0 N=0 S=1 R=0 PID=0: start of partition 0, no extension
            0x50, // frame tag byte 0: P=0 (key frame), version 0, show_frame=1
            0x2a, // frame tag byte 1 (first partition size, irrelevant here)
            0x00, // frame tag byte 2
            0x9d, 0x01, 0x2a, // key frame start code
            0x80, 0x02, // width 640 (0x0280) little-endian, scale 0
            0xe0, 0x01, // height 480 (0x01e0) little-endian, scale 0
        ]
    }

    #[test]
    fn keyframe_without_extension() {
        assert!(vp8_is_keyframe(&keyframe_minimal()));
    }

    #[test]
    fn delta_without_extension() {
        let packet = [
            0x10, // S=1, PID=0, no extension
            0x51, // P=1: interframe
            0x00, 0x00,
        ];
        assert!(!vp8_is_keyframe(&packet));
        assert_eq!(vp8_keyframe_size(&packet), None);
    }

    #[test]
    fn not_start_of_partition_is_not_keyframe() {
        let continuation = [
            0x00, // S=0: continuation of a partition
            0x50, // would look like P=0 but this is mid-frame data
        ];
        assert!(!vp8_is_keyframe(&continuation));
        let other_partition = [
            0x11, // S=1 but PID=1: start of partition 1, no payload header
            0x50,
        ];
        assert!(!vp8_is_keyframe(&other_partition));
    }

    #[test]
    fn keyframe_with_extension_and_7_bit_picture_id() {
        let packet = [
            0x90, // X=1 S=1 PID=0
            0x80, // I=1 L=0 T=0 K=0: a PictureID follows
            0x05, // M=0: 7-bit PictureID 5
            0x50, // payload header: P=0, key frame
        ];
        assert!(vp8_is_keyframe(&packet));
    }

    #[test]
    fn keyframe_with_15_bit_picture_id_and_all_fields() {
        let packet = [
            0x90, // X=1 S=1 PID=0
            0xf0, // I=1 L=1 T=1 K=1
            0x81, 0x23, // M=1: 15-bit PictureID 0x0123
            0x07, // TL0PICIDX
            0x40, // TID=1 Y=0 KEYIDX=0
            0x50, // payload header: P=0, key frame
        ];
        assert!(vp8_is_keyframe(&packet));
        let mut delta = packet;
        delta[6] = 0x51; // P=1: interframe
        // A parser that read a 7-bit id would take 0x40 (P=0) as the header here.
        assert!(!vp8_is_keyframe(&delta));
    }

    #[test]
    fn keyframe_with_only_k_bit() {
        let packet = [
            0x90, // X=1 S=1 PID=0
            0x10, // K=1 only: a TID/Y/KEYIDX byte follows
            0x03, // KEYIDX=3
            0x50, // payload header: P=0, key frame
        ];
        assert!(vp8_is_keyframe(&packet));
    }

    #[test]
    fn delta_with_extension() {
        let packet = [
            0x90, // X=1 S=1 PID=0
            0xa0, // I=1 T=1
            0x7f, // M=0: PictureID 127
            0x20, // TID=0 Y=1
            0x01, // payload header: P=1, interframe
        ];
        assert!(!vp8_is_keyframe(&packet));
    }

    #[test]
    fn truncated_inputs_are_not_keyframes() {
        let full = [
            0x90, // X=1 S=1 PID=0
            0xf0, // I=1 L=1 T=1 K=1
            0x81, 0x23, // 15-bit PictureID
            0x07, // TL0PICIDX
            0x40, // TID/Y/KEYIDX
            0x50, // payload header: key frame
        ];
        for len in 0..full.len() {
            assert!(!vp8_is_keyframe(&full[..len]), "length {len}");
            assert_eq!(vp8_keyframe_size(&full[..len]), None, "length {len}");
        }
        assert!(vp8_is_keyframe(&full));
        assert!(!vp8_is_keyframe(&[]));
        assert!(!vp8_is_keyframe(&[0x10])); // descriptor only, no payload header
    }

    #[test]
    fn keyframe_size_parses() {
        assert_eq!(vp8_keyframe_size(&keyframe_minimal()), Some((640, 480)));
    }

    #[test]
    fn keyframe_size_ignores_scaling_bits_and_handles_extension() {
        let packet = [
            0x90, // X=1 S=1 PID=0
            0x80, // I=1
            0x80, 0x01, // M=1: 15-bit PictureID 1
            0x50, 0x2a, 0x00, // frame tag, P=0
            0x9d, 0x01, 0x2a, // start code
            0x00, 0xc5, // width 0x0500 = 1280 with scale bits 0b11 set
            0xd0, 0x42, // height 0x02d0 = 720 with scale bits 0b01 set
        ];
        assert_eq!(vp8_keyframe_size(&packet), Some((1280, 720)));
    }

    #[test]
    fn keyframe_size_rejects_bad_input() {
        let good = keyframe_minimal();
        for len in 0..good.len() {
            assert_eq!(vp8_keyframe_size(&good[..len]), None, "length {len}");
        }
        let mut bad_start = good.clone();
        bad_start[5] = 0x02; // start code 9d 02 2a
        assert_eq!(vp8_keyframe_size(&bad_start), None);
        let mut delta = good;
        delta[1] = 0x51; // P=1: interframe
        assert_eq!(vp8_keyframe_size(&delta), None);
    }

    #[test]
    fn new_forwards_nothing() {
        let mut switch = LayerSwitch::new();
        assert_eq!(switch.current(), None);
        assert_eq!(switch.target(), None);
        assert_eq!(switch.needs_keyframe(), None);
        assert_eq!(switch.on_packet(0, true), Forward::Drop);
        assert_eq!(switch.on_packet(1, false), Forward::Drop);
    }

    #[test]
    fn first_layer_starts_on_keyframe() {
        let mut switch = LayerSwitch::new();
        switch.set_target(Some(1));
        assert_eq!(switch.needs_keyframe(), Some(1));
        assert_eq!(switch.on_packet(1, false), Forward::Drop);
        assert_eq!(switch.on_packet(0, true), Forward::Drop);
        assert_eq!(switch.on_packet(1, true), Forward::SwitchAndSend);
        assert_eq!(switch.current(), Some(1));
        assert_eq!(switch.needs_keyframe(), None);
        assert_eq!(switch.on_packet(1, false), Forward::Send);
        assert_eq!(switch.on_packet(1, true), Forward::Send);
    }

    /// A switch that has settled on `layer`.
    fn on_layer(layer: u8) -> LayerSwitch {
        let mut switch = LayerSwitch::new();
        switch.set_target(Some(layer));
        assert_eq!(switch.on_packet(layer, true), Forward::SwitchAndSend);
        switch
    }

    #[test]
    fn switch_up_keeps_old_layer_until_keyframe() {
        let mut switch = on_layer(0);
        switch.set_target(Some(2));
        assert_eq!(switch.current(), Some(0));
        assert_eq!(switch.target(), Some(2));
        assert_eq!(switch.needs_keyframe(), Some(2));
        assert_eq!(switch.on_packet(0, false), Forward::Send);
        assert_eq!(switch.on_packet(2, false), Forward::Drop);
        assert_eq!(switch.on_packet(0, true), Forward::Send);
        assert_eq!(switch.on_packet(2, true), Forward::SwitchAndSend);
        assert_eq!(switch.current(), Some(2));
        assert_eq!(switch.needs_keyframe(), None);
        assert_eq!(switch.on_packet(0, false), Forward::Drop);
        assert_eq!(switch.on_packet(2, false), Forward::Send);
    }

    #[test]
    fn switch_down_keeps_old_layer_until_keyframe() {
        let mut switch = on_layer(2);
        switch.set_target(Some(0));
        assert_eq!(switch.needs_keyframe(), Some(0));
        assert_eq!(switch.on_packet(2, false), Forward::Send);
        assert_eq!(switch.on_packet(0, false), Forward::Drop);
        assert_eq!(switch.on_packet(0, true), Forward::SwitchAndSend);
        assert_eq!(switch.current(), Some(0));
        assert_eq!(switch.on_packet(2, false), Forward::Drop);
        assert_eq!(switch.on_packet(0, false), Forward::Send);
    }

    #[test]
    fn a_cut_down_stops_the_old_layer_at_once_and_a_cut_up_is_a_plain_switch() {
        let mut switch = on_layer(2);
        switch.cut_to(Some(0));
        assert_eq!(switch.current(), None);
        assert_eq!(switch.on_packet(2, false), Forward::Drop);
        assert_eq!(switch.on_packet(0, false), Forward::Drop);
        assert_eq!(switch.on_packet(0, true), Forward::SwitchAndSend);
        switch.cut_to(Some(1));
        assert_eq!(switch.current(), Some(0), "up: the old layer plays on");
        assert_eq!(switch.on_packet(0, false), Forward::Send);
    }

    #[test]
    fn third_layer_is_dropped() {
        let mut switch = on_layer(0);
        switch.set_target(Some(1));
        assert_eq!(switch.on_packet(2, true), Forward::Drop);
        assert_eq!(switch.on_packet(2, false), Forward::Drop);
        assert_eq!(switch.current(), Some(0));
        assert_eq!(switch.on_packet(0, false), Forward::Send);
    }

    #[test]
    fn target_equal_to_current_is_noop() {
        let mut switch = on_layer(1);
        let before = switch.clone();
        switch.set_target(Some(1));
        assert_eq!(switch, before);
        assert_eq!(switch.needs_keyframe(), None);
        assert_eq!(switch.on_packet(1, false), Forward::Send);
        assert_eq!(switch.on_packet(1, true), Forward::Send);
    }

    #[test]
    fn retarget_back_to_current_cancels_pending_switch() {
        let mut switch = on_layer(0);
        switch.set_target(Some(2));
        switch.set_target(Some(0));
        assert_eq!(switch.needs_keyframe(), None);
        assert_eq!(switch.on_packet(2, true), Forward::Drop);
        assert_eq!(switch.current(), Some(0));
    }

    #[test]
    fn pause_drops_everything_and_resume_needs_keyframe() {
        let mut switch = on_layer(1);
        switch.set_target(None);
        assert_eq!(switch.current(), None);
        assert_eq!(switch.target(), None);
        assert_eq!(switch.needs_keyframe(), None);
        for layer in 0..=2 {
            assert_eq!(switch.on_packet(layer, false), Forward::Drop);
            assert_eq!(switch.on_packet(layer, true), Forward::Drop);
        }
        switch.set_target(Some(1));
        assert_eq!(switch.needs_keyframe(), Some(1));
        assert_eq!(switch.on_packet(1, false), Forward::Drop);
        assert_eq!(switch.on_packet(1, true), Forward::SwitchAndSend);
        assert_eq!(switch.on_packet(1, false), Forward::Send);
    }

    #[test]
    fn target_above_max_is_clamped() {
        let mut switch = LayerSwitch::new();
        switch.set_target(Some(7));
        assert_eq!(switch.target(), Some(MAX_LAYER));
        assert_eq!(switch.on_packet(7, true), Forward::Drop);
        assert_eq!(switch.on_packet(2, true), Forward::SwitchAndSend);
    }

    #[test]
    fn rids_name_layers_and_bad_offers_are_refused() {
        assert_eq!(layers_of_rids(&["q", "h", "f"]), Ok(vec![0, 1, 2]));
        assert_eq!(layers_of_rids(&["f", "q"]), Ok(vec![2, 0]));
        assert_eq!(layers_of_rids::<&str>(&[]), Ok(vec![]));
        assert_eq!(
            layers_of_rids(&["q", "h", "f", "x"]),
            Err(SimulcastError::TooManyLayers(4))
        );
        assert_eq!(
            layers_of_rids(&["q", "hi"]),
            Err(SimulcastError::UnknownRid("hi".into()))
        );
        assert_eq!(
            layers_of_rids(&["h", "h"]),
            Err(SimulcastError::DuplicateRid("h".into()))
        );
    }

    #[test]
    fn an_offer_s_send_rids_are_read_per_mid() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=rid:q send\r\n\
            a=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=rid:x recv\r\n";
        assert_eq!(
            offered_rids(sdp),
            vec![("1".to_owned(), vec!["q".into(), "h".into(), "f".into()])]
        );
        assert_eq!(
            offered_layers(sdp),
            Ok(vec![("1".to_owned(), vec![0, 1, 2])])
        );
        let bad = "m=video 9 X 96\r\na=mid:1\r\na=rid:q send\r\na=rid:z send\r\n";
        assert_eq!(
            offered_layers(bad),
            Err(SimulcastError::UnknownRid("z".into()))
        );
    }

    #[test]
    fn h264_keyframes_are_found_in_single_stap_a_and_fu_a_packets() {
        assert!(h264_is_keyframe(&[0x65, 1, 2]));
        assert!(h264_is_keyframe(&[0x67, 1, 2]));
        assert!(!h264_is_keyframe(&[0x41, 1, 2]));
        // STAP-A: a 2-byte SEI (type 6), then an SPS
        assert!(h264_is_keyframe(&[0x18, 0, 2, 0x06, 0, 0, 1, 0x67]));
        assert!(!h264_is_keyframe(&[0x18, 0, 2, 0x06, 0, 0, 9]));
        // FU-A start of an IDR, and its continuation
        assert!(h264_is_keyframe(&[0x7c, 0x85, 1]));
        assert!(!h264_is_keyframe(&[0x7c, 0x05, 1]));
        for len in 0..3 {
            let _ = h264_is_keyframe(&[0x18, 0xff, 0xff][..len]);
        }
    }
}
