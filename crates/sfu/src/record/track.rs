//! One recorded track, sans-IO: RTP packets in (any order, with their arrival times),
//! frames out into a container, opened on the first frame that can start a file (any
//! Opus packet; a video keyframe).
//!
//! - Packets go through a [`JitterBuffer`] per source, then, for video, a
//!   [`FrameAssembler`]. A broken frame stops the file until the next keyframe, and raises
//!   [`TrackRecorder::take_keyframe_wanted`] so the caller asks the publisher for one.
//! - Timestamps are extended to 64 bits in release order, so a 32-bit RTP timestamp wrap is
//!   only a step of the clock. When the source changes (a simulcast layer switch, always on
//!   a keyframe, or a restarted encoder's new SSRC) the new source's clock is rebased to
//!   continue from the old one's by the wall-clock time between them; a resume on the same
//!   SSRC keeps its clock.
//! - Audio: RED is unwrapped (its primary block, and its redundant blocks to fill what was
//!   lost, see [`crate::red`]); a gap in the timestamps (a muted microphone, DTX, losses) is
//!   filled with empty Opus frames, which decoders play as concealment fading to silence,
//!   so that the Ogg granule positions keep the call's time.

use std::io::{self, Seek, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::frames::{Assembled, FrameAssembler, VideoCodec};
use super::ivf::{IvfWriter, VIDEO_CLOCK};
use super::jitter::JitterBuffer;
use super::ogg::{OggOpusWriter, opus_samples, silent_packet};
use crate::red;

/// How long a video packet after a hole waits for the retransmission the publisher leg's
/// NACK generator asked for. A few round trips of a real network; beyond this, the frame
/// is given up and a keyframe asked for.
pub const VIDEO_JITTER_DELAY: Duration = Duration::from_millis(300);

/// Audio asks for no retransmissions (RED covers losses), so it waits only for
/// reordering.
pub const AUDIO_JITTER_DELAY: Duration = Duration::from_millis(80);

/// Most packets a track's jitter buffer holds: 300 ms of a 2.5 Mbit/s video in 1200-byte
/// packets is about 80; beyond this the oldest hole is given up at once.
const JITTER_CAPACITY: usize = 512;

/// What a track is recorded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackCodec {
    /// Opus, in RED with this payload type when the publisher negotiated it.
    Opus {
        red: Option<u8>,
    },
    Video(VideoCodec),
}

impl TrackCodec {
    /// The file extension of its container.
    pub fn extension(self) -> &'static str {
        match self {
            TrackCodec::Opus { .. } => "opus",
            TrackCodec::Video(VideoCodec::Vp8 | VideoCodec::Vp9) => "ivf",
            TrackCodec::Video(VideoCodec::H264) => "h264",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TrackCodec::Opus { .. } => "opus",
            TrackCodec::Video(VideoCodec::Vp8) => "vp8",
            TrackCodec::Video(VideoCodec::Vp9) => "vp9",
            TrackCodec::Video(VideoCodec::H264) => "h264",
        }
    }

    pub fn container(self) -> &'static str {
        match self {
            TrackCodec::Opus { .. } => "ogg",
            TrackCodec::Video(VideoCodec::Vp8 | VideoCodec::Vp9) => "ivf",
            TrackCodec::Video(VideoCodec::H264) => "annexb",
        }
    }

    pub fn clock_rate(self) -> u32 {
        match self {
            TrackCodec::Opus { .. } => 48_000,
            TrackCodec::Video(_) => VIDEO_CLOCK,
        }
    }
}

/// One RTP packet of a recorded track, as the media worker handed it over.
#[derive(Debug, Clone)]
pub struct RecordPacket {
    /// The publisher's SSRC: a new one (a restarted encoder) starts a new source.
    pub ssrc: u32,
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload_type: u8,
    /// The first packet of a new source: the recording's first, or the keyframe of a
    /// simulcast layer switch.
    pub switched: bool,
    pub payload: Bytes,
    pub arrival: Instant,
}

/// The container of one file.
enum Container<W: Write + Seek> {
    Ogg(OggOpusWriter<W>),
    Ivf(IvfWriter<W>),
    AnnexB { out: W, written: u64 },
}

