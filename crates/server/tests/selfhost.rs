//! Self-hosting behind NAT and TURN, against a real coturn (`turnserver`, Debian package
//! `coturn`) started on 127.0.0.1 by each test:
//! - coturn accepts the credentials chorus generates (also as handed out in `joined`) and
//!   refuses wrong and expired ones;
//! - `chorus doctor` says OK on a good config and FAIL (exit 1) on a port in use or a TURN
//!   server with the wrong secret;
//! - STUN discovery at start-up announces the address a (tiny, in-test) STUN server reports.
//!
//! Relay-only and TCP-only media with a real browser are in tests/browser/specs/.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use chorus::stun_client::{self, Channel, ProbeError, Response};
use chorus::turn;
use chorus_protocol::ServerMessage;
use chorus_tests::{RawWs, Server};

const SECRET: &str = "north-wind";
const REALM: &str = "chorus.test";
const PROBE: Duration = Duration::from_secs(3);

fn temp_path(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "chorus-selfhost-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A port that is free on 127.0.0.1 for both UDP and TCP right now.
fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// A coturn child on 127.0.0.1 with `use-auth-secret`; killed when dropped.
struct Coturn {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Coturn {
    fn start() -> Self {
        let port = free_port();
        let log = temp_path("turnserver.log");
        let pid = temp_path("turnserver.pid");
        let child = Command::new("turnserver")
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--use-auth-secret",
                &format!("--static-auth-secret={SECRET}"),
                &format!("--realm={REALM}"),
                "--allow-loopback-peers",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--simple-log",
                &format!("--log-file={}", log.display()),
                &format!("--pidfile={}", pid.display()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "starting turnserver: {err} (install the Debian package coturn; \
                     tests/run-all.sh does)"
                )
            });
        let mut coturn = Self { child, port, log };
        // Ready when it answers a STUN Binding request (UDP) and accepts TCP.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let udp_ok = Channel::udp(coturn.addr())
                .map_err(ProbeError::Io)
                .and_then(|mut c| stun_client::binding(&mut c, Duration::from_millis(300)))
                .is_ok();
            if udp_ok && std::net::TcpStream::connect(coturn.addr()).is_ok() {
                return coturn;
            }
            if let Ok(Some(status)) = coturn.child.try_wait() {
                panic!("turnserver exited ({status}):\n{}", coturn.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "turnserver not ready within 15 s:\n{}",
                coturn.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log_text(&self) -> String {
        // coturn names its log file after the one given, with a date suffix.
        let dir = self.log.parent().expect("temp dir");
        let stem = self.log.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(stem))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn allocate_udp(server: SocketAddr, username: &str, password: &str) -> Result<(), ProbeError> {
    let mut channel = Channel::udp(server).map_err(ProbeError::Io)?;
    stun_client::allocate(&mut channel, username, password, PROBE).map(|_| ())
}

fn allocate_tcp(server: SocketAddr, username: &str, password: &str) -> Result<(), ProbeError> {
    let mut channel = Channel::tcp(server, PROBE).map_err(ProbeError::Io)?;
    stun_client::allocate(&mut channel, username, password, PROBE).map(|_| ())
}

fn assert_refused(result: Result<(), ProbeError>, what: &str) {
    match result {
        Err(ProbeError::Refused { code: 401, .. }) => {}
        other => panic!("{what}: expected 401 Unauthorized, got {other:?}"),
    }
}

#[test]
fn coturn_accepts_generated_credentials_and_refuses_wrong_or_expired_ones() {
    let coturn = Coturn::start();
    let now = SystemTime::now();
    let (user, pass) = turn::ephemeral_credentials(SECRET, "p1", now + Duration::from_secs(600));

    // Generated with the shared secret: accepted, over UDP and over TCP.
    allocate_udp(coturn.addr(), &user, &pass).expect("UDP allocation with generated credentials");
    allocate_tcp(coturn.addr(), &user, &pass).expect("TCP allocation with generated credentials");

    // Generated with another secret: refused.
    let (user2, pass2) =
        turn::ephemeral_credentials("south-wind", "p1", now + Duration::from_secs(600));
    assert_refused(allocate_udp(coturn.addr(), &user2, &pass2), "wrong secret");
    // The right credential for another username: refused.
    assert_refused(
        allocate_udp(coturn.addr(), &format!("{user}x"), &pass),
        "tampered username",
    );
    // Expired a minute ago, though signed with the right secret: refused.
    let (old_user, old_pass) =
        turn::ephemeral_credentials(SECRET, "p1", now - Duration::from_secs(60));
    assert_refused(allocate_udp(coturn.addr(), &old_user, &old_pass), "expired");
    assert_refused(
        allocate_tcp(coturn.addr(), &old_user, &old_pass),
        "expired over TCP",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_reply_hands_out_credentials_that_coturn_accepts() {
    let coturn = Coturn::start();
    let port = coturn.port;
    let config = format!(
        "[ice]\ncredential_ttl_secs = 600\n\
         [[ice.servers]]\nurls = [\"stun:127.0.0.1:{port}\"]\n\
         [[ice.servers]]\nurls = [\"turn:127.0.0.1:{port}?transport=udp\", \
         \"turn:127.0.0.1:{port}?transport=tcp\"]\nauth_secret = \"{SECRET}\"\n\
         [[ice.servers]]\nurls = [\"turn:turn.example.org\"]\nusername = \"fixed\"\n\
         credential = \"pw\"\n"
    );
    let server = Server::start_bin(&PathBuf::from(env!("CARGO_BIN_EXE_chorus")), &config)
        .await
        .expect("chorus starts");
    let mut ws = RawWs::connect(server.http_addr()).await.expect("ws");
    let joined = ws.join("turn-room", "Ada").await.expect("joined");
    let ServerMessage::Joined {
        participant_id,
        ice_servers,
        ..
    } = joined
    else {
        panic!("expected joined, got {joined:?}");
    };
    assert_eq!(ice_servers.len(), 3, "{ice_servers:?}");
    assert_eq!(ice_servers[0].username, None, "STUN gets no credentials");
    assert_eq!(ice_servers[2].username.as_deref(), Some("fixed"));
    assert_eq!(ice_servers[2].credential.as_deref(), Some("pw"));

    let generated = &ice_servers[1];
    let username = generated.username.clone().expect("username");
    let credential = generated.credential.clone().expect("credential");
    let (expiry, who) = username.split_once(':').expect("expiry:participant");
    assert_eq!(who, participant_id.to_string());
    let expiry: u64 = expiry.parse().expect("expiry is unix seconds");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        (now + 590..=now + 610).contains(&expiry),
        "expiry {expiry} is not now ({now}) + the 600 s TTL"
    );
    assert_eq!(credential, turn::credential_for(SECRET, &username));

    let addr = coturn.addr();
    tokio::task::spawn_blocking(move || {
        allocate_udp(addr, &username, &credential).expect("UDP allocation, join credentials");
        allocate_tcp(addr, &username, &credential).expect("TCP allocation, join credentials");
        assert_refused(
            allocate_udp(addr, &username, "not-the-credential"),
            "join username with a wrong credential",
        );
    })
    .await
    .expect("allocations");
}

/// Runs `chorus --config FILE doctor` with `config`; returns its output, within a deadline.
fn doctor(config: &str) -> (Output, String) {
    let path = temp_path("doctor.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .arg("--config")
        .arg(&path)
        .arg("doctor")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chorus doctor");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("chorus doctor did not finish within 60 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{text}{}", String::from_utf8_lossy(&output.stderr));
    (output, text)
}

/// The verdict line of a check (`OK    check: ...`), or a panic naming the output.
fn verdict<'a>(text: &'a str, check: &str) -> &'a str {
    text.lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(check)))
        .unwrap_or_else(|| panic!("no {check:?} line in:\n{text}"))
}

#[test]
fn doctor_passes_a_good_config() {
    let coturn = Coturn::start();
    let port = coturn.port;
    let (output, text) = doctor(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\
         [media]\nudp_listen = \"127.0.0.1:0\"\nannounced_ips = [\"203.0.113.7\"]\n\
         [[ice.servers]]\nurls = [\"stun:127.0.0.1:{port}\"]\n\
         [[ice.servers]]\nurls = [\"turn:127.0.0.1:{port}?transport=udp\", \
         \"turn:127.0.0.1:{port}?transport=tcp\"]\nauth_secret = \"{SECRET}\"\n"
    ));
    assert!(output.status.success(), "doctor failed:\n{text}");
    assert!(verdict(&text, "media udp port").starts_with("OK"));
    assert!(verdict(&text, "ice-tcp port").starts_with("OK"));
    let announced = verdict(&text, "announced ips");
    assert!(
        announced.starts_with("OK") && announced.contains("203.0.113.7"),
        "{announced}"
    );
    assert!(verdict(&text, &format!("ice.servers[0] stun:127.0.0.1:{port}")).starts_with("OK"));
    for transport in ["udp", "tcp"] {
        let line = verdict(
            &text,
            &format!("ice.servers[1] turn:127.0.0.1:{port}?transport={transport}"),
        );
        assert!(
            line.starts_with("OK") && line.contains("allocation with generated credentials"),
            "{line}"
        );
    }
    assert!(text.contains("all checks passed"), "{text}");
}

#[test]
fn doctor_fails_on_a_port_in_use_and_a_wrong_turn_secret() {
    let coturn = Coturn::start();
    let port = coturn.port;
    // Hold a UDP port and a TCP port, as another process would.
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let tcp = TcpListener::bind("127.0.0.1:0").expect("tcp");
    let (output, text) = doctor(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\
         [media]\nudp_listen = \"{}\"\ntcp_listen = \"{}\"\n\
         [[ice.servers]]\nurls = [\"turn:127.0.0.1:{port}?transport=udp\", \
         \"turn:127.0.0.1:{port}?transport=tcp\"]\nauth_secret = \"not-{SECRET}\"\n",
        udp.local_addr().expect("addr"),
        tcp.local_addr().expect("addr"),
    ));
    assert_eq!(output.status.code(), Some(1), "{text}");
    for check in ["media udp port", "ice-tcp port"] {
        let line = verdict(&text, check);
        assert!(line.starts_with("FAIL"), "{line}");
        assert!(line.to_lowercase().contains("in use"), "{line}");
    }
    assert!(verdict(&text, "http port").starts_with("OK"));
    for transport in ["udp", "tcp"] {
        let line = verdict(
            &text,
            &format!("ice.servers[0] turn:127.0.0.1:{port}?transport={transport}"),
        );
        assert!(line.starts_with("FAIL") && line.contains("401"), "{line}");
    }
    assert!(
        text.contains("hint: auth_secret must equal coturn's static-auth-secret"),
        "{text}"
    );
    assert!(
        text.contains("hint: another process holds this port"),
        "{text}"
    );
    assert!(text.contains("4 checks failed"), "{text}");
}

