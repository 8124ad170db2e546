//! RFC 2198 redundant audio (RED), as browsers send Opus in it (`audio/red/48000/2`, fmtp
//! `111/111`): each packet carries the current frame (the primary block) and, before it,
//! copies of one or more earlier frames, so that a lost packet is made up from the next.
//!
//! Sans-IO and allocation-free: the functions read a payload and return ranges of it. The
//! forwarder uses [`primary`] to give plain Opus to a subscriber that did not negotiate RED
//! (the copy's payload is a slice of the same buffer); a recorder can walk every block with
//! [`blocks`] to fill a loss from the redundancy of the next packet.
//!
//! The payload layout:
//!
//! ```text
//!  one 4-byte header per redundant block     F=1 | block PT (7) | ts offset (14) | length (10)
//!  one 1-byte header for the primary block   F=0 | block PT (7)
//!  the redundant blocks' data, in header order, then the primary block's data (the rest)
//! ```

use std::ops::Range;

/// Why a RED payload was not used (the packet is dropped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedError {
    /// The payload is empty: not even the primary block's header.
    #[error("empty RED payload")]
    Empty,
    /// A block header runs past the end of the payload (no F=0 header before the end).
    #[error("RED block header truncated")]
    TruncatedHeader,
    /// The redundant blocks' lengths add up to more than the payload holds.
    #[error("RED block lengths exceed the payload")]
    Overrun,
}

/// One block of a RED payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedBlock {
    /// The payload type of the block's data (Opus's, for browsers).
    pub payload_type: u8,
    /// How many RTP timestamp units this block is older than the packet's timestamp
    /// (0 for the primary block).
    pub timestamp_offset: u16,
    /// Where the block's data is in the RED payload.
    pub data: Range<usize>,
    /// Whether this is the primary block (the newest frame: the last one).
    pub primary: bool,
}

/// Size of a redundant block's header.
const REDUNDANT_HEADER: usize = 4;

/// Walks the headers of a RED payload: returns the number of redundant blocks, the sum of
/// their lengths, the primary block's payload type and where the block data starts.
fn headers(payload: &[u8]) -> Result<(usize, usize, u8, usize), RedError> {
    if payload.is_empty() {
        return Err(RedError::Empty);
    }
    let mut at = 0;
    let mut count = 0;
    let mut lengths = 0;
    loop {
        let first = *payload.get(at).ok_or(RedError::TruncatedHeader)?;
        if first & 0x80 == 0 {
            let data_start = at + 1;
            if data_start + lengths > payload.len() {
                return Err(RedError::Overrun);
            }
            return Ok((count, lengths, first & 0x7f, data_start));
        }
        let header = payload
            .get(at..at + REDUNDANT_HEADER)
            .ok_or(RedError::TruncatedHeader)?;
        lengths += usize::from(u16::from_be_bytes([header[2], header[3]]) & 0x03ff);
        count += 1;
        at += REDUNDANT_HEADER;
    }
}

/// The primary block of a RED payload: its payload type and where its data is. The data
/// may be empty (a frame that carried nothing).
pub fn primary(payload: &[u8]) -> Result<(u8, Range<usize>), RedError> {
    let (_, lengths, pt, data_start) = headers(payload)?;
    Ok((pt, data_start + lengths..payload.len()))
}

