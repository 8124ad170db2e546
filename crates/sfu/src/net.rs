//! Sockets and addresses: binding the media socket and choosing the host candidates.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Kernel socket buffer size for each media socket. The default (about 208 KB) lost 6 % of
/// bursty video at 20k packets/s on this machine; 4 MiB holds a few hundred ms of bursts.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Binds the shared media UDP socket, non-blocking, with large buffers.
pub fn bind_udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    bind_udp_shared(addr, false)
}

/// Binds the first media socket; with `shared`, others can join its port with
/// [`bind_udp_more`] (`SO_REUSEPORT`), one per media worker. The kernel then spreads the
/// datagrams of different remote addresses over them (a hash of the 4-tuple, so one remote
/// address always reaches the same socket), and any of them sends with that port as its
/// source.
///
/// A port that another socket holds is refused (`AddrInUse`) even when `shared`: a plain
/// probe bind comes first, so a second server started on the same port fails instead of
/// silently splitting this one's traffic.
pub fn bind_udp_shared(addr: SocketAddr, shared: bool) -> io::Result<tokio::net::UdpSocket> {
    if shared && addr.port() != 0 {
        drop(std::net::UdpSocket::bind(addr)?);
    }
    bind_one(addr, shared)
}

/// Binds `n` more sockets on `first`'s address and port (see [`bind_udp_shared`]).
pub fn bind_udp_more(
    first: &tokio::net::UdpSocket,
    n: usize,
) -> io::Result<Vec<tokio::net::UdpSocket>> {
    let at = first.local_addr()?;
    (0..n).map(|_| bind_one(at, true)).collect()
}

fn bind_one(addr: SocketAddr, shared: bool) -> io::Result<tokio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    set_buffers(&socket);
    if shared {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// Asks for [`SOCKET_BUFFER_BYTES`] of receive and send buffer. `SO_RCVBUFFORCE` (root or
/// `CAP_NET_ADMIN`) goes past `net.core.rmem_max`, whose default of about 208 KB overflows
/// under bursts; without the capability the plain option takes what the cap allows, and
/// [`receive_buffer_bytes`] says how much that was.
pub fn set_buffers(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let size = SOCKET_BUFFER_BYTES as libc::c_int;
        for option in [force, plain] {
            // SAFETY: `fd` is an open socket and the value is a c_int of the given size.
            let set = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    option,
                    (&raw const size).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if set == 0 {
                break;
            }
        }
    }
}

/// The receive buffer the kernel gave a media socket, in bytes.
pub fn receive_buffer_bytes(socket: &tokio::net::UdpSocket) -> io::Result<usize> {
    socket2::SockRef::from(socket).recv_buffer_size()
}

/// The host candidates to announce for a socket bound at `bound`.
///
/// - With announced IPs (NAT 1:1), exactly those, on the bound port.
/// - With a specific bind address, that address.
/// - With a wildcard bind, every up IPv4 interface address, loopback included, so that a
///   browser on the same machine or the same LAN connects with the defaults.
pub fn host_candidates(bound: SocketAddr, announced: &[IpAddr]) -> Vec<SocketAddr> {
    if !announced.is_empty() {
        return announced
            .iter()
            .map(|ip| SocketAddr::new(*ip, bound.port()))
            .collect();
    }
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let mut ips = interface_ipv4s();
    if ips.is_empty() {
        ips.push(Ipv4Addr::LOCALHOST);
    }
    // LAN addresses first: browsers try candidates in priority order.
    ips.sort_by_key(|ip| ip.is_loopback());
    ips.into_iter()
        .map(|ip| SocketAddr::new(IpAddr::V4(ip), bound.port()))
        .collect()
}

/// IPv4 addresses of the interfaces that are up, without link-local ones.
pub fn interface_ipv4s() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we own until freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cursor };
        cursor = ifa.ifa_next;
        let up = ifa.ifa_flags & (libc::IFF_UP as u32) != 0;
        if !up || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: the family is AF_INET, so the address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !ip.is_link_local() && !out.contains(&ip) {
            out.push(ip);
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_shared_port_spreads_senders_and_keeps_each_on_one_socket() {
        let first = bind_udp_shared("127.0.0.1:0".parse().expect("addr"), true).expect("bind");
        let port = first.local_addr().expect("addr");
        let mut group = vec![first];
        group.extend(bind_udp_more(&group[0], 1).expect("more"));
        assert_eq!(group[1].local_addr().expect("addr"), port);
        let senders: Vec<std::net::UdpSocket> = (0..16)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("client"))
            .collect();
        for _ in 0..3 {
            for sender in &senders {
                sender.send_to(b"x", port).expect("send");
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // Which socket got each sender's datagrams.
        let mut seen: Vec<Vec<SocketAddr>> = vec![Vec::new(); 2];
        let mut buf = [0u8; 16];
        for (i, socket) in group.iter().enumerate() {
            while let Ok((_, from)) = socket.try_recv_from(&mut buf) {
                seen[i].push(from);
            }
        }
        assert_eq!(seen[0].len() + seen[1].len(), 48);
        assert!(
            !seen[0].is_empty() && !seen[1].is_empty(),
            "16 senders all hashed to one socket: {seen:?}"
        );
        for from in &seen[0] {
            assert!(!seen[1].contains(from), "{from} reached both sockets");
        }
        // Either socket sends from the shared port.
        let reply = &senders[0];
        reply
            .set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .expect("timeout");
        group[1]
            .send_to(b"y", reply.local_addr().expect("addr"))
            .await
            .expect("send");
        let (_, from) = reply.recv_from(&mut buf).expect("reply");
        assert_eq!(from, port);
    }

    #[tokio::test]
    async fn a_shared_port_that_another_server_shares_is_refused() {
        // Another server's group: without the probe, this one would join it.
        let taken = bind_udp_shared("127.0.0.1:0".parse().expect("addr"), true).expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = bind_udp_shared(addr, true).expect_err("the port is taken");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn announced_ips_win() {
        let bound: SocketAddr = "0.0.0.0:50000".parse().expect("addr");
        let public: IpAddr = "203.0.113.7".parse().expect("ip");
        assert_eq!(
            host_candidates(bound, &[public]),
            vec!["203.0.113.7:50000".parse::<SocketAddr>().expect("addr")]
        );
    }

    #[test]
    fn a_specific_bind_is_its_own_candidate() {
        let bound: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        assert_eq!(host_candidates(bound, &[]), vec![bound]);
    }

    #[test]
    fn a_wildcard_bind_includes_loopback() {
        let bound: SocketAddr = "0.0.0.0:4000".parse().expect("addr");
        let all = host_candidates(bound, &[]);
        assert!(
            all.contains(&"127.0.0.1:4000".parse().expect("addr")),
            "{all:?}"
        );
    }
}
