//! RED payloads (RFC 2198) from a publisher: `red::primary` and `red::blocks` must agree,
//! every block must lie inside the payload, in order and without overlap, and the
//! subscription that unwraps RED for a subscriber without it must send exactly the primary
//! block, with Opus's payload type, or drop the packet.
#![no_main]

use bytes::Bytes;
use chorus_sfu::peer::HeaderRewrite;
use chorus_sfu::red;
use libfuzzer_sys::fuzz_target;
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;

/// The publisher's RED and Opus payload types, and the subscriber's Opus.
const RED_PT: u8 = 63;
const OPUS_PT: u8 = 111;
const SUBSCRIBER_OPUS_PT: u8 = 109;

fuzz_target!(|data: &[u8]| {
    let primary = red::primary(data);
    match red::blocks(data) {
        Ok(blocks) => {
            let blocks: Vec<_> = blocks.collect();
            let (pt, range) = primary.clone().expect("blocks parse, so the primary does");
            let last = blocks.last().expect("there is always a primary block");
            assert!(last.primary && last.payload_type == pt && last.data == range);
            assert_eq!(last.timestamp_offset, 0);
            assert_eq!(range.end, data.len());
            let mut at = blocks[0].data.start;
            for block in &blocks {
                assert_eq!(block.data.start, at, "blocks are contiguous");
                assert!(block.data.end <= data.len());
                assert!(block.payload_type < 0x80);
                at = block.data.end;
            }
            assert_eq!(blocks.iter().filter(|b| b.primary).count(), 1);
        }
        Err(err) => {
            assert_eq!(primary.err(), Some(err));
        }
    }

    let mut rewrite = HeaderRewrite::new(0x5000_0001);
    rewrite.pt.insert(RED_PT, SUBSCRIBER_OPUS_PT);
    rewrite.pt.insert(OPUS_PT, SUBSCRIBER_OPUS_PT);
    rewrite.unwrap_red = Some((RED_PT, OPUS_PT));
    let source = Packet {
        header: Header {
            version: 2,
            payload_type: RED_PT,
            sequence_number: 7,
            timestamp: 960,
            ssrc: 0x1234_5678,
            ..Default::default()
        },
        payload: Bytes::copy_from_slice(data),
    };
    match rewrite.apply(&source) {
        Ok(copy) => {
            let (pt, range) = red::primary(data).expect("an unwrapped copy had a primary");
            assert_eq!(pt, OPUS_PT);
            assert_eq!(&copy.payload[..], &data[range]);
            assert!(!copy.payload.is_empty());
            assert_eq!(copy.header.payload_type, SUBSCRIBER_OPUS_PT);
            assert_eq!(copy.header.ssrc, 0x5000_0001);
        }
        Err(_) => {
            let usable = matches!(red::primary(data), Ok((OPUS_PT, r)) if !r.is_empty());
            assert!(!usable, "a usable RED packet was dropped");
        }
    }
});
