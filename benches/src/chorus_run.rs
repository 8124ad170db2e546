//! Loading a real Chorus server with simulated browsers (`chorus_tests::Client`, the async
//! `webrtc` crate): join, publish, receive, measure.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use chorus_protocol::{MediaKind, ServerMessage, TrackId};
use chorus_tests::{Client, ClientOptions, PublishOptions, Server};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use webrtc::peer_connection::RTCPeerConnectionState::Connected;

use crate::light::{LightHub, LightReceiver, LightReport, Sample};
use crate::load::{
    MEASURED, Progress, ReceivedCounter, STOP, Sink, Snapshot, Video, apply_window, spawn_publisher,
};
use crate::options::{Options, Roster};
use crate::procfs;
use crate::report::{Collected, Memory, RunReport};
use crate::stats::{Arrival, LAYERS, Percentiles, ReceiverStats, SendTally};
use crate::wire::{WireLinks, WireLog, wire_runtime};

/// The servers a run started, held until it ends (dropping them stops them).
#[allow(dead_code)]
enum Servers {
    None,
    One(Box<Server>),
    Cluster(crate::cluster::Cluster),
}

/// How long joining and negotiating everyone may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Quiet time after everyone is connected, before reading idle memory.
const SETTLE: Duration = Duration::from_secs(1);
/// `--simulcast`: how much longer than the warm-up to wait for every subscription to reach
/// its tile's layer. The allocator climbs one layer per second once the estimate allows, so
/// the top layer takes a few seconds; much longer means the estimate holds it down.
const LAYERS_SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
/// `--simulcast`: time after the last `streamState` for the switch's keyframe to arrive.
const LAYERS_SETTLED: Duration = Duration::from_millis(500);

/// Where the `chorus` binary is when `--server` is not given.
pub fn default_server_bin() -> Result<PathBuf> {
    if let Ok(bin) = chorus_tests::harness::chorus_bin()
        && bin.exists()
    {
        return Ok(bin);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let bin = root.join("target").join(profile).join("chorus");
        if bin.exists() {
            return Ok(bin);
        }
    }
    bail!(
        "no chorus binary found (build it with `cargo build --release -p chorus`, or pass --server)"
    )
}

fn parse_url(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--url must start with http:// (got {url:?})"))?;
    let host = rest.split('/').next().unwrap_or_default();
    host.parse()
        .with_context(|| format!("--url needs an IP:port address (got {host:?})"))
}

async fn server_stats(http: SocketAddr) -> Result<serde_json::Value> {
    let (status, body) = chorus_tests::harness::http_get(http, "/api/stats").await?;
    if status != 200 {
        bail!("GET /api/stats: status {status}");
    }
    serde_json::from_str(&body).context("parsing /api/stats")
}

/// `/api/stats` of every server, its counters summed (the first server's other fields).
async fn servers_stats(https: &[SocketAddr]) -> Result<serde_json::Value> {
    let mut total = serde_json::Value::Null;
    for http in https {
        let stats = server_stats(*http).await?;
        match (&mut total, stats) {
            (serde_json::Value::Object(sum), serde_json::Value::Object(more)) => {
                for (key, value) in more {
                    if let (Some(a), Some(b)) =
                        (sum.get(&key).and_then(|v| v.as_u64()), value.as_u64())
                    {
                        sum.insert(key, (a + b).into());
                    }
                }
            }
            (total, stats) => *total = stats,
        }
    }
    Ok(total)
}

/// The CPU time of every server process, summed; None if one cannot be read.
fn servers_cpu(pids: &[u32]) -> Option<Duration> {
    pids.iter()
        .map(|p| procfs::process_cpu(*p).ok())
        .sum::<Option<Duration>>()
}

/// The resident memory of every server process, summed.
fn servers_rss(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|p| procfs::rss_kib(*p).ok()).sum()
}

