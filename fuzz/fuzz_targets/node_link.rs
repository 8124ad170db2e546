//! What a node receives on a node link from another node of the cluster: a handshake step
//! (`chorus_cluster::link::parse`), a control message (`SpanMessage`) or a media frame
//! (`span::wire::read_media`). Nothing panics, and whatever parses writes back to what was
//! read. (A sealed link only delivers what a node holding the cluster secret sealed; this
//! covers a node with a bug as well as the parsers themselves.)
#![no_main]

use bytes::Bytes;
use chorus_sfu::span::wire::{SpanMessage, read_media, write_media};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = chorus_cluster::link::parse(text);
        if let Ok(message) = serde_json::from_str::<SpanMessage>(text) {
            let again = serde_json::to_string(&message).expect("a parsed message serializes");
            let back: SpanMessage = serde_json::from_str(&again).expect("and reads back");
            assert_eq!(back, message, "{again}");
        }
    }
    if let Some(frame) = read_media(Bytes::copy_from_slice(data)) {
        let mut out = Vec::new();
        write_media(
            &mut out,
            frame.track,
            frame.layer,
            frame.keyframe,
            frame.size,
            &frame.packet,
        );
        let back = read_media(Bytes::from(out)).expect("a written frame reads back");
        assert_eq!(
            (back.track, back.layer, back.keyframe, back.size),
            (frame.track, frame.layer, frame.keyframe, frame.size)
        );
        assert_eq!(back.packet.payload(), frame.packet.payload());
        assert_eq!(back.packet.sequence_number(), frame.packet.sequence_number());
        assert_eq!(back.packet.ssrc(), frame.packet.ssrc());
    }
});
