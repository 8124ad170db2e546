//! A publisher's SDP offer, the way the worker takes it: the simulcast check first, then a
//! fresh publisher peer (sans-IO, no socket) applies it and answers, and the offered
//! m-lines are bound to tracks and asked for their codec. Refusing is fine; panicking is not.
#![no_main]

use std::time::Instant;

use chorus_protocol::{PeerRole, TrackId};
use chorus_sfu::layer::offered_layers;
use chorus_sfu::peer::Peer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(layers) = offered_layers(sdp) else {
        return;
    };
    let settings = chorus_fuzz::peer_settings();
    let now = Instant::now();
    let mut peer = Peer::new(
        &settings,
        PeerRole::Publisher,
        "fuzzufrag",
        "fuzzpasswordfuzzpassword",
        now,
    )
    .expect("a publisher peer");
    let Ok((answer, offered)) = peer.apply_offer(sdp.to_owned(), now) else {
        return;
    };
    assert!(answer.starts_with("v=0"), "{answer}");
    for (i, track) in offered.iter().enumerate() {
        let simulcast = layers.iter().any(|(mid, _)| *mid == track.mid);
        peer.bind_inbound(&track.mid, TrackId(i as u64 + 1), simulcast);
        let _ = peer.source_codec(&track.mid);
    }
    let mut events = Vec::new();
    peer.poll_events(&mut events);
    peer.poll_media(|_, _, _| {}, &mut events);
    peer.poll_transmit(|_, _, _| {});
});
