//! Webhooks: room events ([`RoomEvent`]) POSTed as signed JSON to the URLs of the config's
//! `[webhooks]` section. `docs/webhooks.md` is the receiver's side of this file.
//!
//! The shape:
//! - The rooms hand events to the hub, which `try_send`s them into a bounded channel
//!   ([`chorus_sfu::events::EVENT_QUEUE`]); a room never waits on a webhook.
//! - One dispatcher task owns the receiving end of that channel. It wraps each event in an
//!   envelope (`id`, `createdAt`, then the event's own fields), serializes it once, and
//!   offers it to each URL's queue without waiting: a full queue drops the event for that
//!   URL, counts it and logs (rate-limited).
//! - One delivery task per URL takes its queue in order: POST, retry with exponential
//!   backoff on connection errors, timeouts, 5xx, 408 and 429, give up after
//!   `max_attempts`, then the next event. Each attempt is signed afresh (HMAC-SHA256 with an
//!   API secret over `"<unix seconds>.<body>"`).
//!
//! What the sender counts lives in [`WebhookStats`] (atomics, for an exporter).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chorus_sfu::events::RoomEvent;
use hmac::{Hmac, Mac};
use http::Uri;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// Events waiting for one URL, by default (`webhooks.queue`). About 1,000 events of a few
/// hundred bytes each: enough to ride out a receiver that is down for its whole retry span
/// (tens of seconds) while a busy server has a burst of joins and leaves, at a few hundred
/// KB of memory per URL. When it is full, new events for that URL are dropped, counted
/// ([`WebhookStats::dropped`]) and logged at warn (at most every [`WARN_INTERVAL`]); other
/// URLs and the rooms are not affected.
pub const URL_QUEUE: usize = 1024;

/// Attempts per event and URL, by default (`webhooks.max_attempts`): 1 + 4 retries, after
/// 1, 2, 4 and 8 seconds.
pub const MAX_ATTEMPTS: u32 = 5;

/// Time for one attempt (connect, TLS, request and response), by default
/// (`webhooks.timeout_secs`).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The wait after the first failed attempt; it doubles after each further failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// The longest wait between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How far a signature's timestamp may be from the receiver's clock before it refuses the
/// request as a possible replay (see [`verify`]).
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// At most one warning per URL and kind (drops, failures) in this interval; the next one
/// says how many happened since.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The largest response body read (and thrown away); a longer one ends the connection.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "x-chorus-signature";
/// The event's name, as in the body's `event` field.
pub const EVENT_HEADER: &str = "x-chorus-event";
/// The event's `id`, the same on every attempt: receivers deduplicate with it.
pub const DELIVERY_HEADER: &str = "x-chorus-delivery";
/// The API key whose secret signed the request (`webhooks.key`).
pub const KEY_HEADER: &str = "x-chorus-key";
/// Which attempt this is, from 1.
pub const ATTEMPT_HEADER: &str = "x-chorus-attempt";

type HmacSha256 = Hmac<Sha256>;

/// What can go wrong setting the sender up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A URL that is not an absolute `http://` or `https://` URL with a host.
    #[error("webhook URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The TLS client configuration could not be built.
    #[error("webhook TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    /// The system's random source failed (for the delivery ids).
    #[error("webhook ids: no random source")]
    Random,
}

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header lacks `t=` or `v1=`, or a value does not parse.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is further from now than the tolerance.
    #[error("signature timestamp is {0} s away from now")]
    Stale(u64),
    /// No `v1` matches the body and the secret.
    #[error("signature does not match")]
    Mismatch,
}

/// One webhook URL, parsed.
#[derive(Debug, Clone)]
pub struct Target {
    /// `https` (else `http`).
    tls: bool,
    /// Host as in the URL (IPv6 in brackets).
    host: String,
    port: u16,
    /// `host[:port]`, for the Host header.
    authority: String,
    /// Path and query, for the request line.
    path: String,
    /// The URL without its query (which may carry a token), for logs.
    display: String,
}

