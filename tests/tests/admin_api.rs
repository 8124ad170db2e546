//! The admin API under `/api/v1/` end to end: a real `chorus` in token mode, simulated
//! browsers in a room, and HTTP calls with admin tokens and API keys. Then `schemathesis`
//! (PyPI, installed by tests/run-all.sh) fuzzes the API from its own OpenAPI document.
//! Build the server first: `cargo build -p chorus`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chorus_protocol::api::{ApiError, RoomDetails, RoomList};
use chorus_protocol::{ByeReason, ErrorCode, Grants, ServerMessage};
use chorus_signal::auth::{Claims, Grant, sign, unix_now};
use chorus_tests::harness::http_request;
use chorus_tests::{Client, MediaRate, Server, init_tracing};

const T: Duration = Duration::from_secs(15);

const SECRET: &str = "an-admin-api-test-secret-32-bytes-long";

fn config() -> String {
    format!(
        "[auth]\nmode = \"token\"\nkeys = {{ KEY = \"{SECRET}\", OTHER = \"{}\" }}\n",
        "another-key-with-its-own-secret-32b"
    )
}

/// A token minted by `chorus token`, with key `KEY` unless `args` name one.
fn token(server: &Server, args: &[&str]) -> Result<String> {
    let mut args = args.to_vec();
    if !args.contains(&"--key") {
        args.extend(["--key", "KEY"]);
    }
    server.token(&args)
}

/// An `Authorization` header value with a token minted by `chorus token`.
fn bearer(server: &Server, args: &[&str]) -> Result<String> {
    Ok(format!("Bearer {}", token(server, args)?))
}

/// A call: method, path, `Authorization` value and JSON body.
async fn call(
    server: &Server,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    http_request(
        server.http_addr(),
        method,
        path,
        &headers,
        body.map(|b| ("application/json", b)),
    )
    .await
}

/// Checks a refusal's status and typed body.
fn refused(reply: &(u16, String), status: u16, code: ErrorCode) -> Result<()> {
    let (got, body) = reply;
    ensure!(
        *got == status,
        "expected {status} {code:?}, got {got}: {body}"
    );
    let error: ApiError = serde_json::from_str(body).with_context(|| format!("body {body}"))?;
    ensure!(error.code == code, "expected {code:?}, got {error:?}");
    Ok(())
}