/// What is known of a track's file, for the sidecar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackReport {
    /// When the file's first frame arrived (`None`: no file yet).
    pub started: Option<Instant>,
    /// The media time of the file: from its first frame to the end of its last, in the
    /// codec's clock.
    pub duration_ticks: u64,
    /// Frames (video) or packets (audio) written, fill packets not included.
    pub frames: u64,
    /// Empty Opus frames written to fill gaps.
    pub filled: u64,
    /// Video frames that were broken, or skipped while waiting for a keyframe.
    pub frames_skipped: u64,
    /// Packets given up on (never arrived in time).
    pub packets_lost: u64,
    pub bytes: u64,
    pub width: u16,
    pub height: u16,
}

/// Maps one source's 32-bit timestamps onto the file's 64-bit timeline.
#[derive(Debug, Default)]
struct Timeline {
    /// The last extended timestamp of the current source.
    last_in: Option<u64>,
    /// Added to an extended input timestamp to place it on the output timeline.
    offset: i64,
    /// The last output timestamp, and when its packet arrived.
    last_out: Option<(u64, Instant)>,
}

impl Timeline {
    /// A new source: its next packet continues the timeline after the wall-clock time
    /// since the last one.
    fn new_source(&mut self) {
        self.last_in = None;
    }

    /// The output position of a packet with RTP timestamp `ts`; a new source starts
    /// `min_gap` ticks after the last output at least.
    fn map(&mut self, ts: u32, arrival: Instant, clock: u32, min_gap: u64) -> u64 {
        let ext = match self.last_in {
            None => {
                let ext = (1u64 << 32) + u64::from(ts);
                let target = match self.last_out {
                    None => 1u64 << 33,
                    Some((out, at)) => {
                        let gap = arrival.saturating_duration_since(at).as_secs_f64();
                        out + ((gap * f64::from(clock)) as u64).max(min_gap)
                    }
                };
                self.offset = target as i64 - ext as i64;
                ext
            }
            Some(last) => {
                let delta = i64::from(ts.wrapping_sub(last as u32) as i32);
                (last as i64 + delta) as u64
            }
        };
        self.last_in = Some(self.last_in.map_or(ext, |l| l.max(ext)));
        let out = (ext as i64 + self.offset) as u64;
        if self.last_out.is_none_or(|(last, _)| out >= last) {
            self.last_out = Some((out, arrival));
        }
        out
    }
}

/// The least time (90 kHz ticks) between the last frame of one layer and the first of the
/// layer switched to: one frame at 15 fps. The new layer's keyframe is often of the same
/// capture instant as the old layer's last frame; a few ticks apart, players and ffmpeg
/// (which re-times frames at the stream's frame rate) see two frames at one time.
const MIN_SWITCH_GAP: u64 = 6_000;

/// A track being recorded into one file.
pub struct TrackRecorder<W: Write + Seek> {
    codec: TrackCodec,
    jitter: JitterBuffer<RecordPacket>,
    assembler: Option<FrameAssembler>,
    timeline: Timeline,
    container: Option<Container<W>>,
    /// The output timestamp of the file's first frame.
    first: Option<u64>,
    /// Audio: the next sample position expected, from the file's start; video: the last
    /// frame's position.
    position: u64,
    /// The TOC byte of the last Opus packet (the shape of fill frames).
    last_toc: u8,
    need_keyframe: bool,
    keyframe_wanted: bool,
    report: TrackReport,
    /// Set by the first write error: the file is abandoned.
    failed: bool,
    /// The SSRC of the current source.
    ssrc: Option<u32>,
}

impl<W: Write + Seek> TrackRecorder<W> {
    pub fn new(codec: TrackCodec) -> Self {
        let (delay, assembler) = match codec {
            TrackCodec::Opus { .. } => (AUDIO_JITTER_DELAY, None),
            TrackCodec::Video(v) => (VIDEO_JITTER_DELAY, Some(FrameAssembler::new(v))),
        };
        Self {
            codec,
            jitter: JitterBuffer::new(delay, JITTER_CAPACITY),
            assembler,
            timeline: Timeline::default(),
            container: None,
            first: None,
            position: 0,
            last_toc: 0xf8, // CELT fullband 20 ms, until a packet says otherwise
            need_keyframe: true,
            keyframe_wanted: matches!(codec, TrackCodec::Video(_)),
            report: TrackReport::default(),
            failed: false,
            ssrc: None,
        }
    }

    pub fn codec(&self) -> TrackCodec {
        self.codec
    }

