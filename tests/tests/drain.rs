//! A clean drain: SIGTERM (or `chorus drain`, through the admin API) stops new joins, tells
//! the participants, lets their media flow until they leave, and exits 0; a second signal
//! exits at once. Build the server first: `cargo build -p chorus`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chorus_protocol::{ErrorCode, ServerMessage};
use chorus_tests::{Client, MediaRate, Server, init_tracing, refusal_code};

const T: Duration = Duration::from_secs(15);

const CONFIG: &str = "[shutdown]\ngrace_secs = 20\n\
                      [auth]\nkeys = { KEY = \"a-drain-test-secret-of-32-bytes-or-more\" }\n";

fn is_draining(message: &ServerMessage) -> bool {
    matches!(message, ServerMessage::Draining { seconds: 20 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_calls_and_exits_0_once_everyone_left() -> Result<()> {
    init_tracing();
    let mut server = Server::start_with_config(CONFIG).await?;
    let ada = Client::connect_and_join(server.http_addr(), "standup", "ada").await?;
    let tracks = ada.publish_and_stream(MediaRate::default()).await?;
    let bob = Client::connect_and_join(server.http_addr(), "standup", "bob").await?;
    bob.wait_for_packets(ada.id()?, tracks.audio, 20, T).await?;

    server.signal("TERM")?;
    for client in [&ada, &bob] {
        client.wait_for(T, "draining", is_draining).await?;
    }
    // no new joins, with a typed error
    let late = Client::connect(server.http_addr(), "cy").await?;
    let refused = late
        .join("standup")
        .await
        .expect_err("a join while draining");
    ensure!(
        refusal_code(&refused) == Some(ErrorCode::ServerDraining),
        "expected serverDraining, got {refused:#}"
    );
    // the call goes on
    let got = bob.received_count(ada.id()?, tracks.audio);
    bob.wait_for_packets(ada.id()?, tracks.audio, got + 50, T)
        .await?;
    // once everyone has left, the server exits 0, well before the grace is over
    ada.leave().await?;
    bob.leave().await?;
    let status = server.wait_exit(T).await?;
    ensure!(status.success(), "exit status {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chorus_drain_asks_the_admin_api_and_a_second_signal_exits_at_once() -> Result<()> {
    init_tracing();
    let mut server = Server::start_with_config(CONFIG).await?;
    let ada = Client::connect_and_join(server.http_addr(), "standup", "ada").await?;
    let output = std::process::Command::new(chorus_tests::harness::chorus_bin()?)
        .arg("--config")
        .arg(server.config_path())
        .arg("--http")
        .arg(server.http_addr().to_string())
        .arg("drain")
        .output()
        .context("running chorus drain")?;
    ensure!(
        output.status.success(),
        "chorus drain: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    ada.wait_for(T, "draining", is_draining).await?;
    // ada stays; a second signal does not wait for the grace
    server.signal("TERM")?;
    let status = server.wait_exit(Duration::from_secs(5)).await?;
    ensure!(!status.success(), "a forced exit reports failure: {status}");
    Ok(())
}