/// Every block of a RED payload, oldest first, the primary block last. Checked as a whole
/// before the first block is returned: a malformed payload yields an error and no block.
pub fn blocks(payload: &[u8]) -> Result<impl Iterator<Item = RedBlock> + '_, RedError> {
    let (count, lengths, primary_pt, data_start) = headers(payload)?;
    let mut data_at = data_start;
    let redundant = (0..count).map(move |i| {
        let h = &payload[i * REDUNDANT_HEADER..(i + 1) * REDUNDANT_HEADER];
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]) & 0x03ff);
        let block = RedBlock {
            payload_type: h[0] & 0x7f,
            timestamp_offset: u16::from_be_bytes([h[1], h[2]]) >> 2,
            data: data_at..data_at + len,
            primary: false,
        };
        data_at += len;
        block
    });
    let last = std::iter::once(RedBlock {
        payload_type: primary_pt,
        timestamp_offset: 0,
        data: data_start + lengths..payload.len(),
        primary: true,
    });
    Ok(redundant.chain(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RED payload as Chromium sends it: one redundant Opus frame 960 ticks old, then
    /// the primary frame.
    fn chromium_like() -> Vec<u8> {
        let old = [0xa1, 0xa2, 0xa3];
        let new = [0xb1, 0xb2, 0xb3, 0xb4, 0xb5];
        let mut p = Vec::new();
        // F=1, PT 111, offset 960, length 3
        let word: u32 = (1 << 31) | (111 << 24) | (960 << 10) | 3;
        p.extend_from_slice(&word.to_be_bytes());
        p.push(111); // F=0, PT 111
        p.extend_from_slice(&old);
        p.extend_from_slice(&new);
        p
    }

    #[test]
    fn the_primary_block_is_the_data_after_the_redundant_ones() {
        let p = chromium_like();
        let (pt, range) = primary(&p).expect("valid");
        assert_eq!(pt, 111);
        assert_eq!(&p[range], &[0xb1, 0xb2, 0xb3, 0xb4, 0xb5]);
    }

    #[test]
    fn every_block_comes_out_with_its_offset_and_payload_type() {
        let p = chromium_like();
        let all: Vec<RedBlock> = blocks(&p).expect("valid").collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].payload_type, 111);
        assert_eq!(all[0].timestamp_offset, 960);
        assert!(!all[0].primary);
        assert_eq!(&p[all[0].data.clone()], &[0xa1, 0xa2, 0xa3]);
        assert!(all[1].primary);
        assert_eq!(all[1].timestamp_offset, 0);
        assert_eq!(all[1].data, primary(&p).expect("valid").1);
    }

    #[test]
    fn a_packet_with_only_the_primary_block_is_plain_data_after_one_byte() {
        // Chromium's first RED packet has no earlier frame to repeat.
        let p = [111, 9, 8, 7];
        assert_eq!(primary(&p), Ok((111, 1..4)));
        assert_eq!(blocks(&p).expect("valid").count(), 1);
    }

    #[test]
    fn the_largest_offset_and_length_are_read_whole() {
        let word: u32 = (1 << 31) | (111 << 24) | (0x3fff << 10) | 0x3ff;
        let mut p = word.to_be_bytes().to_vec();
        p.push(111);
        p.extend(std::iter::repeat_n(0u8, 0x3ff + 2));
        let all: Vec<RedBlock> = blocks(&p).expect("valid").collect();
        assert_eq!(all[0].timestamp_offset, 0x3fff);
        assert_eq!(all[0].data.len(), 0x3ff);
        assert_eq!(all[1].data.len(), 2);
    }

    #[test]
    fn an_empty_primary_block_is_valid_and_empty() {
        let p = [111];
        assert_eq!(primary(&p), Ok((111, 1..1)));
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        assert_eq!(primary(&[]), Err(RedError::Empty));
        // F=1 and nothing after it, or a header cut short
        assert_eq!(primary(&[0x80 | 111]), Err(RedError::TruncatedHeader));
        assert_eq!(primary(&[0x80 | 111, 0, 0]), Err(RedError::TruncatedHeader));
        // only redundant headers, no primary header
        let word: u32 = (1 << 31) | (111 << 24) | 2;
        assert_eq!(primary(&word.to_be_bytes()), Err(RedError::TruncatedHeader));
        // a redundant block longer than what follows
        let mut p = word.to_be_bytes().to_vec();
        p.extend_from_slice(&[111, 1]);
        assert_eq!(primary(&p), Err(RedError::Overrun));
        assert!(blocks(&p).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // every 1- to 3-byte payload, and a few longer patterns
        for a in 0..=255u8 {
            let _ = primary(&[a]);
            for b in [0u8, 1, 0x7f, 0x80, 0xff] {
                let _ = primary(&[a, b]);
                let _ = primary(&[a, b, a, b, a]);
                if let Ok(it) = blocks(&[a, b, 0xff, 0xff, 0x00, 1, 2]) {
                    for block in it {
                        assert!(block.data.end <= 7);
                    }
                }
            }
        }
    }
}
