//! End-to-end scenarios: a real `chorus` on loopback, simulated browsers publishing known RTP.
//! Each test starts its own server. Build the server first: `cargo build -p chorus`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chorus_protocol::{
    ByeReason, ClientMessage, ErrorCode, MediaKind, ParticipantId, ServerMessage, TrackSource,
};
use chorus_tests::media::{expected_payload, parse_tag};
use chorus_tests::peer::VP8_PT;
use chorus_tests::socket::{LossySocket, SilenceSocket};
use chorus_tests::{
    Client, ClientOptions, MediaRate, PublishedTracks, RawWs, Server, init_tracing, refusal_code,
    sequence_breaks, wait,
};

/// Generous bound for anything signaling or media related on a loaded 2-core machine.
const T: Duration = Duration::from_secs(15);

/// The server's default keyframe-request throttle.
const PLI_THROTTLE: Duration = Duration::from_millis(500);

/// Audio packets at 50/s and video frames at 30/s: a few seconds of each.
const AUDIO_PACKETS: usize = 100;
const VIDEO_PACKETS: usize = 60;

fn track_of(tracks: PublishedTracks, kind: MediaKind) -> chorus_protocol::TrackId {
    match kind {
        MediaKind::Audio => tracks.audio,
        MediaKind::Video => tracks.video,
    }
}

/// Waits until `receiver` has enough of both of `sender`'s tracks.
async fn wait_for_media_from(receiver: &Client, sender: &Client) -> Result<()> {
    let id = sender.id()?;
    let tracks = sender.published().context("sender has not published")?;
    receiver
        .wait_for_packets(id, tracks.audio, AUDIO_PACKETS, T)
        .await?;
    receiver
        .wait_for_packets(id, tracks.video, VIDEO_PACKETS, T)
        .await?;
    Ok(())
}

/// Checks what `receiver` got from `sender`: each packet is byte-identical to the packet the
/// sender sent with the same counter, all from one SSRC with one payload type, and the sequence
/// numbers continuous.
fn assert_media_intact(receiver: &Client, sender: &Client) -> Result<()> {
    let id = sender.id()?;
    let tracks = sender.published().context("sender has not published")?;
    for kind in [MediaKind::Audio, MediaKind::Video] {
        let track = track_of(tracks, kind);
        let got = receiver.received(id, track);
        // Taken after `got`: everything received was sent before this snapshot.
        let sent = sender.sent();
        let label = format!(
            "{} receiving {}'s {kind:?} ({id}/{track})",
            receiver.name(),
            sender.name()
        );
        ensure!(!got.is_empty(), "{label}: nothing received");
        let first_tag = parse_tag(&got[0].payload).context("first packet untagged")?;
        let first_sent = sent
            .iter()
            .find(|s| s.kind == kind && s.counter == first_tag.counter)
            .context("first packet never sent")?;
        for packet in &got {
            let tag = parse_tag(&packet.payload)
                .with_context(|| format!("{label}: untagged payload {:?}", packet.payload))?;
            ensure!(
                tag.sender == sender.name() && tag.kind == kind,
                "{label}: packet belongs to {}/{:?}",
                tag.sender,
                tag.kind
            );
            ensure!(
                packet.payload == expected_payload(&tag),
                "{label}: payload of packet {} differs from what was built",
                tag.counter
            );
            let original = sent
                .iter()
                .find(|s| s.kind == kind && s.counter == tag.counter)
                .with_context(|| format!("{label}: counter {} was never sent", tag.counter))?;
            ensure!(
                original.payload == packet.payload,
                "{label}: packet {} differs from the one sent",
                tag.counter
            );
            // Timestamps may be offset by the server, but their spacing must survive.
            ensure!(
                packet.timestamp.wrapping_sub(got[0].timestamp)
                    == original.timestamp.wrapping_sub(first_sent.timestamp),
                "{label}: timestamp spacing changed at packet {}",
                tag.counter
            );
        }
        let ssrcs: HashSet<u32> = got.iter().map(|p| p.ssrc).collect();
        ensure!(ssrcs.len() == 1, "{label}: several SSRCs {ssrcs:?}");
        let pts: HashSet<u8> = got.iter().map(|p| p.payload_type).collect();
        ensure!(pts.len() == 1, "{label}: several payload types {pts:?}");
        let breaks = sequence_breaks(&got);
        ensure!(
            breaks.is_empty(),
            "{label}: {} sequence breaks in {} packets: {:?}",
            breaks.len(),
            got.len(),
            &breaks[..breaks.len().min(10)]
        );
        // Counters must rise with sequence numbers: nothing reordered or replayed.
        let counters: Vec<u32> = got
            .iter()
            .filter_map(|p| parse_tag(&p.payload).map(|t| t.counter))
            .collect();
        ensure!(
            counters.windows(2).all(|w| w[1] == w[0] + 1),
            "{label}: counters not consecutive: {:?}",
            &counters[..counters.len().min(20)]
        );
    }
    Ok(())
}

fn assert_no_failures(clients: &[&Client]) -> Result<()> {
    for client in clients {
        let failures = client.failures();
        ensure!(
            failures.is_empty(),
            "{} had failures: {failures:?}",
            client.name()
        );
    }
    Ok(())
}

/// Joins `names` into `room` and makes each publish and stream.
async fn publishing_clients(server: &Server, room: &str, names: &[&str]) -> Result<Vec<Client>> {
    let mut clients = Vec::new();
    for name in names {
        let client = Client::connect_and_join(server.http_addr(), room, name).await?;
        client.publish_and_stream(MediaRate::default()).await?;
        clients.push(client);
    }
    Ok(clients)
}

/// Waits until every client receives media from every other one.
async fn wait_for_full_mesh(clients: &[Client]) -> Result<()> {
    for receiver in clients {
        for sender in clients {
            if receiver.id()? != sender.id()? {
                wait_for_media_from(receiver, sender).await?;
            }
        }
    }
    Ok(())
}

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
