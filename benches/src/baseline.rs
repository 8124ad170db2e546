//! The baseline: a minimal forwarder that does only the unavoidable work, driven with the
//! same load as Chorus.
//!
//! - The forwarder is one thread with one blocking UDP socket: receive a datagram,
//!   SRTP-unprotect it with its sender's context, then for every receiver in the room
//!   SRTP-protect it with that receiver's context and send it. No ICE, DTLS, RTCP,
//!   interceptors or header rewriting; keys are pre-shared.
//! - Participants are plain UDP sockets with SRTP contexts (one socket each, sending and
//!   receiving), running as tasks of this process, with the same sender tasks and payload
//!   stamps as the Chorus run. Their sockets are the same wrapped webrtc-rs sockets as the
//!   Chorus run's clients ([`WireSocket`]), so the server latency at the sockets is measured
//!   the same way.
//! - Its CPU is the forwarder thread's own (`/proc/self/task/TID/stat`), so the load
//!   generator's CPU is not counted.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::thread::JoinHandle as ThreadHandle;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use rtc::rtp::header::Header;
use rtc::shared::marshal::{MarshalSize, Unmarshal};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use webrtc::runtime::AsyncUdpSocket as _;

use crate::load::{
    MEASURED, Progress, ReceivedCounter, STOP, Sink, Snapshot, SrtpSender, Video, WARMUP,
    apply_window, spawn_publisher,
};
use crate::options::Options;
use crate::procfs;
use crate::report::{Collected, RunReport};
use crate::stats::{Arrival, ReceiverStats, SendTally};
use crate::wire::{WireLinks, WireLog, WireSocket};

/// The profile Chorus negotiates by default (see config/chorus.toml).
const PROFILE: ProtectionProfile = ProtectionProfile::AeadAes128Gcm;
const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;

/// Which way a key protects.
#[derive(Clone, Copy)]
enum Direction {
    /// participant → forwarder
    Up = 1,
    /// forwarder → participant
    Down = 2,
}

/// A pre-shared SRTP context for one participant and direction.
fn context(participant: usize, direction: Direction) -> Result<Context> {
    let provider = rtc::crypto::default_provider().map_err(|e| anyhow!("crypto provider: {e}"))?;
    let seed = participant * 131 + direction as usize * 17;
    let key: Vec<u8> = (0..PROFILE.key_len())
        .map(|i| (seed + i * 7) as u8)
        .collect();
    let salt: Vec<u8> = (0..PROFILE.salt_len())
        .map(|i| (seed * 3 + i * 11) as u8)
        .collect();
    Context::new(&key, &salt, PROFILE, None, None, provider.crypto())
        .map_err(|e| anyhow!("SRTP context: {e}"))
}

fn bind_std(nonblocking: bool) -> Result<StdUdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Socket buffers as the Chorus media socket gets them.
    chorus_sfu::net::set_buffers(&socket);
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    socket.set_nonblocking(nonblocking)?;
    Ok(socket.into())
}

/// One destination of a publisher's packets.
struct Out {
    to: SocketAddr,
    /// Index into the forwarder's outbound contexts.
    context: usize,
}

/// Counters the forwarder thread keeps.
#[derive(Default)]
struct ForwarderCounters {
    forwarded: AtomicU64,
    unprotect_errors: AtomicU64,
    send_errors: AtomicU64,
}

