//! Recording without a browser: each recorded track is written to a file of its own, Opus
//! to Ogg (`.opus`), VP8 and VP9 to IVF (`.ivf`), H.264 to an Annex-B stream (`.h264`),
//! with a sidecar JSON per recording listing the files (see `docs/recording.md`).
//!
//! The media worker taps each recorded track like a subscription that is not a peer
//! (`worker/recording.rs`): the highest layer, switching only on keyframes, one
//! [`RecordPacket`] per packet into a bounded queue ([`RECORD_QUEUE`]) that never blocks it.
//! A thread per recording (not the media thread: file I/O can block for as long as the
//! disk likes) puts each track's packets back in order, assembles frames
//! ([`track::TrackRecorder`]) and writes the files.
//!
//! The parts that decide are sans-IO with their own tests: [`jitter`], [`frames`], [`ogg`],
//! [`ivf`], [`track`] and [`sidecar`].

pub mod frames;
pub mod ivf;
pub mod jitter;
pub mod ogg;
pub mod sidecar;
pub mod track;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_protocol::api::RecordingInfo;
use chorus_protocol::{MediaKind, ParticipantId, RoomId, TrackId, TrackSource};
use tokio::sync::oneshot;

use self::frames::VideoCodec;
use self::sidecar::{SIDECAR_VERSION, Sidecar, SidecarFile};
use self::track::TrackRecorder;
pub use self::track::{RecordPacket, TrackCodec};

/// Packets from the media worker to one recording's writer thread. About two seconds of a
/// room of five publishers of audio and a 1 Mbit/s camera (roughly 150 packets a second
/// each), so a disk that stalls for a moment loses nothing. When it is full the worker
/// drops the packet and counts it ([`RecordingStats::dropped_packets`]): forwarding never
/// waits for a disk. A dropped video packet breaks its frame; the track then waits for
/// (and asks for) the next keyframe. The queue's slots are allocated once, when the
/// recording starts.
pub const RECORD_QUEUE: usize = 2048;

/// How long the writer waits for a packet before it looks at its jitter buffers' timers.
const WRITER_TICK: Duration = Duration::from_millis(20);

/// How often the files are flushed to the disk (so a crash loses at most this much, and a
/// full disk shows within it) and the sidecar rewritten.
const FLUSH_INTERVAL: Duration = Duration::from_secs(2);

/// How long stopping waits for the writer to finish the files.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters of every recording of the server (for `/api/stats`).
#[derive(Debug, Default)]
pub struct RecordingStats {
    /// Recordings running now.
    pub active: AtomicU64,
    /// Packets the media worker dropped because a recording's queue was full.
    pub dropped_packets: AtomicU64,
    /// Write errors (a full disk, a vanished directory): the file that hit one stopped.
    pub write_errors: AtomicU64,
    /// Files finished properly.
    pub files_finished: AtomicU64,
}

/// Why a recording could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The server has no `[recording] dir`.
    #[error("recording is not configured on this server (set [recording] dir)")]
    NotConfigured,
    /// The recording's directory could not be made.
    #[error("cannot create the recording directory {0}: {1}")]
    Directory(String, String),
    /// The room is not live.
    #[error("no room {0} has participants")]
    UnknownRoom(RoomId),
}

/// Who and what a recorded track is, for its file name and the sidecar.
#[derive(Debug, Clone)]
pub struct TrackMeta {
    pub participant: ParticipantId,
    pub name: String,
    pub identity: Option<String>,
    pub kind: MediaKind,
    pub source: TrackSource,
}

/// What the room task and the media worker tell the writer thread (rare: unbounded).
enum Control {
    Track {
        track: TrackId,
        meta: TrackMeta,
        keyframe_wanted: Arc<AtomicBool>,
    },
    /// From the worker as it starts the tap: the codec, or the MIME type of one not
    /// recorded.
    Codec {
        track: TrackId,
        codec: Result<TrackCodec, String>,
    },
    /// The track ended: finish its file.
    Untrack {
        track: TrackId,
    },
    Finish {
        done: oneshot::Sender<()>,
    },
}

