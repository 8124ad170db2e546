//! Chorus signaling.
