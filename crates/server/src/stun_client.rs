//! A small STUN/TURN client (RFC 8489, RFC 8656) for what the server itself asks of STUN and
//! TURN servers:
//! - a Binding request, to learn this host's public address (STUN discovery at start-up);
//! - an Allocate with long-term credentials, to prove that a TURN server accepts the
//!   credentials we hand out (`chorus doctor`, and the tests against coturn).
//!
//! Messages are built and parsed here ([`Request`], [`Response`]); [`Channel`] carries them
//! over UDP (with retransmissions) or TCP (STUN framing: the header's length field).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER_LEN: usize = 20;

/// Methods.
pub const BINDING: u16 = 0x001;
pub const ALLOCATE: u16 = 0x003;
pub const REFRESH: u16 = 0x004;

/// Attribute types.
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_LIFETIME: u16 = 0x000D;
const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
const ATTR_REALM: u16 = 0x0014;
const ATTR_NONCE: u16 = 0x0015;
const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// UDP, as REQUESTED-TRANSPORT names it (the protocol number).
const TRANSPORT_UDP: u8 = 17;

/// The class of a STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// A fresh 96-bit transaction id. Not a secret; only has to be unlikely to repeat.
pub fn transaction_id() -> [u8; 12] {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut id = [0u8; 12];
    for chunk in id.chunks_mut(6) {
        // RandomState is seeded randomly per process (and per call after the first).
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        chunk.copy_from_slice(&h.finish().to_be_bytes()[..6]);
    }
    id
}

/// A request being built: header, then attributes in order, then optional MESSAGE-INTEGRITY.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: u16,
    pub transaction_id: [u8; 12],
    attrs: Vec<u8>,
}

impl Request {
    pub fn new(method: u16) -> Self {
        Self {
            method,
            transaction_id: transaction_id(),
            attrs: Vec::new(),
        }
    }

    /// Appends one attribute (padded to 4 bytes).
    pub fn attr(mut self, kind: u16, value: &[u8]) -> Self {
        self.attrs.extend_from_slice(&kind.to_be_bytes());
        self.attrs
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.attrs.extend_from_slice(value);
        while !self.attrs.len().is_multiple_of(4) {
            self.attrs.push(0);
        }
        self
    }

    /// The encoded message; with `key`, a MESSAGE-INTEGRITY attribute (HMAC-SHA1 over the
    /// message up to it, the length field already counting it) ends it.
    pub fn encode(&self, key: Option<&[u8]>) -> Vec<u8> {
        let integrity_len = if key.is_some() { 24 } else { 0 };
        let mut out = Vec::with_capacity(HEADER_LEN + self.attrs.len() + integrity_len);
        out.extend_from_slice(&message_type(self.method, Class::Request).to_be_bytes());
        out.extend_from_slice(&((self.attrs.len() + integrity_len) as u16).to_be_bytes());
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&self.transaction_id);
        out.extend_from_slice(&self.attrs);
        if let Some(key) = key {
            let mut mac =
                Hmac::<Sha1>::new_from_slice(key).expect("HMAC-SHA1 takes keys of any length");
            mac.update(&out);
            let digest = mac.finalize().into_bytes();
            out.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
            out.extend_from_slice(&20u16.to_be_bytes());
            out.extend_from_slice(&digest);
        }
        out
    }
}

/// The long-term credential key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2,
/// without SASLprep: Chorus's usernames and coturn secrets are ASCII).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(format!("{username}:{realm}:{password}").as_bytes());
    md5.finalize().into()
}

fn message_type(method: u16, class: Class) -> u16 {
    let c = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 1) << 4)
        | ((c & 2) << 7)
}

/// A parsed STUN message.
#[derive(Debug, Clone)]
pub struct Response {
    pub method: u16,
    pub class: Class,
    pub transaction_id: [u8; 12],
    /// `(type, value)` in order, without padding.
    pub attrs: Vec<(u16, Vec<u8>)>,
}

/// Why a datagram or stream chunk is not a STUN message we can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(&'static str);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad STUN message: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

