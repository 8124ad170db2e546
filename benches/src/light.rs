//! Light receivers (`--light`): subscribers that cost the load generator much less per packet
//! than a full simulated browser, so that one core of generator can load one server worker to
//! saturation.
//!
//! How a light subscriber works:
//! 1. It is a full simulated browser (`chorus_tests::Client`) until it is connected: signaling,
//!    ICE and DTLS run in the async `webrtc` stack as for any other participant. Its peer
//!    connections run on [`LightHub::runtime`], which keeps a duplicate of every UDP socket's file
//!    descriptor.
//! 2. Once every subscription is connected, [`LightReceiver`] takes the sockets over: one
//!    thread of this process reads all of them with `recvmmsg` (epoll, batches of
//!    [`BATCH`]), kernel timestamps and GRO included. The browser stack reads nothing from
//!    the socket any more; it reads a channel instead ([`LightSocket::poll_recv`]).
//! 3. Per RTP datagram the thread reads the clear SRTP header only: it counts the packet and
//!    marks its extended sequence number in a bitmap per SSRC (loss and duplicates). The
//!    first and then one in `--light-sample` RTP datagrams of each SSRC, and every STUN and
//!    DTLS datagram (consent checks, DTLS alerts), goes on through the channel to the
//!    browser stack, which decrypts it and hands it to the usual accounting: the samples
//!    give the latency figures (end to end, and at the sockets with the kernel's arrival
//!    time), and tie each SSRC to its publisher.
//! 4. After the takeover the stack sees only the samples, so its NACK generator, receiver
//!    reports and transport-cc feedback would describe a loss that did not happen; light
//!    sockets therefore drop every outgoing RTCP datagram, and the thread drops the server's
//!    incoming RTCP (sender reports) too. The server then gets no feedback
//!    from light subscribers, as from a browser without transport-cc (its estimator makes no
//!    cuts and its allocator pauses nothing; Chorus's non-simulcast forwarding does not
//!    depend on it).
//!
//! Accounting: the server rewrites each subscription's sequence numbers as the publisher's
//! plus a constant (`SeqRewriter` in crates/sfu/src/rewrite.rs), and the publisher's
//! sequence number and packet counter step together. One decrypted sample of an SSRC (its
//! clear sequence number, and the stamp's publisher, kind and counter) therefore maps every
//! counter of that subscription to a sequence number, and the measured packets received are
//! the bitmap's bits for the publisher's measured counters (`SendTally::counter_range`).
//! Nothing else is decrypted.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chorus_protocol::MediaKind;
use chorus_tests::socket::WrappedRuntime;
use serde::Serialize;
use tokio::sync::mpsc;
use webrtc::runtime::{AsyncUdpSocket, RecvMeta, Runtime, Transmit};

use crate::report::{RunReport, SubscriptionReport};
use crate::stats::SendTally;
use crate::wire::{WireLog, WireSocket};

/// Datagrams one `recvmmsg` call may return: enough to drain a burst of a few video frames
/// per call, few enough that the buffers stay in cache.
const BATCH: usize = 32;
/// Bytes per receive buffer: a GRO-coalesced message holds up to 64 segments.
const BUF_BYTES: usize = 64 * 1024;
/// The SRTP authentication tag of AEAD_AES_128_GCM, the profile Chorus negotiates, taken
/// off datagram sizes for the forwarded bit rate.
const SRTP_TAG_BYTES: usize = 16;
/// Sequence numbers a stream's bitmap may span: more than a run sends on one SSRC
/// (300 packets/s for 200 s), fewer than the 16-bit lap, so that a sample's sequence number
/// names one place in it.
const MAX_SPAN: u64 = 60_000;
/// Datagrams waiting for the browser stack in one light socket's channel. Unbounded: they
/// are 1 in `--light-sample` of the RTP plus the little non-RTP traffic, and the stack
/// drains them continuously; a bound would drop STUN consent checks.
type ToStack = mpsc::UnboundedSender<Datagram>;

