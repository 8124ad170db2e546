//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden from the docs, and
//! free to change with the code they reach).
//!
//! A subscriber's RTCP reaches the code below only after ICE, DTLS and SRTP, which a fuzzer
//! cannot get through. [`Feedback`] starts where the decrypted bytes do: webrtc-rs's RTCP
//! parse, the [`FeedbackTap`](super::tap::FeedbackTap), then the
//! `tap::read_feedback` that [`Peer::poll_media`](super::Peer::poll_media) also reads the
//! tap's output with (transport-cc feedback into the downlink estimator, NACKs mapped back through the
//! subscription's rewriter, keyframe requests), with the subscriber leg's own numbering
//! ([`twcc::SendSide::stamp`](super::twcc::SendSide)) feeding the estimator's history.

use std::time::Instant;

use rtc::interceptor::{AttributedPacket, Packet as ChainPacket, TaggedPacket};
use rtc::sansio::Protocol;
use rtc::shared::TransportContext;

use super::HeaderRewrite;
use super::tap::{FeedbackTap, read_feedback};
use super::twcc::SendSide;

/// What one RTCP compound packet asked of the subscription.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FeedbackOutcome {
    /// Whether the tap let anything through.
    pub delivered: bool,
    /// A PLI or FIR was among it.
    pub keyframe: bool,
    /// The source packets (SSRC, sequence number) its NACKs name.
    pub lost: Vec<(u32, u16)>,
}

/// One subscriber leg with one subscription, from the decrypted RTCP on.
pub struct Feedback {
    tap: FeedbackTap,
    side: SendSide,
    /// The subscription's rewrite: what its NACKs are mapped back through.
    pub rewrite: HeaderRewrite,
    /// The transport-cc extension id the leg negotiated.
    twcc_id: u8,
}

impl Feedback {
    /// A leg at `now` whose one subscription sends as `ssrc` and maps payload type 96 to 96.
    pub fn new(ssrc: u32, now: Instant) -> Self {
        let mut rewrite = HeaderRewrite::new(ssrc);
        rewrite.pt.insert(96, 96);
        Self {
            tap: FeedbackTap::default(),
            side: SendSide::new(now),
            rewrite,
            twcc_id: 3,
        }
    }

    /// Forwards one source packet as the subscription would (rewrite, then the leg's
    /// transport-wide number into the estimator's history). `switching` is a layer switch's
    /// or a resume's keyframe. Returns the copy's sequence number, or `None` when it
    /// is dropped (a payload type not negotiated, a malformed RED packet).
    pub fn forward(
        &mut self,
        source: &rtc::rtp::packet::Packet,
        switching: bool,
        now: Instant,
    ) -> Option<u16> {
        let mut copy = if switching {
            self.rewrite.apply_switching(source).ok()?
        } else {
            self.rewrite.apply(source).ok()?
        };
        self.side.stamp(&mut copy, self.twcc_id, now);
        Some(copy.header.sequence_number)
    }

    /// Reads one decrypted RTCP compound packet that arrived at `now`.
    pub fn rtcp(&mut self, mut data: &[u8], now: Instant) -> FeedbackOutcome {
        let mut outcome = FeedbackOutcome::default();
        let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut data) else {
            return outcome;
        };
        let msg = TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(ChainPacket::Rtcp(packets)),
        };
        if self.tap.handle_read(msg).is_err() {
            return outcome;
        }
        while let Some(msg) = self.tap.poll_read() {
            let ChainPacket::Rtcp(packets) = msg.message.packet else {
                continue;
            };
            outcome.delivered = true;
            let seqs = &self.rewrite.seq;
            let lost = &mut outcome.lost;
            outcome.keyframe |= read_feedback(
                packets.iter().map(|p| p.as_any()),
                Some(&mut self.side),
                now,
                |seq| lost.extend(seqs.source_of(seq)),
            );
        }
        outcome
    }

    /// The leg's downlink estimate in bit/s, once feedback has come.
    pub fn estimate(&self) -> Option<u32> {
        self.side.estimate().map(|e| e.bps)
    }
}

