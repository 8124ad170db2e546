//! A UDP flood at the media port during a call: random bytes, STUN checks for unknown
//! ufrags, DTLS hellos and RTP-looking datagrams from addresses no peer owns. The call
//! must not notice: under 1 % audio loss and no disconnect. Prints what the flood cost in
//! server CPU.
//!
//! `CHORUS_FLOOD_PPS` (default 20 000, the CI form on a debug build; the figure
//! is 100 000 on a release server), `CHORUS_FLOOD_SECS` (default 5) and
//! `CHORUS_FLOOD_THREADS` (default 1; one thread reaches about 75 000/s here, each sends
//! its share from a socket of its own) set the flood.
//! Build the server first: `cargo build -p chorus`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use chorus_protocol::MediaKind;
use chorus_tests::{Client, MediaRate, Server, init_tracing};

const T: Duration = Duration::from_secs(15);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds of CPU the process has used (user + system), from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // USER_HZ is 100 on Linux.
    Ok(ticks / 100.0)
}

/// One garbage datagram of kind `n % 4` into `buf`; returns its length.
fn garbage(n: u64, buf: &mut [u8; 200]) -> usize {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    };
    for b in buf.iter_mut() {
        *b = next();
    }
    match n % 4 {
        // a STUN binding request naming a ufrag nobody has
        0 => {
            buf[..8].copy_from_slice(&[0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42]);
            buf[20..24].copy_from_slice(&[0x00, 0x06, 0x00, 0x08]);
            32
        }
        // a DTLS 1.2 handshake record (a ClientHello from a stranger)
        1 => {
            buf[..3].copy_from_slice(&[0x16, 0xfe, 0xfd]);
            120
        }
        // something shaped like RTP
        2 => {
            buf[0] = 0x80;
            160
        }
        // anything
        _ => 1 + usize::from(next()) % 199,
    }
}

/// Sends garbage at `pps` to `to` until `stop`; counts what it sent.
fn flood(to: SocketAddr, pps: u64, stop: &AtomicBool, sent: &AtomicU64) -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let mut buf = [0u8; 200];
    let started = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Keep to the rate: send what is due, then sleep a little.
        let due = (started.elapsed().as_secs_f64() * pps as f64) as u64;
        while n < due {
            let len = garbage(n, &mut buf);
            let _ = socket.send_to(&buf[..len], to);
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    sent.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_at_the_media_port_does_not_disturb_a_call() -> Result<()> {
    init_tracing();
    let pps = env_or("CHORUS_FLOOD_PPS", 20_000);
    let secs = env_or("CHORUS_FLOOD_SECS", 5);
    let threads = env_or("CHORUS_FLOOD_THREADS", 1).max(1);
    let server = Server::start().await?;
    let pid = server.pid().context("pid")?;
    let ada = Client::connect_and_join(server.http_addr(), "standup", "ada").await?;
    let tracks = ada.publish_and_stream(MediaRate::default()).await?;
    let bob = Client::connect_and_join(server.http_addr(), "standup", "bob").await?;
    bob.wait_for_packets(ada.id()?, tracks.audio, 20, T).await?;

    let audio_sent = |client: &Client| {
        client
            .sent()
            .iter()
            .filter(|p| p.kind == MediaKind::Audio)
            .count()
    };
    let (sent_before, got_before) = (
        audio_sent(&ada),
        bob.received_count(ada.id()?, tracks.audio),
    );
    let peers_before = server.stats().await?.peers;
    let cpu_before = cpu_seconds(pid)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flooded = Arc::new(AtomicU64::new(0));
    let target = server.udp_addr();
    let flooders: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, flooded) = (stop.clone(), flooded.clone());
            std::thread::spawn(move || flood(target, pps / threads, &stop, &flooded))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder
            .join()
            .map_err(|_| anyhow::anyhow!("flooder panicked"))??;
    }
    let cpu = cpu_seconds(pid)? - cpu_before;
    let sent = audio_sent(&ada) - sent_before;
    // what was in flight when the flood ended arrives in the next moments
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = bob.received_count(ada.id()?, tracks.audio) - got_before;
    let loss = 1.0 - (got.min(sent) as f64 / sent.max(1) as f64);
    let stats = server.stats().await?;
    println!(
        "flood of {} datagrams in {secs} s ({pps}/s asked, {threads} thread(s)): server CPU {:.2} s ({:.0} % of a core), \
         call audio {got}/{sent} ({:.2} % lost), unrouted {}",
        flooded.load(Ordering::Relaxed),
        cpu,
        100.0 * cpu / secs as f64,
        100.0 * loss,
        stats_unrouted(&server).await.unwrap_or(0),
    );
    ensure!(
        loss < 0.01,
        "the call lost {:.2} % of its audio",
        100.0 * loss
    );
    ensure!(
        stats.peers == peers_before,
        "peers went away: {peers_before} -> {}",
        stats.peers
    );
    ensure!(
        ada.is_connected() && bob.is_connected(),
        "a client disconnected"
    );
    Ok(())
}

/// The server's count of datagrams no peer owned.
async fn stats_unrouted(server: &Server) -> Result<u64> {
    let (_, body) = chorus_tests::harness::http_get(server.http_addr(), "/api/stats").await?;
    let json: serde_json::Value = serde_json::from_str(&body)?;
    json["unrouted"].as_u64().context("unrouted")
}