/// A datagram handed from the light thread to the browser stack.
#[derive(Debug)]
struct Datagram {
    data: Vec<u8>,
    from: SocketAddr,
    at: Option<Duration>,
}

/// What a light socket and the light thread share.
#[derive(Debug)]
struct Shared {
    /// Set at the takeover: from then on the light thread reads the socket.
    light: AtomicBool,
    from_thread: Mutex<mpsc::UnboundedReceiver<Datagram>>,
    /// The stack's receive task while it waits on the tokio socket. The takeover wakes it:
    /// once the tokio socket is dropped (maybe by a send, see [`LightSocket`]), nothing
    /// else would, and the stack would never read a sample.
    recv_waker: Mutex<Option<std::task::Waker>>,
}

impl Shared {
    fn wake_receiver(&self) {
        if let Some(waker) = lock(&self.recv_waker).take() {
            waker.wake();
        }
    }
}

/// One socket's registration with the light thread.
struct Registered {
    participant: usize,
    socket: StdUdpSocket,
    to_stack: ToStack,
    log: Arc<WireLog>,
}

/// The sockets of every light participant, filled as their peer connections are built.
#[derive(Default)]
pub(crate) struct LightHub {
    sockets: Mutex<Vec<Registered>>,
    shared: Mutex<Vec<Arc<Shared>>>,
}

impl LightHub {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The runtime of one light participant's peer connections.
    /// webrtc-rs's tokio runtime, whose UDP sockets can be taken over by the light thread:
    /// each is registered here under a second descriptor.
    pub fn runtime(self: &Arc<Self>, participant: usize, log: Arc<WireLog>) -> Arc<dyn Runtime> {
        let hub = Arc::clone(self);
        WrappedRuntime::from_std("tokio+light", move |socket| {
            hub.register(participant, &log, socket)
        })
    }

    /// Wraps one participant's socket for its peer connection, and keeps a duplicate of
    /// it for the light thread.
    fn register(
        &self,
        participant: usize,
        log: &Arc<WireLog>,
        socket: StdUdpSocket,
    ) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        // The same socket under a second descriptor, for the light thread.
        let duplicate = socket.try_clone()?;
        let raw = socket.try_clone()?;
        let inner = WireSocket::wrap(socket, Arc::clone(log))?;
        let (to_stack, from_thread) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            light: AtomicBool::new(false),
            from_thread: Mutex::new(from_thread),
            recv_waker: Mutex::new(None),
        });
        lock(&self.sockets).push(Registered {
            participant,
            socket: duplicate,
            to_stack,
            log: Arc::clone(log),
        });
        lock(&self.shared).push(Arc::clone(&shared));
        Ok(Arc::new(LightSocket::new(inner, raw, shared)?))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a datagram is RTCP (RFC 7983 first byte, RFC 5761 packet types 192..=223).
fn is_rtcp(datagram: &[u8]) -> bool {
    matches!(datagram, [first, second, ..] if (128..=191).contains(first) && (192..=223).contains(second))
}

/// A light participant's socket: the browser stack's until the takeover, then a channel
/// fed by the light thread.
///
/// At the takeover the tokio socket is dropped (at the first call after it): that
/// deregisters it from tokio's reactor, which would otherwise be woken by every arrival on
/// the socket the light thread now reads, and closes only its descriptor, since the light
/// thread and `raw` hold duplicates. After it, the stack's few sends (STUN answers, DTLS)
/// go out on `raw`. Whoever drops the tokio socket wakes the stack's receive task, which
/// may be parked on it: when a send came first, that task was never woken again, and the
/// participant's stack saw no sample (four to nine light subscribers of 120 at 12 rooms).
/// The takeover wakes every receive task too, so each moves to its channel at once.
#[derive(Debug)]
struct LightSocket {
    inner: Mutex<Option<Arc<WireSocket>>>,
    raw: StdUdpSocket,
    addr: SocketAddr,
    gro_segments: usize,
    shared: Arc<Shared>,
}

