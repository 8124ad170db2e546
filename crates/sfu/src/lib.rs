//! The Chorus SFU.
