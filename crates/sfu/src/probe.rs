//! Probing: evidence that a subscriber's downlink carries more before a paused video comes
//! back. Sans-IO: estimates and instants go in; when to probe, at what rate, and how many
//! padding packets are due come out. Nothing here knows about sockets or webrtc-rs.
//!
//! An SFU sends what its subscriptions need, usually far less than the link carries, so
//! its estimate above the delivered rate is a guess (see [`crate::estimate`]'s app-limited
//! ceiling). Resuming a paused video on that guess costs a keyframe burst plus the layer's
//! rate at once; on a link that cannot carry it, the queue overflows and the subscriber
//! loses audio, before the estimator has seen a thing. So a paused video comes back only
//! when the link has been *seen* to carry the total it would make, with room to spare
//! ([`PROOF_MARGIN`]): the acknowledged rate (what arrived at the subscriber, by its own
//! clock) is a lower bound of the capacity. To see it, the allocator asks for a probe: for
//! [`PROBE_DURATION`], the subscriber's peer sends padding-only RTP packets, evenly paced,
//! on the paused video's own SSRC, at the rate that brings the delivered total to
//! [`PROBE_MARGIN`] × the total needed. Every padding packet carries a transport-wide
//! number, so the feedback on it moves the estimator like media does. A link that cannot
//! carry it shows a growing queue, which the delay-based detector cuts the estimate for,
//! and the probe ends at once. One that lasts its time without a cut leaves its
//! [`Proof`]: the acknowledged rate as it ends, which spans the probe's second half. Not
//! the first half, nor the highest rate seen: a bottleneck whose buffer was empty lets the
//! start of a probe through faster than it carries (a token bucket's burst), and a small
//! excess drains such a bucket only over a second or more. A probe grows the queue
//! gently, where a resumed video's keyframe arrives all at once.
//!
//! Probes that prove nothing space out: [`PROBE_GAP`], doubled after each (up to
//! [`MAX_PROBE_GAP`]), as the allocator's hold doubles after steps the link could not
//! carry.

use std::time::{Duration, Instant};

use chorus_protocol::TrackId;

/// How long one probe sends padding: the acknowledged rate spans 300 ms of the receiver's
/// clock (see [`crate::estimate`]), and feedback takes a round trip and a feedback interval
/// to come, so 600 ms lets the rate be seen once, while a link that cannot carry it queues
/// at most 600 ms × the excess (about 1.5 kB at 20 kbit/s over a 300 kbit/s cap) before the
/// delay detector's cut ends it.
pub const PROBE_DURATION: Duration = Duration::from_millis(600);

/// What a probe aims for, × the total needed: above [`PROOF_MARGIN`], so that a link with
/// that much room shows it, and enough over a link without it that the excess builds a
/// queue the delay detector sees within the probe.
pub const PROBE_MARGIN: f64 = 1.25;

/// What a proof must show, × the total needed: a video whose lowest layer just fits would
/// overflow the link with its next keyframe, and rates fluctuate (the layer meters average
/// over a second).
pub const PROOF_MARGIN: f64 = 1.15;

/// The least time between the starts of two probes that proved nothing: short enough that
/// a lifted cap is found within a few seconds, long enough that a capped link is not kept
/// queueing.
pub const PROBE_GAP: Duration = Duration::from_secs(1);

/// The longest gap between probes after probes in a row proved nothing: a lifted cap is
/// found within it, and the video is back on the high layer within the 10 s a user
/// forgives; a capped link takes one short probe (cut within a few hundred ms) this often.
pub const MAX_PROBE_GAP: Duration = Duration::from_secs(3);

/// How long a proof counts: the allocator runs every 200 ms, so a proof is used at the pass
/// that ends its probe or the next ones; a rate seen seconds ago says little about the
/// link now.
pub const PROOF_SPAN: Duration = Duration::from_millis(1500);

