//! A hub on a real media worker bound to loopback, for this crate's unit tests.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chorus_sfu::room::RoomLimits;
use chorus_sfu::{Hub, HubConfig, PeerSettings};

/// A hub whose rooms hold `max_participants`, with small limits elsewhere.
pub(crate) fn hub(max_participants: usize) -> Hub {
    let socket = chorus_sfu::net::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("udp");
    let addr = socket.local_addr().expect("addr");
    let workers = chorus_sfu::worker::spawn(
        vec![socket],
        None,
        &PeerSettings {
            candidates: vec![addr],
            tcp_candidates: vec![],
            srtp_profiles: vec!["aead_aes_128_gcm".into()],
            audio: Default::default(),
        },
        &Arc::new(AtomicU64::new(1)),
    )
    .expect("media worker");
    Hub::new(
        workers,
        HubConfig {
            limits: RoomLimits {
                max_participants,
                chat_history: 10,
                max_chat_chars: 100,
                max_tracks_per_participant: 8,
                max_subscriptions_per_participant: 100,
            },
            max_rooms: 10,
            max_name_chars: 20,
            ice_servers: Arc::new(|_| Vec::new()),
            events: None,
            speakers: Default::default(),
            recording: Default::default(),
            spread_room_after: 0,
            first_id: 1,
        },
    )
}
