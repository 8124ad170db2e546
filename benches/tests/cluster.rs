//! `--cluster`: a tiny load-generator run against two debug `chorus` nodes and a
//! `redis-server`, in its own test binary so that it does not share the machine with the
//! other load tests' timing-sensitive figures. Needs `target/debug/chorus` (`cargo build -p
//! chorus`) or `$CHORUS_BIN`, and `redis-server`.

use std::time::Duration;

use chorus_benches::Options;

mod common;
use clap::Parser;

/// `--cluster 2 --max-per-node 2`: a room of a publisher and three subscribers spans two
/// nodes (started here with a `redis-server`); the report adds up over both, and the node
/// link carried each of the publisher's packets once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spanning_two_nodes_reports_its_link() {
    let opts = Options::parse_from([
        "chorus-loadtest",
        "--cluster",
        "2",
        "--max-per-node",
        "2",
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
        .expect("the load test ran (it needs redis-server: apt-get install redis-server)");
    let chorus = report.chorus.as_ref().expect("chorus ran");
    // 1 publisher x 2 kinds x 3 receivers
    common::check_run(chorus, 6);
    let crossed = chorus.forwarder_counters["node_link_packets"]
        .as_u64()
        .expect("a count");
    let sent = chorus.sent_packets;
    // once each (the window's edges, read at slightly different instants, cut a few either
    // way), not once per subscriber on the far node
    let slack = sent / 20 + 10;
    assert!(
        crossed + slack >= sent && crossed <= sent + slack,
        "{crossed} packets crossed the link for {sent} sent"
    );
}
