//! Estimate: one subscriber's downlink capacity in bits per second, from its transport-wide
//! congestion control feedback (TWCC, draft-holmer-rmcat-transport-wide-cc-extensions-01).
//! Sans-IO: sends, feedback and instants go in, an estimate comes out; nothing here knows
//! about sockets or webrtc-rs (only `peer` names webrtc-rs types).
//!
//! The caller, per subscriber peer:
//! 1. stamps a transport-wide sequence number into every forwarded packet and calls
//!    [`Estimator::on_sent`] (O(1), no allocation: a fixed ring of the last [`RING`] sends);
//! 2. reads each TWCC feedback into [`Arrival`]s, one per packet in sequence order (webrtc-rs's
//!    `TransportLayerCc` maps onto them directly; [`twcc_arrivals`] does it from plain wire
//!    numbers), and calls [`Estimator::on_feedback`];
//! 3. reads [`Estimator::estimate`] (and [`Estimator::signal`], [`Estimator::acked_bps`],
//!    [`Estimator::loss_fraction`] if it wants to know why) when it allocates.
//!
//! How, in the spirit of Google Congestion Control (draft-ietf-rmcat-gcc-02), written here:
//! - **Delay-based.** Packets are grouped by send time into bursts of [`GROUP_SPAN_US`]. For
//!   consecutive groups, the arrival-time delta minus the send-time delta is the change in
//!   queueing delay. A trendline (least squares over the last [`TREND_WINDOW`] groups of the
//!   smoothed accumulated delay) gives its slope; an adaptive threshold turns the slope into
//!   a [`Signal`]: overuse, normal or underuse.
//! - **Rate control (AIMD).** Overuse cuts the delay-based estimate to [`DECREASE_FACTOR`] ×
//!   the acknowledged rate (what actually arrived over the last 300 ms of the receiver's
//!   clock) and remembers that rate as the link's congestion point. Underuse holds
//!   (the queue is draining; the rate that drains it says nothing about capacity). Normal
//!   increases: multiplicatively ([`INCREASE_PER_SECOND`]) far from the last congestion
//!   point, additively (about one packet per response time) near it.
//! - **Standing queue.** A trendline sees a queue that grows, not one that stays full:
//!   a sender that keeps more than the link carries (the allocator keeps a flowing video
//!   through a shallow cut) fills the bottleneck's buffer and then holds it full, losing a
//!   little and delaying everything by the buffer's length. So each group's one-way delay
//!   is also compared with the path's least (over the last 5–10 s): a queue standing
//!   [`STANDING_QUEUE_US`] above it for [`STANDING_TIME_US`] is cut for like overuse,
//!   again every [`STANDING_CUT_INTERVAL_US`] while it stands.
//! - **Loss-based.** Over windows of at least [`LOSS_WINDOW_PACKETS`] packets and
//!   [`LOSS_WINDOW_US`] of feedback: above
//!   [`LOSS_HIGH`] loss the loss-based limit is cut to × (1 − loss / 2); below [`LOSS_LOW`] it
//!   is lifted (and dropped once it no longer binds); in between it holds. With no loss
//!   episode there is no loss-based limit at all, so steady random loss below
//!   [`LOSS_HIGH`] never holds a clean estimate down.
//! - **App-limited.** The SFU usually sends far less than the link carries, and only a
//!   paused video's return is probed with padding ([`crate::probe`]): the allocator's
//!   one-layer step-up is the probe of the rest. So the estimate may grow above what is
//!   delivered, but only up to
//!   max([`APP_LIMITED_RATIO`] × acknowledged, acknowledged + [`APP_LIMITED_HEADROOM_BPS`]):
//!   enough for one simulcast layer step of any subscription, never to infinity. The cap
//!   only stops growth; it never lowers an estimate.
//!
//! The result is min(delay-based, loss-based), within [`MIN_BPS`]..=[`MAX_BPS`].
//!
//! Robustness: sequence numbers wrap (u16); feedback for sequence numbers never sent, too
//! old for the ring, already reported, reordered or duplicated is ignored packet by packet;
//! arrival times may go backwards or jump (a jump resets the delay detector); an empty
//! feedback changes nothing. All arithmetic on input saturates or wraps: no input panics.

use std::time::{Duration, Instant};

/// The lowest estimate: below this not even the lowest simulcast layer plus audio fits, so a
/// lower figure would only pause more video without telling the allocator anything new, and
/// feedback at lower rates is too sparse to climb back quickly.
pub const MIN_BPS: u32 = 50_000;

/// The highest estimate: above every layer ladder a subscriber is sent (a few 1080p tiles),
/// so a higher figure could not change any allocation.
pub const MAX_BPS: u32 = 20_000_000;

/// A starting estimate for [`Estimator::new`] when the caller knows nothing better: audio,
/// the lowest layer of a few videos and one middle layer fit, so a new subscriber sees
/// video at once; if the link carries less, the first overuse (within about half a
/// second of feedback) cuts it to what arrives.
pub const INITIAL_BPS: u32 = 1_000_000;

/// Sends remembered, by sequence number modulo this (a power of two, so the index is a
/// mask). 1024 covers 0.5 s at 20 Mbit/s of 1200-byte packets, well over a feedback round
/// trip (feedback comes every 50–250 ms); 16 bytes each, 16 KiB per subscriber.
pub const RING: usize = 1024;

/// Packets sent within this span of a group's first packet form one group: a frame's packets
/// leave in one burst, and 5 ms is GCC's burst time (draft-ietf-rmcat-gcc-02 §5.2).
pub const GROUP_SPAN_US: i64 = 5_000;

/// Groups in the trendline regression: about 0.3–0.7 s of media at 30–60 groups/s, long
/// enough to average out jitter, short enough to see a queue build within a second.
pub const TREND_WINDOW: usize = 20;

/// Smoothing of the accumulated delay before the regression (weight of the old value):
/// damps single-group jitter without adding more than a few groups of lag.
const TREND_SMOOTHING: f64 = 0.9;

/// The slope is multiplied by min(deltas seen, this) × [`TREND_GAIN`], so the detector
/// compares "delay added over the window" (ms) with the threshold, and is timid at first.
const TREND_MAX_DELTAS: f64 = 60.0;

/// Gain from slope to modified trend (see [`TREND_MAX_DELTAS`]): with the threshold's
/// starting value it flags a queue growing by about 1 ms every 20 ms of arrivals.
const TREND_GAIN: f64 = 4.0;

/// The adaptive threshold's starting value and bounds, in ms of modified trend: a start
/// that ignores ordinary jitter, a floor that keeps a quiet link from flagging noise, a
/// ceiling that still notices a real queue.
const THRESHOLD_INITIAL: f64 = 12.5;
const THRESHOLD_MIN: f64 = 6.0;
const THRESHOLD_MAX: f64 = 600.0;

/// How fast the threshold rises towards a trend above it (per ms): slowly, so that a
/// competing flow's queue raises it over seconds instead of hiding real overuse.
const THRESHOLD_K_UP: f64 = 0.0087;

/// How fast the threshold falls towards a trend below it (per ms): faster than up, so
/// sensitivity comes back once the link is quiet.
const THRESHOLD_K_DOWN: f64 = 0.039;

/// A trend this far beyond the threshold (ms) is a spike (a route change, a stall) and
/// does not move the threshold at all.
const THRESHOLD_MAX_JUMP: f64 = 15.0;

/// The threshold adapts over at most this much time per sample (ms), so that one sample
/// after a long silence does not swing it.
const THRESHOLD_MAX_DT_MS: f64 = 100.0;

/// The trend must stay above the threshold for this long (ms of send time) and over two
/// groups before it counts as overuse: one late group is jitter, not a queue.
const OVERUSE_TIME_MS: f64 = 10.0;

/// A send or arrival gap between two groups longer than this (µs) means the link went
/// quiet or the receiver's clock jumped: the delay history is stale and starts again.
const GAP_RESET_US: i64 = 3_000_000;

/// On overuse the delay-based estimate falls to this × the acknowledged rate (GCC's β):
/// a little under what got through, so the queue that built up drains.
pub const DECREASE_FACTOR: f64 = 0.85;

/// Growth per second far from the last congestion point. GCC uses 1.08 with probing; with
/// no probing the estimate itself must climb, and a browser test needs 300 kbit/s → 3
/// Mbit/s in 6–8 s after a cap lifts, i.e. doubling every ~1.5 s. Overshoot stays modest
/// because the delay detector sees a queue within a few hundred ms (+15–25 % by then), and
/// the cut that follows is relative to what arrived, not to the overshoot.
pub const INCREASE_PER_SECOND: f64 = 1.6;

