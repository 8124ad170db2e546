//! Recording without a browser, end to end: a real `chorus` records a call of two simulated
//! browsers that publish real VP8 and Opus (encoded by ffmpeg from its test sources before
//! the call), and Debian's `ffprobe`/`ffmpeg` read and decode every file. A second test
//! records onto a disk that fills up: the failure is reported and the call goes on.
//! Build the server first: `cargo build -p chorus`. Needs `ffmpeg` (tests/run-all.sh
//! installs it) and, for the full disk, root for a tmpfs in a mount namespace of the
//! server's own (`unshare --mount`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chorus_protocol::MediaKind;
use chorus_protocol::api::RoomDetails;
use chorus_tests::harness::{chorus_bin, http_request};
use chorus_tests::media::parse_tag;
use chorus_tests::peer::{AudioCaps, OPUS_PT, RED_PT};
use chorus_tests::wait::poll_until_async;
use chorus_tests::{
    Client, ClientOptions, MediaRate, PublishOptions, RtpWriter, Server, init_tracing,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

const SECRET: &str = "a-recording-test-secret-of-32-bytes-or-more";

/// How long the recorded part of the call lasts.
const RECORDED: Duration = Duration::from_secs(20);

/// Video frame interval: 30 frames a second on the 90 kHz clock.
const FRAME_INTERVAL: Duration = Duration::from_micros(33_333);
const FRAME_TICKS: u32 = 3000;
/// Opus: 20 ms frames on the 48 kHz clock.
const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
const AUDIO_TICKS: u32 = 960;

/// The largest VP8 payload per RTP packet (bigger frames are split).
const MAX_PAYLOAD: usize = 1000;

fn basic() -> String {
    format!("Basic {}", BASE64.encode(format!("KEY:{SECRET}")))
}

fn config(dir: &Path, rooms: &str) -> String {
    format!(
        "[auth]\nkeys = {{ KEY = \"{SECRET}\" }}\n[recording]\ndir = \"{}\"\nrooms = [{rooms}]\n",
        dir.display()
    )
}

async fn call(server: &Server, method: &str, path: &str) -> Result<(u16, String)> {
    let auth = basic();
    http_request(
        server.http_addr(),
        method,
        path,
        &[("Authorization", auth.as_str())],
        None,
    )
    .await
}

async fn call_json(server: &Server, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let auth = basic();
    http_request(
        server.http_addr(),
        method,
        path,
        &[("Authorization", auth.as_str())],
        Some(("application/json", body)),
    )
    .await
}

fn temp_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("chorus-recording-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Runs a tool; a tool that is not installed fails the test, loudly.
fn run(tool: &str, args: &[&str]) -> Result<std::process::Output> {
    let output = Command::new(tool).args(args).output().with_context(|| {
        format!("{tool} is not installed (Debian: apt-get install ffmpeg; tests/run-all.sh does)")
    })?;
    Ok(output)
}

/// Known media, encoded once per test by ffmpeg from its own test sources.
struct Media {
    /// Ten seconds of VP8 frames, only the first a keyframe. The publisher loops them, and
    /// answers a keyframe request by starting over from the first, as an encoder would make
    /// a keyframe on request, so a keyframe soon after the recording starts can only be
    /// one the server asked for, and every frame decodes as it should.
    video: Vec<Bytes>,
    /// Opus packets of 20 ms.
    audio: Vec<Bytes>,
}

fn encode_media(dir: &Path, video: bool) -> Result<Media> {
    let mut media = Media {
        video: Vec::new(),
        audio: Vec::new(),
    };
    if video {
        let path = dir.join("video.ivf");
        let out = run(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=320x240:rate=30",
                "-t",
                "10",
                "-c:v",
                "libvpx",
                "-b:v",
                "300k",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-auto-alt-ref",
                "0",
                "-lag-in-frames",
                "0",
                "-g",
                "300",
                "-keyint_min",
                "300",
                "-f",
                "ivf",
                &path.display().to_string(),
            ],
        )?;
        ensure!(
            out.status.success(),
            "ffmpeg: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        media.video = ivf_frames(&std::fs::read(&path)?)?
            .into_iter()
            .map(|(_, data)| Bytes::from(data))
            .collect();
        ensure!(
            media.video.len() == 300
                && media.video.iter().filter(|f| vp8_is_keyframe(f)).count() == 1,
            "test video: {} frames, one keyframe",
            media.video.len()
        );
    }
    let path = dir.join("audio.ogg");
    let out = run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "26",
            "-c:a",
            "libopus",
            "-b:a",
            "32k",
            "-frame_duration",
            "20",
            "-f",
            "ogg",
            &path.display().to_string(),
        ],
    )?;
    ensure!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    media.audio = ogg_packets(&std::fs::read(&path)?)?
        .into_iter()
        .skip(2) // OpusHead, OpusTags
        .map(Bytes::from)
        .collect();
    ensure!(
        media.audio.len() >= 1200,
        "test audio: {} packets",
        media.audio.len()
    );
    Ok(media)
}

/// An IVF file's frames: (timestamp, data).
fn ivf_frames(bytes: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
    ensure!(
        bytes.len() >= 32 && &bytes[..4] == b"DKIF",
        "not an IVF file"
    );
    let mut at = 32;
    let mut frames = Vec::new();
    while at + 12 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into()?) as usize;
        let pts = u64::from_le_bytes(bytes[at + 4..at + 12].try_into()?);
        let data = bytes
            .get(at + 12..at + 12 + len)
            .context("truncated IVF frame")?;
        frames.push((pts, data.to_vec()));
        at += 12 + len;
    }
    ensure!(at == bytes.len(), "trailing bytes in IVF");
    Ok(frames)
}

/// One Ogg page: its granule position and the packets that end in it.
struct OggPage {
    flags: u8,
    granule: u64,
    packets: Vec<Vec<u8>>,
}

