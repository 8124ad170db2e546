//! Scenario steps shared by the end-to-end tests: simulated browsers that publish known
//! media into a room, waiting for it to arrive, and checking every byte of it.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chorus_protocol::MediaKind;

use crate::media::{expected_payload, parse_tag};
use crate::{Client, MediaRate, PublishedTracks, ReceivedPacket, Server, sequence_breaks};

/// Generous bound for anything signaling or media related on a loaded 2-core machine.
const T: Duration = Duration::from_secs(15);

/// Audio packets at 50/s and video frames at 30/s: a few seconds of each.
pub const AUDIO_PACKETS: usize = 100;
pub const VIDEO_PACKETS: usize = 60;

pub fn track_of(tracks: PublishedTracks, kind: MediaKind) -> chorus_protocol::TrackId {
    match kind {
        MediaKind::Audio => tracks.audio,
        MediaKind::Video => tracks.video,
    }
}

/// Waits until `receiver` has enough of both of `sender`'s tracks.
pub async fn wait_for_media_from(receiver: &Client, sender: &Client) -> Result<()> {
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
pub fn assert_media_intact(receiver: &Client, sender: &Client) -> Result<()> {
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
        assert_one_stream(&label, &got)?;
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

pub fn assert_no_failures(clients: &[&Client]) -> Result<()> {
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
pub async fn publishing_clients(
    server: &Server,
    room: &str,
    names: &[&str],
) -> Result<Vec<Client>> {
    let mut clients = Vec::new();
    for name in names {
        let client = Client::connect_and_join(server.http_addr(), room, name).await?;
        client.publish_and_stream(MediaRate::default()).await?;
        clients.push(client);
    }
    Ok(clients)
}

/// Waits until every client receives media from every other one.
pub async fn wait_for_full_mesh(clients: &[Client]) -> Result<()> {
    for receiver in clients {
        for sender in clients {
            if receiver.id()? != sender.id()? {
                wait_for_media_from(receiver, sender).await?;
            }
        }
    }
    Ok(())
}

/// What one subscription received is one stream: one SSRC, one payload type, and sequence
/// numbers without a break.
pub fn assert_one_stream(label: &str, got: &[ReceivedPacket]) -> Result<()> {
    let ssrcs: HashSet<u32> = got.iter().map(|p| p.ssrc).collect();
    ensure!(ssrcs.len() == 1, "{label}: several SSRCs {ssrcs:?}");
    let pts: HashSet<u8> = got.iter().map(|p| p.payload_type).collect();
    ensure!(pts.len() == 1, "{label}: several payload types {pts:?}");
    let breaks = sequence_breaks(got);
    ensure!(
        breaks.is_empty(),
        "{label}: {} sequence breaks in {} packets: {:?}",
        breaks.len(),
        got.len(),
        &breaks[..breaks.len().min(10)]
    );
    Ok(())
}