/// The band around the last congestion point in which increase is additive, as fractions of
/// it. Below: a cut lands at [`DECREASE_FACTOR`] × the acknowledged rate, which must be
/// "near", or the estimate would bounce straight back into the queue. Above: 10 % beyond
/// the congestion point without a queue shows the link has more, so the point is forgotten.
const NEAR_BELOW: f64 = 0.25;
const NEAR_ABOVE: f64 = 0.10;

/// Weight of a new sample in the congestion point's average when it falls inside the near
/// band (one outside replaces it): a few congestion events settle it, one odd one does not.
const CONGESTION_POINT_ALPHA: f64 = 0.3;

/// Added to the RTT to make the response time (how long a rate change takes to show in
/// feedback), as in GCC: the additive step is one packet per response time.
const RESPONSE_EXTRA_US: i64 = 100_000;

/// The least additive increase, in bit/s per second, so that a link with tiny packets
/// (audio only) still climbs out of the near band within seconds.
const ADDITIVE_MIN_BPS_PER_S: f64 = 20_000.0;

/// The least additive increase as a fraction of the congestion point per second: the near
/// band ([`NEAR_BELOW`] + [`NEAR_ABOVE`] of it) is crossed in at most ~3 s whatever the RTT,
/// so a lifted cap is noticed in time; a link that stays capped sees one overuse per such
/// cycle, the sawtooth GCC has too.
const ADDITIVE_MIN_FRACTION_PER_S: f64 = 0.12;

/// The longest time one update may grow the estimate over (µs): after a silence the
/// estimate knows nothing new, so it must not jump.
const MAX_UPDATE_DT_US: i64 = 500_000;

/// App-limited growth: the estimate may rise to this × the acknowledged rate. Adjacent
/// simulcast layers differ about 3–3.5× in bitrate (Chromium's 720p ladder: 150 k, 500 k,
/// 1.7 M), and a lone subscription can only step up if the estimate covers the next layer
/// before it is sent; 4 leaves room for audio and the rate wobble.
pub const APP_LIMITED_RATIO: f64 = 4.0;

/// App-limited growth: the estimate may also rise to the acknowledged rate plus this, so
/// that a subscriber receiving only audio (~40 kbit/s) or nothing can still be offered the
/// first video layers (~150–500 kbit/s).
pub const APP_LIMITED_HEADROOM_BPS: f64 = 500_000.0;

/// A queue standing this much above the path's least delay (µs) is a link carrying more
/// than it can: a trendline sees a queue grow, not one that stays full (a sender that
/// keeps a video the estimate has no room for, a buffer that never drains). Above
/// Chromium's feedback jitter on a loaded machine (tens of ms in bursts, not standing),
/// well under what a call notices (a 300 ms tbf queue, a bloated home router's seconds).
const STANDING_QUEUE_US: i64 = 60_000;

/// How long every delay sample must stay [`STANDING_QUEUE_US`] above the least before the
/// queue counts as standing: longer than any burst of jitter or a keyframe's queue.
const STANDING_TIME_US: i64 = 500_000;

/// The least time between two cuts for a standing queue: the cut must have had time to
/// reach the sender's allocation and the queue time to drain before it is cut again.
const STANDING_CUT_INTERVAL_US: i64 = 500_000;

/// The path's least delay is the minimum over the current and the previous bucket of this
/// many µs of the receiver's clock: a route that changes is followed within two buckets.
const BASE_BUCKET_US: i64 = 5_000_000;

/// The acknowledged rate is counted in bins of this much arrival time (µs): fine enough to
/// follow a cut within a feedback interval, coarse enough to be a fixed array.
const ACK_BIN_US: i64 = 50_000;

/// Bins kept (a ring): the window plus room for feedback that arrives out of order.
const ACK_BINS: usize = 16;

/// Complete bins averaged into the acknowledged rate: 300 ms, short enough that after a
/// cap the rate reflects the bottleneck (not the pre-cap burst) by the time the detector
/// fires, long enough to hold a few packets at 150 kbit/s.
const ACK_WINDOW_BINS: i64 = 6;

/// Packets per loss window at least: fewer give a fraction too noisy to act on. At a
/// steady 5 % random loss (a lossy Wi-Fi, which the delay detector cannot help with), 45
/// packets read over 10 % about one window in ten, and each such reading cuts the estimate
/// (measured with Chromium, 16-call-loss); 150 packets do so about once in 300 windows.
pub const LOSS_WINDOW_PACKETS: u32 = 100;

/// Feedback time per loss window at least (µs): at 5 % random loss, 20 packets exceed 10 %
/// one window in 13, which would cut a clean link every second at 3 Mbit/s; half a second
/// (150 packets there) makes that rare, and congestion is the delay detector's to catch
/// first anyway.
pub const LOSS_WINDOW_US: i64 = 500_000;

/// Above this loss fraction the loss-based limit is cut (GCC: 10 %).
pub const LOSS_HIGH: f64 = 0.10;

/// Below this loss fraction the loss-based limit may rise (GCC: 2 %).
pub const LOSS_LOW: f64 = 0.02;

/// The least time between two loss-based cuts (plus the RTT): a cut needs a round trip to
/// show, and the packets lost meanwhile were sent at the old rate.
const LOSS_DECREASE_INTERVAL_US: i64 = 300_000;

/// The RTT assumed before feedback measures one: a typical internet path.
const INITIAL_RTT_US: i64 = 100_000;

/// Bounds of the measured RTT (it includes the feedback interval): a sample outside is
/// clamped, so a stale or forged time cannot stall or race the additive increase.
const RTT_MIN_US: i64 = 1_000;
const RTT_MAX_US: i64 = 3_000_000;

/// Packet size assumed before any is acknowledged (bytes): a typical video packet.
const INITIAL_PACKET_BYTES: f64 = 1_000.0;

/// Arrival times are the feedback's 24-bit reference time (64 ms units) plus deltas, so they
/// wrap every 2^24 × 64 ms (12.4 days of the receiver's clock); they are unwrapped modulo
/// this, relative to the previous one.
const ARRIVAL_SPAN_US: i128 = (1 << 24) * 64_000;

/// One packet of a TWCC feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Its transport-wide sequence number.
    pub seq: u16,
    /// When it arrived, in µs on the receiver's clock: the feedback's reference time × 64 000
    /// plus the receive deltas up to and including this packet's (the wrap of the 24-bit
    /// reference is undone here). None: not received, or received without a time.
    pub at_us: Option<i64>,
}

/// Reads one TWCC feedback, from plain wire numbers, into `out` (cleared first, so one
/// buffer serves every feedback): `symbols` are the packet status chunks expanded one per
/// packet (0 not received, 1 small delta, 2 large or negative delta, 3 received without a
/// delta; a one-bit vector's 1 is 1), `deltas_us` the receive deltas in order in µs (the
/// wire's 250 µs units × 250, as webrtc-rs's `RecvDelta::delta` already is). At most
/// `status_count` packets are read (the last chunk may pad past it); a received symbol
/// with no delta left ends the reading, as the rest cannot be timed.
///
/// ```
/// use chorus_sfu::estimate::{twcc_arrivals, Arrival};
/// let mut out = Vec::new();
/// twcc_arrivals(65_535, 1, 3, [1, 0, 2, 0], [500, -250], &mut out);
/// assert_eq!(out, [
///     Arrival { seq: 65_535, at_us: Some(64_500) },
///     Arrival { seq: 0, at_us: None },
///     Arrival { seq: 1, at_us: Some(64_250) },
/// ]);
/// ```
pub fn twcc_arrivals(
    base_seq: u16,
    reference_time: u32,
    status_count: u16,
    symbols: impl IntoIterator<Item = u8>,
    deltas_us: impl IntoIterator<Item = i64>,
    out: &mut Vec<Arrival>,
) {
    out.clear();
    let mut deltas = deltas_us.into_iter();
    let mut at_us = i64::from(reference_time & 0xFF_FFFF) * 64_000;
    let mut seq = base_seq;
    for symbol in symbols.into_iter().take(usize::from(status_count)) {
        let at = match symbol {
            1 | 2 => {
                let Some(delta) = deltas.next() else {
                    return;
                };
                at_us = at_us.saturating_add(delta);
                Some(at_us)
            }
            _ => None,
        };
        out.push(Arrival { seq, at_us: at });
        seq = seq.wrapping_add(1);
    }
}

/// What the delay detector last concluded about the queue on the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The queue is growing: the link is congested now.
    Overuse,
    /// No trend either way.
    Normal,
    /// The queue is draining (after a cut, or another flow left).
    Underuse,
}

/// The rate controller's state (GCC §5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateState {
    Hold,
    Increase,
}