impl LightSocket {
    fn new(inner: Arc<WireSocket>, raw: StdUdpSocket, shared: Arc<Shared>) -> io::Result<Self> {
        Ok(Self {
            addr: inner.local_addr()?,
            gro_segments: inner.max_gro_segments(),
            inner: Mutex::new(Some(inner)),
            raw,
            shared,
        })
    }

    /// The tokio socket before the takeover; `None` (and dropped) after it.
    fn before_takeover(&self) -> Option<Arc<WireSocket>> {
        let mut inner = lock(&self.inner);
        if self.shared.light.load(Ordering::Relaxed) {
            if inner.take().is_some() {
                // The receive task may be parked on the socket just dropped.
                self.shared.wake_receiver();
            }
            return None;
        }
        inner.clone()
    }
}

impl AsyncUdpSocket for LightSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    fn max_gso_segments(&self) -> usize {
        1
    }

    fn max_gro_segments(&self) -> usize {
        self.gro_segments
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        if let Some(inner) = self.before_takeover() {
            return inner.poll_send(cx, transmit);
        }
        if is_rtcp(transmit.contents) {
            // Feedback on the samples alone would report loss that did not happen.
            return Poll::Ready(Ok(transmit.contents.len()));
        }
        let step = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for datagram in transmit.contents.chunks(step) {
            // Non-blocking (the descriptor is shared with the tokio socket's, which set it):
            // a full buffer drops this datagram, as a lossy link would.
            if let Err(err) = self.raw.send_to(datagram, transmit.destination)
                && err.kind() != io::ErrorKind::WouldBlock
            {
                return Poll::Ready(Err(err));
            }
        }
        Poll::Ready(Ok(transmit.contents.len()))
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if let Some(inner) = self.before_takeover() {
            let polled = inner.poll_recv(cx, bufs, meta);
            if polled.is_pending() {
                *lock(&self.shared.recv_waker) = Some(cx.waker().clone());
                // A takeover between the check above and the store found no waker to
                // wake: look again, or this task would sleep on a dropped socket.
                if self.shared.light.load(Ordering::Acquire) {
                    cx.waker().wake_by_ref();
                }
            }
            return polled;
        }
        let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let mut rx = lock(&self.shared.from_thread);
        match rx.poll_recv(cx) {
            Poll::Ready(Some(d)) => {
                let len = d.data.len().min(buf.len());
                buf[..len].copy_from_slice(&d.data[..len]);
                m.addr = d.from;
                m.len = len;
                m.stride = len.max(1);
                m.timestamp = d.at;
                m.ecn = None;
                m.dst_ip = None;
                Poll::Ready(Ok(1))
            }
            // The light thread has stopped: nothing more will come.
            Poll::Ready(None) => Poll::Pending,
            Poll::Pending => Poll::Pending,
        }
    }
}

/// One SSRC's received sequence numbers.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqTrack {
    /// Extended sequence number of bit 0 (the first packet's, plus one lap so that a
    /// reordered earlier packet does not go below zero).
    origin: u64,
    /// Extended sequence number of the highest packet so far.
    highest: u64,
    bits: Vec<u64>,
    pub packets: u64,
    pub duplicates: u64,
    /// Packets from before the origin or beyond [`MAX_SPAN`], not in the bitmap.
    pub outside: u64,
}

impl SeqTrack {
    fn new(seq: u16) -> Self {
        let origin = (1 << 16) + u64::from(seq);
        Self {
            origin,
            highest: origin,
            ..Self::default()
        }
    }

    /// The extended sequence number of `seq`, nearest to the highest so far.
    fn extend(&self, seq: u16) -> u64 {
        let delta = i64::from(seq.wrapping_sub(self.highest as u16) as i16);
        self.highest.saturating_add_signed(delta)
    }