/// The least padding rate of a probe: below it the probe would hardly show above the
/// fluctuation of what already flows.
const MIN_PAD_BPS: u32 = 30_000;

/// The most padding packets sent in one pacing step: a worker pass that came late (a busy
/// machine) does not catch up with a burst, which would be what a probe must not be.
pub const MAX_PADDING_BURST: u32 = 8;

/// What the subscriber's link delivered as a probe ended without a cut, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    pub bps: u32,
    pub at: Instant,
}

/// A probe under way: padding on `track`'s subscription, until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The paused video whose SSRC carries the padding (the one that would come back).
    pub track: TrackId,
    /// The padding rate, in bits per second.
    pub pad_bps: u32,
    pub since: Instant,
    pub until: Instant,
    /// The delivered total the probe must show.
    pub needed_bps: u32,
}

/// The probing state of one subscriber, kept by its allocator.
#[derive(Debug, Default)]
pub struct Prober {
    probe: Option<Probe>,
    /// When the last probe started.
    last_start: Option<Instant>,
    /// Probes in a row that ended without their proof.
    failures: u32,
    /// What the last probe that lasted its time showed.
    shown: Option<Proof>,
}

impl Prober {
    /// The probe under way, if any: the worker paces padding for it.
    pub fn current(&self) -> Option<Probe> {
        self.probe
    }

    /// Whether a recent probe showed the link carrying [`PROOF_MARGIN`] × `needed` bits per
    /// second at `now`.
    pub fn shows(&self, needed: u32, now: Instant) -> bool {
        self.shown.is_some_and(|p| {
            f64::from(p.bps) >= f64::from(needed) * PROOF_MARGIN
                && now.saturating_duration_since(p.at) <= PROOF_SPAN
        })
    }

    /// Ends the probe under way once the estimator cut the estimate after it began (the
    /// link did not carry it), or once its time is up: then what arrives now (`acked`) is
    /// its proof. A probe that ends without the step it was for counts as a failure.
    pub fn update(&mut self, congested_at: Option<Instant>, acked: Option<u32>, now: Instant) {
        let Some(probe) = self.probe else { return };
        let cut = congested_at.is_some_and(|t| t >= probe.since);
        if cut || now >= probe.until {
            self.probe = None;
            self.failures = self.failures.saturating_add(1);
            if !cut {
                self.shown = acked.map(|bps| Proof { bps, at: now });
            }
        }
    }

    /// The step the probe was for was taken: the probe stops and failures are forgotten.
    pub fn succeeded(&mut self) {
        self.probe = None;
        self.failures = 0;
    }

    /// Asks for a probe on `track` showing `needed` bits per second delivered, when
    /// `acked` is delivered now; starts one unless one is under way or the last started
    /// less than the current gap ago. Returns whether one is under way afterwards.
    pub fn want(&mut self, track: TrackId, needed: u32, acked: Option<u32>, now: Instant) -> bool {
        if self.probe.is_some() {
            return true;
        }
        let gap = PROBE_GAP
            .saturating_mul(1 << self.failures.min(4))
            .min(MAX_PROBE_GAP);
        if self
            .last_start
            .is_some_and(|t| now.saturating_duration_since(t) < gap)
        {
            return false;
        }
        let aim = (f64::from(needed) * PROBE_MARGIN) as u32;
        let pad_bps = aim.saturating_sub(acked.unwrap_or(0)).max(MIN_PAD_BPS);
        self.probe = Some(Probe {
            track,
            pad_bps,
            since: now,
            until: now + PROBE_DURATION,
            needed_bps: needed,
        });
        self.last_start = Some(now);
        true
    }

    /// Drops the probe under way without counting it (its video is not paused for
    /// bandwidth any more: gone, hidden, or back some other way).
    pub fn forget(&mut self) {
        self.probe = None;
    }
}

