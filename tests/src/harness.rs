//! Starts the real `chorus` binary on loopback, one per test, and reads its `/api/stats`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::wait;

/// Log lines of one server kept for [`Server::wait_for_log`]; later ones are only printed.
/// A test's server logs far fewer at `warn`.
const MAX_LOG_LINES: usize = 10_000;

/// How long the server may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The server's resource counts, from `GET /api/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Stats {
    pub rooms: u64,
    pub participants: u64,
    pub peers: u64,
    pub tracks: u64,
    pub subscriptions: u64,
    /// Live tokio tasks in the server.
    #[serde(default)]
    pub tasks: u64,
}

/// Where the `chorus` binary is: `$CHORUS_BIN`, else next to the test executable's `deps/`
/// folder (`target/debug/deps/e2e-xxxx` → `target/debug/chorus`).
pub fn chorus_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CHORUS_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("test executable has no parent folder"))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .ok_or_else(|| anyhow!("deps folder has no parent"))?;
    }
    Ok(dir.join(format!("chorus{}", std::env::consts::EXE_SUFFIX)))
}

/// A running `chorus` child process. Killed when dropped.
pub struct Server {
    child: Child,
    bin: PathBuf,
    http: SocketAddr,
    udp: SocketAddr,
    config_path: PathBuf,
    /// The lines it has logged so far (the first [`MAX_LOG_LINES`]).
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts a server with every setting at its default (an empty config file).
    pub async fn start() -> Result<Self> {
        Self::start_with_config("").await
    }

    /// Starts a server with `config` (TOML) as its config file, e.g.
    /// `"[limits]\nmax_participants_per_room = 2\n"`.
    pub async fn start_with_config(config: &str) -> Result<Self> {
        Self::start_bin(&chorus_bin()?, config).await
    }

    /// Starts the `chorus` binary at `bin` with `config` (TOML) as its config file.
    pub async fn start_bin(bin: &Path, config: &str) -> Result<Self> {
        Self::start_bin_at(bin, config, "127.0.0.1:0".parse()?).await
    }

    /// [`start_with_config`](Self::start_with_config) with HTTP on `http` (a cluster node
    /// must know its own URL before it starts).
    pub async fn start_at(http: SocketAddr, config: &str) -> Result<Self> {
        Self::start_bin_at(&chorus_bin()?, config, http).await
    }

