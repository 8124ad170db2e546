//! A subscriber's `subscribeAnswer` and its trickled candidates, the way the worker takes
//! them: a sans-IO subscriber leg that offered Opus (with RED) and VP8 applies the answer
//! (webrtc-rs's SDP parse and set remote), reads back what each track negotiated, then
//! takes the candidates and lets time pass.
//!
//! The input is the answer, then optionally a line `--` and one candidate per line.
//! Refusing is fine; panicking is not, and a negotiated track must be consistent: ready
//! exactly when its codec maps, RED either passed through as RED or unwrapped to Opus.
#![no_main]

use std::time::{Duration, Instant};

use chorus_protocol::IceCandidate;
use chorus_sfu::peer::fuzzing::SubscriberLeg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (answer, candidates) = text.split_once("\n--\n").unwrap_or((text, ""));
    let now = Instant::now();
    let mut leg = SubscriberLeg::new(now).expect("a subscriber leg");
    if leg.answer(answer, now).is_err() {
        return;
    }
    let negotiated = leg.negotiated();
    assert_eq!(negotiated.len(), 2);
    for (i, n) in negotiated.into_iter().enumerate() {
        let primary = if i == 0 { n.opus } else { n.vp8 };
        assert_eq!(
            n.ready,
            primary.is_some(),
            "ready exactly when the codec maps"
        );
        if i == 1 {
            assert!(n.opus.is_none() && n.red.is_none() && n.unwrap_red.is_none());
            continue;
        }
        assert!(n.vp8.is_none());
        match n.unwrap_red {
            // no RED on this leg: RED packets go out as their Opus primary block
            Some(pair) => {
                assert_eq!(pair, (63, 111));
                assert_eq!(n.red, n.opus);
            }
            // RED taken as it came, or no Opus at all
            None => assert!(n.red.is_none() || (n.opus.is_some() && n.red != n.opus)),
        }
    }
    for (i, line) in candidates.lines().take(64).enumerate() {
        let _ = leg.candidate(IceCandidate {
            candidate: line.to_owned(),
            sdp_mid: Some((i % 2).to_string()),
            sdp_m_line_index: Some((i % 2) as u16),
        });
    }
    leg.run(now + Duration::from_millis(50));
    leg.run(now + Duration::from_secs(6));
});
