//! `chorus doctor`: checks that this machine and config can host calls, and says what to
//! fix. One line per check, `OK`, `WARN`, `SKIP` or `FAIL`, with a hint under each failure.
//! The exit code is 1 when any check fails.
//!
//! What it checks:
//! - the config file parses;
//! - the HTTP, media UDP and ICE-TCP ports can be bound (so run it while chorus is stopped);
//! - STUN discovery of the public IP, when `media.stun_discovery` is set;
//! - which IPs the media candidates will announce;
//! - every `[[ice.servers]]` URL: STUN answers a Binding request, TURN (UDP and TCP) grants
//!   a real allocation with the credentials clients would get; `turns:` gets a TCP connect
//!   only (the TLS handshake is left to the browser: see /connectivity).

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::time::{Duration, SystemTime};

use chorus::stun_client::{self, Channel, IceUrl, ProbeError, Scheme, Transport};

use chorus::config::Config;

/// How long one STUN/TURN exchange may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Report {
    failures: usize,
}

impl Report {
    fn line(&self, verdict: &str, check: &str, detail: &str) {
        println!("{verdict:<4}  {check}: {detail}");
    }

    fn ok(&mut self, check: &str, detail: impl AsRef<str>) {
        self.line("OK", check, detail.as_ref());
    }

    fn warn(&mut self, check: &str, detail: impl AsRef<str>, hint: &str) {
        self.line("WARN", check, detail.as_ref());
        println!("      hint: {hint}");
    }

    fn skip(&mut self, check: &str, detail: impl AsRef<str>) {
        self.line("SKIP", check, detail.as_ref());
    }

    fn fail(&mut self, check: &str, detail: impl AsRef<str>, hint: &str) {
        self.failures += 1;
        self.line("FAIL", check, detail.as_ref());
        println!("      hint: {hint}");
    }
}

/// Reports a config that does not load; returns the exit code.
pub fn config_failed(path: &Path, err: &anyhow::Error) -> i32 {
    let mut report = Report::default();
    report.fail(
        "config",
        format!("{}: {err:#}", path.display()),
        "fix what is named above; config/chorus.toml in the source tree lists every key \
         with its default",
    );
    println!("\n1 check failed");
    1
}