/// What the ring knows about one sent packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// No packet in this slot yet.
    Empty,
    /// Sent, not reported yet.
    Sent,
    /// Reported not received (it may still be reported received later).
    Lost,
    /// Reported received: any later report of it is a duplicate.
    Received,
}

/// One sent packet, in the ring at `seq % RING`.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// When it was sent, in µs since the estimator's epoch.
    sent_us: i64,
    /// Its size on the wire.
    bytes: u32,
    /// Its full sequence number, to tell it from the packets `RING` before and after it.
    seq: u16,
    fate: Fate,
}

const EMPTY: Sent = Sent {
    sent_us: 0,
    bytes: 0,
    seq: 0,
    fate: Fate::Empty,
};

/// A burst of packets sent within [`GROUP_SPAN_US`], as the delay detector sees it.
#[derive(Debug, Clone, Copy)]
struct Group {
    first_send_us: i64,
    last_send_us: i64,
    /// The latest arrival of the group's packets, in the receiver's clock (µs).
    last_arrival_us: i64,
}

/// Least squares slope of the smoothed accumulated delay over the last groups.
#[derive(Debug, Clone)]
struct Trendline {
    /// Deltas seen since the last reset (saturates; only compared with a small figure).
    deltas: u32,
    accumulated_ms: f64,
    smoothed_ms: f64,
    /// The arrival time the x axis starts at (ms, receiver clock).
    origin_ms: Option<f64>,
    /// (arrival ms since origin, smoothed delay ms), a ring of the last [`TREND_WINDOW`].
    samples: [(f64, f64); TREND_WINDOW],
    len: usize,
    next: usize,
    slope: f64,
}

impl Trendline {
    fn new() -> Self {
        Trendline {
            deltas: 0,
            accumulated_ms: 0.0,
            smoothed_ms: 0.0,
            origin_ms: None,
            samples: [(0.0, 0.0); TREND_WINDOW],
            len: 0,
            next: 0,
            slope: 0.0,
        }
    }

    /// Adds one inter-group delay variation; returns the modified trend (ms over the window).
    fn update(&mut self, delay_delta_ms: f64, arrival_ms: f64) -> f64 {
        self.deltas = self.deltas.saturating_add(1);
        self.accumulated_ms += delay_delta_ms;
        self.smoothed_ms =
            TREND_SMOOTHING * self.smoothed_ms + (1.0 - TREND_SMOOTHING) * self.accumulated_ms;
        let origin = *self.origin_ms.get_or_insert(arrival_ms);
        self.samples[self.next] = (arrival_ms - origin, self.smoothed_ms);
        self.next = (self.next + 1) % TREND_WINDOW;
        self.len = (self.len + 1).min(TREND_WINDOW);
        if self.len == TREND_WINDOW
            && let Some(slope) = slope(&self.samples)
        {
            self.slope = slope;
        }
        self.slope * f64::from(self.deltas).min(TREND_MAX_DELTAS) * TREND_GAIN
    }
}

/// The least squares slope of `points`, or None if their x values are all equal.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), &(x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), &(x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    (den > 0.0 && num.is_finite()).then(|| num / den)
}

/// Turns the modified trend into a [`Signal`] against an adaptive threshold (GCC §5.4).
#[derive(Debug, Clone)]
struct Detector {
    threshold: f64,
    /// Arrival time of the last threshold update (ms).
    last_update_ms: Option<f64>,
    /// How long the trend has been over the threshold (ms of send time), None if it is not.
    overusing_ms: Option<f64>,
    overuse_count: u32,
    prev_trend: f64,
    signal: Signal,
}

impl Detector {
    fn new() -> Self {
        Detector {
            threshold: THRESHOLD_INITIAL,
            last_update_ms: None,
            overusing_ms: None,
            overuse_count: 0,
            prev_trend: 0.0,
            signal: Signal::Normal,
        }
    }

    fn detect(&mut self, trend: f64, send_delta_ms: f64, arrival_ms: f64) -> Signal {
        if trend > self.threshold {
            let over = match self.overusing_ms {
                None => send_delta_ms / 2.0,
                Some(over) => over + send_delta_ms,
            };
            self.overusing_ms = Some(over);
            self.overuse_count = self.overuse_count.saturating_add(1);
            if over > OVERUSE_TIME_MS && self.overuse_count > 1 && trend >= self.prev_trend {
                self.overusing_ms = Some(0.0);
                self.overuse_count = 0;
                self.signal = Signal::Overuse;
            }
        } else {
            self.overusing_ms = None;
            self.overuse_count = 0;
            self.signal = if trend < -self.threshold {
                Signal::Underuse
            } else {
                Signal::Normal
            };
        }
        self.prev_trend = trend;
        self.adapt(trend, arrival_ms);
        self.signal
    }

    fn adapt(&mut self, trend: f64, arrival_ms: f64) {
        let last = *self.last_update_ms.get_or_insert(arrival_ms);
        self.last_update_ms = Some(arrival_ms);
        let magnitude = trend.abs();
        if magnitude > self.threshold + THRESHOLD_MAX_JUMP {
            return;
        }
        let k = if magnitude < self.threshold {
            THRESHOLD_K_DOWN
        } else {
            THRESHOLD_K_UP
        };
        let dt = (arrival_ms - last).clamp(0.0, THRESHOLD_MAX_DT_MS);
        self.threshold += k * (magnitude - self.threshold) * dt;
        self.threshold = self.threshold.clamp(THRESHOLD_MIN, THRESHOLD_MAX);
    }
}

/// Bytes that arrived in one [`ACK_BIN_US`] of the receiver's clock.
#[derive(Debug, Clone, Copy)]
struct AckBin {
    /// arrival µs / ACK_BIN_US; i64::MIN when unused.
    index: i64,
    bytes: u64,
}

/// One subscriber's send-side bandwidth estimator. See the module documentation.
#[derive(Debug, Clone)]
pub struct Estimator {
    /// Instants become µs since this (the creation instant).
    epoch: Instant,
    /// The last [`RING`] sends, by sequence number (allocated once, in `new`).
    ring: Box<[Sent]>,
    /// The newest sequence number sent; feedback beyond it was never sent.
    last_sent_seq: Option<u16>,
    /// The last arrival time read, unwrapped (see [`ARRIVAL_SPAN_US`]).
    last_arrival_us: Option<i64>,

    // Delay-based.
    group: Option<Group>,
    prev_group: Option<Group>,
    trend: Trendline,
    detector: Detector,
    rate_state: RateState,
    delay_bps: f64,
    /// The acknowledged rate at the last overuse(s): the link's known capacity.
    congestion_point: Option<f64>,
    last_update_us: Option<i64>,
    last_decrease_us: Option<i64>,

    // Acknowledged rate.
    ack_bins: [AckBin; ACK_BINS],
    ack_first_bin: Option<i64>,
    ack_latest_bin: Option<i64>,
    acked_bps: Option<f64>,

    // Standing queue.
    /// The least one-way delay (receiver's arrival − sender's send, µs, any offset) of the
    /// current and the previous base bucket.
    base_delay: [Option<i64>; 2],
    base_bucket_start: Option<i64>,
    /// Since when (receiver's clock, µs) every group arrived [`STANDING_QUEUE_US`] above
    /// the least delay.
    standing_since: Option<i64>,
    /// Whether that has lasted [`STANDING_TIME_US`].
    standing: bool,
    last_standing_cut_us: Option<i64>,

    // Loss-based.
    window_received: u32,
    window_lost: u32,
    /// When the current loss window started (µs), None before any feedback.
    window_start_us: Option<i64>,
    loss_fraction: f64,
    /// None while loss limits nothing.
    loss_limit: Option<f64>,
    last_loss_update_us: Option<i64>,
    last_loss_decrease_us: Option<i64>,

    // Path.
    rtt_us: i64,
    packet_bytes: f64,
}

impl Estimator {
    /// A new estimator starting at `initial_bps` (clamped to the bounds) at `now`.
    pub fn new(initial_bps: u32, now: Instant) -> Self {
        Estimator {
            epoch: now,
            ring: vec![EMPTY; RING].into_boxed_slice(),
            last_sent_seq: None,
            last_arrival_us: None,
            group: None,
            prev_group: None,
            trend: Trendline::new(),
            detector: Detector::new(),
            rate_state: RateState::Increase,
            delay_bps: f64::from(initial_bps.clamp(MIN_BPS, MAX_BPS)),
            congestion_point: None,
            last_update_us: None,
            last_decrease_us: None,
            ack_bins: [AckBin {
                index: i64::MIN,
                bytes: 0,
            }; ACK_BINS],
            ack_first_bin: None,
            ack_latest_bin: None,
            acked_bps: None,
            base_delay: [None; 2],
            base_bucket_start: None,
            standing_since: None,
            standing: false,
            last_standing_cut_us: None,
            window_received: 0,
            window_lost: 0,
            window_start_us: None,
            loss_fraction: 0.0,
            loss_limit: None,
            last_loss_update_us: None,
            last_loss_decrease_us: None,
            rtt_us: INITIAL_RTT_US,
            packet_bytes: INITIAL_PACKET_BYTES,
        }
    }

