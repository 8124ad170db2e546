//! Known media: RTP payloads whose every byte a receiver can predict.
//!
//! Each payload carries a readable tag, `CHORUS/<sender>/<kind>/<counter>/<K|D>/` (with an
//! `L<layer>/` segment after the kind for a simulcast layer), after a codec-shaped prefix,
//! followed by filler bytes derived from the counter. A receiver parses the
//! tag, rebuilds the payload with [`expected_payload`] and compares byte for byte, so a test can
//! tell "arrived intact" from "arrived" without sharing state with the sender.
//!
//! Video payloads start with a real VP8 payload descriptor (RFC 7741 §4.2, S bit set, one
//! partition) and a VP8 frame header (RFC 6386 §9.1), so a server that looks for keyframes finds
//! them where a browser would put them.

use bytes::{BufMut, Bytes, BytesMut};
use chorus_protocol::MediaKind;

/// The marker that starts the readable tag inside a payload.
const TAG_MAGIC: &[u8] = b"CHORUS/";

/// Total payload length of an audio packet: about a 32 kbit/s Opus frame of 20 ms.
pub const AUDIO_PAYLOAD_LEN: usize = 80;
/// Total payload length of a video packet (one packet per frame) of a track sent as one
/// encoding, and of simulcast layer 0.
pub const VIDEO_PAYLOAD_LEN: usize = 300;

/// The payload length of a video packet of `layer`: higher layers are larger, so that
/// their measured rates differ as real layers' do (at 30 fps about 72, 144 and 264 kbit/s
/// of payload), while each frame still fits one packet.
pub fn video_payload_len(layer: Option<u8>) -> usize {
    match layer {
        None | Some(0) => VIDEO_PAYLOAD_LEN,
        Some(1) => 2 * VIDEO_PAYLOAD_LEN,
        Some(_) => 1100,
    }
}

/// VP8 payload descriptor byte: X=0, R=0, N=0, S=1 (start of partition), PID=0.
pub const VP8_DESCRIPTOR: u8 = 0x10;

/// What a tagged payload says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaTag {
    /// The sending client's name.
    pub sender: String,
    pub kind: MediaKind,
    /// The sender's per-kind packet counter, from 0.
    pub counter: u32,
    /// For video: whether this frame is a keyframe. Always `false` for audio.
    pub keyframe: bool,
    /// The simulcast layer (0 lowest) the packet belongs to; `None` for a track sent as one
    /// encoding. Part of the payload so that a subscriber sees which layer the server
    /// forwarded, packet by packet.
    pub layer: Option<u8>,
}

