//! The worker's part of probing (see [`crate::probe`]): each subscriber's allocator says
//! which probe it wants; the worker paces that probe's padding-only packets onto the paused
//! video's subscription every [`PACING_STEP`], until the probe's time is up, the estimate
//! is cut, or the allocator no longer wants it.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Worker;
use super::allocation::Downlink;
use crate::peer::PADDING_LINK_BYTES;
use crate::probe::{PACING_STEP, Pacer, Probe};

/// A padding packet as the link carries it, in bits.
const PADDING_LINK_BITS: u32 = PADDING_LINK_BYTES as u32 * 8;

impl Downlink {
    /// Follows the allocator's probe: a new one gets a pacer, none stops the padding (a
    /// pacer stopped early stays until then, so that its probe is not paced twice).
    /// Returns whether a probe started.
    pub(super) fn follow_probe(&mut self, probe: Option<Probe>) -> bool {
        match probe {
            Some(probe) if !self.pacer.is_some_and(|p| p.paces(&probe)) => {
                self.pacer = Some(Pacer::new(probe));
                true
            }
            Some(_) => false,
            None => {
                self.pacer = None;
                false
            }
        }
    }
}

impl Worker {
    /// Sends the padding due for every probe under way, and schedules the next step while
    /// any is.
    pub(super) fn pace_probes(&mut self, now: Instant) {
        let mut pacing = false;
        for (participant, media) in &mut self.participants {
            let Some(pacer) = media.downlink.pacer.as_mut().filter(|p| !p.is_stopped()) else {
                continue;
            };
            let track = pacer.track();
            // Padding goes only on a subscription that forwards nothing now: its next
            // packet is a resume, which goes on after the padding's numbers.
            let paused = self.tracks.get(&track).is_some_and(|route| {
                route
                    .subscribers
                    .iter()
                    .any(|s| s.participant == *participant && s.switch.current().is_none())
            });
            let Some(peer) = media.subscriber.as_mut().filter(|_| paused) else {
                pacer.stop();
                continue;
            };
            let congested_at = peer.downlink_estimate().and_then(|e| e.congested_at);
            if !pacer.live(congested_at, now) {
                tracing::debug!(%participant, %track, ?congested_at, "probe padding over");
                pacer.stop();
                continue;
            }
            let due = pacer.due(PADDING_LINK_BITS, now);
            if due > 0 {
                if let Err(reason) = peer.send_padding(track, due, now) {
                    tracing::debug!(%participant, %track, ?reason, "probe padding not sent");
                    pacer.stop();
                    continue;
                }
                self.stats
                    .padding_packets
                    .fetch_add(u64::from(due), Ordering::Relaxed);
                self.touched.push(*participant);
            }
            pacing = true;
        }
        self.next_pacing = pacing.then(|| now + PACING_STEP);
    }
}
