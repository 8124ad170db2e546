//! Video sent the way Chromium sends a simulcast camera or a screen share: one track, one
//! RTP stream per encoding (rid), each with its own SSRC, sequence numbers and keyframes.
//!
//! webrtc-rs treats a track whose encodings all have rids as simulcast (it offers
//! `a=rid:<rid> send` and `a=simulcast:send ...`), but its `write_rtp` adds neither the mid
//! nor the rid header extension, and a receiver that was told only rids can bind a layer's
//! SSRC from nothing else. So the sender here writes both itself, and, like Chromium, stops
//! after the first packets of each layer (Chromium stops once a receiver report acknowledges
//! the SSRC); a receiver has to remember what it learned.
//!
//! Each packet's payload is [`expected_payload`] with the layer in its tag, so a subscriber
//! can tell which layer the server forwarded and check every byte. The publisher obeys
//! `publishLayers` (dynacast) as `chorus.js` would: a layer not listed is not sent, and a
//! layer that comes back starts on a keyframe, as a browser's encoder does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use chorus_protocol::{MediaKind, PublishLayer, PublishTrack, TrackId, TrackSource};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters,
};
use rtc::sdp::extmap::{SDES_MID_URI, SDES_RTP_STREAM_ID_URI};
use webrtc::media_stream::Track;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::rtp_transceiver::RtpTransceiver;

use crate::client::{MediaRate, SentPacket};
use crate::media::{MediaTag, expected_payload, frame_size, video_payload_len};

/// The rids Chorus names simulcast layers by, lowest first (the server's `layer::RIDS`).
pub const RIDS: [&str; 3] = ["q", "h", "f"];

/// How long a simulcast layer's packets carry the mid and rid header extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MidRid {
    /// Until a receiver report block acknowledges the layer's SSRC, then never again: what
    /// Chromium does.
    #[default]
    UntilAcked,
    /// On every packet.
    Always,
}

/// The declared shape of layer `index` of a simulcast track (a layer past the third is
/// declared like the third): the size its keyframes announce, and the rate it really sends
/// at 30 fps, headers included. Not `chorus.js`'s 150k/500k/2.5M: the server weighs a layer
/// it is not receiving by its declared rate, and a declaration far above what the layers
/// send would keep the top layer out of reach of an estimate that grows from what is sent.
pub fn declared_layer(rid: &str, index: usize) -> PublishLayer {
    let layer = Some(index.min(2) as u8);
    let (width, height) = frame_size(layer);
    // payload plus RTP header, extensions and the SRTP tag, 30 times a second
    let max_bitrate = ((video_payload_len(layer) + 60) * 8 * 30) as u32;
    PublishLayer {
        rid: rid.to_owned(),
        max_bitrate,
        width: u32::from(width),
        height: u32::from(height),
    }
}

/// One encoding of a [`LayeredVideo`].
pub(crate) struct LayerSender {
    /// Empty for a track sent as one encoding.
    pub rid: String,
    pub ssrc: u32,
    /// The layer (re)starts: its next frame is a keyframe, whatever the rate says.
    starting: AtomicBool,
    /// A keyframe request for this SSRC arrived; the next frame of this layer is a keyframe.
    want_keyframe: AtomicBool,
    /// Dynacast: whether the server wants this layer (all are sent until it says).
    active: AtomicBool,
    /// A receiver report acknowledged this layer's SSRC.
    acked: AtomicBool,
}

/// A video track of the publisher peer sent as one or more RTP streams.
pub(crate) struct LayeredVideo {
    /// The sender name in the payload tags.
    pub tag_name: String,
    pub track: Arc<TrackLocalStaticRTP>,
    pub mid: String,
    pub track_id: TrackId,
    pub payload_type: u8,
    /// The negotiated ids of the mid and rid extensions, `None` if not negotiated.
    mid_ext: Option<u8>,
    rid_ext: Option<u8>,
    /// Lowest first: layer `i` is `layers[i]`.
    pub layers: Vec<LayerSender>,
    mid_rid: MidRid,
}

/// The encodings of a track with `rids` (one without a rid when empty), each with a fresh
/// SSRC from `ssrc`.
pub(crate) fn encodings(
    rids: &[String],
    codec: &RTCRtpCodec,
    mut ssrc: impl FnMut() -> u32,
) -> Vec<RTCRtpEncodingParameters> {
    let one = [String::new()];
    let rids = if rids.is_empty() { &one[..] } else { rids };
    rids.iter()
        .map(|rid| RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                rid: rid.clone(),
                ssrc: Some(ssrc()),
                ..Default::default()
            },
            active: true,
            codec: codec.clone(),
            ..Default::default()
        })
        .collect()
}

