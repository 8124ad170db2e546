//! An IVF writer: the simple container of the libvpx tools, which ffmpeg and every VP8/VP9
//! player read. A 32-byte file header (codec, size, time base, frame count) and then each
//! frame as a 12-byte header (size, 64-bit timestamp) and its data. The time base is the
//! RTP clock, 1/90000 s, so timestamps need no conversion. The header's length field is
//! written when the file is finished (it starts at 0, which readers accept): ffmpeg reads
//! it as the stream's duration in time-base units, so it gets the duration up to the end
//! of the last frame (the last timestamp plus the mean frame interval), as ffmpeg's own
//! IVF muxer writes it, rather than the frame count libvpx's tools write with a time base
//! of one frame.

use std::io::{self, Seek, SeekFrom, Write};

/// The RTP video clock, used as the file's time base.
pub const VIDEO_CLOCK: u32 = 90_000;

pub struct IvfWriter<W: Write + Seek> {
    out: W,
    frames: u32,
    last_pts: u64,
    written: u64,
}

impl<W: Write + Seek> IvfWriter<W> {
    /// Writes the file header. `fourcc` is `VP80` or `VP90`.
    pub fn new(mut out: W, fourcc: &[u8; 4], width: u16, height: u16) -> io::Result<Self> {
        let mut header = [0u8; 32];
        header[0..4].copy_from_slice(b"DKIF");
        header[4..6].copy_from_slice(&0u16.to_le_bytes()); // version
        header[6..8].copy_from_slice(&32u16.to_le_bytes()); // header size
        header[8..12].copy_from_slice(fourcc);
        header[12..14].copy_from_slice(&width.to_le_bytes());
        header[14..16].copy_from_slice(&height.to_le_bytes());
        header[16..20].copy_from_slice(&VIDEO_CLOCK.to_le_bytes()); // time base denominator
        header[20..24].copy_from_slice(&1u32.to_le_bytes()); // numerator
        // 24..28: frame count, written by `finish`; 28..32 unused
        out.write_all(&header)?;
        Ok(Self {
            out,
            frames: 0,
            last_pts: 0,
            written: 32,
        })
    }

    /// Adds one frame at `pts` (90 kHz ticks since the file's start).
    pub fn write_frame(&mut self, frame: &[u8], pts: u64) -> io::Result<()> {
        let mut header = [0u8; 12];
        header[0..4].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        header[4..12].copy_from_slice(&pts.to_le_bytes());
        self.out.write_all(&header)?;
        self.out.write_all(frame)?;
        self.frames += 1;
        self.last_pts = pts;
        self.written += 12 + frame.len() as u64;
        Ok(())
    }

    pub fn frames(&self) -> u32 {
        self.frames
    }

    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The stream's duration in 90 kHz ticks: to the end of the last frame, taking the
    /// mean frame interval as its length.
    pub fn duration(&self) -> u64 {
        match self.frames {
            0 | 1 => 0,
            n => self.last_pts + self.last_pts / u64::from(n - 1),
        }
    }

    /// Writes the duration into the header and flushes.
    pub fn finish(mut self) -> io::Result<W> {
        let duration = u32::try_from(self.duration()).unwrap_or(u32::MAX);
        self.out.seek(SeekFrom::Start(24))?;
        self.out.write_all(&duration.to_le_bytes())?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn header_frames_and_duration() {
        let mut writer = IvfWriter::new(Cursor::new(Vec::new()), b"VP80", 320, 240).unwrap();
        writer.write_frame(&[1, 2, 3], 0).unwrap();
        writer.write_frame(&[4, 5], 3000).unwrap();
        let bytes = writer.finish().unwrap().into_inner();
        assert_eq!(&bytes[0..4], b"DKIF");
        assert_eq!(&bytes[8..12], b"VP80");
        assert_eq!(u16::from_le_bytes([bytes[12], bytes[13]]), 320);
        assert_eq!(u16::from_le_bytes([bytes[14], bytes[15]]), 240);
        assert_eq!(
            u32::from_le_bytes(bytes[16..20].try_into().unwrap()),
            90_000
        );
        // the duration: two frames 3000 ticks apart last 6000
        assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 6000);
        assert_eq!(u32::from_le_bytes(bytes[32..36].try_into().unwrap()), 3);
        assert_eq!(&bytes[44..47], &[1, 2, 3]);
        assert_eq!(u64::from_le_bytes(bytes[51..59].try_into().unwrap()), 3000);
        assert_eq!(bytes.len(), 32 + 12 + 3 + 12 + 2);
    }
}