impl Target {
    /// Parses an absolute `http://` or `https://` URL. User info (`user:pass@`) is refused:
    /// it would be sent nowhere.
    pub fn parse(url: &str) -> Result<Self, WebhookError> {
        let bad = |reason: &str| WebhookError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(_) => return Err(bad("the scheme must be http or https")),
            None => return Err(bad("not an absolute URL (http://host/path)")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user info (user:pass@) is not supported"));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_owned();
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            display: format!(
                "{}://{}{}",
                if tls { "https" } else { "http" },
                authority,
                uri.path()
            ),
            path,
        })
    }

    /// The host without IPv6 brackets, for connecting and for TLS server names.
    fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

/// Everything the sender needs, resolved from the config.
#[derive(Clone)]
pub struct WebhookSettings {
    pub targets: Vec<Target>,
    /// The API key that signs (named in [`KEY_HEADER`]).
    pub key: String,
    /// Its secret.
    pub secret: Vec<u8>,
    /// Time for one attempt.
    pub timeout: Duration,
    /// Attempts per event and URL (at least 1).
    pub max_attempts: u32,
    /// Events waiting per URL (at least 1).
    pub queue: usize,
    /// The wait after the first failed attempt (see [`backoff`]).
    pub backoff_base: Duration,
}

// The secret stays out of `{:?}` output (and so out of logs).
impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let targets: Vec<String> = self.targets.iter().map(|t| t.to_string()).collect();
        f.debug_struct("WebhookSettings")
            .field("targets", &targets)
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("queue", &self.queue)
            .field("backoff_base", &self.backoff_base)
            .finish()
    }
}

/// What the sender counts, over all URLs (an event sent to two URLs counts twice).
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Deliveries answered with a 2xx.
    pub delivered: AtomicU64,
    /// Deliveries given up: a status that is not retried (4xx but 408 and 429, 1xx, 3xx),
    /// or the last attempt failed.
    pub failed: AtomicU64,
    /// Attempts after the first (each retry counts once).
    pub retried: AtomicU64,
    /// Events dropped because a URL's queue was full.
    pub dropped: AtomicU64,
    /// Deliveries queued or under way.
    pub pending: AtomicU64,
}

/// A copy of [`WebhookStats`] at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WebhookCounts {
    pub delivered: u64,
    pub failed: u64,
    pub retried: u64,
    pub dropped: u64,
    pub pending: u64,
}

impl WebhookStats {
    pub fn snapshot(&self) -> WebhookCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WebhookCounts {
            delivered: get(&self.delivered),
            failed: get(&self.failed),
            retried: get(&self.retried),
            dropped: get(&self.dropped),
            pending: get(&self.pending),
        }
    }
}

/// The running sender: its counters, and a way to wait for the queues to empty.
#[derive(Debug, Clone)]
pub struct Webhooks {
    stats: Arc<WebhookStats>,
    /// A handle on the events channel, to see whether events wait in it (see
    /// [`Webhooks::drain`]); it also keeps the dispatcher running for the process's life.
    events: mpsc::Sender<RoomEvent>,
}

impl Webhooks {
    /// Starts the dispatcher and one delivery task per URL, on the current tokio runtime.
    /// Returns the sender and the sending end of its events channel, which holds `queue`
    /// events (the hub's sink: [`chorus_sfu::events::EVENT_QUEUE`]).
    pub fn spawn(
        settings: WebhookSettings,
        queue: usize,
    ) -> Result<(Self, mpsc::Sender<RoomEvent>), WebhookError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut prefix = [0u8; 8];
        provider
            .secure_random
            .fill(&mut prefix)
            .map_err(|_| WebhookError::Random)?;
        let tls = if settings.targets.iter().any(|t| t.tls) {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        let stats = Arc::new(WebhookStats::default());
        let settings = Arc::new(settings);
        let mut queues = Vec::with_capacity(settings.targets.len());
        for target in &settings.targets {
            let (tx, rx) = mpsc::channel(settings.queue.max(1));
            queues.push(UrlQueue {
                display: target.to_string(),
                tx,
                drops: RateLimitedWarn::default(),
            });
            tokio::spawn(
                UrlSender {
                    target: target.clone(),
                    settings: settings.clone(),
                    stats: stats.clone(),
                    tls: tls.clone(),
                    conn: None,
                    failures: RateLimitedWarn::default(),
                }
                .run(rx),
            );
        }
        let (events, rx) = mpsc::channel(queue.max(1));
        tokio::spawn(dispatch(rx, queues, stats.clone(), hex(&prefix)));
        let webhooks = Self {
            stats,
            events: events.clone(),
        };
        Ok((webhooks, events))
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<WebhookStats> {
        &self.stats
    }

    /// Waits until no event waits in the events channel and no delivery is queued or under
    /// way (seen twice in a row, [`DRAIN_POLL`] apart, so that an event between the two
    /// queues is not missed), for at most `within` (at shutdown, and in tests). Returns
    /// whether everything was sent.
    pub async fn drain(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut quiet = 0;
        loop {
            let idle = self.events.capacity() == self.events.max_capacity()
                && self.stats.pending.load(Ordering::Relaxed) == 0;
            quiet = if idle { quiet + 1 } else { 0 };
            if quiet == 2 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}

/// How often [`Webhooks::drain`] looks.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// The wait after failed attempt number `attempt` (from 1): [`BACKOFF_BASE`]-like `base`,
/// doubled per further failure, at most [`BACKOFF_MAX`].
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(BACKOFF_MAX)
}

/// The hex HMAC-SHA256 of `"<timestamp>.<body>"` with `secret`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    hex(&mac(secret, timestamp, body).finalize().into_bytes())
}

/// The [`SIGNATURE_HEADER`] value: `t=<timestamp>,v1=<sign(..)>`.
pub fn signature_header(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign(secret, timestamp, body))
}

