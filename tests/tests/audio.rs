//! Audio end to end: Opus RED forwarded as it came to subscribers that negotiated it and
//! unwrapped to plain Opus for the others, and the server's speaker election driven by
//! the publishers' audio levels. A real `chorus` on loopback, simulated browsers. Build the
//! server first: `cargo build -p chorus`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use chorus_protocol::{MediaKind, ParticipantId, ServerMessage};
use chorus_tests::peer::{AudioCaps, OPUS_PT, RED_PT};
use chorus_tests::{Client, ClientOptions, RtpWriter, Server, init_tracing};
use rtc::rtp::header::{Extension, Header};

/// Generous bound for anything signaling or media related on a loaded 2-core machine.
const T: Duration = Duration::from_secs(15);

const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

fn red_client() -> ClientOptions {
    ClientOptions {
        audio: AudioCaps {
            red: true,
            audio_level: true,
        },
        ..Default::default()
    }
}

/// The Opus frame of packet `n`: a TOC byte and the counter, so every frame is distinct.
fn frame(n: u32) -> Vec<u8> {
    let mut f = vec![0xfc];
    f.extend_from_slice(&n.to_be_bytes());
    f.extend_from_slice(&[0x5a; 20]);
    f
}

/// A RED payload as Chromium makes it: frame `n - 1` as the redundant block (960 ticks
/// old), frame `n` as the primary block; the first packet has only the primary.
fn red_payload(n: u32) -> Vec<u8> {
    let mut p = Vec::new();
    if n > 0 {
        let old = frame(n - 1);
        let word: u32 = (1 << 31) | (u32::from(OPUS_PT) << 24) | (960 << 10) | old.len() as u32;
        p.extend_from_slice(&word.to_be_bytes());
        p.push(OPUS_PT);
        p.extend_from_slice(&old);
    } else {
        p.push(OPUS_PT);
    }
    p.extend_from_slice(&frame(n));
    p
}

