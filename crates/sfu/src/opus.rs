//! Opus options in the publisher leg's answer.
//!
//! webrtc-rs answers with the browser's own fmtp line for each codec, so the options a
//! browser's encoder reads from the answer are the ones its offer carried: Chromium offers
//! `minptime=10;useinbandfec=1`, so in-band FEC is on already. DTX (`usedtx=1`) is an
//! option of the receiver (the answerer, Chorus) that browsers do not offer; this adds it
//! to the answer's Opus lines, and leaves everything else as it was.

/// `sdp` with `usedtx=1` on the fmtp line of every Opus payload type that lacks it. An
/// Opus payload type without an fmtp line is left alone (its defaults: no DTX).
pub fn answer_with_dtx(sdp: &str) -> String {
    let opus: Vec<&str> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter_map(|rest| {
            let (pt, codec) = rest.split_once(' ')?;
            codec
                .to_ascii_lowercase()
                .starts_with("opus/")
                .then_some(pt)
        })
        .collect();
    let mut out = String::with_capacity(sdp.len() + 16 * opus.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        let dtx = body
            .strip_prefix("a=fmtp:")
            .and_then(|rest| rest.split_once(' '))
            .filter(|(pt, params)| {
                opus.contains(pt)
                    && !params
                        .split(';')
                        .any(|p| p.trim().to_ascii_lowercase().starts_with("usedtx="))
            })
            .is_some();
        out.push_str(body);
        if dtx {
            out.push_str(";usedtx=1");
        }
        out.push_str(ending);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 63 111\r\n\
        a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n\
        a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";

    #[test]
    fn dtx_is_added_to_opus_only() {
        let out = answer_with_dtx(ANSWER);
        assert!(out.contains("a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\n"));
        assert!(out.contains("a=fmtp:63 111/111\r\n"), "RED untouched");
        assert_eq!(out.len(), ANSWER.len() + ";usedtx=1".len());
    }

    #[test]
    fn an_answer_that_has_dtx_already_is_unchanged() {
        let once = answer_with_dtx(ANSWER);
        assert_eq!(answer_with_dtx(&once), once);
        let off = ANSWER.replace("useinbandfec=1", "useinbandfec=1;usedtx=0");
        assert_eq!(answer_with_dtx(&off), off, "an explicit choice stays");
    }

    #[test]
    fn an_answer_without_audio_is_unchanged() {
        let video = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=fmtp:96 x=1\r\n";
        assert_eq!(answer_with_dtx(video), video);
    }
}
