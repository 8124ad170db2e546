//! The one module that names webrtc-rs (`rtc`) types.
//!
//! A [`Peer`] wraps one sans-IO `RTCPeerConnection`. It is ICE-lite, shares the worker's
//! UDP socket, and speaks to the rest of the SFU in Chorus terms: tracks, subscriptions,
//! datagrams in and out, and [`PeerEvent`]s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chorus_protocol::{IceCandidate, MediaKind, PeerRole, TrackId};
use rtc::ice::tcp_type::TcpType;
use rtc::interceptor::{NackGeneratorBuilder, ReceiverReportBuilder, Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_RTX, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
    RTCIceProtocol,
};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use crate::MediaError;
use crate::idhash::IdHashMap;
use crate::red;
use crate::rewrite::{IdMap, SeqRewriter};
use crate::vp8::Vp8Rewriter;

mod audio;
mod early_checks;
#[doc(hidden)]
pub mod fuzzing;
mod path;
mod rid_keeper;
mod tap;
mod twcc;
mod viewer;
pub mod wire;

pub use audio::{AudioOptions, LevelRead};
pub use viewer::{MAX_VIEWER_SLOTS, ViewerSlot};

/// SRTP protection profiles the server accepts, by config name.
pub const SRTP_PROFILE_NAMES: &[&str] = &[
    "aead_aes_128_gcm",
    "aead_aes_256_gcm",
    "aes128_cm_hmac_sha1_80",
    "aes128_cm_hmac_sha1_32",
];

/// The SRTP profile a broadcast ingest (WHIP) publisher's leg accepts besides
/// `media.srtp_profiles`, last: encoders such as ffmpeg's WHIP muxer offer only AES-CM.
/// Browsers' legs keep the configured list, since the server takes the client's first
/// choice and Chromium lists AES-CM first.
pub const INGEST_SRTP_PROFILE: &str = "aes128_cm_hmac_sha1_80";

/// What one padding-only packet of a probe ([`Peer::send_padding`]) weighs on the
/// subscriber's link: the RTP header, four bytes of padding, and what every copy adds.
pub const PADDING_LINK_BYTES: usize = 12 + twcc::PADDING_BYTES + twcc::COPY_OVERHEAD;

/// The settings of a broadcast ingest publisher's peer: [`INGEST_SRTP_PROFILE`] appended.
pub fn ingest_settings(settings: &PeerSettings) -> PeerSettings {
    let mut settings = settings.clone();
    if !settings
        .srtp_profiles
        .iter()
        .any(|p| p == INGEST_SRTP_PROFILE)
    {
        settings.srtp_profiles.push(INGEST_SRTP_PROFILE.to_owned());
    }
    settings
}

/// Silence (no STUN, no media, no RTCP) after which a peer counts as disconnected.
/// Browsers check consent at least every 5 s or so and send RTCP every second.
const ICE_DISCONNECTED_AFTER: Duration = Duration::from_secs(4);
/// Further silence after which it has failed and its participant is removed: 8 s in all,
/// inside the 10 s within which the others must hear that it left.
const ICE_FAILED_AFTER: Duration = Duration::from_secs(4);

/// Settings shared by every peer of a worker.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    /// UDP host candidates to announce (ip:port of the shared socket, or NAT 1:1 addresses).
    pub candidates: Vec<SocketAddr>,
    /// ICE-TCP passive host candidates (empty when ICE-TCP is off).
    pub tcp_candidates: Vec<SocketAddr>,
    /// SRTP profiles, by names from [`SRTP_PROFILE_NAMES`]. The DTLS server takes the
    /// client's first choice among these, so listing only GCM is how to get GCM.
    pub srtp_profiles: Vec<String>,
    /// RED and DTX (`[audio]` in the config).
    pub audio: AudioOptions,
}

/// One forwarded RTP packet, as read from a publisher.
pub struct MediaPacket {
    packet: rtc::rtp::packet::Packet,
    /// Its audio level, read as it arrived (publisher leg, audio only).
    level: LevelRead,
}

impl MediaPacket {
    /// The packet's RTP size (header and payload, no extension, no SRTP): the forwarded
    /// byte counters.
    pub fn wire_len(&self) -> usize {
        12 + 4 * self.packet.header.csrc.len() + self.packet.payload.len()
    }

    /// What one forwarded copy of it weighs on a subscriber's link: its RTP size, the
    /// transport-cc extension, SRTP, UDP and IP. What a layer's rate meter counts, in the
    /// units of the downlink estimate it is weighed against (small audio packets carry
    /// about 40 % of overhead).
    pub fn link_len(&self) -> usize {
        self.wire_len() + twcc::COPY_OVERHEAD
    }

    pub fn payload(&self) -> &[u8] {
        &self.packet.payload
    }

    /// The publisher's SSRC.
    pub fn ssrc(&self) -> u32 {
        self.packet.header.ssrc
    }

    /// The publisher's sequence number.
    pub fn sequence_number(&self) -> u16 {
        self.packet.header.sequence_number
    }

    /// The audio level the publisher put on it.
    pub fn audio_level(&self) -> LevelRead {
        self.level
    }

    /// A copy for another worker's mirror of the track: the payload is shared (a reference
    /// count), and the header extensions are left behind, since forwarding writes its own;
    /// so nothing is allocated for a packet without contributing sources.
    pub fn relay_copy(&self) -> MediaPacket {
        let h = &self.packet.header;
        let header = rtc::rtp::header::Header {
            version: h.version,
            padding: h.padding,
            extension: false,
            marker: h.marker,
            payload_type: h.payload_type,
            sequence_number: h.sequence_number,
            timestamp: h.timestamp,
            ssrc: h.ssrc,
            csrc: h.csrc.clone(),
            extension_profile: 0,
            extensions: Vec::new(),
            extensions_padding: 0,
        };
        MediaPacket {
            packet: rtc::rtp::packet::Packet {
                header,
                payload: self.packet.payload.clone(),
            },
            level: self.level,
        }
    }

    /// The publisher's RTP timestamp.
    pub fn timestamp(&self) -> u32 {
        self.packet.header.timestamp
    }

    /// The RTP marker bit (the last packet of a video frame).
    pub fn marker(&self) -> bool {
        self.packet.header.marker
    }

    /// The publisher's payload type.
    pub fn payload_type(&self) -> u8 {
        self.packet.header.payload_type
    }

    /// The payload as a shared buffer: a reference, not a copy (for the recorder).
    pub fn payload_bytes(&self) -> bytes::Bytes {
        self.packet.payload.clone()
    }
}

/// Something a peer reports to the worker.
#[derive(Debug)]
pub enum PeerEvent {
    /// ICE and DTLS are up.
    Connected,
    /// ICE or DTLS failed, or the peer closed: the participant should go.
    Failed,
    /// A subscriber asked for a keyframe (PLI or FIR) on this track.
    KeyframeRequested(TrackId),
    /// A packet of a simulcast track came from an SSRC no layer has (dropped, counted).
    UnknownLayer,
    /// A subscriber reported these packets of this track lost (a NACK), named by the
    /// source's (SSRC, sequence number). Allocates, but only when packets are lost.
    ResendRequested {
        track: TrackId,
        lost: Vec<(u32, u16)>,
    },
}

/// What a publisher offer carried, per receiving m-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedTrack {
    pub mid: String,
    pub kind: MediaKind,
    /// Whether the client sends on it (false once stopped or made inactive).
    pub active: bool,
}

/// A source track's negotiated codec, as a subscription needs it.
#[derive(Debug, Clone)]
pub struct SourceCodec {
    kind: MediaKind,
    codec: RTCRtpCodec,
    payload_type: u8,
    /// The publisher's RED payload type, when it negotiated RED (audio only): its packets
    /// carry `codec` inside RED blocks.
    red: Option<u8>,
}

impl SourceCodec {
    /// The codec's MIME type, such as `video/VP8`.
    pub fn mime_type(&self) -> &str {
        &self.codec.mime_type
    }

    /// The publisher's RED payload type, when its audio comes in RED.
    pub fn red_payload_type(&self) -> Option<u8> {
        self.red
    }
}