/// The media worker's end of one recorded track.
#[derive(Debug, Clone)]
pub struct RecordSink {
    track: TrackId,
    packets: SyncSender<(TrackId, RecordPacket)>,
    control: Sender<Control>,
    keyframe_wanted: Arc<AtomicBool>,
    stats: Arc<RecordingStats>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

impl RecordSink {
    pub fn track(&self) -> TrackId {
        self.track
    }

    /// Tells the writer the track's codec (`Err`: the MIME type of one not recorded).
    pub fn begin(&self, codec: Result<TrackCodec, String>) {
        let _ = self.control.send(Control::Codec {
            track: self.track,
            codec,
        });
    }

    /// Hands one packet over without waiting: a full queue drops it (counted).
    pub fn push(&self, packet: RecordPacket) {
        match self.packets.try_send((self.track, packet)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.dropped_packets.fetch_add(1, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Whether the writer wants a keyframe of this track (cleared by reading it).
    pub fn take_keyframe_wanted(&self) -> bool {
        self.keyframe_wanted.swap(false, Ordering::Relaxed)
    }
}

/// One room's recording, held by its room task.
pub struct Recorder {
    packets: SyncSender<(TrackId, RecordPacket)>,
    control: Sender<Control>,
    stats: Arc<RecordingStats>,
    dropped: Arc<AtomicU64>,
    info: Arc<Mutex<RecordingInfo>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A file-system-safe form of a name: letters, digits, `-`, `_` and `.` kept, anything
/// else `_`, at most 40 characters, and never only dots.
fn safe_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(40)
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.chars().all(|c| c == '.') {
        out = format!("_{out}");
    }
    out
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn source_name(source: TrackSource) -> &'static str {
    match source {
        TrackSource::Microphone => "microphone",
        TrackSource::Camera => "camera",
        TrackSource::Screen => "screen",
    }
}

impl Recorder {
    /// Starts recording `room` into a new directory `<base>/<room>/<UTC time>/`.
    pub fn start(
        base: &Path,
        room: &RoomId,
        stats: Arc<RecordingStats>,
    ) -> Result<Self, RecordError> {
        let started = SystemTime::now();
        let started_ms = unix_ms(started);
        let room_dir = base.join(safe_name(room.as_str()));
        let mut dir = room_dir.join(sidecar::utc_stamp(started_ms));
        // Two recordings of a room within a second get distinct directories.
        let mut n = 1;
        while dir.exists() {
            n += 1;
            dir = room_dir.join(format!("{}-{n}", sidecar::utc_stamp(started_ms)));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|err| RecordError::Directory(dir.display().to_string(), err.to_string()))?;
        let (packets, packet_rx) = mpsc::sync_channel(RECORD_QUEUE);
        let (control, control_rx) = mpsc::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let info = Arc::new(Mutex::new(RecordingInfo {
            directory: dir.display().to_string(),
            started_at_unix_ms: started_ms,
            files: 0,
            dropped_packets: 0,
            error: None,
        }));
        let writer = Writer {
            dir,
            room: room.as_str().to_owned(),
            started,
            started_at: Instant::now(),
            tracks: HashMap::new(),
            order: Vec::new(),
            stats: stats.clone(),
            dropped: dropped.clone(),
            info: info.clone(),
            error: None,
            control: control_rx,
            finish: None,
        };
        let thread = std::thread::Builder::new()
            .name("chorus-record".into())
            .spawn(move || writer.run(&packet_rx))
            .map_err(|err| RecordError::Directory(String::new(), err.to_string()))?;
        stats.active.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%room, directory = %info.lock().map(|i| i.directory.clone()).unwrap_or_default(), "recording started");
        Ok(Self {
            packets,
            control,
            stats,
            dropped,
            info,
            thread: Some(thread),
        })
    }

    /// Starts recording a track; the returned sink goes to the media worker.
    pub fn add_track(&self, track: TrackId, meta: TrackMeta) -> RecordSink {
        let keyframe_wanted = Arc::new(AtomicBool::new(false));
        let _ = self.control.send(Control::Track {
            track,
            meta,
            keyframe_wanted: keyframe_wanted.clone(),
        });
        RecordSink {
            track,
            packets: self.packets.clone(),
            control: self.control.clone(),
            keyframe_wanted,
            stats: self.stats.clone(),
            dropped: self.dropped.clone(),
        }
    }

    /// The track ended: its file is finished.
    pub fn remove_track(&self, track: TrackId) {
        let _ = self.control.send(Control::Untrack { track });
    }

    /// The recording as the admin API shows it.
    pub fn info(&self) -> RecordingInfo {
        let mut info = self
            .info
            .lock()
            .map(|i| i.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        info.dropped_packets = self.dropped.load(Ordering::Relaxed);
        info
    }

    /// Stops: every file is finished and the sidecar written. The media worker must have
    /// been told to stop its taps first (packets still queued are written).
    pub async fn finish(mut self) {
        let (done, rx) = oneshot::channel();
        let _ = self.control.send(Control::Finish { done });
        if tokio::time::timeout(FINISH_TIMEOUT, rx).await.is_err() {
            tracing::warn!("the recording writer did not finish in time");
        }
        if let Some(thread) = self.thread.take() {
            // It has replied (or is stuck on the disk): do not wait on it.
            drop(thread);
        }
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One track on the writer thread.
struct Entry {
    meta: TrackMeta,
    keyframe_wanted: Arc<AtomicBool>,
    /// `None` until the worker said the codec; `Err`: not recorded.
    codec: Option<Result<TrackCodec, String>>,
    recorder: Option<TrackRecorder<BufWriter<File>>>,
    /// The name its file gets (known with the codec).
    name: String,
    /// The file's name once it exists.
    file_name: Option<String>,
    finished: bool,
    error: Option<String>,
}

struct Writer {
    dir: PathBuf,
    room: String,
    started: SystemTime,
    started_at: Instant,
    tracks: HashMap<TrackId, Entry>,
    /// Tracks in the order they were added (the sidecar's order).
    order: Vec<TrackId>,
    stats: Arc<RecordingStats>,
    dropped: Arc<AtomicU64>,
    info: Arc<Mutex<RecordingInfo>>,
    error: Option<String>,
    control: Receiver<Control>,
    /// Where to say that the files are finished, once asked to stop.
    finish: Option<oneshot::Sender<()>>,
}

/// Opens a track's file, named for who and what it is.
fn file_name(track: TrackId, meta: &TrackMeta, codec: TrackCodec) -> String {
    format!(
        "p{}-{}-{}-t{}.{}",
        meta.participant.0,
        safe_name(&meta.name),
        source_name(meta.source),
        track.0,
        codec.extension()
    )
}

impl Writer {
    fn run(mut self, packets: &Receiver<(TrackId, RecordPacket)>) {
        let mut next_flush = Instant::now() + FLUSH_INTERVAL;
        loop {
            // The writer waits on the control channel, never on the packet queue: a sender
            // into a queue nobody waits on wakes nobody, so the media thread's hand-off
            // never costs a system call.
            match self.control.recv_timeout(WRITER_TICK) {
                Ok(message) => self.control_message(message),
                Err(RecvTimeoutError::Timeout) => {}
                // Every handle is gone without a finish (the room task ended): finish.
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.control_messages();
            // What is queued, and no more: a flood cannot keep the writer from its timers.
            for _ in 0..RECORD_QUEUE {
                match packets.try_recv() {
                    Ok((track, packet)) => self.packet(track, packet),
                    Err(_) => break,
                }
            }
            if self.finish.is_some() {
                while let Ok((track, packet)) = packets.try_recv() {
                    self.packet(track, packet);
                }
                break;
            }
            let now = Instant::now();
            self.poll(now);
            if now >= next_flush {
                next_flush = now + FLUSH_INTERVAL;
                self.flush();
                self.write_sidecar(false);
            }
        }
        self.finish_all();
        self.write_sidecar(true);
        tracing::info!(room = %self.room, directory = %self.dir.display(), "recording finished");
        if let Some(done) = self.finish.take() {
            let _ = done.send(());
        }
    }

    /// Applies the control messages waiting (a finish request is kept in `finish`).
    fn control_messages(&mut self) {
        while let Ok(message) = self.control.try_recv() {
            self.control_message(message);
        }
    }

    fn control_message(&mut self, message: Control) {
        match message {
            Control::Track {
                track,
                meta,
                keyframe_wanted,
            } => {
                if !self.tracks.contains_key(&track) {
                    self.order.push(track);
                }
                self.tracks.insert(
                    track,
                    Entry {
                        meta,
                        keyframe_wanted,
                        codec: None,
                        recorder: None,
                        name: String::new(),
                        file_name: None,
                        finished: false,
                        error: None,
                    },
                );
            }
            Control::Codec { track, codec } => {
                if let Some(entry) = self.tracks.get_mut(&track) {
                    if let Ok(codec) = codec {
                        entry.recorder = Some(TrackRecorder::new(codec));
                        entry.name = file_name(track, &entry.meta, codec);
                        entry
                            .keyframe_wanted
                            .store(matches!(codec, TrackCodec::Video(_)), Ordering::Relaxed);
                    }
                    entry.codec = Some(codec);
                }
            }
            Control::Untrack { track } => {
                self.finish_track(track);
                self.write_sidecar(false);
            }
            Control::Finish { done } => self.finish = Some(done),
        }
    }

    fn packet(&mut self, track: TrackId, packet: RecordPacket) {
        if self.tracks.get(&track).is_none_or(|e| e.recorder.is_none()) {
            // its control message may be right behind
            self.control_messages();
        }
        let dir = self.dir.clone();
        let Some(entry) = self.tracks.get_mut(&track) else {
            return;
        };
        let Some(recorder) = entry.recorder.as_mut() else {
            return;
        };
        if recorder.has_failed() || entry.finished {
            return;
        }
        let name = &entry.name;
        let mut opened = false;
        let result = recorder.push(packet, &mut || {
            opened = true;
            File::create(dir.join(name)).map(BufWriter::new)
        });
        if opened {
            entry.file_name = Some(entry.name.clone());
        }
        let failed = result.err();
        if let Some(err) = failed {
            self.fail(track, &err);
        } else if opened {
            self.write_sidecar(false);
        }
    }

    /// Releases what the jitter buffers let go of, and passes on keyframe wishes.
    fn poll(&mut self, now: Instant) {
        let mut failures = Vec::new();
        let mut opened_any = false;
        for (track, entry) in &mut self.tracks {
            let Some(recorder) = entry.recorder.as_mut() else {
                continue;
            };
            if recorder.has_failed() || entry.finished {
                continue;
            }
            let name = &entry.name;
            let mut opened = false;
            let dir = &self.dir;
            let result = recorder.poll(now, &mut || {
                opened = true;
                File::create(dir.join(name)).map(BufWriter::new)
            });
            if opened {
                entry.file_name = Some(entry.name.clone());
                opened_any = true;
            }
            if recorder.take_keyframe_wanted() {
                entry.keyframe_wanted.store(true, Ordering::Relaxed);
            }
            if let Err(err) = result {
                failures.push((*track, err));
            }
        }
        for (track, err) in failures {
            self.fail(track, &err);
        }
        if opened_any {
            self.write_sidecar(false);
        }
    }

    fn flush(&mut self) {
        let mut failures = Vec::new();
        for (track, entry) in &mut self.tracks {
            if let Some(recorder) = entry.recorder.as_mut().filter(|r| !r.has_failed())
                && let Err(err) = recorder.flush()
            {
                failures.push((*track, err));
            }
        }
        for (track, err) in failures {
            self.fail(track, &err);
        }
    }

    /// A write error: the track's file stops, the error is logged, counted and reported.
    fn fail(&mut self, track: TrackId, err: &io::Error) {
        let Some(entry) = self.tracks.get_mut(&track) else {
            return;
        };
        if let Some(recorder) = entry.recorder.as_mut() {
            recorder.fail();
        }
        let message = format!(
            "writing {}: {err}",
            entry.file_name.as_deref().unwrap_or("a file")
        );
        tracing::warn!(room = %self.room, %track, %err, "recording write failed; the file stops, the call goes on");
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        entry.error = Some(message.clone());
        if self.error.is_none() {
            self.error = Some(message);
        }
        self.write_sidecar(false);
    }

    fn finish_track(&mut self, track: TrackId) {
        let dir = self.dir.clone();
        let Some(entry) = self.tracks.get_mut(&track) else {
            return;
        };
        if entry.finished {
            return;
        }
        entry.finished = true;
        let Some(recorder) = entry.recorder.as_mut().filter(|r| !r.has_failed()) else {
            return;
        };
        let name = file_name(track, &entry.meta, recorder.codec());
        let mut opened = false;
        let result = recorder.finish(&mut || {
            opened = true;
            File::create(dir.join(&name)).map(BufWriter::new)
        });
        if opened {
            entry.file_name = Some(name);
        }
        match result.and_then(|file| match file {
            Some(file) => file
                .into_inner()
                .map_err(|e| e.into_error())?
                .sync_data()
                .map(|()| true),
            None => Ok(false),
        }) {
            Ok(true) => {
                self.stats.files_finished.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(err) => {
                entry.finished = false;
                self.fail(track, &err);
                if let Some(entry) = self.tracks.get_mut(&track) {
                    entry.finished = true;
                }
            }
        }
    }

    fn finish_all(&mut self) {
        let tracks: Vec<TrackId> = self.order.clone();
        for track in tracks {
            self.finish_track(track);
        }
    }

    fn sidecar(&self, finished: bool) -> Sidecar {
        let files = self
            .order
            .iter()
            .filter_map(|track| Some((*track, self.tracks.get(track)?)))
            .map(|(track, entry)| {
                let report = entry
                    .recorder
                    .as_ref()
                    .map(|r| r.report().clone())
                    .unwrap_or_default();
                let codec = entry.codec.clone();
                let (codec_name, container, clock) = match &codec {
                    Some(Ok(c)) => (c.name().to_owned(), Some(c.container()), c.clock_rate()),
                    Some(Err(mime)) => (mime.clone(), None, 0),
                    None => (String::from("unknown"), None, 0),
                };
                let started = report.started;
                let offset = started.map(|s| s.saturating_duration_since(self.started_at));
                let video = entry.meta.kind == MediaKind::Video;
                SidecarFile {
                    file: entry.file_name.clone(),
                    track_id: track.0,
                    participant_id: entry.meta.participant.0,
                    participant: entry.meta.name.clone(),
                    identity: entry.meta.identity.clone(),
                    kind: match entry.meta.kind {
                        MediaKind::Audio => "audio",
                        MediaKind::Video => "video",
                    },
                    source: source_name(entry.meta.source),
                    codec: codec_name,
                    container,
                    clock_rate: clock,
                    start_offset_ms: offset.map(|d| d.as_secs_f64() * 1000.0),
                    started_at_unix_ms: offset.map(|d| unix_ms(self.started + d)),
                    duration_ms: if clock == 0 {
                        0.0
                    } else {
                        report.duration_ticks as f64 * 1000.0 / f64::from(clock)
                    },
                    frames: report.frames,
                    filled_frames: report.filled,
                    frames_skipped: report.frames_skipped,
                    packets_lost: report.packets_lost,
                    bytes: report.bytes,
                    width: (video && report.width > 0).then_some(report.width),
                    height: (video && report.height > 0).then_some(report.height),
                    finished: entry.finished && entry.error.is_none() && entry.file_name.is_some(),
                    error: entry.error.clone(),
                }
            })
            .collect();
        Sidecar {
            version: SIDECAR_VERSION,
            room: self.room.clone(),
            started_at_unix_ms: unix_ms(self.started),
            finished_at_unix_ms: finished.then(|| unix_ms(SystemTime::now())),
            state: if finished { "finished" } else { "recording" },
            error: self.error.clone(),
            dropped_packets: self.dropped.load(Ordering::Relaxed),
            files,
        }
    }

    /// Rewrites the sidecar and the room's view of the recording. A sidecar that cannot be
    /// written (the disk is full) is logged; the files go on where they can.
    fn write_sidecar(&mut self, finished: bool) {
        let sidecar = self.sidecar(finished);
        if let Ok(mut info) = self.info.lock() {
            info.files = sidecar.files.iter().filter(|f| f.file.is_some()).count() as u32;
            info.error.clone_from(&self.error);
        }
        if let Err(err) = sidecar::write(&self.dir, &sidecar) {
            tracing::warn!(room = %self.room, %err, "writing the recording sidecar failed");
            if self.error.is_none() {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                let message = format!("writing {}: {err}", sidecar::SIDECAR_NAME);
                if let Ok(mut info) = self.info.lock() {
                    info.error = Some(message.clone());
                }
                self.error = Some(message);
            }
        }
    }
}

/// The codec a track is recorded as, from its negotiated MIME type (and RED payload type).
pub fn codec_of(mime: &str, red: Option<u8>) -> Result<TrackCodec, String> {
    let lower = mime.to_ascii_lowercase();
    match lower.as_str() {
        "audio/opus" => Ok(TrackCodec::Opus { red }),
        "video/vp8" => Ok(TrackCodec::Video(VideoCodec::Vp8)),
        "video/vp9" => Ok(TrackCodec::Video(VideoCodec::Vp9)),
        "video/h264" => Ok(TrackCodec::Video(VideoCodec::H264)),
        _ => Err(mime.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_for_the_file_system() {
        assert_eq!(safe_name("Ada Lovelace/../x"), "Ada_Lovelace_.._x");
        assert_eq!(safe_name(".."), "_..");
        assert_eq!(safe_name("Zoë"), "Zoë");
    }

    #[test]
    fn codecs_by_mime_type() {
        assert_eq!(
            codec_of("audio/opus", Some(63)),
            Ok(TrackCodec::Opus { red: Some(63) })
        );
        assert_eq!(
            codec_of("video/VP8", None),
            Ok(TrackCodec::Video(VideoCodec::Vp8))
        );
        assert_eq!(
            codec_of("video/H264", None),
            Ok(TrackCodec::Video(VideoCodec::H264))
        );
        assert_eq!(codec_of("video/AV1", None), Err("video/AV1".into()));
    }

    /// The writer thread end to end: packets in through a sink, files and a sidecar out.
    #[test]
    fn a_recording_writes_files_and_a_finished_sidecar() {
        let base = std::env::temp_dir().join(format!("chorus-rec-{}", std::process::id()));
        let stats = Arc::new(RecordingStats::default());
        let room = RoomId::new("unit").unwrap();
        let recorder = Recorder::start(&base, &room, stats.clone()).unwrap();
        let meta = TrackMeta {
            participant: ParticipantId(7),
            name: "ada".into(),
            identity: None,
            kind: MediaKind::Audio,
            source: TrackSource::Microphone,
        };
        let sink = recorder.add_track(TrackId(3), meta);
        sink.begin(Ok(TrackCodec::Opus { red: None }));
        let t = Instant::now();
        for i in 0..100u16 {
            sink.push(RecordPacket {
                ssrc: 9,
                sequence: i,
                timestamp: u32::from(i) * 960,
                marker: false,
                payload_type: 111,
                switched: i == 0,
                payload: bytes::Bytes::from_static(&[0x78, 1, 2, 3]),
                arrival: t,
            });
        }
        let dir = PathBuf::from(recorder.info().directory);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(recorder.finish());
        let text = std::fs::read_to_string(dir.join(sidecar::SIDECAR_NAME)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["state"], "finished");
        let file = &value["files"][0];
        assert_eq!(file["file"], "p7-ada-microphone-t3.opus");
        assert_eq!(file["frames"], 100);
        assert_eq!(file["finished"], true);
        assert_eq!(file["durationMs"], 2000.0);
        let bytes = std::fs::read(dir.join("p7-ada-microphone-t3.opus")).unwrap();
        let pages = ogg::tests::read_pages(&bytes);
        assert_eq!(pages.last().unwrap().granule, 100 * 960);
        assert_eq!(stats.files_finished.load(Ordering::Relaxed), 1);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