/// Checks a [`SIGNATURE_HEADER`] value against `body`, as a receiver does: the timestamp
/// within `tolerance` of `now` (unix seconds), and some `v1` equal to the HMAC (compared in
/// constant time). Unknown `k=v` pairs are ignored.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (key, value) = part.trim().split_once('=').ok_or(VerifyError::Malformed)?;
        match key {
            "t" => timestamp = Some(value.parse::<u64>().map_err(|_| VerifyError::Malformed)?),
            "v1" => candidates.push(unhex(value).ok_or(VerifyError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::Malformed)?;
    if candidates.is_empty() {
        return Err(VerifyError::Malformed);
    }
    let age = now.abs_diff(timestamp);
    if age > tolerance.as_secs() {
        return Err(VerifyError::Stale(age));
    }
    let expected = mac(secret, timestamp, body);
    if candidates
        .iter()
        .any(|c| expected.clone().verify_slice(c).is_ok())
    {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: this never fails.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The JSON body: the envelope's fields, then the event's (its name in `event`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    id: &'a str,
    created_at: u64,
    #[serde(flatten)]
    event: &'a RoomEvent,
}

/// One event, serialized once and shared by every URL's queue.
#[derive(Debug, Clone)]
struct Delivery {
    id: Arc<str>,
    event: &'static str,
    body: Bytes,
}

/// A warning that is logged at most once per [`WARN_INTERVAL`], with a count of the ones
/// held back.
#[derive(Debug, Default)]
struct RateLimitedWarn {
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimitedWarn {
    /// Whether to log now; if so, also how many were held back since the last one.
    fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// The dispatcher's handle on one URL's queue.
struct UrlQueue {
    display: String,
    tx: mpsc::Sender<Delivery>,
    drops: RateLimitedWarn,
}

/// Takes events from the rooms, wraps and serializes each once, and offers it to every
/// URL's queue without waiting.
async fn dispatch(
    mut events: mpsc::Receiver<RoomEvent>,
    mut queues: Vec<UrlQueue>,
    stats: Arc<WebhookStats>,
    prefix: String,
) {
    let mut seq: u64 = 0;
    while let Some(event) = events.recv().await {
        seq += 1;
        let id: Arc<str> = format!("{prefix}{seq:016x}").into();
        let created_at = u64::try_from(unix_now().as_millis()).unwrap_or(u64::MAX);
        let body = match serde_json::to_vec(&Envelope {
            id: &id,
            created_at,
            event: &event,
        }) {
            Ok(body) => Bytes::from(body),
            Err(err) => {
                tracing::error!(event = event.name(), %err, "webhook: cannot serialize event");
                continue;
            }
        };
        let delivery = Delivery {
            id,
            event: event.name(),
            body,
        };
        for queue in &mut queues {
            stats.pending.fetch_add(1, Ordering::Relaxed);
            if let Err(err) = queue.tx.try_send(delivery.clone()) {
                stats.pending.fetch_sub(1, Ordering::Relaxed);
                let dropped = stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let why = match err {
                    mpsc::error::TrySendError::Full(_) => "queue full",
                    mpsc::error::TrySendError::Closed(_) => "sender stopped",
                };
                if let Some(held_back) = queue.drops.check() {
                    tracing::warn!(
                        url = %queue.display,
                        event = delivery.event,
                        dropped,
                        since_last_warning = held_back + 1,
                        "webhook {why}; event dropped"
                    );
                }
            }
        }
    }
}

/// How one attempt ended.
enum Outcome {
    /// A 2xx.
    Delivered,
    /// A status that retrying will not change.
    Rejected(u16),
    /// Worth another attempt: why.
    Retry(String),
}

/// An HTTP/1.1 connection to one URL's server, kept between deliveries.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// Drives the connection; aborted with it.
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Delivers one URL's queue, in order.
struct UrlSender {
    target: Target,
    settings: Arc<WebhookSettings>,
    stats: Arc<WebhookStats>,
    /// Present when some URL is https.
    tls: Option<TlsConnector>,
    conn: Option<Conn>,
    failures: RateLimitedWarn,
}

impl UrlSender {
    async fn run(mut self, mut rx: mpsc::Receiver<Delivery>) {
        while let Some(delivery) = rx.recv().await {
            self.deliver(&delivery).await;
            self.stats.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Attempts `delivery` until it is delivered, rejected, or out of attempts.
    async fn deliver(&mut self, delivery: &Delivery) {
        let max_attempts = self.settings.max_attempts.max(1);
        for attempt in 1..=max_attempts {
            if attempt > 1 {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
            }
            let timeout = self.settings.timeout;
            let outcome = match tokio::time::timeout(timeout, self.attempt(delivery, attempt)).await
            {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.conn = None;
                    Outcome::Retry(format!("no answer within {timeout:?}"))
                }
            };
            match outcome {
                Outcome::Delivered => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Outcome::Rejected(status) => {
                    self.give_up(delivery, attempt, &format!("status {status}"));
                    return;
                }
                Outcome::Retry(why) if attempt == max_attempts => {
                    self.give_up(delivery, attempt, &why);
                    return;
                }
                Outcome::Retry(why) => {
                    let wait = backoff(self.settings.backoff_base, attempt);
                    tracing::debug!(
                        url = %self.target,
                        event = delivery.event,
                        delivery = &*delivery.id,
                        attempt,
                        "webhook attempt failed ({why}); retrying in {wait:?}"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn give_up(&mut self, delivery: &Delivery, attempts: u32, why: &str) {
        let failed = self.stats.failed.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(held_back) = self.failures.check() {
            tracing::warn!(
                url = %self.target,
                event = delivery.event,
                delivery = &*delivery.id,
                attempts,
                failed,
                since_last_warning = held_back + 1,
                "webhook not delivered ({why})"
            );
        }
    }

    /// One signed POST. A kept connection that fails before answering is replaced once
    /// at once (the server may have closed it while idle).
    async fn attempt(&mut self, delivery: &Delivery, attempt: u32) -> Outcome {
        let reused = self.conn.as_ref().is_some_and(|c| !c.sender.is_closed());
        match self.post(delivery, attempt).await {
            Err(why) if reused => {
                tracing::debug!(url = %self.target, "kept connection failed ({why}); reconnecting");
                self.conn = None;
                self.post(delivery, attempt)
                    .await
                    .unwrap_or_else(Outcome::Retry)
            }
            result => result.unwrap_or_else(Outcome::Retry),
        }
    }

    /// Sends the request on the kept connection (connecting first if there is none) and
    /// reads the answer. `Err` is a failure before any status.
    async fn post(&mut self, delivery: &Delivery, attempt: u32) -> Result<Outcome, String> {
        if self.conn.as_ref().is_none_or(|c| c.sender.is_closed()) {
            self.conn = Some(self.connect().await?);
        }
        let conn = self.conn.as_mut().ok_or("no connection")?;
        let timestamp = unix_now().as_secs();
        let request = http::Request::post(self.target.path.as_str())
            .header(HOST, self.target.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("chorus/", env!("CARGO_PKG_VERSION")))
            .header(EVENT_HEADER, delivery.event)
            .header(DELIVERY_HEADER, &*delivery.id)
            .header(KEY_HEADER, self.settings.key.as_str())
            .header(ATTEMPT_HEADER, attempt)
            .header(
                SIGNATURE_HEADER,
                signature_header(&self.settings.secret, timestamp, &delivery.body),
            )
            .body(Full::new(delivery.body.clone()))
            .map_err(|e| format!("building the request: {e}"))?;
        let sent = async {
            conn.sender.ready().await?;
            conn.sender.send_request(request).await
        };
        let response = match sent.await {
            Ok(response) => response,
            Err(err) => {
                self.conn = None;
                return Err(format!("sending: {err}"));
            }
        };
        let status = response.status();
        // Read the answer so that the connection can carry the next request.
        if Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .is_err()
        {
            self.conn = None;
        }
        Ok(if status.is_success() {
            Outcome::Delivered
        } else if status.is_server_error()
            || status == http::StatusCode::REQUEST_TIMEOUT
            || status == http::StatusCode::TOO_MANY_REQUESTS
        {
            Outcome::Retry(format!("status {}", status.as_u16()))
        } else {
            Outcome::Rejected(status.as_u16())
        })
    }

    async fn connect(&self) -> Result<Conn, String> {
        let target = &self.target;
        let tcp = TcpStream::connect((target.bare_host(), target.port))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if !target.tls {
            return handshake(TokioIo::new(tcp)).await;
        }
        let tls = self.tls.as_ref().ok_or("no TLS client")?;
        let name = ServerName::try_from(target.bare_host().to_owned())
            .map_err(|e| format!("TLS server name: {e}"))?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        handshake(TokioIo::new(stream)).await
    }
}

/// Starts HTTP/1.1 on `io` and spawns the task that drives it.
async fn handshake<T>(io: T) -> Result<Conn, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let task = tokio::spawn(ignore_result(connection));
    Ok(Conn { sender, task })
}

async fn ignore_result<T, E>(fut: impl Future<Output = Result<T, E>>) {
    let _ = fut.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use chorus_protocol::RoomId;

    const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!";

    #[test]
    fn a_signature_verifies_and_a_changed_body_or_secret_does_not() {
        let body = br#"{"id":"1","event":"roomStarted","room":"a"}"#;
        let header = signature_header(SECRET, 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
        let tolerance = SIGNATURE_TOLERANCE;
        assert_eq!(
            verify(SECRET, &header, body, 1_700_000_100, tolerance),
            Ok(())
        );
        let tampered = br#"{"id":"1","event":"roomStarted","room":"b"}"#;
        assert_eq!(
            verify(SECRET, &header, tampered, 1_700_000_100, tolerance),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                b"another secret, also 32 bytes long",
                &header,
                body,
                1_700_000_100,
                tolerance
            ),
            Err(VerifyError::Mismatch)
        );
        // The timestamp is signed too: moving it breaks the signature.
        let moved = header.replace("t=1700000000", "t=1700000050");
        assert_eq!(
            verify(SECRET, &moved, body, 1_700_000_100, tolerance),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn old_or_future_timestamps_and_malformed_headers_are_refused() {
        let body = b"{}";
        let header = signature_header(SECRET, 1_000_000, body);
        let tolerance = SIGNATURE_TOLERANCE;
        assert_eq!(
            verify(SECRET, &header, body, 1_000_000 + 301, tolerance),
            Err(VerifyError::Stale(301))
        );
        assert_eq!(
            verify(SECRET, &header, body, 1_000_000 - 301, tolerance),
            Err(VerifyError::Stale(301))
        );
        assert_eq!(
            verify(SECRET, &header, body, 1_000_000 + 300, tolerance),
            Ok(())
        );
        for bad in [
            "",
            "t=1",
            "v1=00",
            "t=x,v1=00",
            "t=1,v1=0g",
            "t=1,v1=abc",
            "garbage",
        ] {
            assert_eq!(
                verify(SECRET, bad, body, 1, tolerance),
                Err(VerifyError::Malformed),
                "{bad:?}"
            );
        }
        // Unknown pairs are ignored; any matching v1 will do.
        let v1 = sign(SECRET, 1_000_000, body);
        let several = format!("t=1000000,v0=zz,v1={},v1={v1}", "00".repeat(32));
        assert_eq!(verify(SECRET, &several, body, 1_000_000, tolerance), Ok(()));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Known answers from another implementation (Python's hmac): RFC 4231 test case 2,
        // and the signed string "<t>.<body>".
        let mut m = HmacSha256::new_from_slice(b"Jefe").expect("key");
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            sign(SECRET, 1_700_000_000, br#"{"event":"roomStarted"}"#),
            "c88056733e2c5ceed289057b878120741b5aa8377225bad7379229762235bd5f"
        );
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let base = BACKOFF_BASE;
        let waits: Vec<u64> = (1..=8).map(|a| backoff(base, a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(base, 0), base);
        assert_eq!(backoff(base, u32::MAX), BACKOFF_MAX);
        assert_eq!(
            backoff(Duration::from_millis(10), 3),
            Duration::from_millis(40)
        );
    }

    #[test]
    fn urls_are_checked() {
        let t = Target::parse("https://hooks.example.org/chorus?token=abc").expect("url");
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("hooks.example.org", 443));
        assert_eq!(t.path, "/chorus?token=abc");
        assert_eq!(t.to_string(), "https://hooks.example.org/chorus");
        let t = Target::parse("http://[::1]:8081").expect("url");
        assert_eq!((t.bare_host(), t.port, t.path.as_str()), ("::1", 8081, "/"));
        assert_eq!(t.authority, "[::1]:8081");
        for (bad, why) in [
            ("ftp://x/", "scheme"),
            ("/hook", "absolute"),
            ("http://user:pw@x/", "user info"),
            ("not a url", ""),
        ] {
            let err = Target::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    /// What the test receiver saw of one request: attempt, delivery, event, whether the
    /// signature verified.
    type Seen = (String, String, String, bool);

    /// A receiver on 127.0.0.1 that answers each request with the next status of a script
    /// (200 once it runs out), recording (attempt, delivery, event, verified).
    #[derive(Clone, Default)]
    struct Receiver {
        script: Arc<Mutex<Vec<u16>>>,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let ok = verify(
            SECRET,
            &header(SIGNATURE_HEADER),
            &body,
            unix_now().as_secs(),
            SIGNATURE_TOLERANCE,
        )
        .is_ok();
        r.seen.lock().expect("lock").push((
            header(ATTEMPT_HEADER),
            header(DELIVERY_HEADER),
            header(EVENT_HEADER),
            ok,
        ));
        let mut script = r.script.lock().expect("lock");
        let status = if script.is_empty() {
            200
        } else {
            script.remove(0)
        };
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
    }

    async fn start_receiver(script: Vec<u16>) -> (Receiver, String) {
        let receiver = Receiver {
            script: Arc::new(Mutex::new(script)),
            ..Receiver::default()
        };
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (receiver, format!("http://{addr}/hook"))
    }

    fn settings(urls: &[&str], max_attempts: u32, queue: usize) -> WebhookSettings {
        WebhookSettings {
            targets: urls
                .iter()
                .map(|u| Target::parse(u).expect("url"))
                .collect(),
            key: "KEY".into(),
            secret: SECRET.to_vec(),
            timeout: Duration::from_secs(2),
            max_attempts,
            queue,
            backoff_base: Duration::from_millis(10),
        }
    }

    fn started(room: &str) -> RoomEvent {
        RoomEvent::RoomStarted {
            room: RoomId::new(room).expect("room"),
        }
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_5xx_is_retried_in_order_and_a_4xx_is_not() {
        let (receiver, url) = start_receiver(vec![500, 503, 200, 400]).await;
        let (webhooks, tx) = Webhooks::spawn(settings(&[&url], 5, 16), 16).expect("spawn");
        for room in ["a", "b", "c"] {
            tx.try_send(started(room)).expect("send");
        }
        assert!(webhooks.drain(Duration::from_secs(10)).await, "drained");
        let seen = receiver.seen.lock().expect("lock").clone();
        let attempts: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        // a: 500, 503, 200; b: 400 (given up at once); c: 200.
        assert_eq!(attempts, ["1", "2", "3", "1", "1"]);
        assert!(seen.iter().all(|s| s.3), "every signature verifies");
        assert!(seen.iter().all(|s| s.2 == "roomStarted"));
        assert_eq!(seen[0].1, seen[2].1, "a retry keeps its delivery id");
        assert_ne!(seen[2].1, seen[3].1);
        let counts = webhooks.stats().snapshot();
        assert_eq!(
            (
                counts.delivered,
                counts.failed,
                counts.retried,
                counts.dropped
            ),
            (2, 1, 2, 0)
        );
    }

    #[tokio::test]
    async fn the_last_failed_attempt_gives_up_and_the_next_event_goes() {
        let (receiver, url) = start_receiver(vec![500, 500, 200]).await;
        let (webhooks, tx) = Webhooks::spawn(settings(&[&url], 2, 16), 16).expect("spawn");
        tx.try_send(started("a")).expect("send");
        tx.try_send(started("b")).expect("send");
        assert!(webhooks.drain(Duration::from_secs(10)).await);
        assert_eq!(receiver.seen.lock().expect("lock").len(), 3);
        let counts = webhooks.stats().snapshot();
        assert_eq!((counts.delivered, counts.failed, counts.retried), (1, 1, 1));
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_times_out_and_a_full_queue_drops() {
        // Accepts connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let silent_url = format!("http://{}/hook", silent.local_addr().expect("addr"));
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = held.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = silent.accept().await {
                keep.lock().expect("lock").push(stream);
            }
        });
        let (receiver, good_url) = start_receiver(Vec::new()).await;
        let mut s = settings(&[&silent_url, &good_url], 1, 1);
        s.timeout = Duration::from_secs(1);
        let (webhooks, tx) = Webhooks::spawn(s, 16).expect("spawn");
        // Once the silent URL has its first event in flight, it has room for one more:
        // of the next four, three drop there. The good URL, fed from the same events, gets
        // every one (each before the next is sent: its queue holds one too).
        tx.send(started("a")).await.expect("send");
        wait_for("a connection to the silent receiver", || {
            !held.lock().expect("lock").is_empty()
        })
        .await;
        wait_for("the good receiver", || {
            receiver.seen.lock().expect("lock").len() == 1
        })
        .await;
        for (i, room) in ["b", "c", "d", "e"].into_iter().enumerate() {
            tx.send(started(room)).await.expect("send");
            wait_for("the good receiver", || {
                receiver.seen.lock().expect("lock").len() == i + 2
            })
            .await;
        }
        wait_for("the silent URL's drops", || {
            webhooks.stats().dropped.load(Ordering::Relaxed) >= 3
        })
        .await;
        assert!(webhooks.drain(Duration::from_secs(5)).await);
        let counts = webhooks.stats().snapshot();
        assert_eq!(counts.delivered, 5, "{counts:?}");
        assert_eq!(counts.failed, 2, "{counts:?}");
        assert_eq!(counts.dropped, 3, "{counts:?}");
        assert_eq!(receiver.seen.lock().expect("lock").len(), 5);
    }

    #[tokio::test]
    async fn an_https_url_speaks_tls_with_the_host_as_server_name() {
        // A plain TCP listener stands in for the server: what arrives first must be a TLS
        // ClientHello (record type 22) naming the URL's host.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let url = format!("https://localhost:{port}/hook");
        let (webhooks, tx) = Webhooks::spawn(settings(&[&url], 1, 4), 4).expect("spawn");
        tx.try_send(started("a")).expect("send");
        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("a connection")
            .expect("accept");
        let mut hello = vec![0u8; 512];
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut stream, &mut hello),
        )
        .await
        .expect("a ClientHello")
        .expect("read");
        assert!(
            n > 5 && hello[0] == 22,
            "not a TLS handshake record: {:?}",
            &hello[..n]
        );
        assert!(
            hello[..n].windows(9).any(|w| w == b"localhost"),
            "no SNI for localhost"
        );
        drop(stream);
        assert!(webhooks.drain(Duration::from_secs(5)).await);
        assert_eq!(webhooks.stats().snapshot().failed, 1);
    }

    #[test]
    fn the_envelope_puts_id_and_time_before_the_event() {
        let event = started("standup");
        let json = serde_json::to_string(&Envelope {
            id: "e1",
            created_at: 1_700_000_000_123,
            event: &event,
        })
        .expect("json");
        assert_eq!(
            json,
            r#"{"id":"e1","createdAt":1700000000123,"event":"roomStarted","room":"standup"}"#
        );
    }
}
