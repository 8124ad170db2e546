//! Server latency at the sockets ("wire" latency): from the moment a publisher hands an RTP
//! datagram to its kernel to the kernel's receive timestamp of the forwarded datagram on a
//! subscriber's socket. Neither client stack (channel hops, interceptors, SRTP, the
//! scheduling of the client's tasks) is inside that span, so what is left is the server plus
//! the kernel's loopback, which `--calibrate` measures on its own.
//!
//! - [`wire_runtime`] is the webrtc-rs runtime the load's peer connections run on. It is
//!   webrtc-rs's tokio runtime except for the UDP socket, which it wraps in a socket that
//!   writes every RTP datagram it sends or receives into the client's [`WireLog`].
//! - Sends are stamped with CLOCK_REALTIME just before the send system call. Receives carry
//!   the kernel's SO_TIMESTAMPNS stamp, also CLOCK_REALTIME: webrtc-rs's tokio socket
//!   (quinn-udp) turns the option on and decodes the control message into
//!   [`RecvMeta::timestamp`], so the wrapper reuses it instead of a second `recvmsg` of its
//!   own, and the client's socket behaves exactly as without the measurement (GRO included).
//! - A datagram is keyed by (SSRC, sequence number) from its RTP header, which SRTP leaves
//!   in clear. A subscriber sees the server's rewritten SSRC and sequence numbers, so the
//!   payload stamp carries the publisher's own ([`crate::media::Stamp`]) and
//!   [`WireLinks::resolve`] joins the two logs.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use chorus_tests::socket::{WrappedRuntime, rtp_header};
use webrtc::runtime::{AsyncUdpSocket, RecvMeta, Runtime, TokioRuntime, Transmit};

use crate::media::Stamp;

/// An entry older than this is from an earlier lap of the 16-bit sequence number and may
/// be overwritten. Retransmissions of a packet come well within it, so the first send and
/// the first arrival are the ones kept.
const REUSE_AFTER_NS: u64 = 2_000_000_000;
/// How often arrivals that were never looked up (e.g. duplicates the stack dropped) are
/// swept out of the log.
const PRUNE_EVERY_NS: u64 = 1_000_000_000;
/// Slots of a sender's ring: one per sequence number.
const SEQ_SLOTS: usize = 1 << 16;

/// Nanoseconds since the Unix epoch on CLOCK_REALTIME, the clock of SO_TIMESTAMPNS.
/// (`SystemTime::now` is `clock_gettime(CLOCK_REALTIME)` on Linux, through the vDSO.)
pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, duration_ns)
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// (SSRC, sequence number) of an RTP datagram, `None` for anything else (STUN, DTLS, RTCP).
///
/// RFC 7983: a first byte of 128..=191 is RTP or RTCP. RFC 5761: RTCP packet types 192..=223
/// put 64..=95 in the low 7 bits of the second byte, where RTP has its payload type.
pub fn rtp_key(datagram: &[u8]) -> Option<(u32, u16)> {
    rtp_header(datagram).map(|(ssrc, seq, _)| (ssrc, seq))
}

/// Whether a recorded time is still this lap's (see [`REUSE_AFTER_NS`]).
fn fresh(recorded_ns: u64, now_ns: u64) -> bool {
    recorded_ns != 0 && now_ns.saturating_sub(recorded_ns) < REUSE_AFTER_NS
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kernel arrival times not yet looked up, keyed by (SSRC, sequence number).
#[derive(Default)]
struct Arrivals {
    at: HashMap<(u32, u16), u64>,
    next_prune_ns: u64,
}

impl Arrivals {
    fn record(&mut self, key: (u32, u16), at_ns: u64) {
        let slot = self.at.entry(key).or_insert(0);
        if !fresh(*slot, at_ns) {
            *slot = at_ns;
        }
        if at_ns >= self.next_prune_ns {
            self.at.retain(|_, t| fresh(*t, at_ns));
            self.next_prune_ns = at_ns + PRUNE_EVERY_NS;
        }
    }
}

/// One client's record of the RTP datagrams its sockets sent and received.
#[derive(Default)]
pub struct WireLog {
    /// Per SSRC sent, the send time of each sequence number (0: never sent). Only this
    /// client's own streams are here, so memory is 512 KiB per stream it publishes.
    sent: Mutex<HashMap<u32, Box<[u64]>>>,
    received: Mutex<Arrivals>,
    /// Datagrams that arrived without a kernel timestamp (they cannot be measured).
    untimed: AtomicU64,
}

impl fmt::Debug for WireLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireLog")
            .field("streams_sent", &lock(&self.sent).len())
            .field("arrivals_pending", &lock(&self.received).at.len())
            .field("untimed", &self.untimed.load(Ordering::Relaxed))
            .finish()
    }
}

