//! WHIP ingest end to end (RFC 9725): a real `chorus`, a WHIP publisher Chorus did not
//! write (aiortc from PyPI, `tests/whip/publish.py`, in `tests/.venv`), simulated browsers
//! in the same room, and bad requests that must get 4xx problems without disturbing the
//! call. Build the server first: `cargo build -p chorus`. That the publisher's media
//! decodes in a browser is shown by `tests/browser/specs/19-whip.test.js`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use chorus_protocol::{MediaKind, ParticipantId, ServerMessage, TrackId};
use chorus_tests::harness::{HttpResponse as Response, http_exchange};
use chorus_tests::{Client, MediaRate, Server, init_tracing};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Generous bound for anything signaling or media related on a loaded 2-core machine.
const T: Duration = Duration::from_secs(15);

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!";

/// An offer that passes the endpoint's quick look (an SDP with a video section) but that
/// no peer connection could answer: no ICE credentials, no fingerprint.
const BROKEN_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\na=sendonly\r\n";

/// Checks on a response of the WHIP and WHEP endpoints.
trait Problem {
    /// Checks that this is an RFC 9457 problem with `status`.
    fn expect_problem(&self, status: u16, what: &str) -> Result<serde_json::Value>;
}

impl Problem for Response {
    fn expect_problem(&self, status: u16, what: &str) -> Result<serde_json::Value> {
        ensure!(
            self.status == status,
            "{what}: status {} (wanted {status}), body {}",
            self.status,
            self.body
        );
        ensure!(
            self.header("content-type") == Some("application/problem+json"),
            "{what}: content type {:?}",
            self.header("content-type")
        );
        let problem: serde_json::Value =
            serde_json::from_str(&self.body).with_context(|| format!("{what}: problem body"))?;
        ensure!(
            problem["status"] == status && problem["detail"].is_string(),
            "{what}: problem {problem}"
        );
        Ok(problem)
    }
}

/// One HTTP/1.1 request with `Connection: close`.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response> {
    let mut headers = headers.to_vec();
    let content_type = headers
        .iter()
        .position(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|i| headers.remove(i).1);
    http_exchange(
        addr,
        method,
        path,
        &headers,
        content_type.map(|t| (t, body)),
    )
    .await
}

async fn post_offer(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    sdp: &str,
    extra: &[(&str, &str)],
) -> Result<Response> {
    let mut headers = vec![("Content-Type", content_type)];
    headers.extend_from_slice(extra);
    request(addr, "POST", path, &headers, sdp).await
}

/// An aiortc client (`tests/whip/publish.py` or `view.py`), running.
struct Publisher {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Publisher {
    /// Starts `tests/whip/publish.py` against `url`. Fails loudly when aiortc is missing.
    async fn start(url: &str, extra: &[&str]) -> Result<Self> {
        Self::start_script("publish.py", url, extra).await
    }

    /// Starts the viewer, `tests/whip/view.py`, against `url`.
    async fn view(url: &str, extra: &[&str]) -> Result<Self> {
        Self::start_script("view.py", url, extra).await
    }

    async fn start_script(script: &str, url: &str, extra: &[&str]) -> Result<Self> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = dir.join(".venv/bin/python");
        let ok = std::process::Command::new(&python)
            .args(["-c", "import aiortc"])
            .output()
            .is_ok_and(|o| o.status.success());
        ensure!(
            ok,
            "aiortc is not installed in {} (tests/run-all.sh installs it: pip install aiortc==1.16.0)",
            python.display()
        );
        let mut child = Command::new(&python)
            .arg(dir.join("whip").join(script))
            .arg(url)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting tests/whip/{script}"))?;
        let stdout = child.stdout.take().context("its stdout")?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next JSON line it prints.
    async fn next(&mut self) -> Result<serde_json::Value> {
        let line = tokio::time::timeout(T, self.lines.next_line())
            .await
            .context("the publisher to print a line in time")??
            .context("the publisher ended")?;
        serde_json::from_str(&line).with_context(|| format!("a JSON line, got {line:?}"))
    }

    /// Waits for its `event` line.
    async fn expect(&mut self, event: &str) -> Result<serde_json::Value> {
        loop {
            let line = self.next().await?;
            if line["event"] == event {
                return Ok(line);
            }
            if line["event"] == "failed" {
                bail!("the publisher failed: {line}");
            }
        }
    }

