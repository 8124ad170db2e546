//! Test support: a simulated browser on the async webrtc crate.