impl WireLog {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Records one datagram about to be handed to the kernel at `at_ns`.
    ///
    /// Before the send, not after: on loopback the forwarded copy can reach a subscriber,
    /// and be looked up, while the sending thread is still returning from the system call.
    pub fn record_send(&self, datagram: &[u8], at_ns: u64) {
        let Some((ssrc, seq)) = rtp_key(datagram) else {
            return;
        };
        let mut sent = lock(&self.sent);
        let ring = sent
            .entry(ssrc)
            .or_insert_with(|| vec![0; SEQ_SLOTS].into_boxed_slice());
        let slot = &mut ring[usize::from(seq)];
        // A retransmission keeps the first send's time.
        if !fresh(*slot, at_ns) {
            *slot = at_ns;
        }
    }

    /// Takes back [`record_send`](Self::record_send) of a datagram that was not sent after
    /// all (the socket would block, or failed), unless an earlier send holds the slot.
    pub fn unrecord_send(&self, datagram: &[u8], at_ns: u64) {
        let Some((ssrc, seq)) = rtp_key(datagram) else {
            return;
        };
        if let Some(ring) = lock(&self.sent).get_mut(&ssrc) {
            let slot = &mut ring[usize::from(seq)];
            if *slot == at_ns {
                *slot = 0;
            }
        }
    }

    /// Records one received datagram with its kernel timestamp.
    pub fn record_receive(&self, datagram: &[u8], kernel_ns: Option<u64>) {
        let Some(key) = rtp_key(datagram) else {
            return;
        };
        match kernel_ns {
            Some(at_ns) => lock(&self.received).record(key, at_ns),
            None => {
                self.untimed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// When (SSRC, seq) was handed to the kernel, if this client sent it.
    pub fn sent_at(&self, ssrc: u32, seq: u16) -> Option<u64> {
        let sent = lock(&self.sent);
        let at = sent.get(&ssrc)?[usize::from(seq)];
        (at != 0).then_some(at)
    }

    /// When (SSRC, seq) arrived at this client's kernel; forgets it (each packet is looked
    /// up once, which is what keeps the log small).
    pub fn take_arrival(&self, ssrc: u32, seq: u16) -> Option<u64> {
        lock(&self.received).at.remove(&(ssrc, seq))
    }

    /// Datagrams that came without a kernel timestamp.
    pub fn untimed(&self) -> u64 {
        self.untimed.load(Ordering::Relaxed)
    }
}

/// What [`WireLinks::resolve`] found for one received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireMatch {
    /// Server latency at the sockets, ns.
    Latency(u64),
    /// The receiving socket has no kernel arrival time for it.
    NoArrival,
    /// The publisher's socket has no send time for it (or one later than the arrival).
    NoSend,
}

/// Joins a receiver's log with the publishers' logs.
#[derive(Debug, Clone)]
pub struct WireLinks {
    /// The receiving client's log.
    pub own: Arc<WireLog>,
    /// Every publisher's log, by global publisher index (the stamp's `publisher`).
    pub publishers: Arc<[Arc<WireLog>]>,
}

impl WireLinks {
    /// The wire latency of a packet that arrived as (`ssrc`, `seq`) and carries `stamp`.
    pub fn resolve(&self, stamp: &Stamp, ssrc: u32, seq: u16) -> WireMatch {
        let Some(arrived) = self.own.take_arrival(ssrc, seq) else {
            return WireMatch::NoArrival;
        };
        let sent = usize::try_from(stamp.publisher)
            .ok()
            .and_then(|p| self.publishers.get(p))
            .and_then(|log| log.sent_at(stamp.ssrc, stamp.seq));
        match sent {
            Some(sent) if sent <= arrived => WireMatch::Latency(arrived - sent),
            _ => WireMatch::NoSend,
        }
    }
}

/// The runtime the load's peer connections run on: webrtc-rs's tokio runtime with every UDP
/// socket wrapped in a [`WireSocket`] writing into `log`.
pub fn wire_runtime(log: Arc<WireLog>) -> Arc<WrappedRuntime> {
    WrappedRuntime::new("tokio+wire", move |inner| {
        Arc::new(WireSocket {
            inner,
            log: Arc::clone(&log),
        })
    })
}

/// webrtc-rs's tokio UDP socket, recording the RTP it sends and receives.
#[derive(Debug)]
pub struct WireSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    log: Arc<WireLog>,
}

impl WireSocket {
    /// Wraps `socket` (bound) like a peer connection's socket, for callers without a peer
    /// connection (the baseline's participants). Needs a tokio runtime.
    pub fn wrap(socket: std::net::UdpSocket, log: Arc<WireLog>) -> io::Result<Arc<Self>> {
        socket.set_nonblocking(true)?;
        Ok(Arc::new(Self {
            inner: TokioRuntime.wrap_udp_socket(socket)?,
            log,
        }))
    }