fn ogg_pages(mut bytes: &[u8]) -> Result<Vec<OggPage>> {
    let mut pages = Vec::new();
    let mut partial = Vec::new();
    while !bytes.is_empty() {
        ensure!(
            bytes.len() >= 27 && &bytes[..4] == b"OggS",
            "not an Ogg page"
        );
        let flags = bytes[5];
        let granule = u64::from_le_bytes(bytes[6..14].try_into()?);
        let count = usize::from(bytes[26]);
        let lacing = bytes.get(27..27 + count).context("truncated lacing")?;
        let mut at = 27 + count;
        let mut packets = Vec::new();
        for &len in lacing {
            let len = usize::from(len);
            partial.extend_from_slice(bytes.get(at..at + len).context("truncated page")?);
            at += len;
            if len < 255 {
                packets.push(std::mem::take(&mut partial));
            }
        }
        pages.push(OggPage {
            flags,
            granule,
            packets,
        });
        bytes = &bytes[at..];
    }
    Ok(pages)
}

fn ogg_packets(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    Ok(ogg_pages(bytes)?
        .into_iter()
        .flat_map(|p| p.packets)
        .collect())
}

/// 48 kHz samples in an Opus packet, from its TOC byte (RFC 6716 §3.1).
fn opus_samples(packet: &[u8]) -> u64 {
    let toc = packet[0];
    let config = toc >> 3;
    let per_frame: u64 = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u64::from(packet[1] & 0x3f),
    };
    per_frame * frames
}

fn vp8_is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 0)
}

/// What one publisher sent, and switches for its senders.
#[derive(Default)]
struct Sent {
    video_on: AtomicBool,
    audio_on: AtomicBool,
    stop: AtomicBool,
    /// Each video frame: when, its RTP timestamp, its data.
    video: Mutex<Vec<(Instant, u32, Bytes)>>,
    audio: Mutex<Vec<(Instant, u32, Bytes)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends the media's VP8 frames at 30 fps, RTP timestamps from `first_ts` (so that they
/// wrap during the call), starting over from the first (a keyframe) on request.
async fn send_video(writer: RtpWriter, media: Arc<Media>, sent: Arc<Sent>, first_ts: u32) {
    let mut ticker = tokio::time::interval(FRAME_INTERVAL);
    let mut seq: u16 = 1000;
    let mut next = 0;
    for i in 0.. {
        ticker.tick().await;
        if sent.stop.load(Ordering::Relaxed) {
            return;
        }
        let ts = first_ts.wrapping_add(FRAME_TICKS.wrapping_mul(i as u32));
        if !sent.video_on.load(Ordering::Relaxed) {
            continue; // muted: nothing sent, the clock runs on
        }
        if writer.take_keyframe_request() {
            next = 0;
        }
        let frame = media.video[next].clone();
        next = (next + 1) % media.video.len();
        lock(&sent.video).push((Instant::now(), ts, frame.clone()));
        let chunks: Vec<&[u8]> = frame.chunks(MAX_PAYLOAD).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            let mut payload = Vec::with_capacity(chunk.len() + 1);
            payload.push(if n == 0 { 0x10 } else { 0x00 });
            payload.extend_from_slice(chunk);
            let packet = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    marker: n + 1 == chunks.len(),
                    payload_type: writer.payload_type,
                    sequence_number: seq,
                    timestamp: ts,
                    ssrc: writer.ssrc,
                    ..Default::default()
                },
                payload: payload.into(),
            };
            seq = seq.wrapping_add(1);
            if let Err(err) = writer.write_rtp(packet).await {
                tracing::debug!("video write: {err:#}");
            }
        }
    }
}

/// How a publisher sends its audio.
#[derive(Clone, Copy, Default)]
struct AudioMode {
    /// In RED (RFC 2198), each packet carrying the previous frame too, as Chromium sends.
    red: bool,
    /// Every n-th packet is lost on the way (its number is skipped).
    lose_every: Option<usize>,
}

async fn send_audio(
    writer: RtpWriter,
    media: Arc<Media>,
    sent: Arc<Sent>,
    first_ts: u32,
    mode: AudioMode,
) {
    let mut ticker = tokio::time::interval(AUDIO_INTERVAL);
    let mut seq: u16 = 60_000;
    let mut previous: Option<Bytes> = None;
    for i in 0.. {
        ticker.tick().await;
        if sent.stop.load(Ordering::Relaxed) {
            return;
        }
        let ts = first_ts.wrapping_add(AUDIO_TICKS.wrapping_mul(i as u32));
        if !sent.audio_on.load(Ordering::Relaxed) {
            previous = None;
            continue;
        }
        let data = media.audio[i % media.audio.len()].clone();
        lock(&sent.audio).push((Instant::now(), ts, data.clone()));
        let (payload_type, payload) = if mode.red {
            let mut red = Vec::with_capacity(5 + 2 * data.len());
            if let Some(prev) = &previous {
                let header: u32 = (1 << 31)
                    | (u32::from(OPUS_PT) << 24)
                    | (AUDIO_TICKS << 10)
                    | u32::try_from(prev.len()).unwrap_or(0);
                red.extend_from_slice(&header.to_be_bytes());
            }
            red.push(OPUS_PT);
            if let Some(prev) = &previous {
                red.extend_from_slice(prev);
            }
            red.extend_from_slice(&data);
            (RED_PT, Bytes::from(red))
        } else {
            (writer.payload_type, data.clone())
        };
        previous = Some(data);
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: i == 0,
                payload_type,
                sequence_number: seq,
                timestamp: ts,
                ssrc: writer.ssrc,
                ..Default::default()
            },
            payload,
        };
        seq = seq.wrapping_add(1);
        if mode.lose_every.is_some_and(|n| i % n == n - 1) {
            continue; // lost on the way
        }
        if let Err(err) = writer.write_rtp(packet).await {
            tracing::debug!("audio write: {err:#}");
        }
    }
}

