//! Audio on the two legs, in webrtc-rs terms: the Opus and RED codecs each leg registers,
//! the audio-level header extension the publisher leg negotiates, and reading a level out
//! of a packet. The RED format itself is in [`crate::red`], the election in
//! [`crate::speaker`].

use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MediaEngine};
use rtc::rtp::header::Header;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};

/// The audio-level header extension's URI (RFC 6464).
pub(super) const AUDIO_LEVEL_URI: &str = rtc::sdp::extmap::AUDIO_LEVEL_URI;

/// RED's MIME type (RFC 2198, `audio/red/48000/2`).
pub(super) const MIME_TYPE_RED: &str = "audio/red";

/// Opus's payload type in Chorus's own offers (and Chromium's).
const OPUS_PT: u8 = 111;
/// RED's payload type in Chorus's own offers (and Chromium's). Its fmtp names the Opus
/// payload type of the primary and the redundant blocks; webrtc-rs matches it against the
/// browser's as a plain fmtp parameter, so a browser whose Opus is not 111 negotiates no
/// RED with Chorus, and gets plain Opus.
const RED_PT: u8 = 63;

/// What the audio of every peer does (`[audio]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioOptions {
    /// Negotiate RED on both legs. Off: publishers send plain Opus (the A/B switch).
    pub red: bool,
    /// Ask publishers for Opus DTX (`usedtx=1` in the answer): a silent microphone sends
    /// a frame every 400 ms instead of every 20 ms.
    pub dtx: bool,
}

impl Default for AudioOptions {
    fn default() -> Self {
        Self {
            red: true,
            dtx: true,
        }
    }
}

/// Registers Opus, and RED after it when `options.red`. In-band FEC is on in Chorus's
/// own Opus fmtp (the subscriber leg's offer); on the publisher leg webrtc-rs answers with
/// the browser's own fmtp lines, to which [`crate::opus::answer_options`] adds DTX.
/// Opus comes first: a subscriber leg's offer then prefers it, and on the publisher leg
/// the browser's offer sets the order (a client that wants to send RED lists RED first).
pub(super) fn register_codecs(
    engine: &mut MediaEngine,
    options: AudioOptions,
) -> Result<(), rtc::shared::error::Error> {
    let codec = |mime: &str, fmtp: &str, pt| RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate: 48000,
            channels: 2,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: Vec::new(),
        },
        payload_type: pt,
    };
    let fmtp = if options.dtx {
        "minptime=10;useinbandfec=1;usedtx=1"
    } else {
        "minptime=10;useinbandfec=1"
    };
    engine.register_codec(codec(MIME_TYPE_OPUS, fmtp, OPUS_PT), RtpCodecKind::Audio)?;
    if options.red {
        let fmtp = format!("{OPUS_PT}/{OPUS_PT}");
        engine.register_codec(codec(MIME_TYPE_RED, &fmtp, RED_PT), RtpCodecKind::Audio)?;
    }
    Ok(())
}

/// Offers the audio-level extension (publisher leg only: levels are read from what
/// publishers send, and forwarded copies carry no extension).
pub(super) fn negotiate_audio_level(
    engine: &mut MediaEngine,
) -> Result<(), rtc::shared::error::Error> {
    engine.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )
}

/// Whether a codec is RED.
pub(super) fn is_red(codec: &RTCRtpCodec) -> bool {
    codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_RED)
}

/// What a packet's audio-level extension said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelRead {
    /// No audio-level element (or the extension is not negotiated).
    Absent,
    /// Loudness 0 (silence, -127 dBov) to 127 (0 dBov): 127 minus the RFC 6464 level.
    Loudness(u8),
    /// An element that is not one byte: not a level (dropped and counted). The level
    /// itself is 7 bits and cannot be out of range on its own.
    Invalid,
}

/// Reads the audio level under extension `id`. Borrows the element (webrtc-rs's
/// `get_extension` clones its `Bytes`, which may allocate on a first clone): no
/// allocation, no reference count touched.
pub(super) fn read_level(header: &Header, id: u8) -> LevelRead {
    let payload = header
        .extension
        .then(|| header.extensions.iter().find(|e| e.id == id))
        .flatten()
        .map(|e| &e.payload[..]);
    match payload {
        None => LevelRead::Absent,
        // V (voice activity) in the top bit, the level in -dBov below it
        Some([byte]) => LevelRead::Loudness(127 - (byte & 0x7f)),
        Some(_) => LevelRead::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rtc::rtp::header::Extension;

    use super::*;

    fn header(ext: &'static [u8]) -> Header {
        Header {
            extension: true,
            extension_profile: 0xBEDE,
            extensions: vec![Extension {
                id: 1,
                payload: Bytes::from_static(ext),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn levels_are_read_as_loudness_and_bad_elements_are_invalid() {
        assert_eq!(
            read_level(&header(&[0x80 | 30]), 1),
            LevelRead::Loudness(97)
        );
        assert_eq!(read_level(&header(&[127]), 1), LevelRead::Loudness(0));
        assert_eq!(read_level(&header(&[0]), 1), LevelRead::Loudness(127));
        assert_eq!(read_level(&header(&[30]), 2), LevelRead::Absent);
        assert_eq!(read_level(&header(&[]), 1), LevelRead::Invalid);
        assert_eq!(read_level(&header(&[30, 0]), 1), LevelRead::Invalid);
        assert_eq!(read_level(&Header::default(), 1), LevelRead::Absent);
    }
}