/// Runs every check; returns the exit code.
pub fn run(path: &Path, config: &Config) -> i32 {
    let mut r = Report::default();
    if path.exists() {
        r.ok("config", format!("{} parses", path.display()));
    } else {
        r.ok(
            "config",
            format!("no file at {}: using the defaults", path.display()),
        );
    }

    // Ports.
    match TcpListener::bind(config.http.listen) {
        Ok(_) => r.ok(
            "http port",
            format!("tcp {} can be bound", config.http.listen),
        ),
        Err(err) => r.fail(
            "http port",
            format!("tcp {}: {err}", config.http.listen),
            &bind_hint(&err, "http.listen or --http"),
        ),
    }
    let udp = match UdpSocket::bind(config.media.udp_listen) {
        Ok(socket) => {
            r.ok(
                "media udp port",
                format!("udp {} can be bound", config.media.udp_listen),
            );
            Some(socket)
        }
        Err(err) => {
            r.fail(
                "media udp port",
                format!("udp {}: {err}", config.media.udp_listen),
                &bind_hint(&err, "media.udp_listen or --udp"),
            );
            None
        }
    };
    let mut tcp_addr = None;
    if config.media.ice_tcp {
        let addr = config.media.tcp_listen.unwrap_or(config.media.udp_listen);
        match TcpListener::bind(addr) {
            Ok(listener) => {
                r.ok("ice-tcp port", format!("tcp {addr} can be bound"));
                tcp_addr = listener.local_addr().ok();
            }
            Err(err) => r.fail(
                "ice-tcp port",
                format!("tcp {addr}: {err}"),
                &bind_hint(&err, "media.tcp_listen or --tcp"),
            ),
        }
    } else {
        r.skip("ice-tcp port", "ICE-TCP is off (media.ice_tcp = false)");
    }

    // Announced IPs.
    let mut announced = config.media.announced_ips.clone();
    if let Some(url) = config.media.stun_discovery_url() {
        if let Some(ip) = stun_discovery(&mut r, url, udp)
            && !announced.contains(&ip)
        {
            announced.push(ip);
        }
    } else {
        r.skip("stun discovery", "off (media.stun_discovery is not set)");
    }
    let udp_candidates = chorus_sfu::net::host_candidates(config.media.udp_listen, &announced);
    let mut ips: Vec<IpAddr> = udp_candidates.iter().map(SocketAddr::ip).collect();
    ips.dedup();
    let list = ips
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let tcp_note = match tcp_addr {
        Some(addr) if config.media.ice_tcp => format!(", ICE-TCP port {}", addr.port()),
        _ => String::new(),
    };
    let detail = format!(
        "{list} (udp port {}{tcp_note}){}",
        config.media.udp_listen.port(),
        match (
            announced.is_empty(),
            config.media.udp_listen.ip().is_unspecified()
        ) {
            (false, _) => "",
            (true, true) => ", the interfaces' addresses",
            (true, false) => ", the bind address",
        }
    );
    let has_turn = config.ice.servers.iter().any(|s| {
        s.parsed_urls()
            .iter()
            .any(|(_, u)| u.as_ref().is_ok_and(|u| u.scheme != Scheme::Stun))
    });
    if ips.iter().all(|ip| !is_public(ip)) && !has_turn {
        r.warn(
            "announced ips",
            detail,
            "only private addresses: browsers outside this network cannot reach the media \
             port. Set media.announced_ips (NAT 1:1) or media.stun_discovery, or add a TURN \
             server under [[ice.servers]]",
        );
    } else {
        r.ok("announced ips", detail);
    }

    // ICE servers, as a client would get them.
    if config.ice.servers.is_empty() {
        r.skip("ice servers", "none configured ([[ice.servers]])");
    }
    let ttl = Duration::from_secs(config.ice.credential_ttl_secs);
    for (i, server) in config.ice.servers.iter().enumerate() {
        let auth = server.auth(ttl);
        let kind = match auth {
            chorus::turn::TurnAuth::None => "no credentials",
            chorus::turn::TurnAuth::Static { .. } => "static credentials",
            chorus::turn::TurnAuth::Ephemeral { .. } => "generated credentials",
        };
        let credentials = auth.credentials("doctor", SystemTime::now());
        for (text, url) in server.parsed_urls() {
            let check = format!("ice.servers[{i}] {text}");
            match url {
                Ok(url) => probe_url(&mut r, &check, &url, credentials.as_ref(), kind),
                Err(err) => r.fail(&check, err, "use stun:, turn: or turns: URLs"),
            }
        }
    }

    println!();
    match r.failures {
        0 => {
            println!("all checks passed");
            0
        }
        1 => {
            println!("1 check failed");
            1
        }
        n => {
            println!("{n} checks failed");
            1
        }
    }
}

fn bind_hint(err: &io::Error, key: &str) -> String {
    match err.kind() {
        io::ErrorKind::AddrInUse => format!(
            "another process holds this port (a running chorus? then stop it first, this \
             check needs the port free); or choose another one with {key}"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "ports below 1024 need root or CAP_NET_BIND_SERVICE; or choose another one with {key}"
        ),
        io::ErrorKind::AddrNotAvailable => {
            format!("this machine has no such address; use 0.0.0.0 or one of its own IPs in {key}")
        }
        _ => format!("check {key}"),
    }
}