/// What one subscription changes in every packet it forwards.
#[derive(Debug, Clone)]
pub struct HeaderRewrite {
    /// The subscription's own SSRC.
    pub ssrc: u32,
    pub seq: SeqRewriter,
    /// Publisher payload type → the subscriber's.
    pub pt: IdMap,
    /// For a subscriber that did not negotiate RED: the publisher's RED payload type and
    /// the payload type its primary blocks must have. Such packets go out as their primary
    /// block (mapped through `pt` from the RED payload type).
    pub unwrap_red: Option<(u8, u8)>,
    /// VP8: picture ids and TL0PICIDX continuous across layer switches and resumes.
    pub vp8: Option<Vp8Rewriter>,
}

impl HeaderRewrite {
    /// A rewrite to `ssrc` with nothing negotiated yet.
    pub fn new(ssrc: u32) -> Self {
        Self {
            ssrc,
            seq: SeqRewriter::new((ssrc >> 16) as u16),
            pt: IdMap::default(),
            unwrap_red: None,
            vp8: None,
        }
    }

    /// The packet as this subscription sends it; an error when its payload type is not
    /// negotiated with the subscriber, or it is RED to unwrap and malformed. The payload is
    /// shared, not copied (an unwrapped RED payload is a slice of it), except a VP8 payload
    /// whose picture id was offset by a layer switch, which is written into the
    /// subscription's reused buffer ([`Vp8Rewriter`]).
    pub fn apply(
        &mut self,
        src: &rtc::rtp::packet::Packet,
    ) -> Result<rtc::rtp::packet::Packet, ForwardDrop> {
        self.apply_as(src, false)
    }

    /// [`apply`](Self::apply) for the first packet of a layer switch or of a resume, which
    /// continues the output from the last packet sent even when the source is the same.
    pub fn apply_switching(
        &mut self,
        src: &rtc::rtp::packet::Packet,
    ) -> Result<rtc::rtp::packet::Packet, ForwardDrop> {
        self.apply_as(src, true)
    }

    fn apply_as(
        &mut self,
        src: &rtc::rtp::packet::Packet,
        switching: bool,
    ) -> Result<rtc::rtp::packet::Packet, ForwardDrop> {
        let pt = self
            .pt
            .get(src.header.payload_type)
            .ok_or(ForwardDrop::PayloadType)?;
        // Checked before the numbers move: a dropped packet leaves no gap.
        let mut payload = self.payload(src)?;
        if let Some(vp8) = &mut self.vp8 {
            payload = vp8.apply(src.header.ssrc, &payload, switching);
        }
        let (ssrc, seq, ts) = (
            src.header.ssrc,
            src.header.sequence_number,
            src.header.timestamp,
        );
        let (seq, ts) = if switching {
            self.seq.rewrite_resuming(ssrc, seq, ts)
        } else {
            self.seq.rewrite(ssrc, seq, ts)
        };
        Ok(self.copy(src, payload, pt, seq, ts))
    }

    /// The packet again, with the numbers [`apply`](Self::apply) gave it (answering a
    /// NACK); an error when its payload type is not negotiated or its source is not the
    /// current one any more.
    pub fn resend(
        &mut self,
        src: &rtc::rtp::packet::Packet,
    ) -> Result<rtc::rtp::packet::Packet, ForwardDrop> {
        let pt = self
            .pt
            .get(src.header.payload_type)
            .ok_or(ForwardDrop::PayloadType)?;
        let (seq, ts) = self
            .seq
            .resend(
                src.header.ssrc,
                src.header.sequence_number,
                src.header.timestamp,
            )
            .ok_or(ForwardDrop::PayloadType)?;
        let mut payload = self.payload(src)?;
        if let Some(vp8) = &mut self.vp8 {
            payload = vp8.resend(&payload);
        }
        Ok(self.copy(src, payload, pt, seq, ts))
    }

    /// The payload this subscription sends: the source's, or for RED to unwrap, a slice of
    /// it holding the primary block (no copy, no allocation).
    fn payload(&self, src: &rtc::rtp::packet::Packet) -> Result<Bytes, ForwardDrop> {
        match self.unwrap_red {
            Some((red_pt, inner_pt)) if src.header.payload_type == red_pt => {
                match red::primary(&src.payload) {
                    Ok((pt, range)) if pt == inner_pt && !range.is_empty() => {
                        Ok(src.payload.slice(range))
                    }
                    _ => Err(ForwardDrop::MalformedRed),
                }
            }
            _ => Ok(src.payload.clone()),
        }
    }

    fn copy(
        &self,
        src: &rtc::rtp::packet::Packet,
        payload: Bytes,
        payload_type: u8,
        sequence_number: u16,
        timestamp: u32,
    ) -> rtc::rtp::packet::Packet {
        // No header extension of the source goes through: each leg negotiates its own (MID,
        // RID and transport-cc are per leg; see `media_engine`). The subscriber leg's own
        // transport-cc number is added by the peer as the copy goes out (`twcc`).
        use rtc::rtp::header::Header;
        rtc::rtp::packet::Packet {
            header: Header {
                version: src.header.version,
                padding: src.header.padding,
                extension: false,
                marker: src.header.marker,
                payload_type,
                sequence_number,
                timestamp,
                ssrc: self.ssrc,
                csrc: src.header.csrc.clone(),
                extension_profile: 0,
                extensions: Vec::new(),
                extensions_padding: 0,
            },
            payload,
        }
    }
}

/// What one subscription has sent, for its sender reports (RFC 3550 6.4.1).
#[derive(Debug, Default, Clone, Copy)]
struct SendCounters {
    packets: u32,
    /// Payload octets.
    octets: u32,
    /// The RTP timestamp of the newest frame sent and when its first packet went out.
    last: Option<(u32, Instant)>,
}

/// Whether RTP timestamp `a` is later than `b` (serial arithmetic, RFC 3550 wraps them).
fn ts_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}

