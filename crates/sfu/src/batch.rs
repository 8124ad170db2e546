//! Batched UDP socket calls: `recvmmsg` to read up to [`BATCH`] datagrams per system call,
//! and `sendmmsg` to send a batch of datagrams to many destinations per call, with UDP GSO
//! for a run of datagrams to one destination. A loopback send costs about 3 µs here, most
//! of it per call and per trip through the IP stack, so batching is the main lever.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use bytes::BytesMut;

/// Datagrams per system call. 32 is where the per-call cost is well amortized and the
/// batch still fits in L1/L2 with room to spare.
pub const BATCH: usize = 32;

/// Receive slot size: a full Ethernet MTU datagram with room for tunnels; longer ones
/// are truncated by the kernel and then fail SRTP authentication (dropped, counted).
pub const SLOT: usize = 2048;

/// Reusable state for `recvmmsg`. Calls read into a block of `BATCH * SLOT` bytes and
/// split each datagram off it without copying. Once every datagram of a used-up block has
/// been dropped (webrtc-rs decrypts into buffers of its own), the block is taken back as it
/// is, so steady-state receiving allocates nothing; a block some datagram still holds is
/// left to it and a new one allocated.
pub struct RecvBatch {
    block: BytesMut,
    addrs: [libc::sockaddr_storage; BATCH],
    iovecs: [libc::iovec; BATCH],
    headers: [libc::mmsghdr; BATCH],
}

// SAFETY: the raw pointers in the headers only ever point into this struct's own buffers,
// are rewritten at the start of every `recv`, and are never dereferenced outside it.
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        // SAFETY: these are plain C structs for which all-zero bytes are a valid value.
        unsafe {
            Self {
                block: BytesMut::new(),
                addrs: MaybeUninit::zeroed().assume_init(),
                iovecs: MaybeUninit::zeroed().assume_init(),
                headers: MaybeUninit::zeroed().assume_init(),
            }
        }
    }
}

impl RecvBatch {
    /// Reads up to [`BATCH`] datagrams without blocking; calls `each(from, datagram)` for
    /// every one. Returns how many were read (`WouldBlock` when none were waiting).
    pub fn recv(
        &mut self,
        fd: RawFd,
        mut each: impl FnMut(SocketAddr, BytesMut),
    ) -> io::Result<usize> {
        // Read into what is left of the current block; only when fewer than a quarter of
        // the slots remain, start over: in the same block when it is ours alone again (no
        // allocation), else in a new one, so even one datagram per call is amortized.
        if self.block.capacity() / SLOT < BATCH / 4 {
            self.block.clear();
            self.block.reserve(BATCH * SLOT);
        }
        let slots = (self.block.capacity() / SLOT).min(BATCH);
        self.block.resize(slots * SLOT, 0);
        let base = self.block.as_mut_ptr();
        for i in 0..slots {
            self.iovecs[i] = libc::iovec {
                // SAFETY: slot i lies inside the block, which holds `slots * SLOT` bytes.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            };
            let header = &mut self.headers[i].msg_hdr;
            header.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &mut self.iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by `self` for the whole call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let mut datagram = self.block.split_to(SLOT);
            datagram.truncate(self.headers[i].msg_len as usize);
            if let Some(from) = to_socket_addr(&self.addrs[i]) {
                each(from, datagram);
            }
        }
        // Whatever slots were not used stay in the block for the next call.
        self.block.clear();
        Ok(n)
    }
}

/// Most datagrams one GSO message carries. The kernel accepts 64 (`UDP_MAX_SEGMENTS`);
/// a frame's burst to one subscriber is about 10.
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Most bytes one GSO message carries: a UDP datagram's payload limit, with headroom.
const GSO_MAX_BYTES: usize = 60_000;

/// iovecs per `sendmmsg` call, shared by its messages (one per datagram).
const IOVECS: usize = 4 * BATCH;

/// Room for one `UDP_SEGMENT` control message (`CMSG_SPACE(2)` is 24 bytes on Linux),
/// as u64s so that it is aligned for `cmsghdr`.
const CONTROL_WORDS: usize = 4;

/// Outgoing datagrams gathered during one pass of the worker, sent with `sendmmsg`.
///
/// Consecutive datagrams to one destination (a subscriber's share of a frame: the worker
/// drains each peer in one go) go out as one message with UDP GSO (`UDP_SEGMENT`) when they
/// have one size, the last possibly shorter: the kernel then routes and queues the run
/// once instead of once per datagram. The datagrams are gathered by iovecs, not copied.
/// If the kernel or the route refuses GSO, the batch turns it off for good and sends one
/// message per datagram.
pub struct SendBatch {
    queue: Vec<(SocketAddr, BytesMut)>,
    gso: bool,
    scratch: Box<Scratch>,
}

/// The C structures of one `sendmmsg` call, kept so that a call allocates nothing.
struct Scratch {
    addrs: [libc::sockaddr_storage; BATCH],
    iovecs: [libc::iovec; IOVECS],
    headers: [libc::mmsghdr; BATCH],
    controls: [[u64; CONTROL_WORDS]; BATCH],
    /// Datagrams in each message.
    segments: [usize; BATCH],
}

// SAFETY: the raw pointers in `Scratch` only point into the scratch itself and the
// queue's datagrams, are rewritten before every call and not used after it.
unsafe impl Send for SendBatch {}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            queue: Vec::new(),
            gso: true,
            // SAFETY: all-zero bytes are valid for these C structs and integers.
            scratch: Box::new(unsafe { MaybeUninit::zeroed().assume_init() }),
        }
    }
}

