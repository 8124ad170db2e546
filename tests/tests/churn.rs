//! Churn: participants with real media peers (simulated browsers) join and leave in waves,
//! a third of them abruptly. Afterwards the server must be back where it began: no peers,
//! tracks or subscriptions in `/api/stats`, and its RSS, open file descriptors and tokio
//! tasks back near their level after a warm-up wave.
//!
//! `CHORUS_CHURN` sets how many participants (default 100, the CI form; the long run in
//! docs/reliability.md used 1000). Build the server first: `cargo build -p chorus`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chorus_tests::{Client, MediaRate, Server, Stats, init_tracing, wait};

/// Participants per wave; they share one room.
const WAVE: usize = 10;

const T: Duration = Duration::from_secs(20);

/// What the server holds, as `/proc` and `/api/stats` tell.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    rss_kib: u64,
    fds: usize,
    tasks: u64,
}

async fn footprint(server: &Server) -> Result<Footprint> {
    let pid = server.pid().context("server pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(Footprint {
        rss_kib,
        fds,
        tasks: server.stats().await?.tasks,
    })
}

/// Waits until the server holds no participant, peer, track or subscription.
async fn wait_empty(server: &Server) -> Result<Stats> {
    wait::poll_until_async(T, "an empty server", || async {
        let stats = server.stats().await.ok()?;
        (stats.participants == 0
            && stats.peers == 0
            && stats.tracks == 0
            && stats.subscriptions == 0)
            .then_some(stats)
    })
    .await
}

/// One wave: `WAVE` participants join one room, half of them publish, everyone gets
/// media, then all go: a third abruptly, a third with `leave`, a third by closing.
async fn wave(server: &Server, n: usize) -> Result<()> {
    let room = format!("churn-{}", n % 3);
    let mut clients = Vec::with_capacity(WAVE);
    for i in 0..WAVE {
        let client =
            Client::connect_and_join(server.http_addr(), &room, &format!("p{n}-{i}")).await?;
        if i % 2 == 0 {
            client.publish_and_stream(MediaRate::default()).await?;
        }
        clients.push(client);
    }
    let publisher = &clients[0];
    let tracks = publisher.published().context("published")?;
    clients[WAVE - 1]
        .wait_for_packets(publisher.id()?, tracks.audio, 10, T)
        .await?;
    for (i, client) in clients.iter().enumerate() {
        match i % 3 {
            0 => client.disconnect_abruptly().await,
            1 => {
                client.leave().await?;
                client.close().await;
            }
            _ => client.close().await,
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_churn_of_participants_leaves_nothing_behind() -> Result<()> {
    init_tracing();
    let total: usize = std::env::var("CHORUS_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let server = Server::start_with_config(
        "[limits]\nmax_connections_per_ip = 10000\nmax_joins_per_ip_per_minute = 100000\n",
    )
    .await?;
    // warm-up: the first wave grows the pools and caches that stay
    wave(&server, 0).await?;
    wait_empty(&server).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = footprint(&server).await?;
    let waves = total.div_ceil(WAVE).max(2);
    for n in 1..waves {
        wave(&server, n).await?;
    }
    let stats = wait_empty(&server).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = footprint(&server).await?;
    println!(
        "churn of {} participants: RSS {} -> {} KiB, fds {} -> {}, tasks {} -> {}, rooms {}",
        waves * WAVE,
        base.rss_kib,
        after.rss_kib,
        base.fds,
        after.fds,
        base.tasks,
        after.tasks,
        stats.rooms
    );
    ensure!(stats.rooms == 0, "rooms left: {}", stats.rooms);
    ensure!(
        after.rss_kib * 10 <= base.rss_kib * 11,
        "RSS grew more than 10 %: {} -> {} KiB",
        base.rss_kib,
        after.rss_kib
    );
    ensure!(
        after.fds <= base.fds,
        "file descriptors: {} -> {}",
        base.fds,
        after.fds
    );
    ensure!(
        after.tasks <= base.tasks,
        "tasks: {} -> {}",
        base.tasks,
        after.tasks
    );
    Ok(())
}