impl SendCounters {
    fn record(&mut self, timestamp: u32, octets: usize, now: Instant, resent: bool) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(octets as u32);
        // A resent or reordered packet is older than the newest frame: it does not move it.
        if !resent && self.last.is_none_or(|(ts, _)| ts_newer(timestamp, ts)) {
            self.last = Some((timestamp, now));
        }
    }

    /// The sender report for `ssrc` at `now`: the RTP time is the newest frame's, moved on
    /// by the time since it was sent, so that the receiver can line the stream up with the
    /// participant's other streams on the shared NTP clock.
    fn report(&self, ssrc: u32, clock_rate: u32, now: Instant, ntp: u64) -> Option<SenderReport> {
        let (ts, at) = self.last?;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        Some(SenderReport {
            ssrc,
            ntp_time: ntp,
            rtp_time: ts.wrapping_add((elapsed * f64::from(clock_rate)) as u32),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

/// `time` as a 64-bit NTP timestamp (seconds since 1900 in the high word, the fraction in
/// the low word), the clock of sender reports.
pub fn ntp_time(time: std::time::SystemTime) -> u64 {
    /// Seconds from 1900-01-01 to the Unix epoch.
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let since_unix = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_unix.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// One outgoing copy of a track on a subscriber peer.
struct Outbound {
    sender: RTCRtpSenderId,
    rtc_track_id: String,
    mid: Option<String>,
    source: SourceCodec,
    rewrite: HeaderRewrite,
    sent: SendCounters,
    /// Set once the subscriber's answer negotiated this sender.
    ready: bool,
    /// The id under which the subscriber negotiated the transport-cc extension on this
    /// m-line, if it did: every packet sent on it then carries a transport-wide number.
    twcc: Option<u8>,
}

/// One incoming track on a publisher peer.
struct Inbound {
    mid: String,
    track: TrackId,
    receiver: RTCRtpReceiverId,
    /// rtc's id of the receiver's track, once it opened.
    rtc_track: Option<String>,
    /// The media SSRC of each layer (index = layer, 0 without simulcast), once known.
    ssrcs: [Option<u32>; LAYERS],
    simulcast: bool,
    /// The id under which the publisher sends the audio-level extension, if it does.
    audio_level: Option<u8>,
}

/// Layers a track can have (simulcast rids q, h and f).
const LAYERS: usize = crate::layer::MAX_LAYER as usize + 1;

impl Inbound {
    /// The layer of a packet from `ssrc`. Without simulcast there is one layer, and a new
    /// SSRC (the browser restarted its encoder) simply replaces the old one. With
    /// simulcast, an SSRC no layer has is `None`.
    fn layer_of(&mut self, ssrc: u32) -> Option<u8> {
        if let Some(layer) = self.ssrcs.iter().position(|s| *s == Some(ssrc)) {
            return Some(layer as u8);
        }
        if self.simulcast {
            return None;
        }
        self.ssrcs[0] = Some(ssrc);
        Some(0)
    }
}

/// Which copy of a packet a subscription sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyKind {
    /// The next packet of the layer it is on.
    Next,
    /// The keyframe that starts a layer, or resumes one.
    Switch,
    /// A packet again, with its first numbers.
    Resend,
}

/// One WebRTC peer connection.
pub struct Peer {
    pc: RTCPeerConnection,
    /// The address UDP reads are tagged with: the first UDP candidate. webrtc-rs matches it
    /// against its local candidates; the shared socket cannot tell which one was dialled.
    local_tag: SocketAddr,
    /// The same for ICE-TCP reads.
    local_tcp_tag: Option<SocketAddr>,
    connected: bool,
    failed: bool,
    /// Where the selected pair's datagrams travel: the browser's latest nomination.
    path: path::PathFollower,
    /// Cached `poll_timeout` (see [`Peer::next_timeout`]).
    next_timeout: Option<Instant>,
    /// What the peer connection was given since the last [`Peer::poll_transmit`].
    queued: Queued,
    /// Whether [`Peer::refresh_timeout`] has to ask the peer connection again.
    timeout_stale: bool,
    /// Publisher: the incoming tracks (a handful: a linear search beats hashing).
    inbound: Vec<Inbound>,
    /// Subscriber: our track → its outgoing copy.
    outbound: IdHashMap<TrackId, Outbound>,
    /// Subscriber: rtc's sender track id string → our track.
    outbound_by_rtc: HashMap<String, TrackId>,
    /// Subscriber: the transport-wide numbering of what it sends, and the downlink
    /// estimate the browser's feedback on it gives (the estimator's send history is 16 KiB,
    /// which a publisher peer does without).
    send_side: Option<twcc::SendSide>,
    /// Publisher: the SSRCs of its simulcast layers, which its receiver reports leave out
    /// (see `rid_keeper`).
    layer_ssrcs: rid_keeper::LayerSsrcs,
    /// Subscriber: connectivity checks that came before its first answer.
    early_checks: early_checks::EarlyChecks,
    audio: AudioOptions,
}

/// What a peer connection has been given since its datagrams were last collected, which
/// says how much collecting them takes. webrtc-rs runs everything queued down its whole
/// pipeline on the first `poll_write`, then hands the results out one per call, and every
/// call sweeps the pipeline again, the final empty one included; reading its timeout walks
/// every handler once more. Together a few tenths of a microsecond per peer and pass,
/// against the 1.4 us a copy costs inside webrtc-rs (docs/performance.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    /// Only this many forwarded copies. Each is one SRTP datagram (the pipeline drops a copy
    /// it cannot send, and a subscriber's interceptors generate nothing on a write), so
    /// collecting takes this many calls and no final empty one. Nor can such writes bring a
    /// timer forward: the timeout need not be read again.
    Copies(usize),
    /// Anything else (a datagram read, a timer, a negotiation, an RTCP write): collect until
    /// the pipeline is empty, and read the timeout again.
    Anything,
}

/// `track`'s subscription, once the peer is connected and the subscriber answered for it.
fn ready_subscription(
    outbound: &mut IdHashMap<TrackId, Outbound>,
    connected: bool,
    track: TrackId,
) -> Result<&mut Outbound, ForwardDrop> {
    if !connected {
        return Err(ForwardDrop::NotConnected);
    }
    let out = outbound.get_mut(&track).ok_or(ForwardDrop::NotSubscribed)?;
    if !out.ready {
        return Err(ForwardDrop::NotNegotiated);
    }
    Ok(out)
}

/// Writes one subscriber copy (forwarded, resent, or a probe's padding) and counts it as
/// queued. Straight into the peer connection, not through `RTCRtpSender::write_rtp`: that
/// call re-checks, per packet, what the rewrite already guarantees (the SSRC is the
/// sender's, the payload type the subscriber's negotiated one, and the only extension is
/// the negotiated transport-cc) and allocates the track id as a `String` for a message
/// field the write path ignores. An empty `String` does not allocate.
fn write_copy(
    pc: &mut RTCPeerConnection,
    queued: &mut Queued,
    pkt: rtc::rtp::packet::Packet,
    now: Instant,
) -> Result<(), ForwardDrop> {
    pc.handle_write(TaggedRTCMessage {
        now,
        message: RTCMessage::RtpPacket(String::new(), pkt),
    })
    .map_err(|_| ForwardDrop::Rejected)?;
    if let Queued::Copies(n) = queued {
        *n += 1;
    }
    Ok(())
}

fn sdp_error(err: impl std::fmt::Display) -> MediaError {
    MediaError::InvalidSdp(err.to_string())
}

fn internal(err: impl std::fmt::Display) -> MediaError {
    MediaError::Internal(err.to_string())
}

fn kind_of(kind: RtpCodecKind) -> Option<MediaKind> {
    match kind {
        RtpCodecKind::Audio => Some(MediaKind::Audio),
        RtpCodecKind::Video => Some(MediaKind::Video),
        _ => None,
    }
}

/// The codecs of one leg. The publisher leg offers no RTX for video: webrtc-rs drops a
/// simulcast layer's retransmissions (they carry a repaired-rid it cannot bind), so
/// without RTX the browser resends lost packets on the media SSRC, which every layer
/// binds. The subscriber leg keeps RTX negotiated, which browsers expect of video; Chorus
/// itself resends on the media SSRC there too.
fn media_engine(role: PeerRole, audio: AudioOptions) -> Result<MediaEngine, MediaError> {
    let mut engine = MediaEngine::default();
    let video_feedback = vec![
        RTCPFeedback {
            typ: "ccm".to_owned(),
            parameter: "fir".to_owned(),
        },
        RTCPFeedback {
            typ: "nack".to_owned(),
            parameter: "".to_owned(),
        },
        RTCPFeedback {
            typ: "nack".to_owned(),
            parameter: "pli".to_owned(),
        },
    ];
    let codec = |mime: &str, clock_rate, channels, fmtp: &str, feedback: &[RTCPFeedback], pt| {
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: mime.to_owned(),
                clock_rate,
                channels,
                sdp_fmtp_line: fmtp.to_owned(),
                rtcp_feedback: feedback.to_vec(),
            },
            payload_type: pt,
        }
    };
    audio::register_codecs(&mut engine, audio).map_err(internal)?;
    if role == PeerRole::Publisher {
        audio::negotiate_audio_level(&mut engine).map_err(internal)?;
    }
    let mut video = vec![
        codec(MIME_TYPE_VP8, 90000, 0, "", &video_feedback, 96),
        codec(
            MIME_TYPE_H264,
            90000,
            0,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            &video_feedback,
            102,
        ),
    ];
    if role == PeerRole::Subscriber {
        video.push(codec(MIME_TYPE_RTX, 90000, 0, "apt=96", &[], 97));
        video.push(codec(MIME_TYPE_RTX, 90000, 0, "apt=102", &[], 103));
    }
    for c in video {
        engine
            .register_codec(c, RtpCodecKind::Video)
            .map_err(internal)?;
    }
    // Header extensions: the audio level on the publisher leg (read by the worker for the
    // speaker election), and what `interceptors` adds per leg (MID and RID, and
    // transport-cc on both legs), none of which is forwarded: a forwarded copy carries
    // only the subscriber leg's own transport-cc number. What that leaves out, on purpose:
    // - the audio level on the subscriber leg: the server tells clients who speaks
    //   (`activeSpeakers`), and a browser computes the `audioLevel` of its `inbound-rtp`
    //   stats from the audio it decodes;
    // - the video orientation (urn:3gpp:video-orientation): without it a browser rotates
    //   the frames itself before encoding, so a turned phone's video arrives upright;
    // - abs-send-time: it serves a receive-side bandwidth estimate whose feedback
    //   (goog-remb) Chorus never negotiates.
    Ok(engine)
}

