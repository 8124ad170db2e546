//! Prometheus metrics at `GET /metrics`, in the OpenMetrics text format.
//!
//! Nothing is counted here: the media worker and the hub keep their counters as relaxed
//! atomics (the worker's [`WorkerStats`], the hub's join latency), and a scrape reads them
//! through a [`Collector`]. The media path pays only its own `fetch_add`s, and a scrape
//! costs one pass over the rooms plus a few dozen atomic loads.
//!
//! With a bearer token configured, a scrape must carry `Authorization: Bearer <token>`;
//! without it the answer is 401 with a typed JSON error.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chorus_protocol::ErrorCode;
use chorus_sfu::Hub;
use chorus_sfu::peer::ForwardDrop;
use chorus_sfu::worker::WorkerStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::auth::{bearer_token, same_secret};

/// The content type of an OpenMetrics text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The prefix of every metric's name.
const PREFIX: &str = "chorus";

/// The `[metrics]` settings the HTTP side needs. `Default` is off; the server's config
/// turns it on unless told otherwise.
#[derive(Clone, Default)]
pub struct MetricsSettings {
    /// Whether `/metrics` is served at all (when not, it is a 404 like any unknown path).
    pub enabled: bool,
    /// When set, a scrape must send `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
}

// The token stays out of `{:?}` output (and so out of logs).
impl fmt::Debug for MetricsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsSettings")
            .field("enabled", &self.enabled)
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| "..."))
            .finish()
    }
}

/// Why a scrape got no metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A bearer token is configured and the request did not carry it (or carried another).
    #[error("this endpoint needs the header `Authorization: Bearer <metrics.bearer_token>`")]
    Unauthorized,
    /// The exposition could not be written: a bug, never the client's doing.
    #[error("the metrics could not be encoded")]
    Encode(#[from] fmt::Error),
}

impl MetricsError {
    /// The code in the JSON body.
    pub fn code(&self) -> ErrorCode {
        match self {
            MetricsError::Unauthorized => ErrorCode::Unauthorized,
            MetricsError::Encode(_) => ErrorCode::Internal,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            MetricsError::Unauthorized => StatusCode::UNAUTHORIZED,
            MetricsError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for MetricsError {
    fn into_response(self) -> Response {
        let mut response = crate::api_error(self.status(), self.code(), &self.to_string());
        if matches!(self, MetricsError::Unauthorized) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"chorus metrics\""),
            );
        }
        response
    }
}

/// What a scrape reads: the registry (whose one collector reads the hub) and the token.
struct Metrics {
    registry: Registry,
    bearer_token: Option<String>,
}

impl Metrics {
    fn new(hub: Hub, bearer_token: Option<String>) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(HubCollector { hub }));
        Self {
            registry,
            bearer_token,
        }
    }

    /// The exposition, as text.
    fn render(&self) -> Result<String, MetricsError> {
        let mut text = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// Refuses a request without the configured token.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), MetricsError> {
        let Some(expected) = &self.bearer_token else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| bearer_token(value.as_bytes()));
        match given {
            Some(given) if same_secret(given, expected.as_bytes()) => Ok(()),
            _ => Err(MetricsError::Unauthorized),
        }
    }
}

/// The `/metrics` route, or no route when metrics are off. Merged into the app's router.
pub fn routes(hub: Hub, settings: &MetricsSettings) -> Router {
    if !settings.enabled {
        return Router::new();
    }
    let metrics = Arc::new(Metrics::new(hub, settings.bearer_token.clone()));
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    let result = metrics.authorize(&headers).and_then(|()| metrics.render());
    match result {
        Ok(text) => (
            [
                (header::CONTENT_TYPE, CONTENT_TYPE),
                (header::CACHE_CONTROL, "no-store"),
            ],
            text,
        )
            .into_response(),
        Err(err) => {
            if let MetricsError::Encode(_) = err {
                tracing::error!(%err, "metrics");
            }
            err.into_response()
        }
    }
}

