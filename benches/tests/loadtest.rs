//! A tiny load-generator run against the debug `chorus` binary: checks that the report adds
//! up, not how fast anything is. Needs `target/debug/chorus` (`cargo build -p chorus`) or
//! `$CHORUS_BIN`.

use std::time::Duration;

use chorus_benches::Options;
use clap::Parser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_scenario_report_is_consistent() {
    let opts = Options::parse_from([
        "chorus-loadtest",
        "--rooms",
        "1",
        "--publishers",
        "1",
        "--subscribers",
        "2",
        "--warmup",
        "1",
        "--duration",
        "2",
        "--drain",
        "0.5",
        "--baseline",
        "--quiet",
    ]);
    let report = tokio::time::timeout(Duration::from_secs(90), chorus_benches::run(&opts))
        .await
        .expect("the load test finished in time")
        .expect("the load test ran");

    // 1 publisher x 2 kinds x 2 receivers
    assert_eq!(report.scenario.subscriptions, 4);
    for run in [&report.chorus, &report.baseline] {
        let run = run.as_ref().expect("both targets ran");
        assert_eq!(run.subscriptions.len(), 4, "{}", run.target);
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
    let chorus = report.chorus.as_ref().expect("chorus ran");
    assert!(
        chorus
            .join_ms
            .is_some_and(|j| j.samples == 3 && j.p50 > 0.0)
    );
    let memory = chorus.memory.as_ref().expect("server memory read");
    assert!(memory.idle_kib >= memory.empty_kib / 2);
    assert!(
        report
            .ratio
            .as_ref()
            .is_some_and(|r| r.pps_per_core.is_some())
    );
    let json = serde_json::to_value(&report).expect("the report serializes");
    assert!(json["chorus"]["latency_ms"]["p99"].is_number());
    assert!(json["chorus"]["wire_latency_ms"]["p99"].is_number());
    assert!(json["ratio"]["wire_latency_p50"].is_number());
}