/// The interceptor chain for one role. Every stage costs a move of the whole packet per
/// forwarded packet, so each peer gets only what its direction uses:
/// - publisher (receives media): NACK generator, TWCC feedback (the browser's send-side
///   bandwidth estimate needs it), receiver reports, and the rid keeper that leaves the
///   simulcast layers out of them (see `rid_keeper`);
/// - subscriber (sends media): only the tap that lets keyframe requests, NACKs and
///   transport-cc feedback through to the worker. Chorus numbers the packets itself (see
///   `twcc`) rather than through webrtc-rs's TWCC sender stage, answers NACKs from one
///   history per track and writes the sender reports itself: webrtc-rs's NACK responder
///   and sender-report stages cost about 15 % of the server's CPU per forwarded copy (a
///   move through each stage, and a clone into a history per subscription).
fn interceptors(
    role: PeerRole,
    engine: &mut MediaEngine,
    layer_ssrcs: &rid_keeper::LayerSsrcs,
) -> Result<Registry, MediaError> {
    configure_simulcast_extension_headers(engine).map_err(internal)?;
    Ok(match role {
        PeerRole::Publisher => configure_twcc_receiver_only(Registry::new(), engine)
            .map_err(internal)?
            .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
            .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
            .with(
                rid_keeper::RID_KEEPER_SLOT,
                rid_keeper::RidKeeper::new(layer_ssrcs.clone()),
            ),
        PeerRole::Subscriber => {
            twcc::negotiate(engine).map_err(internal)?;
            Registry::new().with(tap::FEEDBACK_TAP_SLOT, tap::FeedbackTap::default())
        }
    })
}

fn srtp_profiles(
    names: &[String],
) -> Vec<rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile> {
    use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile as P;
    names
        .iter()
        .filter_map(|name| match name.as_str() {
            "aead_aes_128_gcm" => Some(P::Srtp_Aead_Aes_128_Gcm),
            "aead_aes_256_gcm" => Some(P::Srtp_Aead_Aes_256_Gcm),
            "aes128_cm_hmac_sha1_80" => Some(P::Srtp_Aes128_Cm_Hmac_Sha1_80),
            "aes128_cm_hmac_sha1_32" => Some(P::Srtp_Aes128_Cm_Hmac_Sha1_32),
            _ => None,
        })
        .collect()
}