    /// Takes a packet. A packet that starts a new source first releases everything of the
    /// old one. `open` creates the file when its first frame is ready.
    pub fn push(
        &mut self,
        packet: RecordPacket,
        open: &mut dyn FnMut() -> io::Result<W>,
    ) -> io::Result<()> {
        // Another SSRC without a layer switch: the publisher restarted its encoder. Its
        // numbers and clock start afresh, and its video needs a keyframe.
        let restarted = self.ssrc.is_some_and(|s| s != packet.ssrc);
        let same_source = self.ssrc == Some(packet.ssrc);
        self.ssrc = Some(packet.ssrc);
        if packet.switched || restarted {
            if restarted && !packet.switched && self.assembler.is_some() {
                self.need_keyframe = true;
                self.keyframe_wanted = true;
            }
            for released in self.jitter.drain() {
                self.release(&released.item, released.lost, open)?;
            }
            self.jitter.restart();
            // A resume on the same SSRC (after a pause) keeps its RTP clock, which says
            // exactly how long the pause was; another source's clock is unrelated.
            if !same_source {
                self.timeline.new_source();
            }
            if let (Some(assembler), TrackCodec::Video(v)) = (&mut self.assembler, self.codec) {
                *assembler = FrameAssembler::new(v);
            }
        }
        let arrival = packet.arrival;
        self.jitter.push(packet.sequence, packet, arrival);
        Ok(())
    }

    /// Writes what the jitter buffer lets go of at `now`.
    pub fn poll(
        &mut self,
        now: Instant,
        open: &mut dyn FnMut() -> io::Result<W>,
    ) -> io::Result<()> {
        while let Some(released) = self.jitter.pop(now) {
            self.release(&released.item, released.lost, open)?;
        }
        Ok(())
    }

    /// Whether a keyframe should be asked for (cleared by reading it).
    pub fn take_keyframe_wanted(&mut self) -> bool {
        std::mem::take(&mut self.keyframe_wanted)
    }

    pub fn report(&self) -> &TrackReport {
        &self.report
    }

    pub fn late_packets(&self) -> u64 {
        self.jitter.late()
    }