/// Paces one probe's padding: how many packets of a given size are due so that the bits
/// sent since it began follow its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacer {
    probe: Probe,
    sent_bits: u64,
    /// Stopped before the allocator ended the probe (a cut, its time, a subscription that
    /// is not paused any more): it stays, so that the same probe is not paced again.
    stopped: bool,
}

impl Pacer {
    pub fn new(probe: Probe) -> Self {
        Self {
            probe,
            sent_bits: 0,
            stopped: false,
        }
    }

    /// Sends no more padding for this probe.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether this pacer is the one for `probe`.
    pub fn paces(&self, probe: &Probe) -> bool {
        self.probe == *probe
    }

    /// The paused video whose subscription carries the padding.
    pub fn track(&self) -> TrackId {
        self.probe.track
    }

    /// Whether padding is still due at `now`: the probe's time is not up, and the estimate
    /// was not cut since it began (`congested_at`: the last cut). The allocator ends the
    /// probe too, at its next pass; this stops the padding at once.
    pub fn live(&self, congested_at: Option<Instant>, now: Instant) -> bool {
        now < self.probe.until && congested_at.is_none_or(|t| t < self.probe.since)
    }

    /// How many packets of `packet_bits` are due at `now` (at most [`MAX_PADDING_BURST`]);
    /// counts them as sent.
    pub fn due(&mut self, packet_bits: u32, now: Instant) -> u32 {
        if packet_bits == 0 || self.stopped {
            return 0;
        }
        let elapsed = now.saturating_duration_since(self.probe.since).as_micros();
        let owed = u128::from(self.probe.pad_bps) * elapsed / 1_000_000;
        let owed = u64::try_from(owed).unwrap_or(u64::MAX);
        let behind = owed.saturating_sub(self.sent_bits);
        let n = u32::try_from(behind / u64::from(packet_bits))
            .unwrap_or(u32::MAX)
            .min(MAX_PADDING_BURST);
        // Bits a late pass could not catch up on are not owed any more.
        self.sent_bits = if n == MAX_PADDING_BURST {
            owed
        } else {
            self.sent_bits + u64::from(n) * u64::from(packet_bits)
        };
        n
    }
}

