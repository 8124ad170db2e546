//! The first datagram from an unknown address on the media port: is it STUN, and which
//! local ufrag does its USERNAME name (`chorus_sfu::stun`)?
#![no_main]

use chorus_sfu::stun::{is_stun, local_ufrag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let stun = is_stun(data);
    if let Some(ufrag) = local_ufrag(data) {
        assert!(stun, "a ufrag from a datagram that is not STUN");
        assert!(!ufrag.contains(':'), "the ufrag is the part before ':'");
        // It is a slice of the datagram's own attribute, after the 20-byte header.
        let start = ufrag.as_ptr() as usize - data.as_ptr() as usize;
        assert!(start >= 24 && start + ufrag.len() <= data.len());
    }
});
