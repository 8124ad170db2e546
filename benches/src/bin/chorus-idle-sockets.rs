//! What an idle signaling WebSocket costs the server: starts a `chorus`, opens N
//! WebSockets that each ask for the room list once (a lobby page) and then stay silent,
//! and reports the server's RSS before and after, per socket.
//!
//! `chorus-idle-sockets [--sockets 1000] [--bin target/release/chorus]`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chorus_benches::procfs;
use chorus_tests::{RawWs, Server};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Measures the server memory each idle lobby WebSocket costs")]
struct Args {
    /// How many WebSockets to open.
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// The server binary.
    #[arg(long, default_value = "target/release/chorus")]
    bin: PathBuf,
    /// Rounds of open, measure, close. The first round is the figure: later ones reuse
    /// the memory the allocator kept from the first, and show whether it leaks.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// Quiet time before each RSS reading, so that the server has settled.
const SETTLE: Duration = Duration::from_secs(2);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Every socket comes from loopback: the per-address cap must let them all in.
    let config = format!("[limits]\nmax_connections_per_ip = {}\n", args.sockets + 10);
    let server = Server::start_bin(&args.bin, &config).await?;
    let pid = server.pid().context("server pid")?;
    let mut per_socket = Vec::new();
    for round in 1..=args.rounds {
        tokio::time::sleep(SETTLE).await;
        let before = procfs::rss_kib(pid)?;
        let mut sockets = Vec::with_capacity(args.sockets);
        for _ in 0..args.sockets {
            let mut ws = RawWs::connect(server.http_addr()).await?;
            ws.send_text(r#"{"type":"listRooms"}"#).await?;
            sockets.push(ws);
        }
        for ws in &mut sockets {
            ws.next_event(Duration::from_secs(10)).await?;
        }
        tokio::time::sleep(SETTLE).await;
        let after = procfs::rss_kib(pid)?;
        let kib = after.saturating_sub(before) as f64 / args.sockets as f64;
        println!(
            "round {round}: {} idle WebSockets: RSS {before} KiB -> {after} KiB, {kib:.1} KiB per socket",
            args.sockets
        );
        per_socket.push(kib);
        drop(sockets);
        tokio::time::sleep(SETTLE).await;
    }
    ensure!(!per_socket.is_empty(), "no rounds");
    println!(
        "first round: {:.1} KiB of server RSS per idle WebSocket ({} sockets)",
        per_socket[0], args.sockets
    );
    Ok(())
}
