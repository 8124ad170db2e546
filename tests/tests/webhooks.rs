//! Webhooks end to end: a real `chorus` with `[webhooks]` pointing at an HTTP receiver this
//! test starts on 127.0.0.1, which records every request and checks its signature with its
//! own code (as a receiver written from `docs/webhooks.md` would). Build the server first:
//! `cargo build -p chorus`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chorus_protocol::ParticipantId;
use chorus_tests::harness::http_get;
use chorus_tests::{Client, MediaRate, Server, init_tracing, wait};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// Generous bound for anything signaling or media related on a loaded 2-core machine.
const T: Duration = Duration::from_secs(15);

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!";

/// How far the signature's timestamp may be from this receiver's clock.
const TOLERANCE_SECS: u64 = 300;

/// The receiver's own signature check: `X-Chorus-Signature: t=<secs>,v1=<hex>` where the
/// hex is HMAC-SHA256(secret, "<t>.<body>"), compared in constant time, and `t` near now.
fn check_signature(secret: &[u8], header: &str, body: &[u8], now: u64) -> Result<()> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for pair in header.split(',') {
        match pair.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t.parse::<u64>().context("t")?),
            Some(("v1", hex)) => signatures.push(hex.to_owned()),
            _ => {}
        }
    }
    let timestamp = timestamp.context("no t=")?;
    ensure!(
        now.abs_diff(timestamp) <= TOLERANCE_SECS,
        "timestamp {timestamp} is too far from now ({now})"
    );
    for hex in signatures {
        let Some(bytes) = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()
        else {
            continue;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).context("key")?;
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        if mac.verify_slice(&bytes).is_ok() {
            return Ok(());
        }
    }
    bail!("no v1 signature matches")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hook {
    at: Instant,
    /// X-Chorus-Event.
    event: String,
    /// X-Chorus-Delivery.
    delivery: String,
    /// X-Chorus-Attempt.
    attempt: String,
    /// X-Chorus-Key.
    key: String,
    content_type: String,
    /// The receiver's signature check.
    verified: Result<(), String>,
    body: Value,
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 204 to everything.
    Accept,
    /// 500 to the first request, 204 after.
    FailFirst,
    /// Never answers.
    Silent,
}