#[test]
fn doctor_fails_when_the_turn_server_is_down() {
    let port = free_port();
    let (output, text) = doctor(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[media]\nudp_listen = \"127.0.0.1:0\"\n\
         [[ice.servers]]\nurls = [\"turn:127.0.0.1:{port}\"]\nusername = \"u\"\n\
         credential = \"c\"\n"
    ));
    assert_eq!(output.status.code(), Some(1), "{text}");
    let line = verdict(&text, &format!("ice.servers[0] turn:127.0.0.1:{port}"));
    assert!(line.starts_with("FAIL"), "{line}");
}

/// A STUN server that tells every client it is at `public` (as a NAT would make it look).
struct FakeStun {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeStun {
    fn start(public_ip: [u8; 4]) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(request) = Response::parse(&buf[..n]) else {
                    continue;
                };
                // Keep the client's port, swap the IP: a port-preserving NAT.
                let mapped = SocketAddr::from((public_ip, from.port()));
                let _ = socket.send_to(&stun_client::binding_success(&request, mapped), from);
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeStun {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts `chorus` with `config` and collects its stderr until the ready line (or 20 s).
fn start_and_read_log(config: &str) -> (Child, String) {
    let path = temp_path("server.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .arg("--config")
        .arg(&path)
        .args(["--http", "127.0.0.1:0", "--udp", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chorus");
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let out_tx = tx.clone();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send((true, line));
        }
    });
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send((false, line));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((true, line)) if line.starts_with("chorus ready") => break,
            Ok((_, line)) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("chorus not ready within 20 s:\n{log}");
            }
        }
    }
    // stdout and stderr are two pipes read by two threads: log lines written before the
    // ready line may still be on their way.
    while let Ok((_, line)) = rx.recv_timeout(Duration::from_millis(300)) {
        log.push_str(&line);
        log.push('\n');
    }
    let _ = std::fs::remove_file(&path);
    (child, log)
}