fn counter(stats: &serde_json::Value, key: &str) -> u64 {
    stats
        .get(key)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

struct Joined {
    participant: usize,
    client: Client,
    /// What the client's sockets sent and received.
    wire: Arc<WireLog>,
    took: Duration,
}

fn name_of(roster: &Roster, participant: usize) -> String {
    let (room, i) = roster.locate(participant);
    if i < roster.publishers {
        format!("r{room}-pub{i}")
    } else {
        format!("r{room}-sub{}", i - roster.publishers)
    }
}

async fn join_one(
    entry: SocketAddr,
    roster: Roster,
    room_prefix: &str,
    participant: usize,
    simulcast: bool,
    red: bool,
    light: Option<&Arc<LightHub>>,
) -> Result<Joined> {
    let (room, i) = roster.locate(participant);
    let name = name_of(&roster, participant);
    let start = Instant::now();
    let wire = WireLog::new();
    // --light: subscribers only; publishers stay full simulated browsers.
    let runtime = match light.filter(|_| i >= roster.publishers) {
        Some(hub) => hub.runtime(participant, Arc::clone(&wire)),
        None => wire_runtime(Arc::clone(&wire)),
    };
    let options = ClientOptions {
        runtime: Some(runtime),
        audio: chorus_tests::peer::AudioCaps {
            red: red && i < roster.publishers,
            audio_level: red && i < roster.publishers,
        },
    };
    // Follows redirects as chorus.js does (a cluster's node may send the join on).
    let mut addr = entry;
    let mut redirects = 0;
    let client = loop {
        let client = Client::connect_with(addr, &name, options.clone()).await?;
        match client.join(&format!("{room_prefix}-{room}")).await {
            Ok(_) => break client,
            Err(err) => match chorus_tests::redirect_url(&err) {
                Some(url) if redirects < 3 => {
                    client.close().await;
                    redirects += 1;
                    addr = url
                        .strip_prefix("ws://")
                        .and_then(|rest| rest.strip_suffix("/ws"))
                        .and_then(|a| a.parse().ok())
                        .ok_or_else(|| anyhow!("{name}: a redirect to {url}"))?;
                }
                _ => return Err(err).with_context(|| format!("{name} joining")),
            },
        }
    };
    if i < roster.publishers {
        let options = if simulcast {
            PublishOptions::simulcast()
        } else {
            PublishOptions::default()
        };
        client
            .publish_with(options)
            .await
            .with_context(|| format!("{name} publishing"))?;
    } else if roster.receives(participant) {
        chorus_tests::wait::poll_until(SETUP_TIMEOUT, "the subscriber peer to connect", || {
            (client.subscriber_state() == Some(Connected)).then_some(())
        })
        .await
        .with_context(|| format!("{name} subscribing"))?;
    }
    Ok(Joined {
        participant,
        client,
        wire,
        took: start.elapsed(),
    })
}

fn arrival(p: &chorus_tests::ReceivedPacket) -> Arrival<'_> {
    Arrival {
        payload: &p.payload,
        at: p.at,
        ssrc: p.ssrc,
        seq: p.sequence_number,
    }
}

/// What one client's consumer collected: its accounting, and (`--light`) the decrypted
/// samples by SSRC.
type Consumed = (ReceiverStats, HashMap<u32, Sample>);

