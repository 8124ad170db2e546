//! A WHEP viewer's SDP offer, the way the server takes it: a fresh sans-IO viewer peer (no
//! socket) applies it and answers, with a sending track on every m-line that receives.
//! Refusing is fine; panicking is not. An accepted offer gets an answer and one slot per
//! receiving m-line: at least one, at most `MAX_VIEWER_SLOTS`, with distinct mids.
#![no_main]

use std::collections::HashSet;
use std::time::Instant;

use chorus_sfu::peer::{MAX_VIEWER_SLOTS, Peer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let settings = chorus_fuzz::peer_settings();
    let now = Instant::now();
    let mut peer = Peer::new_viewer(&settings, "fuzzufrag", "fuzzpasswordfuzzpassword", now)
        .expect("a viewer peer");
    let mut next = 0x4000_0000u32;
    let Ok((answer, slots)) = peer.answer_viewer(
        sdp.to_owned(),
        || {
            next += 1;
            next
        },
        now,
    ) else {
        return;
    };
    assert!(answer.starts_with("v=0"), "{answer}");
    assert!((1..=MAX_VIEWER_SLOTS).contains(&slots.len()));
    let mids: HashSet<_> = slots.iter().map(|s| &s.mid).collect();
    assert_eq!(mids.len(), slots.len(), "one slot per m-line: {slots:?}");
    let mut events = Vec::new();
    peer.poll_events(&mut events);
    peer.poll_transmit(|_, _, _| {});
});