    /// Switches its tone off or on (SIGUSR1), and waits until it says so.
    async fn toggle_tone(&mut self) -> Result<()> {
        let pid = self.child.id().context("the publisher's pid")?;
        let status = std::process::Command::new("kill")
            .args(["-USR1", &pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill -USR1 {pid}");
        self.expect("tone").await.map(drop)
    }

    /// Closes its stdin: it DELETEs its session and ends.
    async fn finish(mut self) -> Result<serde_json::Value> {
        drop(self.child.stdin.take());
        // A session the server already ended may have made it say "failed" first.
        let deleted = loop {
            let line = self.next().await?;
            if line["event"] == "deleted" {
                break line;
            }
        };
        let _ = tokio::time::timeout(T, self.child.wait()).await;
        Ok(deleted)
    }
}

/// Waits until `viewer` has seen `name` join and publish an audio and a video track.
async fn whip_participant(
    viewer: &Client,
    name: &str,
) -> Result<(ParticipantId, TrackId, TrackId)> {
    let joined = viewer
        .wait_for(T, &format!("{name} to join"), |m| {
            matches!(m, ServerMessage::ParticipantJoined { participant } if participant.name == name)
        })
        .await?;
    let ServerMessage::ParticipantJoined { participant } = joined else {
        unreachable!()
    };
    let id = participant.id;
    let mut tracks = participant.tracks.clone();
    let deadline = tokio::time::Instant::now() + T;
    while tracks.len() < 2 && tokio::time::Instant::now() < deadline {
        for m in viewer.messages() {
            if let ServerMessage::TrackPublished {
                participant_id,
                track,
            } = m.message
                && participant_id == id
                && !tracks.iter().any(|t| t.id == track.id)
            {
                tracks.push(track);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let of = |kind| tracks.iter().find(|t| t.kind == kind).map(|t| t.id);
    Ok((
        id,
        of(MediaKind::Audio).context("the WHIP publisher's audio track")?,
        of(MediaKind::Video).context("the WHIP publisher's video track")?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_publishes_over_whip_with_aes_cm_and_delete_ends_the_session() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let addr = server.http_addr();
    let viewer = Client::connect_and_join(addr, "stage", "viewer").await?;
    viewer.publish_and_stream(MediaRate::default()).await?;

    // ffmpeg's WHIP muxer offers only AES-CM: so does this run.
    let url = format!("http://{addr}/whip/stage?name=aiortc");
    let mut publisher = Publisher::start(&url, &["--srtp", "aes-cm"]).await?;
    let posted = publisher.expect("posted").await?;
    ensure!(posted["status"] == 201, "POST answered {posted}");
    ensure!(
        posted["contentType"] == "application/sdp",
        "answer type {posted}"
    );
    let location = posted["location"]
        .as_str()
        .context("a Location header")?
        .to_owned();
    ensure!(
        location.starts_with("/whip/stage/") && location.len() > "/whip/stage/".len() + 16,
        "Location {location}"
    );
    publisher.expect("connected").await?;

    // The room sees a participant with the name from ?name=, and its media flows to the
    // others like anyone's.
    let (id, audio, video) = whip_participant(&viewer, "aiortc").await?;
    viewer.wait_for_packets(id, audio, 50, T).await?;
    viewer.wait_for_packets(id, video, 30, T).await?;
    let stats = server.stats().await?;
    ensure!(
        stats.participants == 2,
        "the WHIP publisher never subscribes: {stats:?}"
    );

    // A trickled candidate is accepted and ignored; an ICE restart is refused.
    let fragment = |ufrag: &str| {
        format!(
            "a=ice-ufrag:{ufrag}\r\na=ice-pwd:0123456789abcdefghijkl\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n"
        )
    };
    let trickle = [("Content-Type", "application/trickle-ice-sdpfrag")];
    let patch = request(
        addr,
        "PATCH",
        &location,
        &trickle,
        "a=end-of-candidates\r\n",
    )
    .await?;
    ensure!(patch.status == 204, "PATCH trickle: {patch:?}");
    request(addr, "PATCH", &location, &trickle, &fragment("restart"))
        .await?
        .expect_problem(422, "PATCH with an ICE restart")?;
    request(
        addr,
        "PATCH",
        &location,
        &[("Content-Type", "text/plain")],
        "x",
    )
    .await?
    .expect_problem(415, "PATCH of another type")?;

    // DELETE ends it: the others hear that it left, and the resource is gone.
    let deleted = request(addr, "DELETE", &location, &[], "").await?;
    ensure!(deleted.status == 200, "DELETE: {deleted:?}");
    viewer.wait_for_left(id).await?;
    request(addr, "DELETE", &location, &[], "")
        .await?
        .expect_problem(404, "a second DELETE")?;
    // The publisher's own DELETE, afterwards, finds nothing either.
    let again = publisher.finish().await?;
    ensure!(again["status"] == 404, "the publisher's DELETE: {again}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_publisher_that_vanishes_leaves_the_room() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let addr = server.http_addr();
    let viewer = Client::connect_and_join(addr, "stage", "viewer").await?;
    let url = format!("http://{addr}/whip/stage?name=ghost");
    let mut publisher = Publisher::start(&url, &["--post-only"]).await?;
    let posted = publisher.expect("posted").await?;
    ensure!(posted["status"] == 201, "POST answered {posted}");
    let location = posted["location"].as_str().context("Location")?.to_owned();
    let joined = viewer
        .wait_for(T, "ghost to join", |m| {
            matches!(m, ServerMessage::ParticipantJoined { participant } if participant.name == "ghost")
        })
        .await?;
    let ServerMessage::ParticipantJoined { participant } = joined else {
        unreachable!()
    };
    // It never connects: its peer fails ICE (8 s of silence) and it is removed, with
    // its session resource.
    viewer.wait_for_left(participant.id).await?;
    chorus_tests::wait::poll_until_async(T, "the session resource to go", || async {
        let r = request(addr, "DELETE", &location, &[], "").await.ok()?;
        (r.status == 404).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_whip_requests_get_problems_and_the_call_goes_on() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let addr = server.http_addr();
    let ada = Client::connect_and_join(addr, "call", "ada").await?;
    let bob = Client::connect_and_join(addr, "call", "bob").await?;
    let tracks = bob.publish_and_stream(MediaRate::default()).await?;
    let bob_id = bob.id()?;
    ada.wait_for_packets(bob_id, tracks.video, 20, T).await?;
    let mark = ada.mark();

    let sdp = "application/sdp";
    post_offer(addr, "/whip/call", "text/plain", BROKEN_OFFER, &[])
        .await?
        .expect_problem(415, "a wrong content type")?;
    post_offer(addr, "/whip/call", sdp, "hello, not an SDP", &[])
        .await?
        .expect_problem(400, "a malformed SDP")?;
    post_offer(
        addr,
        "/whip/call",
        sdp,
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n",
        &[],
    )
    .await?
    .expect_problem(400, "an offer with no media")?;
    post_offer(addr, "/whip/call", sdp, "v=0\r\n", &[])
        .await?
        .expect_problem(400, "an offer with no sections")?;
    // Passes the quick look, refused by the peer connection: the participant it made
    // for the attempt is gone again.
    let refused = post_offer(addr, "/whip/call", sdp, BROKEN_OFFER, &[]).await?;
    ensure!(
        (400..500).contains(&refused.status),
        "an unanswerable offer: {refused:?}"
    );
    refused.expect_problem(refused.status, "an unanswerable offer")?;
    post_offer(addr, "/whip/bad%20room", sdp, BROKEN_OFFER, &[])
        .await?
        .expect_problem(400, "a bad room name")?;
    let huge = format!("{BROKEN_OFFER}{}", "a=x\r\n".repeat(20_000));
    post_offer(addr, "/whip/call", sdp, &huge, &[])
        .await?
        .expect_problem(413, "an offer over limits.max_sdp_bytes")?;
    request(addr, "DELETE", "/whip/call/no-such-session", &[], "")
        .await?
        .expect_problem(404, "DELETE of an unknown session")?;
    request(
        addr,
        "PATCH",
        "/whip/call/no-such-session",
        &[("Content-Type", "application/trickle-ice-sdpfrag")],
        "a=end-of-candidates\r\n",
    )
    .await?
    .expect_problem(404, "PATCH of an unknown session")?;

    // CORS: an allowed origin (the default allows this machine's pages) gets a preflight
    // answer naming it; another site is refused.
    let preflight = request(
        addr,
        "OPTIONS",
        "/whip/call",
        &[
            ("Origin", "http://127.0.0.1:5173"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "content-type, authorization",
            ),
        ],
        "",
    )
    .await?;
    ensure!(
        preflight.status == 204
            && preflight.header("access-control-allow-origin") == Some("http://127.0.0.1:5173")
            && preflight
                .header("access-control-allow-methods")
                .is_some_and(|m| m.contains("POST"))
            && preflight
                .header("access-control-allow-headers")
                .is_some_and(|h| h.contains("Authorization")),
        "preflight: {preflight:?}"
    );
    request(
        addr,
        "OPTIONS",
        "/whip/call",
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        "",
    )
    .await?
    .expect_problem(403, "a preflight from another site")?;
    post_offer(
        addr,
        "/whip/call",
        sdp,
        BROKEN_OFFER,
        &[("Origin", "https://evil.example")],
    )
    .await?
    .expect_problem(403, "a POST from another site")?;

    // The call was not disturbed: nobody left, nobody was told anything, media goes on,
    // and the room holds its two participants only.
    let before = ada.received_count(bob_id, tracks.video);
    ada.wait_for_packets(bob_id, tracks.video, before + 20, T)
        .await?;
    // (The unanswerable offer's participant came and went: the others saw it join and
    // leave, which is all they saw.)
    let since: Vec<ServerMessage> = ada.messages_since(mark);
    ensure!(
        !since
            .iter()
            .any(|m| matches!(m, ServerMessage::Bye { .. } | ServerMessage::Error { .. })),
        "ada was told: {since:?}"
    );
    let stats = chorus_tests::wait::poll_until_async(T, "two participants", || async {
        let s = server.stats().await.ok()?;
        (s.participants == 2).then_some(s)
    })
    .await?;
    ensure!(stats.rooms == 1, "{stats:?}");
    ensure!(ada.is_connected() && bob.is_connected(), "a client dropped");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_in_token_mode_needs_a_token_that_may_publish() -> Result<()> {
    init_tracing();
    let config = format!("[auth]\nmode = \"token\"\nkeys = {{ KEY = \"{SECRET}\" }}\n");
    let server = Server::start_with_config(&config).await?;
    let addr = server.http_addr();
    let sdp = "application/sdp";

    let missing = post_offer(addr, "/whip/studio", sdp, BROKEN_OFFER, &[]).await?;
    missing.expect_problem(401, "no token")?;
    ensure!(
        missing.header("www-authenticate") == Some("Bearer"),
        "{missing:?}"
    );
    post_offer(
        addr,
        "/whip/studio",
        sdp,
        BROKEN_OFFER,
        &[("Authorization", "Bearer not.a.token")],
    )
    .await?
    .expect_problem(401, "a malformed token")?;
    let elsewhere = server.token(&["--room", "other", "--identity", "cam"])?;
    post_offer(
        addr,
        "/whip/studio",
        sdp,
        BROKEN_OFFER,
        &[("Authorization", &format!("Bearer {elsewhere}"))],
    )
    .await?
    .expect_problem(401, "a token for another room")?;
    let viewer_only = server.token(&[
        "--room",
        "studio",
        "--identity",
        "cam",
        "--can-publish",
        "false",
    ])?;
    post_offer(
        addr,
        "/whip/studio",
        sdp,
        BROKEN_OFFER,
        &[("Authorization", &format!("Bearer {viewer_only}"))],
    )
    .await?
    .expect_problem(403, "a token without canPublish")?;

    // A good token: the publisher is named by it (the query's name loses).
    let viewer_token = server.token(&["--room", "studio", "--identity", "viewer"])?;
    let viewer = Client::connect(addr, "viewer").await?;
    viewer
        .join_with_token("studio", Some(&viewer_token))
        .await?;
    let token = server.token(&[
        "--room",
        "studio",
        "--identity",
        "obs",
        "--name",
        "Studio camera",
    ])?;
    let url = format!("http://{addr}/whip/studio?name=ignored");
    let mut publisher = Publisher::start(&url, &["--token", &token]).await?;
    let posted = publisher.expect("posted").await?;
    ensure!(posted["status"] == 201, "POST answered {posted}");
    let (id, audio, video) = whip_participant(&viewer, "Studio camera").await?;
    viewer.wait_for_packets(id, audio, 30, T).await?;
    viewer.wait_for_packets(id, video, 20, T).await?;
    let deleted = publisher.finish().await?;
    ensure!(deleted["status"] == 200, "DELETE answered {deleted}");
    viewer.wait_for_left(id).await?;
    Ok(())
}

/// Waits for a `stats` line of the viewer that `pred` accepts; returns it.
async fn viewer_stats(
    viewer: &mut Publisher,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    let mut last = serde_json::Value::Null;
    while tokio::time::Instant::now() < deadline {
        let line = viewer.next().await?;
        if line["event"] == "stats" {
            if pred(&line) {
                return Ok(line);
            }
            last = line;
        }
    }
    bail!("timed out waiting for the viewer to see {what}; last: {last}")
}

/// Whether a `[r, g, b]` JSON colour is within 60 of `want` in every channel.
fn colour_near(value: &serde_json::Value, want: [i64; 3]) -> bool {
    value.as_array().is_some_and(|c| {
        c.len() == 3
            && c.iter()
                .zip(want)
                .all(|(got, want)| got.as_i64().is_some_and(|g| (g - want).abs() <= 60))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aiortc_whep_viewer_decodes_its_pinned_participant_and_follows_when_it_leaves()
-> Result<()> {
    whep_viewer_follows("").await
}

/// The same in a room spread over two media workers: ada and blue live on one, red and
/// the viewer on the other, so the viewer gets red from its own worker and then blue
/// through a mirror (`worker/relay.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_viewer_follows_across_media_workers() -> Result<()> {
    whep_viewer_follows("[media]\nworkers = 2\nspread_room_after = 1\n").await
}

/// A viewer pinned to red decodes red, and blue on the same stream once red leaves.
async fn whep_viewer_follows(config: &str) -> Result<()> {
    init_tracing();
    let server = Server::start_with_config(config).await?;
    let addr = server.http_addr();
    // A simulated browser in the room, receiving what the WHIP publishers send.
    let ada = Client::connect_and_join(addr, "show", "ada").await?;
    let mut red = Publisher::start(
        &format!("http://{addr}/whip/show?name=red"),
        &["--color", "200,40,40"],
    )
    .await?;
    red.expect("connected").await?;
    let mut blue = Publisher::start(
        &format!("http://{addr}/whip/show?name=blue"),
        &["--color", "40,70,200"],
    )
    .await?;
    blue.expect("connected").await?;

    let mut viewer =
        Publisher::view(&format!("http://{addr}/whep/show?participant=red"), &[]).await?;
    let posted = viewer.expect("posted").await?;
    ensure!(posted["status"] == 201, "POST answered {posted}");
    ensure!(posted["contentType"] == "application/sdp", "{posted}");
    let location = posted["location"].as_str().context("Location")?.to_owned();
    ensure!(location.starts_with("/whep/show/"), "Location {location}");

    // It decodes red pictures and a loud tone (aiortc's decoders, not Chorus's).
    let seen = viewer_stats(&mut viewer, "red video and the tone", |s| {
        s["video"].as_u64() > Some(20)
            && colour_near(&s["color"], [200, 40, 40])
            && s["audio"].as_u64() > Some(50)
            && s["rms"].as_f64() > Some(1000.0)
    })
    .await?;
    let frames = seen["video"].as_u64().unwrap_or(0);

    // The viewer is hidden: ada was never told about it.
    ensure!(
        !ada.messages().iter().any(|m| matches!(
            &m.message,
            ServerMessage::ParticipantJoined { participant } if participant.name.contains("WHEP")
        )),
        "ada saw the viewer join"
    );
    let (red_id, _, red_video) = whip_participant(&ada, "red").await?;
    ada.wait_for_packets(red_id, red_video, 30, T).await?;

    // Red leaves: the same stream goes on with blue's pictures.
    let deleted = red.finish().await?;
    ensure!(deleted["status"] == 200, "{deleted}");
    viewer_stats(&mut viewer, "blue video after red left", |s| {
        s["video"].as_u64() > Some(frames + 20) && colour_near(&s["color"], [40, 70, 200])
    })
    .await?;

    // PATCH with a trickled candidate: 204. DELETE ends the viewer: 200, then 404.
    let patch = request(
        addr,
        "PATCH",
        &location,
        &[("Content-Type", "application/trickle-ice-sdpfrag")],
        "a=end-of-candidates\r\n",
    )
    .await?;
    ensure!(patch.status == 204, "PATCH: {patch:?}");
    let done = viewer.finish().await?;
    ensure!(done["status"] == 200, "the viewer's DELETE: {done}");
    request(addr, "DELETE", &location, &[], "")
        .await?
        .expect_problem(404, "a second DELETE")?;
    blue.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_whep_requests_get_problems() -> Result<()> {
    init_tracing();
    let config = format!("[auth]\nmode = \"token\"\nkeys = {{ KEY = \"{SECRET}\" }}\n");
    let server = Server::start_with_config(&config).await?;
    let addr = server.http_addr();
    let token = server.token(&["--room", "show", "--identity", "tv"])?;
    let auth = format!("Bearer {token}");
    let with_token = [("Authorization", auth.as_str())];
    let sdp = "application/sdp";

    post_offer(addr, "/whep/show", sdp, BROKEN_OFFER, &[])
        .await?
        .expect_problem(401, "no token")?;
    let no_subscribe = server.token(&[
        "--room",
        "show",
        "--identity",
        "tv",
        "--can-subscribe",
        "false",
    ])?;
    post_offer(
        addr,
        "/whep/show",
        sdp,
        BROKEN_OFFER,
        &[("Authorization", &format!("Bearer {no_subscribe}"))],
    )
    .await?
    .expect_problem(403, "a token without canSubscribe")?;
    post_offer(addr, "/whep/show", "text/plain", BROKEN_OFFER, &with_token)
        .await?
        .expect_problem(415, "a wrong content type")?;
    post_offer(addr, "/whep/show", sdp, "not an SDP", &with_token)
        .await?
        .expect_problem(400, "a malformed SDP")?;
    // Only a sending m-line: nothing to receive.
    let refused = post_offer(addr, "/whep/show", sdp, BROKEN_OFFER, &with_token).await?;
    refused.expect_problem(400, "an offer that receives nothing")?;
    request(addr, "DELETE", "/whep/show/no-such-session", &[], "")
        .await?
        .expect_problem(404, "DELETE of an unknown session")?;
    let stats = chorus_tests::wait::poll_until_async(T, "no one left in the server", || async {
        let s = server.stats().await.ok()?;
        (s.peers == 0 && s.rooms == 0).then_some(s)
    })
    .await?;
    ensure!(stats.participants == 0, "{stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_with_aes_cm_as_obs_and_ffmpeg_send_it_reaches_a_whep_viewer() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let addr = server.http_addr();
    let mut publisher = Publisher::start(
        &format!("http://{addr}/whip/studio?name=encoder"),
        &[
            "--codec",
            "h264",
            "--srtp",
            "aes-cm",
            "--color",
            "200,40,40",
        ],
    )
    .await?;
    let answered = publisher.expect("answered").await?;
    let codecs = answered["videoCodecs"].as_array().context("codecs")?;
    ensure!(
        !codecs.is_empty() && codecs.iter().all(|c| c == "H264" || c == "rtx"),
        "the answer's video codecs: {answered}"
    );
    publisher.expect("connected").await?;
    let mut viewer = Publisher::view(&format!("http://{addr}/whep/studio"), &[]).await?;
    let posted = viewer.expect("posted").await?;
    ensure!(posted["status"] == 201, "POST answered {posted}");
    viewer_stats(
        &mut viewer,
        "decoded H.264 red pictures and the tone",
        |s| {
            s["video"].as_u64() > Some(20)
                && colour_near(&s["color"], [200, 40, 40])
                && s["rms"].as_f64() > Some(1000.0)
        },
    )
    .await?;
    viewer.finish().await?;
    publisher.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpinned_whep_viewer_follows_the_active_speaker_on_the_same_stream() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let addr = server.http_addr();
    // Red speaks, blue is silent; both send pictures.
    let mut red = Publisher::start(
        &format!("http://{addr}/whip/talk?name=red"),
        &["--color", "200,40,40"],
    )
    .await?;
    red.expect("connected").await?;
    let mut blue = Publisher::start(
        &format!("http://{addr}/whip/talk?name=blue"),
        &["--color", "40,70,200", "--quiet"],
    )
    .await?;
    blue.expect("connected").await?;
    let mut viewer = Publisher::view(&format!("http://{addr}/whep/talk"), &[]).await?;
    ensure!(viewer.expect("posted").await?["status"] == 201);
    let first = viewer_stats(&mut viewer, "red, who speaks first", |s| {
        s["video"].as_u64() > Some(10)
            && colour_near(&s["color"], [200, 40, 40])
            && s["rms"].as_f64() > Some(1000.0)
    })
    .await?;
    let frames = first["video"].as_u64().unwrap_or(0);
    // Red falls silent and blue speaks.
    red.toggle_tone().await?;
    blue.toggle_tone().await?;
    viewer_stats(&mut viewer, "blue, once blue speaks", |s| {
        s["video"].as_u64() > Some(frames + 10)
            && colour_near(&s["color"], [40, 70, 200])
            && s["rms"].as_f64() > Some(1000.0)
    })
    .await?;
    viewer.finish().await?;
    red.finish().await?;
    blue.finish().await?;
    Ok(())
}
