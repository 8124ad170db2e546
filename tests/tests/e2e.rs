//! End-to-end scenarios: a real `chorus` on loopback, simulated browsers publishing known RTP.
//! Each test starts its own server. Build the server first: `cargo build -p chorus`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chorus_protocol::{
    ByeReason, ClientMessage, ErrorCode, MediaKind, ParticipantId, PauseReason, ServerMessage,
    TrackId, TrackSource,
};
use chorus_tests::layered::MidRid;
use chorus_tests::media::{MediaTag, expected_payload, is_vp8_keyframe, parse_tag};
use chorus_tests::peer::VP8_PT;
use chorus_tests::scenario::{
    assert_media_intact, assert_no_failures, assert_one_stream, publishing_clients,
    wait_for_full_mesh, wait_for_media_from,
};
use chorus_tests::socket::{CappedSocket, LossySocket, SilenceSocket};
use chorus_tests::{
    Client, ClientOptions, MediaRate, PublishOptions, PublishedTracks, RawWs, ReceivedPacket,
    SentPacket, Server, init_tracing, refusal_code, sequence_breaks, wait,
};

/// Generous bound for anything signaling or media related on a loaded 2-core machine.
const T: Duration = Duration::from_secs(15);

/// The server's default keyframe-request throttle.
const PLI_THROTTLE: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_receive_each_others_audio_and_video_intact() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let clients = publishing_clients(&server, "standup", &["ada", "bob", "cy"]).await?;

    wait_for_full_mesh(&clients).await?;
    for receiver in &clients {
        // Exactly the other two participants' four tracks, nothing else.
        let mut want = HashSet::new();
        for sender in &clients {
            if receiver.id()? != sender.id()? {
                let tracks = sender.published().context("published")?;
                want.insert((sender.id()?, tracks.audio));
                want.insert((sender.id()?, tracks.video));
                assert_media_intact(receiver, sender)?;
            }
        }
        let got: HashSet<_> = receiver.received_all().into_keys().collect();
        ensure!(
            got == want,
            "{} received tracks {got:?}, expected {want:?}",
            receiver.name()
        );
        ensure!(
            receiver.unmapped().is_empty(),
            "{} got {} packets on mids no subscribeOffer mapped",
            receiver.name(),
            receiver.unmapped().len()
        );
    }
    let refs: Vec<&Client> = clients.iter().collect();
    assert_no_failures(&refs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_receives_tracks_published_before_it_came() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let early = publishing_clients(&server, "standup", &["ada", "bob"]).await?;
    wait_for_media_from(&early[0], &early[1]).await?;

    let late = Client::connect(server.http_addr(), "cy").await?;
    let joined = late.join("standup").await?;
    // The join reply lists both early participants with their two tracks each.
    for sender in &early {
        let tracks = sender.published().context("published")?;
        let info = joined
            .participants
            .iter()
            .find(|p| p.id == sender.id().unwrap_or(ParticipantId(u64::MAX)))
            .with_context(|| format!("joined does not list {}", sender.name()))?;
        ensure!(info.name == sender.name(), "name {:?}", info.name);
        let listed: HashSet<_> = info.tracks.iter().map(|t| (t.id, t.kind)).collect();
        let want: HashSet<_> = [
            (tracks.audio, MediaKind::Audio),
            (tracks.video, MediaKind::Video),
        ]
        .into();
        ensure!(
            listed == want,
            "joined lists {listed:?} for {}",
            sender.name()
        );
        let sources: HashSet<_> = info.tracks.iter().map(|t| t.source).collect();
        ensure!(
            sources == HashSet::from([TrackSource::Microphone, TrackSource::Camera]),
            "sources {sources:?}"
        );
    }
    for sender in &early {
        wait_for_media_from(&late, sender).await?;
        assert_media_intact(&late, sender)?;
    }
    assert_no_failures(&[&late, &early[0], &early[1]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_participant_disappears_and_its_resources_are_freed() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let clients = publishing_clients(&server, "standup", &["ada", "bob", "cy"]).await?;
    wait_for_full_mesh(&clients).await?;
    server
        .wait_for_stats(T, "3 participants with 6 tracks", |s| {
            s.rooms == 1
                && s.participants == 3
                && s.peers == 6
                && s.tracks == 6
                && s.subscriptions == 12
        })
        .await?;

    let (stay, leaver) = (&clients[..2], &clients[2]);
    let leaver_id = leaver.id()?;
    let leaver_tracks = leaver.published().context("published")?;
    let marks: Vec<usize> = stay.iter().map(Client::mark).collect();
    leaver.leave().await?;

    for (client, &mark) in stay.iter().zip(&marks) {
        client
            .wait_for_after(mark, T, "participantLeft", |m| {
                matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == leaver_id)
            })
            .await?;
        // docs/protocol.md: each of the leaver's tracks is unpublished before it leaves.
        for track in [leaver_tracks.audio, leaver_tracks.video] {
            client
                .wait_for_after(mark, T, "trackUnpublished of the leaver's track", |m| {
                    matches!(m, ServerMessage::TrackUnpublished { participant_id, track_id }
                        if *participant_id == leaver_id && *track_id == track)
                })
                .await?;
        }
        // A renegotiation that no longer carries the leaver's tracks.
        let offer = client
            .wait_for_after(mark, T, "a subscribeOffer without the leaver", |m| {
                matches!(m, ServerMessage::SubscribeOffer { tracks, .. }
                    if tracks.iter().all(|t| t.participant_id != leaver_id))
            })
            .await?;
        if let ServerMessage::SubscribeOffer { tracks, .. } = offer {
            let other = stay
                .iter()
                .find(|c| c.id().ok() != client.id().ok())
                .context("the other one")?;
            let other_tracks = other.published().context("published")?;
            let listed: HashSet<_> = tracks.iter().map(|t| t.track_id).collect();
            ensure!(
                listed == HashSet::from([other_tracks.audio, other_tracks.video]),
                "{}'s offer after the leave lists {listed:?}",
                client.name()
            );
        }
        wait::poll_until(T, "the offer to be answered", || {
            client
                .subscribed()
                .iter()
                .all(|s| s.participant_id != leaver_id)
                .then_some(())
        })
        .await?;
    }

    server
        .wait_for_stats(T, "the leaver's resources freed", |s| {
            s.rooms == 1
                && s.participants == 2
                && s.peers == 4
                && s.tracks == 4
                && s.subscriptions == 4
        })
        .await?;

    // No more of the leaver's media arrives (measured over a quiet second).
    let before: Vec<usize> = stay
        .iter()
        .map(|c| {
            c.received_count(leaver_id, leaver_tracks.audio)
                + c.received_count(leaver_id, leaver_tracks.video)
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (client, before) in stay.iter().zip(before) {
        let after = client.received_count(leaver_id, leaver_tracks.audio)
            + client.received_count(leaver_id, leaver_tracks.video);
        ensure!(
            after == before,
            "{} still received {} packets of the leaver",
            client.name(),
            after - before
        );
    }
    // The two who stayed still hear each other.
    let counts = stay[0].received_count(stay[1].id()?, stay[1].published().context("p")?.audio);
    stay[0]
        .wait_for_packets(
            stay[1].id()?,
            stay[1].published().context("p")?.audio,
            counts + 20,
            T,
        )
        .await?;

    for client in stay {
        client.leave().await?;
    }
    server
        .wait_for_stats(T, "everything freed", |s| {
            s.rooms == 0
                && s.participants == 0
                && s.peers == 0
                && s.tracks == 0
                && s.subscriptions == 0
        })
        .await?;
    let refs: Vec<&Client> = clients.iter().collect();
    assert_no_failures(&refs)
}

/// Waits until no keyframe request has reached `publisher` for `quiet`.
async fn wait_keyframe_quiet(publisher: &Client, quiet: Duration) -> Result<()> {
    wait::poll_until(T, "keyframe requests to go quiet", || {
        let last = publisher.keyframe_requests().last().map(|r| r.at);
        last.is_none_or(|at| at.elapsed() >= quiet).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pli_reaches_the_publisher_and_bursts_are_throttled() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let publisher = Client::connect_and_join(server.http_addr(), "standup", "ada").await?;
    let tracks = publisher.publish_and_stream(MediaRate::default()).await?;
    let subscriber = Client::connect_and_join(server.http_addr(), "standup", "bob").await?;
    let pub_id = publisher.id()?;
    subscriber
        .wait_for_packets(pub_id, tracks.video, 10, T)
        .await?;
    let (_, video_ssrc) = publisher.published_ssrcs().context("ssrcs")?;

    // One PLI.
    wait_keyframe_quiet(&publisher, PLI_THROTTLE + Duration::from_millis(200)).await?;
    let before = publisher.keyframe_requests().len();
    subscriber.send_pli(pub_id, tracks.video).await?;
    wait::poll_until(T, "the PLI at the publisher", || {
        (publisher.keyframe_requests().len() > before).then_some(())
    })
    .await
    .with_context(|| {
        format!(
            "{before} keyframe requests reached the publisher before the PLI (the server's own)"
        )
    })?;
    let request = publisher.keyframe_requests()[before];
    ensure!(
        request.media_ssrc == video_ssrc,
        "keyframe request for SSRC {} instead of the published video SSRC {video_ssrc}",
        request.media_ssrc
    );

    // A burst of 20 PLIs in 200 ms.
    wait_keyframe_quiet(&publisher, PLI_THROTTLE + Duration::from_millis(200)).await?;
    let before = publisher.keyframe_requests().len();
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..20 {
        ticker.tick().await;
        subscriber.send_pli(pub_id, tracks.video).await?;
    }
    let burst_end = Instant::now();
    wait::poll_until(T, "a PLI from the burst at the publisher", || {
        (publisher.keyframe_requests().len() > before).then_some(())
    })
    .await?;
    // Let any delayed (trailing) request through, then count.
    wait_keyframe_quiet(&publisher, PLI_THROTTLE * 2).await?;
    let burst: Vec<_> = publisher.keyframe_requests()[before..].to_vec();
    let window = burst
        .last()
        .map_or(burst_end, |r| r.at.max(burst_end))
        .duration_since(start);
    let allowed = (window.as_millis() / PLI_THROTTLE.as_millis()) as usize + 1;
    ensure!(
        !burst.is_empty() && burst.len() <= allowed,
        "{} keyframe requests reached the publisher for 20 PLIs over {:?} (allowed 1..={allowed})",
        burst.len(),
        burst_end.duration_since(start)
    );
    for pair in burst.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        ensure!(
            gap + Duration::from_millis(50) >= PLI_THROTTLE,
            "two forwarded keyframe requests only {gap:?} apart"
        );
    }
    // The publisher answered with a keyframe, and it reached the subscriber.
    wait::poll_until(T, "a keyframe after the burst at the subscriber", || {
        subscriber
            .received(pub_id, tracks.video)
            .iter()
            .any(|p| p.at > start && chorus_tests::media::is_vp8_keyframe(&p.payload))
            .then_some(())
    })
    .await?;
    assert_no_failures(&[&publisher, &subscriber])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rooms_are_isolated() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let red = publishing_clients(&server, "red", &["ada", "bob"]).await?;
    let blue = publishing_clients(&server, "blue", &["cy", "dee"]).await?;
    wait_for_media_from(&red[0], &red[1]).await?;
    wait_for_media_from(&red[1], &red[0]).await?;
    wait_for_media_from(&blue[0], &blue[1]).await?;
    wait_for_media_from(&blue[1], &blue[0]).await?;

    chat_goes_through(&red[0], &red[1], "hello red").await?;
    chat_goes_through(&blue[0], &blue[1], "hello blue").await?;
    // A second round trip in each room, so anything misrouted has had time to arrive.
    chat_goes_through(&red[1], &red[0], "red again").await?;
    chat_goes_through(&blue[1], &blue[0], "blue again").await?;

    for (room, other) in [(&red, &blue), (&blue, &red)] {
        let others: HashSet<ParticipantId> =
            other.iter().filter_map(|c| c.participant_id()).collect();
        let other_names: HashSet<&str> = other.iter().map(Client::name).collect();
        for client in room.iter() {
            for (key, packets) in client.received_all() {
                ensure!(
                    !others.contains(&key.0),
                    "{} receives media of {key:?}",
                    client.name()
                );
                for p in packets {
                    let tag = parse_tag(&p.payload).context("tag")?;
                    ensure!(
                        !other_names.contains(tag.sender.as_str()),
                        "{} received {}'s media",
                        client.name(),
                        tag.sender
                    );
                }
            }
            ensure!(
                client.unmapped().is_empty(),
                "{} received unmapped packets",
                client.name()
            );
            for logged in client.messages() {
                let crossed = match &logged.message {
                    ServerMessage::ParticipantJoined { participant } => {
                        others.contains(&participant.id)
                    }
                    ServerMessage::ParticipantLeft { participant_id }
                    | ServerMessage::TrackPublished { participant_id, .. }
                    | ServerMessage::TrackUnpublished { participant_id, .. }
                    | ServerMessage::MuteChanged { participant_id, .. } => {
                        others.contains(participant_id)
                    }
                    ServerMessage::Chat { line } => others.contains(&line.from),
                    ServerMessage::SubscribeOffer { tracks, .. } => {
                        tracks.iter().any(|t| others.contains(&t.participant_id))
                    }
                    ServerMessage::Joined { participants, .. } => {
                        participants.iter().any(|p| others.contains(&p.id))
                    }
                    _ => false,
                };
                ensure!(
                    !crossed,
                    "{} got {:?} from the other room",
                    client.name(),
                    logged.message
                );
            }
        }
        for client in room.iter() {
            for sender in room.iter() {
                if client.id()? != sender.id()? {
                    assert_media_intact(client, sender)?;
                }
            }
        }
    }
    let rooms = red[0].list_rooms().await?;
    let names: HashSet<String> = rooms.iter().map(|r| r.room.to_string()).collect();
    ensure!(
        names == HashSet::from(["red".to_owned(), "blue".to_owned()]),
        "rooms {rooms:?}"
    );
    ensure!(rooms.iter().all(|r| r.participants == 2), "rooms {rooms:?}");
    let all: Vec<&Client> = red.iter().chain(blue.iter()).collect();
    assert_no_failures(&all)
}

/// How a participant goes away without saying `leave`.
#[derive(Debug, Clone, Copy)]
enum Departure {
    /// The WebSocket drops, and the peers with it.
    AbruptDisconnect,
    /// The peers close (DTLS close_notify); the WebSocket stays open.
    MediaFailure,
    /// The media goes silent with no goodbye at all (the UDP socket neither sends nor
    /// receives); the WebSocket stays open. Only the ICE consent timeouts can tell.
    MediaSilence,
}

/// One participant publishes, then goes away as `how` says: the other hears
/// `participantLeft` within 10 s and the server frees everything of it. Returns the one
/// that went, with a mark taken just before it went.
async fn departure_is_noticed(how: Departure) -> Result<(Client, usize)> {
    init_tracing();
    let server = Server::start().await?;
    let stayer = Client::connect_and_join(server.http_addr(), "standup", "ada").await?;
    let silent = Arc::new(AtomicBool::new(false));
    let options = ClientOptions {
        runtime: Some(SilenceSocket::runtime(Arc::clone(&silent))),
        ..Default::default()
    };
    let leaver = Client::connect_with(server.http_addr(), "bob", options).await?;
    leaver.join("standup").await?;
    let tracks = leaver.publish_and_stream(MediaRate::default()).await?;
    let leaver_id = leaver.id()?;
    stayer
        .wait_for_packets(leaver_id, tracks.video, 10, T)
        .await?;

    let mark = stayer.mark();
    let own_mark = leaver.mark();
    let gone_at = Instant::now();
    match how {
        Departure::AbruptDisconnect => leaver.disconnect_abruptly().await,
        Departure::MediaFailure => leaver.drop_media().await,
        Departure::MediaSilence => silent.store(true, Ordering::Relaxed),
    }
    stayer
        .wait_for_after(mark, Duration::from_secs(10), &format!("participantLeft after {how:?}"), |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == leaver_id)
        })
        .await?;
    let took = gone_at.elapsed();
    ensure!(
        took <= Duration::from_secs(10),
        "participantLeft took {took:?}"
    );
    server
        .wait_for_stats(T, "the departed participant freed", |s| {
            s.participants == 1 && s.tracks == 0 && s.subscriptions == 0
        })
        .await?;
    assert_no_failures(&[&stayer])?;
    Ok((leaver, own_mark))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_disconnect_is_noticed_by_the_others() -> Result<()> {
    departure_is_noticed(Departure::AbruptDisconnect).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_media_fails_is_removed_and_told_why() -> Result<()> {
    let (failed, mark) = departure_is_noticed(Departure::MediaFailure).await?;
    expect_media_failed(&failed, mark).await
}

/// No DTLS close, no ICE message, nothing: the server's ICE-lite consent timeouts notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_media_goes_silent_is_removed_and_told_why() -> Result<()> {
    let (failed, mark) = departure_is_noticed(Departure::MediaSilence).await?;
    expect_media_failed(&failed, mark).await
}

/// The participant whose media failed hears why, on the WebSocket that stayed open.
async fn expect_media_failed(failed: &Client, mark: usize) -> Result<()> {
    failed
        .wait_for_after(mark, T, "bye mediaFailed", |m| {
            matches!(
                m,
                ServerMessage::Bye {
                    reason: ByeReason::MediaFailed
                }
            )
        })
        .await?;
    Ok(())
}

/// Sends a chat from `from` and waits until `to` has it: the session and the room still work.
async fn chat_goes_through(from: &Client, to: &Client, text: &str) -> Result<()> {
    from.chat(text)?;
    to.wait_for(
        T,
        &format!("chat {text:?}"),
        |m| matches!(m, ServerMessage::Chat { line } if line.text == text),
    )
    .await
    .map(|_| ())
}

/// Sends `frame` on `client`'s own socket and expects an `error` with `code`.
async fn expect_error(client: &Client, frame: String, code: ErrorCode) -> Result<()> {
    let mark = client.mark();
    client.send_text(frame)?;
    let reply = client
        .wait_for_after(mark, T, &format!("error {code:?}"), |m| {
            matches!(m, ServerMessage::Error { .. })
        })
        .await?;
    match reply {
        ServerMessage::Error { code: got, .. } if got == code => Ok(()),
        other => bail!("expected error {code:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_typed_errors_and_the_session_keeps_working() -> Result<()> {
    init_tracing();
    let server = Server::start_with_config("[limits]\nmax_message_bytes = 4096\n").await?;

    // Before joining, on a bare socket.
    let mut raw = RawWs::connect(server.http_addr()).await?;
    raw.send_text("{\"type\": \"join\", ").await?;
    match raw.recv(T).await? {
        ServerMessage::Error {
            code: ErrorCode::MalformedJson,
            ..
        } => {}
        other => bail!("expected malformedJson before join, got {other:?}"),
    }
    raw.join("standup", "raw").await?;

    let ada = Client::connect_and_join(server.http_addr(), "standup", "ada").await?;
    let bob = Client::connect_and_join(server.http_addr(), "standup", "bob").await?;
    chat_goes_through(&ada, &bob, "warm-up").await?;

    expect_error(&ada, "{not json".to_owned(), ErrorCode::MalformedJson).await?;
    chat_goes_through(&ada, &bob, "after malformedJson").await?;

    expect_error(
        &ada,
        r#"{"type":"teleport","to":"mars"}"#.to_owned(),
        ErrorCode::UnknownType,
    )
    .await?;
    chat_goes_through(&ada, &bob, "after unknownType").await?;

    // Nobody publishes, so ada has no offer outstanding.
    let answer = serde_json::to_string(&ClientMessage::SubscribeAnswer {
        sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".to_owned(),
    })?;
    expect_error(&ada, answer, ErrorCode::OutOfOrder).await?;
    chat_goes_through(&ada, &bob, "after outOfOrder").await?;

    // A well-formed chat whose frame is over the 4096-byte limit.
    let big = serde_json::to_string(&ClientMessage::Chat {
        text: "x".repeat(5000),
    })?;
    expect_error(&ada, big, ErrorCode::MessageTooLarge).await?;
    chat_goes_through(&ada, &bob, "after messageTooLarge").await?;
    ensure!(
        !bob.messages()
            .iter()
            .any(|l| matches!(&l.message, ServerMessage::Chat { line } if line.text.len() >= 5000)),
        "the oversized chat was delivered"
    );

    let offer = serde_json::to_string(&ClientMessage::PublishOffer {
        sdp: "this is not an SDP".to_owned(),
        tracks: vec![],
    })?;
    expect_error(&ada, offer, ErrorCode::InvalidSdp).await?;
    chat_goes_through(&ada, &bob, "after invalidSdp").await?;

    // After all that, ada can still publish and bob receives her media intact.
    ada.publish_and_stream(MediaRate::default()).await?;
    wait_for_media_from(&bob, &ada).await?;
    assert_media_intact(&bob, &ada)?;
    ensure!(ada.is_connected() && bob.is_connected(), "a socket closed");
    raw.close().await?;
    assert_no_failures(&[&ada, &bob])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_full_room_is_refused_and_the_session_can_join_elsewhere() -> Result<()> {
    init_tracing();
    let server = Server::start_with_config("[limits]\nmax_participants_per_room = 2\n").await?;
    let ada = Client::connect_and_join(server.http_addr(), "small", "ada").await?;
    let bob = Client::connect_and_join(server.http_addr(), "small", "bob").await?;

    let cy = Client::connect(server.http_addr(), "cy").await?;
    let err = match cy.join("small").await {
        Ok(joined) => bail!("a third participant joined a room of 2: {joined:?}"),
        Err(err) => err,
    };
    ensure!(
        refusal_code(&err) == Some(ErrorCode::RoomFull),
        "expected roomFull, got {err:#}"
    );
    // The room is unaffected, and nobody there heard of cy.
    chat_goes_through(&ada, &bob, "still two of us").await?;
    ensure!(
        !ada.messages().iter().any(|l| matches!(&l.message, ServerMessage::ParticipantJoined { participant } if participant.name == "cy")),
        "the refused participant was announced"
    );
    server
        .wait_for_stats(T, "two participants", |s| {
            s.participants == 2 && s.rooms == 1
        })
        .await?;
    // The refused session stays open and may join another room.
    ensure!(cy.is_connected(), "the refused session was closed");
    cy.join("other").await?;
    server
        .wait_for_stats(T, "three participants in two rooms", |s| {
            s.participants == 3 && s.rooms == 2
        })
        .await?;
    assert_no_failures(&[&ada, &bob, &cy])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_is_announced_and_rooms_are_listed() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let ada = Client::connect_and_join(server.http_addr(), "standup", "ada").await?;
    let tracks = ada.publish_and_stream(MediaRate::default()).await?;
    let bob = Client::connect_and_join(server.http_addr(), "standup", "bob").await?;
    bob.wait_for_packets(ada.id()?, tracks.audio, 10, T).await?;

    let mark = bob.mark();
    ada.set_mute(tracks.audio, true)?;
    let ada_id = ada.id()?;
    bob.wait_for_after(mark, T, "muteChanged(true)", |m| {
        matches!(m, ServerMessage::MuteChanged { participant_id, track_id, muted: true }
            if *participant_id == ada_id && *track_id == tracks.audio)
    })
    .await?;
    // Muting a track one does not own is refused.
    let mark = bob.mark();
    bob.set_mute(tracks.video, true)?;
    match bob
        .wait_for_after(mark, T, "an error", |m| {
            matches!(
                m,
                ServerMessage::Error { .. } | ServerMessage::MuteChanged { .. }
            )
        })
        .await?
    {
        ServerMessage::Error {
            code: ErrorCode::UnknownTrack,
            ..
        } => {}
        other => bail!("muting someone else's track: expected unknownTrack, got {other:?}"),
    }

    // A session that has not joined sees the room list.
    let lobby = Client::connect(server.http_addr(), "lobby").await?;
    let rooms = lobby.list_rooms().await?;
    ensure!(
        rooms.len() == 1 && rooms[0].room.as_str() == "standup" && rooms[0].participants == 2,
        "room list {rooms:?}"
    );
    // It keeps receiving updates as the list changes.
    let mark = lobby.mark();
    let cy = Client::connect_and_join(server.http_addr(), "retro", "cy").await?;
    lobby
        .wait_for_after(mark, T, "a roomList with retro", |m| {
            matches!(m, ServerMessage::RoomList { rooms } if rooms.iter().any(|r| r.room.as_str() == "retro"))
        })
        .await?;
    assert_no_failures(&[&ada, &bob, &lobby, &cy])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_packet_comes_again_and_every_subscription_sends_sender_reports() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let publisher = Client::connect_and_join(server.http_addr(), "standup", "ada").await?;
    let tracks = publisher.publish_and_stream(MediaRate::default()).await?;
    // The subscriber comes once the server holds some video in the track's history.
    wait::poll_until(T, "the publisher's first video packets", || {
        let sent = publisher.sent();
        (sent.iter().filter(|p| p.kind == MediaKind::Video).count() >= 10).then_some(())
    })
    .await?;
    let subscriber = Client::connect_and_join(server.http_addr(), "standup", "bob").await?;
    let pub_id = publisher.id()?;
    subscriber
        .wait_for_packets(pub_id, tracks.video, 20, T)
        .await?;

    // NACK the three numbers just before the first packet the subscriber got. They name
    // the publisher's packets from before the subscription started, which the server still
    // holds in the track's history: they arrive, under those numbers, as the publisher sent
    // them. (Packets the subscriber already has would come again too, but its SRTP replay
    // protection drops a second copy, as a browser's does.)
    let first = subscriber
        .received(pub_id, tracks.video)
        .into_iter()
        .next()
        .context("a first video packet")?;
    let first_counter = parse_tag(&first.payload)
        .context("a tagged packet")?
        .counter;
    let seqs: Vec<u16> = (1..=3u16)
        .rev()
        .map(|back| first.sequence_number.wrapping_sub(back))
        .collect();
    subscriber.send_nack(pub_id, tracks.video, &seqs).await?;
    let resent = wait::poll_until(T, "the NACKed packets", || {
        let got = subscriber.received(pub_id, tracks.video);
        let resent: Vec<_> = seqs
            .iter()
            .filter_map(|s| got.iter().find(|p| p.sequence_number == *s).cloned())
            .collect();
        (resent.len() == seqs.len()).then_some(resent)
    })
    .await?;
    for (packet, back) in resent.iter().zip((1..=3u32).rev()) {
        let tag = parse_tag(&packet.payload).context("the resent packet's tag")?;
        ensure!(
            tag.counter + back == first_counter
                && packet.payload == expected_payload(&tag)
                && packet.ssrc == first.ssrc,
            "seq {}: got counter {} on SSRC {}, expected counter {} on SSRC {}",
            packet.sequence_number,
            tag.counter,
            packet.ssrc,
            first_counter - back,
            first.ssrc
        );
    }

    // Sender reports for both subscriptions, counting what was sent, with an RTP time that
    // fits the stream's timestamps and an NTP time that is the wall clock.
    let ssrc_of = |track| {
        subscriber
            .received(pub_id, track)
            .last()
            .map(|p| p.ssrc)
            .context("no packet received")
    };
    let (video_ssrc, audio_ssrc) = (ssrc_of(tracks.video)?, ssrc_of(tracks.audio)?);
    wait::poll_until(T, "sender reports for both subscriptions", || {
        let reports = subscriber.sender_reports();
        let has = |ssrc| reports.iter().any(|r| r.ssrc == ssrc && r.packet_count > 0);
        (has(video_ssrc) && has(audio_ssrc)).then_some(())
    })
    .await?;
    for (ssrc, track, clock_rate) in [
        (video_ssrc, tracks.video, 90_000.0),
        (audio_ssrc, tracks.audio, 48_000.0),
    ] {
        let report = subscriber
            .sender_reports()
            .into_iter()
            .rfind(|r| r.ssrc == ssrc)
            .context("a sender report")?;
        let got = subscriber.received(pub_id, track);
        let nearest = got
            .iter()
            .min_by_key(|p| {
                let (a, b) = (p.at, report.at);
                if a > b { a - b } else { b - a }
            })
            .context("packets")?;
        let expected = f64::from(nearest.timestamp)
            + (report.at.duration_since(nearest.at).as_secs_f64()
                - nearest.at.duration_since(report.at).as_secs_f64())
                * clock_rate;
        let off = (f64::from(report.rtp_time) - expected).abs();
        ensure!(
            off < 0.2 * clock_rate,
            "SSRC {ssrc}: RTP time {} is {off} ticks from the stream's ({expected})",
            report.rtp_time
        );
        let received = got.iter().filter(|p| p.at <= report.at).count() as u32;
        ensure!(
            report.packet_count >= received.saturating_sub(5)
                && report.packet_count <= got.len() as u32 + 5,
            "SSRC {ssrc}: packet count {} against {received} received before the report",
            report.packet_count
        );
        let unix = (report.ntp_time >> 32).saturating_sub(2_208_988_800);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        ensure!(
            unix.abs_diff(now) <= 5,
            "SSRC {ssrc}: NTP time {unix} s is not the wall clock {now} s"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_video_is_recovered_by_the_subscribers_nacks() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let publisher = Client::connect_and_join(server.http_addr(), "standup", "ada").await?;
    let tracks = publisher.publish_and_stream(MediaRate::default()).await?;
    // The subscriber's socket drops the first arrival of every video packet whose sequence
    // number is a multiple of 10; its own NACK generator (webrtc-rs's default) asks again.
    let dropped = Arc::new(AtomicU64::new(0));
    let lossy = LossySocket::runtime(VP8_PT, 10, Arc::clone(&dropped));
    let subscriber = Client::connect_with(
        server.http_addr(),
        "bob",
        ClientOptions {
            runtime: Some(lossy),
            ..Default::default()
        },
    )
    .await?;
    subscriber.join("standup").await?;
    let pub_id = publisher.id()?;
    subscriber
        .wait_for_packets(pub_id, tracks.video, 100, T)
        .await?;

    // Every packet from the first received up to a few frames ago has arrived: the holes
    // were filled from the track's history.
    let holes = |got: &[chorus_tests::ReceivedPacket]| -> Option<Vec<u16>> {
        let first = got.first()?.sequence_number;
        let offsets: HashSet<u16> = got
            .iter()
            .map(|p| p.sequence_number.wrapping_sub(first))
            .filter(|o| *o < 0x8000)
            .collect();
        let newest = offsets.iter().copied().max()?;
        // the newest 30 packets (a few frames) may still be on their way back
        Some(
            (0..newest.saturating_sub(30))
                .filter(|o| !offsets.contains(o))
                .map(|o| first.wrapping_add(o))
                .collect(),
        )
    };
    let result = wait::poll_until(T, "every dropped video packet again", || {
        let got = subscriber.received(pub_id, tracks.video);
        (dropped.load(Ordering::Relaxed) >= 10 && holes(&got)?.is_empty()).then_some(got)
    })
    .await;
    let got = result.with_context(|| {
        format!(
            "dropped {}, still missing {:?}",
            dropped.load(Ordering::Relaxed),
            holes(&subscriber.received(pub_id, tracks.video))
        )
    })?;
    // Every packet that arrived with a number the socket drops came from a retransmission
    // (its first arrival was dropped), and the server counted each.
    let recovered = got
        .iter()
        .filter(|p| p.sequence_number.is_multiple_of(10))
        .map(|p| p.sequence_number)
        .collect::<HashSet<u16>>()
        .len() as u64;
    let (_, stats) = chorus_tests::harness::http_get(server.http_addr(), "/api/stats").await?;
    let stats: serde_json::Value = serde_json::from_str(&stats)?;
    ensure!(
        recovered >= 5 && stats["retransmitted"].as_u64() >= Some(recovered),
        "{recovered} dropped packets arrived again, but the server counted: {stats}"
    );
    Ok(())
}

// ---- Simulcast -------------------------------------------------------------------------

/// A tile that layer 0 (320x180) covers.
const SMALL_TILE: (u32, u32) = (160, 90);
/// A tile only layer 2 (1280x720) covers.
const LARGE_TILE: (u32, u32) = (1280, 720);

/// The layer in a received packet's tag; an error for a payload without one.
fn layer_of(packet: &ReceivedPacket) -> Result<u8> {
    parse_tag(&packet.payload)
        .and_then(|t| t.layer)
        .with_context(|| format!("packet {} carries no layer", packet.sequence_number))
}

/// The latest `streamState` `client` got for `track`: (layer, paused).
fn latest_stream_state(
    client: &Client,
    track: TrackId,
) -> Option<(Option<u8>, Option<PauseReason>)> {
    stream_states(client, track).last().copied()
}

/// Every `streamState` `client` got for `track`, in order.
fn stream_states(client: &Client, track: TrackId) -> Vec<(Option<u8>, Option<PauseReason>)> {
    client
        .messages()
        .into_iter()
        .filter_map(|l| match l.message {
            ServerMessage::StreamState {
                track_id,
                layer,
                paused,
            } if track_id == track => Some((layer, paused)),
            _ => None,
        })
        .collect()
}

/// Waits until the latest `streamState` for `track` says `want`.
async fn wait_stream_state(
    client: &Client,
    track: TrackId,
    want: (Option<u8>, Option<PauseReason>),
    within: Duration,
) -> Result<()> {
    wait::poll_until(within, &format!("streamState {want:?} for {track}"), || {
        (latest_stream_state(client, track) == Some(want)).then_some(())
    })
    .await
    .with_context(|| format!("streamStates so far: {:?}", stream_states(client, track)))
}

/// How many packets of `layer` of `from`'s `track` arrived at `client` after `since`.
fn layer_packets_since(
    client: &Client,
    from: ParticipantId,
    track: TrackId,
    layer: u8,
    since: Instant,
) -> usize {
    client
        .received(from, track)
        .iter()
        .filter(|p| p.at > since && layer_of(p).ok() == Some(layer))
        .count()
}

/// Waits until `count` packets of `layer` of `from`'s `track` arrived at `client` after
/// `since`.
async fn wait_layer_packets(
    client: &Client,
    from: ParticipantId,
    track: TrackId,
    layer: u8,
    since: Instant,
    count: usize,
) -> Result<()> {
    let result = wait::poll_until(
        T,
        &format!("{count} packets of layer {layer} of {track}"),
        || (layer_packets_since(client, from, track, layer, since) >= count).then_some(()),
    )
    .await;
    result.with_context(|| {
        let recent: Vec<Option<u8>> = client
            .received(from, track)
            .iter()
            .rev()
            .take(10)
            .map(|p| parse_tag(&p.payload).and_then(|t| t.layer))
            .collect();
        format!(
            "newest layers received {recent:?}; streamStates {:?}",
            stream_states(client, track)
        )
    })
}

/// Waits until 20 packets of the layer `client` was last told of `track` have arrived
/// (the layer may change meanwhile, as the allocation steps up).
async fn wait_forwarded_layer(client: &Client, from: ParticipantId, track: TrackId) -> Result<()> {
    let since = Instant::now();
    wait::poll_until(
        T,
        &format!("20 packets of the layer told for {track}"),
        || {
            let layer = latest_stream_state(client, track)?.0?;
            (layer_packets_since(client, from, track, layer, since) >= 20).then_some(())
        },
    )
    .await
    .with_context(|| format!("streamStates {:?}", stream_states(client, track)))
}

/// Waits until nothing of `track` has arrived for `quiet`.
async fn wait_track_quiet(
    client: &Client,
    from: ParticipantId,
    track: TrackId,
    quiet: Duration,
) -> Result<()> {
    wait::poll_until(T, &format!("{track} to stop arriving"), || {
        let last = client.received(from, track).last().map(|p| p.at);
        last.is_none_or(|at| at.elapsed() >= quiet).then_some(())
    })
    .await
}

/// Checks a subscriber's copy of a layered video, packet by packet, against what the
/// publisher sent, and returns the layers it was forwarded in, one entry per switch:
/// - every payload is byte-identical to the one sent for its (layer, frame) by `tag_sender`;
/// - one SSRC and one payload type throughout;
/// - sequence numbers rise by exactly 1 from each packet to the next, across switches too;
/// - timestamps always rise, and within a run of one layer keep the sender's spacing;
/// - wherever the stream changes layer or skips frames (a switch, a resume after a pause),
///   the first packet is a keyframe of the layer that follows.
fn check_layered_stream(
    label: &str,
    got: &[ReceivedPacket],
    sent: &[SentPacket],
    tag_sender: &str,
) -> Result<Vec<u8>> {
    ensure!(!got.is_empty(), "{label}: nothing received");
    let mut layers_seen = Vec::new();
    let mut previous: Option<(&ReceivedPacket, MediaTag, &SentPacket)> = None;
    for packet in got {
        let tag = parse_tag(&packet.payload)
            .with_context(|| format!("{label}: untagged payload {:?}", packet.payload))?;
        ensure!(
            tag.sender == tag_sender && tag.kind == MediaKind::Video,
            "{label}: packet of {}/{:?}",
            tag.sender,
            tag.kind
        );
        let layer = tag
            .layer
            .with_context(|| format!("{label}: no layer in {tag:?}"))?;
        ensure!(
            packet.payload == expected_payload(&tag),
            "{label}: payload of {tag:?} differs from what was built"
        );
        let original = sent
            .iter()
            .find(|s| {
                s.layer == Some(layer) && s.counter == tag.counter && s.payload == packet.payload
            })
            .with_context(|| format!("{label}: {tag:?} was never sent"))?;
        let starts = match &previous {
            None => true,
            Some((_, before, _)) => before.layer != tag.layer || tag.counter != before.counter + 1,
        };
        if starts {
            ensure!(
                tag.keyframe && is_vp8_keyframe(&packet.payload),
                "{label}: the stream {} on a delta frame: {tag:?} (seq {}) after {:?} (seq {:?}); \
                 sequence numbers around it: {:?}",
                if previous.is_none() {
                    "starts"
                } else {
                    "switches or resumes"
                },
                packet.sequence_number,
                previous.as_ref().map(|(_, t, _)| t),
                previous.as_ref().map(|(p, _, _)| p.sequence_number),
                around(got, packet),
            );
            if layers_seen.last() != Some(&layer) {
                layers_seen.push(layer);
            }
        }
        if let Some((before, before_tag, before_sent)) = &previous {
            let step = packet.timestamp.wrapping_sub(before.timestamp);
            ensure!(
                step != 0 && step < 0x8000_0000,
                "{label}: timestamp does not rise from {before_tag:?} ({}) to {tag:?} ({})",
                before.timestamp,
                packet.timestamp
            );
            if !starts {
                ensure!(
                    step == original.timestamp.wrapping_sub(before_sent.timestamp),
                    "{label}: timestamp spacing changed at {tag:?}"
                );
            }
        }
        previous = Some((packet, tag, original));
    }
    assert_one_stream(label, got)?;
    Ok(layers_seen)
}

/// (sequence number, layer, frame, keyframe) of the packets received around `packet`.
fn around(got: &[ReceivedPacket], packet: &ReceivedPacket) -> Vec<(u16, Option<u8>, u32, bool)> {
    let at = got
        .iter()
        .position(|p| std::ptr::eq(p, packet))
        .unwrap_or_default();
    got[at.saturating_sub(5)..(at + 5).min(got.len())]
        .iter()
        .filter_map(|p| {
            let t = parse_tag(&p.payload)?;
            Some((p.sequence_number, t.layer, t.counter, t.keyframe))
        })
        .collect()
}

/// Joins `name` to `room` with no downlink estimate (no transport-cc feedback): what it is
/// forwarded then depends on its tiles alone. The simulcast scenarios check layer choice by
/// tile, keyframes and numbering; on loopback, with every e2e test running at once on two
/// cores, scheduling delays read as queuing to the estimator and pause videos for low
/// bandwidth (seen), which is the bandwidth tests' subject, not these.
async fn join_without_estimate(server: &Server, room: &str, name: &str) -> Result<Client> {
    let client = Client::connect(server.http_addr(), name).await?;
    client.without_downlink_estimate();
    client.join(room).await?;
    Ok(client)
}

/// [`simulcast_pair`] and a second subscriber, cy, that has the camera too.
async fn simulcast_trio(
    server: &Server,
    room: &str,
) -> Result<(Client, Client, Client, PublishedTracks)> {
    let (ada, bob, tracks) = simulcast_pair(server, room).await?;
    let cy = join_without_estimate(server, room, "cy").await?;
    wait::poll_until(T, "cy to be offered ada's camera", || {
        cy.subscribed()
            .iter()
            .any(|s| s.track_id == tracks.video)
            .then_some(())
    })
    .await?;
    Ok((ada, bob, cy, tracks))
}

/// A simulcast publisher streaming in `room`, and a subscriber that has its camera.
async fn simulcast_pair(server: &Server, room: &str) -> Result<(Client, Client, PublishedTracks)> {
    let ada = Client::connect_and_join(server.http_addr(), room, "ada").await?;
    let tracks = ada.publish_with(PublishOptions::simulcast()).await?;
    ada.start_media(MediaRate::default())?;
    let bob = join_without_estimate(server, room, "bob").await?;
    let ada_id = ada.id()?;
    wait::poll_until(T, "bob to be offered ada's camera", || {
        bob.subscribed()
            .iter()
            .any(|s| s.track_id == tracks.video && s.participant_id == ada_id)
            .then_some(())
    })
    .await?;
    Ok((ada, bob, tracks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_moves_between_simulcast_layers_only_on_keyframes() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let (ada, bob, tracks) = simulcast_pair(&server, "standup").await?;
    let ada_id = ada.id()?;
    let video = tracks.video;
    let tile = |visible: bool, (w, h): (u32, u32)| bob.track_settings(video, visible, w, h);

    // A small tile: the lowest layer.
    tile(true, SMALL_TILE)?;
    wait_stream_state(&bob, video, (Some(0), None), T).await?;
    wait_layer_packets(&bob, ada_id, video, 0, Instant::now(), 20).await?;

    // A large tile: up, one layer per step, to the top.
    tile(true, LARGE_TILE)?;
    wait_stream_state(&bob, video, (Some(2), None), T).await?;
    wait_layer_packets(&bob, ada_id, video, 2, Instant::now(), 20).await?;

    // Small again: straight down.
    tile(true, SMALL_TILE)?;
    wait_stream_state(&bob, video, (Some(0), None), T).await?;
    wait_layer_packets(&bob, ada_id, video, 0, Instant::now(), 20).await?;

    // Hidden: paused, and nothing arrives.
    tile(false, (0, 0))?;
    wait_stream_state(&bob, video, (None, Some(PauseReason::NotVisible)), T).await?;
    wait_track_quiet(&bob, ada_id, video, Duration::from_millis(600)).await?;

    // Shown again: back on the lowest layer.
    tile(true, SMALL_TILE)?;
    wait_stream_state(&bob, video, (Some(0), None), T).await?;
    wait_layer_packets(&bob, ada_id, video, 0, Instant::now(), 20).await?;

    let got = bob.received(ada_id, video);
    let layers = check_layered_stream("bob receiving ada's camera", &got, &ada.sent(), "ada")?;
    ensure!(
        layers.first() == Some(&0) && layers.contains(&2) && layers.last() == Some(&0),
        "layers forwarded {layers:?}"
    );
    // What bob was told, in order (extra steps in between are fine).
    let told = stream_states(&bob, video);
    let wanted = [
        (Some(0), None),
        (Some(2), None),
        (Some(0), None),
        (None, Some(PauseReason::NotVisible)),
        (Some(0), None),
    ];
    let mut rest = told.iter();
    for want in &wanted {
        ensure!(
            rest.any(|s| s == want),
            "streamStates {told:?} do not contain {wanted:?} in order"
        );
    }
    // Keyframes were asked for layer by layer, by each layer's own SSRC.
    let ssrcs: HashSet<u32> = ada.camera_layers().iter().map(|(_, s)| *s).collect();
    let requests = ada.keyframe_requests();
    ensure!(
        requests.iter().all(|r| ssrcs.contains(&r.media_ssrc)),
        "keyframe requests for SSRCs {:?}, the layers are {ssrcs:?}",
        requests.iter().map(|r| r.media_ssrc).collect::<Vec<_>>()
    );
    ensure!(bob.unmapped().is_empty(), "packets on unmapped mids");
    assert_no_failures(&[&ada, &bob])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynacast_stops_the_top_layer_while_every_tile_is_small() -> Result<()> {
    dynacast_scenario("", false).await
}

/// The same across media workers: ada and cy on one, bob on the other, where bob's tile
/// decides. The mirror's need reaches ada's worker (`worker/relay.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynacast_counts_subscribers_on_other_workers() -> Result<()> {
    dynacast_scenario("[media]\nworkers = 2\nspread_room_after = 1\n", true).await
}

/// Every subscriber shows ada small, then one (`cy`, or `bob` when `bob_large`) large, then
/// hides it: the layers ada is asked for follow.
async fn dynacast_scenario(config: &str, bob_large: bool) -> Result<()> {
    init_tracing();
    let server = Server::start_with_config(config).await?;
    let (ada, bob, cy, tracks) = simulcast_trio(&server, "standup").await?;
    let (ada_id, video) = (ada.id()?, tracks.video);
    let (large_one, small_one) = if bob_large { (&bob, &cy) } else { (&cy, &bob) };

    // Every subscriber shows ada small: the publisher hears that only q is needed.
    bob.track_settings(video, true, SMALL_TILE.0, SMALL_TILE.1)?;
    cy.track_settings(video, true, SMALL_TILE.0, SMALL_TILE.1)?;
    let small = Instant::now();
    wait::poll_until(T, "publishLayers [q]", || {
        (ada.latest_publish_layers(video)? == ["q"]).then_some(())
    })
    .await
    .with_context(|| {
        format!(
            "publishLayers so far: {:?}",
            ada.latest_publish_layers(video)
        )
    })?;
    wait_layer_packets(&bob, ada_id, video, 0, small, 20).await?;
    wait_layer_packets(&cy, ada_id, video, 0, small, 20).await?;
    ensure!(
        ada.sending_rids(video) == Some(vec!["q".to_owned()]),
        "ada sends {:?}",
        ada.sending_rids(video)
    );

    // One large tile: f is asked for again, and it reaches that subscriber.
    large_one.track_settings(video, true, LARGE_TILE.0, LARGE_TILE.1)?;
    let large = Instant::now();
    wait::poll_until(T, "publishLayers with f", || {
        ada.latest_publish_layers(video)?
            .iter()
            .any(|r| r == "f")
            .then_some(())
    })
    .await?;
    wait_stream_state(large_one, video, (Some(2), None), T).await?;
    wait_layer_packets(large_one, ada_id, video, 2, large, 20).await?;
    // The other stays small on q meanwhile.
    ensure!(
        latest_stream_state(small_one, video) == Some((Some(0), None)),
        "{}'s stream state {:?}",
        small_one.name(),
        latest_stream_state(small_one, video)
    );

    // The large tile goes away: f is dropped again.
    large_one.track_settings(video, false, 0, 0)?;
    wait::poll_until(T, "publishLayers [q] again", || {
        (ada.latest_publish_layers(video)? == ["q"]).then_some(())
    })
    .await?;

    // Every publishLayers named a prefix of q, h, f, and none was sent for a track of
    // another participant.
    for l in ada.messages() {
        if let ServerMessage::PublishLayers { track_id, rids } = l.message {
            ensure!(track_id == video, "publishLayers for {track_id}");
            ensure!(
                ["q", "h", "f"][..rids.len()] == rids[..],
                "publishLayers {rids:?} is not a prefix of q, h, f"
            );
        }
    }
    for (client, label) in [(&bob, "bob"), (&cy, "cy")] {
        let got = client.received(ada_id, video);
        check_layered_stream(&format!("{label} receiving ada"), &got, &ada.sent(), "ada")?;
    }
    assert_no_failures(&[&ada, &bob, &cy])
}

/// A subscriber that hides a tile and shows it again while another subscriber keeps the
/// same layer flowing: its copy must resume on a keyframe with the next sequence number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_a_layer_others_kept_on_without_a_hole() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let (ada, bob, cy, tracks) = simulcast_trio(&server, "standup").await?;
    let (ada_id, video) = (ada.id()?, tracks.video);
    bob.track_settings(video, true, SMALL_TILE.0, SMALL_TILE.1)?;
    cy.track_settings(video, true, SMALL_TILE.0, SMALL_TILE.1)?;
    wait_stream_state(&bob, video, (Some(0), None), T).await?;
    wait_layer_packets(&bob, ada_id, video, 0, Instant::now(), 20).await?;

    // bob hides ada while cy still shows her: q keeps flowing to cy, bob is paused.
    bob.track_settings(video, false, 0, 0)?;
    wait_stream_state(&bob, video, (None, Some(PauseReason::NotVisible)), T).await?;
    wait_track_quiet(&bob, ada_id, video, Duration::from_millis(600)).await?;
    wait_layer_packets(&cy, ada_id, video, 0, Instant::now(), 10).await?;
    // Shown again: the same layer, the same source SSRC as before the pause.
    bob.track_settings(video, true, SMALL_TILE.0, SMALL_TILE.1)?;
    wait_stream_state(&bob, video, (Some(0), None), T).await?;
    wait_layer_packets(&bob, ada_id, video, 0, Instant::now(), 30).await?;

    for (client, label) in [(&bob, "bob"), (&cy, "cy")] {
        let got = client.received(ada_id, video);
        check_layered_stream(&format!("{label} receiving ada"), &got, &ada.sent(), "ada")?;
    }
    assert_no_failures(&[&ada, &bob, &cy])
}

/// Packets of each camera layer to wait for before the screen share: at 30 fps several
/// seconds, past the first receiver reports the server sends (every second or so), which
/// would have acknowledged the layers.
const PAST_FIRST_REPORTS: usize = 120;

/// A simulcast camera flows to a subscriber on its top layer; the publisher then starts a
/// screen share (a second `publishOffer` with one more video m-line) once the server's
/// receiver reports could have acknowledged the layers. The camera must keep flowing, and
/// its other layers must still be reachable.
async fn camera_survives_a_screen_share(mid_rid: MidRid) -> Result<()> {
    let server = Server::start().await?;
    let ada = Client::connect_and_join(server.http_addr(), "standup", "ada").await?;
    let tracks = ada
        .publish_with(PublishOptions {
            mid_rid,
            ..PublishOptions::simulcast()
        })
        .await?;
    ada.start_media(MediaRate::default())?;
    let bob = join_without_estimate(&server, "standup", "bob").await?;
    let (ada_id, video) = (ada.id()?, tracks.video);
    wait::poll_until(T, "bob to be offered ada's camera", || {
        bob.subscribed()
            .iter()
            .any(|s| s.track_id == video)
            .then_some(())
    })
    .await?;
    bob.track_settings(video, true, LARGE_TILE.0, LARGE_TILE.1)?;
    wait_layer_packets(&bob, ada_id, video, 2, Instant::now(), 20).await?;
    wait::poll_until(
        T,
        "every camera layer past the first receiver reports",
        || {
            let sent = ada.sent();
            (0..3u8)
                .all(|l| sent.iter().filter(|s| s.layer == Some(l)).count() >= PAST_FIRST_REPORTS)
                .then_some(())
        },
    )
    .await?;
    // The server never acknowledges a simulcast layer (its receiver reports leave them
    // out), so a Chromium-like sender still names them.
    ensure!(
        !ada.camera_acknowledged(),
        "a receiver report acknowledged a simulcast layer"
    );

    let shared = Instant::now();
    let screen = ada.publish_screen(&[]).await?;
    bob.wait_for_packets(ada_id, screen, 20, T).await?;
    // The camera goes on, on its top layer...
    wait_layer_packets(&bob, ada_id, video, 2, shared, 30)
        .await
        .context("the camera's top layer after the screen share")?;
    // ...and the lowest one can still be switched to.
    bob.track_settings(video, true, SMALL_TILE.0, SMALL_TILE.1)?;
    let small = Instant::now();
    wait_stream_state(&bob, video, (Some(0), None), T).await?;
    wait_layer_packets(&bob, ada_id, video, 0, small, 20)
        .await
        .context("the camera's lowest layer after the screen share")?;

    let got = bob.received(ada_id, video);
    check_layered_stream("bob receiving ada's camera", &got, &ada.sent(), "ada")?;
    let screen_got = bob.received(ada_id, screen);
    ensure!(
        screen_got
            .first()
            .is_some_and(|p| is_vp8_keyframe(&p.payload)),
        "the screen share does not start on a keyframe"
    );
    for packet in &screen_got {
        let tag = parse_tag(&packet.payload).context("untagged screen packet")?;
        ensure!(
            tag.sender == "ada.screen0" && packet.payload == expected_payload(&tag),
            "screen packet {tag:?} is not ada's screen intact"
        );
    }
    ensure!(
        sequence_breaks(&screen_got).is_empty(),
        "screen sequence breaks"
    );
    assert_no_failures(&[&ada, &bob])
}

/// Like Chromium, the camera's layers carry mid and rid until a receiver report
/// acknowledges them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulcast_camera_keeps_flowing_when_a_screen_share_is_added() -> Result<()> {
    init_tracing();
    camera_survives_a_screen_share(MidRid::UntilAcked).await
}

/// The control: every packet carries mid and rid, so a receiver that forgot which SSRC is
/// which layer learns it again from the next packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulcast_camera_that_always_sends_mid_and_rid_survives_a_screen_share() -> Result<()> {
    init_tracing();
    camera_survives_a_screen_share(MidRid::Always).await
}

/// Offers the camera as simulcast with `rids` and expects the server to refuse it with
/// `invalidSimulcast`, after which the session goes on.
async fn expect_simulcast_refused(ada: &Client, bob: &Client, rids: &[&str]) -> Result<()> {
    let result = ada
        .publish_with(PublishOptions {
            camera_rids: rids.iter().map(|r| (*r).to_owned()).collect(),
            ..PublishOptions::default()
        })
        .await;
    match result {
        Err(err) if refusal_code(&err) == Some(ErrorCode::InvalidSimulcast) => {}
        Err(err) => bail!("rids {rids:?}: expected invalidSimulcast, got {err:#}"),
        Ok(tracks) => bail!("rids {rids:?}: the server accepted the offer: {tracks:?}"),
    }
    ensure!(ada.is_connected(), "rids {rids:?}: the session closed");
    chat_goes_through(ada, bob, &format!("after rids {rids:?}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_simulcast_offers_are_refused_and_the_room_goes_on() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    // Two participants who call each other the whole time.
    let mut pair = Vec::new();
    for name in ["cy", "dee"] {
        let client = join_without_estimate(&server, "standup", name).await?;
        client.publish_and_stream(MediaRate::default()).await?;
        pair.push(client);
    }
    wait_for_media_from(&pair[0], &pair[1]).await?;
    wait_for_media_from(&pair[1], &pair[0]).await?;

    let ada = Client::connect_and_join(server.http_addr(), "standup", "ada").await?;
    let bad: [&[&str]; 4] = [
        &["q", "h", "f", "x"], // four encodings
        &["q", "h", "x"],      // an unknown rid
        &["q", "q"],           // the same rid twice
        &["x", "y"],           // only unknown rids
    ];
    for rids in bad {
        expect_simulcast_refused(&ada, &pair[0], rids).await?;
    }
    ensure!(
        pair[0]
            .messages()
            .iter()
            .all(|l| !matches!(&l.message, ServerMessage::TrackPublished { participant_id, .. } if Some(*participant_id) == ada.participant_id())),
        "a refused offer published a track"
    );

    // After all that, a good simulcast offer works, and so does a screen share offered as
    // simulcast too (the server has no reason to refuse it: it is forwarded by layers like
    // the camera).
    // Every packet carries mid and rid here: this test is not about the renegotiation
    // that forgets layer SSRCs (see `a_simulcast_camera_keeps_flowing_...`).
    let tracks = ada
        .publish_with(PublishOptions {
            mid_rid: MidRid::Always,
            ..PublishOptions::simulcast()
        })
        .await?;
    ada.start_media(MediaRate::default())?;
    let ada_id = ada.id()?;
    let screen = match ada.publish_screen(&["q", "h", "f"]).await {
        Ok(screen) => Some(screen),
        Err(err) if refusal_code(&err) == Some(ErrorCode::InvalidSimulcast) => None,
        Err(err) => return Err(err.context("a simulcast screen share")),
    };
    let cy = &pair[0];
    wait_forwarded_layer(cy, ada_id, tracks.video).await?;
    if let Some(screen) = screen {
        // A sane fallback: the screen reaches cy as one stream, layer by layer, each
        // switch on a keyframe, with its state told.
        wait_forwarded_layer(cy, ada_id, screen).await?;
        let got = cy.received(ada_id, screen);
        check_layered_stream(
            "cy receiving ada's screen",
            &got,
            &ada.sent(),
            "ada.screen0",
        )?;
    }
    let got = cy.received(ada_id, tracks.video);
    check_layered_stream("cy receiving ada's camera", &got, &ada.sent(), "ada")?;

    // cy and dee were never disturbed.
    for (receiver, sender) in [(&pair[0], &pair[1]), (&pair[1], &pair[0])] {
        assert_media_intact(receiver, sender)?;
    }
    assert_no_failures(&[&ada, &pair[0], &pair[1]])
}

/// Reaction bound of the capped-downlink scenario: the estimator's loss-based cuts come at
/// most every 300 ms plus a round trip, from an estimate that grew to several times what
/// was sent, and the allocator acts on its next pass.
const CAP_REACTION: Duration = Duration::from_secs(8);

/// A subscriber whose downlink suddenly carries much less than its layer: the server's
/// estimate, from the subscriber's own transport-cc feedback, falls; the subscriber is
/// moved down (or its video paused) and told so, while another subscriber of the same
/// camera keeps the top layer. Once the cap is lifted the subscriber climbs back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_downlink_shrinks_is_moved_down_and_back_up() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let ada = Client::connect_and_join(server.http_addr(), "standup", "ada").await?;
    let tracks = ada.publish_with(PublishOptions::simulcast()).await?;
    ada.start_media(MediaRate::default())?;
    let ada_id = ada.id()?;
    // Bob's sockets police inbound RTP to `cap` (0: no cap); cy is on an open link.
    let cap = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let bob = Client::connect_with(
        server.http_addr(),
        "bob",
        ClientOptions {
            runtime: Some(CappedSocket::runtime(
                Arc::clone(&cap),
                Arc::clone(&dropped),
            )),
            ..Default::default()
        },
    )
    .await?;
    bob.join("standup").await?;
    let cy = Client::connect_and_join(server.http_addr(), "standup", "cy").await?;
    for client in [&bob, &cy] {
        wait::poll_until(T, "ada's camera offered", || {
            client
                .subscribed()
                .iter()
                .any(|s| s.track_id == tracks.video)
                .then_some(())
        })
        .await?;
        client.track_settings(tracks.video, true, LARGE_TILE.0, LARGE_TILE.1)?;
    }
    for client in [&bob, &cy] {
        wait_stream_state(client, tracks.video, (Some(2), None), T).await?;
    }

    // The top layer with audio is about 330 kbit/s; bob's link now carries 150.
    cap.store(150_000, Ordering::Relaxed);
    let capped = Instant::now();
    let moved =
        wait::poll_until(
            CAP_REACTION,
            "bob moved off the top layer",
            || match latest_stream_state(&bob, tracks.video) {
                Some((Some(layer), _)) if layer < 2 => Some(()),
                Some((None, Some(PauseReason::LowBandwidth))) => Some(()),
                _ => None,
            },
        )
        .await;
    moved.with_context(|| {
        format!(
            "bob's streamStates: {:?}, dropped by the cap: {}",
            stream_states(&bob, tracks.video),
            dropped.load(Ordering::Relaxed)
        )
    })?;
    let reaction = capped.elapsed();
    // Audio still arrives on the capped link.
    let audio_before = bob.received(ada_id, tracks.audio).len();
    wait::poll_until(T, "bob's audio while capped", || {
        (bob.received(ada_id, tracks.audio).len() >= audio_before + 25).then_some(())
    })
    .await?;
    // Cy was never moved off the top layer.
    ensure!(
        stream_states(&cy, tracks.video)
            .iter()
            .skip_while(|s| **s != (Some(2), None))
            .all(|s| *s == (Some(2), None)),
        "cy was moved: {:?}",
        stream_states(&cy, tracks.video)
    );

    cap.store(0, Ordering::Relaxed);
    let lifted = Instant::now();
    wait_stream_state(&bob, tracks.video, (Some(2), None), Duration::from_secs(20)).await?;
    eprintln!(
        "capped downlink: moved down {:.1} s after the cap, back on the top layer {:.1} s \
         after it was lifted; the cap dropped {} packets; bob's streamStates {:?}",
        reaction.as_secs_f64(),
        lifted.elapsed().as_secs_f64(),
        dropped.load(Ordering::Relaxed),
        stream_states(&bob, tracks.video)
    );
    assert_no_failures(&[&ada, &bob, &cy])
}
