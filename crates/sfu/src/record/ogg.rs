//! An Ogg Opus writer (RFC 3533 pages, RFC 7845 Opus mapping), sans-IO over any `Write`.
//!
//! The caller hands it Opus packets in order with the granule position (48 kHz samples
//! since the start of the file) at the end of each; [`crate::record::track`] derives those
//! from 64-bit extended RTP timestamps, so a 32-bit timestamp wrap is invisible here.
//! Packets are gathered into pages of up to [`PACKETS_PER_PAGE`] (one second of 20 ms
//! frames), so the page overhead stays near 1 %.

use std::io::{self, Write};

/// Packets per page: one second of 20 ms Opus frames. A page holds at most 255 lacing
/// values; an Opus packet of up to 1275 bytes needs at most 6 of them.
const PACKETS_PER_PAGE: usize = 40;

/// The stream's serial number: one logical stream per file, so any constant will do.
const SERIAL: u32 = 0x4348_5253; // "CHRS"

/// Header type flags of a page.
const CONTINUED: u8 = 0x01;
const BEGIN: u8 = 0x02;
const END: u8 = 0x04;

/// The Ogg CRC-32: polynomial 0x04c11db7, not reflected, initial value 0, no final xor
/// (RFC 3533 §6).
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04c1_1db7
            } else {
                r << 1
            };
            bit += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
};

pub(crate) fn crc32(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |crc, &byte| {
        (crc << 8) ^ CRC_TABLE[usize::from(((crc >> 24) as u8) ^ byte)]
    })
}

/// Writes one Ogg Opus stream.
pub struct OggOpusWriter<W: Write> {
    out: W,
    sequence: u32,
    /// The page being gathered: its lacing values and data.
    lacing: Vec<u8>,
    data: Vec<u8>,
    packets: usize,
    /// The granule position at the end of the last packet in the page.
    granule: u64,
    /// Bytes written so far.
    written: u64,
}

impl<W: Write> OggOpusWriter<W> {
    /// Starts a stream: writes the identification header (`OpusHead`) and the comment
    /// header (`OpusTags`) pages.
    pub fn new(out: W, channels: u8) -> io::Result<Self> {
        let mut writer = Self {
            out,
            sequence: 0,
            lacing: Vec::with_capacity(255),
            data: Vec::with_capacity(8192),
            packets: 0,
            granule: 0,
            written: 0,
        };
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(channels.max(1));
        head.extend_from_slice(&0u16.to_le_bytes()); // pre-skip: unknown encoder, none
        head.extend_from_slice(&48_000u32.to_le_bytes()); // the original input rate
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family 0: mono or stereo
        writer.write_page(BEGIN, 0, &[&head])?;
        let vendor = b"chorus";
        let mut tags = Vec::with_capacity(8 + 4 + vendor.len() + 4);
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes()); // no user comments
        writer.write_page(0, 0, &[&tags])?;
        Ok(writer)
    }

    /// Adds one packet whose last sample is at `granule_end` (samples at 48 kHz).
    pub fn write_packet(&mut self, packet: &[u8], granule_end: u64) -> io::Result<()> {
        let segments = packet.len() / 255 + 1;
        if self.lacing.len() + segments > 255 {
            self.flush_page(0)?;
        }
        let mut rest = packet.len();
        while rest >= 255 {
            self.lacing.push(255);
            rest -= 255;
        }
        self.lacing.push(rest as u8);
        self.data.extend_from_slice(packet);
        self.packets += 1;
        self.granule = granule_end;
        if self.packets >= PACKETS_PER_PAGE {
            self.flush_page(0)?;
        }
        Ok(())
    }

    /// Writes the gathered packets as a page (if any).
    fn flush_page(&mut self, flags: u8) -> io::Result<()> {
        if self.packets == 0 && flags & END == 0 {
            return Ok(());
        }
        let lacing = std::mem::take(&mut self.lacing);
        let data = std::mem::take(&mut self.data);
        let result = self.write_laced(flags, self.granule, &lacing, &data);
        self.lacing = lacing;
        self.data = data;
        self.lacing.clear();
        self.data.clear();
        self.packets = 0;
        result
    }

    /// Writes a page of whole packets (used for the headers).
    fn write_page(&mut self, flags: u8, granule: u64, packets: &[&[u8]]) -> io::Result<()> {
        let mut lacing = Vec::new();
        let mut data = Vec::new();
        for packet in packets {
            let mut rest = packet.len();
            while rest >= 255 {
                lacing.push(255);
                rest -= 255;
            }
            lacing.push(rest as u8);
            data.extend_from_slice(packet);
        }
        self.write_laced(flags, granule, &lacing, &data)
    }

    fn write_laced(
        &mut self,
        flags: u8,
        granule: u64,
        lacing: &[u8],
        data: &[u8],
    ) -> io::Result<()> {
        debug_assert!(flags & CONTINUED == 0, "packets never span pages here");
        let mut page = Vec::with_capacity(27 + lacing.len() + data.len());
        page.extend_from_slice(b"OggS");
        page.push(0); // version
        page.push(flags);
        page.extend_from_slice(&granule.to_le_bytes());
        page.extend_from_slice(&SERIAL.to_le_bytes());
        page.extend_from_slice(&self.sequence.to_le_bytes());
        page.extend_from_slice(&0u32.to_le_bytes()); // CRC, filled in below
        page.push(lacing.len() as u8);
        page.extend_from_slice(lacing);
        page.extend_from_slice(data);
        let crc = crc32(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&page)?;
        self.sequence += 1;
        self.written += page.len() as u64;
        Ok(())
    }

    /// Ends the stream: the last page carries the end-of-stream flag. Returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush_page(END)?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Writes what is gathered so far as a page, so that a crash loses at most this much.
    pub fn flush(&mut self) -> io::Result<()> {
        self.flush_page(0)?;
        self.out.flush()
    }

    pub fn bytes_written(&self) -> u64 {
        self.written
    }
}

