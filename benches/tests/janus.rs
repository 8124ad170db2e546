//! The Janus driver (`--target janus`) runs a tiny scenario against Debian's Janus 1.1.2,
//! started from the config in benches/janus/, and its report passes the same consistency
//! checks as the Chorus scenario (tests/loadtest.rs).
//!
//! Needs `janus` (apt-get install janus; tests/run-all.sh installs it) and a network
//! namespace with only loopback, run as root (the load generator adds a veth interface
//! there, because Janus gathers no candidates on loopback): the suite runs inside
//! `unshare --net`. Where either is missing the test prints a loud SKIPPED banner and
//! passes, unless CHORUS_JANUS_REQUIRED=1 (run-all.sh sets it), when it fails instead.

use std::io::Write as _;
use std::time::Duration;

use chorus_benches::Options;
use clap::Parser;

mod common;

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite(opts: &Options) -> Option<String> {
    if chorus_benches::janus::janus_bin(opts).is_none() {
        return Some("no `janus` binary (apt-get install janus, or set JANUS_BIN)".to_owned());
    }
    let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
    let others: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .filter(|name| *name != "lo" && !name.starts_with("chorus-janus"))
        .collect();
    if !others.is_empty() {
        return Some(format!(
            "not in a network namespace of its own (interfaces {others:?}); run it as \
             unshare --net sh -c 'ip link set lo up && cargo test -p chorus-benches --test janus'"
        ));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janus_tiny_scenario_report_is_consistent() {
    // A free port for Janus's HTTP API.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}/janus");
    let opts = Options::parse_from([
        "chorus-loadtest",
        "--target",
        "janus",
        "--janus-url",
        &url,
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
        "--quiet",
    ]);
    if let Some(why) = missing_prerequisite(&opts) {
        // Straight to stderr, past the test harness's capture, so that the skip shows.
        let banner = "#".repeat(78);
        let _ = writeln!(
            std::io::stderr(),
            "\n{banner}\n# SKIPPED janus_tiny_scenario_report_is_consistent: {why}\n{banner}\n"
        );
        assert!(
            std::env::var("CHORUS_JANUS_REQUIRED").as_deref() != Ok("1"),
            "CHORUS_JANUS_REQUIRED=1 and the Janus test cannot run: {why}"
        );
        return;
    }
    let report = tokio::time::timeout(Duration::from_secs(120), chorus_benches::run(&opts))
        .await
        .expect("the load test finished in time")
        .expect("the load test ran");

    assert!(report.chorus.is_none() && report.baseline.is_none());
    // 1 publisher x 2 kinds x 2 receivers
    assert_eq!(report.scenario.subscriptions, 4);
    let janus = report.janus.as_ref().expect("janus ran");
    assert_eq!(janus.target, "janus");
    common::check_run(janus, 4);
    assert!(janus.join_ms.is_some_and(|j| j.samples == 3 && j.p50 > 0.0));
    let memory = janus.memory.as_ref().expect("Janus's memory read");
    assert!(memory.empty_kib > 0 && memory.idle_kib >= memory.empty_kib / 2);
    let json = serde_json::to_value(&report).expect("the report serializes");
    assert!(json["janus"]["wire_latency_ms"]["p99"].is_number());
    assert!(report.table().contains("janus"));
}
