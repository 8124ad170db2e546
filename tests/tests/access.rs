//! Access control end to end: a real `chorus` in token mode, tokens minted by
//! `chorus token`, simulated browsers joining with them. Build the server first:
//! `cargo build -p chorus`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chorus_protocol::{ByeReason, ClientMessage, ErrorCode, Grants, ServerMessage, TrackId};
use chorus_signal::auth::{Claims, Grant, sign, unix_now};
use chorus_tests::harness::http_get;
use chorus_tests::{Client, MediaRate, PublishedTracks, Server, init_tracing, refusal_code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generous bound for anything signaling or media related on a loaded 2-core machine.
const T: Duration = Duration::from_secs(15);

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!";

fn token_config() -> String {
    format!("[auth]\nmode = \"token\"\nkeys = {{ KEY = \"{SECRET}\" }}\n")
}

/// The error code of a refused join.
async fn join_refusal(client: &Client, room: &str, token: Option<&str>) -> Option<ErrorCode> {
    match client.join_with_token(room, token).await {
        Ok(_) => None,
        Err(err) => refusal_code(&err),
    }
}

/// Connects `name` and joins `room` with a token minted for `identity` with `extra` flags.
async fn join(server: &Server, room: &str, name: &str, extra: &[&str]) -> Result<Client> {
    let mut args = vec!["--room", room, "--identity", name];
    args.extend_from_slice(extra);
    let token = server.token(&args)?;
    let client = Client::connect(server.http_addr(), name).await?;
    client.join_with_token(room, Some(&token)).await?;
    Ok(client)
}

async fn wait_for_media(receiver: &Client, sender: &Client) -> Result<PublishedTracks> {
    let tracks = sender.published().context("the sender publishes")?;
    receiver
        .wait_for_packets(sender.id()?, tracks.audio, 50, T)
        .await?;
    receiver
        .wait_for_packets(sender.id()?, tracks.video, 30, T)
        .await?;
    Ok(tracks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_refuses_bad_tokens_with_typed_errors_and_leaks_nothing() -> Result<()> {
    init_tracing();
    let server = Server::start_with_config(&token_config()).await?;
    let good = server.token(&["--room", "standup", "--identity", "ada"])?;
    let elsewhere = server.token(&["--room", "other", "--identity", "ada"])?;
    let claims = |exp| Claims {
        iss: "KEY".into(),
        sub: "ada".into(),
        name: None,
        exp,
        nbf: None,
        grant: Grant {
            room: "standup".into(),
            grants: Grants::default(),
        },
    };
    let expired = sign(&claims(unix_now() - 60), SECRET)?;
    let forged = sign(
        &claims(unix_now() + 60),
        "another secret, also 32 bytes long",
    )?;
    let unknown_key = sign(
        &Claims {
            iss: "NOBODY".into(),
            ..claims(unix_now() + 60)
        },
        SECRET,
    )?;
    let mut parts = elsewhere.split('.');
    let (header, payload, signature) = (
        parts.next().context("header")?,
        parts.next().context("payload")?,
        parts.next().context("signature")?,
    );
    let mut moved: serde_json::Value = serde_json::from_slice(&B64.decode(payload)?)?;
    moved["grant"]["room"] = "standup".into();
    let tampered = format!("{header}.{}.{signature}", B64.encode(moved.to_string()));
    let alg_none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(serde_json::to_string(&claims(unix_now() + 60))?)
    );
    let oversized = format!("{good}{}", "A".repeat(9 * 1024));

    let client = Client::connect(server.http_addr(), "ada").await?;
    let cases = [
        ("no token", None, ErrorCode::Unauthorized),
        ("another room's", Some(&elsewhere), ErrorCode::Unauthorized),
        ("expired", Some(&expired), ErrorCode::TokenExpired),
        ("forged", Some(&forged), ErrorCode::Unauthorized),
        ("unknown key", Some(&unknown_key), ErrorCode::Unauthorized),
        ("tampered", Some(&tampered), ErrorCode::Unauthorized),
        ("alg none", Some(&alg_none), ErrorCode::Unauthorized),
        ("oversized", Some(&oversized), ErrorCode::Unauthorized),
    ];
    for (what, token, code) in cases {
        let got = join_refusal(&client, "standup", token.map(String::as_str)).await;
        ensure!(
            got == Some(code),
            "{what} token: expected {code:?}, got {got:?}"
        );
    }
    // Nothing of the room leaked: no room exists, and the list is not public.
    ensure!(
        server.stats().await?.rooms == 0,
        "a refused join made a room"
    );
    let (status, body) = http_get(server.http_addr(), "/api/rooms").await?;
    ensure!(status == 401, "/api/rooms answered {status}: {body}");
    ensure!(
        body.contains("\"unauthorized\""),
        "untyped 401 body: {body}"
    );
    let listed = client.list_rooms().await;
    ensure!(
        listed
            .as_ref()
            .err()
            .and_then(refusal_code)
            .is_some_and(|c| c == ErrorCode::Unauthorized),
        "listRooms without a token: {listed:?}"
    );
    // The same session still joins with a good token.
    let joined = client.join_with_token("standup", Some(&good)).await?;
    ensure!(joined.grants == Grants::default(), "{:?}", joined.grants);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_only_participant_receives_everyone_and_may_not_publish() -> Result<()> {
    init_tracing();
    let server = Server::start_with_config(&token_config()).await?;
    let ada = join(&server, "standup", "ada", &[]).await?;
    ada.publish_and_stream(MediaRate::default()).await?;
    let viewer = join(&server, "standup", "viewer", &["--can-publish", "false"]).await?;
    wait_for_media(&viewer, &ada).await?;
    let refused = viewer.publish().await.expect_err("a viewer's publishOffer");
    ensure!(
        refusal_code(&refused) == Some(ErrorCode::Forbidden),
        "expected forbidden, got {refused:#}"
    );
    // a camera outside a microphone-only grant is refused too
    let speaker = join(&server, "standup", "speaker", &["--sources", "microphone"]).await?;
    let refused = speaker.publish().await.expect_err("a camera");
    ensure!(
        refusal_code(&refused) == Some(ErrorCode::Forbidden),
        "expected forbidden, got {refused:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_admin_mutes_a_track_at_the_server_and_removes_a_participant() -> Result<()> {
    init_tracing();
    let server = Server::start_with_config(&token_config()).await?;
    let admin = join(&server, "standup", "admin", &["--admin"]).await?;
    let ada = join(&server, "standup", "ada", &[]).await?;
    ada.publish_and_stream(MediaRate::default()).await?;
    let bob = join(&server, "standup", "bob", &[]).await?;
    let tracks = wait_for_media(&bob, &ada).await?;
    let ada_id = ada.id()?;

    // bob is no admin
    let mark = bob.mark();
    bob.send(&ClientMessage::RemoveParticipant {
        participant_id: ada_id,
    })?;
    bob.wait_for_error_after(mark, ErrorCode::Forbidden).await?;

    // the admin mutes ada's microphone: everyone is told, and its audio stops at bob
    admin.send(&ClientMessage::MuteTrack {
        participant_id: ada_id,
        track_id: tracks.audio,
        muted: true,
    })?;
    for client in [&bob, &ada] {
        client
            .wait_for(T, "muteChanged", |m| is_muted(m, tracks.audio))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = bob.received_count(ada_id, tracks.audio);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = bob.received_count(ada_id, tracks.audio);
    ensure!(
        after == before,
        "{} audio packets reached bob while muted by the admin",
        after - before
    );
    let video = bob.received_count(ada_id, tracks.video);
    bob.wait_for_packets(ada_id, tracks.video, video + 20, T)
        .await?;
    // ada cannot unmute herself; once the admin lets go she can, and audio flows again
    let mark = ada.mark();
    ada.set_mute(tracks.audio, false)?;
    ada.wait_for_error_after(mark, ErrorCode::Forbidden).await?;
    admin.send(&ClientMessage::MuteTrack {
        participant_id: ada_id,
        track_id: tracks.audio,
        muted: false,
    })?;
    bob.wait_for_packets(ada_id, tracks.audio, after + 50, T)
        .await?;

    // the admin removes ada: she is told why, bob sees her leave
    admin.send(&ClientMessage::RemoveParticipant {
        participant_id: ada_id,
    })?;
    ada.wait_for_bye(ByeReason::Removed).await?;
    bob.wait_for_left(ada_id).await?;
    ada.wait_closed(T).await?;
    Ok(())
}

fn is_muted(message: &ServerMessage, track: TrackId) -> bool {
    matches!(message, ServerMessage::MuteChanged { track_id, muted: true, .. } if *track_id == track)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_join_with_the_same_identity_replaces_the_first() -> Result<()> {
    init_tracing();
    let server = Server::start_with_config(&token_config()).await?;
    let first = join(&server, "standup", "ada", &[]).await?;
    let bob = join(&server, "standup", "bob", &[]).await?;
    let first_id = first.id()?;
    let second = join(&server, "standup", "ada", &[]).await?;
    first.wait_for_bye(ByeReason::Removed).await?;
    first.wait_closed(T).await?;
    bob.wait_for_left(first_id).await?;
    let second_id = second.id()?;
    bob.wait_for(T, "the second session joins", |m| {
        matches!(m, ServerMessage::ParticipantJoined { participant } if participant.id == second_id)
    })
    .await?;
    ensure!(server.stats().await?.participants == 2);
    // and the new session calls normally
    second.publish_and_stream(MediaRate::default()).await?;
    wait_for_media(&bob, &second).await?;
    Ok(())
}

/// The status code of a WebSocket upgrade of `/ws` sent with `origin`.
async fn upgrade_status(server: &Server, origin: Option<&str>) -> Result<u16> {
    let addr = server.http_addr();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin}\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 12];
    tokio::time::timeout(T, stream.read_exact(&mut head)).await??;
    let line = String::from_utf8_lossy(&head);
    line.get(9..12)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("status line {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_refuses_pages_of_other_sites() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let own = format!("http://{}", server.http_addr());
    for (origin, want) in [
        (None, 101),
        (Some(own.as_str()), 101),
        (Some("http://localhost:5173"), 101),
        (Some("https://evil.example"), 403),
        (Some("null"), 403),
    ] {
        let got = upgrade_status(&server, origin).await?;
        ensure!(got == want, "Origin {origin:?}: {got}, expected {want}");
    }
    let listed =
        Server::start_with_config("[http]\nallowed_origins = [\"https://app.example.org\"]\n")
            .await?;
    for (origin, want) in [
        ("https://app.example.org", 101),
        ("http://localhost:5173", 403),
    ] {
        let got = upgrade_status(&listed, Some(origin)).await?;
        ensure!(got == want, "Origin {origin:?}: {got}, expected {want}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_are_capped_and_the_call_goes_on() -> Result<()> {
    init_tracing();
    let server = Server::start_with_config("[limits]\nmax_connections_per_ip = 3\n").await?;
    let ada = Client::connect_and_join(server.http_addr(), "standup", "ada").await?;
    let tracks = ada.publish_and_stream(MediaRate::default()).await?;
    let bob = Client::connect_and_join(server.http_addr(), "standup", "bob").await?;
    bob.wait_for_packets(ada.id()?, tracks.audio, 20, T).await?;
    // a third socket is allowed, a fourth is refused with 429 before any upgrade
    let third = chorus_tests::RawWs::connect(server.http_addr()).await?;
    ensure!(
        upgrade_status(&server, None).await? == 429,
        "a fourth WebSocket"
    );
    // the call did not notice
    let got = bob.received_count(ada.id()?, tracks.audio);
    bob.wait_for_packets(ada.id()?, tracks.audio, got + 50, T)
        .await?;
    // a slot comes back when a socket closes
    drop(third);
    chorus_tests::wait::poll_until_async(T, "a free slot", || async {
        (upgrade_status(&server, None).await.ok() == Some(101)).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_headers_is_cut_off() -> Result<()> {
    init_tracing();
    let server = Server::start_with_config("[http]\nheader_read_timeout_secs = 1\n").await?;
    let mut slow = tokio::net::TcpStream::connect(server.http_addr()).await?;
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
    let started = std::time::Instant::now();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
            break;
        }
    }
    // the server answers 408 or just closes; either way the connection ends
    let mut rest = Vec::new();
    let _ended = tokio::time::timeout(T, slow.read_to_end(&mut rest)).await?;
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "the connection was held for {:?}",
        started.elapsed()
    );
    // a normal request still works
    let (status, _) = http_get(server.http_addr(), "/healthz").await?;
    ensure!(status == 200, "healthz: {status}");
    Ok(())
}