/// POSTs `muted` to a track's `mute` path; the answer must be 204.
async fn set_mute(server: &Server, path: &str, auth: &str, muted: bool) -> Result<()> {
    let body = format!(r#"{{"muted":{muted}}}"#);
    let (status, reply) = call(server, "POST", path, Some(auth), Some(&body)).await?;
    ensure!(status == 204, "{status}: {reply}");
    Ok(())
}

async fn member(server: &Server, room: &str, name: &str, extra: &[&str]) -> Result<Client> {
    let mut args = vec!["--room", room, "--identity", name];
    args.extend_from_slice(extra);
    let token = token(server, &args)?;
    let client = Client::connect(server.http_addr(), name).await?;
    client.join_with_token(room, Some(&token)).await?;
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_inspects_mutes_messages_removes_and_closes() -> Result<()> {
    init_tracing();
    let server = Server::start_with_config(&config()).await?;
    let ada = member(&server, "standup", "ada", &[]).await?;
    let tracks = ada.publish_and_stream(MediaRate::default()).await?;
    let bob = member(&server, "standup", "bob", &[]).await?;
    bob.wait_for_packets(ada.id()?, tracks.audio, 20, T).await?;
    let ada_id = ada.id()?.0;

    // who may call
    let everywhere = bearer(&server, &["--room", "*", "--identity", "ops", "--admin"])?;
    let standup_admin = bearer(
        &server,
        &["--room", "standup", "--identity", "mod", "--admin"],
    )?;
    let plain = bearer(&server, &["--room", "standup", "--identity", "bob"])?;
    let key = format!("Basic {}", BASE64.encode(format!("KEY:{SECRET}")));
    let wrong_key = format!("Basic {}", BASE64.encode("KEY:not-the-secret"));
    refused(
        &call(&server, "GET", "/api/v1/rooms", None, None).await?,
        401,
        ErrorCode::Unauthorized,
    )?;
    refused(
        &call(&server, "GET", "/api/v1/rooms", Some(&wrong_key), None).await?,
        401,
        ErrorCode::Unauthorized,
    )?;
    refused(
        &call(&server, "GET", "/api/v1/rooms", Some(&plain), None).await?,
        403,
        ErrorCode::Forbidden,
    )?;
    refused(
        &call(&server, "GET", "/api/v1/rooms", Some(&standup_admin), None).await?,
        403,
        ErrorCode::Forbidden,
    )?;
    let other_key = format!(
        "Bearer {}",
        server.token(&[
            "--room",
            "*",
            "--identity",
            "x",
            "--admin",
            "--key",
            "OTHER"
        ])?
    );
    // a well-formed admin token from a key this server does not have
    let stranger = format!(
        "Bearer {}",
        sign(
            &Claims {
                iss: "STRANGER".into(),
                sub: "x".into(),
                name: None,
                exp: unix_now() + 60,
                nbf: None,
                grant: Grant {
                    room: "*".into(),
                    grants: Grants {
                        room_admin: true,
                        ..Grants::default()
                    },
                },
            },
            SECRET,
        )?
    );
    refused(
        &call(&server, "GET", "/api/v1/rooms", Some(&stranger), None).await?,
        401,
        ErrorCode::Unauthorized,
    )?;
    for auth in [&everywhere, &key, &other_key] {
        let (status, body) = call(&server, "GET", "/api/v1/rooms", Some(auth), None).await?;
        ensure!(status == 200, "{status}: {body}");
        let list: RoomList = serde_json::from_str(&body)?;
        ensure!(
            list.rooms.len() == 1 && list.rooms[0].participants == 2,
            "{list:?}"
        );
    }

    // one room in detail, with a room-scoped admin token
    let (status, body) = call(
        &server,
        "GET",
        "/api/v1/rooms/standup",
        Some(&standup_admin),
        None,
    )
    .await?;
    ensure!(status == 200, "{status}: {body}");
    let details: RoomDetails = serde_json::from_str(&body)?;
    let identities: Vec<_> = details
        .participants
        .iter()
        .filter_map(|p| p.identity.as_deref())
        .collect();
    ensure!(identities == ["ada", "bob"], "{details:?}");
    ensure!(details.participants[0].tracks.len() == 2, "{details:?}");
    refused(
        &call(
            &server,
            "GET",
            "/api/v1/rooms/nowhere",
            Some(&everywhere),
            None,
        )
        .await?,
        404,
        ErrorCode::UnknownRoom,
    )?;
    refused(
        &call(
            &server,
            "GET",
            "/api/v1/rooms/bad%20name",
            Some(&everywhere),
            None,
        )
        .await?,
        400,
        ErrorCode::InvalidMessage,
    )?;

    // a server-side mute: everyone is told, and the details say so
    let mute = format!(
        "/api/v1/rooms/standup/participants/{ada_id}/tracks/{}/mute",
        tracks.audio.0
    );
    set_mute(&server, &mute, &key, true).await?;
    bob.wait_for(T, "muteChanged", |m| {
        matches!(m, ServerMessage::MuteChanged { track_id, muted: true, .. } if *track_id == tracks.audio)
    })
    .await?;
    let (_, body) = call(&server, "GET", "/api/v1/rooms/standup", Some(&key), None).await?;
    let details: RoomDetails = serde_json::from_str(&body)?;
    ensure!(
        details.participants[0].admin_muted == [tracks.audio],
        "{details:?}"
    );
    // bad bodies and unknown targets
    refused(
        &call(&server, "POST", &mute, Some(&key), Some("{not json")).await?,
        400,
        ErrorCode::MalformedJson,
    )?;
    refused(
        &call(
            &server,
            "POST",
            &mute,
            Some(&key),
            Some(r#"{"muted":"yes"}"#),
        )
        .await?,
        400,
        ErrorCode::InvalidMessage,
    )?;
    let (status, _) = http_request(
        server.http_addr(),
        "POST",
        &mute,
        &[("Authorization", key.as_str())],
        Some(("text/plain", r#"{"muted":true}"#)),
    )
    .await?;
    ensure!(status == 415, "a text/plain body got {status}");
    refused(
        &call(
            &server,
            "POST",
            &format!("/api/v1/rooms/standup/participants/{ada_id}/tracks/999/mute"),
            Some(&key),
            Some(r#"{"muted":true}"#),
        )
        .await?,
        404,
        ErrorCode::UnknownTrack,
    )?;

    // a notice to the room
    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/rooms/standup/messages",
        Some(&key),
        Some(r#"{"text":"The room closes in five minutes"}"#),
    )
    .await?;
    ensure!(status == 204, "{status}: {body}");
    bob.wait_for(T, "notice", |m| {
        matches!(m, ServerMessage::Notice { text, .. } if text == "The room closes in five minutes")
    })
    .await?;
    refused(
        &call(
            &server,
            "POST",
            "/api/v1/rooms/standup/messages",
            Some(&key),
            Some(r#"{"text":"  "}"#),
        )
        .await?,
        400,
        ErrorCode::InvalidChat,
    )?;

    // removing ada
    let remove = format!("/api/v1/rooms/standup/participants/{ada_id}");
    let (status, body) = call(&server, "DELETE", &remove, Some(&standup_admin), None).await?;
    ensure!(status == 204, "{status}: {body}");
    ada.wait_for_bye(ByeReason::Removed).await?;
    bob.wait_for_left(ada.id()?).await?;
    refused(
        &call(&server, "DELETE", &remove, Some(&key), None).await?,
        404,
        ErrorCode::UnknownParticipant,
    )?;

    // closing the room
    let (status, body) = call(&server, "DELETE", "/api/v1/rooms/standup", Some(&key), None).await?;
    ensure!(status == 204, "{status}: {body}");
    bob.wait_for_bye(ByeReason::RoomClosed).await?;
    bob.wait_closed(T).await?;
    refused(
        &call(&server, "GET", "/api/v1/rooms/standup", Some(&key), None).await?,
        404,
        ErrorCode::UnknownRoom,
    )?;
    Ok(())
}

/// Schemathesis's command, from `CHORUS_SCHEMATHESIS` or the virtualenv that
/// tests/run-all.sh makes.
fn schemathesis() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CHORUS_SCHEMATHESIS") {
        return Ok(PathBuf::from(path));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/st");
    if !venv.exists() {
        bail!(
            "schemathesis is not installed ({} is missing): run tests/run-all.sh, which \
             installs it from PyPI into tests/.venv",
            venv.display()
        );
    }
    Ok(venv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_response_outside_the_schema() -> Result<()> {
    init_tracing();
    let st = schemathesis()?;
    let server = Server::start_with_config(&config()).await?;
    // the documented examples (room "standup", participant 1, track 1) exist
    let ada = member(&server, "standup", "ada", &[]).await?;
    ada.publish_and_stream(MediaRate::default()).await?;
    ensure!(ada.id()?.0 == 1, "the first participant is not 1");
    let _bob = member(&server, "standup", "bob", &[]).await?;
    let auth = bearer(&server, &["--room", "*", "--identity", "ops", "--admin"])?;
    let base = format!("http://{}", server.http_addr());
    let output = tokio::process::Command::new(&st)
        .args([
            "run",
            &format!("{base}/api/v1/openapi.json"),
            "--header",
            &format!("Authorization: {auth}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
            // draining stops the server under the fuzzer; tests/tests/drain.rs covers it
            "--exclude-path",
            "/api/v1/drain",
            "--max-examples",
            "100",
            "--workers",
            "1",
            "--no-color",
        ])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .await
        .with_context(|| format!("running {}", st.display()))?;
    let report = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "schemathesis failed ({}):\n{report}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(report.contains("passed"), "no test cases ran:\n{report}");
    ensure!(server.stats().await.is_ok(), "the server survived");
    Ok(())
}

/// A mute holds on every worker of a room spread over two: bob joins after ada's
/// microphone was muted, lands on the other worker, whose mirror of the track opens
/// silenced (`worker/relay.rs`), and receives her video but none of her audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mute_holds_for_a_subscriber_who_joins_later_on_another_worker() -> Result<()> {
    init_tracing();
    let server = Server::start_with_config(&format!(
        "{}[media]\nworkers = 2\nspread_room_after = 1\n",
        config()
    ))
    .await?;
    let key = format!("Basic {}", BASE64.encode(format!("KEY:{SECRET}")));
    let ada = member(&server, "standup", "ada", &[]).await?;
    let tracks = ada.publish_and_stream(MediaRate::default()).await?;
    let ada_id = ada.id()?;
    let mute = format!(
        "/api/v1/rooms/standup/participants/{}/tracks/{}/mute",
        ada_id.0, tracks.audio.0
    );
    set_mute(&server, &mute, &key, true).await?;

    let bob = member(&server, "standup", "bob", &[]).await?;
    bob.wait_for_packets(ada_id, tracks.video, 30, T).await?;
    let (_, stats) = call(&server, "GET", "/api/stats", None, None).await?;
    let stats: serde_json::Value = serde_json::from_str(&stats)?;
    ensure!(
        stats["mirrors"].as_u64() == Some(2),
        "bob's worker mirrors ada's two tracks: {stats}"
    );
    ensure!(
        bob.received_count(ada_id, tracks.audio) == 0,
        "{} of ada's muted audio packets reached bob",
        bob.received_count(ada_id, tracks.audio)
    );

    // lifted, her audio reaches bob through the mirror
    set_mute(&server, &mute, &key, false).await?;
    bob.wait_for_packets(ada_id, tracks.audio, 50, T).await?;
    Ok(())
}