fn kind_str(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

/// The frame size a keyframe announces: 320x240 for a single encoding, and for simulcast
/// layers 0, 1 and 2 the quarter, half and full sizes of a 1280x720 camera, so that a server
/// that learns layer sizes from keyframes sees three distinct ones.
pub fn frame_size(layer: Option<u8>) -> (u16, u16) {
    match layer {
        None => (320, 240),
        Some(0) => (320, 180),
        Some(1) => (640, 360),
        Some(_) => (1280, 720),
    }
}

/// The VP8 frame header (RFC 6386 §9.1): 3-byte frame tag, plus start code and the size on
/// keyframes.
fn vp8_frame_header(keyframe: bool, (width, height): (u16, u16), out: &mut BytesMut) {
    // The first partition size is not meaningful here; any small value parses.
    let first_part_size: u32 = 10;
    let inverse_key = if keyframe { 0 } else { 1 };
    let show_frame = 1 << 4;
    let b0 = ((first_part_size & 0x7) << 5) as u8 | show_frame | inverse_key;
    out.put_u8(b0);
    out.put_u8(((first_part_size >> 3) & 0xff) as u8);
    out.put_u8(((first_part_size >> 11) & 0xff) as u8);
    if keyframe {
        out.put_slice(&[0x9d, 0x01, 0x2a]);
        out.put_u16_le(width);
        out.put_u16_le(height);
    }
}

/// The exact payload that `sender` sends as its `counter`-th packet of `kind`.
///
/// # Panics
///
/// If `sender` contains `/`, which would make the tag ambiguous.
pub fn expected_payload(tag: &MediaTag) -> Bytes {
    assert!(
        !tag.sender.contains('/'),
        "a sender name in a media tag may not contain '/'"
    );
    let (len, mut out) = match tag.kind {
        MediaKind::Audio => (
            AUDIO_PAYLOAD_LEN,
            BytesMut::with_capacity(AUDIO_PAYLOAD_LEN),
        ),
        MediaKind::Video => {
            let len = video_payload_len(tag.layer);
            let mut out = BytesMut::with_capacity(len);
            out.put_u8(VP8_DESCRIPTOR);
            vp8_frame_header(tag.keyframe, frame_size(tag.layer), &mut out);
            (len, out)
        }
    };
    out.put_slice(TAG_MAGIC);
    let layer = tag.layer.map(|l| format!("L{l}/")).unwrap_or_default();
    out.put_slice(
        format!(
            "{}/{}/{layer}{}/{}/",
            tag.sender,
            kind_str(tag.kind),
            tag.counter,
            if tag.keyframe { "K" } else { "D" }
        )
        .as_bytes(),
    );
    // Filler that changes with the counter and the position, so a stale or shifted payload
    // does not compare equal by accident.
    let mut i: u32 = 0;
    while out.len() < len {
        out.put_u8((tag.counter.wrapping_mul(31).wrapping_add(i.wrapping_mul(7)) & 0xff) as u8);
        i += 1;
    }
    out.freeze()
}

/// Reads the tag out of a payload made by [`expected_payload`]. `None` for anything else.
pub fn parse_tag(payload: &[u8]) -> Option<MediaTag> {
    let start = payload
        .windows(TAG_MAGIC.len())
        .position(|w| w == TAG_MAGIC)?
        + TAG_MAGIC.len();
    let rest = &payload[start..];
    let mut fields = rest.splitn(6, |&b| b == b'/');
    let sender = std::str::from_utf8(fields.next()?).ok()?.to_owned();
    let kind = match fields.next()? {
        b"audio" => MediaKind::Audio,
        b"video" => MediaKind::Video,
        _ => return None,
    };
    // A counter is all digits, so a field starting with `L` can only be the layer.
    let mut next = fields.next()?;
    let layer = match next.strip_prefix(b"L") {
        Some(digits) => {
            let layer = std::str::from_utf8(digits).ok()?.parse().ok()?;
            next = fields.next()?;
            Some(layer)
        }
        None => None,
    };
    let counter = std::str::from_utf8(next).ok()?.parse().ok()?;
    let keyframe = match fields.next()? {
        b"K" => true,
        b"D" => false,
        _ => return None,
    };
    Some(MediaTag {
        sender,
        kind,
        counter,
        keyframe,
        layer,
    })
}

/// Whether a VP8 RTP payload starts a keyframe (descriptor without extensions, S bit set, and
/// the frame tag's inverse key bit clear).
pub fn is_vp8_keyframe(payload: &[u8]) -> bool {
    match payload {
        [descriptor, frame_tag, ..] => {
            descriptor & 0x80 == 0 && descriptor & 0x10 != 0 && frame_tag & 0x01 == 0
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_payloads_are_exact() {
        for kind in [MediaKind::Audio, MediaKind::Video] {
            for keyframe in [false, true] {
                let tag = MediaTag {
                    sender: "ada".into(),
                    kind,
                    counter: 4711,
                    keyframe: keyframe && kind == MediaKind::Video,
                    layer: None,
                };
                let payload = expected_payload(&tag);
                let want = match kind {
                    MediaKind::Audio => AUDIO_PAYLOAD_LEN,
                    MediaKind::Video => VIDEO_PAYLOAD_LEN,
                };
                assert_eq!(payload.len(), want);
                assert_eq!(parse_tag(&payload).as_ref(), Some(&tag));
                if kind == MediaKind::Video {
                    assert_eq!(payload[0], VP8_DESCRIPTOR);
                    assert_eq!(is_vp8_keyframe(&payload), tag.keyframe);
                }
            }
        }
    }

    #[test]
    fn payloads_differ_between_counters_and_senders() {
        let a = |sender: &str, counter| {
            expected_payload(&MediaTag {
                sender: sender.into(),
                kind: MediaKind::Audio,
                counter,
                keyframe: false,
                layer: None,
            })
        };
        assert_ne!(a("ada", 1), a("ada", 2));
        assert_ne!(a("ada", 1), a("bob", 1));
        assert_eq!(parse_tag(b"garbage"), None);
    }

    #[test]
    fn layered_tags_round_trip_and_keyframes_announce_the_layer_size() {
        for layer in 0..3u8 {
            let tag = MediaTag {
                sender: "ada".into(),
                kind: MediaKind::Video,
                counter: 12,
                keyframe: true,
                layer: Some(layer),
            };
            let payload = expected_payload(&tag);
            assert_eq!(payload.len(), video_payload_len(Some(layer)));
            assert_eq!(parse_tag(&payload).as_ref(), Some(&tag));
            assert!(is_vp8_keyframe(&payload));
            // descriptor, frame tag, start code, then the size
            let (w, h) = frame_size(Some(layer));
            assert_eq!(&payload[4..7], &[0x9d, 0x01, 0x2a]);
            assert_eq!(u16::from_le_bytes([payload[7], payload[8]]), w);
            assert_eq!(u16::from_le_bytes([payload[9], payload[10]]), h);
            let other = MediaTag {
                layer: Some((layer + 1) % 3),
                ..tag
            };
            assert_ne!(expected_payload(&other), payload);
        }
    }
}