impl Peer {
    /// Builds a peer for `role` whose local ICE credentials are `ufrag`/`pwd`.
    pub fn new(
        settings: &PeerSettings,
        role: PeerRole,
        ufrag: &str,
        pwd: &str,
        now: Instant,
    ) -> Result<Self, MediaError> {
        let mut engine = media_engine(role, settings.audio)?;
        let layer_ssrcs = rid_keeper::LayerSsrcs::default();
        let registry = interceptors(role, &mut engine, &layer_ssrcs)?;
        let setting_engine = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_timeouts(Some(ICE_DISCONNECTED_AFTER), Some(ICE_FAILED_AFTER), None)
            .with_ice_credentials(ufrag.to_owned(), pwd.to_owned())
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .with_srtp_protection_profiles(srtp_profiles(&settings.srtp_profiles))
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(engine)
            .with_setting_engine(setting_engine)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(internal)?;
        let udp = settings.candidates.iter().map(|a| (a, false));
        let tcp = settings.tcp_candidates.iter().map(|a| (a, true));
        for (index, (addr, is_tcp)) in udp.chain(tcp).enumerate() {
            let candidate = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: if is_tcp { "tcp" } else { "udp" }.to_owned(),
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    component: 1,
                    // Short, and unique within the peer, which is all an id has to be.
                    // webrtc-rs's default is 42 random characters, and for every packet in
                    // and out it looks the selected pair's statistics up by the String
                    // "RTCIceCandidatePair_<local id>_<remote id>" (SipHash, then compare):
                    // 3.8 % of the forwarder at half load, 3.4 % with this id.
                    candidate_id: format!("c{index}"),
                    ..Default::default()
                },
                tcp_type: if is_tcp {
                    TcpType::Passive
                } else {
                    TcpType::Unspecified
                },
            }
            .new_candidate_host()
            .map_err(internal)?;
            let init = RTCIceCandidate::from(&candidate)
                .to_json()
                .map_err(internal)?;
            pc.add_local_candidate(init).map_err(internal)?;
        }
        let local_tag = *settings
            .candidates
            .first()
            .ok_or_else(|| MediaError::Internal("no host candidate configured".into()))?;
        Ok(Self {
            pc,
            local_tag,
            local_tcp_tag: settings.tcp_candidates.first().copied(),
            connected: false,
            path: path::PathFollower::default(),
            failed: false,
            next_timeout: Some(now),
            queued: Queued::Anything,
            timeout_stale: true,
            inbound: Vec::new(),
            outbound: IdHashMap::default(),
            outbound_by_rtc: HashMap::new(),
            send_side: (role == PeerRole::Subscriber).then(|| twcc::SendSide::new(now)),
            layer_ssrcs,
            audio: settings.audio,
            early_checks: match role {
                PeerRole::Subscriber => early_checks::EarlyChecks::waiting(),
                PeerRole::Publisher => early_checks::EarlyChecks::default(),
            },
        })
    }

    /// The peer connection, for anything but a forwarded copy (see [`Queued`]).
    fn pc(&mut self) -> &mut RTCPeerConnection {
        self.queued = Queued::Anything;
        &mut self.pc
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether ICE or DTLS failed, or the peer closed (reported once as [`PeerEvent::Failed`]).
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Publisher: applies the client's offer and returns the answer and the m-lines it
    /// receives on.
    pub fn apply_offer(
        &mut self,
        sdp: String,
        now: Instant,
    ) -> Result<(String, Vec<OfferedTrack>), MediaError> {
        let offer = RTCSessionDescription::offer(sdp).map_err(sdp_error)?;
        self.pc()
            .set_remote_description(now, offer)
            .map_err(sdp_error)?;
        let answer = self.pc().create_answer(None).map_err(sdp_error)?;
        self.pc()
            .set_local_description(now, answer)
            .map_err(sdp_error)?;
        let answer = self
            .pc()
            .local_description()
            .ok_or_else(|| MediaError::Internal("no local description".into()))?
            .sdp
            .clone();
        // What the browser's encoder reads; webrtc-rs's own copy needs no DTX flag.
        let answer = if self.audio.dtx {
            crate::opus::answer_with_dtx(&answer)
        } else {
            answer
        };
        let mut offered = Vec::new();
        let ids: Vec<_> = self.pc().get_transceivers().collect();
        for id in ids {
            let Some(t) = self.pc().rtp_transceiver(id) else {
                continue;
            };
            let Some(mid) = t.mid().clone() else { continue };
            let direction = t.direction();
            let Some(receiver) = t.receiver() else {
                continue;
            };
            let Some(kind) = self
                .pc()
                .rtp_receiver(receiver)
                .and_then(|r| kind_of(r.track().kind()))
            else {
                continue;
            };
            let active = matches!(
                direction,
                RTCRtpTransceiverDirection::Recvonly | RTCRtpTransceiverDirection::Sendrecv
            );
            offered.push(OfferedTrack { mid, kind, active });
        }
        Ok((answer, offered))
    }

    /// Publisher: names the track an m-line carries, so that its packets are forwarded.
    /// `simulcast` says whether the m-line offered rids (its layers are told apart by SSRC).
    pub fn bind_inbound(&mut self, mid: &str, track: TrackId, simulcast: bool) {
        let ids: Vec<_> = self.pc().get_transceivers().collect();
        for id in ids {
            let Some(t) = self.pc().rtp_transceiver(id) else {
                continue;
            };
            if t.mid().as_deref() != Some(mid) {
                continue;
            }
            if let Some(receiver) = t.receiver() {
                let audio_level = self.pc.rtp_receiver(receiver).and_then(|mut r| {
                    r.get_parameters()
                        .rtp_parameters
                        .header_extensions
                        .iter()
                        .find(|e| e.uri == audio::AUDIO_LEVEL_URI)
                        .and_then(|e| u8::try_from(e.id).ok())
                });
                self.inbound.retain(|i| i.mid != mid);
                self.inbound.push(Inbound {
                    mid: mid.to_owned(),
                    track,
                    receiver,
                    rtc_track: None,
                    ssrcs: [None; LAYERS],
                    simulcast,
                    audio_level,
                });
            }
        }
    }

    /// Publisher: forgets a track that is no longer sent.
    pub fn unbind_inbound(&mut self, track: TrackId) {
        self.inbound.retain(|i| i.track != track);
    }

    /// Publisher: the negotiated codec of an m-line.
    pub fn source_codec(&mut self, mid: &str) -> Option<SourceCodec> {
        let receiver = self.inbound.iter().find(|i| i.mid == mid)?.receiver;
        let mut r = self.pc().rtp_receiver(receiver)?;
        let kind = kind_of(r.track().kind())?;
        let params = r.get_parameters();
        let codecs = &params.rtp_parameters.codecs;
        let primary = codecs.iter().find(|c| {
            !c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_RTX)
                && !audio::is_red(&c.rtp_codec)
        })?;
        let red = codecs
            .iter()
            .find(|c| audio::is_red(&c.rtp_codec))
            .map(|c| c.payload_type);
        Some(SourceCodec {
            kind,
            codec: primary.rtp_codec.clone(),
            payload_type: primary.payload_type,
            red,
        })
    }

    /// Publisher: asks the client for a keyframe on one layer of a track. False when
    /// nothing was sent because no packet of that layer has arrived yet (its first frame
    /// is a keyframe anyway).
    pub fn request_keyframe(
        &mut self,
        track: TrackId,
        layer: u8,
        now: Instant,
    ) -> Result<bool, MediaError> {
        let Some(inbound) = self.inbound.iter().find(|i| i.track == track) else {
            return Err(MediaError::UnknownTrack);
        };
        let Some(media_ssrc) = inbound.ssrcs.get(usize::from(layer)).copied().flatten() else {
            return Ok(false);
        };
        self.queued = Queued::Anything;
        let mut receiver = self
            .pc
            .rtp_receiver(inbound.receiver)
            .ok_or(MediaError::UnknownTrack)?;
        receiver
            .write_rtcp(
                now,
                vec![Box::new(PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                })],
            )
            .map_err(internal)?;
        Ok(true)
    }

    /// Subscriber: adds a sending m-line for `track`. The change goes out with the next offer.
    pub fn add_outbound(
        &mut self,
        track: TrackId,
        source: SourceCodec,
        ssrc: u32,
    ) -> Result<(), MediaError> {
        let kind = match source.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let rtc_track_id = format!("chorus-{track}");
        let stream_id = format!("chorus-{track}");
        let media = MediaStreamTrack::new(
            stream_id.clone(),
            rtc_track_id.clone(),
            rtc_track_id.clone(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: source.codec.clone(),
                ..Default::default()
            }],
        );
        let transceiver = self
            .pc()
            .add_transceiver_from_track(
                media,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![stream_id],
                    send_encodings: vec![],
                }),
            )
            .map_err(internal)?;
        let sender = RTCRtpSenderId::from(transceiver);
        self.outbound_by_rtc.insert(rtc_track_id.clone(), track);
        self.outbound.insert(
            track,
            Outbound {
                sender,
                rtc_track_id,
                mid: None,
                source,
                rewrite: HeaderRewrite::new(ssrc),
                sent: SendCounters::default(),
                ready: false,
                twcc: None,
            },
        );
        Ok(())
    }

    /// Subscriber: stops sending `track`; its m-line goes inactive with the next offer.
    pub fn remove_outbound(&mut self, track: TrackId) {
        if let Some(out) = self.outbound.remove(&track) {
            self.outbound_by_rtc.remove(&out.rtc_track_id);
            if let Err(err) = self.pc().remove_track(out.sender) {
                tracing::debug!(%track, %err, "remove_track failed");
            }
        }
    }

    /// Subscriber: the estimate of its downlink, from the browser's transport-cc
    /// feedback; `None` until feedback has come.
    pub fn downlink_estimate(&self) -> Option<crate::allocate::Estimate> {
        self.send_side.as_ref().and_then(twcc::SendSide::estimate)
    }

    /// Subscriber: the tracks it currently sends.
    pub fn outbound_tracks(&self) -> impl Iterator<Item = TrackId> + '_ {
        self.outbound.keys().copied()
    }

    /// Subscriber: creates an offer; returns it with the mid of every sending m-line.
    pub fn create_offer(
        &mut self,
        now: Instant,
    ) -> Result<(String, Vec<(String, TrackId)>), MediaError> {
        let offer = self.pc().create_offer(None).map_err(internal)?;
        self.pc()
            .set_local_description(now, offer)
            .map_err(internal)?;
        let sdp = self
            .pc()
            .local_description()
            .ok_or_else(|| MediaError::Internal("no local description".into()))?
            .sdp
            .clone();
        let mut mids = Vec::new();
        let ids: Vec<_> = self.pc().get_transceivers().collect();
        for id in ids {
            let Some(t) = self.pc().rtp_transceiver(id) else {
                continue;
            };
            let (Some(mid), Some(sender)) = (t.mid().clone(), t.sender()) else {
                continue;
            };
            if let Some(out) = self.outbound.values_mut().find(|o| o.sender == sender) {
                out.mid = Some(mid.clone());
            }
        }
        for (track, out) in &self.outbound {
            if let Some(mid) = &out.mid {
                mids.push((mid.clone(), *track));
            }
        }
        mids.sort();
        Ok((sdp, mids))
    }

    /// Subscriber: applies the client's answer and readies every negotiated sender.
    pub fn apply_answer(&mut self, sdp: String, now: Instant) -> Result<(), MediaError> {
        let answer = RTCSessionDescription::answer(sdp).map_err(sdp_error)?;
        self.pc()
            .set_remote_description(now, answer)
            .map_err(sdp_error)?;
        for (from, datagram) in self.early_checks.release() {
            self.handle_datagram(from, false, datagram, now);
        }
        let tracks: Vec<TrackId> = self.outbound.keys().copied().collect();
        for track in tracks {
            self.ready_outbound(track);
        }
        Ok(())
    }

    /// Subscriber: reads what the answer negotiated for `track`'s sender (payload types,
    /// RED, transport-cc) into its rewrite, and readies it when its codec was negotiated.
    fn ready_outbound(&mut self, track: TrackId) {
        let Some(out) = self.outbound.get(&track) else {
            return;
        };
        let sender = out.sender;
        let Some(mut s) = self.pc.rtp_sender(sender) else {
            return;
        };
        let params = s.get_parameters();
        let mut pt = IdMap::default();
        let Some(out) = self.outbound.get_mut(&track) else {
            return;
        };
        let codecs = &params.rtp_parameters.codecs;
        let dst = codecs.iter().find(|c| {
            c.rtp_codec
                .mime_type
                .eq_ignore_ascii_case(&out.source.codec.mime_type)
        });
        out.rewrite.unwrap_red = None;
        if let Some(dst) = dst {
            pt.insert(out.source.payload_type, dst.payload_type);
            // RED as it came where the subscriber takes it, else its primary blocks
            if let Some(src_red) = out.source.red {
                match codecs.iter().find(|c| audio::is_red(&c.rtp_codec)) {
                    Some(dst_red) => pt.insert(src_red, dst_red.payload_type),
                    None => {
                        pt.insert(src_red, dst.payload_type);
                        out.rewrite.unwrap_red = Some((src_red, out.source.payload_type));
                    }
                }
            }
        }
        out.ready = !pt.is_empty();
        out.rewrite.pt = pt;
        let vp8 = out
            .source
            .codec
            .mime_type
            .eq_ignore_ascii_case(MIME_TYPE_VP8);
        if vp8 != out.rewrite.vp8.is_some() {
            out.rewrite.vp8 = vp8.then(Vp8Rewriter::default);
        }
        out.twcc = params
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|e| e.uri == twcc::URI)
            .and_then(|e| u8::try_from(e.id).ok());
    }

    /// Either peer: a trickled remote candidate.
    pub fn add_remote_candidate(&mut self, candidate: IceCandidate) -> Result<(), MediaError> {
        if candidate.candidate.is_empty() {
            return Ok(()); // end of candidates
        }
        self.pc()
            .add_remote_candidate(RTCIceCandidateInit {
                candidate: candidate.candidate,
                sdp_mid: candidate.sdp_mid,
                sdp_mline_index: candidate.sdp_m_line_index,
                ..Default::default()
            })
            .map_err(|e| MediaError::InvalidCandidate(e.to_string()))
    }

    /// Feeds one datagram received from `from` (over ICE-TCP when `tcp`).
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        tcp: bool,
        datagram: BytesMut,
        now: Instant,
    ) {
        let Some(datagram) = self.early_checks.hold(from, tcp, datagram) else {
            return;
        };
        let nomination = crate::stun::nomination(&datagram);
        let (from, tcp) = self.path.inbound((from, tcp), nomination);
        let (local_addr, transport_protocol) = match (tcp, self.local_tcp_tag) {
            (true, Some(tag)) => (tag, TransportProtocol::TCP),
            _ => (self.local_tag, TransportProtocol::UDP),
        };
        let result = self.pc().handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol,
            },
            message: datagram,
        });
        if let Err(err) = result {
            tracing::trace!(%err, "handle_read");
        }
        if nomination.is_some()
            && self.path.wants_selected()
            && let Some(selected) = self.selected_pair()
        {
            self.path.set_selected(selected);
        }
    }

    /// The remote side of the pair the ICE agent selected, if it selected one.
    /// (webrtc-rs reaches the ICE transport only through a sender's or a receiver's.)
    fn selected_pair(&mut self) -> Option<path::Wire> {
        let transceiver = self.pc.get_transceivers().next()?;
        let transceiver = self.pc.rtp_transceiver(transceiver)?;
        let (sender, receiver) = (transceiver.sender(), transceiver.receiver());
        let pair = match (receiver, sender) {
            (Some(receiver), _) => self
                .pc
                .rtp_receiver(receiver)?
                .transport()?
                .ice_transport()
                .get_selected_candidate_pair(),
            (None, Some(sender)) => self
                .pc
                .rtp_sender(sender)?
                .transport()?
                .ice_transport()
                .get_selected_candidate_pair(),
            (None, None) => None,
        }?;
        let remote = pair.remote();
        let ip = remote.address.parse().ok()?;
        Some((
            SocketAddr::new(ip, remote.port),
            remote.protocol == RTCIceProtocol::Tcp,
        ))
    }

    /// Drains media read from the peer: forwarded RTP goes to `on_rtp` with its track and
    /// layer, keyframe requests and NACKs become events.
    pub fn poll_media(
        &mut self,
        mut on_rtp: impl FnMut(TrackId, u8, MediaPacket),
        events: &mut Vec<PeerEvent>,
    ) {
        while let Some(TaggedRTCMessage { now, message }) = self.pc().poll_read() {
            match message {
                RTCMessage::RtpPacket(rtc_track, packet) => {
                    let Some(inbound) = self
                        .inbound
                        .iter_mut()
                        .find(|i| i.rtc_track.as_deref() == Some(rtc_track.as_str()))
                    else {
                        continue;
                    };
                    let Some(layer) = inbound.layer_of(packet.header.ssrc) else {
                        events.push(PeerEvent::UnknownLayer);
                        continue;
                    };
                    let level = match inbound.audio_level {
                        Some(id) => audio::read_level(&packet.header, id),
                        None => LevelRead::Absent,
                    };
                    on_rtp(inbound.track, layer, MediaPacket { packet, level });
                }
                RTCMessage::RtcpPacket(rtc_track, packets) => {
                    let track = self.outbound_by_rtc.get(&rtc_track).copied();
                    let seqs = track
                        .and_then(|t| self.outbound.get(&t))
                        .map(|out| &out.rewrite.seq);
                    let mut lost: Vec<(u32, u16)> = Vec::new();
                    // Transport-wide feedback is about the whole peer, whichever of its
                    // streams webrtc-rs filed it under.
                    let wants_keyframe = tap::read_feedback(
                        packets.iter().map(|p| p.as_any()),
                        self.send_side.as_mut(),
                        now,
                        |seq| lost.extend(seqs.and_then(|s| s.source_of(seq))),
                    );
                    let Some(track) = track else {
                        continue;
                    };
                    if !lost.is_empty() {
                        events.push(PeerEvent::ResendRequested { track, lost });
                    }
                    if wants_keyframe {
                        events.push(PeerEvent::KeyframeRequested(track));
                    }
                }
                _ => {}
            }
        }
    }

    /// Drains connection-state and track events.
    pub fn poll_events(&mut self, events: &mut Vec<PeerEvent>) {
        while let Some(event) = self.pc().poll_event() {
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                    RTCPeerConnectionState::Connected if !self.connected => {
                        self.connected = true;
                        events.push(PeerEvent::Connected);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                        if !self.failed =>
                    {
                        self.failed = true;
                        events.push(PeerEvent::Failed);
                    }
                    _ => {}
                },
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    let Some(inbound) = self
                        .inbound
                        .iter_mut()
                        .find(|i| i.receiver == init.receiver_id)
                    else {
                        continue;
                    };
                    // rids were checked against `layer::RIDS` before the offer was applied.
                    let layer = init
                        .rid
                        .as_deref()
                        .and_then(|rid| crate::layer::RIDS.iter().position(|r| *r == rid))
                        .unwrap_or(0);
                    inbound.ssrcs[layer] = Some(init.ssrc);
                    inbound.rtc_track = Some(init.track_id);
                    if init.rid.is_some() {
                        self.layer_ssrcs.insert(init.ssrc);
                    }
                }
                _ => {}
            }
        }
    }

    /// Subscriber: sends one forwarded packet on `track`'s subscription, rewritten for it.
    pub fn forward(
        &mut self,
        track: TrackId,
        packet: &MediaPacket,
        now: Instant,
    ) -> Result<(), ForwardDrop> {
        self.send_copy(track, packet, now, CopyKind::Next)
    }

    /// Subscriber: [`forward`](Self::forward) for the keyframe that completes a layer
    /// switch or a resume: the copy continues the subscription's numbers even when the
    /// source is the one it had before a pause.
    pub fn forward_switch(
        &mut self,
        track: TrackId,
        packet: &MediaPacket,
        now: Instant,
    ) -> Result<(), ForwardDrop> {
        self.send_copy(track, packet, now, CopyKind::Switch)
    }

    /// Subscriber: sends a packet of `track` again, with the numbers it first went out with
    /// (the answer to a NACK).
    pub fn resend(
        &mut self,
        track: TrackId,
        packet: &MediaPacket,
        now: Instant,
    ) -> Result<(), ForwardDrop> {
        self.send_copy(track, packet, now, CopyKind::Resend)
    }

    fn send_copy(
        &mut self,
        track: TrackId,
        packet: &MediaPacket,
        now: Instant,
        kind: CopyKind,
    ) -> Result<(), ForwardDrop> {
        let resent = kind == CopyKind::Resend;
        let out = ready_subscription(&mut self.outbound, self.connected, track)?;
        let mut pkt = match kind {
            CopyKind::Resend => out.rewrite.resend(&packet.packet),
            CopyKind::Switch => out.rewrite.apply_switching(&packet.packet),
            CopyKind::Next => out.rewrite.apply(&packet.packet),
        }?;
        let (timestamp, octets) = (pkt.header.timestamp, pkt.payload.len());
        if let (Some(id), Some(side)) = (out.twcc, self.send_side.as_mut()) {
            side.stamp(&mut pkt, id, now);
        }
        write_copy(&mut self.pc, &mut self.queued, pkt, now)?;
        out.sent.record(timestamp, octets, now, resent);
        Ok(())
    }

    /// Subscriber: sends `count` padding-only packets on `track`'s subscription, each with
    /// the next sequence number and transport-wide number: a probe of the subscriber's
    /// downlink (see [`crate::probe`]). Only for a subscription that forwards nothing now
    /// (a paused video): its next packet goes on after the padding. Without transport-cc
    /// there is no feedback to learn from, and nothing is sent.
    pub fn send_padding(
        &mut self,
        track: TrackId,
        count: u32,
        now: Instant,
    ) -> Result<(), ForwardDrop> {
        let out = ready_subscription(&mut self.outbound, self.connected, track)?;
        let (Some(id), Some(side)) = (out.twcc, self.send_side.as_mut()) else {
            return Err(ForwardDrop::NotNegotiated);
        };
        let payload_type = out.rewrite.pt.any().ok_or(ForwardDrop::PayloadType)?;
        for _ in 0..count {
            let (sequence_number, timestamp) = out.rewrite.seq.pad();
            let mut pkt = rtc::rtp::packet::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    padding: true,
                    payload_type,
                    sequence_number,
                    timestamp,
                    ssrc: out.rewrite.ssrc,
                    ..Default::default()
                },
                payload: Bytes::new(),
            };
            side.stamp(&mut pkt, id, now);
            write_copy(&mut self.pc, &mut self.queued, pkt, now)?;
        }
        Ok(())
    }

    /// Subscriber: writes a sender report for every subscription that has sent media.
    /// `ntp` is [`ntp_time`] of the wall clock at `now`.
    pub fn send_reports(&mut self, now: Instant, ntp: u64) {
        if !self.connected {
            return;
        }
        self.queued = Queued::Anything;
        for out in self.outbound.values().filter(|o| o.ready) {
            let clock_rate = out.source.codec.clock_rate;
            let Some(report) = out.sent.report(out.rewrite.ssrc, clock_rate, now, ntp) else {
                continue;
            };
            if let Some(mut sender) = self.pc.rtp_sender(out.sender)
                && let Err(err) = sender.write_rtcp(now, vec![Box::new(report)])
            {
                tracing::trace!(%err, "sender report");
            }
        }
    }

    /// Lets timers run.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Err(err) = self.pc().handle_timeout(now) {
            tracing::trace!(%err, "handle_timeout");
        }
    }

    /// When the peer next wants [`Peer::handle_timeout`], as of the last
    /// [`Peer::refresh_timeout`]. Cached, because asking webrtc-rs walks its whole stack and
    /// the worker looks at every peer's deadline on every pass.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.next_timeout
    }

    /// Re-reads the peer's next deadline; call after [`Peer::poll_transmit`] on anything
    /// that touched the peer. Free when only forwarded copies did (see [`Queued`]).
    pub fn refresh_timeout(&mut self) {
        if self.timeout_stale {
            self.next_timeout = self.pc.poll_timeout();
            self.timeout_stale = false;
        }
    }

    /// Drains outgoing datagrams: `send(to, over_tcp, datagram)`.
    pub fn poll_transmit(&mut self, mut send: impl FnMut(SocketAddr, bool, BytesMut)) {
        let limit = match std::mem::replace(&mut self.queued, Queued::Copies(0)) {
            Queued::Copies(n) => n,
            Queued::Anything => {
                self.timeout_stale = true;
                usize::MAX
            }
        };
        for _ in 0..limit {
            let Some(msg) = self.pc.poll_write() else {
                break;
            };
            let tcp = msg.transport.transport_protocol == TransportProtocol::TCP;
            let response = crate::stun::binding_response(&msg.message);
            let (to, tcp) = self.path.outbound((msg.transport.peer_addr, tcp), response);
            send(to, tcp, msg.message);
        }
    }

    /// Closes the peer connection (sends DTLS close_notify where it can).
    pub fn close(&mut self) {
        if let Err(err) = self.pc().close() {
            tracing::trace!(%err, "close");
        }
    }
}