/// What one offered track negotiated: whether it is ready to send, where the source's
/// payload types 111 (Opus), 63 (RED) and 96 (VP8) map on the leg, and the RED unwrapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub ready: bool,
    pub opus: Option<u8>,
    pub red: Option<u8>,
    pub vp8: Option<u8>,
    pub unwrap_red: Option<(u8, u8)>,
}

/// A subscriber leg that has offered an Opus track (with RED, which a subscriber may or
/// may not take) and a VP8 track, waiting for the client's answer and candidates: what
/// `subscribeAnswer` and the subscriber's `candidate` messages reach.
pub struct SubscriberLeg {
    peer: super::Peer,
    /// The offer the client answers.
    pub offer: String,
}

impl SubscriberLeg {
    /// The leg at `now`, with its offer made.
    pub fn new(now: Instant) -> Result<Self, crate::MediaError> {
        use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;

        let settings = crate::PeerSettings {
            candidates: vec![([192, 0, 2, 10], 3478).into()],
            tcp_candidates: vec![([192, 0, 2, 10], 3478).into()],
            srtp_profiles: vec!["aead_aes_128_gcm".to_owned()],
            audio: Default::default(),
        };
        let mut peer = super::Peer::new(
            &settings,
            chorus_protocol::PeerRole::Subscriber,
            "fuzzsubscriber",
            "fuzzpasswordfuzzpassword",
            now,
        )?;
        let codec = |mime: &str, clock_rate, channels| RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: Vec::new(),
        };
        let opus = super::SourceCodec {
            kind: chorus_protocol::MediaKind::Audio,
            codec: codec("audio/opus", 48000, 2),
            payload_type: 111,
            red: Some(63),
        };
        let vp8 = super::SourceCodec {
            kind: chorus_protocol::MediaKind::Video,
            codec: codec("video/VP8", 90000, 0),
            payload_type: 96,
            red: None,
        };
        peer.add_outbound(chorus_protocol::TrackId(1), opus, 0x1111_0001)?;
        peer.add_outbound(chorus_protocol::TrackId(2), vp8, 0x2222_0002)?;
        let (offer, _) = peer.create_offer(now)?;
        Ok(Self { peer, offer })
    }

    /// Applies the client's answer, as `subscribeAnswer` does.
    pub fn answer(&mut self, sdp: &str, now: Instant) -> Result<(), crate::MediaError> {
        self.peer.apply_answer(sdp.to_owned(), now)
    }

    /// Adds a trickled candidate, as the subscriber's `candidate` message does.
    pub fn candidate(
        &mut self,
        candidate: chorus_protocol::IceCandidate,
    ) -> Result<(), crate::MediaError> {
        self.peer.add_remote_candidate(candidate)
    }

    /// What each offered track (Opus, then VP8) negotiated.
    pub fn negotiated(&self) -> Vec<Negotiated> {
        let mut out: Vec<_> = self.peer.outbound.iter().collect();
        out.sort_by_key(|(track, _)| **track);
        out.into_iter()
            .map(|(_, o)| Negotiated {
                ready: o.ready,
                opus: o.rewrite.pt.get(111),
                red: o.rewrite.pt.get(63),
                vp8: o.rewrite.pt.get(96),
                unwrap_red: o.rewrite.unwrap_red,
            })
            .collect()
    }

    /// Lets time pass and drains what the leg would send, as the worker does.
    pub fn run(&mut self, now: Instant) {
        self.peer.handle_timeout(now);
        let mut events = Vec::new();
        self.peer.poll_events(&mut events);
        self.peer.poll_media(|_, _, _| {}, &mut events);
        self.peer.poll_transmit(|_, _, _| {});
    }
}