    /// A forwarded packet: its transport-wide sequence number, its size on the wire and when
    /// it was sent. O(1), no allocation. A sequence number sent again replaces the first.
    pub fn on_sent(&mut self, seq: u16, bytes: usize, now: Instant) {
        let sent_us = self.micros(now);
        self.ring[usize::from(seq) & (RING - 1)] = Sent {
            sent_us,
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
            seq,
            fate: Fate::Sent,
        };
        // The newest is the one furthest ahead (within half the sequence space).
        let newer = match self.last_sent_seq {
            None => true,
            Some(last) => seq.wrapping_sub(last) < 0x8000,
        };
        if newer {
            self.last_sent_seq = Some(seq);
        }
    }

    /// One TWCC feedback that arrived at `now`: its packets in sequence order. Unknown,
    /// stale and already reported sequence numbers are skipped. O(packets), no allocation.
    pub fn on_feedback(&mut self, arrivals: &[Arrival], now: Instant) {
        let now_us = self.micros(now);
        let Some(last_sent) = self.last_sent_seq else {
            return;
        };
        let mut newly_reported = 0u32;
        let mut newest_sent_us: Option<i64> = None;
        let (mut received_bytes, mut received_count) = (0u64, 0u32);
        for arrival in arrivals {
            let at = arrival.at_us.map(|at| self.unwrap_arrival(at));
            let seq = arrival.seq;
            // Beyond the newest send (never sent) or older than the ring: skip.
            if usize::from(last_sent.wrapping_sub(seq)) >= RING {
                continue;
            }
            let slot = &mut self.ring[usize::from(seq) & (RING - 1)];
            if slot.seq != seq {
                continue;
            }
            let sent = *slot;
            match (sent.fate, at) {
                (Fate::Sent, None) => {
                    slot.fate = Fate::Lost;
                    self.window_lost = self.window_lost.saturating_add(1);
                }
                (Fate::Sent | Fate::Lost, Some(at)) => {
                    slot.fate = Fate::Received;
                    if sent.fate == Fate::Lost {
                        // Reported lost before, received late after all.
                        self.window_lost = self.window_lost.saturating_sub(1);
                    }
                    self.window_received = self.window_received.saturating_add(1);
                    received_bytes = received_bytes.saturating_add(u64::from(sent.bytes));
                    received_count += 1;
                    self.add_acked(at, sent.bytes);
                    self.on_arrival(sent.sent_us, at);
                }
                // Empty slot, a duplicate, or still lost.
                _ => continue,
            }
            newly_reported += 1;
            newest_sent_us = Some(newest_sent_us.map_or(sent.sent_us, |t| t.max(sent.sent_us)));
        }
        if newly_reported == 0 {
            return;
        }
        if let Some(sent_us) = newest_sent_us {
            let sample = now_us.saturating_sub(sent_us).clamp(RTT_MIN_US, RTT_MAX_US);
            self.rtt_us = (self.rtt_us * 7 + sample) / 8;
        }
        if received_count > 0 {
            let mean = received_bytes as f64 / f64::from(received_count);
            self.packet_bytes = 0.9 * self.packet_bytes + 0.1 * mean;
        }
        self.acked_bps = self.compute_acked();
        self.update_delay_based(now_us);
        self.cut_standing_queue(now_us);
        self.update_loss_based(now_us);
    }

    /// The estimate, in bits per second: min(delay-based, loss-based), within the bounds.
    pub fn estimate(&self) -> u32 {
        let bps = match self.loss_limit {
            Some(limit) => self.delay_bps.min(limit),
            None => self.delay_bps,
        };
        to_bps(bps)
    }

    /// The loss-based limit (bit/s), or None while loss limits nothing.
    pub fn loss_based(&self) -> Option<u32> {
        self.loss_limit.map(to_bps)
    }

    /// The acknowledged rate: what arrived at the subscriber over the last 300 ms of its
    /// clock (bit/s), or None before that much has arrived.
    pub fn acked_bps(&self) -> Option<u32> {
        self.acked_bps
            .map(|bps| bps.clamp(0.0, f64::from(u32::MAX)) as u32)
    }

    /// When the estimate was last cut, by overuse or by loss; None before any cut. The
    /// allocator holds a subscriber to the estimate only while a cut is recent: when the
    /// server sends less than the link could carry, the estimate says little.
    pub fn last_decrease(&self) -> Option<Instant> {
        let us = self.last_decrease_us.max(self.last_loss_decrease_us)?;
        Some(self.epoch + Duration::from_micros(u64::try_from(us).unwrap_or(0)))
    }

    /// The loss fraction of the last complete loss window (0.0..=1.0).
    pub fn loss_fraction(&self) -> f64 {
        self.loss_fraction
    }

    /// µs since the epoch (0 for an instant before it).
    fn micros(&self, now: Instant) -> i64 {
        i64::try_from(now.saturating_duration_since(self.epoch).as_micros()).unwrap_or(i64::MAX)
    }

    /// An arrival time unwrapped modulo [`ARRIVAL_SPAN_US`] relative to the previous one.
    fn unwrap_arrival(&mut self, at_us: i64) -> i64 {
        let extended = match self.last_arrival_us {
            None => at_us,
            Some(last) => {
                let mut diff = (i128::from(at_us) - i128::from(last)).rem_euclid(ARRIVAL_SPAN_US);
                if diff >= ARRIVAL_SPAN_US / 2 {
                    diff -= ARRIVAL_SPAN_US;
                }
                // |diff| < 2^39: it fits.
                last.saturating_add(diff as i64)
            }
        };
        self.last_arrival_us = Some(extended);
        extended
    }

    /// Feeds one received packet, in send order, to the delay detector.
    fn on_arrival(&mut self, send_us: i64, arrival_us: i64) {
        let Some(mut group) = self.group else {
            self.group = Some(Group {
                first_send_us: send_us,
                last_send_us: send_us,
                last_arrival_us: arrival_us,
            });
            return;
        };
        if send_us < group.first_send_us {
            // Reported out of order (a later feedback came first): too late for the trend.
            return;
        }
        if send_us - group.first_send_us <= GROUP_SPAN_US {
            group.last_send_us = group.last_send_us.max(send_us);
            group.last_arrival_us = group.last_arrival_us.max(arrival_us);
            self.group = Some(group);
            return;
        }
        // `send_us` starts a new group: the current one is complete.
        self.group = Some(Group {
            first_send_us: send_us,
            last_send_us: send_us,
            last_arrival_us: arrival_us,
        });
        let Some(prev) = self.prev_group.replace(group) else {
            self.on_delay(group);
            return;
        };
        let send_delta = group.last_send_us.saturating_sub(prev.last_send_us);
        let arrival_delta = group.last_arrival_us.saturating_sub(prev.last_arrival_us);
        let jumped =
            send_delta > GAP_RESET_US || !(-GAP_RESET_US..=GAP_RESET_US).contains(&arrival_delta);
        if jumped {
            // A long silence or a clock jump: the delay history says nothing any more.
            self.trend = Trendline::new();
            self.base_delay = [None; 2];
            self.standing_since = None;
            self.standing = false;
        }
        self.on_delay(group);
        if jumped {
            return;
        }
        if arrival_delta < 0 {
            // The network reordered whole groups: no delay sample.
            return;
        }
        let delay_delta_ms = (arrival_delta - send_delta) as f64 / 1000.0;
        let arrival_ms = group.last_arrival_us as f64 / 1000.0;
        let trend = self.trend.update(delay_delta_ms, arrival_ms);
        self.detector
            .detect(trend, send_delta as f64 / 1000.0, arrival_ms);
    }

    /// A complete group's one-way delay, against the path's least: is a queue standing?
    fn on_delay(&mut self, group: Group) {
        let at = group.last_arrival_us;
        let delay = at.saturating_sub(group.last_send_us);
        if self
            .base_bucket_start
            .is_none_or(|start| at.saturating_sub(start) >= BASE_BUCKET_US || at < start)
        {
            self.base_delay = [None, self.base_delay[0]];
            self.base_bucket_start = Some(at);
        }
        self.base_delay[0] = Some(self.base_delay[0].map_or(delay, |d| d.min(delay)));
        let base = self
            .base_delay
            .iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(delay);
        if delay.saturating_sub(base) > STANDING_QUEUE_US {
            let since = *self.standing_since.get_or_insert(at);
            self.standing = at.saturating_sub(since) >= STANDING_TIME_US;
        } else {
            self.standing_since = None;
            self.standing = false;
        }
    }