    /// Receives one message: its length, its segment size (several datagrams when the
    /// kernel coalesced them, GRO) and its source. Recorded like the peer connections'.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, usize, SocketAddr)> {
        let mut meta = [RecvMeta::default()];
        std::future::poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(buf)];
            self.poll_recv(cx, &mut bufs, &mut meta)
        })
        .await?;
        Ok((meta[0].len, meta[0].stride.max(1), meta[0].addr))
    }

    /// The datagrams of one transmit (several when it asks for GSO).
    fn datagrams<'a>(transmit: &Transmit<'a>) -> std::slice::Chunks<'a, u8> {
        let step = transmit.segment_size.unwrap_or(transmit.contents.len());
        transmit.contents.chunks(step.max(1))
    }

    fn record_message(&self, message: &[u8], meta: &RecvMeta) {
        let kernel_ns = meta.timestamp.map(duration_ns);
        let len = meta.len.min(message.len());
        for datagram in message[..len].chunks(meta.stride.max(1)) {
            self.log.record_receive(datagram, kernel_ns);
        }
    }
}

impl AsyncUdpSocket for WireSocket {
    chorus_tests::delegate_socket_basics!();

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        // Recorded just before the inner socket's send system call, and taken back if the
        // send does not happen in this poll (a would-block retries with a fresh time).
        let at_ns = realtime_ns();
        for datagram in Self::datagrams(transmit) {
            self.log.record_send(datagram, at_ns);
        }
        let result = self.inner.poll_send(cx, transmit);
        if !matches!(result, Poll::Ready(Ok(_))) {
            for datagram in Self::datagrams(transmit) {
                self.log.unrecord_send(datagram, at_ns);
            }
        }
        result
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let result = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = result {
            for (buf, meta) in bufs.iter().zip(meta.iter()).take(n) {
                self.record_message(buf, meta);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
        let mut d = vec![0u8; 40];
        d[0] = 0x80;
        d[1] = 96;
        d[2..4].copy_from_slice(&seq.to_be_bytes());
        d[8..12].copy_from_slice(&ssrc.to_be_bytes());
        d
    }

    fn stamp(ssrc: u32, seq: u16) -> Stamp {
        Stamp {
            publisher: 0,
            kind: chorus_protocol::MediaKind::Video,
            phase: crate::media::Phase::Measured,
            counter: 0,
            sent_ns: 0,
            ssrc,
            seq,
            layer: None,
        }
    }

    #[test]
    fn only_rtp_has_a_key() {
        assert_eq!(rtp_key(&rtp(7, 9)), Some((7, 9)));
        let mut rtcp = rtp(7, 9);
        rtcp[1] = 200; // SR
        assert_eq!(rtp_key(&rtcp), None);
        rtcp[1] = 205; // transport feedback (NACK, TWCC)
        assert_eq!(rtp_key(&rtcp), None);
        let mut marked = rtp(7, 9);
        marked[1] = 96 | 0x80; // RTP with the marker bit
        assert_eq!(rtp_key(&marked), Some((7, 9)));
        assert_eq!(
            rtp_key(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0]),
            None
        ); // STUN
        assert_eq!(rtp_key(&[22, 254, 253]), None); // DTLS
    }

