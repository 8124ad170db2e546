//! The parts of the `chorus` binary that tests use too: TURN credentials, a small
//! STUN/TURN client (for STUN discovery and `chorus doctor`), and the webhook sender.

pub mod stun_client;
pub mod turn;
pub mod webhook;
