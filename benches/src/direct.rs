//! Latency of the simulated browsers' own stacks, without any server: one async `webrtc`
//! peer connection sends the load's video straight to another over loopback. Its latency is
//! what the Chorus figures contain besides the server (`--calibrate`): end to end, the client
//! stacks; at the sockets, the kernel's loopback alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{Mutex, mpsc, watch};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState,
};

use crate::load::{MEASURED, STOP, Sink, WARMUP, send_video};
use crate::options::Options;
use crate::stats::{Arrival, Percentiles, ReceiverStats, SendTally, WireUnmatched};
use crate::wire::{WireLinks, WireLog, wire_runtime};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The receiving side's accounting.
/// What a receiving peer connection's tracks count into.
#[derive(Clone)]
pub(crate) struct Counting {
    pub stats: Arc<Mutex<ReceiverStats>>,
    pub wire: WireLinks,
    /// Packets received, for a caller that watches them arrive.
    pub seen: Option<Arc<AtomicU64>>,
}

/// Counts every RTP packet of `track` into `counting` until the track ends.
pub(crate) fn count_track(track: Arc<dyn TrackRemote>, counting: Counting) {
    tokio::spawn(async move {
        while let Some(event) = track.poll().await {
            match event {
                TrackRemoteEvent::OnRtpPacket(packet) => {
                    let arrival = Arrival {
                        payload: &packet.payload,
                        at: Instant::now(),
                        ssrc: packet.header.ssrc,
                        seq: packet.header.sequence_number,
                    };
                    counting
                        .stats
                        .lock()
                        .await
                        .on_packet(&arrival, Some(&counting.wire));
                    if let Some(seen) = &counting.seen {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
                TrackRemoteEvent::OnEnded => break,
                _ => {}
            }
        }
    });
}

struct Handler {
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    state: watch::Sender<RTCPeerConnectionState>,
    counting: Option<Counting>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.candidates.send(init);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(counting) = self.counting.clone() {
            count_track(track, counting);
        }
    }
}

type Built = (
    Arc<dyn PeerConnection>,
    mpsc::UnboundedReceiver<RTCIceCandidateInit>,
    watch::Receiver<RTCPeerConnectionState>,
);

/// One peer connection whose socket writes into `log`.
async fn build(counting: Option<Counting>, log: &Arc<WireLog>) -> Result<Built> {
    let (candidates, candidates_rx) = mpsc::unbounded_channel();
    let (state, state_rx) = watch::channel(RTCPeerConnectionState::New);
    let handler = Arc::new(Handler {
        candidates,
        state,
        counting,
    });
    let runtime = wire_runtime(Arc::clone(log));
    let pc = chorus_tests::peer::build_on(handler, Some(runtime)).await?;
    Ok((pc, candidates_rx, state_rx))
}

/// Hands one side's trickled candidates to the other.
fn trickle(mut rx: mpsc::UnboundedReceiver<RTCIceCandidateInit>, to: Arc<dyn PeerConnection>) {
    tokio::spawn(async move {
        while let Some(candidate) = rx.recv().await {
            let _ = to.add_ice_candidate(candidate).await;
        }
    });
}

async fn connected(mut state: watch::Receiver<RTCPeerConnectionState>) -> Result<()> {
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match *state.borrow_and_update() {
                RTCPeerConnectionState::Connected => return Ok(()),
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                    bail!("direct peer connection failed")
                }
                _ => {}
            }
            state.changed().await?;
        }
    })
    .await
    .context("direct peers did not connect")?
}

/// The latency of the direct run's measured packets.
pub(crate) struct DirectLatency {
    /// End to end: sending application to receiving application.
    pub app: Percentiles,
    /// At the sockets: the sender's send call to the receiver's kernel timestamp.
    pub wire: Percentiles,
    pub wire_unmatched: WireUnmatched,
}

/// Sends the load's video from one peer connection straight to another for the warm-up and
/// the measured window, and returns the latency of the measured packets.
pub(crate) async fn run(opts: &Options) -> Result<DirectLatency> {
    let shape = opts.shape();
    let (sender_log, receiver_log) = (WireLog::new(), WireLog::new());
    let counting = Counting {
        stats: Arc::new(Mutex::new(ReceiverStats::default())),
        wire: WireLinks {
            own: Arc::clone(&receiver_log),
            publishers: vec![Arc::clone(&sender_log)].into(),
        },
        seen: None,
    };
    let stats = Arc::clone(&counting.stats);
    let (sender, sender_candidates, sender_state) = build(None, &sender_log).await?;
    let (receiver, receiver_candidates, receiver_state) =
        build(Some(counting), &receiver_log).await?;
    trickle(sender_candidates, Arc::clone(&receiver));
    trickle(receiver_candidates, Arc::clone(&sender));

    let ssrc = 0x00C0_FFEE;
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "direct-stream".to_owned(),
        "direct-video".to_owned(),
        "direct video".to_owned(),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            active: true,
            codec: chorus_tests::peer::vp8_codec(),
            ..Default::default()
        }],
    )));
    sender
        .add_transceiver_from_track(
            Arc::clone(&track) as Arc<dyn TrackLocal>,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec!["direct-stream".to_owned()],
                send_encodings: vec![],
            }),
        )
        .await?;
    let offer = sender.create_offer(None).await?;
    sender.set_local_description(offer.clone()).await?;
    receiver.set_remote_description(offer).await?;
    let answer = receiver.create_answer(None).await?;
    receiver.set_local_description(answer.clone()).await?;
    sender.set_remote_description(answer).await?;
    connected(sender_state).await?;
    connected(receiver_state).await?;

    let switch = Arc::new(AtomicU8::new(WARMUP));
    let tally = Arc::new(SendTally::default());
    let task = tokio::spawn(send_video(
        Sink::Track {
            track,
            ssrc,
            payload_type: chorus_tests::peer::VP8_PT,
        },
        shape,
        0,
        Arc::clone(&switch),
        tally,
    ));
    tokio::time::sleep(opts.warmup()).await;
    switch.store(MEASURED, Ordering::Relaxed);
    tokio::time::sleep(opts.duration()).await;
    switch.store(STOP, Ordering::Relaxed);
    let _ = task.await;
    tokio::time::sleep(opts.drain()).await;
    let _ = sender.close().await;
    let _ = receiver.close().await;
    let mut stats = stats.lock().await;
    Ok(DirectLatency {
        app: Percentiles::from_nanos(&mut stats.latencies_ns),
        wire: Percentiles::from_nanos(&mut stats.wire_latencies_ns),
        wire_unmatched: stats.wire_unmatched,
    })
}