impl Response {
    pub fn parse(buf: &[u8]) -> Result<Self, ParseError> {
        if buf.len() < HEADER_LEN {
            return Err(ParseError("shorter than a header"));
        }
        let kind = u16::from_be_bytes([buf[0], buf[1]]);
        if kind & 0xC000 != 0 {
            return Err(ParseError("first two bits are not zero"));
        }
        if buf[4..8] != MAGIC_COOKIE.to_be_bytes() {
            return Err(ParseError("no magic cookie"));
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        let body = buf
            .get(HEADER_LEN..HEADER_LEN + len)
            .ok_or(ParseError("truncated"))?;
        let class = match ((kind >> 4) & 1) | ((kind >> 7) & 2) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };
        let method = (kind & 0x000F) | ((kind >> 1) & 0x0070) | ((kind >> 2) & 0x0F80);
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&buf[8..20]);
        let mut attrs = Vec::new();
        let mut rest = body;
        while rest.len() >= 4 {
            let t = u16::from_be_bytes([rest[0], rest[1]]);
            let l = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            let value = rest
                .get(4..4 + l)
                .ok_or(ParseError("attribute runs past the end"))?;
            attrs.push((t, value.to_vec()));
            rest = rest.get(4 + ((l + 3) & !3)..).unwrap_or(&[]);
        }
        Ok(Self {
            method,
            class,
            transaction_id,
            attrs,
        })
    }

    fn attr(&self, kind: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(t, _)| *t == kind)
            .map(|(_, v)| v.as_slice())
    }

    fn text(&self, kind: u16) -> Option<String> {
        self.attr(kind)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// XOR-MAPPED-ADDRESS (or, from an old server, MAPPED-ADDRESS).
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.attr(ATTR_XOR_MAPPED_ADDRESS)
            .and_then(|v| xor_address(v, &self.transaction_id))
            .or_else(|| self.attr(ATTR_MAPPED_ADDRESS).and_then(plain_address))
    }

    /// XOR-RELAYED-ADDRESS of an Allocate success.
    pub fn relayed_address(&self) -> Option<SocketAddr> {
        self.attr(ATTR_XOR_RELAYED_ADDRESS)
            .and_then(|v| xor_address(v, &self.transaction_id))
    }

    /// ERROR-CODE: `(code, reason)`.
    pub fn error_code(&self) -> Option<(u16, String)> {
        let v = self.attr(ATTR_ERROR_CODE)?;
        if v.len() < 4 {
            return None;
        }
        let code = u16::from(v[2] & 0x07) * 100 + u16::from(v[3]);
        Some((code, String::from_utf8_lossy(&v[4..]).into_owned()))
    }
}

/// Encodes `addr` as an XOR-MAPPED-ADDRESS value (for in-test STUN responders).
pub fn encode_xor_address(addr: SocketAddr, transaction_id: &[u8; 12]) -> Vec<u8> {
    let mut out = vec![0u8];
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut mask = MAGIC_COOKIE.to_be_bytes().to_vec();
    mask.extend_from_slice(transaction_id);
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(0x01);
            out.extend_from_slice(&port.to_be_bytes());
            out.extend(ip.octets().iter().zip(&mask).map(|(a, m)| a ^ m));
        }
        IpAddr::V6(ip) => {
            out.push(0x02);
            out.extend_from_slice(&port.to_be_bytes());
            out.extend(ip.octets().iter().zip(&mask).map(|(a, m)| a ^ m));
        }
    }
    out
}

