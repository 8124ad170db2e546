//! Building the simulated browser's peer connections on the async `webrtc` crate.
//!
//! Every connection here: Opus (PT 111) and VP8 (PT 96) like a browser, the default
//! interceptors (NACK, reports, TWCC receiver), plus one interceptor that hands keyframe requests
//! to the application; mDNS off; one UDP socket on `127.0.0.1:0`; no ICE servers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_nack, configure_rtcp_reports, configure_simulcast_extension_headers,
    configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use webrtc::peer_connection::{PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler};
use webrtc::runtime::Runtime;

/// Opus payload type, as Chromium offers it.
pub const OPUS_PT: u8 = 111;
/// VP8 payload type, as Chromium offers it.
pub const VP8_PT: u8 = 96;
/// Opus RED payload type (RFC 2198), as Chromium offers it.
pub const RED_PT: u8 = 63;

/// The audio a simulated browser negotiates beyond plain Opus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AudioCaps {
    /// Opus RED (`audio/red/48000/2`, fmtp `111/111`), listed after Opus.
    pub red: bool,
    /// The audio-level header extension (RFC 6464).
    pub audio_level: bool,
}

/// The Opus codec this client offers.
pub fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// The VP8 codec this client offers.
pub fn vp8_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![
            RTCPFeedback {
                typ: "ccm".to_owned(),
                parameter: "fir".to_owned(),
            },
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: String::new(),
            },
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: "pli".to_owned(),
            },
        ],
    }
}

/// Builds one peer connection with `handler`, on webrtc-rs's default runtime.
pub async fn build(
    handler: Arc<dyn PeerConnectionEventHandler>,
) -> Result<Arc<dyn PeerConnection>> {
    build_on(handler, None).await
}

/// Builds one peer connection with `handler` on `runtime` (webrtc-rs's default when `None`).
/// A runtime of its own lets a caller wrap the connection's UDP socket, e.g. to timestamp
/// datagrams at the kernel (the load generator's server-latency figure).
pub async fn build_on(
    handler: Arc<dyn PeerConnectionEventHandler>,
    runtime: Option<Arc<dyn Runtime>>,
) -> Result<Arc<dyn PeerConnection>> {
    build_with(handler, runtime, true).await
}

/// [`build_on`], with or without the transport-cc receiver. Without it the connection
/// negotiates no transport-wide sequence numbers and sends no feedback, so a server has no
/// estimate of the link towards it (as for a browser that lacks transport-cc).
pub async fn build_with(
    handler: Arc<dyn PeerConnectionEventHandler>,
    runtime: Option<Arc<dyn Runtime>>,
    transport_cc: bool,
) -> Result<Arc<dyn PeerConnection>> {
    build_with_audio(handler, runtime, transport_cc, AudioCaps::default()).await
}

/// [`build_with`], negotiating the audio extras of `audio` too.
pub async fn build_with_audio(
    handler: Arc<dyn PeerConnectionEventHandler>,
    runtime: Option<Arc<dyn Runtime>>,
    transport_cc: bool,
    audio: AudioCaps,
) -> Result<Arc<dyn PeerConnection>> {
    build_bound(handler, runtime, transport_cc, audio, "127.0.0.1:0").await
}

/// [`build_with_audio`] with the UDP socket bound to `udp_addr` instead of `127.0.0.1:0`
/// (the load generator's Janus peers: Janus refuses loopback candidates).
pub async fn build_bound(
    handler: Arc<dyn PeerConnectionEventHandler>,
    runtime: Option<Arc<dyn Runtime>>,
    transport_cc: bool,
    audio: AudioCaps,
    udp_addr: &str,
) -> Result<Arc<dyn PeerConnection>> {
    let mut media_engine = MediaEngine::default();
    media_engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: OPUS_PT,
            },
            RtpCodecKind::Audio,
        )
        .context("registering Opus")?;
    if audio.red {
        media_engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: RTCRtpCodec {
                        mime_type: "audio/red".to_owned(),
                        clock_rate: 48000,
                        channels: 2,
                        sdp_fmtp_line: format!("{OPUS_PT}/{OPUS_PT}"),
                        rtcp_feedback: vec![],
                    },
                    payload_type: RED_PT,
                },
                RtpCodecKind::Audio,
            )
            .context("registering RED")?;
    }
    if audio.audio_level {
        media_engine
            .register_header_extension(
                rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                    uri: rtc::sdp::extmap::AUDIO_LEVEL_URI.to_owned(),
                },
                RtpCodecKind::Audio,
                None,
            )
            .context("registering the audio level")?;
    }
    media_engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: vp8_codec(),
                payload_type: VP8_PT,
            },
            RtpCodecKind::Video,
        )
        .context("registering VP8")?;
    // webrtc-rs's defaults (`register_default_interceptors`), with transport-cc optional.
    let registry = configure_nack(Registry::new(), &mut media_engine);
    configure_simulcast_extension_headers(&mut media_engine).context("mid/rid extensions")?;
    let registry = if transport_cc {
        configure_twcc_receiver_only(registry, &mut media_engine).context("transport-cc")?
    } else {
        registry
    };
    let registry = configure_rtcp_reports(registry);
    // Last on the read walk: every other interceptor has seen the RTCP before this one picks
    // out the keyframe requests and marks them for the application (webrtc-rs pitfall 8).
    let registry = registry.with(Slot::from(14_500), KeyframeRequestTap::default());

    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .build();
    let configuration = RTCConfigurationBuilder::new()
        .with_ice_servers(vec![])
        .build();

    let mut builder = PeerConnectionBuilder::new();
    if let Some(runtime) = runtime {
        builder = builder.with_runtime(runtime);
    }
    let pc = builder
        .with_configuration(configuration)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(setting_engine)
        .with_handler(handler)
        .with_udp_addrs(vec![udp_addr.to_owned()])
        .build()
        .await
        .context("building a peer connection")?;
    Ok(Arc::new(pc))
}

/// Whether the application wants an inbound RTCP packet: keyframe requests and receiver
/// reports (publisher side: a simulcast sender names its layers until a report
/// acknowledges them) and sender reports (subscriber side, so that tests can check the
/// server's).
fn is_delivered(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>()
        || any.is::<FullIntraRequest>()
        || any.is::<SenderReport>()
        || any.is::<ReceiverReport>()
}

/// Marks inbound PLI, FIR, SR and RR for delivery to the application (the sender's `TrackLocal`
/// or the receiver's `TrackRemote`) and lets all other inbound RTCP end at the chain as
/// usual. Outbound traffic passes untouched.
#[derive(Default)]
struct KeyframeRequestTap {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| is_delivered(p.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for KeyframeRequestTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Holds back a peer's trickled candidates until its SDP has gone out, so the server never
/// sees a candidate for a peer it has not heard of yet.
#[derive(Default)]
pub struct CandidateGate {
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    open: bool,
    mid: Option<String>,
    pending: Vec<String>,
}

impl CandidateGate {
    /// Returns `Some(candidate, mid)` when the candidate may be sent now, else holds it.
    pub fn offer(&self, candidate: String) -> Option<(String, Option<String>)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.open {
            Some((candidate, state.mid.clone()))
        } else {
            state.pending.push(candidate);
            None
        }
    }

    /// Opens the gate (the SDP has been sent); returns the held candidates to send now.
    pub fn open(&self, mid: Option<String>) -> (Vec<String>, Option<String>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.open = true;
        state.mid = mid.clone();
        (std::mem::take(&mut state.pending), mid)
    }
}

/// The first `a=mid:` of an SDP: browsers name it in trickled candidates under BUNDLE.
pub fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(str::to_owned)
}
