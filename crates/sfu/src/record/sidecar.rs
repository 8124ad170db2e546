//! The sidecar: one JSON file per recording (`recording.json`, next to the track files)
//! that lists every file with its track, participant and codec, and when its first frame
//! arrived on the wall clock, so that the files can be muxed in sync later (see
//! `docs/recording.md`). Rewritten atomically (a temporary file renamed over it) whenever
//! a file starts, fails or ends, and every few seconds while the recording runs.

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

/// The sidecar's format version.
pub const SIDECAR_VERSION: u32 = 1;

pub const SIDECAR_NAME: &str = "recording.json";

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sidecar {
    pub version: u32,
    pub room: String,
    /// When recording started, in milliseconds since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// When it ended; absent while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_unix_ms: Option<u64>,
    /// `recording`, or `finished` once every file was closed.
    pub state: &'static str,
    /// The first write error, if any (the call went on; the failed files stopped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Packets the media worker could not hand over because the recorder's queue was full.
    pub dropped_packets: u64,
    pub files: Vec<SidecarFile>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarFile {
    /// The file's name, relative to the sidecar; absent for a track with no file yet (no
    /// keyframe came) or one whose codec is not recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub track_id: u64,
    pub participant_id: u64,
    pub participant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// `audio` or `video`.
    pub kind: &'static str,
    /// `microphone`, `camera` or `screen`.
    pub source: &'static str,
    /// `opus`, `vp8`, `vp9`, `h264`, or the MIME type of a codec that is not recorded.
    pub codec: String,
    /// `ogg`, `ivf` or `annexb`; absent when the codec is not recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<&'static str>,
    pub clock_rate: u32,
    /// When the file's first frame arrived, in milliseconds after the recording started:
    /// the offset to give the file when muxing (`ffmpeg -itsoffset`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_offset_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_unix_ms: Option<u64>,
    /// Media time from the first frame to the last (audio: to the end of the last).
    pub duration_ms: f64,
    /// Video frames or Opus packets written.
    pub frames: u64,
    /// Empty Opus frames written to fill gaps (mute, DTX, losses).
    pub filled_frames: u64,
    /// Video frames that were broken or waited for a keyframe.
    pub frames_skipped: u64,
    pub packets_lost: u64,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u16>,
    /// The file was closed properly (its track ended or the recording stopped).
    pub finished: bool,
    /// Why the file stopped early (a write error such as a full disk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Writes `sidecar` into `dir` atomically.
pub fn write(dir: &Path, sidecar: &Sidecar) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(sidecar).map_err(io::Error::other)?;
    let tmp = dir.join(format!("{SIDECAR_NAME}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&json)?;
    file.write_all(b"\n")?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(SIDECAR_NAME))
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time in milliseconds (UTC), for directory names.
pub fn utc_stamp(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        // 2024-02-29 12:34:56 UTC
        assert_eq!(utc_stamp(1_709_210_096_000), "20240229T123456Z");
        // 2026-12-07 07:20:00 UTC
        assert_eq!(utc_stamp(1_796_628_000_000), "20261207T072000Z");
    }

    #[test]
    fn the_sidecar_is_written_whole_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("chorus-sidecar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sidecar = Sidecar {
            version: SIDECAR_VERSION,
            room: "standup".into(),
            started_at_unix_ms: 1000,
            finished_at_unix_ms: Some(2000),
            state: "finished",
            error: None,
            dropped_packets: 0,
            files: vec![SidecarFile {
                file: Some("p1-ada-camera-t2.ivf".into()),
                track_id: 2,
                participant_id: 1,
                participant: "ada".into(),
                identity: None,
                kind: "video",
                source: "camera",
                codec: "vp8".into(),
                container: Some("ivf"),
                clock_rate: 90_000,
                start_offset_ms: Some(12.5),
                started_at_unix_ms: Some(1012),
                duration_ms: 980.0,
                frames: 30,
                filled_frames: 0,
                frames_skipped: 0,
                packets_lost: 0,
                bytes: 1234,
                width: Some(320),
                height: Some(240),
                finished: true,
                error: None,
            }],
        };
        write(&dir, &sidecar).unwrap();
        let text = std::fs::read_to_string(dir.join(SIDECAR_NAME)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["room"], "standup");
        assert_eq!(value["state"], "finished");
        assert_eq!(value["files"][0]["file"], "p1-ada-camera-t2.ivf");
        assert_eq!(value["files"][0]["startOffsetMs"], 12.5);
        assert_eq!(value["files"][0]["codec"], "vp8");
        assert!(value.get("error").is_none());
        assert!(!dir.join(format!("{SIDECAR_NAME}.tmp")).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