/// Starts a publisher's senders; audio timestamps wrap `audio_wrap_in` after the start,
/// video ones `video_wrap_in` after it.
fn start_senders(
    client: &Client,
    media: &Arc<Media>,
    audio_wrap_in: Duration,
    video_wrap_in: Duration,
) -> Result<Arc<Sent>> {
    let sent = Arc::new(Sent::default());
    sent.video_on.store(true, Ordering::Relaxed);
    sent.audio_on.store(true, Ordering::Relaxed);
    let audio = client
        .rtp_writer(MediaKind::Audio)
        .context("audio writer")?;
    let video = client
        .rtp_writer(MediaKind::Video)
        .context("video writer")?;
    let audio_ts = 0u32.wrapping_sub((audio_wrap_in.as_secs_f64() * 48_000.0) as u32);
    let video_ts = 0u32.wrapping_sub((video_wrap_in.as_secs_f64() * 90_000.0) as u32);
    tokio::spawn(send_audio(
        audio,
        media.clone(),
        sent.clone(),
        audio_ts,
        AudioMode::default(),
    ));
    tokio::spawn(send_video(video, media.clone(), sent.clone(), video_ts));
    Ok(sent)
}

/// `ffmpeg -v error -i FILE -f null -` (or with `-c copy`: demux only): no output, exit 0.
fn ffmpeg_reads(file: &Path, decode: bool) -> Result<()> {
    let path = file.display().to_string();
    let mut args = vec!["-nostdin", "-v", "error", "-i", path.as_str()];
    if !decode {
        args.extend(["-c", "copy"]);
    }
    args.extend(["-f", "null", "-"]);
    let out = run("ffmpeg", &args)?;
    let errors = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && errors.trim().is_empty(),
        "ffmpeg {} {path}: {}: {errors}",
        if decode { "decoding" } else { "demuxing" },
        out.status
    );
    Ok(())
}

/// What ffprobe says of a file: codec, duration (s), and every packet's time (s).
fn ffprobe(file: &Path) -> Result<(String, f64, Vec<f64>)> {
    let path = file.display().to_string();
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-of",
            "json",
            "-show_entries",
            "stream=codec_name:format=duration:packet=pts_time",
            &path,
        ],
    )?;
    ensure!(
        out.status.success(),
        "ffprobe {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: Value = serde_json::from_slice(&out.stdout)?;
    let codec = value["streams"][0]["codec_name"]
        .as_str()
        .context("no codec")?
        .to_owned();
    let duration = value["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .context("no duration")?;
    let times = value["packets"]
        .as_array()
        .context("no packets")?
        .iter()
        .filter_map(|p| p["pts_time"].as_str()?.parse().ok())
        .collect();
    Ok((codec, duration, times))
}

/// Checks that `recorded` is exactly a run of consecutive `sent` items (by data), and
/// returns where it starts in `sent`.
fn consecutive_run(
    recorded: &[Vec<u8>],
    sent: &[(Instant, u32, Bytes)],
    what: &str,
) -> Result<usize> {
    let first = recorded.first().context("nothing recorded")?;
    let matches_from = |start: usize| {
        sent.len() >= start + recorded.len()
            && recorded
                .iter()
                .zip(&sent[start..])
                .all(|(r, (_, _, s))| r[..] == s[..])
    };
    let candidates: Vec<usize> = sent
        .iter()
        .enumerate()
        .filter(|(_, (_, _, data))| data[..] == first[..])
        .map(|(i, _)| i)
        .collect();
    ensure!(
        !candidates.is_empty(),
        "{what}: the first recorded frame was never sent"
    );
    if let Some(start) = candidates.iter().copied().find(|&c| matches_from(c)) {
        return Ok(start);
    }
    // Say where it breaks, from the first candidate.
    let start = candidates[0];
    let broken = recorded
        .iter()
        .zip(&sent[start..])
        .position(|(r, (_, _, s))| r[..] != s[..])
        .unwrap_or(sent.len() - start);
    bail!(
        "{what}: {} frames recorded, but recorded frame {broken} is not sent frame {} (a \
         frame lost, repeated or out of order)",
        recorded.len(),
        start + broken
    )
}

fn within_5_percent(what: &str, seconds: f64) -> Result<()> {
    let want = RECORDED.as_secs_f64();
    ensure!(
        (seconds - want).abs() <= want * 0.05,
        "{what}: {seconds:.3} s, not within 5 % of {want} s"
    );
    Ok(())
}

fn sidecar_file<'a>(sidecar: &'a Value, participant: &str, source: &str) -> Result<&'a Value> {
    sidecar["files"]
        .as_array()
        .context("no files")?
        .iter()
        .find(|f| f["participant"] == participant && f["source"] == source)
        .with_context(|| format!("no {participant} {source} in the sidecar: {sidecar:#}"))
}