/// Reads the hub and its media worker at each scrape.
struct HubCollector {
    hub: Hub,
}

impl fmt::Debug for HubCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubCollector").finish_non_exhaustive()
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Writes one unlabelled gauge.
fn gauge(out: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    out.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// Writes one unlabelled counter (the encoder adds `_total` to `name`).
fn counter(out: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    out.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

/// Writes one metric of `kind` with a value per value of the label `label`.
fn labelled(
    out: &mut DescriptorEncoder<'_>,
    (name, help, kind): (&str, &str, MetricType),
    label: &'static str,
    values: &[(&'static str, u64)],
) -> fmt::Result {
    let mut metric = out.encode_descriptor(name, help, None, kind)?;
    for (value, n) in values {
        let labels = [(label, *value)];
        let mut series = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => series.encode_counter::<NoLabelSet, _, u64>(n, None)?,
            _ => series.encode_gauge(n)?,
        }
    }
    Ok(())
}

impl Collector for HubCollector {
    fn encode(&self, mut out: DescriptorEncoder<'_>) -> fmt::Result {
        let hub = self.hub.stats();
        let w: &WorkerStats = &self.hub.worker_stats();
        let out = &mut out;

        gauge(out, "rooms", "Rooms that exist now.", hub.rooms)?;
        gauge(
            out,
            "participants",
            "Participants in all rooms now.",
            hub.participants,
        )?;
        let connected = load(&w.peers_connected);
        let failed = load(&w.peers_failed);
        let connecting = hub.peers.saturating_sub(connected + failed);
        labelled(
            out,
            (
                "peers",
                "WebRTC peer connections now, by state: connecting (ICE and DTLS not up \
                 yet), connected, failed (about to be removed).",
                MetricType::Gauge,
            ),
            "state",
            &[
                ("connecting", connecting),
                ("connected", connected),
                ("failed", failed),
            ],
        )?;
        gauge(out, "tracks", "Published tracks now.", hub.tracks)?;
        gauge(
            out,
            "subscriptions",
            "Subscriptions (one track sent to one participant) now.",
            hub.subscriptions,
        )?;

        counter(
            out,
            "datagrams_received",
            "UDP datagrams and ICE-TCP frames received.",
            hub.datagrams_in,
        )?;
        counter(
            out,
            "datagrams_sent",
            "UDP datagrams and ICE-TCP frames sent.",
            hub.datagrams_out,
        )?;
        counter(
            out,
            "rtp_received_packets",
            "RTP packets received from publishers.",
            hub.rtp_in,
        )?;
        counter(
            out,
            "rtp_received_bytes",
            "RTP bytes received from publishers (header and payload, without SRTP and \
             header extensions).",
            load(&w.rtp_bytes_in),
        )?;
        counter(
            out,
            "rtp_forwarded_packets",
            "RTP packets forwarded to subscribers (one per copy).",
            hub.rtp_forwarded,
        )?;
        counter(
            out,
            "rtp_forwarded_bytes",
            "RTP bytes forwarded to subscribers, counted as for rtp_received_bytes.",
            load(&w.rtp_bytes_forwarded),
        )?;

        let mut drops: Vec<(&'static str, u64)> = ForwardDrop::ALL
            .iter()
            .map(|reason| {
                (
                    reason.label(),
                    load(&w.forward_drops_by_reason[reason.index()]),
                )
            })
            .collect();
        drops.extend([
            ("send_refused", hub.send_drops),
            ("unrouted", hub.unrouted),
            ("unknown_layer", hub.unknown_layer),
        ]);
        labelled(
            out,
            (
                "packet_drops",
                "Packets not delivered, by reason. Forwarded copies: not_connected, \
                 not_subscribed, not_negotiated, payload_type, rejected, malformed_red (RED \
                 whose blocks do not parse, for a subscriber without RED); outgoing datagrams \
                 the kernel or an ICE-TCP connection's queue would not take: send_refused; \
                 datagrams from no known peer: unrouted; simulcast packets of no known \
                 layer: unknown_layer.",
                MetricType::Counter,
            ),
            "reason",
            &drops,
        )?;

        counter(
            out,
            "audio_levels_invalid",
            "Audio packets whose audio-level element was not one byte: the level is not \
             counted (the packet is forwarded).",
            load(&w.audio_levels_invalid),
        )?;
        counter(
            out,
            "probes",
            "Probes of subscribers' downlinks: padding sent to learn whether a paused video \
             fits before it comes back.",
            load(&w.probes),
        )?;
        counter(
            out,
            "padding_packets",
            "Padding-only packets the probes sent.",
            load(&w.padding_packets),
        )?;
        counter(
            out,
            "nacks_received",
            "NACKs from subscribers naming packets the server sent them.",
            load(&w.nacks_received),
        )?;
        counter(
            out,
            "retransmitted_packets",
            "Packets sent again to answer a NACK.",
            hub.retransmitted,
        )?;
        counter(
            out,
            "retransmit_misses",
            "NACKed packets no longer in their track's history (not resent).",
            hub.retransmit_misses,
        )?;
        counter(
            out,
            "keyframe_requests_received",
            "Keyframe requests (PLI or FIR) from subscribers.",
            load(&w.keyframe_requests_received),
        )?;
        counter(
            out,
            "keyframe_requests_sent",
            "Keyframe requests (PLI) sent to publishers, after the per-layer throttle.",
            hub.keyframe_requests,
        )?;

        counter(
            out,
            "layer_switches",
            "Simulcast layer switches completed (each on a keyframe of the new layer).",
            hub.layer_switches,
        )?;
        labelled(
            out,
            (
                "subscriptions_paused",
                "Video subscriptions the last allocation paused, by reason.",
                MetricType::Gauge,
            ),
            "reason",
            &[
                ("low_bandwidth", load(&w.paused_low_bandwidth)),
                ("not_visible", load(&w.paused_not_visible)),
            ],
        )?;
        gauge(
            out,
            "subscribers_estimated",
            "Connected subscribers with a downlink estimate (transport-cc feedback).",
            load(&w.subscribers_estimated),
        )?;
        gauge(
            out,
            "subscribers_congested",
            "Subscribers whose downlink estimate was cut for congestion recently and caps \
             what they get.",
            load(&w.subscribers_congested),
        )?;
        gauge(
            out,
            "downlink_estimate_bits_per_second",
            "Sum of the subscribers' downlink estimates; divided by subscribers_estimated, \
             the mean.",
            load(&w.downlink_estimate_bps),
        )?;
        counter(
            out,
            "notice_drops",
            "Notices from the media worker to rooms (streamState, publishLayers) that did \
             not fit their queue; sent again on a later allocation.",
            hub.notice_drops,
        )?;
        // Recording (docs/recording.md).
        gauge(
            out,
            "recordings",
            "Rooms being recorded now.",
            hub.recordings,
        )?;
        counter(
            out,
            "recording_drops",
            "Packets a recording's full queue dropped (its disk fell behind); the track's \
             next keyframe repairs its file.",
            hub.recording_drops,
        )?;
        counter(
            out,
            "recording_write_errors",
            "Recording write errors (a full disk): each stops the file it hit; the call \
             goes on.",
            hub.recording_write_errors,
        )?;

        out.encode_descriptor(
            "worker_busy_seconds",
            "Seconds the media workers spent handling datagrams, commands and timers rather \
             than waiting, summed over the workers: its rate() is how many cores they kept \
             busy.",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(
            &(std::time::Duration::from_nanos(load(&w.busy_nanos)).as_secs_f64()),
            None,
        )?;
        {
            let mut metric = out.encode_descriptor(
                "media_worker_busy_seconds",
                "worker_busy_seconds of each media worker: a rate() near 1 is a worker at \
                 the limit of its core.",
                None,
                MetricType::Counter,
            )?;
            for (i, s) in self.hub.each_worker_stats().enumerate() {
                let labels = [("worker", i.to_string())];
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(
                        &(std::time::Duration::from_nanos(load(&s.busy_nanos)).as_secs_f64()),
                        None,
                    )?;
            }
        }
        counter(
            out,
            "handoff_datagrams",
            "Datagrams that one media worker's socket received for another worker's peer \
             and passed on (the kernel spreads the port's datagrams by address).",
            load(&w.handoff.sent),
        )?;
        counter(
            out,
            "handoff_dropped_datagrams",
            "Of handoff_datagrams, the ones dropped because the owner's inbox was full.",
            load(&w.handoff.dropped),
        )?;
        counter(
            out,
            "relayed_packets",
            "Packets (and keyframe requests) that one media worker handed to another's \
             mirror of a track, for a room spread over workers (media.spread_room_after).",
            load(&w.handoff.relayed),
        )?;
        counter(
            out,
            "relay_dropped_packets",
            "Of relayed_packets, the ones dropped because the other worker's inbox was full.",
            load(&w.handoff.relay_dropped),
        )?;
        gauge(
            out,
            "mirrors",
            "Tracks published on one media worker that subscribers on another receive.",
            load(&w.handoff.mirrors),
        )?;

        let joins = self.hub.join_latency();
        out.encode_descriptor(
            "join_latency_seconds",
            "Time from a join request to its answer (accepted or refused).",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            joins.sum_seconds,
            joins.count,
            &joins.buckets,
            None,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::to_bytes;
    use chorus_protocol::RoomId;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(5);

    fn hub() -> Hub {
        crate::test_hub::hub(4)
    }

    /// The value of the one sample line that starts with `series ` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[tokio::test]
    async fn a_scrape_has_every_family_and_counts_a_join() {
        let hub = hub();
        let metrics = Metrics::new(hub.clone(), None);
        let (tx, _rx) = mpsc::channel(64);
        let room = RoomId::new("metrics").expect("room");
        let _ada = tokio::time::timeout(
            DEADLINE,
            hub.join(room, "Ada".into(), chorus_sfu::Admission::default(), tx),
        )
        .await
        .expect("join in time")
        .expect("joined");
        let text = metrics.render().expect("render");
        for family in [
            "# TYPE chorus_rooms gauge",
            "# TYPE chorus_participants gauge",
            "# TYPE chorus_peers gauge",
            "# TYPE chorus_tracks gauge",
            "# TYPE chorus_subscriptions gauge",
            "# TYPE chorus_datagrams_received counter",
            "# TYPE chorus_datagrams_sent counter",
            "# TYPE chorus_rtp_received_packets counter",
            "# TYPE chorus_rtp_received_bytes counter",
            "# TYPE chorus_rtp_forwarded_packets counter",
            "# TYPE chorus_rtp_forwarded_bytes counter",
            "# TYPE chorus_packet_drops counter",
            "# TYPE chorus_nacks_received counter",
            "# TYPE chorus_retransmitted_packets counter",
            "# TYPE chorus_retransmit_misses counter",
            "# TYPE chorus_keyframe_requests_received counter",
            "# TYPE chorus_keyframe_requests_sent counter",
            "# TYPE chorus_layer_switches counter",
            "# TYPE chorus_subscriptions_paused gauge",
            "# TYPE chorus_subscribers_estimated gauge",
            "# TYPE chorus_subscribers_congested gauge",
            "# TYPE chorus_downlink_estimate_bits_per_second gauge",
            "# TYPE chorus_notice_drops counter",
            "# TYPE chorus_recordings gauge",
            "# TYPE chorus_recording_drops counter",
            "# TYPE chorus_recording_write_errors counter",
            "# TYPE chorus_worker_busy_seconds counter",
            "# TYPE chorus_join_latency_seconds histogram",
        ] {
            assert!(text.contains(family), "no {family:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(sample(&text, "chorus_rooms"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "chorus_participants"), Some(1.0), "{text}");
        assert_eq!(
            sample(&text, "chorus_join_latency_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "chorus_join_latency_seconds_bucket{le=\"+Inf\"}"),
            Some(1.0)
        );
        for reason in ForwardDrop::ALL.map(ForwardDrop::label).into_iter().chain([
            "send_refused",
            "unrouted",
            "unknown_layer",
        ]) {
            let series = format!("chorus_packet_drops_total{{reason=\"{reason}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
        }
        for state in ["connecting", "connected", "failed"] {
            let series = format!("chorus_peers{{state=\"{state}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
        }
        // The worker has run its loop: some busy time, however little.
        let busy = sample(&text, "chorus_worker_busy_seconds_total").expect("busy");
        assert!(busy >= 0.0, "{busy}");
    }

    async fn call(metrics: &Arc<Metrics>, authorization: Option<&str>) -> (StatusCode, Response) {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("header"),
            );
        }
        let response = scrape(State(metrics.clone()), headers).await;
        (response.status(), response)
    }

    #[tokio::test]
    async fn with_a_token_only_its_bearer_may_scrape() {
        let metrics = Arc::new(Metrics::new(hub(), Some("s3cret-token".into())));
        for refused in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cret-toke"),
            Some("Bearer s3cret-token2"),
            Some("Basic s3cret-token"),
            Some("s3cret-token"),
            Some("Bearer "),
        ] {
            let (status, response) = call(&metrics, refused).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused:?}");
            assert!(
                response
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"Bearer")),
                "{refused:?}"
            );
            let body = to_bytes(response.into_body(), 1 << 16).await.expect("body");
            let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
            assert_eq!(json["code"], "unauthorized");
            assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        for accepted in ["Bearer s3cret-token", "bearer  s3cret-token "] {
            let (status, response) = call(&metrics, Some(accepted)).await;
            assert_eq!(status, StatusCode::OK, "{accepted:?}");
            assert_eq!(
                response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .map(|v| v.as_bytes()),
                Some(CONTENT_TYPE.as_bytes())
            );
            let body = to_bytes(response.into_body(), 1 << 20).await.expect("body");
            let text = String::from_utf8(body.to_vec()).expect("UTF-8");
            assert!(text.contains("chorus_participants 0"), "{text}");
        }
    }

    #[tokio::test]
    async fn without_a_token_anyone_may_scrape() {
        let metrics = Arc::new(Metrics::new(hub(), None));
        for authorization in [None, Some("Bearer whatever")] {
            let (status, _) = call(&metrics, authorization).await;
            assert_eq!(status, StatusCode::OK, "{authorization:?}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc"));
        assert!(!same_secret(b"", b"abc"));
        assert!(!same_secret(b"\x9e\x9d\x9c", b"abc"));
        assert_eq!(bearer_token(b"Bearer x"), Some(&b"x"[..]));
        assert_eq!(bearer_token(b"BEARER x "), Some(&b"x"[..]));
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Token x"), None);
    }

    /// GET `path` from a real server on `router`: the status code.
    async fn get_status(router: Router, path: &str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
            .await
            .expect("a response in time")
            .expect("read");
        let head = String::from_utf8_lossy(&raw);
        head.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("a status line")
    }

    #[tokio::test]
    async fn the_switch_turns_the_route_on_and_off() {
        let hub = hub();
        let on = MetricsSettings {
            enabled: true,
            bearer_token: None,
        };
        assert_eq!(get_status(routes(hub.clone(), &on), "/metrics").await, 200);
        let off = MetricsSettings {
            enabled: false,
            bearer_token: Some("x".into()),
        };
        assert_eq!(get_status(routes(hub, &off), "/metrics").await, 404);
    }
}