impl SendBatch {
    pub fn push(&mut self, to: SocketAddr, datagram: BytesMut) {
        self.queue.push((to, datagram));
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether runs to one destination still go out with GSO.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Sends everything queued, up to [`BATCH`] messages per call. Returns (sent,
    /// dropped) in datagrams: those the kernel would not take right now are dropped, never
    /// waited for.
    pub fn flush(&mut self, fd: RawFd) -> (usize, usize) {
        let mut sent = 0;
        let mut dropped = 0;
        let mut start = 0;
        while start < self.queue.len() {
            let messages = self.prepare(start);
            let first = self.scratch.segments[0];
            match self.send_prepared(fd, messages) {
                Ok(0) => {
                    dropped += first;
                    start += first;
                }
                Ok(n) => {
                    let datagrams: usize = self.scratch.segments[..n].iter().sum();
                    sent += datagrams;
                    start += datagrams;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if first > 1 && refuses_gso(&err) => {
                    tracing::info!(%err, "UDP GSO refused; sending one datagram per message");
                    self.gso = false;
                }
                Err(err) => {
                    // Full buffer or an unreachable destination: drop the first message
                    // and go on with the rest.
                    tracing::trace!(%err, to = %self.queue[start].0, "sendmmsg");
                    dropped += first;
                    start += first;
                }
            }
        }
        self.queue.clear();
        (sent, dropped)
    }

    /// Fills the scratch with messages for the queue from `start`; returns how many.
    fn prepare(&mut self, start: usize) -> usize {
        let queue = &self.queue;
        let s = &mut *self.scratch;
        let mut messages = 0;
        let mut iov = 0;
        let mut i = start;
        while i < queue.len() && messages < BATCH {
            let run = if self.gso { gso_run(&queue[i..]) } else { 1 };
            if iov + run > IOVECS {
                break;
            }
            let to = &queue[i].0;
            let name_len = from_socket_addr(to, &mut s.addrs[messages]);
            for (k, (_, datagram)) in queue[i..i + run].iter().enumerate() {
                s.iovecs[iov + k] = libc::iovec {
                    iov_base: datagram.as_ptr() as *mut libc::c_void,
                    iov_len: datagram.len(),
                };
            }
            let header = &mut s.headers[messages].msg_hdr;
            header.msg_name = (&mut s.addrs[messages] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = name_len;
            header.msg_iov = &mut s.iovecs[iov];
            header.msg_iovlen = run;
            if run > 1 {
                let control = &mut s.controls[messages];
                set_segment_size(header, control, queue[i].1.len() as u16);
            } else {
                header.msg_control = std::ptr::null_mut();
                header.msg_controllen = 0;
            }
            s.segments[messages] = run;
            messages += 1;
            iov += run;
            i += run;
        }
        messages
    }

    fn send_prepared(&mut self, fd: RawFd, messages: usize) -> io::Result<usize> {
        // SAFETY: the first `messages` headers point at the scratch's addresses, iovecs and
        // control buffers and at queued datagrams, all alive and unchanged during the call;
        // the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.scratch.headers.as_mut_ptr(),
                messages as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// How many datagrams from the start of `queue` can go as one GSO message: same
/// destination, the same size (`UDP_SEGMENT`), the last possibly shorter.
fn gso_run(queue: &[(SocketAddr, BytesMut)]) -> usize {
    let (to, first) = &queue[0];
    let size = first.len();
    let mut total = size;
    let mut run = 1;
    for (next_to, next) in &queue[1..] {
        if run == GSO_MAX_SEGMENTS
            || next_to != to
            || next.len() > size
            || total + next.len() > GSO_MAX_BYTES
        {
            break;
        }
        total += next.len();
        run += 1;
        if next.len() < size {
            break;
        }
    }
    run
}

/// Attaches a `UDP_SEGMENT` control message for `size`-byte segments to `header`.
fn set_segment_size(header: &mut libc::msghdr, control: &mut [u64; CONTROL_WORDS], size: u16) {
    header.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a length.
    header.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    // SAFETY: `control` is 8-byte aligned and at least CMSG_SPACE(2) bytes long, so the
    // first header and its 2 data bytes lie inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(header);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
    }
}

/// Errors with which a kernel, device or route refuses a GSO message.
fn refuses_gso(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT)
    )
}

fn to_socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn from_socket_addr(addr: &SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let sin = unsafe {
                &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
            let sin6 = unsafe {
                &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The raw descriptor of a tokio UDP socket.
pub fn raw_fd(socket: &tokio::net::UdpSocket) -> RawFd {
    socket.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `count` datagrams from `socket` (5 s at most).
    async fn receive(socket: &tokio::net::UdpSocket, count: usize) -> Vec<(SocketAddr, BytesMut)> {
        let mut got = Vec::new();
        let mut batch = RecvBatch::default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < count && std::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(200), socket.readable())
                .await;
            let _ = socket.try_io(tokio::io::Interest::READABLE, || {
                batch.recv(raw_fd(socket), |from, d| got.push((from, d)))
            });
        }
        got
    }

    #[test]
    fn a_used_up_block_is_taken_back_once_its_datagrams_are_dropped() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        let mut batch = RecvBatch::default();
        // One full batch of datagrams, read at once: the block is used up.
        let round = |batch: &mut RecvBatch| {
            for i in 0..BATCH {
                tx.send_to(&[i as u8; 100], to).expect("send");
            }
            let mut got = Vec::new();
            let n = batch
                .recv(rx.as_raw_fd(), |_, d| got.push(d))
                .expect("recvmmsg");
            assert_eq!(n, BATCH);
            assert!(got.iter().enumerate().all(|(i, d)| d[..] == [i as u8; 100]));
            got
        };
        let first = round(&mut batch);
        let block = first[0].as_ptr();
        drop(first);
        let second = round(&mut batch);
        assert_eq!(
            second[0].as_ptr(),
            block,
            "the dropped block is read into again"
        );
        // A datagram still held keeps its block: the next one is new.
        let held = second.into_iter().last();
        let third = round(&mut batch);
        assert_ne!(third[0].as_ptr(), block);
        drop(held);
    }

    #[test]
    fn runs_to_one_destination_group_by_size() {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let queue = |sizes: &[(SocketAddr, usize)]| -> Vec<(SocketAddr, BytesMut)> {
            sizes
                .iter()
                .map(|&(to, n)| (to, BytesMut::zeroed(n)))
                .collect()
        };
        // Equal sizes, then a shorter last one ends the run.
        assert_eq!(gso_run(&queue(&[(a, 10), (a, 10), (a, 4), (a, 10)])), 3);
        // A longer one cannot follow.
        assert_eq!(gso_run(&queue(&[(a, 10), (a, 12)])), 1);
        // Another destination ends it.
        assert_eq!(gso_run(&queue(&[(a, 10), (a, 10), (b, 10)])), 2);
        // At most GSO_MAX_SEGMENTS.
        let long = vec![(a, 10); GSO_MAX_SEGMENTS + 5];
        assert_eq!(gso_run(&queue(&long)), GSO_MAX_SEGMENTS);
        // At most GSO_MAX_BYTES.
        let big = vec![(a, 1200); 60];
        assert_eq!(gso_run(&queue(&big)), GSO_MAX_BYTES / 1200);
    }

    #[tokio::test]
    async fn runs_of_mixed_sizes_and_destinations_arrive_whole_and_in_order() {
        let a = crate::net::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let b = crate::net::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let c = crate::net::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let (to_b, to_c) = (b.local_addr().expect("addr"), c.local_addr().expect("addr"));
        // Per destination: a frame-like burst (9 full, 1 short), an audio-sized one, and
        // more than one GSO message's worth.
        let mut sizes = vec![1100; 9];
        sizes.push(516);
        sizes.push(80);
        sizes.extend(std::iter::repeat_n(300, GSO_MAX_SEGMENTS + 3));
        let mut out = SendBatch::default();
        for (i, &size) in sizes.iter().enumerate() {
            for to in [to_b, to_c] {
                let mut d = BytesMut::zeroed(size);
                d[0] = i as u8;
                out.push(to, d);
            }
        }
        // Interleaved destinations make runs of one; now a long run per destination too.
        for to in [to_b, to_c] {
            for (i, &size) in sizes.iter().enumerate() {
                let mut d = BytesMut::zeroed(size);
                d[0] = i as u8;
                out.push(to, d);
            }
        }
        assert_eq!(out.flush(raw_fd(&a)), (4 * sizes.len(), 0));
        assert!(out.gso(), "loopback takes GSO");
        for socket in [&b, &c] {
            let got = receive(socket, 2 * sizes.len()).await;
            assert_eq!(got.len(), 2 * sizes.len());
            let expected = sizes.iter().enumerate().chain(sizes.iter().enumerate());
            for ((_, d), (i, &size)) in got.iter().zip(expected) {
                assert_eq!((d.len(), d[0]), (size, i as u8));
            }
        }
    }

    #[tokio::test]
    async fn a_socket_refusing_gso_falls_back_to_one_datagram_per_message() {
        let a = crate::net::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let b = crate::net::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
        // SO_NO_CHECK (11 on Linux; libc does not export it for this target): a socket
        // that sends without UDP checksums cannot use GSO, and the kernel says EINVAL.
        const SO_NO_CHECK: libc::c_int = 11;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option value of the size given.
        let rc = unsafe {
            libc::setsockopt(
                raw_fd(&a),
                libc::SOL_SOCKET,
                SO_NO_CHECK,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt: {}", io::Error::last_os_error());
        let to = b.local_addr().expect("addr");
        let mut out = SendBatch::default();
        for i in 0..12u8 {
            out.push(to, BytesMut::from(&[i; 100][..]));
        }
        assert_eq!(out.flush(raw_fd(&a)), (12, 0));
        assert!(!out.gso());
        let got = receive(&b, 12).await;
        let firsts: Vec<u8> = got.iter().map(|(_, d)| d[0]).collect();
        assert_eq!(firsts, (0..12).collect::<Vec<u8>>());
    }

    #[tokio::test]
    async fn a_batch_goes_out_and_comes_back_in_order() {
        let a = crate::net::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let b = crate::net::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let to = b.local_addr().expect("addr");
        let mut out = SendBatch::default();
        for i in 0..40u8 {
            out.push(to, BytesMut::from(&[i; 10][..]));
        }
        assert_eq!(out.flush(raw_fd(&a)), (40, 0));
        assert!(out.is_empty());
        let mut got = Vec::new();
        let mut batch = RecvBatch::default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 40 && std::time::Instant::now() < deadline {
            b.readable().await.expect("readable");
            let _ = b.try_io(tokio::io::Interest::READABLE, || {
                batch.recv(raw_fd(&b), |from, d| got.push((from, d)))
            });
        }
        assert_eq!(got.len(), 40);
        let from = a.local_addr().expect("addr");
        for (i, (sender, d)) in got.iter().enumerate() {
            assert_eq!(*sender, from);
            assert_eq!(&d[..], &[i as u8; 10][..]);
        }
    }
}
