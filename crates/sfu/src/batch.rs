//! Batched UDP socket calls: `recvmmsg` to read up to [`BATCH`] datagrams per system call,
//! and `sendmmsg` to send a batch of datagrams to many destinations per call. A loopback
//! send costs about 3 µs here, most of it per call, so batching is the main lever.

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
/// split each datagram off it without copying, so a block costs one allocation for many
/// datagrams, not one each.
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
        // Read into what is left of the current block; start a new block only when fewer
        // than a quarter of the slots remain, so even one datagram per call is amortized.
        if self.block.capacity() / SLOT < BATCH / 4 {
            self.block = BytesMut::with_capacity(BATCH * SLOT);
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

/// Outgoing datagrams gathered during one pass of the worker, sent with `sendmmsg`.
#[derive(Default)]
pub struct SendBatch {
    queue: Vec<(SocketAddr, BytesMut)>,
}

impl SendBatch {
    pub fn push(&mut self, to: SocketAddr, datagram: BytesMut) {
        self.queue.push((to, datagram));
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends everything queued, [`BATCH`] datagrams per call. Returns (sent, dropped):
    /// datagrams the kernel would not take right now are dropped, never waited for.
    pub fn flush(&mut self, fd: RawFd) -> (usize, usize) {
        let mut sent = 0;
        let mut dropped = 0;
        let mut start = 0;
        while start < self.queue.len() {
            let end = (start + BATCH).min(self.queue.len());
            match send_chunk(fd, &self.queue[start..end]) {
                Ok(n) if n > 0 => {
                    sent += n;
                    start += n;
                }
                Ok(_) => {
                    dropped += 1;
                    start += 1;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    // Full buffer or an unreachable destination: drop the first one and
                    // go on with the rest.
                    tracing::trace!(%err, to = %self.queue[start].0, "sendmmsg");
                    dropped += 1;
                    start += 1;
                }
            }
        }
        self.queue.clear();
        (sent, dropped)
    }
}

fn send_chunk(fd: RawFd, chunk: &[(SocketAddr, BytesMut)]) -> io::Result<usize> {
    // SAFETY: all-zero bytes are valid for these C structs.
    let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut iovecs: [libc::iovec; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    for (i, (to, datagram)) in chunk.iter().enumerate() {
        let len = from_socket_addr(to, &mut addrs[i]);
        iovecs[i] = libc::iovec {
            iov_base: datagram.as_ptr() as *mut libc::c_void,
            iov_len: datagram.len(),
        };
        let header = &mut headers[i].msg_hdr;
        header.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
        header.msg_namelen = len;
        header.msg_iov = &mut iovecs[i];
        header.msg_iovlen = 1;
    }
    // SAFETY: the headers point at `addrs`, `iovecs` and the datagrams, all alive here;
    // the kernel only reads the iovec buffers.
    let n = unsafe {
        libc::sendmmsg(
            fd,
            headers.as_mut_ptr(),
            chunk.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
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