    fn mark(&mut self, seq: u16) {
        self.packets += 1;
        let ext = self.extend(seq);
        let Some(index) = ext.checked_sub(self.origin).filter(|i| *i < MAX_SPAN) else {
            self.outside += 1;
            return;
        };
        self.highest = self.highest.max(ext);
        let (word, bit) = ((index / 64) as usize, index % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1024, 0);
        }
        if self.bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
        } else {
            self.bits[word] |= 1 << bit;
        }
    }

    fn has(&self, ext: u64) -> bool {
        ext.checked_sub(self.origin).is_some_and(|i| {
            self.bits
                .get((i / 64) as usize)
                .is_some_and(|w| w & (1 << (i % 64)) != 0)
        })
    }

    /// The extended sequence number whose low 16 bits are `seq`, inside the bitmap's span.
    fn locate(&self, seq: u16) -> u64 {
        let lap = self.origin & !0xffff;
        let candidate = lap | u64::from(seq);
        if candidate < self.origin {
            candidate + (1 << 16)
        } else {
            candidate
        }
    }

    /// Distinct packets received of the `count` consecutive sequence numbers from `ext`.
    fn received_from(&self, ext: u64, count: u64) -> u64 {
        (ext..ext + count).filter(|e| self.has(*e)).count() as u64
    }
}

/// One light socket's counts.
#[derive(Debug, Default)]
struct SocketCounts {
    streams: Vec<(u32, SeqTrack)>,
    /// RTP payload + 12-byte header bytes (the report's bit-rate convention).
    bytes: u64,
    rtp: u64,
}

impl SocketCounts {
    fn track(&mut self, ssrc: u32, seq: u16) -> &mut SeqTrack {
        let at = match self.streams.iter().position(|(s, _)| *s == ssrc) {
            Some(at) => at,
            None => {
                self.streams.push((ssrc, SeqTrack::new(seq)));
                self.streams.len() - 1
            }
        };
        &mut self.streams[at].1
    }
}

/// The RTP payload length of an SRTP datagram (header, CSRCs and extension off, tag off).
fn payload_len(d: &[u8]) -> usize {
    let csrc = usize::from(d[0] & 0x0f) * 4;
    let mut header = 12 + csrc;
    if d[0] & 0x10 != 0
        && let Some(words) = d.get(header + 2..header + 4)
    {
        header += 4 + usize::from(u16::from_be_bytes([words[0], words[1]])) * 4;
    }
    d.len().saturating_sub(header + SRTP_TAG_BYTES)
}

/// The light thread's shared counters, read while it runs.
#[derive(Debug, Default)]
pub(crate) struct LightCounters {
    /// RTP datagrams received, all sockets.
    pub rtp: AtomicU64,
    /// Of those, handed to the browser stack.
    pub samples: AtomicU64,
    /// Their RTP payload + 12-byte header bytes.
    pub bytes: AtomicU64,
    /// The thread's kernel id, for its CPU time.
    pub tid: AtomicU64,
}

/// What the light thread counted, per participant.
#[derive(Debug, Default)]
pub(crate) struct LightCounts {
    /// participant → its sockets' SSRC tracks
    pub streams: HashMap<usize, Vec<(u32, SeqTrack)>>,
    pub bytes: HashMap<usize, u64>,
}

/// The running light thread.
pub(crate) struct LightReceiver {
    stop: Arc<AtomicBool>,
    pub counters: Arc<LightCounters>,
    thread: std::thread::JoinHandle<LightCounts>,
}

