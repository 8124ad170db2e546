//! Simulated browsers with something between their peer connections and their UDP sockets:
//! [`WrappedRuntime`] is webrtc-rs's tokio runtime with every UDP socket passed through a
//! wrapper of the caller's. The load generator wraps them to timestamp RTP at the sockets;
//! [`LossySocket`] drops chosen inbound RTP datagrams, so that tests see loss recovery
//! (loopback never loses, and this kernel has no `netem`); [`CappedSocket`] polices inbound
//! RTP to a rate set at run time, a downlink that carries less than is sent;
//! [`SilenceSocket`] stops all traffic on demand, a peer that vanishes without a goodbye.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// Turns a bound UDP socket into the one a peer connection gets.
pub type SocketWrapper =
    dyn Fn(std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> + Send + Sync + 'static;

/// webrtc-rs's tokio runtime, with every UDP socket passed through a wrapper.
pub struct WrappedRuntime {
    wrap: Box<SocketWrapper>,
    name: &'static str,
}

impl fmt::Debug for WrappedRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedRuntime")
            .field("name", &self.name)
            .finish()
    }
}

impl WrappedRuntime {
    /// Every socket as webrtc-rs's tokio runtime makes it, then through `wrap`.
    pub fn new(
        name: &'static str,
        wrap: impl Fn(Arc<dyn AsyncUdpSocket>) -> Arc<dyn AsyncUdpSocket> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Self::from_std(name, move |socket| {
            Ok(wrap(TokioRuntime.wrap_udp_socket(socket)?))
        })
    }

    /// Every socket made by `wrap` from the bound standard socket (for a wrapper that
    /// needs its descriptor too).
    pub fn from_std(
        name: &'static str,
        wrap: impl Fn(std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>>
        + Send
        + Sync
        + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            wrap: Box::new(wrap),
            name,
        })
    }
}

impl Runtime for WrappedRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        TokioRuntime.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        TokioRuntime.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        (self.wrap)(socket)
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        TokioRuntime.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        TokioRuntime.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        TokioRuntime.resolve_host(host)
    }

    fn now(&self) -> Instant {
        TokioRuntime.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TokioRuntime.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        TokioRuntime.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        TokioRuntime.block_on(future);
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TokioRuntime.yield_now()
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

/// Inside `impl AsyncUdpSocket for W`, where `W` wraps another socket in a field `inner`:
/// the methods every wrapper passes straight through (address and batching limits).
#[macro_export]
macro_rules! delegate_socket_basics {
    () => {
        fn local_addr(&self) -> ::std::io::Result<::std::net::SocketAddr> {
            self.inner.local_addr()
        }

        fn max_gso_segments(&self) -> usize {
            self.inner.max_gso_segments()
        }

        fn max_gro_segments(&self) -> usize {
            self.inner.max_gro_segments()
        }
    };
}

/// (SSRC, sequence number, payload type) of an RTP datagram; `None` for STUN, DTLS and RTCP
/// (RFC 7983 first byte, RFC 5761 payload-type range). SRTP leaves this header in clear.
pub fn rtp_header(datagram: &[u8]) -> Option<(u32, u16, u8)> {
    let header = datagram.get(..12)?;
    if !(128..=191).contains(&header[0]) || (64..=95).contains(&(header[1] & 0x7f)) {
        return None;
    }
    let seq = u16::from_be_bytes([header[2], header[3]]);
    let ssrc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    Some((ssrc, seq, header[1] & 0x7f))
}

/// A socket that drops the first arrival of every inbound RTP datagram of `payload_type`
/// whose sequence number is a multiple of `every`: a steady loss the receiver's NACKs must
/// repair (a retransmission of a dropped packet passes).
pub struct LossySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    payload_type: u8,
    every: u16,
    dropped: Mutex<HashSet<(u32, u16)>>,
    count: Arc<AtomicU64>,
}

impl fmt::Debug for LossySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossySocket")
            .field("payload_type", &self.payload_type)
            .field("every", &self.every)
            .field("dropped", &self.count.load(Ordering::Relaxed))
            .finish()
    }
}

impl LossySocket {
    /// A runtime whose sockets are lossy like this; `count` counts the datagrams dropped.
    pub fn runtime(payload_type: u8, every: u16, count: Arc<AtomicU64>) -> Arc<WrappedRuntime> {
        WrappedRuntime::new("tokio+lossy", move |inner| {
            Arc::new(LossySocket {
                inner,
                payload_type,
                every: every.max(1),
                dropped: Mutex::new(HashSet::new()),
                count: Arc::clone(&count),
            })
        })
    }

    fn drops(&self, datagram: &[u8]) -> bool {
        let Some((ssrc, seq, pt)) = rtp_header(datagram) else {
            return false;
        };
        if pt != self.payload_type || !seq.is_multiple_of(self.every) {
            return false;
        }
        let first = self
            .dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ssrc, seq));
        if first {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        first
    }
}

/// Removes the datagrams `drops` picks from one received message (several datagrams of
/// `stride` bytes when the kernel coalesced them, GRO); returns its new length.
fn filter_message(
    buf: &mut [u8],
    len: usize,
    stride: usize,
    drops: &impl Fn(&[u8]) -> bool,
) -> usize {
    let stride = stride.max(1);
    let mut kept = 0;
    let mut at = 0;
    while at < len {
        let end = (at + stride).min(len);
        if !drops(&buf[at..end]) {
            buf.copy_within(at..end, kept);
            kept += end - at;
        }
        at = end;
    }
    kept
}

