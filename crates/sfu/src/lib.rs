//! The Chorus SFU: rooms, participants, tracks and subscriptions (control plane), and a
//! media worker that owns the UDP socket and every webrtc-rs peer connection (media plane).
//!
//! - [`room`]: the room's decisions as a sans-IO state machine.
//! - [`worker`]: the media workers: demultiplexing, forwarding, keyframe requests.
//! - [`handoff`]: datagrams that one worker's socket received for another's peer, and
//!   media for another's mirrors of a track.
//! - [`placement`]: which worker a new room, and each participant, lives on (sans-IO).
//! - [`peer`]: the only module that names webrtc-rs types.
//! - [`hub`]: the registry of rooms that signaling sessions talk to.
//! - [`layer`]: simulcast layer switching of one subscription (sans-IO).
//! - [`allocate`]: which layer each of a subscriber's subscriptions gets (sans-IO).
//! - [`source`]: a published track's layers: rates, sizes, keyframe requests (sans-IO).
//! - [`estimate`]: a subscriber's downlink estimate from its TWCC feedback (sans-IO).
//! - [`probe`]: padding probes that show a paused video fits before it comes back (sans-IO).
//! - [`events`]: what happens in rooms, for the webhooks.
//! - [`red`]: RFC 2198 redundant audio: the primary block and the others (sans-IO).
//! - [`audio_level`], [`speaker`]: audio levels per track, and the room's speaker
//!   election (sans-IO).
//! - [`opus`]: the Opus options of the publisher leg's answer.
//! - [`record`]: recording tracks to files (Ogg Opus, IVF, Annex-B) with a sidecar.

pub mod allocate;
pub mod audio_level;
pub mod batch;
pub mod estimate;
pub mod events;
pub mod handoff;
pub mod history;
pub mod hub;
pub mod idhash;
pub mod latency;
pub mod layer;
pub mod net;
pub mod opus;
pub mod peer;
pub mod placement;
pub mod probe;
pub mod record;
pub mod red;
pub mod rewrite;
pub mod room;
mod room_task;
mod room_workers;
pub mod source;
pub mod span;
pub mod speaker;
pub mod stun;
pub mod tcp;
pub mod token;
pub mod viewer;
pub mod vp8;
pub mod worker;

pub use hub::{Admission, Hub, HubConfig, HubStats, JoinError, Membership, RecordingSettings};
pub use peer::{AudioOptions, PeerSettings};
pub use speaker::SpeakerSettings;

use chorus_protocol::ErrorCode;

/// Why a media operation failed. Each ends at most one participant's request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// An SDP that does not parse or cannot be applied.
    #[error("invalid SDP: {0}")]
    InvalidSdp(String),
    /// A trickled candidate the peer refused.
    #[error("invalid ICE candidate: {0}")]
    InvalidCandidate(String),
    /// An answer or candidate for a peer that has no offer yet.
    #[error("no negotiation is under way for that peer")]
    NoOffer,
    /// The participant is not known to the media worker.
    #[error("unknown participant")]
    UnknownParticipant,
    /// The track is not known.
    #[error("unknown track")]
    UnknownTrack,
    /// A simulcast offer Chorus does not forward.
    #[error("invalid simulcast: {0}")]
    InvalidSimulcast(#[from] crate::layer::SimulcastError),
    /// The media worker has stopped (server shutting down).
    #[error("the media worker has stopped")]
    WorkerGone,
    /// webrtc-rs failed in a way the client cannot fix.
    #[error("media error: {0}")]
    Internal(String),
    /// A media error on another node of the cluster (a room spanning nodes), as that node
    /// reported it.
    #[error("{1}")]
    Remote(ErrorCode, String),
}

impl MediaError {
    /// The wire code a client sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            MediaError::InvalidSdp(_) => ErrorCode::InvalidSdp,
            MediaError::InvalidCandidate(_) => ErrorCode::InvalidCandidate,
            MediaError::NoOffer => ErrorCode::OutOfOrder,
            MediaError::UnknownTrack => ErrorCode::UnknownTrack,
            MediaError::InvalidSimulcast(_) => ErrorCode::InvalidSimulcast,
            MediaError::UnknownParticipant | MediaError::WorkerGone | MediaError::Internal(_) => {
                ErrorCode::Internal
            }
            MediaError::Remote(code, _) => *code,
        }
    }
}
