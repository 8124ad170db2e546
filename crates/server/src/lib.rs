//! The parts of the `chorus` binary that tests (and the fuzz targets) use too: the
//! configuration file, TURN credentials, a small STUN/TURN client (for STUN discovery and
//! `chorus doctor`), and the webhook sender.

pub mod config;
pub mod stun_client;
pub mod turn;
pub mod webhook;
