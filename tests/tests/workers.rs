//! Several media workers on one port: rooms are spread over the workers, datagrams that the
//! kernel hands to the wrong worker's socket reach their peer's worker, and one worker's
//! rooms come and go without disturbing the other's. A room spread over both workers
//! forwards across them intact, keyframe requests cross back, and one worker's
//! participants leaving does not disturb the other's. Real `chorus`, simulated browsers.
//! Build the server first: `cargo build -p chorus`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use chorus_tests::harness::http_get;
use chorus_tests::media::is_vp8_keyframe;
use chorus_tests::scenario::{
    assert_media_intact, assert_no_failures, publishing_clients, wait_for_full_mesh,
};
use chorus_tests::{Client, Server, init_tracing, wait};
use serde_json::Value;

const WORKERS: &str = "[media]\nworkers = 2\n";

/// Two workers, and every room spread over both from its second participant.
const SPREAD: &str = "[media]\nworkers = 2\nspread_room_after = 1\n";

const T: Duration = Duration::from_secs(15);

/// The server's keyframe request throttle per layer (`KEYFRAME_THROTTLE`).
const PLI_THROTTLE: Duration = Duration::from_millis(500);

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

/// Each of `clients` receives at least 100 packets in the next 2 s (two seconds of another
/// participant's 50 audio and 30 video packets a second), after what `happened`.
async fn still_receiving(clients: &[Client], happened: &str) -> Result<()> {
    let counts = |c: &Client| c.received_all().values().map(Vec::len).sum::<usize>();
    let marks: Vec<usize> = clients.iter().map(counts).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (client, mark) in clients.iter().zip(&marks) {
        let now = counts(client);
        ensure!(
            now >= mark + 100,
            "{} received {} packets in the 2 s after {happened}",
            client.name(),
            now - mark
        );
    }
    Ok(())
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
    still_receiving(&blue, "red ended").await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spread_over_workers_forwards_across_them_intact() -> Result<()> {
    init_tracing();
    let server = Server::start_with_config(SPREAD).await?;
    // The room opens on worker 0 with ada; bob goes to worker 1 (the fewest of the room),
    // cy to worker 0 (a tie, the lower index), dee to worker 1.
    let wide = publishing_clients(&server, "wide", &["ada", "bob", "cy", "dee"]).await?;
    wait_for_full_mesh(&wide).await?;
    let s = stats(&server).await?;
    ensure!(
        per_worker(&s, "rooms")? == vec![1, 0],
        "one room, opened on worker 0: {s}"
    );
    ensure!(per_worker(&s, "participants")? == vec![2, 2], "{s}");
    ensure!(per_worker(&s, "peers")? == vec![4, 4], "{s}");
    ensure!(
        per_worker(&s, "rtp_forwarded")?.iter().all(|n| *n > 0),
        "both workers forward: {s}"
    );
    // Each worker mirrors the other's two publishers' audio and video.
    ensure!(counter(&s, "mirrors")? == 8, "eight mirrors: {s}");
    ensure!(counter(&s, "relayed_packets")? > 0, "{s}");
    ensure!(counter(&s, "relay_drops")? == 0, "nothing dropped: {s}");
    // Every packet byte-identical, in order, from one SSRC, on whichever worker it was
    // published.
    media_intact(&wide)?;

    // A keyframe request from bob (worker 1) for ada's video (worker 0) reaches ada.
    let (ada, bob) = (&wide[0], &wide[1]);
    let video = ada.published().context("ada's tracks")?.video;
    let (_, video_ssrc) = ada.published_ssrcs().context("ssrcs")?;
    wait::poll_until(T, "keyframe requests to go quiet", || {
        let last = ada.keyframe_requests().last().map(|r| r.at);
        last.is_none_or(|at| at.elapsed() >= PLI_THROTTLE * 2)
            .then_some(())
    })
    .await?;
    let before = ada.keyframe_requests().len();
    let asked = Instant::now();
    bob.send_pli(ada.id()?, video).await?;
    wait::poll_until(T, "bob's PLI at ada, across workers", || {
        (ada.keyframe_requests().len() > before).then_some(())
    })
    .await?;
    let request = ada.keyframe_requests()[before];
    ensure!(
        request.media_ssrc == video_ssrc,
        "keyframe request for SSRC {} instead of ada's video SSRC {video_ssrc}",
        request.media_ssrc
    );
    wait::poll_until(T, "ada's keyframe at bob", || {
        bob.received(ada.id().ok()?, video)
            .iter()
            .any(|p| p.at > asked && is_vp8_keyframe(&p.payload))
            .then_some(())
    })
    .await?;
    media_intact(&wide)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_workers_share_of_a_spread_room_leaving_does_not_disturb_the_other() -> Result<()> {
    init_tracing();
    let server = Server::start_with_config(SPREAD).await?;
    let mut wide = publishing_clients(&server, "wide", &["ada", "bob", "cy", "dee"]).await?;
    wait_for_full_mesh(&wide).await?;
    let s = stats(&server).await?;
    ensure!(per_worker(&s, "peers")? == vec![4, 4], "{s}");

    // Worker 0's participants (ada and cy) vanish without leaving.
    let stayed: Vec<Client> = vec![wide.remove(3), wide.remove(1)];
    drop(wide);
    server
        .wait_for_stats(Duration::from_secs(30), "worker 0's peers gone", |s| {
            s.peers == 4
        })
        .await?;
    still_receiving(&stayed, "worker 0's participants left").await?;
    let s = stats(&server).await?;
    ensure!(per_worker(&s, "peers")? == vec![0, 4], "{s}");
    // bob and dee live on one worker now: nothing crosses.
    ensure!(counter(&s, "mirrors")? == 0, "every mirror closed: {s}");
    ensure!(counter(&s, "relay_drops")? == 0, "{s}");
    media_intact(&stayed)
}