impl LayeredVideo {
    /// Wraps a negotiated video track. Reads the SSRC of each encoding from the track and
    /// the extension ids the answer negotiated from the transceiver's sender.
    pub(crate) async fn new(
        tag_name: String,
        track: Arc<TrackLocalStaticRTP>,
        transceiver: &Arc<dyn RtpTransceiver>,
        track_id: TrackId,
        mid_rid: MidRid,
    ) -> Result<Self> {
        let mid = transceiver
            .mid()
            .await
            .context("reading a mid")?
            .context("no mid after negotiation")?;
        let sender = transceiver
            .sender()
            .await
            .context("reading the sender")?
            .context("the video transceiver has no sender")?;
        let params = sender.get_parameters().await.context("sender parameters")?;
        let ext = |uri: &str| {
            params
                .rtp_parameters
                .header_extensions
                .iter()
                .find(|e| e.uri == uri)
                .and_then(|e| u8::try_from(e.id).ok())
        };
        let mid_ext = ext(SDES_MID_URI);
        let rid_ext = ext(SDES_RTP_STREAM_ID_URI);
        let payload_type = params
            .rtp_parameters
            .codecs
            .first()
            .map_or(crate::peer::VP8_PT, |c| c.payload_type);
        let layers = track
            .codings()
            .await
            .into_iter()
            .filter_map(|coding| {
                Some(LayerSender {
                    rid: coding.rtp_coding_parameters.rid.clone(),
                    ssrc: coding.rtp_coding_parameters.ssrc?,
                    starting: AtomicBool::new(true),
                    want_keyframe: AtomicBool::new(false),
                    active: AtomicBool::new(true),
                    acked: AtomicBool::new(false),
                })
            })
            .collect();
        Ok(Self {
            tag_name,
            track,
            mid,
            track_id,
            payload_type,
            mid_ext,
            rid_ext,
            layers,
            mid_rid,
        })
    }

    pub(crate) fn mid_rid(&self) -> MidRid {
        self.mid_rid
    }

    /// A receiver report block about `ssrc` arrived: if it is one of this track's layers,
    /// that layer stops naming itself (under [`MidRid::UntilAcked`]).
    pub(crate) fn acknowledged(&self, ssrc: u32) {
        if let Some(layer) = self.layers.iter().find(|l| l.ssrc == ssrc) {
            layer.acked.store(true, Ordering::Relaxed);
        }
    }

    /// Whether any layer's SSRC has been acknowledged by a receiver report.
    pub fn any_acknowledged(&self) -> bool {
        self.layers.iter().any(|l| l.acked.load(Ordering::Relaxed))
    }

    /// Whether this track is sent as several encodings.
    pub(crate) fn is_simulcast(&self) -> bool {
        self.layers.iter().any(|l| !l.rid.is_empty())
    }

    /// Dynacast: send exactly the layers named in `rids`. A layer that comes back starts
    /// on a keyframe.
    pub(crate) fn set_active(&self, rids: &[String]) {
        for layer in &self.layers {
            let active = rids.contains(&layer.rid);
            let was = layer.active.swap(active, Ordering::Relaxed);
            if active && !was {
                layer.starting.store(true, Ordering::Relaxed);
            }
        }
    }

    /// The rids being sent now.
    pub(crate) fn active_rids(&self) -> Vec<String> {
        self.layers
            .iter()
            .filter(|l| l.active.load(Ordering::Relaxed))
            .map(|l| l.rid.clone())
            .collect()
    }

