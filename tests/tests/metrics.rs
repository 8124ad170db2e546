//! `/metrics` scraped by a real Prometheus: Debian's `prometheus` package (tests/run-all.sh
//! installs it), started on loopback with a scrape config that carries the server's bearer
//! token and scrapes every second, and queried through its HTTP API.
//!
//! Build the server first: `cargo build -p chorus`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use chorus_tests::{Client, MediaRate, Server, harness, init_tracing, wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound for signaling and media on a loaded 2-core machine.
const T: Duration = Duration::from_secs(15);

/// How long Prometheus may take to start, scrape and answer with what it scraped.
const PROMETHEUS_T: Duration = Duration::from_secs(60);

/// The server's `metrics.bearer_token` in these tests.
const TOKEN: &str = "chorus-metrics-test-6b1d0f";

/// A `prometheus` child process with its own config and storage in a temporary folder.
/// Dropping it kills the process and removes the folder.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/metrics` every second with `token`.
    fn start(target: SocketAddr, token: &str) -> Result<Self> {
        let bin = prometheus_bin()?;
        let dir = std::env::temp_dir().join(format!("chorus-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: chorus\n    metrics_path: /metrics\n    \
                 authorization:\n      type: Bearer\n      credentials: {token}\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .context("writing prometheus.yml")?;
        let addr = free_port()?;
        let log = std::fs::File::create(dir.join("prometheus.log")).context("prometheus.log")?;
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { child, dir, addr })
    }

    /// The end of Prometheus's log, for error messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until Prometheus answers `/-/ready`.
    async fn wait_ready(&mut self) -> Result<()> {
        let addr = self.addr;
        let ready = wait::poll_until_async(PROMETHEUS_T, "Prometheus to be ready", || async {
            matches!(harness::http_get(addr, "/-/ready").await, Ok((200, _))).then_some(())
        })
        .await;
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("prometheus exited ({status}):\n{}", self.log_tail());
        }
        ready.with_context(|| format!("prometheus log:\n{}", self.log_tail()))
    }

    /// An instant query through the HTTP API: each series' labels (as JSON) and value.
    async fn query(&self, expr: &str) -> Result<Vec<(serde_json::Value, f64)>> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = harness::http_get(self.addr, &path).await?;
        ensure!(
            status == 200,
            "query {expr:?}: status {status}, body {body}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).context("query JSON")?;
        ensure!(json["status"] == "success", "query {expr:?}: {body}");
        let results = json["data"]["result"]
            .as_array()
            .ok_or_else(|| anyhow!("query {expr:?}: no result array in {body}"))?;
        results
            .iter()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| anyhow!("query {expr:?}: no value in {r}"))?;
                Ok((r["metric"].clone(), value))
            })
            .collect()
    }

    /// The value of `expr`, which must give one series, once `pred` holds for it.
    async fn wait_for(&self, expr: &str, pred: impl Fn(f64) -> bool) -> Result<f64> {
        let deadline = tokio::time::Instant::now() + PROMETHEUS_T;
        loop {
            let last = match self.query(expr).await {
                Ok(series) => match series.as_slice() {
                    [(_, value)] if pred(*value) => return Ok(*value),
                    _ => format!("{series:?}"),
                },
                Err(err) => format!("{err:#}"),
            };
            if tokio::time::Instant::now() >= deadline {
                let targets = harness::http_get(self.addr, "/api/v1/targets")
                    .await
                    .map(|(_, body)| body)
                    .unwrap_or_default();
                bail!(
                    "timed out after {PROMETHEUS_T:?} waiting for {expr}; last: {last}\n\
                     targets: {targets}\nprometheus log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `$PROMETHEUS_BIN`, else `prometheus` on the `PATH`. Missing, it is an error that says
/// how to install it: this test never passes without having run.
fn prometheus_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PROMETHEUS_BIN") {
        return Ok(PathBuf::from(path));
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("prometheus"))
            .find(|path| is_executable(path))
    });
    found.ok_or_else(|| {
        anyhow!(
            "`prometheus` is not installed, and this test needs a real one: run \
             tests/run-all.sh (it installs what is missing), or `apt-get install prometheus`, \
             or set PROMETHEUS_BIN"
        )
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A loopback address with a port that was free a moment ago.
fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// Percent-encodes everything but unreserved characters, for a URL's query.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// GET `path` with an optional `Authorization` header: the status and the body (the
/// server answers with a content length, never chunked, for these).
async fn get(addr: SocketAddr, path: &str, authorization: Option<&str>) -> Result<(u16, String)> {
    let request = async {
        let mut stream = TcpStream::connect(addr).await?;
        let auth = authorization
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = wait::within(Duration::from_secs(5), "an HTTP response", request).await??;
    let text = String::from_utf8(raw).context("response is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// The value of the sample `series` in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_participants_with_the_bearer_token() -> Result<()> {
    init_tracing();
    // First, so that a machine without Prometheus fails at once with the way out.
    prometheus_bin()?;
    let server =
        Server::start_with_config(&format!("[metrics]\nbearer_token = \"{TOKEN}\"\n")).await?;
    let http = server.http_addr();

    // Without the token, or with another, a scrape is refused with a typed JSON error.
    for authorization in [None, Some("Bearer not-the-token"), Some(TOKEN)] {
        let (status, body) = get(http, "/metrics", authorization).await?;
        ensure!(
            status == 401,
            "{authorization:?}: status {status}, body {body}"
        );
        let json: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("{authorization:?}: a JSON body, not {body:?}"))?;
        ensure!(json["code"] == "unauthorized", "{authorization:?}: {json}");
    }

    let mut prometheus = Prometheus::start(http, TOKEN)?;
    prometheus.wait_ready().await?;

    let ada = Client::connect_and_join(http, "metrics", "ada").await?;
    let bob = Client::connect_and_join(http, "metrics", "bob").await?;
    let tracks = ada.publish_and_stream(MediaRate::default()).await?;
    bob.wait_for_packets(ada.id()?, tracks.video, 30, T).await?;
    // Loss recovery, as a browser asks for it: a NACK for a packet it got, and a PLI.
    let last = bob
        .received(ada.id()?, tracks.video)
        .last()
        .map(|p| p.sequence_number)
        .context("no video received")?;
    bob.send_nack(ada.id()?, tracks.video, &[last]).await?;
    bob.send_pli(ada.id()?, tracks.video).await?;
    let scrape = || async {
        match get(http, "/metrics", Some(&format!("Bearer {TOKEN}"))).await {
            Ok((200, text)) => Some(text),
            _ => None,
        }
    };
    wait::poll_until_async(T, "the NACK and the PLI counted", || async {
        let text = scrape().await?;
        let counted = [
            "chorus_nacks_received_total",
            "chorus_retransmitted_packets_total",
            "chorus_keyframe_requests_received_total",
        ]
        .iter()
        .all(|series| sample(&text, series).is_some_and(|v| v >= 1.0));
        counted.then_some(())
    })
    .await?;

    let participants = prometheus
        .wait_for("chorus_participants", |v| v == 2.0)
        .await?;
    ensure!(participants == 2.0);
    prometheus
        .wait_for("chorus_join_latency_seconds_count", |v| v == 2.0)
        .await?;
    prometheus
        .wait_for("chorus_rtp_forwarded_bytes_total", |v| v > 0.0)
        .await?;
    let up = prometheus.query("up{job=\"chorus\"}").await?;
    ensure!(matches!(up.as_slice(), [(_, v)] if *v == 1.0), "up: {up:?}");

    // The same figures straight from the server, with the token.
    let text = scrape().await.context("a scrape with the token")?;
    for (series, at_least) in [
        ("chorus_rooms", 1.0),
        ("chorus_participants", 2.0),
        ("chorus_tracks", 2.0),
        ("chorus_subscriptions", 2.0),
        ("chorus_peers{state=\"connected\"}", 2.0),
        ("chorus_rtp_received_packets_total", 1.0),
        ("chorus_rtp_received_bytes_total", 1.0),
        ("chorus_rtp_forwarded_packets_total", 1.0),
        ("chorus_rtp_forwarded_bytes_total", 1.0),
        ("chorus_join_latency_seconds_count", 2.0),
    ] {
        let value = sample(&text, series).with_context(|| format!("no {series} in\n{text}"))?;
        ensure!(
            value >= at_least,
            "{series} is {value}, expected >= {at_least}"
        );
    }
    let busy = sample(&text, "chorus_worker_busy_seconds_total").context("busy seconds")?;
    ensure!(busy > 0.0, "worker busy seconds {busy}");

    check_dashboard(&prometheus, &text).await?;
    let figure = |series| sample(&text, series).unwrap_or(f64::NAN);
    eprintln!(
        "metrics: forwarded {} packets / {} bytes, worker busy {:.3} s, {} joins in {:.1} ms",
        figure("chorus_rtp_forwarded_packets_total"),
        figure("chorus_rtp_forwarded_bytes_total"),
        figure("chorus_worker_busy_seconds_total"),
        figure("chorus_join_latency_seconds_count"),
        figure("chorus_join_latency_seconds_sum") * 1000.0,
    );

    ada.close().await;
    bob.close().await;
    Ok(())
}

/// Every query of `docs/grafana-dashboard.json` is valid PromQL that Prometheus evaluates,
/// and every `chorus_` metric it names is in the scrape `exposition`.
async fn check_dashboard(prometheus: &Prometheus, exposition: &str) -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana-dashboard.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let dashboard: serde_json::Value = serde_json::from_str(&text).context("dashboard JSON")?;
    let panels = dashboard["panels"].as_array().context("no panels")?;
    let mut queries = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .with_context(|| format!("{title}: a target without expr"))?;
            // What Grafana substitutes for its variables.
            let concrete = expr
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            prometheus
                .query(&concrete)
                .await
                .with_context(|| format!("dashboard panel {title:?}"))?;
            queries += 1;
            for name in metric_names(expr) {
                let family = ["_bucket", "_total"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name);
                ensure!(
                    exposition.contains(&format!("# TYPE {family} ")),
                    "dashboard panel {title:?} names {name}, which /metrics does not have"
                );
            }
        }
    }
    ensure!(queries >= 10, "only {queries} dashboard queries");
    Ok(())
}

/// The `chorus_...` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> impl Iterator<Item = &str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("chorus_"))
}