    /// A standing queue is cut for like overuse (at most every
    /// [`STANDING_CUT_INTERVAL_US`]): the trendline, which sees only a queue that grows, is
    /// silent about one that stays full.
    fn cut_standing_queue(&mut self, now_us: i64) {
        if !self.standing || self.detector.signal == Signal::Overuse {
            return;
        }
        if self
            .last_standing_cut_us
            .is_some_and(|t| now_us.saturating_sub(t) < STANDING_CUT_INTERVAL_US)
        {
            return;
        }
        self.last_standing_cut_us = Some(now_us);
        self.decrease(now_us);
    }

    /// Counts `bytes` that arrived at `arrival_us` (receiver clock) into the acked bins.
    fn add_acked(&mut self, arrival_us: i64, bytes: u32) {
        let index = arrival_us.div_euclid(ACK_BIN_US);
        match self.ack_latest_bin {
            Some(latest) if index <= latest.saturating_sub(ACK_BINS as i64) => return,
            Some(latest) if index - latest > ACK_BINS as i64 => {
                // A jump forward: everything before is out of the window anyway, and the
                // rate must not average over the silence as if it had been measured.
                self.ack_first_bin = Some(index);
                self.ack_latest_bin = Some(index);
            }
            Some(latest) => self.ack_latest_bin = Some(latest.max(index)),
            None => {
                self.ack_first_bin = Some(index);
                self.ack_latest_bin = Some(index);
            }
        }
        let bin = &mut self.ack_bins[index.rem_euclid(ACK_BINS as i64) as usize];
        if bin.index != index {
            if bin.index > index {
                return;
            }
            *bin = AckBin { index, bytes: 0 };
        }
        bin.bytes = bin.bytes.saturating_add(u64::from(bytes));
    }

    /// The rate over the [`ACK_WINDOW_BINS`] complete bins before the newest one.
    fn compute_acked(&self) -> Option<f64> {
        let (first, latest) = (self.ack_first_bin?, self.ack_latest_bin?);
        if latest - first < ACK_WINDOW_BINS {
            return self.acked_bps;
        }
        let from = latest - ACK_WINDOW_BINS;
        let bytes: u64 = self
            .ack_bins
            .iter()
            .filter(|bin| bin.index >= from && bin.index < latest)
            .map(|bin| bin.bytes)
            .sum();
        Some(bytes as f64 * 8.0 * 1e6 / (ACK_WINDOW_BINS * ACK_BIN_US) as f64)
    }

    /// The AIMD step after a feedback.
    fn update_delay_based(&mut self, now_us: i64) {
        let dt = self
            .last_update_us
            .map_or(0, |last| now_us.saturating_sub(last))
            .clamp(0, MAX_UPDATE_DT_US);
        self.last_update_us = Some(now_us);
        match self.detector.signal {
            Signal::Overuse => {
                self.decrease(now_us);
                return;
            }
            Signal::Underuse => {
                self.rate_state = RateState::Hold;
                return;
            }
            Signal::Normal => self.rate_state = RateState::Increase,
        }
        let current = self.delay_bps;
        if let Some(point) = self.congestion_point
            && current > point * (1.0 + NEAR_ABOVE)
        {
            self.congestion_point = None;
        }
        let near = self
            .congestion_point
            .filter(|&point| current >= point * (1.0 - NEAR_BELOW));
        let seconds = dt as f64 / 1e6;
        let increased = match near {
            Some(point) => {
                let response_s = (self.rtt_us + RESPONSE_EXTRA_US) as f64 / 1e6;
                let per_second = (self.packet_bytes * 8.0 / response_s)
                    .max(ADDITIVE_MIN_BPS_PER_S)
                    .max(point * ADDITIVE_MIN_FRACTION_PER_S);
                current + per_second * seconds
            }
            None => current * INCREASE_PER_SECOND.powf(seconds),
        };
        // App-limited: grow only up to what the delivered rate can vouch for.
        let ceiling = match self.acked_bps {
            Some(acked) => (acked * APP_LIMITED_RATIO).max(acked + APP_LIMITED_HEADROOM_BPS),
            None => current,
        };
        self.delay_bps = increased.min(ceiling.max(current)).min(f64::from(MAX_BPS));
    }

    /// Overuse: cut to [`DECREASE_FACTOR`] × acknowledged, at most once per RTT.
    fn decrease(&mut self, now_us: i64) {
        if let Some(last) = self.last_decrease_us
            && now_us.saturating_sub(last) < self.rtt_us
        {
            return;
        }
        self.last_decrease_us = Some(now_us);
        self.rate_state = RateState::Hold;
        let current = self.delay_bps;
        let Some(acked) = self.acked_bps else {
            self.delay_bps = (current * DECREASE_FACTOR).max(f64::from(MIN_BPS));
            return;
        };
        self.congestion_point = Some(match self.congestion_point {
            Some(point) if (acked - point).abs() <= point * NEAR_BELOW => {
                (1.0 - CONGESTION_POINT_ALPHA) * point + CONGESTION_POINT_ALPHA * acked
            }
            _ => acked,
        });
        // Already below what arrives (the sender overshoots it): cutting further tells the
        // allocator nothing new.
        self.delay_bps = (acked * DECREASE_FACTOR)
            .min(current)
            .max(f64::from(MIN_BPS));
    }

    /// The loss-based step once a loss window is complete.
    fn update_loss_based(&mut self, now_us: i64) {
        let start = *self.window_start_us.get_or_insert(now_us);
        let total = self.window_received.saturating_add(self.window_lost);
        if total < LOSS_WINDOW_PACKETS || now_us.saturating_sub(start) < LOSS_WINDOW_US {
            return;
        }
        self.window_start_us = Some(now_us);
        let loss = f64::from(self.window_lost) / f64::from(total);
        self.window_received = 0;
        self.window_lost = 0;
        self.loss_fraction = loss;
        let dt = self
            .last_loss_update_us
            .map_or(0, |last| now_us.saturating_sub(last))
            .clamp(0, MAX_UPDATE_DT_US * 2);
        self.last_loss_update_us = Some(now_us);
        let current = f64::from(self.estimate());
        if loss > LOSS_HIGH {
            let due = self.last_loss_decrease_us.is_none_or(|last| {
                now_us.saturating_sub(last) >= LOSS_DECREASE_INTERVAL_US + self.rtt_us
            });
            if due {
                self.last_loss_decrease_us = Some(now_us);
                // From what got through, when that is lower: an SFU often sends far less
                // than its estimate (app-limited), and a cut of an estimate several times
                // the link would take several rounds to reach it.
                let base = self
                    .loss_limit
                    .map_or(current, |limit| limit.min(current))
                    .min(self.acked_bps.unwrap_or(f64::INFINITY));
                self.loss_limit = Some((base * (1.0 - 0.5 * loss)).max(f64::from(MIN_BPS)));
            }
        } else if loss < LOSS_LOW
            && let Some(limit) = self.loss_limit
        {
            let lifted = limit * INCREASE_PER_SECOND.powf(dt as f64 / 1e6);
            self.loss_limit = (lifted < self.delay_bps).then_some(lifted);
        }
    }
}