    /// A PLI or FIR for `media_ssrc` arrived: that layer's next frame is a keyframe.
    /// Returns whether the SSRC is one of this track's.
    pub(crate) fn keyframe_requested(&self, media_ssrc: u32) -> bool {
        match self.layers.iter().find(|l| l.ssrc == media_ssrc) {
            Some(layer) => {
                layer.want_keyframe.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Sends one frame on every active layer until aborted, at `rate`: each layer's
    /// keyframes on its first frame, every `rate.keyframe_every` frames, on request and on
    /// coming back. Every packet is logged in `sent` before it is written.
    pub(crate) async fn send_loop(
        self: Arc<Self>,
        rate: MediaRate,
        sent: Arc<Mutex<Vec<SentPacket>>>,
        write_errors: Arc<AtomicU64>,
    ) {
        let interval = rate.video_interval;
        let ts_step = (90_000 * interval.as_micros() / 1_000_000) as u32;
        // Each layer is its own RTP stream: its own random sequence and timestamp origins,
        // so that a server which switches layers has to rebase both.
        let mut seqs: Vec<u16> = self
            .layers
            .iter()
            .map(|_| (crate::client::random_u32() & 0x7fff) as u16)
            .collect();
        let ts_bases: Vec<u32> = self
            .layers
            .iter()
            .map(|_| crate::client::random_u32())
            .collect();
        let mut counter: u32 = 0;
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let periodic = rate.keyframe_every > 0 && counter.is_multiple_of(rate.keyframe_every);
            for (index, layer) in self.layers.iter().enumerate() {
                if !layer.active.load(Ordering::Relaxed) {
                    continue;
                }
                // The capture clock runs on while a layer is paused, as a camera's does.
                let timestamp = ts_bases[index].wrapping_add(counter.wrapping_mul(ts_step));
                let starting = layer.starting.swap(false, Ordering::Relaxed);
                let requested = layer.want_keyframe.swap(false, Ordering::Relaxed);
                let keyframe = starting || periodic || (rate.keyframe_on_request && requested);
                let tag_layer = self.is_simulcast().then_some(index as u8);
                let payload = expected_payload(&MediaTag {
                    sender: self.tag_name.clone(),
                    kind: MediaKind::Video,
                    counter,
                    keyframe,
                    layer: tag_layer,
                });
                let seq = seqs[index];
                let mut header = rtc::rtp::header::Header {
                    version: 2,
                    marker: true,
                    payload_type: self.payload_type,
                    sequence_number: seq,
                    timestamp,
                    ssrc: layer.ssrc,
                    ..Default::default()
                };
                let named = match self.mid_rid {
                    MidRid::Always => true,
                    MidRid::UntilAcked => !layer.acked.load(Ordering::Relaxed),
                };
                if self.is_simulcast() && named {
                    self.add_mid_rid(&mut header, &layer.rid);
                }
                lock(&sent).push(SentPacket {
                    kind: MediaKind::Video,
                    counter,
                    ssrc: layer.ssrc,
                    sequence_number: seq,
                    timestamp,
                    keyframe,
                    payload: payload.clone(),
                    at: Instant::now(),
                    mid: self.mid.clone(),
                    layer: tag_layer,
                });
                let packet = rtc::rtp::Packet { header, payload };
                if let Err(err) = self.track.write_rtp(packet).await {
                    write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("[{}] write_rtp layer {index}: {err}", self.tag_name);
                }
                seqs[index] = seq.wrapping_add(1);
            }
            counter += 1;
        }
    }

    /// Writes the mid and rid header extensions (RFC 8843 §15, RFC 8852) the way a browser
    /// does on the first packets of a stream.
    fn add_mid_rid(&self, header: &mut rtc::rtp::header::Header, rid: &str) {
        if let Some(id) = self.mid_ext
            && let Err(err) = header.set_extension(id, Bytes::from(self.mid.clone().into_bytes()))
        {
            tracing::debug!("[{}] mid extension: {err}", self.tag_name);
        }
        if let Some(id) = self.rid_ext
            && let Err(err) = header.set_extension(id, Bytes::from(rid.to_owned().into_bytes()))
        {
            tracing::debug!("[{}] rid extension: {err}", self.tag_name);
        }
    }
}

/// Writes one layer of a simulcast camera for a caller that shapes its own media (the load
/// generator), with what [`LayeredVideo`]'s own loop does around each packet: the mid and rid
/// header extensions while the layer names itself, and the layer's dynacast and keyframe
/// flags. The caller builds the packets (SSRC [`ssrc`](LayerWriter::ssrc), payload type
/// [`payload_type`](LayerWriter::payload_type)); do not run
/// [`Client::start_media`](crate::Client::start_media) at the same time, it reads the same
/// flags.
#[derive(Clone)]
pub struct LayerWriter {
    video: Arc<LayeredVideo>,
    index: usize,
}

impl LayerWriter {
    pub(crate) fn new(video: Arc<LayeredVideo>, index: usize) -> Self {
        Self { video, index }
    }

    fn layer(&self) -> &LayerSender {
        &self.video.layers[self.index]
    }

    /// The layer's index, 0 the lowest.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn rid(&self) -> &str {
        &self.layer().rid
    }

    pub fn ssrc(&self) -> u32 {
        self.layer().ssrc
    }

    pub fn payload_type(&self) -> u8 {
        self.video.payload_type
    }

    /// Dynacast: whether the server wants this layer now (all are sent until it says).
    pub fn is_active(&self) -> bool {
        self.layer().active.load(Ordering::Relaxed)
    }

    /// Whether this layer's next frame must be a keyframe: it (re)starts, or a PLI/FIR asked
    /// for one. Reading clears both.
    pub fn take_keyframe_due(&self) -> bool {
        let layer = self.layer();
        let starting = layer.starting.swap(false, Ordering::Relaxed);
        let requested = layer.want_keyframe.swap(false, Ordering::Relaxed);
        starting || requested
    }

    /// Hands one packet of this layer to the peer connection, adding the mid and rid
    /// extensions while the layer is to name itself.
    pub async fn write_rtp(&self, mut packet: rtc::rtp::Packet) -> Result<()> {
        let named = match self.video.mid_rid {
            MidRid::Always => true,
            MidRid::UntilAcked => !self.layer().acked.load(Ordering::Relaxed),
        };
        if named {
            self.video
                .add_mid_rid(&mut packet.header, &self.layer().rid);
        }
        self.video
            .track
            .write_rtp(packet)
            .await
            .context("write_rtp")
    }
}

/// What `publishOffer` says of a video m-line sent with `rids` (none: one encoding).
pub(crate) fn declaration(mid: &str, source: TrackSource, rids: &[String]) -> PublishTrack {
    PublishTrack {
        mid: mid.to_owned(),
        source,
        layers: rids
            .iter()
            .enumerate()
            .map(|(i, rid)| declared_layer(rid, i))
            .collect(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