    #[test]
    fn the_first_send_and_arrival_win_within_a_lap() {
        let publisher = WireLog::new();
        let subscriber = WireLog::new();
        let links = WireLinks {
            own: Arc::clone(&subscriber),
            publishers: vec![Arc::clone(&publisher)].into(),
        };
        publisher.record_send(&rtp(1, 5), 1_000);
        publisher.record_send(&rtp(1, 5), 9_000); // retransmission
        subscriber.record_receive(&rtp(50, 700), Some(4_000));
        subscriber.record_receive(&rtp(50, 700), Some(12_000)); // retransmitted copy
        assert_eq!(
            links.resolve(&stamp(1, 5), 50, 700),
            WireMatch::Latency(3_000)
        );
        // Looked up once: gone.
        assert_eq!(links.resolve(&stamp(1, 5), 50, 700), WireMatch::NoArrival);
        subscriber.record_receive(&rtp(50, 701), Some(4_000));
        assert_eq!(links.resolve(&stamp(1, 6), 50, 701), WireMatch::NoSend);
        subscriber.record_receive(&rtp(50, 702), None);
        assert_eq!(subscriber.untimed(), 1);
    }

    #[test]
    fn a_later_lap_overwrites_and_stale_arrivals_are_swept() {
        let log = WireLog::new();
        log.record_send(&rtp(1, 5), 1_000);
        log.record_send(&rtp(1, 5), 1_000 + REUSE_AFTER_NS);
        assert_eq!(log.sent_at(1, 5), Some(1_000 + REUSE_AFTER_NS));
        // A send that did not happen is taken back; one by an earlier send is kept.
        log.record_send(&rtp(1, 6), 500);
        log.unrecord_send(&rtp(1, 6), 500);
        assert_eq!(log.sent_at(1, 6), None);
        log.unrecord_send(&rtp(1, 5), 777);
        assert_eq!(log.sent_at(1, 5), Some(1_000 + REUSE_AFTER_NS));
        log.record_receive(&rtp(2, 1), Some(1_000));
        log.record_receive(&rtp(2, 2), Some(1_000 + 3 * REUSE_AFTER_NS));
        assert_eq!(log.take_arrival(2, 1), None);
        assert_eq!(log.take_arrival(2, 2), Some(1_000 + 3 * REUSE_AFTER_NS));
    }

    #[tokio::test]
    async fn kernel_timestamps_reach_the_log() -> io::Result<()> {
        let bind = || std::net::UdpSocket::bind("127.0.0.1:0");
        let (a_log, b_log) = (WireLog::new(), WireLog::new());
        let a = WireSocket::wrap(bind()?, Arc::clone(&a_log))?;
        let b = WireSocket::wrap(bind()?, Arc::clone(&b_log))?;
        let before = realtime_ns();
        a.send_to(&rtp(3, 4), b.local_addr()?).await?;
        let mut buf = [0u8; 64];
        let (len, _, from) = b.recv(&mut buf).await?;
        let after = realtime_ns();
        assert_eq!((len, from), (40, a.local_addr()?));
        let sent = a_log.sent_at(3, 4).expect("send recorded");
        let arrived = b_log.take_arrival(3, 4).expect("kernel timestamp recorded");
        assert!(before <= sent && sent <= arrived && arrived <= after);
        Ok(())
    }
}