/// Encodes a success response to `request` with the given XOR-MAPPED-ADDRESS (for in-test
/// STUN responders; no integrity).
pub fn binding_success(request: &Response, mapped: SocketAddr) -> Vec<u8> {
    let value = encode_xor_address(mapped, &request.transaction_id);
    let mut out = Vec::new();
    out.extend_from_slice(&message_type(BINDING, Class::Success).to_be_bytes());
    out.extend_from_slice(&((4 + value.len()) as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(&request.transaction_id);
    out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(&value);
    out
}

fn xor_address(v: &[u8], transaction_id: &[u8; 12]) -> Option<SocketAddr> {
    let mut mask = MAGIC_COOKIE.to_be_bytes().to_vec();
    mask.extend_from_slice(transaction_id);
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match v.get(1)? {
        0x01 => {
            let b: [u8; 4] = v.get(4..8)?.try_into().ok()?;
            let x: Vec<u8> = b.iter().zip(&mask).map(|(a, m)| a ^ m).collect();
            IpAddr::V4(Ipv4Addr::new(x[0], x[1], x[2], x[3]))
        }
        0x02 => {
            let b: [u8; 16] = v.get(4..20)?.try_into().ok()?;
            let mut x = [0u8; 16];
            for (i, (a, m)) in b.iter().zip(&mask).enumerate() {
                x[i] = a ^ m;
            }
            IpAddr::V6(Ipv6Addr::from(x))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn plain_address(v: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]);
    let ip = match v.get(1)? {
        0x01 => {
            let b: [u8; 4] = v.get(4..8)?.try_into().ok()?;
            IpAddr::V4(Ipv4Addr::from(b))
        }
        0x02 => {
            let b: [u8; 16] = v.get(4..20)?.try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// What went wrong talking to a STUN or TURN server.
#[derive(Debug)]
pub enum ProbeError {
    /// The server did not answer in time (nothing listening, a firewall, a wrong port).
    Timeout(Duration),
    /// A socket error (connection refused, no route).
    Io(io::Error),
    /// The server answered with an error response.
    Refused { code: u16, reason: String },
    /// The server answered something we cannot use.
    Protocol(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(d) => write!(f, "no answer within {d:?}"),
            Self::Io(err) => write!(f, "{err}"),
            Self::Refused { code, reason } => write!(f, "refused: {code} {reason}"),
            Self::Protocol(what) => write!(f, "unexpected answer: {what}"),
        }
    }
}

impl std::error::Error for ProbeError {}

impl From<io::Error> for ProbeError {
    fn from(err: io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Self::Timeout(Duration::ZERO),
            _ => Self::Io(err),
        }
    }
}

/// A connection to one STUN/TURN server, over UDP or TCP (blocking, with deadlines).
pub enum Channel {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

impl Channel {
    /// A UDP socket on an ephemeral port, "connected" to `server`.
    pub fn udp(server: SocketAddr) -> io::Result<Self> {
        let bind: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind)?;
        Ok(Self::Udp(socket, server))
    }

    /// A TCP connection to `server`.
    pub fn tcp(server: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&server, timeout)?;
        stream.set_nodelay(true)?;
        Ok(Self::Tcp(stream))
    }

    /// Sends `request` and waits for the response with the same transaction id, within
    /// `timeout`. Over UDP the request is retransmitted (500 ms, then doubling).
    pub fn transact(
        &mut self,
        request: &Request,
        key: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Response, ProbeError> {
        let bytes = request.encode(key);
        let deadline = Instant::now() + timeout;
        match self {
            Self::Udp(socket, server) => {
                let mut rto = Duration::from_millis(500);
                let mut buf = [0u8; 2048];
                loop {
                    socket.send_to(&bytes, *server)?;
                    let resend_at = (Instant::now() + rto).min(deadline);
                    rto *= 2;
                    loop {
                        let now = Instant::now();
                        if now >= resend_at {
                            break;
                        }
                        socket.set_read_timeout(Some(resend_at - now))?;
                        match socket.recv_from(&mut buf) {
                            Ok((n, from)) if from == *server => {
                                if let Ok(resp) = Response::parse(&buf[..n])
                                    && resp.transaction_id == request.transaction_id
                                {
                                    return Ok(resp);
                                }
                            }
                            Ok(_) => {}
                            Err(err)
                                if matches!(
                                    err.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                                ) => {}
                            Err(err) => return Err(ProbeError::Io(err)),
                        }
                    }
                    if Instant::now() >= deadline {
                        return Err(ProbeError::Timeout(timeout));
                    }
                }
            }
            Self::Tcp(stream) => {
                stream.write_all(&bytes)?;
                loop {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(ProbeError::Timeout(timeout));
                    }
                    stream.set_read_timeout(Some(deadline - now))?;
                    let mut header = [0u8; HEADER_LEN];
                    read_exact(stream, &mut header, timeout)?;
                    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
                    let mut msg = header.to_vec();
                    msg.resize(HEADER_LEN + len, 0);
                    read_exact(stream, &mut msg[HEADER_LEN..], timeout)?;
                    let resp =
                        Response::parse(&msg).map_err(|e| ProbeError::Protocol(e.to_string()))?;
                    if resp.transaction_id == request.transaction_id {
                        return Ok(resp);
                    }
                }
            }
        }
    }
}

fn read_exact(stream: &mut TcpStream, buf: &mut [u8], timeout: Duration) -> Result<(), ProbeError> {
    match stream.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(ProbeError::Timeout(timeout))
        }
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Err(ProbeError::Protocol(
            "the server closed the connection".into(),
        )),
        Err(err) => Err(ProbeError::Io(err)),
    }
}

/// Asks a STUN server which address it sees us at (a Binding request).
pub fn binding(channel: &mut Channel, timeout: Duration) -> Result<SocketAddr, ProbeError> {
    let resp = channel.transact(&Request::new(BINDING), None, timeout)?;
    match resp.class {
        Class::Success => resp
            .mapped_address()
            .ok_or_else(|| ProbeError::Protocol("no XOR-MAPPED-ADDRESS".into())),
        _ => Err(refusal(&resp)),
    }
}

/// Asks a STUN server, from the tokio socket `socket` itself (so the answer names the
/// public address of that very port), which address it sees. Retransmits like
/// [`Channel::transact`]; datagrams from anyone else are ignored.
pub async fn binding_async(
    socket: &tokio::net::UdpSocket,
    server: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, ProbeError> {
    let request = Request::new(BINDING);
    let bytes = request.encode(None);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rto = Duration::from_millis(500);
    let mut buf = [0u8; 2048];
    loop {
        socket.send_to(&bytes, server).await?;
        let resend_at = (tokio::time::Instant::now() + rto).min(deadline);
        rto *= 2;
        loop {
            match tokio::time::timeout_at(resend_at, socket.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(Err(err)) => return Err(ProbeError::Io(err)),
                Ok(Ok((n, from))) if from == server => {
                    if let Ok(resp) = Response::parse(&buf[..n])
                        && resp.transaction_id == request.transaction_id
                    {
                        return match resp.class {
                            Class::Success => resp.mapped_address().ok_or_else(|| {
                                ProbeError::Protocol("no XOR-MAPPED-ADDRESS".into())
                            }),
                            _ => Err(refusal(&resp)),
                        };
                    }
                }
                Ok(Ok(_)) => {}
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ProbeError::Timeout(timeout));
        }
    }
}

fn refusal(resp: &Response) -> ProbeError {
    match resp.error_code() {
        Some((code, reason)) => ProbeError::Refused { code, reason },
        None => ProbeError::Protocol(format!("{:?} without ERROR-CODE", resp.class)),
    }
}

/// A TURN allocation that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// The relayed transport address the TURN server gave us.
    pub relayed: SocketAddr,
    /// Our address as the TURN server sees it.
    pub mapped: Option<SocketAddr>,
}

/// Allocates a UDP relay with long-term credentials, then frees it (Refresh, lifetime 0).
///
/// The first Allocate has no credentials and draws a 401 with the realm and nonce; the
/// second one carries them. A stale nonce (438) is retried once with the new nonce.
pub fn allocate(
    channel: &mut Channel,
    username: &str,
    password: &str,
    timeout: Duration,
) -> Result<Allocation, ProbeError> {
    let requested_transport = [TRANSPORT_UDP, 0, 0, 0];
    let first = channel.transact(
        &Request::new(ALLOCATE).attr(ATTR_REQUESTED_TRANSPORT, &requested_transport),
        None,
        timeout,
    )?;
    if first.class == Class::Success {
        return Err(ProbeError::Protocol(
            "the TURN server allocated without asking for credentials".into(),
        ));
    }
    let mut challenge = first;
    for _ in 0..2 {
        let (code, reason) = challenge
            .error_code()
            .ok_or_else(|| ProbeError::Protocol("error without ERROR-CODE".into()))?;
        if code != 401 && code != 438 {
            return Err(ProbeError::Refused { code, reason });
        }
        let realm = challenge
            .text(ATTR_REALM)
            .ok_or_else(|| ProbeError::Protocol(format!("{code} without REALM")))?;
        let nonce = challenge
            .text(ATTR_NONCE)
            .ok_or_else(|| ProbeError::Protocol(format!("{code} without NONCE")))?;
        let key = long_term_key(username, &realm, password);
        let authed = |method: u16| {
            Request::new(method)
                .attr(ATTR_USERNAME, username.as_bytes())
                .attr(ATTR_REALM, realm.as_bytes())
                .attr(ATTR_NONCE, nonce.as_bytes())
        };
        let resp = channel.transact(
            &authed(ALLOCATE).attr(ATTR_REQUESTED_TRANSPORT, &requested_transport),
            Some(&key),
            timeout,
        )?;
        if resp.class == Class::Success {
            let relayed = resp
                .relayed_address()
                .ok_or_else(|| ProbeError::Protocol("no XOR-RELAYED-ADDRESS".into()))?;
            let allocation = Allocation {
                relayed,
                mapped: resp.mapped_address(),
            };
            // Free it at once; a failure here only leaves it to expire on its own.
            let _ = channel.transact(
                &authed(REFRESH).attr(ATTR_LIFETIME, &0u32.to_be_bytes()),
                Some(&key),
                timeout,
            );
            return Ok(allocation);
        }
        match resp.error_code() {
            Some((438, _)) => challenge = resp,
            Some((code, reason)) => return Err(ProbeError::Refused { code, reason }),
            None => {
                return Err(ProbeError::Protocol("error without ERROR-CODE".into()));
            }
        }
    }
    Err(ProbeError::Refused {
        code: 438,
        reason: "stale nonce twice".into(),
    })
}

/// A parsed `stun:` / `turn:` / `turns:` URL (RFC 7064, RFC 7065).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Stun,
    Turn,
    Turns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl IceUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once(':')
            .ok_or_else(|| format!("{url:?}: no scheme"))?;
        let scheme = match scheme {
            "stun" => Scheme::Stun,
            "turn" => Scheme::Turn,
            "turns" => Scheme::Turns,
            other => {
                return Err(format!(
                    "{url:?}: scheme {other:?} is not stun, turn or turns"
                ));
            }
        };
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let transport = match query {
            None => {
                if scheme == Scheme::Turns {
                    Transport::Tcp
                } else {
                    Transport::Udp
                }
            }
            Some("transport=udp") if scheme != Scheme::Stun => Transport::Udp,
            Some("transport=tcp") if scheme != Scheme::Stun => Transport::Tcp,
            Some(q) => return Err(format!("{url:?}: unsupported query {q:?}")),
        };
        let default_port = if scheme == Scheme::Turns { 5349 } else { 3478 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("{url:?}: junk after ]")),
            };
            (host.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
                ),
                None => (hostport.to_owned(), default_port),
            }
        };
        if host.is_empty() || host.contains('/') || host.contains('@') {
            return Err(format!("{url:?}: bad host {host:?}"));
        }
        Ok(Self {
            scheme,
            host,
            port,
            transport,
        })
    }

    /// Resolves the host (DNS or a literal IP).
    pub fn resolve(&self) -> io::Result<SocketAddr> {
        use std::net::ToSocketAddrs;
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_types_encode_per_rfc() {
        assert_eq!(message_type(BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(ALLOCATE, Class::Error), 0x0113);
        assert_eq!(message_type(REFRESH, Class::Success), 0x0104);
    }

    #[test]
    fn xor_addresses_round_trip() {
        let req = Request::new(BINDING);
        let parsed = Response::parse(&req.encode(None)).expect("parse");
        for addr in ["203.0.113.7:50000", "[2001:db8::1]:3478"] {
            let addr: SocketAddr = addr.parse().expect("addr");
            let resp = Response::parse(&binding_success(&parsed, addr)).expect("parse");
            assert_eq!(resp.class, Class::Success);
            assert_eq!(resp.method, BINDING);
            assert_eq!(resp.mapped_address(), Some(addr));
        }
    }

    /// RFC 5769 §2.4's long-term key: MD5("<U+30DE><U+30C8><U+30EA><U+30C3><U+30AF><U+30B9>
    /// :example.org:TheMatrIX") after SASLprep. We skip SASLprep, so check the plain-ASCII
    /// case against Python instead:
    /// `python3 -c "import hashlib; print(hashlib.md5(b'alice:example.org:pw').hexdigest())"`
    /// → db25ea610c2a955b77b272273cbe886b.
    #[test]
    fn long_term_key_is_md5_of_user_realm_password() {
        let key = long_term_key("alice", "example.org", "pw");
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "db25ea610c2a955b77b272273cbe886b");
    }

    #[test]
    fn message_integrity_counts_itself_in_the_length() {
        let msg = Request::new(ALLOCATE)
            .attr(ATTR_USERNAME, b"abc")
            .encode(Some(b"key"));
        assert_eq!(msg.len(), 20 + 8 + 24);
        assert_eq!(usize::from(u16::from_be_bytes([msg[2], msg[3]])), 8 + 24);
        let parsed = Response::parse(&msg).expect("parse");
        assert_eq!(parsed.attrs.len(), 2);
        assert_eq!(parsed.attrs[1].0, ATTR_MESSAGE_INTEGRITY);
    }

    #[test]
    fn ice_urls_parse() {
        let u = IceUrl::parse("turn:turn.example.org:3478?transport=tcp").expect("url");
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.transport),
            (Scheme::Turn, "turn.example.org", 3478, Transport::Tcp)
        );
        let u = IceUrl::parse("turns:turn.example.org").expect("url");
        assert_eq!(
            (u.scheme, u.port, u.transport),
            (Scheme::Turns, 5349, Transport::Tcp)
        );
        let u = IceUrl::parse("stun:[2001:db8::1]:19302").expect("url");
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 19302));
        assert!(IceUrl::parse("http://x").is_err());
        assert!(IceUrl::parse("stun:x?transport=tcp").is_err());
        assert!(IceUrl::parse("turn:x:notaport").is_err());
    }
}
