//! Keeps a simulcast publisher naming its layers: the publisher peer's receiver reports
//! leave out the layers' SSRCs.
//!
//! Chromium writes the mid and rid header extensions on a simulcast layer's packets only
//! until a receiver report block acknowledges that layer's SSRC. webrtc-rs 0.21 binds a
//! layer to its rid from those extensions, and forgets the binding on every renegotiation
//! of the peer (`start_rtp` rebuilds each rid receiver with no SSRC). A camera whose layers
//! were acknowledged would then never be bound again after, say, a screen share is added,
//! and every one of its packets would be dropped. Without report blocks for them, the
//! layers keep carrying mid and rid (a few bytes a packet), and rebind on their next
//! packet. What the browser loses is its round-trip time and loss figures for those
//! layers; its congestion control runs on transport-cc feedback, which is unaffected.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rtc::interceptor::{Interceptor, Packet as ChainPacket, Slot, StreamInfo, TaggedPacket};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::sansio::Protocol;

/// Below the receiver-report stage (10 000): the write walk runs from high slots to low,
/// so the reports that stage writes pass here on their way to the wire.
pub(super) const RID_KEEPER_SLOT: Slot = Slot::Custom(9_500);

/// The SSRCs of a publisher's simulcast layers, shared between the peer, which learns
/// them as layers open, and its [`RidKeeper`]. Locked when a layer opens and once per
/// receiver report, never per packet.
#[derive(Debug, Clone, Default)]
pub(super) struct LayerSsrcs(Arc<Mutex<Vec<u32>>>);

impl LayerSsrcs {
    pub(super) fn insert(&self, ssrc: u32) {
        let mut ssrcs = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !ssrcs.contains(&ssrc) {
            ssrcs.push(ssrc);
        }
    }

    fn contains(&self, ssrc: u32) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&ssrc)
    }
}

/// The interceptor: takes the layers' blocks out of every outgoing receiver report.
pub(super) struct RidKeeper {
    layers: LayerSsrcs,
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl RidKeeper {
    pub(super) fn new(layers: LayerSsrcs) -> Self {
        Self {
            layers,
            reads: VecDeque::new(),
            writes: VecDeque::new(),
        }
    }
}

/// `report` without the blocks about `layers`, or `None` when it has none of them.
fn without_layers(report: &ReceiverReport, layers: &LayerSsrcs) -> Option<ReceiverReport> {
    if !report.reports.iter().any(|r| layers.contains(r.ssrc)) {
        return None;
    }
    Some(ReceiverReport {
        ssrc: report.ssrc,
        reports: report
            .reports
            .iter()
            .filter(|r| !layers.contains(r.ssrc))
            .cloned()
            .collect(),
        profile_extensions: report.profile_extensions.clone(),
    })
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RidKeeper {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let ChainPacket::Rtcp(packets) = &mut msg.message.packet {
            for packet in packets.iter_mut() {
                let filtered = packet
                    .as_any()
                    .downcast_ref::<ReceiverReport>()
                    .and_then(|report| without_layers(report, &self.layers));
                if let Some(report) = filtered {
                    *packet = Box::new(report);
                }
            }
        }
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for RidKeeper {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::reception_report::ReceptionReport;

    fn block(ssrc: u32) -> ReceptionReport {
        ReceptionReport {
            ssrc,
            ..Default::default()
        }
    }

    #[test]
    fn a_report_loses_the_layers_blocks_and_keeps_the_rest() {
        let layers = LayerSsrcs::default();
        layers.insert(20);
        layers.insert(21);
        layers.insert(20);
        let report = ReceiverReport {
            ssrc: 1,
            reports: vec![block(10), block(20), block(21), block(30)],
            ..Default::default()
        };
        let kept = without_layers(&report, &layers).expect("layers reported");
        let ssrcs: Vec<u32> = kept.reports.iter().map(|r| r.ssrc).collect();
        assert_eq!(ssrcs, [10, 30]);
        assert_eq!(kept.ssrc, 1);
        let audio_only = ReceiverReport {
            ssrc: 1,
            reports: vec![block(10)],
            ..Default::default()
        };
        assert!(without_layers(&audio_only, &layers).is_none());
    }
}
