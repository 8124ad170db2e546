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
