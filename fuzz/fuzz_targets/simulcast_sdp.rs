//! The simulcast reading of a publisher's offer (`offered_rids`, `offered_layers`), which
//! runs on the client's SDP before webrtc-rs sees it. Accepted layers must be at most three,
//! distinct and known; every mid and rid read must come from the SDP.
#![no_main]

use chorus_sfu::layer::{MAX_LAYER, RIDS, offered_layers, offered_rids};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let rids = offered_rids(sdp);
    for (mid, list) in &rids {
        assert!(sdp.contains(mid.as_str()));
        assert!(!list.is_empty(), "an m-line without rids is left out");
        assert!(
            list.iter()
                .all(|rid| !rid.is_empty() && sdp.contains(rid.as_str()))
        );
    }
    match offered_layers(sdp) {
        Ok(layers) => {
            assert_eq!(layers.len(), rids.len());
            for ((mid, layers), (rid_mid, list)) in layers.iter().zip(&rids) {
                assert_eq!(mid, rid_mid);
                assert_eq!(layers.len(), list.len());
                for (i, layer) in layers.iter().enumerate() {
                    assert!(*layer <= MAX_LAYER);
                    assert_eq!(RIDS[usize::from(*layer)], list[i]);
                    assert!(!layers[..i].contains(layer), "a layer twice");
                }
            }
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
