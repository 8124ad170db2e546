//! The report consistency checks every load-test scenario passes, whatever the target.

use chorus_benches::RunReport;

/// Checks that one target's report adds up: every subscription really flows and its
/// accounting closes, latencies are present and ordered, the server latency at the sockets
/// covers (almost) every packet, and the CPU and other-load figures are there. Says
/// nothing about speed.
pub fn check_run(run: &RunReport, subscriptions: usize) {
    assert_eq!(run.subscriptions.len(), subscriptions, "{}", run.target);
    for s in &run.subscriptions {
        assert!(s.sent > 0, "{}: {s:?} sent nothing", run.target);
        assert_eq!(s.sent, s.received + s.lost, "{}: {s:?}", run.target);
        // Every subscription, video included, really flows: most of what was sent
        // arrives (a server that forwarded no video once passed this test).
        assert!(
            s.received * 2 > s.sent,
            "{}: {s:?} lost most of its packets",
            run.target
        );
    }
    let sum: u64 = run.subscriptions.iter().map(|s| s.sent).sum();
    assert_eq!(sum, run.expected_packets);
    assert_eq!(
        run.expected_packets,
        run.received_packets + run.lost_packets
    );
    assert!(run.received_packets > 0, "{}: nothing arrived", run.target);
    assert!(run.latency_ms.p50 > 0.0, "{}: latency", run.target);
    assert!(run.latency_ms.p50 <= run.latency_ms.p99);
    // The server latency at the sockets: present for (almost) every packet, and inside
    // the end-to-end span, which adds both client stacks to it.
    let wire = &run.wire_latency_ms;
    assert!(
        wire.samples > 0 && wire.p50 > 0.0,
        "{}: {wire:?}",
        run.target
    );
    assert!(wire.p50 <= wire.p99);
    assert!(
        wire.p50 <= run.latency_ms.p50,
        "{}: wire {wire:?} > app {:?}",
        run.target,
        run.latency_ms
    );
    let unmatched = run.wire_unmatched.total();
    assert!(
        unmatched * 100 < run.received_packets,
        "{}: {:?} of {} received have no wire latency",
        run.target,
        run.wire_unmatched,
        run.received_packets
    );
    assert_eq!(wire.samples + unmatched, run.received_packets);
    assert!(run.cpu_s.is_some(), "{}: no CPU figure", run.target);
    assert!(run.cpu_us_per_packet.is_some_and(|us| us > 0.0));
    assert!(run.pps_per_core.is_some());
    assert!(
        run.other_load_pct.is_some_and(|p| p >= 0.0),
        "{}: no figure for the machine's other load",
        run.target
    );
}