    /// [`start_bin`](Self::start_bin) with HTTP on `http`.
    pub async fn start_bin_at(bin: &Path, config: &str, http: SocketAddr) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        if !bin.exists() {
            bail!(
                "no chorus binary at {} (run `cargo build -p chorus` first, or set CHORUS_BIN)",
                bin.display()
            );
        }
        let config_path = std::env::temp_dir().join(format!(
            "chorus-test-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;

        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config_path)
            .arg("--http")
            .arg(http.to_string())
            .args(["--udp", "127.0.0.1:0", "--announce", "127.0.0.1"])
            // Quiet by default; CHORUS_LOG, else RUST_LOG, sets the server's filter.
            .env(
                "RUST_LOG",
                std::env::var("CHORUS_LOG")
                    .or_else(|_| std::env::var("RUST_LOG"))
                    .unwrap_or_else(|_| "warn".to_owned()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;

        // Logs go to stderr: forward them through eprintln! so libtest captures them with the
        // test's own output, and keep them for `wait_for_log`.
        let logs = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let logs = logs.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[chorus] {line}");
                    let mut logs = logs.lock().unwrap_or_else(|e| e.into_inner());
                    if logs.len() < MAX_LOG_LINES {
                        logs.push(line);
                    }
                }
            });
        }
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = wait::within(READY_TIMEOUT, "the chorus ready line", async {
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) if line.starts_with("chorus ready") => return Ok(line),
                    Ok(Some(line)) => eprintln!("[chorus stdout] {line}"),
                    Ok(None) => bail!("chorus exited before printing its ready line"),
                    Err(err) => bail!("reading chorus stdout: {err}"),
                }
            }
        })
        .await;
        let ready = match ready {
            Ok(Ok(line)) => line,
            Ok(Err(err)) | Err(err) => {
                let status = child.try_wait().ok().flatten();
                let _ = std::fs::remove_file(&config_path);
                return Err(err.context(format!("chorus exit status: {status:?}")));
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[chorus stdout] {line}");
            }
        });

        let (http, udp) = parse_ready_line(&ready)?;
        tracing::info!("chorus ready: http={http} udp={udp}");
        Ok(Self {
            child,
            bin: bin.to_owned(),
            http,
            udp,
            config_path,
            logs,
        })
    }

    /// Waits until the server has logged (to stderr, at the level `CHORUS_LOG` or `warn`
    /// lets through) a line containing every one of `words`; returns that line.
    pub async fn wait_for_log(&self, within: Duration, words: &[&str]) -> Result<String> {
        wait::poll_until(within, &format!("a server log line with {words:?}"), || {
            let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            logs.iter()
                .find(|line| words.iter().all(|w| line.contains(w)))
                .cloned()
        })
        .await
    }

    /// The server's process id (for reading its CPU time and memory from `/proc`).
    /// Mints a join token with `chorus token` under this server's config, e.g.
    /// `&["--room", "standup", "--identity", "ada"]`.
    pub fn token(&self, args: &[&str]) -> Result<String> {
        let output = std::process::Command::new(&self.bin)
            .arg("token")
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .output()
            .context("running chorus token")?;
        ensure!(
            output.status.success(),
            "chorus token {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The HTTP (and WebSocket) address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The media UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    /// The config file the server was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Sends the process a signal (`"TERM"`, `"INT"`).
    pub fn signal(&self, name: &str) -> Result<()> {
        let pid = self.pid().context("the server has exited")?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        ensure!(status.success(), "kill -{name} {pid} failed");
        Ok(())
    }

    /// Waits for the process to exit, within `within`; its exit status.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        wait::within(within, "the server to exit", self.child.wait())
            .await?
            .context("waiting for the server")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `GET /api/stats`.
    pub async fn stats(&self) -> Result<Stats> {
        let (status, body) = http_get(self.http, "/api/stats").await?;
        if status != 200 {
            bail!("GET /api/stats: status {status}, body {body:?}");
        }
        serde_json::from_str(&body).with_context(|| format!("parsing /api/stats body {body:?}"))
    }

    /// Polls `/api/stats` until `pred` holds, within `within`. On timeout the error shows the
    /// last stats seen.
    pub async fn wait_for_stats(
        &self,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&Stats) -> bool,
    ) -> Result<Stats> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = None;
        loop {
            match self.stats().await {
                Ok(stats) => {
                    if pred(&stats) {
                        return Ok(stats);
                    }
                    last = Some(stats);
                }
                Err(err) => tracing::warn!("stats: {err:#}"),
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("timed out after {within:?} waiting for {what}; last stats: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// Parses `chorus ready http=127.0.0.1:PORT udp=127.0.0.1:PORT`.
fn parse_ready_line(line: &str) -> Result<(SocketAddr, SocketAddr)> {
    let field = |key: &str| -> Result<SocketAddr> {
        let prefix = format!("{key}=");
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(prefix.as_str()))
            .ok_or_else(|| anyhow!("no {key}= in ready line {line:?}"))?
            .parse()
            .with_context(|| format!("bad {key} address in ready line {line:?}"))
    };
    Ok((field("http")?, field("udp")?))
}

/// A minimal HTTP/1.1 GET: returns the status code and the body as text.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_request(addr, "GET", path, &[], None).await
}

/// A minimal HTTP/1.1 request with extra `headers` and an optional `(content type,
/// body)`: returns the status code and the body as text.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> Result<(u16, String)> {
    let response = http_exchange(addr, method, path, headers, body).await?;
    Ok((response.status, response.body))
}

/// One HTTP response: status, headers (lower-case names) and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: std::collections::HashMap<String, String>,
    pub body: String,
}

impl HttpResponse {
    /// A header's value, by its lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// [`http_request`], with the response's headers.
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> Result<HttpResponse> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    match body {
        Some((content_type, body)) => request.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None => request.push_str("Content-Length: 0\r\n\r\n"),
    }
    wait::within(Duration::from_secs(15), "an HTTP response", async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_http_response(&raw)
    })
    .await?
}

fn parse_http_response(raw: &[u8]) -> Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of HTTP headers"))?;
    let head = std::str::from_utf8(&raw[..split]).context("HTTP head is not UTF-8")?;
    let body = &raw[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("no status in {head:?}"))?
        .parse()
        .context("status code")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    let headers = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8(body).context("body is not UTF-8")?,
    })
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunk size"))?;
        let size_text = std::str::from_utf8(&body[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).context("chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_parses() {
        let (http, udp) =
            parse_ready_line("chorus ready http=127.0.0.1:8080 udp=127.0.0.1:40000").unwrap();
        assert_eq!(http, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(udp, "127.0.0.1:40000".parse::<SocketAddr>().unwrap());
        assert!(parse_ready_line("chorus ready").is_err());
    }

    #[test]
    fn http_bodies_parse_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let response = parse_http_response(plain).unwrap();
        assert_eq!((response.status, response.body.as_str()), (200, "{}"));
        assert_eq!(response.header("content-length"), Some("2"));
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n";
        let response = parse_http_response(chunked).unwrap();
        assert_eq!(
            (response.status, response.body.as_str()),
            (200, "{\"a\":1}")
        );
    }
}