#[derive(Clone)]
struct Receiver {
    mode: Mode,
    failed_once: Arc<AtomicBool>,
    hooks: Arc<Mutex<Vec<Hook>>>,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1; returns it and its URL.
    async fn start(mode: Mode) -> Result<(Self, String)> {
        let receiver = Receiver {
            mode,
            failed_once: Arc::new(AtomicBool::new(false)),
            hooks: Arc::new(Mutex::new(Vec::new())),
        };
        let app = axum::Router::new()
            .route("/hooks/chorus", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hooks/chorus", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((receiver, url))
    }

    fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until some request carries `event` (in X-Chorus-Event); returns them all.
    async fn wait_for(&self, event: &str, count: usize) -> Result<Vec<Hook>> {
        wait::poll_until(T, &format!("{count} × {event} webhook"), || {
            let hooks = self.hooks();
            (hooks.iter().filter(|h| h.event == event).count() >= count).then_some(hooks)
        })
        .await
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let hook = Hook {
        at: Instant::now(),
        event: header("x-chorus-event"),
        delivery: header("x-chorus-delivery"),
        attempt: header("x-chorus-attempt"),
        key: header("x-chorus-key"),
        content_type: header("content-type"),
        verified: check_signature(
            SECRET.as_bytes(),
            &header("x-chorus-signature"),
            &body,
            unix_now(),
        )
        .map_err(|e| e.to_string()),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    r.hooks.lock().unwrap_or_else(|e| e.into_inner()).push(hook);
    match r.mode {
        Mode::Accept => StatusCode::NO_CONTENT,
        Mode::FailFirst if !r.failed_once.swap(true, Ordering::Relaxed) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        Mode::FailFirst => StatusCode::NO_CONTENT,
        Mode::Silent => std::future::pending().await,
    }
}

fn config(url: &str, extra: &str) -> String {
    format!("[auth]\nkeys = {{ KEY = \"{SECRET}\" }}\n\n[webhooks]\nurls = [\"{url}\"]\n{extra}")
}

/// The position of the first hook matching `pred`, or an error naming `what`.
fn position(hooks: &[Hook], what: &str, pred: impl Fn(&Hook) -> bool) -> Result<usize> {
    hooks
        .iter()
        .position(pred)
        .with_context(|| format!("no {what} among {:?}", names(hooks)))
}

fn names(hooks: &[Hook]) -> Vec<&str> {
    hooks.iter().map(|h| h.event.as_str()).collect()
}

#[test]
fn a_tampered_body_fails_the_receivers_check() {
    let body = br#"{"id":"1","createdAt":1,"event":"roomStarted","room":"standup"}"#;
    let now = unix_now();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{now}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let header = format!("t={now},v1={hex}");
    assert!(check_signature(SECRET.as_bytes(), &header, body, now).is_ok());
    let tampered = br#"{"id":"1","createdAt":1,"event":"roomStarted","room":"standuP"}"#;
    assert!(check_signature(SECRET.as_bytes(), &header, tampered, now).is_err());
    assert!(check_signature(b"another secret of thirty-two bytes", &header, body, now).is_err());
    assert!(check_signature(SECRET.as_bytes(), &header, body, now + TOLERANCE_SECS + 1).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_sends_every_event_signed_and_in_causal_order() -> Result<()> {
    init_tracing();
    let (receiver, url) = Receiver::start(Mode::Accept).await?;
    let server = Server::start_with_config(&config(&url, "")).await?;
    let ada = Client::connect_and_join(server.http_addr(), "standup", "ada").await?;
    let tracks = ada.publish_and_stream(MediaRate::default()).await?;
    let bob = Client::connect_and_join(server.http_addr(), "standup", "bob").await?;
    receiver.wait_for("trackPublished", 2).await?;
    receiver.wait_for("participantJoined", 2).await?;
    let (ada_id, bob_id) = (ada.id()?, bob.id()?);
    ada.leave().await?;
    bob.close().await;
    let hooks = receiver.wait_for("roomFinished", 1).await?;

    let mut counts = std::collections::BTreeMap::new();
    for hook in &hooks {
        *counts.entry(hook.event.as_str()).or_insert(0) += 1;
    }
    let want: std::collections::BTreeMap<&str, i32> = [
        ("roomStarted", 1),
        ("participantJoined", 2),
        ("trackPublished", 2),
        ("trackUnpublished", 2),
        ("participantLeft", 2),
        ("roomFinished", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, want, "events: {:?}", names(&hooks));

    let mut ids = std::collections::HashSet::new();
    for hook in &hooks {
        assert_eq!(hook.verified, Ok(()), "{hook:?}");
        assert_eq!(hook.attempt, "1", "{hook:?}");
        assert_eq!(hook.key, "KEY");
        assert_eq!(hook.content_type, "application/json");
        assert_eq!(hook.body["event"], hook.event.as_str(), "{hook:?}");
        assert_eq!(hook.body["id"], hook.delivery.as_str(), "{hook:?}");
        assert_eq!(hook.body["room"], "standup", "{hook:?}");
        let created = hook.body["createdAt"].as_u64().context("createdAt")?;
        assert!(created.abs_diff(unix_now() * 1000) < 120_000, "{hook:?}");
        assert!(ids.insert(hook.delivery.clone()), "delivery ids are unique");
    }

    // Causal order within the room.
    let is = |event: &'static str, id: ParticipantId| {
        move |h: &Hook| h.event == event && h.body["participantId"] == id.0
    };
    assert_eq!(hooks[0].event, "roomStarted");
    assert_eq!(hooks[hooks.len() - 1].event, "roomFinished");
    let ada_joined = position(&hooks, "ada's join", is("participantJoined", ada_id))?;
    let bob_joined = position(&hooks, "bob's join", is("participantJoined", bob_id))?;
    let ada_left = position(&hooks, "ada's leave", is("participantLeft", ada_id))?;
    let bob_left = position(&hooks, "bob's leave", is("participantLeft", bob_id))?;
    assert_eq!(hooks[ada_left].body["reason"], "left");
    assert_eq!(hooks[bob_left].body["reason"], "disconnected");
    assert_eq!(hooks[ada_joined].body["name"], "ada");
    assert!(ada_joined < ada_left && bob_joined < bob_left);
    for track in [tracks.audio, tracks.video] {
        let track_id = track.0;
        let published = position(&hooks, "trackPublished", |h| {
            h.event == "trackPublished" && h.body["track"]["id"] == track_id
        })?;
        let unpublished = position(&hooks, "trackUnpublished", |h| {
            h.event == "trackUnpublished" && h.body["trackId"] == track_id
        })?;
        assert!(
            ada_joined < published && published < unpublished && unpublished < ada_left,
            "track {track}: {:?}",
            names(&hooks)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_500_gets_the_event_again_before_the_next() -> Result<()> {
    init_tracing();
    let (receiver, url) = Receiver::start(Mode::FailFirst).await?;
    let server = Server::start_with_config(&config(&url, "")).await?;
    let ada = Client::connect_and_join(server.http_addr(), "retro", "ada").await?;
    ada.leave().await?;
    let hooks = receiver.wait_for("roomFinished", 1).await?;
    assert_eq!(
        names(&hooks),
        [
            "roomStarted",
            "roomStarted",
            "participantJoined",
            "participantLeft",
            "roomFinished"
        ]
    );
    let (first, retry) = (&hooks[0], &hooks[1]);
    assert_eq!((first.attempt.as_str(), retry.attempt.as_str()), ("1", "2"));
    assert_eq!(
        first.delivery, retry.delivery,
        "a retry keeps its delivery id"
    );
    assert_eq!(first.body, retry.body, "and its body");
    assert!(
        retry.at.duration_since(first.at) >= Duration::from_millis(900),
        "the retry waits for the backoff (1 s): {:?}",
        retry.at.duration_since(first.at)
    );
    assert!(hooks.iter().all(|h| h.verified.is_ok()), "{hooks:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_slows_no_call_and_its_full_queue_drops() -> Result<()> {
    init_tracing();
    let (receiver, url) = Receiver::start(Mode::Silent).await?;
    // One event in flight for a long time, one queued: the rest must drop.
    let server = Server::start_with_config(&config(
        &url,
        "queue = 1\ntimeout_secs = 60\nmax_attempts = 1\n",
    ))
    .await?;
    let started = Instant::now();
    let mut clients = Vec::new();
    for name in ["ada", "bob", "cy", "dee"] {
        let join = Instant::now();
        let client = Client::connect_and_join(server.http_addr(), "standup", name).await?;
        // A room that waited for the receiver would take 60 s here.
        ensure!(
            join.elapsed() < Duration::from_secs(5),
            "{name}'s join took {:?}",
            join.elapsed()
        );
        clients.push(client);
    }
    let publish = Instant::now();
    clients[0].publish_and_stream(MediaRate::default()).await?;
    ensure!(publish.elapsed() < Duration::from_secs(10));
    for client in &clients {
        client.leave().await?;
    }
    server
        .wait_for_stats(T, "the room to close", |s| s.rooms == 0)
        .await?;
    let line = server
        .wait_for_log(T, &["webhook queue full", "event dropped"])
        .await?;
    eprintln!("drop logged: {line}");
    // The hub's own queue never filled: the sender took every event at once.
    let (status, body) = http_get(server.http_addr(), "/api/stats").await?;
    ensure!(status == 200, "stats: {status}");
    let stats: Value = serde_json::from_str(&body)?;
    assert_eq!(stats["event_drops"], 0, "{stats}");
    // The receiver saw the first event only (the one in flight).
    let hooks = receiver.hooks();
    assert_eq!(names(&hooks), ["roomStarted"]);
    eprintln!("call of 4 with a silent receiver: {:?}", started.elapsed());
    Ok(())
}