impl LightReceiver {
    /// Takes over every socket registered with `hub` and starts reading them.
    pub fn start(hub: &LightHub, every: u64) -> io::Result<Self> {
        let sockets = std::mem::take(&mut *lock(&hub.sockets));
        for shared in lock(&hub.shared).iter() {
            shared.light.store(true, Ordering::Release);
            shared.wake_receiver();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(LightCounters::default());
        let thread = {
            let (stop, counters) = (Arc::clone(&stop), Arc::clone(&counters));
            std::thread::Builder::new()
                .name("light-receiver".into())
                .spawn(move || receive(&sockets, every.max(1), &stop, &counters))?
        };
        Ok(Self {
            stop,
            counters,
            thread,
        })
    }

    /// The thread's CPU time so far.
    pub fn cpu(&self) -> Option<Duration> {
        let tid = i32::try_from(self.counters.tid.load(Ordering::Relaxed)).ok()?;
        crate::procfs::thread_cpu(tid).ok()
    }

    pub fn stop(self) -> LightCounts {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The receive buffers and headers of one `recvmmsg` batch.
struct Batch {
    bufs: Vec<Vec<u8>>,
    iovecs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<[u8; 128]>,
    headers: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Self {
        Self {
            bufs: (0..BATCH).map(|_| vec![0u8; BUF_BYTES]).collect(),
            // SAFETY: iovec, sockaddr_storage and mmsghdr are plain C structs; all-zero is
            // a valid value of each, and every pointer is set before use.
            iovecs: vec![unsafe { std::mem::zeroed() }; BATCH],
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            controls: vec![[0u8; 128]; BATCH],
            headers: vec![unsafe { std::mem::zeroed() }; BATCH],
        }
    }

    /// One `recvmmsg` on `fd`, not blocking: the number of messages (0 when none).
    fn receive(&mut self, fd: i32) -> usize {
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: BUF_BYTES,
            };
            let h = &mut self.headers[i].msg_hdr;
            h.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &raw mut self.iovecs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].as_mut_ptr().cast();
            h.msg_controllen = self.controls[i].len();
            h.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: every header points at buffers owned by `self` that outlive the call, with
        // their true lengths.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        usize::try_from(n).unwrap_or(0)
    }

    /// Message `i`: its bytes, GRO segment size, source, and kernel arrival time.
    fn message(&self, i: usize) -> (&[u8], usize, Option<SocketAddr>, Option<Duration>) {
        let header = &self.headers[i];
        let len = (header.msg_len as usize).min(BUF_BYTES);
        let mut segment = len;
        let mut at = None;
        let h = &header.msg_hdr;
        // SAFETY: the kernel filled msg_control up to msg_controllen; CMSG_* walk only
        // inside it.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_UDP, libc::UDP_GRO) => {
                        let size = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                        segment = usize::try_from(size).unwrap_or(len).max(1);
                    }
                    (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => {
                        let ts = std::ptr::read_unaligned(data.cast::<libc::timespec>());
                        at = Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        let from = sockaddr_to_std(&self.addrs[i]);
        (&self.bufs[i][..len], segment, from, at)
    }
}

fn sockaddr_to_std(a: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(a.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let v4 = unsafe { &*(std::ptr::from_ref(a).cast::<libc::sockaddr_in>()) };
            Some(SocketAddr::from((
                u32::from_be(v4.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let v6 = unsafe { &*(std::ptr::from_ref(a).cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::from((
                v6.sin6_addr.s6_addr,
                u16::from_be(v6.sin6_port),
            )))
        }
        _ => None,
    }
}

/// The light thread: reads every socket until told to stop.
fn receive(
    sockets: &[Registered],
    every: u64,
    stop: &AtomicBool,
    counters: &LightCounters,
) -> LightCounts {
    counters
        .tid
        .store(crate::procfs::current_tid() as u64, Ordering::Relaxed);
    // SAFETY: epoll_create1 has no preconditions.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    for (i, r) in sockets.iter().enumerate() {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: both descriptors are open; `event` is a valid epoll_event.
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, r.socket.as_raw_fd(), &mut event) };
    }
    let mut counts: Vec<SocketCounts> = sockets.iter().map(|_| SocketCounts::default()).collect();
    let mut batch = Batch::new();
    // SAFETY: epoll_event is a plain C struct.
    let mut events: Vec<libc::epoll_event> = vec![unsafe { std::mem::zeroed() }; 64];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `events` has room for its length in events.
        let ready =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 50) };
        for event in events.iter().take(usize::try_from(ready).unwrap_or(0)) {
            let i = event.u64 as usize;
            let Some(r) = sockets.get(i) else { continue };
            let fd = r.socket.as_raw_fd();
            loop {
                let n = batch.receive(fd);
                for m in 0..n {
                    let (message, segment, from, at) = batch.message(m);
                    for d in message.chunks(segment) {
                        on_datagram(d, from, at, r, &mut counts[i], every, counters);
                    }
                }
                if n < BATCH {
                    break;
                }
            }
        }
    }
    // SAFETY: closing the epoll descriptor this function made.
    unsafe { libc::close(epoll) };
    let mut out = LightCounts::default();
    for (r, c) in sockets.iter().zip(counts) {
        out.streams
            .entry(r.participant)
            .or_default()
            .extend(c.streams);
        *out.bytes.entry(r.participant).or_default() += c.bytes;
    }
    out
}

