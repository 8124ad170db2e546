//! The feedback tap: the one interceptor of a subscriber peer, which lets the RTCP that
//! only the SFU can act on reach the worker.

use std::time::Instant;

use rtc::interceptor::{
    Attribute, Interceptor, Packet as ChainPacket, Slot, StreamInfo, TaggedPacket,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;

/// Reads one batch of the RTCP the tap let through: transport-cc feedback goes to `side`
/// (it is about the whole peer), every sequence number a NACK names to `on_nack`. True
/// when the batch asks for a keyframe (PLI or FIR).
pub(super) fn read_feedback<'a>(
    packets: impl IntoIterator<Item = &'a dyn std::any::Any>,
    mut side: Option<&mut super::twcc::SendSide>,
    now: Instant,
    mut on_nack: impl FnMut(u16),
) -> bool {
    let mut keyframe = false;
    for any in packets {
        if let Some(cc) = any.downcast_ref::<TransportLayerCc>() {
            if let Some(side) = side.as_deref_mut() {
                side.on_feedback(cc, now);
            }
        } else if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
            keyframe = true;
        } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
            nack.nacks
                .iter()
                .flat_map(|pair| pair.into_iter())
                .for_each(&mut on_nack);
        }
    }
    keyframe
}

/// Where [`FeedbackTap`] sits in the subscriber's interceptor chain (alone there).
pub(super) const FEEDBACK_TAP_SLOT: Slot = Slot::Custom(11_500);

/// Lets keyframe requests (PLI, FIR), NACKs and transport-cc feedback through to the
/// worker. webrtc-rs ends inbound RTCP at the end of its interceptor chain unless an
/// interceptor marks a packet for delivery. The first two are about a stream the SFU only
/// relays, so only the SFU can act on them; the feedback is about the packets Chorus
/// numbered itself (see `twcc`), and feeds the subscriber's downlink estimate. Other RTCP
/// (receiver reports) ends here.
#[derive(Default)]
pub(super) struct FeedbackTap {
    reads: std::collections::VecDeque<TaggedPacket>,
    writes: std::collections::VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let ChainPacket::Rtcp(packets) = &mut msg.message.packet {
            packets.retain(|p| {
                let any = p.as_any();
                any.is::<PictureLossIndication>()
                    || any.is::<FullIntraRequest>()
                    || any.is::<TransportLayerNack>()
                    || any.is::<TransportLayerCc>()
            });
            if packets.is_empty() {
                return Ok(());
            }
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for FeedbackTap {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}