    /// Gives up on the file after a write error: nothing more is written.
    pub fn fail(&mut self) {
        self.failed = true;
        self.container = None;
    }

    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Writes buffered data to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.container {
            Some(Container::Ogg(w)) => w.flush(),
            Some(Container::Ivf(w)) => w.flush(),
            Some(Container::AnnexB { out, .. }) => out.flush(),
            None => Ok(()),
        }
    }

    /// Releases everything still buffered and finishes the file. Returns the file's
    /// writer, `None` when no file was opened.
    pub fn finish(&mut self, open: &mut dyn FnMut() -> io::Result<W>) -> io::Result<Option<W>> {
        for released in self.jitter.drain() {
            self.release(&released.item, released.lost, open)?;
        }
        match self.container.take() {
            Some(Container::Ogg(w)) => w.finish().map(Some),
            Some(Container::Ivf(w)) => w.finish().map(Some),
            Some(Container::AnnexB { mut out, .. }) => {
                out.flush()?;
                Ok(Some(out))
            }
            None => Ok(None),
        }
    }

    fn release(
        &mut self,
        packet: &RecordPacket,
        lost: u64,
        open: &mut dyn FnMut() -> io::Result<W>,
    ) -> io::Result<()> {
        if self.failed {
            return Ok(());
        }
        self.report.packets_lost += lost;
        let min_gap = match self.codec {
            TrackCodec::Opus { .. } => 1,
            TrackCodec::Video(_) => MIN_SWITCH_GAP,
        };
        let out = self.timeline.map(
            packet.timestamp,
            packet.arrival,
            self.codec.clock_rate(),
            min_gap,
        );
        match self.codec {
            TrackCodec::Opus { red } => self.release_audio(packet, out, red, open),
            TrackCodec::Video(_) => self.release_video(packet, out, lost > 0, open),
        }
    }

    fn release_audio(
        &mut self,
        packet: &RecordPacket,
        out: u64,
        red_pt: Option<u8>,
        open: &mut dyn FnMut() -> io::Result<W>,
    ) -> io::Result<()> {
        let payload = &packet.payload[..];
        if red_pt == Some(packet.payload_type) {
            let Ok(blocks) = red::blocks(payload) else {
                return Ok(());
            };
            // Older blocks first: those that fill a gap are written, the rest were
            // written from their own packets and are skipped as overlaps.
            for block in blocks {
                let at = out.saturating_sub(u64::from(block.timestamp_offset));
                if let Some(data) = payload.get(block.data.clone()) {
                    self.write_opus(data, at, packet.arrival, open)?;
                }
            }
            Ok(())
        } else {
            self.write_opus(payload, out, packet.arrival, open)
        }
    }

    fn write_opus(
        &mut self,
        data: &[u8],
        at: u64,
        arrival: Instant,
        open: &mut dyn FnMut() -> io::Result<W>,
    ) -> io::Result<()> {
        let Some(samples) = opus_samples(data) else {
            return Ok(()); // empty (a DTX block) or malformed: nothing to place
        };
        let first = *self.first.get_or_insert(at);
        let Some(pos) = at.checked_sub(first) else {
            return Ok(()); // before the file's start
        };
        if self.container.is_none() {
            self.container = Some(Container::Ogg(OggOpusWriter::new(open()?, 2)?));
            self.report.started = Some(arrival);
        }
        let Some(Container::Ogg(ogg)) = &mut self.container else {
            return Ok(());
        };
        // Within half a frame of what was expected: in place (a sender's clock drifts
        // a little). Further back: already written.
        let tolerance = u64::from(samples / 2);
        if pos + tolerance < self.position {
            return Ok(());
        }
        let fill = silent_packet(self.last_toc);
        let fill_samples = u64::from(opus_samples(&fill).unwrap_or(960));
        while pos + tolerance >= self.position + fill_samples {
            self.position += fill_samples;
            ogg.write_packet(&fill, self.position)?;
            self.report.filled += 1;
        }
        self.position += u64::from(samples);
        ogg.write_packet(data, self.position)?;
        self.last_toc = data[0];
        self.report.frames += 1;
        self.report.duration_ticks = self.position;
        self.report.bytes = ogg.bytes_written();
        Ok(())
    }

    fn release_video(
        &mut self,
        packet: &RecordPacket,
        out: u64,
        lost: bool,
        open: &mut dyn FnMut() -> io::Result<W>,
    ) -> io::Result<()> {
        let Some(assembler) = &mut self.assembler else {
            return Ok(());
        };
        let frame = match assembler.push(&packet.payload, packet.timestamp, packet.marker, lost) {
            None => return Ok(()),
            Some(Assembled::Broken) => {
                self.report.frames_skipped += 1;
                if !self.need_keyframe {
                    self.need_keyframe = true;
                    self.keyframe_wanted = true;
                }
                return Ok(());
            }
            Some(Assembled::Frame(frame)) => frame,
        };
        if self.need_keyframe && !frame.keyframe {
            self.report.frames_skipped += 1;
            self.keyframe_wanted = true;
            return Ok(());
        }
        self.need_keyframe = false;
        let first = *self.first.get_or_insert(out);
        let mut pts = out.saturating_sub(first);
        if self.report.frames > 0 && pts <= self.position {
            pts = self.position + 1;
        }
        if self.container.is_none() {
            let (width, height) = frame.size.unwrap_or((0, 0));
            self.report.width = width;
            self.report.height = height;
            let file = open()?;
            self.container = Some(match self.codec {
                TrackCodec::Video(VideoCodec::Vp8) => {
                    Container::Ivf(IvfWriter::new(file, b"VP80", width, height)?)
                }
                TrackCodec::Video(VideoCodec::Vp9) => {
                    Container::Ivf(IvfWriter::new(file, b"VP90", width, height)?)
                }
                _ => Container::AnnexB {
                    out: file,
                    written: 0,
                },
            });
            self.report.started = Some(packet.arrival);
        }
        match &mut self.container {
            Some(Container::Ivf(w)) => {
                w.write_frame(&frame.data, pts)?;
                self.report.bytes = w.bytes_written();
            }
            Some(Container::AnnexB { out, written }) => {
                out.write_all(&frame.data)?;
                *written += frame.data.len() as u64;
                self.report.bytes = *written;
            }
            _ => {}
        }
        self.position = pts;
        self.report.frames += 1;
        // One frame interval past the last frame is not known; the sidecar's duration is
        // first to last frame.
        self.report.duration_ticks = pts;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ogg::tests::read_pages;
    use std::io::Cursor;

    fn packet(seq: u16, ts: u32, marker: bool, payload: &[u8], at: Instant) -> RecordPacket {
        RecordPacket {
            ssrc: 1,
            sequence: seq,
            timestamp: ts,
            marker,
            payload_type: 111,
            switched: false,
            payload: Bytes::copy_from_slice(payload),
            arrival: at,
        }
    }

    fn new_file() -> impl FnMut() -> io::Result<Cursor<Vec<u8>>> {
        || Ok(Cursor::new(Vec::new()))
    }

    /// Granules across a 32-bit RTP timestamp wrap, with reordering and a gap, stay in
    /// step with the packets' durations.
    #[test]
    fn ogg_granules_run_on_across_a_timestamp_wrap() {
        let t = Instant::now();
        let mut rec = TrackRecorder::new(TrackCodec::Opus { red: None });
        let mut open = new_file();
        let start = u32::MAX - 960 * 10 + 1;
        let opus = [0x78u8, 0xaa, 0xbb]; // 20 ms
        let mut order: Vec<u16> = (0..40).collect();
        order.swap(9, 10); // reordered right at the wrap
        order.swap(20, 22);
        for &i in &order {
            if i == 30 || i == 31 {
                continue; // lost: filled
            }
            let ts = start.wrapping_add(u32::from(i) * 960);
            rec.push(packet(i, ts, true, &opus, t), &mut open).unwrap();
            rec.poll(t, &mut open).unwrap();
        }
        let bytes = rec.finish(&mut open).unwrap().unwrap().into_inner();
        let pages = read_pages(&bytes);
        let packets: Vec<&Vec<u8>> = pages[2..].iter().flat_map(|p| &p.packets).collect();
        assert_eq!(packets.len(), 40);
        assert_eq!(packets[30].as_slice(), &[0x78]);
        assert_eq!(packets[31].as_slice(), &[0x78]);
        assert_eq!(rec.report().filled, 2);
        assert_eq!(rec.report().frames, 38);
        assert_eq!(pages.last().unwrap().granule, 40 * 960);
        let mut granules: Vec<u64> = pages[2..].iter().map(|p| p.granule).collect();
        assert_eq!(granules.remove(0), 40 * 960, "one page of 40 packets");
    }

    #[test]
    fn red_is_unwrapped_and_fills_a_loss_from_its_redundancy() {
        let t = Instant::now();
        let mut rec = TrackRecorder::new(TrackCodec::Opus { red: Some(63) });
        let mut open = new_file();
        let red = |ts_prev: Option<&[u8]>, primary: &[u8]| {
            let mut out = Vec::new();
            if let Some(prev) = ts_prev {
                let header: u32 = (1 << 31) | (111 << 24) | (960 << 10) | prev.len() as u32;
                out.extend_from_slice(&header.to_be_bytes());
            }
            out.push(111);
            if let Some(prev) = ts_prev {
                out.extend_from_slice(prev);
            }
            out.extend_from_slice(primary);
            out
        };
        let frames: Vec<[u8; 2]> = (0..6u8).map(|i| [0x78, i]).collect();
        for i in 0..6u16 {
            if i == 3 {
                continue; // lost; packet 4 carries it as redundancy
            }
            let prev = (i > 0).then(|| &frames[usize::from(i) - 1][..]);
            let mut p = packet(
                i,
                1000 + u32::from(i) * 960,
                true,
                &red(prev, &frames[usize::from(i)]),
                t,
            );
            p.payload_type = 63;
            rec.push(p, &mut open).unwrap();
        }
        rec.poll(t + Duration::from_secs(1), &mut open).unwrap();
        let bytes = rec.finish(&mut open).unwrap().unwrap().into_inner();
        let pages = read_pages(&bytes);
        let packets: Vec<Vec<u8>> = pages[2..].iter().flat_map(|p| p.packets.clone()).collect();
        let want: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
        assert_eq!(packets, want);
        assert_eq!(rec.report().filled, 0);
    }

    fn vp8(key: bool, n: u8) -> Vec<u8> {
        if key {
            vec![
                0x10, 0x00, 0, 0, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, n,
            ]
        } else {
            vec![0x10, 0x01, n]
        }
    }

    #[test]
    fn video_starts_on_a_keyframe_and_waits_for_one_after_a_loss() {
        let t = Instant::now();
        let mut rec = TrackRecorder::new(TrackCodec::Video(VideoCodec::Vp8));
        let mut open = new_file();
        assert!(
            rec.take_keyframe_wanted(),
            "asks for a keyframe at the start"
        );
        let base = u32::MAX - 3000 * 2;
        let frames = [
            (false, 0u16), // before the first keyframe: skipped
            (true, 1),
            (false, 2),
            (false, 3),
            (false, 4), // lost
            (false, 5), // after the loss: skipped
            (true, 6),
            (false, 7),
        ];
        for &(key, i) in &frames {
            if i == 4 {
                continue;
            }
            let ts = base.wrapping_add(u32::from(i) * 3000);
            rec.push(packet(i, ts, true, &vp8(key, i as u8), t), &mut open)
                .unwrap();
        }
        rec.poll(t + Duration::from_secs(1), &mut open).unwrap();
        assert!(rec.take_keyframe_wanted(), "asks again after the loss");
        let bytes = rec.finish(&mut open).unwrap().unwrap().into_inner();
        assert_eq!(&bytes[0..4], b"DKIF");
        assert_eq!(u16::from_le_bytes([bytes[12], bytes[13]]), 320);
        // the header's duration: to 18000, plus the mean interval of 4500
        assert_eq!(
            u32::from_le_bytes(bytes[24..28].try_into().unwrap()),
            22_500
        );
        // the frames' timestamps: 0, 3000, 6000, then 15000, 18000 across the wrap
        let mut at = 32;
        let mut pts = Vec::new();
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            pts.push(u64::from_le_bytes(
                bytes[at + 4..at + 12].try_into().unwrap(),
            ));
            at += 12 + len;
        }
        assert_eq!(pts, vec![0, 3000, 6000, 15000, 18000]);
        assert_eq!(rec.report().frames, 5);
        assert_eq!(rec.report().frames_skipped, 2);
    }

    #[test]
    fn a_switch_keyframe_of_the_same_instant_comes_one_frame_later() {
        let t = Instant::now();
        let mut rec = TrackRecorder::new(TrackCodec::Video(VideoCodec::Vp8));
        let mut open = new_file();
        rec.push(packet(10, 5000, true, &vp8(true, 0), t), &mut open)
            .unwrap();
        // the new layer's keyframe of the same capture, arriving with it
        let mut p = packet(500, 77_000, true, &vp8(true, 1), t);
        p.switched = true;
        p.ssrc = 2;
        rec.push(p, &mut open).unwrap();
        rec.poll(t + Duration::from_secs(1), &mut open).unwrap();
        assert_eq!(rec.report().frames, 2);
        assert_eq!(rec.report().duration_ticks, MIN_SWITCH_GAP);
    }

    #[test]
    fn a_layer_switch_continues_the_timeline_by_wall_clock() {
        let t = Instant::now();
        let mut rec = TrackRecorder::new(TrackCodec::Video(VideoCodec::Vp8));
        let mut open = new_file();
        rec.push(packet(10, 5000, true, &vp8(true, 0), t), &mut open)
            .unwrap();
        rec.push(
            packet(
                11,
                8000,
                true,
                &vp8(false, 1),
                t + Duration::from_millis(33),
            ),
            &mut open,
        )
        .unwrap();
        // another layer: other SSRC, numbers and clock, 100 ms later
        let mut p = packet(
            500,
            123_456,
            true,
            &vp8(true, 2),
            t + Duration::from_millis(133),
        );
        p.switched = true;
        p.ssrc = 2;
        rec.push(p, &mut open).unwrap();
        let mut p = packet(
            501,
            126_456,
            true,
            &vp8(false, 3),
            t + Duration::from_millis(166),
        );
        p.ssrc = 2;
        rec.push(p, &mut open).unwrap();
        rec.poll(t + Duration::from_secs(1), &mut open).unwrap();
        assert_eq!(rec.report().frames, 4);
        assert_eq!(rec.report().duration_ticks, 3000 + 9000 + 3000);
        // A restarted encoder: a new SSRC whose numbers are behind the old ones. Its
        // delta frame waits for a keyframe, which is asked for.
        let _ = rec.take_keyframe_wanted();
        let at = t + Duration::from_millis(200);
        let mut p = packet(7, 50, true, &vp8(false, 4), at);
        p.ssrc = 3;
        rec.push(p, &mut open).unwrap();
        let mut p = packet(8, 3050, true, &vp8(true, 5), at + Duration::from_millis(33));
        p.ssrc = 3;
        rec.push(p, &mut open).unwrap();
        rec.poll(t + Duration::from_secs(2), &mut open).unwrap();
        assert!(rec.take_keyframe_wanted());
        assert_eq!(
            rec.report().frames,
            5,
            "the keyframe, not the delta before it"
        );
        rec.finish(&mut open).unwrap();
    }
}