fn on_datagram(
    d: &[u8],
    from: Option<SocketAddr>,
    at: Option<Duration>,
    r: &Registered,
    counts: &mut SocketCounts,
    every: u64,
    counters: &LightCounters,
) {
    let Some((ssrc, seq, _)) = chorus_tests::socket::rtp_header(d) else {
        if is_rtcp(d) {
            // The server's reports and feedback: the stack, which sees only the samples,
            // has no use for them (and would log every sender report of a track whose
            // first sample has not come yet).
            return;
        }
        // STUN and DTLS: the browser stack's.
        if let Some(from) = from {
            let _ = r.to_stack.send(Datagram {
                data: d.to_vec(),
                from,
                at,
            });
        }
        return;
    };
    counts.rtp += 1;
    let bytes = payload_len(d) as u64 + crate::stats::RTP_HEADER_BYTES;
    counts.bytes += bytes;
    let stream = counts.track(ssrc, seq);
    stream.mark(seq);
    // Sampled per stream, its first packet and one in `every` after it: a count per socket
    // could fall in step with the socket's mix of audio and video packets and never pick
    // one stream, whose packets then cannot be tied to a publisher.
    let sampled = stream.packets == 1 || stream.packets.is_multiple_of(every);
    counters.rtp.fetch_add(1, Ordering::Relaxed);
    counters.bytes.fetch_add(bytes, Ordering::Relaxed);
    if sampled && let Some(from) = from {
        counters.samples.fetch_add(1, Ordering::Relaxed);
        r.log
            .record_receive(d, at.map(|t| u64::try_from(t.as_nanos()).unwrap_or(0)));
        let _ = r.to_stack.send(Datagram {
            data: d.to_vec(),
            from,
            at,
        });
    }
}

/// A decrypted sample: which subscription an SSRC carries, and where its counters sit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub publisher: u32,
    pub kind: MediaKind,
    pub seq: u16,
    pub counter: u64,
}

/// `--light`: the light thread's figures, beside the server's.
#[derive(Debug, Clone, Serialize)]
pub struct LightReport {
    /// One in this many RTP packets of each stream went on to the browser stack.
    pub sample_every: u64,
    /// Light subscribers (publishers stay full simulated browsers).
    pub receivers: usize,
    /// RTP datagrams the light thread received in the window.
    pub packets: u64,
    /// Of those, decrypted by the browser stack (the latency samples).
    pub samples: u64,
    /// The light thread's CPU in the window, s.
    pub cpu_s: f64,
    /// µs of the light thread's CPU per received packet: compare with the server's CPU
    /// per forwarded packet.
    pub us_per_packet: Option<f64>,
    /// RTP datagrams whose sequence number fell outside their bitmap (expected 0).
    pub outside: u64,
    /// Light subscriptions counted wholly lost because their packets could not be tied to
    /// what their publisher sent, by reason (expected all 0; see [`Unaccounted`]).
    pub unaccounted: Unaccounted,
}

/// Why light subscriptions could not be accounted: each a count of subscriptions.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Unaccounted {
    /// The browser stack surfaced no decrypted sample of the subscription, so its SSRC is
    /// not known.
    pub no_sample: u64,
    /// The light thread saw no packet of the sample's SSRC.
    pub no_stream: u64,
    /// The publisher's send tally has no counter range.
    pub no_tally: u64,
    /// The sample sits before the light thread's first packet of the stream.
    pub before_stream: u64,
}

