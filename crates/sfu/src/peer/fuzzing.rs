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