/// Why one forwarded packet was not sent to one subscription (counted, never fatal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardDrop {
    /// The subscriber's peer is not connected yet.
    NotConnected,
    /// No subscription of that track on this peer.
    NotSubscribed,
    /// The subscriber has not answered the offer with this track yet.
    NotNegotiated,
    /// The packet's payload type is not negotiated with the subscriber.
    PayloadType,
    /// webrtc-rs refused the write.
    Rejected,
    /// A RED packet for a subscriber without RED whose block headers do not parse, or
    /// whose primary block is empty or not the track's codec.
    MalformedRed,
}

impl ForwardDrop {
    /// How many reasons there are: the length of a table indexed by [`ForwardDrop::index`].
    pub const COUNT: usize = 6;

    /// Every reason, in [`ForwardDrop::index`] order.
    pub const ALL: [ForwardDrop; ForwardDrop::COUNT] = [
        ForwardDrop::NotConnected,
        ForwardDrop::NotSubscribed,
        ForwardDrop::NotNegotiated,
        ForwardDrop::PayloadType,
        ForwardDrop::Rejected,
        ForwardDrop::MalformedRed,
    ];

    /// This reason's place in a per-reason counter table.
    pub fn index(self) -> usize {
        match self {
            ForwardDrop::NotConnected => 0,
            ForwardDrop::NotSubscribed => 1,
            ForwardDrop::NotNegotiated => 2,
            ForwardDrop::PayloadType => 3,
            ForwardDrop::Rejected => 4,
            ForwardDrop::MalformedRed => 5,
        }
    }