impl Unaccounted {
    pub fn total(&self) -> u64 {
        self.no_sample + self.no_stream + self.no_tally + self.before_stream
    }
}

/// Replaces the light receivers' per-subscription accounting (the samples the stack saw)
/// with the light thread's, and recomputes the totals.
pub(crate) fn apply(
    report: &mut RunReport,
    light: &[usize],
    counts: &LightCounts,
    samples: &HashMap<usize, HashMap<u32, Sample>>,
    tallies: &[[Arc<SendTally>; 2]],
) -> Unaccounted {
    let mut unaccounted = Unaccounted::default();
    for s in &mut report.subscriptions {
        if !light.contains(&s.receiver) {
            continue;
        }
        let received = match light_received(s, counts, samples, tallies) {
            Ok(n) => n,
            Err(reason) => {
                if s.sent > 0 {
                    *reason(&mut unaccounted) += 1;
                }
                0
            }
        };
        s.received = received.min(s.sent);
        s.lost = s.sent - s.received;
    }
    let window = report.window_s.max(1e-9);
    report.received_packets = report.subscriptions.iter().map(|s| s.received).sum();
    report.lost_packets = report.subscriptions.iter().map(|s| s.lost).sum();
    report.loss_pct = if report.expected_packets > 0 {
        report.lost_packets as f64 * 100.0 / report.expected_packets as f64
    } else {
        0.0
    };
    report.forwarded_pps = report.received_packets as f64 / window;
    report.duplicates = counts
        .streams
        .values()
        .flatten()
        .map(|(_, t)| t.duplicates)
        .sum();
    unaccounted
}

/// Which count of [`Unaccounted`] a subscription goes to.
type Reason = fn(&mut Unaccounted) -> &mut u64;

/// Distinct measured packets one light subscription received.
fn light_received(
    s: &SubscriptionReport,
    counts: &LightCounts,
    samples: &HashMap<usize, HashMap<u32, Sample>>,
    tallies: &[[Arc<SendTally>; 2]],
) -> Result<u64, Reason> {
    let Some((ssrc, sample)) = samples.get(&s.receiver).and_then(|by_ssrc| {
        by_ssrc
            .iter()
            .find(|(_, x)| x.publisher == s.publisher && x.kind == s.kind)
    }) else {
        return Err(|u| &mut u.no_sample);
    };
    let Some(track) = counts
        .streams
        .get(&s.receiver)
        .and_then(|t| t.iter().find(|(x, _)| x == ssrc))
        .map(|(_, t)| t)
    else {
        return Err(|u| &mut u.no_stream);
    };
    let slot = match s.kind {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
    };
    let Some((from, to)) = tallies
        .get(s.publisher as usize)
        .and_then(|t| t[slot].counter_range())
    else {
        return Err(|u| &mut u.no_tally);
    };
    let sample_ext = track.locate(sample.seq);
    let Some(first) = (sample_ext + from).checked_sub(sample.counter) else {
        return Err(|u| &mut u.before_stream);
    };
    Ok(track.received_from(first, to - from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_track_counts_distinct_packets_across_a_wrap() {
        let mut t = SeqTrack::new(65_530);
        for seq in (65_530..=65_535).chain(0..10) {
            t.mark(seq);
        }
        t.mark(3); // duplicate
        t.mark(65_529); // before the origin
        assert_eq!(t.packets, 18);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.outside, 1);
        let first = t.locate(65_532);
        assert_eq!(t.received_from(first, 10), 10);
        assert_eq!(t.received_from(t.locate(8), 5), 2);
    }

    #[test]
    fn payload_length_drops_header_extension_and_tag() {
        let mut d = vec![0u8; 12 + 8 + 100 + SRTP_TAG_BYTES];
        d[0] = 0x90; // V=2, X=1
        d[1] = 96;
        d[14] = 0; // extension length: 1 word
        d[15] = 1;
        assert_eq!(payload_len(&d), 100);
        assert!(is_rtcp(&[0x80, 200]));
        assert!(!is_rtcp(&[0x80, 96]));
    }
}
