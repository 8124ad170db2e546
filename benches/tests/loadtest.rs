//! A tiny load-generator run against the debug `chorus` binary: checks that the report adds
//! up, not how fast anything is. Needs `target/debug/chorus` (`cargo build -p chorus`) or
//! `$CHORUS_BIN`.

use std::time::Duration;

use chorus_benches::Options;

mod common;
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
        common::check_run(run.as_ref().expect("both targets ran"), 4);
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

/// `--light`: the subscribers' sockets are taken over after DTLS and only their SRTP headers
/// are read; the accounting from the headers must still add up per subscription, every
/// subscription must flow, and the decrypted samples must give latency figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_receivers_account_from_headers() {
    let opts = Options::parse_from([
        "chorus-loadtest",
        "--light",
        "--light-sample",
        "8",
        "--subscribers",
        "3",
        "--warmup",
        "1",
        "--duration",
        "2",
        "--drain",
        "0.5",
        "--quiet",
    ]);
    let report = tokio::time::timeout(Duration::from_secs(90), chorus_benches::run(&opts))
        .await
        .expect("the load test finished in time")
        .expect("the load test ran");
    let run = report.chorus.as_ref().expect("chorus ran");
    assert_eq!(run.subscriptions.len(), 6);
    for s in &run.subscriptions {
        assert!(s.sent > 0, "{s:?} sent nothing");
        assert_eq!(s.sent, s.received + s.lost, "{s:?}");
        assert!(s.received * 2 > s.sent, "{s:?} lost most of its packets");
    }
    assert_eq!(
        run.expected_packets,
        run.received_packets + run.lost_packets
    );
    let light = run.light.as_ref().expect("the light figures");
    assert_eq!(light.receivers, 3);
    // Every packet the receivers counted went through the light thread (its count is of
    // arrivals inside the window, the accounting's of packets sent inside it: in-flight
    // packets at the edges make the difference).
    assert!(
        light.packets + light.packets / 10 >= run.received_packets,
        "{light:?} against {} received",
        run.received_packets
    );
    assert!(
        light.samples > 0 && light.samples * 4 < light.packets,
        "{light:?}"
    );
    assert_eq!(light.outside, 0);
    // Every subscription's packets were tied to its publisher by a sample of its own.
    assert_eq!(light.unaccounted.total(), 0, "{:?}", light.unaccounted);
    assert!(light.us_per_packet.is_some_and(|us| us > 0.0));
    assert!(run.wire_latency_ms.samples > 0 && run.wire_latency_ms.p50 > 0.0);
    assert!(run.latency_ms.p50 >= run.wire_latency_ms.p50);
    assert!(run.forwarded_mbps > 0.0);
}