#[test]
fn stun_discovery_announces_the_public_ip() {
    let stun = FakeStun::start([203, 0, 113, 7]);
    let (mut child, log) =
        start_and_read_log(&format!("[media]\nstun_discovery = \"{}\"\n", stun.addr));
    let _ = child.kill();
    let _ = child.wait();
    println!("{log}");
    let line = log
        .lines()
        .find(|l| l.contains("STUN discovery"))
        .unwrap_or_else(|| panic!("no STUN discovery log line:\n{log}"));
    assert!(line.contains("announcing 203.0.113.7"), "{line}");
    let candidates = log
        .lines()
        .find(|l| l.contains("announcing host candidates"))
        .unwrap_or_else(|| panic!("no candidates log line:\n{log}"));
    assert!(candidates.contains("203.0.113.7:"), "{candidates}");

    // The doctor reports the same, from the media port itself.
    let (output, text) = doctor(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[media]\nudp_listen = \"127.0.0.1:0\"\n\
         stun_discovery = \"{}\"\n",
        stun.addr
    ));
    assert!(output.status.success(), "{text}");
    let line = verdict(&text, "stun discovery");
    assert!(
        line.starts_with("OK") && line.contains("203.0.113.7"),
        "{line}"
    );
    assert!(
        verdict(&text, "announced ips").contains("203.0.113.7"),
        "{text}"
    );
}

#[test]
fn a_silent_stun_server_does_not_stop_start_up() {
    // A bound socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (mut child, log) = start_and_read_log(&format!(
        "[media]\nstun_discovery = \"{}\"\n",
        silent.local_addr().expect("addr")
    ));
    let _ = child.kill();
    let _ = child.wait();
    let line = log
        .lines()
        .find(|l| l.contains("STUN discovery"))
        .unwrap_or_else(|| panic!("no STUN discovery log line:\n{log}"));
    assert!(line.contains("failed"), "{line}");
}