/// How often the worker paces padding while a probe is under way: at a 300 kbit/s probe of
/// 68-byte packets, about 3 packets a step.
pub const PACING_STEP: Duration = Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_aims_at_the_margin_above_what_is_needed_beyond_what_arrives() {
        let now = Instant::now();
        let mut prober = Prober::default();
        assert!(prober.want(TrackId(7), 300_000, Some(150_000), now));
        let probe = prober.current().expect("under way");
        assert_eq!(probe.track, TrackId(7));
        assert_eq!(probe.pad_bps, 375_000 - 150_000);
        assert_eq!(probe.until, now + PROBE_DURATION);
        // Asked again while under way: the same probe.
        assert!(prober.want(TrackId(7), 400_000, Some(150_000), now + PACING_STEP));
        assert_eq!(prober.current(), Some(probe));
    }

    #[test]
    fn a_probe_pads_at_least_the_minimum_rate() {
        let now = Instant::now();
        let mut prober = Prober::default();
        prober.want(TrackId(1), 100_000, Some(500_000), now);
        assert_eq!(prober.current().map(|p| p.pad_bps), Some(MIN_PAD_BPS));
    }

    #[test]
    fn a_cut_after_the_start_ends_the_probe_shows_nothing_and_the_gap_doubles() {
        let t0 = Instant::now();
        let mut prober = Prober::default();
        let mut starts = Vec::new();
        let mut t = t0;
        while t < t0 + Duration::from_secs(20) {
            if prober.want(TrackId(1), 300_000, Some(150_000), t)
                && prober.current().is_some_and(|p| p.since == t)
            {
                starts.push(t - t0);
            }
            // The link cannot carry it: a cut 200 ms into every probe.
            let cut = prober
                .current()
                .map(|p| p.since + Duration::from_millis(200));
            prober.update(cut.filter(|c| *c <= t), Some(400_000), t);
            assert!(!prober.shows(1, t), "a probe cut for shows nothing");
            t += Duration::from_millis(100);
        }
        let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 3, "{starts:?}");
        assert_eq!(gaps[0], PROBE_GAP * 2, "{gaps:?}");
        assert!(
            gaps.iter()
                .all(|g| *g <= MAX_PROBE_GAP + Duration::from_millis(100)),
            "{gaps:?}"
        );
        assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
    }

    #[test]
    fn a_probe_that_lasts_its_time_shows_what_arrives_as_it_ends_for_a_while() {
        let t0 = Instant::now();
        let mut prober = Prober::default();
        assert!(!prober.shows(1, t0));
        prober.want(TrackId(1), 300_000, Some(100_000), t0);
        // A cut from before the probe does not end it, and nothing shows before it ends.
        let early = t0 + Duration::from_millis(100);
        prober.update(Some(t0 - Duration::from_secs(1)), Some(500_000), early);
        assert!(prober.current().is_some());
        assert!(!prober.shows(100_000, early));
        let end = t0 + PROBE_DURATION;
        prober.update(None, Some(345_000), end);
        assert!(prober.current().is_none(), "its time is up");
        // 345 k arrive as it ends: 1.15 × 300 k.
        assert!(prober.shows(300_000, end));
        assert!(prober.shows(300_000, end + PROOF_SPAN));
        assert!(!prober.shows(300_001, end), "not with the margin");
        assert!(
            !prober.shows(100_000, end + PROOF_SPAN + Duration::from_millis(1)),
            "too old"
        );
    }

    #[test]
    fn success_forgets_the_failures() {
        let t0 = Instant::now();
        let mut prober = Prober::default();
        prober.want(TrackId(1), 300_000, None, t0);
        prober.update(None, None, t0 + PROBE_DURATION);
        let t1 = t0 + PROBE_GAP * 2;
        assert!(prober.want(TrackId(1), 300_000, None, t1));
        prober.succeeded();
        assert!(prober.current().is_none());
        // The next probe may start PROBE_GAP after the last start, not twice that.
        assert!(!prober.want(
            TrackId(1),
            300_000,
            None,
            t1 + PROBE_GAP - Duration::from_millis(1)
        ));
        assert!(prober.want(TrackId(1), 300_000, None, t1 + PROBE_GAP));
    }

    #[test]
    fn the_pacer_follows_the_rate_without_bursting_after_a_late_pass() {
        let t0 = Instant::now();
        let mut prober = Prober::default();
        prober.want(TrackId(1), 0, None, t0);
        let probe = Probe {
            pad_bps: 544_000,
            ..prober.current().expect("under way")
        };
        let mut pacer = Pacer::new(probe);
        assert!(pacer.paces(&probe));
        assert!(pacer.live(Some(t0 - Duration::from_millis(1)), t0));
        assert!(!pacer.live(Some(t0), t0), "cut since it began");
        assert!(!pacer.live(None, probe.until), "time is up");
        let bits = 544; // a 68-byte padding packet
        let mut sent = 0;
        for ms in (5..=100).step_by(5) {
            sent += pacer.due(bits, t0 + Duration::from_millis(ms));
        }
        // 544 kbit/s of 544-bit packets: 1000 a second, 100 in 100 ms.
        assert_eq!(sent, 100);
        // A pass 100 ms late sends a burst of at most MAX_PADDING_BURST, and owes nothing after.
        assert_eq!(
            pacer.due(bits, t0 + Duration::from_millis(200)),
            MAX_PADDING_BURST
        );
        assert_eq!(pacer.due(bits, t0 + Duration::from_millis(201)), 1);
        assert_eq!(pacer.due(0, t0 + Duration::from_millis(300)), 0);
        pacer.stop();
        assert!(pacer.is_stopped() && pacer.paces(&probe));
        assert_eq!(pacer.due(bits, t0 + Duration::from_millis(400)), 0);
    }
}
