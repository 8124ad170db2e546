//! The parts of the `chorus` binary that tests use too: TURN credentials and a small
//! STUN/TURN client (for STUN discovery and `chorus doctor`).

pub mod stun_client;
pub mod turn;