/// `inner.poll_recv` without the datagrams `drops` picks: what a wrapper that loses
/// inbound packets returns.
fn poll_recv_filtered(
    inner: &dyn AsyncUdpSocket,
    cx: &mut Context<'_>,
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
    drops: impl Fn(&[u8]) -> bool,
) -> Poll<io::Result<usize>> {
    loop {
        let n = match inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        // Filter each message, then close the gaps that emptied messages leave.
        let mut kept = 0;
        for i in 0..n {
            let len = filter_message(&mut bufs[i], meta[i].len, meta[i].stride, &drops);
            if len == 0 {
                continue;
            }
            meta[i].len = len;
            if kept != i {
                let (head, tail) = bufs.split_at_mut(i);
                head[kept][..len].copy_from_slice(&tail[0][..len]);
                meta[kept] = meta[i];
            }
            kept += 1;
        }
        if kept > 0 {
            return Poll::Ready(Ok(kept));
        }
        // Everything read was dropped: read again (the socket re-arms the waker when
        // nothing is ready).
    }
}

/// `impl AsyncUdpSocket` for a wrapper (field `inner`) that sends as is and loses the
/// inbound datagrams its own `drops(&self, &[u8]) -> bool` picks.
macro_rules! dropping_socket {
    ($wrapper:ty) => {
        impl AsyncUdpSocket for $wrapper {
            crate::delegate_socket_basics!();

            fn poll_send(
                &self,
                cx: &mut Context<'_>,
                transmit: &Transmit<'_>,
            ) -> Poll<io::Result<usize>> {
                self.inner.poll_send(cx, transmit)
            }

            fn poll_recv(
                &self,
                cx: &mut Context<'_>,
                bufs: &mut [IoSliceMut<'_>],
                meta: &mut [RecvMeta],
            ) -> Poll<io::Result<usize>> {
                poll_recv_filtered(self.inner.as_ref(), cx, bufs, meta, |d| self.drops(d))
            }
        }
    };
}

dropping_socket!(LossySocket);

/// How much a [`CappedSocket`] lets through at once above its rate: a few packets, the
/// burst a policer on a real link allows.
const CAP_BURST_BITS: f64 = 64_000.0;

/// A socket whose inbound RTP is policed to a rate that can be changed while it runs (0
/// bits per second: no cap): datagrams beyond the rate and a small burst are dropped, as a
/// downlink that carries less than is sent loses them. RTCP, STUN and DTLS always pass.
pub struct CappedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    rate: Arc<AtomicU64>,
    /// (tokens in bits, when last refilled).
    bucket: Mutex<(f64, Instant)>,
    dropped: Arc<AtomicU64>,
}

impl fmt::Debug for CappedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CappedSocket")
            .field("rate", &self.rate.load(Ordering::Relaxed))
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

impl CappedSocket {
    /// A runtime whose sockets let inbound RTP through at `rate` bits per second (0: all
    /// of it); `dropped` counts what they drop.
    pub fn runtime(rate: Arc<AtomicU64>, dropped: Arc<AtomicU64>) -> Arc<WrappedRuntime> {
        WrappedRuntime::new("tokio+capped", move |inner| {
            Arc::new(CappedSocket {
                inner,
                rate: Arc::clone(&rate),
                bucket: Mutex::new((CAP_BURST_BITS, Instant::now())),
                dropped: Arc::clone(&dropped),
            })
        })
    }

    fn drops(&self, datagram: &[u8]) -> bool {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 || rtp_header(datagram).is_none() {
            return false;
        }
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(bucket.1).as_secs_f64();
        bucket.0 = (bucket.0 + elapsed * rate as f64).min(CAP_BURST_BITS);
        bucket.1 = now;
        let bits = (datagram.len() * 8) as f64;
        if bucket.0 >= bits {
            bucket.0 -= bits;
            return false;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        true
    }
}

dropping_socket!(CappedSocket);

/// A socket that goes silent on demand: once its switch is on, everything sent is dropped
/// (reported as sent) and everything received is discarded. The peer stops answering
/// without any goodbye, the way a laptop that loses its network does.
pub struct SilenceSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    silent: Arc<AtomicBool>,
}

impl fmt::Debug for SilenceSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SilenceSocket")
            .field("silent", &self.silent.load(Ordering::Relaxed))
            .finish()
    }
}

impl SilenceSocket {
    /// A runtime whose sockets fall silent once `silent` is set.
    pub fn runtime(silent: Arc<AtomicBool>) -> Arc<WrappedRuntime> {
        WrappedRuntime::new("tokio+silence", move |inner| {
            Arc::new(SilenceSocket {
                inner,
                silent: Arc::clone(&silent),
            })
        })
    }

    fn is_silent(&self) -> bool {
        self.silent.load(Ordering::Relaxed)
    }
}

impl AsyncUdpSocket for SilenceSocket {
    crate::delegate_socket_basics!();

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        if self.is_silent() {
            return Poll::Ready(Ok(transmit.contents.len()));
        }
        self.inner.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.inner.poll_recv(cx, bufs, meta) {
                // Read and thrown away; read again (the socket re-arms the waker when
                // nothing is ready).
                Poll::Ready(Ok(_)) if self.is_silent() => continue,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_is_told_from_rtcp_stun_and_dtls() {
        let mut rtp = vec![0u8; 20];
        rtp[0] = 0x80;
        rtp[1] = 0x80 | 96; // marker + PT 96
        rtp[2..4].copy_from_slice(&7u16.to_be_bytes());
        rtp[8..12].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(rtp_header(&rtp), Some((9, 7, 96)));
        let mut rtcp = rtp.clone();
        rtcp[1] = 200; // SR
        assert_eq!(rtp_header(&rtcp), None);
        assert_eq!(rtp_header(&[0u8; 20]), None); // STUN
        assert_eq!(rtp_header(&[22u8; 20]), None); // DTLS
        assert_eq!(rtp_header(&rtp[..8]), None);
    }
}