/// One audio packet on `writer`, with `payload_type`, and an audio-level element under
/// `level_id` carrying `level` (the raw element bytes: one byte is a level).
fn audio_packet(
    writer: &RtpWriter,
    seq: u16,
    payload_type: u8,
    payload: Vec<u8>,
    level: Option<(u8, &'static [u8])>,
) -> rtc::rtp::Packet {
    let mut header = Header {
        version: 2,
        payload_type,
        sequence_number: seq,
        timestamp: 960 * u32::from(seq),
        ssrc: writer.ssrc,
        ..Default::default()
    };
    if let Some((id, bytes)) = level {
        header.extension = true;
        header.extension_profile = 0xBEDE;
        header.extensions = vec![Extension {
            id,
            payload: Bytes::from_static(bytes),
        }];
    }
    rtc::rtp::Packet {
        header,
        payload: Bytes::from(payload),
    }
}

/// Reads one labelled sample of the server's `/metrics`.
async fn metric(server: &Server, series: &str) -> Result<u64> {
    let (status, body) = chorus_tests::harness::http_get(server.http_addr(), "/metrics").await?;
    ensure!(status == 200, "/metrics: {status}");
    let line = body
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .with_context(|| format!("no {series} in /metrics"))?;
    Ok(line[series.len()..].trim().parse::<f64>()? as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_goes_as_it_came_to_red_subscribers_and_as_its_primary_blocks_to_the_others()
-> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let addr = server.http_addr();
    let ada = Client::connect_with(addr, "ada", red_client()).await?;
    ada.join("red").await?;
    let tracks = ada.publish().await?;
    let answer = ada.publisher_answer().await.context("publisher answer")?;
    ensure!(
        answer.contains("red/48000/2"),
        "RED negotiated on the publisher leg: {answer}"
    );
    ensure!(
        answer.contains("usedtx=1") && answer.contains("useinbandfec=1"),
        "DTX and FEC in the answer: {answer}"
    );
    let level_id = ada
        .publisher_extension_id(AUDIO_LEVEL_URI)
        .await
        .context("audio level negotiated on the publisher leg")?;
    let bob = Client::connect_with(addr, "bob", red_client()).await?;
    bob.join("red").await?;
    let cy = Client::connect(addr, "cy").await?;
    cy.join("red").await?;
    let ada_id = ada.id()?;

    // Send until both subscribers get audio, then a known run with malformed RED and bad
    // levels mixed in.
    let writer = ada.rtp_writer(MediaKind::Audio).context("audio writer")?;
    let mut seq: u16 = 0;
    let warmup_until = Instant::now() + T;
    while bob.received_count(ada_id, tracks.audio) == 0
        || cy.received_count(ada_id, tracks.audio) == 0
    {
        ensure!(
            Instant::now() < warmup_until,
            "no audio reached the subscribers"
        );
        let p = audio_packet(
            &writer,
            seq,
            RED_PT,
            red_payload(u32::from(seq)),
            Some((level_id, &[0x80 | 40])),
        );
        writer.write_rtp(p).await?;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_counted = seq;
    let malformed: &[&[u8]] = &[
        &[],
        &[0x80 | OPUS_PT, 0, 0],
        &[0x80 | OPUS_PT, 0, 0, 200, OPUS_PT, 1],
    ];
    let mut malformed_sent = 0;
    for i in 0..151u16 {
        let n = seq;
        let bad_level: Option<(u8, &'static [u8])> = Some((level_id, &[1, 2]));
        let p = if i % 25 == 24 {
            malformed_sent += 1;
            let payload = malformed[usize::from(i / 25) % malformed.len()].to_vec();
            audio_packet(&writer, n, RED_PT, payload, bad_level)
        } else if i % 10 == 5 {
            // a packet of plain Opus from the same publisher, as a browser may send
            audio_packet(&writer, n, OPUS_PT, frame(u32::from(n)), None)
        } else {
            audio_packet(
                &writer,
                n,
                RED_PT,
                red_payload(u32::from(n)),
                Some((level_id, &[0x80 | 40])),
            )
        };
        writer.write_rtp(p).await?;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let last = seq - 1;
    // the last packet is a good one; wait for it on both
    let arrived = |c: &Client, check: &dyn Fn(&[u8]) -> bool| {
        c.received(ada_id, tracks.audio)
            .iter()
            .any(|p| check(&p.payload))
    };
    let deadline = Instant::now() + T;
    let last_red = red_payload(u32::from(last));
    let last_frame = frame(u32::from(last));
    while !(arrived(&bob, &|p| p == last_red.as_slice())
        && arrived(&cy, &|p| p == last_frame.as_slice()))
    {
        if Instant::now() >= deadline {
            let summary = |c: &Client| {
                let got = c.received(ada_id, tracks.audio);
                let pts: std::collections::BTreeMap<u8, usize> =
                    got.iter().fold(Default::default(), |mut m, p| {
                        *m.entry(p.payload_type).or_default() += 1;
                        m
                    });
                format!(
                    "{} packets {pts:?}, last {:?}",
                    got.len(),
                    got.last().map(|p| p.payload.len())
                )
            };
            anyhow::bail!(
                "the last packet did not arrive: bob {}, cy {}",
                summary(&bob),
                summary(&cy)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // cy, without RED: plain Opus frames, byte-identical to the primary blocks, each once,
    // in order, and no malformed packet.
    let plain = cy.received(ada_id, tracks.audio);
    let plain_pt = plain.first().context("cy got audio")?.payload_type;
    ensure!(plain_pt == OPUS_PT, "plain Opus for cy: {plain_pt}");
    ensure!(!cy_negotiated_red(&cy).await, "cy negotiated no RED");
    let mut counters = Vec::new();
    for p in &plain {
        ensure!(p.payload_type == plain_pt, "one payload type: {p:?}");
        ensure!(
            p.payload.len() == frame(0).len(),
            "a plain frame: {:?}",
            p.payload
        );
        let n = u32::from_be_bytes(p.payload[1..5].try_into()?);
        ensure!(
            p.payload[..] == frame(n)[..],
            "byte-identical primary block {n}"
        );
        counters.push(n);
    }
    let counted: Vec<u32> = counters
        .iter()
        .copied()
        .filter(|n| *n >= u32::from(first_counted))
        .collect();
    let expected: Vec<u32> = (u32::from(first_counted)..=u32::from(last))
        .filter(|n| (n - u32::from(first_counted)) % 25 != 24)
        .collect();
    ensure!(
        counted == expected,
        "every good packet once, in order, and none of the malformed: got {} of {}",
        counted.len(),
        expected.len()
    );

    // bob, with RED: the RED payloads as they came (malformed ones too: the server does not
    // look inside RED it forwards), on his RED payload type.
    let red = bob.received(ada_id, tracks.audio);
    let red_pts: std::collections::HashSet<u8> = red.iter().map(|p| p.payload_type).collect();
    ensure!(
        red_pts.len() == 2,
        "RED and Opus payload types: {red_pts:?}"
    );
    let got_red = red
        .iter()
        .filter(|p| p.payload.len() > frame(0).len() + 1)
        .count();
    ensure!(got_red > 100, "bob got RED payloads: {got_red}");
    for p in red.iter().rev().take(40) {
        let len = p.payload.len();
        let is_red = len > 25 && {
            let n = u32::from_be_bytes(p.payload[len - 24..len - 20].try_into()?);
            p.payload[..] == red_payload(n)[..]
        };
        let is_plain = len == frame(0).len();
        let is_malformed = malformed.iter().any(|m| p.payload[..] == m[..]);
        ensure!(
            is_red || is_plain || is_malformed,
            "as it came: {:?}",
            p.payload
        );
    }

    let dropped = metric(
        &server,
        "chorus_packet_drops_total{reason=\"malformed_red\"}",
    )
    .await?;
    ensure!(
        dropped == malformed_sent,
        "malformed RED counted: {dropped} of {malformed_sent}"
    );
    let invalid = metric(&server, "chorus_audio_levels_invalid_total").await?;
    ensure!(invalid == malformed_sent, "bad levels counted: {invalid}");
    Ok(())
}

/// Whether cy's subscriber answer took RED (it must not: it did not register it).
async fn cy_negotiated_red(cy: &Client) -> bool {
    cy.subscriber_answer()
        .await
        .is_some_and(|sdp| sdp.to_ascii_lowercase().contains("red/48000"))
}

/// A publisher that sends audio every 20 ms with the level in `level` (RFC 6464: 0 loud,
/// 127 silent) until `stop`.
fn speak(writer: RtpWriter, level_id: u8, level: Arc<AtomicU8>, stop: Arc<AtomicBool>) {
    const LEVELS: [[u8; 1]; 128] = {
        let mut t = [[0u8; 1]; 128];
        let mut i = 0;
        while i < 128 {
            t[i] = [0x80 | i as u8];
            i += 1;
        }
        t
    };
    tokio::spawn(async move {
        let mut seq: u16 = 0;
        while !stop.load(Ordering::Relaxed) {
            let l = usize::from(level.load(Ordering::Relaxed).min(127));
            let p = audio_packet(
                &writer,
                seq,
                OPUS_PT,
                frame(u32::from(seq)),
                Some((level_id, &LEVELS[l])),
            );
            let _ = writer.write_rtp(p).await;
            seq = seq.wrapping_add(1);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// Waits until `client`'s latest `activeSpeakers` names `first` first.
async fn wait_first_speaker(client: &Client, first: ParticipantId, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let latest = client
            .messages()
            .into_iter()
            .rev()
            .find_map(|l| match l.message {
                ServerMessage::ActiveSpeakers { speakers } => Some(speakers),
                _ => None,
            });
        if latest
            .as_ref()
            .and_then(|s| s.first())
            .is_some_and(|s| s.participant_id == first)
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{} never saw {first} speak first within {within:?}; latest {latest:?}",
            client.name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loudest_publisher_is_the_speaker_everyone_is_told_of() -> Result<()> {
    init_tracing();
    let server = Server::start().await?;
    let addr = server.http_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut levels = Vec::new();
    for name in ["ada", "bob", "cy"] {
        let c = Client::connect_with(addr, name, red_client()).await?;
        c.join("talk").await?;
        c.publish().await?;
        let id = c
            .publisher_extension_id(AUDIO_LEVEL_URI)
            .await
            .context("audio level negotiated")?;
        let level = Arc::new(AtomicU8::new(127));
        speak(
            c.rtp_writer(MediaKind::Audio).context("writer")?,
            id,
            Arc::clone(&level),
            Arc::clone(&stop),
        );
        clients.push(c);
        levels.push(level);
    }
    // Silence elects nobody.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for c in &clients {
        let named = c
            .messages()
            .into_iter()
            .any(|l| matches!(&l.message, ServerMessage::ActiveSpeakers { speakers } if !speakers.is_empty()));
        ensure!(!named, "{} was told of a speaker in silence", c.name());
    }
    // ada talks at -20 dBov: everyone is told within a second.
    levels[0].store(20, Ordering::Relaxed);
    let ada = clients[0].id()?;
    for c in &clients {
        wait_first_speaker(c, ada, Duration::from_millis(1000)).await?;
    }
    // ada stops and bob talks: the speaker follows within 1.5 s.
    levels[0].store(127, Ordering::Relaxed);
    levels[1].store(25, Ordering::Relaxed);
    let bob = clients[1].id()?;
    let switched = Instant::now();
    for c in &clients {
        wait_first_speaker(
            c,
            bob,
            Duration::from_millis(1500).saturating_sub(switched.elapsed()),
        )
        .await?;
    }
    // messages at most every 300 ms
    for c in &clients {
        let times: Vec<Instant> = c
            .messages()
            .into_iter()
            .filter(|l| matches!(l.message, ServerMessage::ActiveSpeakers { .. }))
            .map(|l| l.at)
            .collect();
        for w in times.windows(2) {
            ensure!(
                w[1].duration_since(w[0]) >= Duration::from_millis(250),
                "activeSpeakers too often: {:?}",
                w[1].duration_since(w[0])
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    Ok(())
}