/// Reads one client's received packets until told to stop.
async fn consume(
    mut rx: mpsc::UnboundedReceiver<chorus_tests::ReceivedPacket>,
    mut stop: watch::Receiver<bool>,
    seen: ReceivedCounter,
    wire: WireLinks,
    light: bool,
) -> Consumed {
    let mut stats = ReceiverStats::default();
    let mut samples = HashMap::new();
    let mut on = |p: &chorus_tests::ReceivedPacket, stats: &mut ReceiverStats| {
        stats.on_packet(&arrival(p), Some(&wire));
        if light && let Some(stamp) = crate::media::read_stamp(&p.payload) {
            samples.insert(
                p.ssrc,
                Sample {
                    publisher: stamp.publisher,
                    kind: stamp.kind,
                    seq: p.sequence_number,
                    counter: stamp.counter,
                },
            );
        }
    };
    loop {
        tokio::select! {
            biased;
            packet = rx.recv() => match packet {
                Some(p) => {
                    on(&p, &mut stats);
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                None => break,
            },
            _ = stop.changed() => break,
        }
    }
    while let Ok(p) = rx.try_recv() {
        on(&p, &mut stats);
    }
    (stats, samples)
}

/// Every publisher's log, by global publisher index.
fn publisher_logs(roster: &Roster, joined: &[Joined]) -> Arc<[Arc<WireLog>]> {
    let mut logs: Vec<(u32, Arc<WireLog>)> = joined
        .iter()
        .filter_map(|j| Some((roster.publisher_of(j.participant)?, Arc::clone(&j.wire))))
        .collect();
    logs.sort_by_key(|(publisher, _)| *publisher);
    logs.into_iter().map(|(_, log)| log).collect()
}

/// `--simulcast`: every receiver tells the server how it shows each video it receives
/// (`trackSettings`), a tile the size of its [`Roster::tile_layer`], so that the allocator
/// caps it at that layer.
fn show_tiles(roster: &Roster, joined: &[Joined]) -> Result<()> {
    let cameras = cameras(joined);
    for j in joined {
        let Some(layer) = roster.tile_layer(j.participant) else {
            continue;
        };
        let (width, height) = crate::media::LAYER_SIZES[layer];
        let videos: Vec<_> = j
            .client
            .subscribed()
            .into_iter()
            .map(|s| s.track_id)
            .filter(|t| cameras.contains(t))
            .collect();
        for track in videos {
            j.client
                .track_settings(track, true, u32::from(width), u32::from(height))
                .with_context(|| format!("participant {} trackSettings", j.participant))?;
        }
    }
    Ok(())
}

/// `--simulcast`: after the warm-up, waits (up to [`LAYERS_SETTLE_TIMEOUT`]) until the
/// server says every video subscription is on its tile's layer, then [`LAYERS_SETTLED`]
/// more for the switch's keyframe, so that the window measures steady layers: the allocator
/// climbs one layer per second, after the downlink estimate allows it. Says on the progress
/// line how it went; a subscription the estimate holds below its tile keeps it waiting the
/// whole timeout, and shows in the report's streamState counts.
async fn settle_layers(roster: &Roster, joined: &[Joined], progress: &Progress) {
    let start = Instant::now();
    let settled = loop {
        let states = stream_states_by_tile(roster, joined);
        if states
            .iter()
            .all(|(tile, said)| said.as_deref() == Some(tile))
        {
            break true;
        }
        if start.elapsed() >= LAYERS_SETTLE_TIMEOUT {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if settled {
        tokio::time::sleep(LAYERS_SETTLED).await;
        progress.say(&format!(
            "every subscription on its tile's layer {:.1} s after the warm-up",
            start.elapsed().as_secs_f64()
        ));
    } else {
        progress.say(&format!(
            "not every subscription reached its tile's layer within {} s more; measuring anyway",
            LAYERS_SETTLE_TIMEOUT.as_secs()
        ));
    }
}

/// Every video subscription's tile layer rid and the server's last `streamState` of it.
fn stream_states_by_tile(
    roster: &Roster,
    joined: &[Joined],
) -> Vec<(&'static str, Option<String>)> {
    let cameras = cameras(joined);
    let mut out = Vec::new();
    for j in joined {
        let Some(tile) = roster.tile_layer(j.participant) else {
            continue;
        };
        let mut last = last_stream_states(&j.client);
        for s in j.client.subscribed() {
            if cameras.contains(&s.track_id) {
                out.push((crate::media::LAYER_RIDS[tile], last.remove(&s.track_id)));
            }
        }
    }
    out
}

/// The video tracks the publishers publish.
fn cameras(joined: &[Joined]) -> Vec<TrackId> {
    joined
        .iter()
        .filter_map(|j| j.client.published().map(|t| t.video))
        .collect()
}

/// What the server last said of each track `client` receives: a layer rid, or
/// `paused:<reason>`.
fn last_stream_states(client: &Client) -> HashMap<TrackId, String> {
    let mut last = HashMap::new();
    for logged in client.messages() {
        if let ServerMessage::StreamState {
            track_id,
            layer,
            paused,
        } = logged.message
        {
            let said = match (layer, paused) {
                (Some(layer), _) => crate::media::LAYER_RIDS
                    .get(usize::from(layer))
                    .map_or_else(|| format!("layer{layer}"), |r| (*r).to_owned()),
                (None, Some(reason)) => format!("paused:{reason:?}"),
                (None, None) => "paused".to_owned(),
            };
            last.insert(track_id, said);
        }
    }
    last
}

/// What the server last said (`streamState`) of every camera each receiver gets, counted by
/// layer rid, `paused:<reason>`, or `none` if it said nothing.
fn stream_states(roster: &Roster, joined: &[Joined]) -> BTreeMap<String, u64> {
    let cameras = cameras(joined);
    let mut out = BTreeMap::new();
    for j in joined.iter().filter(|j| roster.receives(j.participant)) {
        // Downgrades over the whole run (a lower layer or a pause after a layer): a climb
        // that took long because the estimate pushed subscriptions back down shows here.
        let mut on: HashMap<TrackId, u8> = HashMap::new();
        for logged in j.client.messages() {
            if let ServerMessage::StreamState {
                track_id, layer, ..
            } = logged.message
            {
                let before = on.insert(track_id, layer.map_or(0, |l| l + 1));
                if before.is_some_and(|b| b > layer.map_or(0, |l| l + 1)) {
                    *out.entry("downgrades during the run".to_owned())
                        .or_insert(0) += 1;
                }
            }
        }
        let mut last = last_stream_states(&j.client);
        for s in j.client.subscribed() {
            if cameras.contains(&s.track_id) {
                let said = last
                    .remove(&s.track_id)
                    .unwrap_or_else(|| "none".to_owned());
                *out.entry(said).or_insert(0) += 1;
            }
        }
    }
    out
}

/// Runs the scenario against Chorus.
pub(crate) async fn run(opts: &Options, progress: &Progress) -> Result<RunReport> {
    let roster = opts.roster();
    let shape = opts.shape();
    // The servers when started here (killed when dropped): every participant enters
    // through the first; CPU and memory are summed over all of them.
    let (servers, https, pids): (Servers, Vec<SocketAddr>, Vec<u32>) = match &opts.url {
        Some(url) => {
            let http = parse_url(url)?;
            let pid = match opts.server_pid {
                Some(pid) => Some(pid),
                None => procfs::pid_listening_on(http.port())
                    .map_err(|e| tracing::warn!("server CPU and memory unknown: {e:#}"))
                    .ok(),
            };
            (Servers::None, vec![http], pid.into_iter().collect())
        }
        None => {
            let bin = match &opts.server {
                Some(bin) => bin.clone(),
                None => default_server_bin()?,
            };
            progress.say(&format!("starting {}", bin.display()));
            // Every simulated participant connects from loopback: the per-IP limits are
            // raised to the whole load.
            let everyone = roster.rooms * roster.per_room() + 10;
            let config = format!(
                "[media]\nworkers = {}\nspread_room_after = {}\n\
                 [limits]\nmax_participants_per_room = {}\nmax_rooms = {}\n\
                 max_connections_per_ip = {everyone}\nmax_joins_per_ip_per_minute = {everyone}\n",
                opts.workers,
                opts.spread_room_after,
                roster.per_room().max(2),
                roster.rooms + 10
            );
            if opts.cluster > 0 {
                progress.say(&format!("starting a cluster of {} nodes", opts.cluster));
                let cluster =
                    crate::cluster::Cluster::start(&bin, &config, opts.cluster, opts.max_per_node)
                        .await?;
                let https = cluster.nodes.iter().map(Server::http_addr).collect();
                let pids = cluster.nodes.iter().filter_map(Server::pid).collect();
                (Servers::Cluster(cluster), https, pids)
            } else {
                let server = Server::start_bin(&bin, &config).await?;
                let http = server.http_addr();
                let pids = server.pid().into_iter().collect();
                (Servers::One(Box::new(server)), vec![http], pids)
            }
        }
    };
    let http = https[0];
    if let Some(cpu) = opts.pin_forwarder {
        ensure!(!pids.is_empty(), "--pin-forwarder needs the server's pid");
        for pid in &pids {
            procfs::set_process_affinity(*pid, &[cpu])?;
        }
    }
    let room_prefix = format!("load{}", std::process::id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let empty_rss = servers_rss(&pids);

    let light_hub = opts.light.then(LightHub::new);
    // Publishers first (so that subscribers find tracks), then subscribers.
    let mut joined: Vec<Joined> = Vec::with_capacity(roster.participants());
    for publishers in [true, false] {
        let who: Vec<usize> = (0..roster.participants())
            .filter(|p| roster.publisher_of(*p).is_some() == publishers)
            .collect();
        if who.is_empty() {
            continue;
        }
        progress.say(&format!(
            "joining {} {}",
            who.len(),
            if publishers {
                "publishers"
            } else {
                "subscribers"
            }
        ));
        let prefix = room_prefix.as_str();
        let results: Vec<Result<Joined>> = futures_util::stream::iter(who)
            .map(|p| {
                join_one(
                    http,
                    roster,
                    prefix,
                    p,
                    opts.simulcast,
                    opts.red,
                    light_hub.as_ref(),
                )
            })
            .buffer_unordered(opts.join_concurrency.max(1))
            .collect()
            .await;
        for r in results {
            joined.push(r?);
        }
    }
    joined.sort_by_key(|j| j.participant);
    let join_ms: Vec<f64> = joined.iter().map(|j| j.took.as_secs_f64() * 1e3).collect();

    // Barrier: every receiver has the full set of tracks negotiated and connected.
    progress.say("waiting until every subscription is negotiated");
    chorus_tests::wait::poll_until(SETUP_TIMEOUT, "every subscription to connect", || {
        joined
            .iter()
            .filter(|j| roster.receives(j.participant))
            .all(|j| {
                j.client.subscribed().len() == 2 * roster.sources_of(j.participant).len()
                    && j.client.subscriber_state() == Some(Connected)
            })
            .then_some(())
    })
    .await?;
    if opts.simulcast {
        show_tiles(&roster, &joined)?;
    }
    tokio::time::sleep(SETTLE).await;
    let idle_rss = servers_rss(&pids);

    // --light: the light thread takes the subscribers' sockets over.
    let light_participants: Vec<usize> = (0..roster.participants())
        .filter(|p| opts.light && roster.publisher_of(*p).is_none() && roster.receives(*p))
        .collect();
    let light = match &light_hub {
        Some(hub) => Some(LightReceiver::start(hub, opts.light_sample).context("light thread")?),
        None => None,
    };

    // Receivers: stream every packet into per-client counters.
    let (stop_tx, stop_rx) = watch::channel(false);
    let seen: ReceivedCounter = Arc::new(AtomicU64::new(0));
    let publishers = publisher_logs(&roster, &joined);
    let mut consumers: Vec<(usize, JoinHandle<Consumed>)> = Vec::new();
    for j in &joined {
        if roster.receives(j.participant) {
            let rx = j.client.received_stream();
            let wire = WireLinks {
                own: Arc::clone(&j.wire),
                publishers: Arc::clone(&publishers),
            };
            let is_light = light_participants.contains(&j.participant);
            consumers.push((
                j.participant,
                tokio::spawn(consume(
                    rx,
                    stop_rx.clone(),
                    Arc::clone(&seen),
                    wire,
                    is_light,
                )),
            ));
        }
    }

    // Publishers: start sending (warm-up first).
    let switch = Arc::new(AtomicU8::new(crate::load::WARMUP));
    let tallies: Vec<[Arc<SendTally>; 2]> = (0..roster.publishers_total())
        .map(|_| [Arc::default(), Arc::default()])
        .collect();
    let mut senders = Vec::new();
    for j in &joined {
        let Some(publisher) = roster.publisher_of(j.participant) else {
            continue;
        };
        let video = if opts.simulcast {
            let layers = j.client.camera_layer_writers();
            anyhow::ensure!(
                layers.len() == LAYERS,
                "publisher {} has {} camera layers, not {LAYERS}",
                j.participant,
                layers.len()
            );
            Video::Layers(layers.into_iter().map(Sink::Layer).collect())
        } else {
            let video = j
                .client
                .rtp_writer(MediaKind::Video)
                .ok_or_else(|| anyhow!("publisher {} has no video writer", j.participant))?;
            Video::One(Sink::Peer(video))
        };
        let audio = j.client.rtp_writer(MediaKind::Audio).map(Sink::Peer);
        senders.extend(spawn_publisher(
            video,
            audio,
            shape,
            publisher,
            &switch,
            &tallies[publisher as usize],
        ));
    }
    let sent_total = crate::load::sent_total(&tallies);
    let progress_task = progress.spawn(
        "chorus",
        Arc::clone(&switch),
        sent_total,
        {
            let seen = Arc::clone(&seen);
            let light = light.as_ref().map(|l| Arc::clone(&l.counters));
            move || {
                seen.load(Ordering::Relaxed)
                    + light.as_ref().map_or(0, |l| {
                        l.rtp.load(Ordering::Relaxed) - l.samples.load(Ordering::Relaxed)
                    })
            }
        },
        {
            let pids = pids.clone();
            move || servers_cpu(&pids)
        },
    );

    tokio::time::sleep(opts.warmup()).await;
    if opts.simulcast {
        settle_layers(&roster, &joined, progress).await;
    }
    switch.store(MEASURED, Ordering::Relaxed);
    let light_a = light.as_ref().map(|l| {
        (
            l.cpu(),
            l.counters.rtp.load(Ordering::Relaxed),
            l.counters.samples.load(Ordering::Relaxed),
            l.counters.bytes.load(Ordering::Relaxed),
        )
    });
    let stats_a = servers_stats(&https).await.ok();
    let links_a = crate::cluster::link_packets(&https).await;
    let a = Snapshot::take(
        servers_cpu(&pids),
        stats_a.as_ref().map(|s| counter(s, "rtp_forwarded")),
    );
    tokio::time::sleep(opts.duration()).await;
    let b = Snapshot::take(servers_cpu(&pids), None);
    let light_b = light.as_ref().map(|l| {
        (
            l.cpu(),
            l.counters.rtp.load(Ordering::Relaxed),
            l.counters.samples.load(Ordering::Relaxed),
            l.counters.bytes.load(Ordering::Relaxed),
        )
    });
    switch.store(STOP, Ordering::Relaxed);
    let stats_b = servers_stats(&https).await.ok();
    let links_b = crate::cluster::link_packets(&https).await;
    let b = Snapshot {
        forwarded: stats_b.as_ref().map(|s| counter(s, "rtp_forwarded")),
        ..b
    };
    let loaded_rss = servers_rss(&pids);
    if let Some(task) = progress_task {
        let _ = task.await;
    }
    for task in senders {
        let _ = task.await;
    }
    tokio::time::sleep(opts.drain()).await;
    let light_counts = light.map(LightReceiver::stop);
    let _ = stop_tx.send(true);
    let mut receivers: Vec<Option<ReceiverStats>> = vec![None; roster.participants()];
    let mut samples: HashMap<usize, HashMap<u32, Sample>> = HashMap::new();
    for (participant, task) in consumers {
        let (stats, by_ssrc) = task.await.context("a receiver task failed")?;
        receivers[participant] = Some(stats);
        samples.insert(participant, by_ssrc);
    }

    if let Some(counts) = &light_counts {
        // The samples' bytes are not the subscription's: the light thread's window count
        // is added below.
        let _ = counts;
        for p in &light_participants {
            if let Some(stats) = receivers[*p].as_mut() {
                stats.bytes = 0;
            }
        }
    }
    let mut report = Collected {
        roster,
        shape,
        tallies: &tallies,
        receivers,
        window: b.at.duration_since(a.at),
    }
    .into_report("chorus");
    apply_window(&mut report, &a, &b);
    if let Some(counts) = &light_counts {
        let unaccounted =
            crate::light::apply(&mut report, &light_participants, counts, &samples, &tallies);
        if let (
            Some((cpu_a, rtp_a, samples_a, bytes_a)),
            Some((cpu_b, rtp_b, samples_b, bytes_b)),
        ) = (light_a, light_b)
        {
            report.forwarded_mbps +=
                (bytes_b - bytes_a) as f64 * 8.0 / report.window_s.max(1e-9) / 1e6;
            let cpu_s = match (cpu_a, cpu_b) {
                (Some(x), Some(y)) => y.saturating_sub(x).as_secs_f64(),
                _ => 0.0,
            };
            let packets = rtp_b - rtp_a;
            report.light = Some(LightReport {
                sample_every: opts.light_sample.max(1),
                receivers: light_participants.len(),
                packets,
                samples: samples_b - samples_a,
                cpu_s,
                us_per_packet: (packets > 0).then(|| cpu_s * 1e6 / packets as f64),
                outside: counts
                    .streams
                    .values()
                    .flatten()
                    .map(|(_, t)| t.outside)
                    .sum(),
                unaccounted,
            });
        }
    }
    report.join_ms = Some(Percentiles::from_millis(&join_ms));
    report.memory = Memory::from_samples(empty_rss, idle_rss, loaded_rss, roster.participants());
    if let (Some(sa), Some(sb)) = (&stats_a, &stats_b) {
        for key in [
            "forward_drops",
            "send_drops",
            "unrouted",
            "keyframe_requests",
            "handoff_datagrams",
            "handoff_drops",
            "relayed_packets",
            "relay_drops",
        ] {
            report.forwarder_counters.insert(
                key.to_owned(),
                (counter(sb, key).saturating_sub(counter(sa, key))).into(),
            );
        }
    }

    if opts.cluster > 0 {
        report
            .forwarder_counters
            .insert("node_link_packets".to_owned(), (links_b - links_a).into());
    }

    // Each worker's busy share of its core over the window, where there are several.
    if let (Some(sa), Some(sb)) = (&stats_a, &stats_b)
        && let (Some(wa), Some(wb)) = (sa["workers"].as_array(), sb["workers"].as_array())
        && wb.len() > 1
    {
        let seconds = opts.duration;
        for (i, (a, b)) in wa.iter().zip(wb).enumerate() {
            let busy = |w: &serde_json::Value| w["busy_seconds"].as_f64().unwrap_or(0.0);
            let pct = (busy(b) - busy(a)) * 100.0 / seconds;
            report
                .forwarder_counters
                .insert(format!("worker{i}_busy_pct"), (pct.round() as u64).into());
        }
    }

    if opts.simulcast {
        report.stream_states = stream_states(&roster, &joined);
        if let (Some(sa), Some(sb)) = (&stats_a, &stats_b)
            && sb.get("layer_switches").is_some()
        {
            let switches =
                counter(sb, "layer_switches").saturating_sub(counter(sa, "layer_switches"));
            report
                .forwarder_counters
                .insert("layer_switches".to_owned(), switches.into());
        }
    }

    // Leave politely, but never wait long for it.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::future::join_all(joined.iter().map(|j| j.client.close())),
    )
    .await;
    drop(joined);
    drop(servers);
    Ok(report)
}