fn stun_discovery(
    r: &mut Report,
    url: Result<IceUrl, String>,
    udp: Option<UdpSocket>,
) -> Option<IpAddr> {
    let check = "stun discovery";
    let url = match url {
        Ok(url) => url,
        Err(err) => {
            r.fail(check, err, "media.stun_discovery takes host:port");
            return None;
        }
    };
    let server = match url.resolve() {
        Ok(addr) => addr,
        Err(err) => {
            r.fail(
                check,
                format!("{}: {err}", url.host),
                "the STUN server's name does not resolve; check media.stun_discovery and DNS",
            );
            return None;
        }
    };
    // From the media socket itself when we have it: the answer then names its public port.
    let channel = match udp {
        Some(socket) => Ok(Channel::Udp(socket, server)),
        None => Channel::udp(server),
    };
    let result = channel
        .map_err(ProbeError::Io)
        .and_then(|mut c| stun_client::binding(&mut c, PROBE_TIMEOUT));
    match result {
        Ok(public) => {
            r.ok(
                check,
                format!(
                    "{server} sees this host as {public}; {} will be announced",
                    public.ip()
                ),
            );
            Some(public.ip())
        }
        Err(err) => {
            r.fail(
                check,
                format!("{server}: {err}"),
                "the STUN server did not answer: is outbound UDP allowed, and are host and port \
                 right? chorus still starts, announcing only the configured IPs",
            );
            None
        }
    }
}

fn probe_url(
    r: &mut Report,
    check: &str,
    url: &IceUrl,
    credentials: Option<&(String, String)>,
    kind: &str,
) {
    let server = match url.resolve() {
        Ok(addr) => addr,
        Err(err) => {
            r.fail(
                check,
                format!("{}: {err}", url.host),
                "the name does not resolve from this machine; check the URL and DNS",
            );
            return;
        }
    };
    let channel = match (url.scheme, url.transport) {
        (Scheme::Turns, _) => {
            match Channel::tcp(server, PROBE_TIMEOUT) {
                Ok(_) => r.skip(
                    check,
                    format!(
                        "tcp {server} accepts connections; TLS and credentials are not checked \
                         here (open /connectivity in a browser for that)"
                    ),
                ),
                Err(err) => r.fail(
                    check,
                    format!("tcp {server}: {err}"),
                    "nothing accepts TLS connections there: is coturn listening on its \
                     tls-listening-port, and is the port open?",
                ),
            }
            return;
        }
        (_, Transport::Udp) => Channel::udp(server),
        (_, Transport::Tcp) => Channel::tcp(server, PROBE_TIMEOUT),
    };
    let mut channel = match channel {
        Ok(c) => c,
        Err(err) => {
            r.fail(
                check,
                format!("{server}: {err}"),
                "cannot connect: is the server running, and is the port open to this machine?",
            );
            return;
        }
    };
    if url.scheme == Scheme::Stun {
        match stun_client::binding(&mut channel, PROBE_TIMEOUT) {
            Ok(public) => r.ok(check, format!("answers; sees this host as {public}")),
            Err(err) => r.fail(
                check,
                format!("{server}: {err}"),
                "the STUN server did not answer: is it running, and is the UDP port open?",
            ),
        }
        return;
    }
    let Some((username, password)) = credentials else {
        r.fail(
            check,
            "no credentials",
            "TURN needs auth_secret, or username and credential",
        );
        return;
    };
    match stun_client::allocate(&mut channel, username, password, PROBE_TIMEOUT) {
        Ok(allocation) => r.ok(
            check,
            format!(
                "allocation with {kind} succeeded (relayed address {})",
                allocation.relayed
            ),
        ),
        Err(ProbeError::Refused { code, reason }) if code == 401 || code == 441 => r.fail(
            check,
            format!("{server}: the TURN server refused the {kind} ({code} {reason})"),
            if kind == "generated credentials" {
                "auth_secret must equal coturn's static-auth-secret (with use-auth-secret); \
                 generated usernames expire after ice.credential_ttl_secs, so check both \
                 machines' clocks"
            } else {
                "username and credential must match a user=NAME:PASSWORD line of coturn \
                 (with lt-cred-mech)"
            },
        ),
        Err(err @ ProbeError::Timeout(_)) => r.fail(
            check,
            format!("{server}: {err}"),
            "nothing answered: is the TURN server running, and is this port open (UDP for \
             turn:, TCP for ?transport=tcp)?",
        ),
        Err(err) => r.fail(
            check,
            format!("{server}: {err}"),
            "the TURN server refused the allocation; see its log",
        ),
    }
}

/// Whether browsers on the internet could reach `ip`.
fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xC0) == 64)
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xFE00) == 0xFC00)
        }
    }
}