/// A rate in bit/s as a u32 within the bounds.
fn to_bps(bps: f64) -> u32 {
    bps.clamp(f64::from(MIN_BPS), f64::from(MAX_BPS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A deterministic xorshift, for loss.
    struct Rng(u64);

    impl Rng {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// A bottleneck: a FIFO drained at `capacity_bps`, tail-dropping packets that would wait
    /// longer than `max_queue_us` (like tc tbf's latency), plus random loss, a propagation
    /// delay and random jitter up to `jitter_us` (in order: a packet never overtakes).
    struct Link {
        capacity_bps: f64,
        max_queue_us: i64,
        prop_us: i64,
        loss: f64,
        jitter_us: f64,
        busy_until_us: i64,
        last_arrival_us: i64,
        rng: Rng,
    }

    impl Link {
        fn new(capacity_bps: f64) -> Self {
            Link {
                capacity_bps,
                max_queue_us: 300_000,
                prop_us: 20_000,
                loss: 0.0,
                jitter_us: 0.0,
                busy_until_us: 0,
                last_arrival_us: 0,
                rng: Rng(0x2545_f491_4f6c_dd1d),
            }
        }

        /// When a packet sent at `send_us` arrives, or None if it is dropped.
        fn transmit(&mut self, send_us: i64, bytes: usize) -> Option<i64> {
            if self.rng.unit() < self.loss {
                return None;
            }
            let start = self.busy_until_us.max(send_us);
            if start - send_us > self.max_queue_us {
                return None;
            }
            self.busy_until_us = start + (bytes as f64 * 8.0 * 1e6 / self.capacity_bps) as i64;
            let jitter = (self.rng.unit() * self.jitter_us) as i64;
            let arrival = (self.busy_until_us + self.prop_us + jitter).max(self.last_arrival_us);
            self.last_arrival_us = arrival;
            Some(arrival)
        }
    }

    /// What the sender sends, given the estimate.
    enum Sender {
        /// A fixed rate, whatever the estimate (an app-limited subscriber).
        Fixed(f64),
        /// min(estimate, max): an ideal allocator with a fine-grained ladder.
        Follow(f64),
        /// A simulcast ladder stepped like `allocate`: down at once, up one layer per second
        /// and not within 3 s of a downgrade.
        Layers {
            layers: &'static [f64],
            current: usize,
            last_down_us: i64,
            last_up_us: i64,
        },
    }

    impl Sender {
        fn rate(&mut self, estimate: u32, now_us: i64) -> f64 {
            let estimate = f64::from(estimate);
            match self {
                Sender::Fixed(bps) => *bps,
                Sender::Follow(max) => estimate.min(*max),
                Sender::Layers {
                    layers,
                    current,
                    last_down_us,
                    last_up_us,
                } => {
                    let fits = layers.iter().rposition(|&l| l <= estimate).unwrap_or(0);
                    if fits < *current {
                        *current = fits;
                        *last_down_us = now_us;
                    } else if fits > *current
                        && now_us - *last_down_us >= 3_000_000
                        && now_us - *last_up_us >= 1_000_000
                    {
                        *current += 1;
                        *last_up_us = now_us;
                    }
                    layers[*current]
                }
            }
        }
    }

    /// A feedback on its way back: (delivered at, base seq, reference time, symbols, deltas).
    type InFlight = (i64, u16, u32, Vec<u8>, Vec<i64>);

    /// A sender, an estimator, a link and a receiver that sends TWCC feedback every 100 ms,
    /// quantized as on the wire (64 ms reference, 250 µs deltas, a receiver clock offset).
    struct Sim {
        est: Estimator,
        t0: Instant,
        now_us: i64,
        link: Link,
        sender: Sender,
        next_seq: u16,
        /// Sent and not yet reported: (seq, arrival in the sender's clock).
        unreported: VecDeque<(u16, Option<i64>)>,
        in_flight: VecDeque<InFlight>,
        next_frame_us: i64,
        next_feedback_us: i64,
        /// How often the receiver sends feedback (Chromium: 50–250 ms).
        feedback_interval_us: i64,
        /// Every 10 ms: (ms, estimate).
        trace: Vec<(i64, u32)>,
        /// The feedback being read.
        buffer: Vec<Arrival>,
    }

    const FPS: i64 = 30;
    const MTU: usize = 1200;
    /// The receiver's clock: its 24-bit reference time wraps 10 s into every scenario.
    const RX_CLOCK_OFFSET_US: i64 = (1 << 24) * 64_000 - 10_000_000;

    impl Sim {
        fn new(initial_bps: u32, link: Link, sender: Sender) -> Self {
            let t0 = Instant::now();
            Sim {
                est: Estimator::new(initial_bps, t0),
                t0,
                now_us: 0,
                link,
                sender,
                // Starts just before the wrap, so every scenario crosses it.
                next_seq: 65_000,
                unreported: VecDeque::new(),
                in_flight: VecDeque::new(),
                next_frame_us: 0,
                next_feedback_us: 100_000,
                feedback_interval_us: 100_000,
                trace: Vec::new(),
                buffer: Vec::new(),
            }
        }

        fn at(&self, us: i64) -> Instant {
            self.t0 + Duration::from_micros(us as u64)
        }

        fn run_for(&mut self, seconds: f64) {
            let end = self.now_us + (seconds * 1e6) as i64;
            while self.now_us < end {
                self.step();
                self.now_us += 1_000;
            }
        }

        fn step(&mut self) {
            let now = self.now_us;
            while self.in_flight.front().is_some_and(|f| f.0 <= now) {
                let Some((_, base, reference, symbols, deltas)) = self.in_flight.pop_front() else {
                    break;
                };
                let count = symbols.len() as u16;
                twcc_arrivals(base, reference, count, symbols, deltas, &mut self.buffer);
                self.est.on_feedback(&self.buffer, self.at(now));
            }
            if now >= self.next_frame_us {
                self.next_frame_us += 1_000_000 / FPS;
                let rate = self.sender.rate(self.est.estimate(), now);
                let bytes = (rate / 8.0 / FPS as f64) as usize;
                let packets = bytes.div_ceil(MTU).max(1);
                for _ in 0..packets {
                    let size = bytes / packets + 40;
                    let seq = self.next_seq;
                    self.next_seq = seq.wrapping_add(1);
                    self.est.on_sent(seq, size, self.at(now));
                    let arrival = self.link.transmit(now, size);
                    self.unreported.push_back((seq, arrival));
                }
            }
            if now >= self.next_feedback_us {
                self.next_feedback_us += self.feedback_interval_us;
                self.send_feedback();
            }
            if now % 10_000 == 0 {
                self.trace.push((now / 1000, self.est.estimate()));
            }
        }

        /// Reports every packet up to the newest that has arrived.
        fn send_feedback(&mut self) {
            let now = self.now_us;
            let Some(last) = self
                .unreported
                .iter()
                .rposition(|(_, a)| a.is_some_and(|a| a <= now))
            else {
                return;
            };
            let report: Vec<_> = self.unreported.drain(..=last).collect();
            let Some(first_arrival) = report.iter().find_map(|(_, a)| *a) else {
                return;
            };
            let reference = (first_arrival + RX_CLOCK_OFFSET_US) / 64_000;
            let mut prev_ticks = reference * 256;
            let (mut symbols, mut deltas) = (Vec::new(), Vec::new());
            for (_, arrival) in &report {
                match arrival {
                    Some(a) => {
                        let ticks = (a + RX_CLOCK_OFFSET_US) / 250;
                        let delta = ticks - prev_ticks;
                        prev_ticks = ticks;
                        symbols.push(if (0..=255).contains(&delta) { 1 } else { 2 });
                        deltas.push(delta * 250);
                    }
                    None => symbols.push(0),
                }
            }
            self.in_flight.push_back((
                now + self.link.prop_us,
                report[0].0,
                (reference as u32) & 0xFF_FFFF,
                symbols,
                deltas,
            ));
        }

        /// The first time (s since `from_s`) at which `pred` holds for the estimate.
        fn first_after(&self, from_s: f64, pred: impl Fn(u32) -> bool) -> Option<f64> {
            let from_ms = (from_s * 1000.0) as i64;
            self.trace
                .iter()
                .find(|&&(ms, e)| ms >= from_ms && pred(e))
                .map(|&(ms, _)| (ms - from_ms) as f64 / 1000.0)
        }

        /// Min and max of the estimate between two times (s).
        fn range(&self, from_s: f64, to_s: f64) -> (u32, u32) {
            let (from, to) = ((from_s * 1000.0) as i64, (to_s * 1000.0) as i64);
            self.trace
                .iter()
                .filter(|&&(ms, _)| ms >= from && ms < to)
                .fold((u32::MAX, 0), |(lo, hi), &(_, e)| (lo.min(e), hi.max(e)))
        }
    }

    /// Receiving ~2.5 Mbit/s, then the link is capped at 300 kbit/s: the estimate is under
    /// the cap within a second, and stays near it (not collapsed) while the cap lasts.
    #[test]
    fn a_300k_cap_is_found_within_a_second() {
        let mut sim = Sim::new(2_500_000, Link::new(20e6), Sender::Follow(2.5e6));
        sim.run_for(5.0);
        let before = sim.est.estimate();
        assert!(before >= 2_500_000, "before the cap: {before}");
        sim.link.capacity_bps = 300e3;
        sim.run_for(15.0);
        let took = sim
            .first_after(5.0, |e| e < 300_000)
            .expect("never under the cap");
        let (lo, hi) = sim.range(10.0, 20.0);
        eprintln!("300k cap: under it after {took:.2} s; from 5 s after the cap: {lo}..{hi}");
        assert!(took <= 1.0, "took {took} s");
        assert!(lo >= 120_000, "collapsed to {lo}");
        assert!(hi <= 450_000, "overshoots to {hi}");
    }

    /// A long path (200 ms RTT) and sparse feedback (every 250 ms): slower, still in time.
    #[test]
    fn a_long_path_with_sparse_feedback_still_meets_the_targets() {
        let mut link = Link::new(20e6);
        link.prop_us = 100_000;
        let mut sim = Sim::new(2_500_000, link, Sender::Follow(6e6));
        sim.feedback_interval_us = 250_000;
        sim.run_for(5.0);
        sim.link.capacity_bps = 300e3;
        sim.run_for(10.0);
        let down = sim
            .first_after(5.0, |e| e < 300_000)
            .expect("never under the cap");
        let (lo, hi) = sim.range(10.0, 15.0);
        sim.link.capacity_bps = 20e6;
        sim.run_for(12.0);
        let up = sim
            .first_after(15.0, |e| e >= 3_000_000)
            .expect("never reached 3M");
        eprintln!("200 ms RTT, 250 ms feedback: down {down:.2} s, capped {lo}..{hi}, up {up:.2} s");
        assert!(down <= 1.5, "down took {down} s");
        assert!(lo >= 100_000, "collapsed to {lo}");
        assert!(up <= 8.5, "up took {up} s");
    }

    /// A 300 kbit/s policer (a 5 ms buffer): congestion shows as loss more than as delay.
    #[test]
    fn a_300k_policer_is_found_by_loss() {
        let mut sim = Sim::new(2_500_000, Link::new(20e6), Sender::Follow(2.5e6));
        sim.run_for(5.0);
        sim.link.capacity_bps = 300e3;
        sim.link.max_queue_us = 5_000;
        sim.run_for(15.0);
        let took = sim
            .first_after(5.0, |e| e < 300_000)
            .expect("never under the cap");
        let (lo, hi) = sim.range(10.0, 20.0);
        eprintln!("300k policer: under it after {took:.2} s; from 5 s after: {lo}..{hi}");
        assert!(took <= 2.0, "took {took} s");
        assert!(lo >= 100_000, "collapsed to {lo}");
    }

    /// After 10 s at a 300 kbit/s cap the cap lifts: a sender that follows the estimate sees
    /// it reach 3 Mbit/s within 8 s (measured: 5.6 s).
    #[test]
    fn a_lifted_cap_is_climbed_out_of_within_8_s() {
        let mut sim = Sim::new(2_500_000, Link::new(300e3), Sender::Follow(6e6));
        sim.run_for(10.0);
        let capped = sim.est.estimate();
        assert!(capped < 400_000, "capped: {capped}");
        sim.link.capacity_bps = 20e6;
        sim.run_for(12.0);
        let took = sim
            .first_after(10.0, |e| e >= 3_000_000)
            .expect("never reached 3M");
        eprintln!("lifted cap: {capped} → 3 Mbit/s in {took:.2} s");
        assert!(took <= 8.0, "took {took} s");
    }

    /// The same with a simulcast ladder stepped like the allocator (3 s hold, 1 s steps):
    /// the app-limited estimate runs ahead of what is sent, so each step is possible
    /// (measured: 7.6 s to 3 Mbit/s).
    #[test]
    fn a_lifted_cap_is_climbed_out_of_layer_by_layer() {
        static LADDER: [f64; 4] = [150e3, 500e3, 1.7e6, 3.2e6];
        let sender = Sender::Layers {
            layers: &LADDER,
            current: 2,
            last_down_us: -10_000_000,
            last_up_us: -10_000_000,
        };
        let mut sim = Sim::new(2_000_000, Link::new(300e3), sender);
        sim.run_for(10.0);
        sim.link.capacity_bps = 20e6;
        sim.run_for(15.0);
        let took = sim
            .first_after(10.0, |e| e >= 3_000_000)
            .expect("never reached 3M");
        let Sender::Layers { current, .. } = sim.sender else {
            unreachable!()
        };
        eprintln!("lifted cap, ladder: 3 Mbit/s after {took:.2} s, layer {current}");
        // The real allocator does not wait for the estimate once the last cut is
        // `allocate::CONGESTION_MEMORY` old (its held step is the probe); a ladder that does
        // is the slow case, slowed further by loss windows of LOSS_WINDOW_PACKETS.
        assert!(took <= 12.0, "took {took} s");
        assert_eq!(current, 3, "the ladder did not reach its top");
    }

    /// App-limited at 150 kbit/s on a fast link: the estimate rises above the send rate (so
    /// the next layer can be tried) but no higher than the app-limited ceiling.
    #[test]
    fn app_limited_growth_is_capped() {
        let mut sim = Sim::new(300_000, Link::new(20e6), Sender::Fixed(150e3));
        sim.run_for(20.0);
        let estimate = f64::from(sim.est.estimate());
        let acked = f64::from(sim.est.acked_bps().unwrap_or(0));
        let ceiling = (acked * APP_LIMITED_RATIO).max(acked + APP_LIMITED_HEADROOM_BPS);
        eprintln!("app-limited at 150k: acked {acked}, estimate {estimate}");
        assert!(estimate > 2.0 * 150e3, "estimate {estimate}");
        assert!(
            estimate <= ceiling * 1.05,
            "estimate {estimate} > {ceiling}"
        );
    }

    /// A sender that keeps 10 % more than a 300 kbit/s link carries (as the allocator
    /// keeping a video through a shallow cut does) fills its 300 ms buffer and holds it
    /// full: the trendline goes quiet once the queue stops growing, the standing queue does
    /// not, and the estimate keeps being cut. 10 % less, and nothing is cut.
    #[test]
    fn a_standing_queue_is_cut_for_as_long_as_it_stands() {
        for (rate, cut) in [(330e3, true), (270e3, false)] {
            let mut sim = Sim::new(300_000, Link::new(300e3), Sender::Fixed(rate));
            sim.run_for(5.0);
            let mut cuts = Vec::new();
            for _ in 0..100 {
                sim.run_for(0.1);
                if let Some(at) = sim.est.last_decrease()
                    && cuts.last() != Some(&at)
                {
                    cuts.push(at);
                }
            }
            eprintln!("{rate} on a 300k link: {} cuts in 10 s", cuts.len());
            if cut {
                assert!(cuts.len() >= 10, "{} cuts", cuts.len());
                assert!(sim.est.estimate() < 300_000, "{}", sim.est.estimate());
            } else {
                assert!(cuts.is_empty(), "{} cuts", cuts.len());
            }
        }
    }

    /// 5 % random loss on a fast link: loss-based holds at most; the estimate still grows.
    #[test]
    fn five_percent_random_loss_does_not_collapse() {
        let mut link = Link::new(20e6);
        link.loss = 0.05;
        let mut sim = Sim::new(1_000_000, link, Sender::Follow(3e6));
        sim.run_for(10.0);
        let (lo, _) = sim.range(0.0, 10.0);
        let end = sim.est.estimate();
        eprintln!(
            "5 % loss: min {lo}, after 10 s {end}, loss {}",
            sim.est.loss_fraction()
        );
        assert!(lo >= 900_000, "dropped to {lo}");
        assert!(end >= 3_000_000, "ended at {end}");
    }

    /// Up to 30 ms of jitter on a fast link is not mistaken for a queue.
    #[test]
    fn jitter_is_not_congestion() {
        let mut link = Link::new(20e6);
        link.jitter_us = 30_000.0;
        let mut sim = Sim::new(1_000_000, link, Sender::Follow(3e6));
        sim.run_for(15.0);
        let (lo, _) = sim.range(0.0, 15.0);
        let (lo_late, _) = sim.range(8.0, 15.0);
        eprintln!("30 ms jitter: min {lo}, from 8 s on at least {lo_late}");
        assert!(lo >= 900_000, "dropped to {lo}");
        assert!(lo_late >= 3_000_000, "from 8 s on as low as {lo_late}");
    }

    /// 20 % random loss: the loss-based limit pulls the estimate down.
    #[test]
    fn twenty_percent_loss_drops_the_estimate() {
        let mut link = Link::new(20e6);
        link.loss = 0.2;
        let mut sim = Sim::new(2_000_000, link, Sender::Follow(2e6));
        sim.run_for(5.0);
        let end = sim.est.estimate();
        eprintln!(
            "20 % loss: after 5 s {end}, loss {}",
            sim.est.loss_fraction()
        );
        assert!(end < 1_000_000, "ended at {end}");
        assert!(sim.est.loss_based().is_some());
    }

    fn received(seq: u16, at_us: i64) -> Arrival {
        Arrival {
            seq,
            at_us: Some(at_us),
        }
    }

    fn lost(seq: u16) -> Arrival {
        Arrival { seq, at_us: None }
    }

    /// Sends 65530..=65535, 0..=9 and one feedback across the wrap: all 16 are counted.
    #[test]
    fn feedback_across_the_sequence_wrap() {
        let t0 = Instant::now();
        let mut est = Estimator::new(1_000_000, t0);
        for i in 0..16u16 {
            let at = t0 + Duration::from_millis(u64::from(i) * 10);
            est.on_sent(65_530u16.wrapping_add(i), 1000, at);
        }
        let feedback: Vec<_> = (0..16u16)
            .map(|i| received(65_530u16.wrapping_add(i), i64::from(i) * 10_000))
            .collect();
        est.on_feedback(&feedback, t0 + Duration::from_millis(200));
        assert_eq!((est.window_received, est.window_lost), (16, 0));
        assert!(
            est.ring
                .iter()
                .filter(|s| s.fate != Fate::Empty)
                .all(|s| s.fate == Fate::Received)
        );
    }

    /// Arrival times across the 24-bit reference wrap read as continuing, not as a jump.
    #[test]
    fn arrival_times_across_the_reference_wrap() {
        let mut est = Estimator::new(1_000_000, Instant::now());
        let top = ((1i64 << 24) - 1) * 64_000;
        assert_eq!(est.unwrap_arrival(top), top);
        assert_eq!(est.unwrap_arrival(10_000), top + 64_000 + 10_000);
        assert_eq!(est.unwrap_arrival(top - 64_000), top - 64_000);
    }

    /// A duplicate feedback changes nothing; reordered ones count each packet once, and a
    /// packet first reported lost then received counts as received.
    #[test]
    fn reordered_and_duplicate_feedback() {
        let t0 = Instant::now();
        let mut est = Estimator::new(1_000_000, t0);
        for seq in 0..10u16 {
            est.on_sent(seq, 1000, t0 + Duration::from_millis(u64::from(seq) * 10));
        }
        let fb = |seqs: std::ops::Range<u16>| -> Vec<Arrival> {
            seqs.map(|s| {
                if s == 7 {
                    lost(s)
                } else {
                    received(s, 50_000 + i64::from(s) * 10_000)
                }
            })
            .collect()
        };
        let at = t0 + Duration::from_millis(150);
        // The later feedback first, then the earlier one, then the later one again.
        est.on_feedback(&fb(5..10), at);
        est.on_feedback(&fb(0..5), at);
        let snapshot = (est.window_received, est.window_lost, est.estimate());
        est.on_feedback(&fb(5..10), at);
        assert_eq!(
            (est.window_received, est.window_lost, est.estimate()),
            snapshot
        );
        assert_eq!((est.window_received, est.window_lost), (9, 1));
        // Seq 7 arrives late after all.
        est.on_feedback(&[received(7, 200_000)], at);
        assert_eq!((est.window_received, est.window_lost), (10, 0));
    }

    #[test]
    fn twcc_arrivals_stop_at_the_count_or_when_deltas_run_out() {
        let mut out = vec![lost(9)];
        twcc_arrivals(10, 0, 4, [1, 3, 0, 1, 1], [250, 500], &mut out);
        assert_eq!(
            out,
            [received(10, 250), lost(11), lost(12), received(13, 750)]
        );
        twcc_arrivals(10, 0, 9, [1, 1, 1], [250], &mut out);
        assert_eq!(out, [received(10, 250)]);
        twcc_arrivals(0, u32::MAX, 1, [2], [i64::MIN], &mut out);
        assert_eq!(out.len(), 1);
    }

    /// Nonsense in, no panic out, and the estimate stays within its bounds.
    #[test]
    fn malformed_inputs_never_panic() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        let mut est = Estimator::new(u32::MAX, later);
        assert_eq!(est.estimate(), MAX_BPS);
        let some: Vec<_> = (0..100).map(|s| received(s, i64::from(s) * 1000)).collect();
        // Feedback before anything was sent, and an empty one.
        est.on_feedback(&some, later);
        est.on_feedback(&[], later);
        // An instant before the epoch; sizes beyond u32.
        est.on_sent(0, usize::MAX, t0);
        est.on_sent(1, 0, later);
        // Seqs never sent (ahead of the newest, and far behind).
        let ahead: Vec<_> = (2..100).map(|s| received(s, 0)).collect();
        est.on_feedback(&ahead, later);
        let behind: Vec<_> = (30_000..30_100).map(|s| received(s, 0)).collect();
        est.on_feedback(&behind, later);
        // Extreme arrival times.
        let extreme = [received(0, i64::MAX), received(1, i64::MIN), received(0, 0)];
        est.on_feedback(&extreme, later);
        // Arrival times going backwards and jumping over many groups, sends spaced apart.
        for i in 0..200u16 {
            let at = later + Duration::from_millis(u64::from(i) * 7);
            est.on_sent(100 + i, 1200, at);
        }
        let mut at_us = 0i64;
        let backwards: Vec<_> = (0..200u16)
            .map(|i| {
                at_us += if i % 2 == 0 { -50_000 } else { 3_000_000_000 };
                received(100 + i, at_us)
            })
            .collect();
        est.on_feedback(&backwards, later + Duration::from_secs(2));
        // Time going backwards at the caller.
        est.on_feedback(&some, t0);
        let e = est.estimate();
        assert!((MIN_BPS..=MAX_BPS).contains(&e), "{e}");
        assert!(est.loss_fraction().is_finite());
    }

    /// Real Chromium feedback, recorded from the server for a subscriber whose link was
    /// capped at 300 kbit/s (`fixtures/twcc-capped-chromium.txt`), replayed as it came:
    /// what was sent and what the browser said of it. Open loop (the sends are those of
    /// the recording), so it checks the estimator's reading of a real browser's feedback,
    /// not the allocation.
    #[test]
    fn recorded_chromium_feedback_under_a_300k_cap() {
        let text = include_str!("../fixtures/twcc-capped-chromium.txt");
        let t0 = Instant::now();
        let at = |us: &str| t0 + Duration::from_micros(us.parse().expect("a time"));
        let mut est = Estimator::new(INITIAL_BPS, t0);
        let (mut cap, mut uncap) = (None, None);
        let mut arrivals = Vec::new();
        // (time after t0, estimate) after every feedback
        let mut trace: Vec<(Duration, u32)> = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut fields = line.split_whitespace();
            match (fields.next(), fields.next()) {
                (Some("cap"), Some(us)) => cap = Some(at(us) - t0),
                (Some("uncap"), Some(us)) => uncap = Some(at(us) - t0),
                (Some("s"), Some(us)) => {
                    let seq = fields.next().and_then(|v| v.parse().ok()).expect("seq");
                    let size = fields.next().and_then(|v| v.parse().ok()).expect("size");
                    est.on_sent(seq, size, at(us));
                }
                (Some("f"), Some(us)) => {
                    arrivals.clear();
                    for entry in fields {
                        let (seq, arrival) = entry.split_once(':').expect("seq:arrival");
                        arrivals.push(Arrival {
                            seq: seq.parse().expect("seq"),
                            at_us: arrival.parse().ok(),
                        });
                    }
                    est.on_feedback(&arrivals, at(us));
                    trace.push((at(us) - t0, est.estimate()));
                }
                _ => panic!("unreadable line {line:?}"),
            }
        }
        let (cap, uncap) = (cap.expect("cap"), uncap.expect("uncap"));
        let under = trace
            .iter()
            .find(|(t, e)| *t > cap && *e < 300_000)
            .map(|(t, _)| *t - cap)
            .expect("the estimate never went under the cap");
        let capped: Vec<u32> = trace
            .iter()
            .filter(|(t, _)| *t > cap + Duration::from_secs(3) && *t < uncap)
            .map(|(_, e)| *e)
            .collect();
        let (lo, hi) = (
            capped.iter().copied().min().expect("capped feedback"),
            capped.iter().copied().max().expect("capped feedback"),
        );
        let before_cap = trace
            .iter()
            .filter(|(t, _)| *t < cap)
            .map(|(_, e)| *e)
            .min()
            .expect("feedback before the cap");
        eprintln!(
            "recorded Chromium feedback: under 300k {:.2} s after the cap; from 3 s after it \
             {lo}..{hi}; lowest before the cap {before_cap}",
            under.as_secs_f64()
        );
        assert!(under <= Duration::from_millis(1500), "took {under:?}");
        assert!(lo >= 100_000, "collapsed to {lo}");
        // While the server sends well under the cap (one low layer and a paused video),
        // the estimate grows past it as the app-limited ceiling allows (measured: to 553k):
        // it cannot know better without a probe, and the allocator's held step is that.
        assert!(hi <= 600_000, "grew to {hi}");
        assert!(
            before_cap >= INITIAL_BPS,
            "cut before the cap: {before_cap}"
        );
    }
}
