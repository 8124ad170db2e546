//! Several media workers on one port: rooms are spread over the workers, datagrams that the
//! kernel hands to the wrong worker's socket reach their peer's worker, and one worker's
//! rooms come and go without disturbing the other's. Real `chorus`, simulated browsers.
//! Build the server first: `cargo build -p chorus`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chorus_tests::harness::http_get;
use chorus_tests::scenario::{
    assert_media_intact, assert_no_failures, publishing_clients, wait_for_full_mesh,
};
use chorus_tests::{Client, Server, init_tracing};
use serde_json::Value;

const WORKERS: &str = "[media]\nworkers = 2\n";

/// `/api/stats` as JSON (the per-worker part is not in [`chorus_tests::Stats`]).
async fn stats(server: &Server) -> Result<Value> {
    let (status, body) = http_get(server.http_addr(), "/api/stats").await?;
    ensure!(status == 200, "GET /api/stats: {status} {body}");
    Ok(serde_json::from_str(&body)?)
}

fn counter(stats: &Value, key: &str) -> Result<u64> {
    stats[key]
        .as_u64()
        .with_context(|| format!("no {key} in {stats}"))
}

/// Each worker's value of `key`.
fn per_worker(stats: &Value, key: &str) -> Result<Vec<u64>> {
    stats["workers"]
        .as_array()
        .with_context(|| format!("no workers in {stats}"))?
        .iter()
        .map(|w| w[key].as_u64().with_context(|| format!("no {key} in {w}")))
        .collect()
}

fn media_intact(clients: &[Client]) -> Result<()> {
    for receiver in clients {
        for sender in clients {
            if receiver.id()? != sender.id()? {
                assert_media_intact(receiver, sender)?;
            }
        }
    }
    assert_no_failures(&clients.iter().collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_spread_over_workers_and_handed_over_datagrams_arrive_intact() -> Result<()> {
    init_tracing();
    let server = Server::start_with_config(WORKERS).await?;
    // Three participants with two peers each per room: twelve peers, each reaching one of
    // two sockets by the kernel's hash, so some land on the worker that does not own them
    // (all of them in their room's worker would be one chance in 4096).
    let red = publishing_clients(&server, "red", &["ada", "bob", "cy"]).await?;
    let blue = publishing_clients(&server, "blue", &["dee", "eve", "fay"]).await?;
    wait_for_full_mesh(&red).await?;
    wait_for_full_mesh(&blue).await?;

    let s = stats(&server).await?;
    ensure!(
        per_worker(&s, "rooms")? == vec![1, 1],
        "one room on each worker: {s}"
    );
    ensure!(
        per_worker(&s, "peers")? == vec![6, 6],
        "each worker holds its room's six peers: {s}"
    );
    ensure!(
        per_worker(&s, "rtp_forwarded")?.iter().all(|n| *n > 0),
        "both workers forward: {s}"
    );
    ensure!(
        counter(&s, "handoff_datagrams")? > 0,
        "some datagrams reached the other worker's socket and were handed over: {s}"
    );
    ensure!(counter(&s, "handoff_drops")? == 0, "nothing dropped: {s}");
    // Every packet byte-identical, in order, from one SSRC, whichever socket it came in on.
    media_intact(&red)?;
    media_intact(&blue)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_workers_room_ending_does_not_disturb_the_other() -> Result<()> {
    init_tracing();
    let server = Server::start_with_config(WORKERS).await?;
    let red = publishing_clients(&server, "red", &["ada", "bob"]).await?;
    let blue = publishing_clients(&server, "blue", &["cy", "dee"]).await?;
    wait_for_full_mesh(&red).await?;
    wait_for_full_mesh(&blue).await?;
    let before = stats(&server).await?;
    ensure!(per_worker(&before, "rooms")? == vec![1, 1], "{before}");

    // Red ends abruptly: its clients vanish without leaving.
    drop(red);
    server
        .wait_for_stats(Duration::from_secs(30), "red's peers gone", |s| {
            s.rooms == 1 && s.peers == 4
        })
        .await?;
    let blue_ids: Vec<_> = blue.iter().map(Client::id).collect::<Result<_>>()?;
    let counts = |c: &Client| c.received_all().values().map(Vec::len).sum::<usize>();
    let marks: Vec<usize> = blue.iter().map(counts).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (client, mark) in blue.iter().zip(&marks) {
        let now = counts(client);
        // Two seconds of another participant's 50 audio and 30 video packets a second.
        ensure!(
            now >= mark + 100,
            "{} received {} packets in the 2 s after red ended",
            client.name(),
            now - mark
        );
    }
    let after = stats(&server).await?;
    ensure!(
        per_worker(&after, "rooms")?.iter().sum::<u64>() == 1,
        "{after}"
    );
    ensure!(blue_ids.len() == 2);
    media_intact(&blue)?;

    // A new room goes to the idle worker.
    let green = publishing_clients(&server, "green", &["eve", "fay"]).await?;
    wait_for_full_mesh(&green).await?;
    let s = stats(&server).await?;
    ensure!(per_worker(&s, "rooms")? == vec![1, 1], "{s}");
    media_intact(&green)?;
    media_intact(&blue)?;
    Ok(())
}
