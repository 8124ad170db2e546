//! Datagrams from a participant's address into its publisher peer, after its offer was
//! applied: webrtc-rs's demultiplexing, STUN (ICE-lite), DTLS and SRTP stacks as a client
//! that knows its ufrag (anyone in the call) can reach them. Sans-IO: the peer's output
//! is drained and dropped. Over UDP or ICE-TCP, with time moving on between datagrams.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::BytesMut;
use chorus_protocol::{PeerRole, TrackId};
use chorus_sfu::PeerSettings;
use chorus_sfu::peer::Peer;
use libfuzzer_sys::fuzz_target;

/// A Chromium-shaped offer: Opus, and VP8 with three simulcast layers.
const OFFER: &str = include_str!("../seeds/sdp/audio_simulcast_vp8.sdp");

#[derive(Arbitrary, Debug)]
struct Datagram {
    tcp: bool,
    wait_ms: u8,
    bytes: Vec<u8>,
}

fn settings() -> &'static PeerSettings {
    static SETTINGS: OnceLock<PeerSettings> = OnceLock::new();
    SETTINGS.get_or_init(chorus_fuzz::peer_settings)
}

fuzz_target!(|datagrams: Vec<Datagram>| {
    let mut now = Instant::now();
    let mut peer = Peer::new(
        settings(),
        PeerRole::Publisher,
        "fuzzufrag",
        "fuzzpasswordfuzzpassword",
        now,
    )
    .expect("a publisher peer");
    let (_, offered) = peer
        .apply_offer(OFFER.to_owned(), now)
        .expect("the seed offer applies");
    for (i, track) in offered.iter().enumerate() {
        peer.bind_inbound(&track.mid, TrackId(i as u64 + 1), track.mid == "1");
    }
    let from = ([198, 51, 100, 7], 50_000).into();
    let mut events = Vec::new();
    for datagram in datagrams {
        now += Duration::from_millis(u64::from(datagram.wait_ms));
        peer.handle_datagram(from, datagram.tcp, BytesMut::from(&datagram.bytes[..]), now);
        peer.poll_events(&mut events);
        peer.poll_media(|_, _, _| {}, &mut events);
        peer.poll_transmit(|_, _, _| {});
        if peer.next_timeout().is_some_and(|at| at <= now) {
            peer.handle_timeout(now);
        }
        peer.refresh_timeout();
        events.clear();
    }
});