    /// A short snake_case name, as a metrics label.
    pub fn label(self) -> &'static str {
        match self {
            ForwardDrop::NotConnected => "not_connected",
            ForwardDrop::NotSubscribed => "not_subscribed",
            ForwardDrop::NotNegotiated => "not_negotiated",
            ForwardDrop::PayloadType => "payload_type",
            ForwardDrop::Rejected => "rejected",
            ForwardDrop::MalformedRed => "malformed_red",
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rtc::rtp::header::{Extension, Header};
    use rtc::rtp::packet::Packet;
    use rtc::shared::marshal::{Marshal, MarshalSize};

    use super::*;

    fn browser_packet() -> Packet {
        Packet {
            header: Header {
                version: 2,
                extension: true,
                payload_type: 111,
                sequence_number: 65_535,
                timestamp: 960,
                ssrc: 0xabcd,
                extension_profile: 0xBEDE,
                extensions: vec![
                    Extension {
                        id: 1,
                        payload: Bytes::from_static(&[0x80]),
                    },
                    Extension {
                        id: 2,
                        payload: Bytes::from_static(&[7]),
                    },
                    Extension {
                        id: 3,
                        payload: Bytes::from_static(&[1, 2]),
                    },
                ],
                // elements of 2 + 2 + 3 bytes, one byte of padding to 8
                extensions_padding: 1,
                ..Default::default()
            },
            payload: Bytes::from_static(&[0xfc, 1, 2, 3]),
        }
    }

    #[test]
    fn forward_drop_reasons_index_their_table_in_order() {
        for (i, reason) in ForwardDrop::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason:?}");
        }
        let labels: std::collections::HashSet<_> =
            ForwardDrop::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), ForwardDrop::COUNT);
    }

    #[test]
    fn a_rewritten_packet_carries_the_subscription_s_numbers_and_no_extension() {
        let mut rewrite = HeaderRewrite::new(0x1234_5678);
        rewrite.pt.insert(111, 109);
        let src = browser_packet();
        let out = rewrite.apply(&src).expect("payload type is mapped");
        assert_eq!(out.header.ssrc, 0x1234_5678);
        assert_eq!(out.header.payload_type, 109);
        assert_eq!(out.header.sequence_number, (0x1234_5678u32 >> 16) as u16);
        assert_eq!(out.header.marker, src.header.marker);
        assert!(!out.header.extension && out.header.extensions.is_empty());
        let wire = out.marshal().expect("marshals");
        assert_eq!(wire.len(), out.marshal_size());
        assert_eq!(wire.len(), 12 + 4);
        assert_eq!(&wire[12..], &[0xfc, 1, 2, 3]);
        assert_eq!(wire[0] & 0x10, 0, "no X bit");
    }

    #[test]
    fn a_packet_whose_payload_type_is_not_negotiated_is_not_sent() {
        let mut rewrite = HeaderRewrite::new(1);
        rewrite.pt.insert(96, 96);
        assert_eq!(
            rewrite.apply(&browser_packet()).err(),
            Some(ForwardDrop::PayloadType)
        );
    }

    fn red_packet(seq: u16, payload: &'static [u8]) -> Packet {
        Packet {
            header: Header {
                version: 2,
                payload_type: 63,
                sequence_number: seq,
                timestamp: 960 * u32::from(seq),
                ssrc: 0xabcd,
                ..Default::default()
            },
            payload: Bytes::from_static(payload),
        }
    }

    /// One redundant block (3 bytes, 960 ticks old) and a primary block of 2 bytes.
    const RED: &[u8] = &[
        0x80 | 111,
        0x0f,
        0x00,
        0x03,
        111,
        0xa1,
        0xa2,
        0xa3,
        0xb1,
        0xb2,
    ];

    #[test]
    fn red_goes_as_it_came_where_the_subscriber_negotiated_it() {
        let mut rewrite = HeaderRewrite::new(7);
        rewrite.pt.insert(111, 109);
        rewrite.pt.insert(63, 120);
        let out = rewrite.apply(&red_packet(1, RED)).expect("sent");
        assert_eq!(out.header.payload_type, 120);
        assert_eq!(&out.payload[..], RED);
    }

    #[test]
    fn red_is_unwrapped_to_its_primary_block_for_a_subscriber_without_it() {
        let mut rewrite = HeaderRewrite::new(7);
        rewrite.pt.insert(111, 109);
        rewrite.pt.insert(63, 109);
        rewrite.unwrap_red = Some((63, 111));
        let src = red_packet(1, RED);
        let out = rewrite.apply(&src).expect("sent");
        assert_eq!(out.header.payload_type, 109);
        assert_eq!(out.header.timestamp, src.header.timestamp);
        assert_eq!(&out.payload[..], &[0xb1, 0xb2]);
        // a slice of the source's buffer, not a copy
        assert_eq!(out.payload.as_ptr(), src.payload[8..].as_ptr());
        // plain Opus from the same publisher passes as it is
        let mut plain = red_packet(2, &[0xfc, 1]);
        plain.header.payload_type = 111;
        assert_eq!(
            &rewrite.apply(&plain).expect("sent").payload[..],
            &[0xfc, 1]
        );
    }

    #[test]
    fn malformed_red_is_dropped_without_a_gap_in_the_numbers() {
        let mut rewrite = HeaderRewrite::new(7);
        rewrite.pt.insert(63, 109);
        rewrite.unwrap_red = Some((63, 111));
        let first = rewrite.apply(&red_packet(1, RED)).expect("sent");
        for bad in [
            &[][..],
            &[0x80 | 111, 0, 0][..],
            &[0x80 | 111, 0x0f, 0x00, 0x09, 111, 1][..],
            &[111][..],       // an empty primary block
            &[100, 1, 2][..], // a primary block of another codec
        ] {
            let mut p = red_packet(2, &[]);
            p.payload = Bytes::copy_from_slice(bad);
            assert_eq!(rewrite.apply(&p).err(), Some(ForwardDrop::MalformedRed));
        }
        let next = rewrite.apply(&red_packet(3, RED)).expect("sent");
        assert_eq!(
            next.header.sequence_number,
            first.header.sequence_number.wrapping_add(2),
            "the source's own gap, nothing more"
        );
    }

    #[test]
    fn a_sender_report_counts_what_went_out_and_runs_the_rtp_clock_on() {
        let t0 = Instant::now();
        let mut sent = SendCounters::default();
        assert!(
            sent.report(7, 90_000, t0, 0).is_none(),
            "nothing sent, no report"
        );
        sent.record(1_000, 1100, t0, false);
        sent.record(1_000, 900, t0 + Duration::from_millis(1), false);
        // the next frame, a reordered packet of the first, and a resend of the first
        sent.record(4_000, 1100, t0 + Duration::from_millis(33), false);
        sent.record(1_000, 500, t0 + Duration::from_millis(34), false);
        sent.record(1_000, 1100, t0 + Duration::from_millis(40), true);
        let report = sent
            .report(7, 90_000, t0 + Duration::from_millis(133), 42)
            .expect("a report");
        assert_eq!(report.ssrc, 7);
        assert_eq!(report.ntp_time, 42);
        assert_eq!((report.packet_count, report.octet_count), (5, 4700));
        // 4 000 plus 100 ms at 90 kHz
        assert_eq!(report.rtp_time, 4_000 + 9_000);
    }

    /// One-packet VP8 frames of three simulcast layers, each numbering its pictures from its
    /// own start (as browsers do), through a layer switch and the rewrite as the worker
    /// drives them: whatever layer goes out, the subscriber sees one stream whose sequence
    /// numbers and picture ids each go up by one per frame, and whose TL0PICIDX never goes
    /// back.
    #[test]
    fn a_subscription_keeps_vp8_picture_ids_continuous_across_layer_switches() {
        use crate::layer::{Forward, LayerSwitch, vp8_is_keyframe};
        use crate::vp8::descriptor;
        // picture id and TL0PICIDX starts: layer 2 is behind layer 0, layer 1 ahead
        const STARTS: [(u16, u8); 3] = [(20_000, 200), (31_000, 7), (300, 90)];
        let frame = |layer: usize, n: u16, key: bool| {
            let (pid, tl0) = STARTS[layer];
            let [hi, lo] = (pid.wrapping_add(n) & 0x7fff).to_be_bytes();
            // X, S; I and L; the picture id (M set) and TL0PICIDX; a VP8 frame tag
            let tag = if key { 0x10 } else { 0x11 };
            Packet {
                header: Header {
                    version: 2,
                    payload_type: 96,
                    sequence_number: 1000 * layer as u16 + n,
                    timestamp: 3000 * u32::from(n),
                    ssrc: 0x100 + layer as u32,
                    ..Default::default()
                },
                payload: Bytes::from(vec![
                    0x90,
                    0xC0,
                    0x80 | hi,
                    lo,
                    tl0.wrapping_add(n as u8),
                    tag,
                    0,
                    0,
                ]),
            }
        };
        let mut rewrite = HeaderRewrite::new(0x5555);
        rewrite.pt.insert(96, 100);
        rewrite.vp8 = Some(Vp8Rewriter::default());
        let mut switch = LayerSwitch::new();
        let mut sent = Vec::new();
        // Targets over time: 0, up to 2, down to 1, up to 2 again; a keyframe every 5th
        // frame on every layer.
        for (n, target) in (0..60u16).map(|n| (n, [0, 2, 1, 2][usize::from(n / 15)])) {
            switch.set_target(Some(target));
            for layer in 0..3 {
                let packet = frame(layer, n, n % 5 == 0);
                let keyframe = vp8_is_keyframe(&packet.payload);
                let copy = match switch.on_packet(layer as u8, keyframe) {
                    Forward::Drop => continue,
                    Forward::Send => rewrite.apply(&packet),
                    Forward::SwitchAndSend => rewrite.apply_switching(&packet),
                };
                sent.push((layer, copy.expect("forwarded")));
            }
        }
        let layers: Vec<usize> = sent.iter().map(|(l, _)| *l).collect();
        assert!(layers.contains(&0) && layers.contains(&1) && layers.contains(&2));
        for pair in sent.windows(2) {
            let [(_, a), (_, b)] = pair else {
                unreachable!()
            };
            let numbers = |p: &Packet| {
                let d = descriptor(&p.payload).expect("a descriptor");
                let (at, _) = d.picture_id.expect("a picture id");
                let pid = u16::from_be_bytes([p.payload[at], p.payload[at + 1]]) & 0x7fff;
                (
                    p.header.sequence_number,
                    pid,
                    p.payload[d.tl0.expect("a TL0PICIDX")],
                )
            };
            let ((seq_a, pid_a, tl0_a), (seq_b, pid_b, tl0_b)) = (numbers(a), numbers(b));
            assert_eq!(seq_b, seq_a.wrapping_add(1));
            assert_eq!(
                pid_b,
                pid_a.wrapping_add(1) & 0x7fff,
                "picture ids {pid_a} then {pid_b}"
            );
            assert!(
                tl0_b.wrapping_sub(tl0_a) < 0x80,
                "TL0PICIDX {tl0_a} then {tl0_b}"
            );
        }
    }

    #[test]
    fn rtp_timestamps_compare_across_the_wrap() {
        assert!(ts_newer(5, u32::MAX - 5));
        assert!(!ts_newer(u32::MAX - 5, 5));
        assert!(!ts_newer(9, 9));
    }

    #[test]
    fn ntp_time_counts_from_1900_with_a_binary_fraction() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(ntp_time(t), ((2_208_988_800u64 + 1) << 32) | (1u64 << 31));
    }
}