/// A 20 s call recorded per track: every file decodes, lasts the call, holds every frame
/// that was sent in order, starts on a keyframe the server asked for, and keeps its time
/// across RTP timestamp wraps, a mute, and a renegotiation that adds a screen share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_recorded_per_track_into_files_that_ffmpeg_decodes() -> Result<()> {
    init_tracing();
    let work = temp_dir("call")?;
    let media = Arc::new(encode_media(&work, true)?);
    let records = work.join("records");
    let server = Server::start_with_config(&config(&records, "")).await?;
    let addr = server.http_addr();

    let ada = Client::connect_and_join(addr, "rec", "ada").await?;
    let bob = Client::connect_and_join(addr, "rec", "bob").await?;
    let ada_tracks = ada.publish().await?;
    let bob_tracks = bob.publish().await?;
    // audio timestamps wrap 4 s into the call, video ones 6 s in: both while recording
    let ada_sent = start_senders(&ada, &media, Duration::from_secs(4), Duration::from_secs(6))?;
    let bob_sent = start_senders(&bob, &media, Duration::from_secs(4), Duration::from_secs(6))?;
    bob.wait_for_packets(ada.id()?, ada_tracks.video, 30, T)
        .await?;
    ada.wait_for_packets(bob.id()?, bob_tracks.video, 30, T)
        .await?;

    // Recording starts mid-call, well inside the senders' 10 s keyframe interval.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // From before the request: the keyframe request it causes may reach a publisher
    // before the response reaches the test.
    let started = Instant::now();
    let (status, body) = call(&server, "POST", "/api/v1/rooms/rec/recording").await?;
    ensure!(status == 200, "start: {status} {body}");
    let info: Value = serde_json::from_str(&body)?;
    let dir = PathBuf::from(info["directory"].as_str().context("directory")?);
    ensure!(dir.starts_with(&records), "recording in {}", dir.display());
    // twice is fine: it goes on
    let (status, _) = call(&server, "POST", "/api/v1/rooms/rec/recording").await?;
    ensure!(status == 200, "a second start: {status}");

    let at = |secs: u64| tokio::time::sleep_until((started + Duration::from_secs(secs)).into());
    at(5).await;
    bob_sent.video_on.store(false, Ordering::Relaxed);
    bob.set_mute(bob_tracks.video, true)?;
    at(7).await;
    bob.set_mute(bob_tracks.video, false)?;
    bob_sent.video_on.store(true, Ordering::Relaxed);
    at(9).await;
    bob_sent.audio_on.store(false, Ordering::Relaxed);
    bob.set_mute(bob_tracks.audio, true)?;
    at(11).await;
    bob.set_mute(bob_tracks.audio, false)?;
    bob_sent.audio_on.store(true, Ordering::Relaxed);
    at(12).await;
    // a renegotiation of ada's publisher: a screen share joins the camera
    let screen = ada.publish_screen(&[]).await?;
    at(14).await;
    let (status, body) = call(&server, "GET", "/api/v1/rooms/rec").await?;
    ensure!(status == 200, "describe: {status} {body}");
    let details: RoomDetails = serde_json::from_str(&body)?;
    let recording = details
        .recording
        .context("the description shows the recording")?;
    ensure!(recording.files == 5, "5 files by now: {recording:?}");
    ensure!(recording.error.is_none(), "{recording:?}");

    tokio::time::sleep_until((started + RECORDED).into()).await;
    let stopping = Instant::now();
    let (status, body) = call(&server, "DELETE", "/api/v1/rooms/rec/recording").await?;
    ensure!(status == 204, "stop: {status} {body}");
    let stopped = Instant::now();
    for sent in [&ada_sent, &bob_sent] {
        sent.stop.store(true, Ordering::Relaxed);
    }
    let (_, body) = call(&server, "GET", "/api/v1/rooms/rec").await?;
    let details: RoomDetails = serde_json::from_str(&body)?;
    ensure!(details.recording.is_none(), "still recording: {details:?}");

    // The keyframe that starts each camera file was asked for by the recording.
    for (name, client) in [("ada", &ada), ("bob", &bob)] {
        ensure!(
            client.keyframe_requests().iter().any(|r| r.at >= started),
            "{name} was asked for no keyframe after the recording started"
        );
    }

    let sidecar: Value =
        serde_json::from_slice(&std::fs::read(dir.join("recording.json")).context("the sidecar")?)?;
    ensure!(sidecar["state"] == "finished", "{sidecar:#}");
    ensure!(
        sidecar["room"] == "rec" && sidecar["version"] == 1,
        "{sidecar:#}"
    );
    ensure!(sidecar["droppedPackets"] == 0, "{sidecar:#}");
    ensure!(sidecar.get("error").is_none(), "{sidecar:#}");
    ensure!(
        sidecar["files"].as_array().map(Vec::len) == Some(5),
        "{sidecar:#}"
    );
    for file in sidecar["files"].as_array().context("files")? {
        ensure!(
            file["finished"] == true && file.get("error").is_none(),
            "{file:#}"
        );
    }

    for (name, sent) in [("ada", &ada_sent), ("bob", &bob_sent)] {
        // Video: every frame from the first recorded one on, in order; a keyframe first.
        let entry = sidecar_file(&sidecar, name, "camera")?;
        ensure!(
            entry["codec"] == "vp8" && entry["container"] == "ivf",
            "{entry:#}"
        );
        ensure!(entry["width"] == 320 && entry["height"] == 240, "{entry:#}");
        let offset = entry["startOffsetMs"].as_f64().context("offset")?;
        ensure!(
            offset < 1000.0,
            "{name}'s camera file starts {offset} ms in"
        );
        let path = dir.join(entry["file"].as_str().context("file")?);
        ffmpeg_reads(&path, true)?;
        let (codec, probed, times) = ffprobe(&path)?;
        ensure!(codec == "vp8", "{codec}");
        within_5_percent(&format!("{name}'s camera as ffprobe says"), probed)?;
        let frames: Vec<Vec<u8>> = ivf_frames(&std::fs::read(&path)?)?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        ensure!(
            times.len() == frames.len(),
            "ffprobe counts {} frames",
            times.len()
        );
        ensure!(entry["frames"] == frames.len(), "{entry:#}");
        ensure!(
            vp8_is_keyframe(&frames[0]),
            "{name}'s camera file starts on a delta frame"
        );
        let sent_video = lock(&sent.video).clone();
        let start = consecutive_run(&frames, &sent_video, &format!("{name} camera"))?;
        let (first_at, _, _) = sent_video[start];
        ensure!(
            first_at.saturating_duration_since(started) < Duration::from_secs(1),
            "{name}'s first recorded keyframe was sent {:?} after the start: not on request",
            first_at.saturating_duration_since(started)
        );
        // Everything sent before the stop was asked for is in the file (but for the last
        // frames still on their way), nothing sent after it was answered.
        let sent_before = |t: Instant| {
            sent_video[start..]
                .iter()
                .filter(|(at, _, _)| *at < t)
                .count()
        };
        let (before_stopping, before_stopped) = (sent_before(stopping), sent_before(stopped));
        ensure!(
            frames.len() + 3 >= before_stopping && frames.len() <= before_stopped,
            "{name}: {} frames recorded; {before_stopping} were sent before the stop was asked \
             for, {before_stopped} before it was done",
            frames.len()
        );
        let duration = times.last().context("no frames")? - times[0] + FRAME_INTERVAL.as_secs_f64();
        within_5_percent(&format!("{name}'s camera"), duration)?;
        // The recorded timestamps step exactly as the sent ones did: the mute shows as a
        // step of its length, not as lost time.
        let sent_steps: Vec<u32> = sent_video[start..start + frames.len()]
            .windows(2)
            .map(|w| w[1].1.wrapping_sub(w[0].1))
            .collect();
        let recorded_steps: Vec<u32> = ivf_frames(&std::fs::read(&path)?)?
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) as u32)
            .collect();
        ensure!(
            recorded_steps == sent_steps,
            "{name}'s frame timestamps differ from the sent ones"
        );
        let longest = sent_steps.iter().max().copied().unwrap_or(0);
        if name == "bob" {
            ensure!(
                longest >= 90_000,
                "bob's camera muted for {longest} ticks only"
            );
        } else {
            ensure!(longest < 90_000, "ada's camera paused for {longest} ticks");
        }

        // Audio: every packet in order, granules that keep the call's time.
        let entry = sidecar_file(&sidecar, name, "microphone")?;
        ensure!(
            entry["codec"] == "opus" && entry["container"] == "ogg",
            "{entry:#}"
        );
        let path = dir.join(entry["file"].as_str().context("file")?);
        ensure!(
            path.extension().is_some_and(|e| e == "opus"),
            "{}",
            path.display()
        );
        ffmpeg_reads(&path, true)?;
        let (codec, probed, times) = ffprobe(&path)?;
        ensure!(codec == "opus", "{codec}");
        within_5_percent(&format!("{name}'s microphone as ffprobe says"), probed)?;
        let pages = ogg_pages(&std::fs::read(&path)?)?;
        let mut samples = 0u64;
        let mut recorded = Vec::new();
        let mut fill = 0;
        let mut packets = 0;
        for page in &pages[2..] {
            for packet in &page.packets {
                samples += opus_samples(packet);
                packets += 1;
                if packet.len() == 1 {
                    fill += 1;
                } else {
                    recorded.push(packet.clone());
                }
            }
            ensure!(
                page.granule == samples,
                "{name}: a page's granule {} is not the {samples} samples before it",
                page.granule
            );
        }
        ensure!(
            times.len() == packets,
            "ffprobe counts {} packets",
            times.len()
        );
        let sent_audio = lock(&sent.audio).clone();
        let start = consecutive_run(&recorded, &sent_audio, &format!("{name} microphone"))?;
        // the recording crossed the wrap of the publisher's timestamps
        let window = &sent_audio[start..start + recorded.len()];
        ensure!(
            window.windows(2).any(|w| w[1].1 < w[0].1),
            "{name}'s recorded audio did not cross a timestamp wrap"
        );
        within_5_percent(&format!("{name}'s microphone"), samples as f64 / 48_000.0)?;
        // The muted time is filled with empty frames, one per 20 ms the sender skipped, so
        // the file keeps the call's time.
        let skipped: usize = window
            .windows(2)
            .map(|w| (w[1].1.wrapping_sub(w[0].1) / AUDIO_TICKS) as usize - 1)
            .sum();
        ensure!(
            fill == skipped,
            "{name}'s audio has {fill} fill frames for {skipped} skipped"
        );
        if name == "bob" {
            ensure!(
                skipped >= 90,
                "bob's microphone muted for {skipped} frames only"
            );
        } else {
            ensure!(skipped == 0, "ada's microphone skipped {skipped} frames");
        }
        ensure!(
            entry["frames"] == recorded.len() && entry["filledFrames"] == fill,
            "{entry:#}"
        );
    }

    // The screen share came with the renegotiation: a file of its own from then on. Its
    // frames are the test client's tagged stand-ins for VP8, so ffmpeg demuxes it only.
    let entry = sidecar_file(&sidecar, "ada", "screen")?;
    ensure!(entry["trackId"] == screen.0, "{entry:#}");
    let offset = entry["startOffsetMs"].as_f64().context("offset")?;
    ensure!(
        (10_000.0..14_000.0).contains(&offset),
        "the screen file starts {offset} ms in"
    );
    let path = dir.join(entry["file"].as_str().context("file")?);
    ffmpeg_reads(&path, false)?;
    let (codec, _, times) = ffprobe(&path)?;
    ensure!(
        codec == "vp8" && times.len() > 100,
        "{codec}, {} frames",
        times.len()
    );

    let (_, body) = call(&server, "GET", "/api/stats").await?;
    let stats: Value = serde_json::from_str(&body)?;
    ensure!(stats["recording_drops"] == 0, "{stats:#}");
    ensure!(stats["recordings"] == 0, "{stats:#}");
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// A recording whose disk fills up: the files stop, the failure is logged, counted and
/// shown in the room's description, and the call goes on. The room is recorded from its
/// first join by the config. The server runs in a mount namespace of its own with a
/// 64 KiB tmpfs as its recording directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_the_call_goes_on() -> Result<()> {
    init_tracing();
    let work = temp_dir("full")?;
    let records = work.join("records");
    std::fs::create_dir_all(&records)?;
    let probe = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .output()
        .context("unshare (util-linux) is not installed")?;
    ensure!(
        probe.status.success(),
        "this test mounts a tmpfs in a mount namespace and needs root (unshare --mount): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    // The server, inside its own mount namespace, on a tiny tmpfs.
    let wrapper = work.join("chorus-on-a-small-disk.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec unshare --mount --propagation private sh -c \
             'mount -t tmpfs -o size=64k chorus-rec \"$0\" && exec \"$@\"' '{}' '{}' \"$@\"\n",
            records.display(),
            chorus_bin()?.display()
        ),
    )?;
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let server = Server::start_bin(&wrapper, &config(&records, "\"full\"")).await?;
    let addr = server.http_addr();

    let ada = Client::connect_and_join(addr, "full", "ada").await?;
    let bob = Client::connect_and_join(addr, "full", "bob").await?;
    let tracks = ada.publish_and_stream(MediaRate::default()).await?;
    bob.publish_and_stream(MediaRate::default()).await?;
    bob.wait_for_packets(ada.id()?, tracks.video, 30, T).await?;

    let error = poll_until_async(
        Duration::from_secs(30),
        "the recording's write error",
        || async {
            let (status, body) = call(&server, "GET", "/api/v1/rooms/full").await.ok()?;
            let details: RoomDetails =
                serde_json::from_str(&body).ok().filter(|_| status == 200)?;
            details.recording?.error
        },
    )
    .await?;
    ensure!(
        error.contains("No space left"),
        "the error says why: {error}"
    );
    server
        .wait_for_log(T, &["recording write failed", "No space left"])
        .await?;
    let (_, body) = call(&server, "GET", "/api/stats").await?;
    let stats: Value = serde_json::from_str(&body)?;
    ensure!(
        stats["recording_write_errors"].as_u64() >= Some(1),
        "{stats:#}"
    );
    // the call goes on: media still flows both ways, for more than a second
    for (client, from, track) in [
        (&bob, ada.id()?, tracks.video),
        (&bob, ada.id()?, tracks.audio),
    ] {
        let got = client.received_count(from, track);
        client.wait_for_packets(from, track, got + 40, T).await?;
    }
    let bob_video = bob.published().context("bob's tracks")?.video;
    let got = ada.received_count(bob.id()?, bob_video);
    ada.wait_for_packets(bob.id()?, bob_video, got + 40, T)
        .await?;
    ensure!(ada.is_connected() && bob.is_connected(), "a client dropped");
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// RED audio is recorded as plain Opus, with a lost packet filled in from the redundancy of
/// the next; a simulcast camera is recorded from its top layer; and a drain finishes the
/// recording before the server exits. The room is recorded from its first join (config).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_audio_and_a_simulcast_camera_are_recorded_and_a_drain_finishes_them() -> Result<()> {
    init_tracing();
    let work = temp_dir("layers")?;
    let media = Arc::new(encode_media(&work, false)?);
    let records = work.join("records");
    let mut server = Server::start_with_config(&format!(
        "{}[shutdown]\ngrace_secs = 1\n",
        config(&records, "\"layers\"")
    ))
    .await?;
    let addr = server.http_addr();

    // ada: a simulcast camera (the test client's tagged stand-ins for VP8, per layer)
    let ada = Client::connect_and_join(addr, "layers", "ada").await?;
    let ada_tracks = ada.publish_with(PublishOptions::simulcast()).await?;
    ada.start_media(MediaRate::default())?;
    // bob: real Opus in RED, one packet in 25 lost on the way
    let red = ClientOptions {
        audio: AudioCaps {
            red: true,
            audio_level: false,
        },
        ..Default::default()
    };
    let bob = Client::connect_with(addr, "bob", red).await?;
    bob.join("layers").await?;
    bob.publish().await?;
    let bob_sent = Arc::new(Sent::default());
    bob_sent.audio_on.store(true, Ordering::Relaxed);
    tokio::spawn(send_audio(
        bob.rtp_writer(MediaKind::Audio).context("audio writer")?,
        media.clone(),
        bob_sent.clone(),
        0x1234_5678,
        AudioMode {
            red: true,
            lose_every: Some(25),
        },
    ));
    bob.wait_for_packets(ada.id()?, ada_tracks.video, 30, T)
        .await?;

    // The recording runs from the first join; it shows in the room's description.
    let (status, body) = call(&server, "GET", "/api/v1/rooms/layers").await?;
    ensure!(status == 200, "{status} {body}");
    let details: RoomDetails = serde_json::from_str(&body)?;
    let dir = PathBuf::from(details.recording.context("recording")?.directory);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A room admin mutes bob's microphone for a while: not recorded meanwhile.
    let bob_audio = bob.published().context("bob's tracks")?.audio;
    let mute = format!(
        "/api/v1/rooms/layers/participants/{}/tracks/{}/mute",
        bob.id()?.0,
        bob_audio.0
    );
    let (status, body) = call_json(&server, "POST", &mute, r#"{"muted":true}"#).await?;
    ensure!(status == 204, "mute: {status} {body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = call_json(&server, "POST", &mute, r#"{"muted":false}"#).await?;
    ensure!(status == 204, "unmute: {status} {body}");
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A drain with a grace of 1 s ends the calls; the files are finished before the exit.
    server.signal("TERM")?;
    let status = server.wait_exit(T).await?;
    ensure!(status.success(), "exit status {status}");
    bob_sent.stop.store(true, Ordering::Relaxed);
    let sidecar: Value =
        serde_json::from_slice(&std::fs::read(dir.join("recording.json")).context("the sidecar")?)?;
    ensure!(sidecar["state"] == "finished", "{sidecar:#}");

    // bob's audio: every Opus frame, the lost ones too, unwrapped from RED, in order.
    let entry = sidecar_file(&sidecar, "bob", "microphone")?;
    ensure!(entry["finished"] == true, "{entry:#}");
    let path = dir.join(entry["file"].as_str().context("file")?);
    ffmpeg_reads(&path, true)?;
    let pages = ogg_pages(&std::fs::read(&path)?)?;
    ensure!(
        pages.last().is_some_and(|p| p.flags & 0x04 != 0),
        "the last Ogg page ends the stream"
    );
    let packets: Vec<Vec<u8>> = pages[2..].iter().flat_map(|p| p.packets.clone()).collect();
    let fill = packets.iter().filter(|p| p.len() == 1).count();
    let recorded: Vec<Vec<u8>> = packets.into_iter().filter(|p| p.len() > 1).collect();
    ensure!(recorded.len() > 200, "{} packets", recorded.len());
    let sent_audio = lock(&bob_sent.audio).clone();
    // Every frame sent, in order, but for those sent while the admin muted the track,
    // which are silence of the same length.
    let first = sent_audio
        .iter()
        .position(|(_, _, d)| d[..] == recorded[0][..])
        .context("the first recorded frame was never sent")?;
    let mut at = first;
    let mut skipped = 0;
    for (i, frame) in recorded.iter().enumerate() {
        while sent_audio
            .get(at)
            .is_some_and(|(_, _, d)| d[..] != frame[..])
        {
            at += 1;
            skipped += 1;
        }
        ensure!(
            at < sent_audio.len(),
            "recorded frame {i} was not sent after the one before"
        );
        at += 1;
    }
    ensure!(
        fill == skipped && (50..=100).contains(&skipped),
        "{skipped} frames not recorded while muted, {fill} filled"
    );
    ensure!(entry["filledFrames"] == fill, "{entry:#}");
    ensure!(
        entry["packetsLost"].as_u64() >= Some(8),
        "the lost packets were lost: {entry:#}"
    );

    // ada's camera: the top layer only, 1280x720.
    let entry = sidecar_file(&sidecar, "ada", "camera")?;
    ensure!(entry["finished"] == true, "{entry:#}");
    ensure!(
        entry["width"] == 1280 && entry["height"] == 720,
        "{entry:#}"
    );
    let path = dir.join(entry["file"].as_str().context("file")?);
    ffmpeg_reads(&path, false)?;
    let bytes = std::fs::read(&path)?;
    ensure!(
        u32::from_le_bytes(bytes[24..28].try_into()?) > 90_000 * 4,
        "the IVF header has the duration"
    );
    let frames = ivf_frames(&bytes)?;
    ensure!(frames.len() > 120, "{} frames", frames.len());
    for (i, (_, frame)) in frames.iter().enumerate() {
        let tag = parse_tag(frame).with_context(|| format!("frame {i} is no tagged frame"))?;
        ensure!(
            tag.layer == Some(2),
            "frame {i} is of layer {:?}",
            tag.layer
        );
        if i == 0 {
            ensure!(tag.keyframe, "the camera file starts on a delta frame");
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// H.264 (which Chromium may prefer to VP8) is recorded as an Annex-B stream that ffmpeg
/// decodes: x264's output, packetized as a browser does (single NAL units, FU-A for the
/// large ones), through the recorder's jitter buffer and frame assembly, with one packet
/// lost: the frames after it wait for the next IDR, so nothing undecodable is written.
/// (The test clients negotiate VP8 only, so this drives the recorder directly.)
#[test]
fn h264_is_recorded_as_annex_b_that_ffmpeg_decodes() -> Result<()> {
    use chorus_sfu::record::frames::VideoCodec;
    use chorus_sfu::record::track::{RecordPacket, TrackCodec, TrackRecorder};

    let work = temp_dir("h264")?;
    let source = work.join("source.h264");
    let out = run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=30",
            "-t",
            "4",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-g",
            "30",
            "-f",
            "h264",
            &source.display().to_string(),
        ],
    )?;
    ensure!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stream = std::fs::read(&source)?;
    // NAL units, between start codes (a 4-byte start code leaves a zero behind: trimmed,
    // since a NAL unit never ends in a zero byte).
    let mut starts = Vec::new();
    for i in 0..stream.len().saturating_sub(3) {
        if stream[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
        }
    }
    let nals: Vec<&[u8]> = starts
        .iter()
        .enumerate()
        .map(|(n, &start)| {
            let end = starts.get(n + 1).map_or(stream.len(), |next| next - 3);
            let mut nal = &stream[start..end];
            while let [rest @ .., 0] = nal {
                nal = rest;
            }
            nal
        })
        .collect();
    // Access units: parameter sets and SEI, then the frame's one slice.
    let mut frames: Vec<Vec<&[u8]>> = Vec::new();
    let mut pending = Vec::new();
    for nal in nals {
        pending.push(nal);
        if matches!(nal[0] & 0x1f, 1 | 5) {
            frames.push(std::mem::take(&mut pending));
        }
    }
    ensure!(frames.len() == 120, "{} frames", frames.len());
    let idr = |f: &Vec<&[u8]>| f.iter().any(|n| n[0] & 0x1f == 5);

    let t = Instant::now();
    let mut recorder = TrackRecorder::new(TrackCodec::Video(VideoCodec::H264));
    let mut open = || Ok(std::io::Cursor::new(Vec::new()));
    let mut seq: u16 = 65_000;
    let lost_frame = 40; // a P frame: frames 40 to 59 wait for the IDR at 60
    let mut ts: u32 = u32::MAX - 3000 * 50;
    for (n, frame) in frames.iter().enumerate() {
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        for nal in frame {
            if nal.len() <= MAX_PAYLOAD {
                payloads.push(nal.to_vec());
                continue;
            }
            let (header, body) = (nal[0], &nal[1..]);
            let chunks: Vec<&[u8]> = body.chunks(MAX_PAYLOAD).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let mut fu = vec![(header & 0xe0) | 28, header & 0x1f];
                if i == 0 {
                    fu[1] |= 0x80;
                }
                if i + 1 == chunks.len() {
                    fu[1] |= 0x40;
                }
                fu.extend_from_slice(chunk);
                payloads.push(fu);
            }
        }
        let count = payloads.len();
        for (i, payload) in payloads.into_iter().enumerate() {
            seq = seq.wrapping_add(1);
            if n == lost_frame && i == 0 {
                continue; // lost on the way, never resent
            }
            let packet = RecordPacket {
                ssrc: 42,
                sequence: seq,
                timestamp: ts,
                marker: i + 1 == count,
                payload_type: 102,
                switched: n == 0 && i == 0,
                payload: Bytes::from(payload),
                arrival: t + FRAME_INTERVAL * n as u32,
            };
            recorder.push(packet, &mut open)?;
        }
        recorder.poll(t + FRAME_INTERVAL * n as u32, &mut open)?;
        ts = ts.wrapping_add(FRAME_TICKS);
    }
    let written = recorder.finish(&mut open)?.context("a file")?.into_inner();
    let expected = frames.len() - (60 - lost_frame);
    ensure!(
        recorder.report().frames == expected as u64,
        "{} frames written, {expected} expected",
        recorder.report().frames
    );
    ensure!(idr(&frames[60]), "frame 60 is an IDR");
    let file = work.join("recorded.h264");
    std::fs::write(&file, &written)?;
    ffmpeg_reads(&file, true)?;
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,nb_read_frames",
            "-of",
            "json",
            &file.display().to_string(),
        ],
    )?;
    let value: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(value["streams"][0]["codec_name"] == "h264", "{value}");
    ensure!(
        value["streams"][0]["nb_read_frames"]
            .as_str()
            .and_then(|n| n.parse::<usize>().ok())
            == Some(expected),
        "ffprobe decodes {} frames, {expected} expected",
        value["streams"][0]["nb_read_frames"]
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// VP9 is recorded into IVF that ffmpeg decodes: libvpx's VP9 packetized as RFC 9628
/// describes (the B and E bits, P on inter frames, the picture size on keyframes), through
/// the recorder's frame assembly. (The test clients negotiate VP8 only, so this drives the
/// recorder directly.)
#[test]
fn vp9_is_recorded_as_ivf_that_ffmpeg_decodes() -> Result<()> {
    use chorus_sfu::record::frames::VideoCodec;
    use chorus_sfu::record::track::{RecordPacket, TrackCodec, TrackRecorder};

    let work = temp_dir("vp9")?;
    let source = work.join("source.ivf");
    let out = run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=30",
            "-t",
            "3",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-auto-alt-ref",
            "0",
            "-lag-in-frames",
            "0",
            "-g",
            "60",
            "-b:v",
            "300k",
            "-f",
            "ivf",
            &source.display().to_string(),
        ],
    )?;
    ensure!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames = ivf_frames(&std::fs::read(&source)?)?;
    ensure!(frames.len() == 90, "{} frames", frames.len());

    let t = Instant::now();
    let mut recorder = TrackRecorder::new(TrackCodec::Video(VideoCodec::Vp9));
    let mut open = || Ok(std::io::Cursor::new(Vec::new()));
    let mut seq: u16 = 10;
    for (n, (_, frame)) in frames.iter().enumerate() {
        // profile 0 uncompressed header: frame marker, profile, show_existing_frame, then
        // frame_type (0: a keyframe)
        let key = frame[0] & 0x04 == 0;
        let chunks: Vec<&[u8]> = frame.chunks(MAX_PAYLOAD).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut descriptor = 0u8;
            if !key {
                descriptor |= 0x40; // P
            }
            if i == 0 {
                descriptor |= 0x08; // B
            }
            if i + 1 == chunks.len() {
                descriptor |= 0x04; // E
            }
            let mut payload = vec![descriptor];
            if key && i == 0 {
                payload[0] |= 0x02; // V: one spatial layer, with its size
                payload.extend_from_slice(&[0x10, 0x01, 0x40, 0x00, 0xf0]);
            }
            payload.extend_from_slice(chunk);
            let packet = RecordPacket {
                ssrc: 7,
                sequence: seq,
                timestamp: 3000 * n as u32,
                marker: i + 1 == chunks.len(),
                payload_type: 98,
                switched: n == 0 && i == 0,
                payload: Bytes::from(payload),
                arrival: t + FRAME_INTERVAL * n as u32,
            };
            seq = seq.wrapping_add(1);
            recorder.push(packet, &mut open)?;
        }
        recorder.poll(t + FRAME_INTERVAL * n as u32, &mut open)?;
    }
    let written = recorder.finish(&mut open)?.context("a file")?.into_inner();
    ensure!(&written[8..12] == b"VP90", "an IVF of VP9");
    ensure!(
        u16::from_le_bytes([written[12], written[13]]) == 320,
        "the width"
    );
    let recorded = ivf_frames(&written)?;
    ensure!(
        recorded.len() == frames.len(),
        "{} frames written",
        recorded.len()
    );
    for ((pts, data), (n, (_, sent))) in recorded.iter().zip(frames.iter().enumerate()) {
        ensure!(data == sent && *pts == 3000 * n as u64, "frame {n}");
    }
    let file = work.join("recorded.ivf");
    std::fs::write(&file, &written)?;
    ffmpeg_reads(&file, true)?;
    let (codec, duration, times) = ffprobe(&file)?;
    ensure!(
        codec == "vp9" && times.len() == 90,
        "{codec}, {} frames",
        times.len()
    );
    ensure!((duration - 3.0).abs() < 0.05, "{duration} s");
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