/// The forwarder's tables, built before it starts.
struct Forwarder {
    socket: StdUdpSocket,
    /// sender address → its inbound context and its destinations
    routes: HashMap<SocketAddr, (Context, Vec<Out>)>,
    outbound: Vec<Context>,
    counters: Arc<ForwarderCounters>,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    fn run(mut self) {
        let mut buf = vec![0u8; 2048];
        while !self.stop.load(Ordering::Relaxed) {
            // A read timeout ends here too: look at the stop flag.
            let Ok((len, from)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let Some((inbound, outs)) = self.routes.get_mut(&from) else {
                continue;
            };
            let Ok(plain) = inbound.decrypt_rtp(&buf[..len]) else {
                self.counters
                    .unprotect_errors
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            for out in outs.iter() {
                let Ok(protected) = self.outbound[out.context].encrypt_rtp(&plain) else {
                    self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                match self.socket.send_to(&protected, out.to) {
                    Ok(_) => {
                        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// A participant's receiving end: its socket, its SRTP context and what it counts.
struct Receiver {
    socket: Arc<WireSocket>,
    context: Context,
    wire: WireLinks,
    stats: ReceiverStats,
}

impl Receiver {
    /// Counts one SRTP datagram that arrived at `at`.
    fn on_datagram(&mut self, datagram: &[u8], at: std::time::Instant) -> Option<()> {
        let plain = self.context.decrypt_rtp(datagram).ok()?;
        let header = Header::unmarshal(&mut &plain[..]).ok()?;
        let start = header.marshal_size().min(plain.len());
        let arrival = Arrival {
            payload: &plain[start..],
            at,
            ssrc: header.ssrc,
            seq: header.sequence_number,
        };
        self.stats.on_packet(&arrival, Some(&self.wire));
        Some(())
    }

    /// Reads the socket until told to stop.
    async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        seen: ReceivedCounter,
    ) -> ReceiverStats {
        // Room for a GRO-coalesced message, though the forwarder sends one datagram per call.
        let mut buf = vec![0u8; 64 * 1500];
        let socket = Arc::clone(&self.socket);
        loop {
            tokio::select! {
                biased;
                r = socket.recv(&mut buf) => {
                    let Ok((len, stride, _)) = r else { continue };
                    let at = std::time::Instant::now();
                    for datagram in buf[..len].chunks(stride) {
                        if self.on_datagram(datagram, at).is_some() {
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                _ = stop.changed() => break,
            }
        }
        self.stats
    }
}

/// Runs the scenario against the baseline forwarder.
pub(crate) async fn run(opts: &Options, progress: &Progress) -> Result<RunReport> {
    let roster = opts.roster();
    let shape = opts.shape();
    let n = roster.participants();

    // Participants' sockets first: the forwarder's tables name their addresses.
    let logs: Vec<Arc<WireLog>> = (0..n).map(|_| WireLog::new()).collect();
    let mut sockets = Vec::with_capacity(n);
    for log in &logs {
        sockets.push(WireSocket::wrap(bind_std(true)?, Arc::clone(log))?);
    }
    let addrs: Vec<SocketAddr> = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<std::io::Result<_>>()?;
    let mut by_publisher: Vec<(u32, Arc<WireLog>)> = (0..n)
        .filter_map(|p| Some((roster.publisher_of(p)?, Arc::clone(&logs[p]))))
        .collect();
    by_publisher.sort_by_key(|(publisher, _)| *publisher);
    let publisher_logs: Arc<[Arc<WireLog>]> =
        by_publisher.into_iter().map(|(_, log)| log).collect();

    let forwarder_socket = bind_std(false)?;
    forwarder_socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let forwarder_addr = forwarder_socket.local_addr()?;
    let mut routes = HashMap::new();
    for (participant, addr) in addrs.iter().enumerate() {
        if roster.publisher_of(participant).is_none() {
            continue;
        }
        let (room, _) = roster.locate(participant);
        let outs = (room * roster.per_room()..(room + 1) * roster.per_room())
            .filter(|p| *p != participant)
            .map(|p| Out {
                to: addrs[p],
                context: p,
            })
            .collect();
        routes.insert(*addr, (context(participant, Direction::Up)?, outs));
    }
    let outbound = (0..n)
        .map(|p| context(p, Direction::Down))
        .collect::<Result<Vec<_>>>()?;
    let counters = Arc::new(ForwarderCounters::default());
    let stop_forwarder = Arc::new(AtomicBool::new(false));
    let forwarder = Forwarder {
        socket: forwarder_socket,
        routes,
        outbound,
        counters: Arc::clone(&counters),
        stop: Arc::clone(&stop_forwarder),
    };
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let pin = opts.pin_forwarder;
    let thread: ThreadHandle<()> = std::thread::Builder::new()
        .name("baseline-forwarder".into())
        .spawn(move || {
            if let Some(cpu) = pin
                && let Err(err) = procfs::set_thread_affinity(0, &[cpu])
            {
                tracing::warn!("pinning the baseline forwarder: {err:#}");
            }
            let _ = tid_tx.send(procfs::current_tid());
            forwarder.run();
        })
        .context("starting the baseline forwarder")?;
    let tid = tid_rx
        .recv()
        .context("the forwarder thread did not start")?;
    progress.say(&format!(
        "baseline forwarder on {forwarder_addr} (thread {tid}), {n} participants"
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let seen: ReceivedCounter = Arc::new(AtomicU64::new(0));
    let mut consumers: Vec<(usize, JoinHandle<ReceiverStats>)> = Vec::new();
    for (participant, socket) in sockets.iter().enumerate() {
        if roster.receives(participant) {
            let receiver = Receiver {
                socket: Arc::clone(socket),
                context: context(participant, Direction::Down)?,
                wire: WireLinks {
                    own: Arc::clone(&logs[participant]),
                    publishers: Arc::clone(&publisher_logs),
                },
                stats: ReceiverStats::default(),
            };
            consumers.push((
                participant,
                tokio::spawn(receiver.run(stop_rx.clone(), Arc::clone(&seen))),
            ));
        }
    }

    let switch = Arc::new(AtomicU8::new(WARMUP));
    let tallies: Vec<[Arc<SendTally>; 2]> = (0..roster.publishers_total())
        .map(|_| [Arc::default(), Arc::default()])
        .collect();
    let mut senders = Vec::new();
    for (participant, socket) in sockets.iter().enumerate() {
        let Some(publisher) = roster.publisher_of(participant) else {
            continue;
        };
        let sink = |ssrc: u32, payload_type: u8| -> Result<Sink> {
            Ok(Sink::Srtp(SrtpSender {
                socket: Arc::clone(socket),
                to: forwarder_addr,
                context: context(participant, Direction::Up)?,
                ssrc,
                payload_type,
            }))
        };
        let base = 0x1000_0000 + (participant as u32) * 2;
        senders.extend(spawn_publisher(
            Video::One(sink(base + 1, VP8_PT)?),
            Some(sink(base, OPUS_PT)?),
            shape,
            publisher,
            &switch,
            &tallies[publisher as usize],
        ));
    }
    let sent_total = crate::load::sent_total(&tallies);
    let progress_task = progress.spawn(
        "baseline",
        Arc::clone(&switch),
        sent_total,
        {
            let seen = Arc::clone(&seen);
            move || seen.load(Ordering::Relaxed)
        },
        move || procfs::thread_cpu(tid).ok(),
    );

    tokio::time::sleep(opts.warmup()).await;
    switch.store(MEASURED, Ordering::Relaxed);
    let a = Snapshot::take(
        procfs::thread_cpu(tid).ok(),
        Some(counters.forwarded.load(Ordering::Relaxed)),
    );
    tokio::time::sleep(opts.duration()).await;
    let b = Snapshot::take(
        procfs::thread_cpu(tid).ok(),
        Some(counters.forwarded.load(Ordering::Relaxed)),
    );
    switch.store(STOP, Ordering::Relaxed);
    if let Some(task) = progress_task {
        let _ = task.await;
    }
    for task in senders {
        let _ = task.await;
    }
    tokio::time::sleep(opts.drain()).await;
    let _ = stop_tx.send(true);
    let mut receivers: Vec<Option<ReceiverStats>> = vec![None; n];
    for (participant, task) in consumers {
        receivers[participant] = Some(task.await.context("a receiver task failed")?);
    }
    stop_forwarder.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;

    let mut report = Collected {
        roster,
        shape,
        tallies: &tallies,
        receivers,
        window: b.at.duration_since(a.at),
    }
    .into_report("baseline");
    apply_window(&mut report, &a, &b);
    // The forwarder thread lives in this process: do not count it as load generator.
    if let (Some(generator), Some(forwarder)) = (report.generator_cpu_pct, report.cpu_pct) {
        report.generator_cpu_pct = Some((generator - forwarder).max(0.0));
    }
    for (key, value) in [
        (
            "unprotect_errors",
            counters.unprotect_errors.load(Ordering::Relaxed),
        ),
        ("send_errors", counters.send_errors.load(Ordering::Relaxed)),
    ] {
        report
            .forwarder_counters
            .insert(key.to_owned(), value.into());
    }
    Ok(report)
}
