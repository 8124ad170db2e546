//! Test support for Chorus: a simulated browser on the async `webrtc` crate ([`Client`]), a
//! harness that runs the real `chorus` binary ([`Server`]), a bare WebSocket for protocol abuse
//! ([`RawWs`]), known media whose every byte a receiver can check ([`media`]), and sockets
//! with something in between ([`socket`]: loss, silence, and the wrapping the load
//! generator's timestamps use).
//!
//! Logging: set `RUST_LOG` (e.g. `RUST_LOG=chorus_tests=debug`); the default shows only
//! errors. The server child gets `CHORUS_LOG`, else `RUST_LOG`, else `warn`.

pub mod client;
pub mod harness;
pub mod layered;
pub mod media;
pub mod peer;
pub mod raw;
pub mod scenario;
pub mod socket;
pub mod wait;

pub use client::{
    Client, ClientOptions, JoinedInfo, KeyframeRequest, KeyframeRequestKind, Logged, MediaRate,
    PublishOptions, PublishedTracks, ReceivedPacket, Redirected, RtpWriter, SenderReportSeen,
    SentPacket, ServerRefused, redirect_url, refusal_code,
};
pub use harness::{Server, Stats};
pub use raw::{RawEvent, RawWs};

/// Installs a tracing subscriber once (later calls do nothing). `RUST_LOG` overrides the
/// default filter, which shows errors only: webrtc-rs logs harmless warnings on loopback.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Checks that sequence numbers rise by exactly 1 (mod 2^16) from each packet to the next.
/// Returns a description of every break.
pub fn sequence_breaks(packets: &[ReceivedPacket]) -> Vec<String> {
    packets
        .windows(2)
        .filter(|w| w[1].sequence_number != w[0].sequence_number.wrapping_add(1))
        .map(|w| {
            format!(
                "{} -> {} (ssrc {} -> {})",
                w[0].sequence_number, w[1].sequence_number, w[0].ssrc, w[1].ssrc
            )
        })
        .collect()
}
