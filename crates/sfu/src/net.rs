//! Sockets and addresses: binding the media socket and choosing the host candidates.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Kernel socket buffer size for the media socket. The default (about 208 KB) lost 6 % of
/// bursty video at 20k packets/s on this machine; 4 MiB holds a few hundred ms of bursts.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Binds the shared media UDP socket, non-blocking, with large buffers.
pub fn bind_udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket.into())
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