/// How many 48 kHz samples an Opus packet holds (RFC 6716 §3.1), `None` for a packet that
/// is empty or malformed.
pub fn opus_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Samples per frame at 48 kHz, by configuration number.
    let per_frame: u32 = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames: u32 = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    let samples = per_frame * frames;
    // No packet may be longer than 120 ms.
    (frames > 0 && samples <= 5760).then_some(samples)
}

/// An Opus packet that carries nothing for `like`'s frame duration: its TOC byte (code 0:
/// one frame) with no frame data, which a decoder plays as a lost frame (concealment fading
/// to silence). Used to fill a gap so that granule positions keep time.
pub fn silent_packet(like: u8) -> [u8; 1] {
    [like & !0x03]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One page read back: flags, granule, sequence, packets.
    #[derive(Debug)]
    pub(crate) struct Page {
        pub flags: u8,
        pub granule: u64,
        pub sequence: u32,
        pub packets: Vec<Vec<u8>>,
    }

    pub(crate) fn read_pages(mut bytes: &[u8]) -> Vec<Page> {
        let mut pages = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(&bytes[..4], b"OggS");
            let flags = bytes[5];
            let granule = u64::from_le_bytes(bytes[6..14].try_into().unwrap());
            let sequence = u32::from_le_bytes(bytes[18..22].try_into().unwrap());
            let crc = u32::from_le_bytes(bytes[22..26].try_into().unwrap());
            let count = usize::from(bytes[26]);
            let lacing = &bytes[27..27 + count];
            let len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
            let total = 27 + count + len;
            let mut copy = bytes[..total].to_vec();
            copy[22..26].fill(0);
            assert_eq!(crc32(&copy), crc, "page CRC");
            let mut packets = Vec::new();
            let mut current = Vec::new();
            let mut at = 27 + count;
            for &l in lacing {
                current.extend_from_slice(&bytes[at..at + usize::from(l)]);
                at += usize::from(l);
                if l < 255 {
                    packets.push(std::mem::take(&mut current));
                }
            }
            pages.push(Page {
                flags,
                granule,
                sequence,
                packets,
            });
            bytes = &bytes[total..];
        }
        pages
    }

    #[test]
    fn crc_matches_the_ogg_reference_value() {
        // The CRC of "123456789" with Ogg's parameters (CRC-32/MPEG-2 without the
        // initial all-ones and final xor, i.e. CRC-32/BZIP2's sibling "CRC-32/OGG").
        assert_eq!(crc32(b"123456789"), 0x89a1_897f);
    }

    #[test]
    fn headers_then_pages_with_granules_and_end_of_stream() {
        let mut writer = OggOpusWriter::new(Vec::new(), 2).unwrap();
        let packet = [0x78u8, 1, 2, 3]; // config 15: 20 ms
        for i in 1..=100u64 {
            writer.write_packet(&packet, i * 960).unwrap();
        }
        let bytes = writer.finish().unwrap();
        let pages = read_pages(&bytes);
        assert_eq!(pages[0].flags, BEGIN);
        assert_eq!(&pages[0].packets[0][..8], b"OpusHead");
        assert_eq!(pages[0].packets[0][9], 2);
        assert_eq!(&pages[1].packets[0][..8], b"OpusTags");
        let audio = &pages[2..];
        assert_eq!(audio.len(), 3, "40 + 40 + 20 packets");
        assert_eq!(audio[0].granule, 40 * 960);
        assert_eq!(audio[1].granule, 80 * 960);
        assert_eq!(audio[2].granule, 100 * 960);
        assert_eq!(audio[2].flags, END);
        for (i, page) in pages.iter().enumerate() {
            assert_eq!(page.sequence, i as u32);
        }
        let total: usize = audio.iter().map(|p| p.packets.len()).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn long_packets_are_laced_across_255_byte_segments() {
        let mut writer = OggOpusWriter::new(Vec::new(), 1).unwrap();
        let big = vec![0x78u8; 600];
        let exact = vec![0x78u8; 510];
        writer.write_packet(&big, 960).unwrap();
        writer.write_packet(&exact, 1920).unwrap();
        let pages = read_pages(&writer.finish().unwrap());
        assert_eq!(pages[2].packets, vec![big, exact]);
    }

    #[test]
    fn opus_durations_from_the_toc() {
        assert_eq!(opus_samples(&[0x78]), Some(960)); // CELT FB 20 ms, one frame
        assert_eq!(opus_samples(&[0x79, 0]), Some(1920)); // two frames
        assert_eq!(opus_samples(&[0x7b, 0x03]), Some(2880)); // code 3, three frames
        assert_eq!(opus_samples(&[0x08]), Some(960)); // SILK NB 20 ms
        assert_eq!(opus_samples(&[0x18]), Some(2880)); // SILK NB 60 ms
        assert_eq!(opus_samples(&[]), None);
        assert_eq!(opus_samples(&[0x7b, 0x00]), None); // zero frames
        assert_eq!(silent_packet(0x7b), [0x78]);
        assert_eq!(opus_samples(&silent_packet(0x79)), Some(960));
    }
}
