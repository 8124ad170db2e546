//! Real server `Peer`s connected in memory: what one worker pass sends.

use std::time::Instant;

use chorus_benches::inmem::Rig;

/// A pass collects exactly the copies it forwarded (each subscriber's peer connection is
/// asked only as many times as it was given copies), and leaves none behind.
#[test]
fn a_pass_sends_every_copy_and_leaves_none_behind() {
    let mut rig = Rig::new(3).expect("in-memory peers connect");
    let mut datagrams = rig.datagrams(9, 1100).expect("publisher datagrams");
    let (first, rest) = datagrams.split_at_mut(4);
    assert_eq!(rig.forward_batch(first, Instant::now()), 4 * 3);
    assert_eq!(
        rig.drain_subscribers(Instant::now()),
        0,
        "copies left behind"
    );
    assert_eq!(rig.forward_batch(&mut [], Instant::now()), 0);
    assert_eq!(rig.forward_batch(rest, Instant::now()), 5 * 3);
    assert_eq!(
        rig.drain_subscribers(Instant::now()),
        0,
        "copies left behind"
    );
}
