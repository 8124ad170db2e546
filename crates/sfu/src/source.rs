//! What the worker knows of one published track's layers, sans-IO: per simulcast layer,
//! its bit rate as measured, its resolution (from its keyframes, or as the client declared
//! it), when it last sent, whether the publisher was asked to send it (dynacast), and the
//! keyframe requests sent to it. A track without simulcast has one layer, layer 0.
//!
//! The allocator weighs layers by [`SourceLayers::costs`]; the worker feeds packets in
//! with [`SourceLayers::on_packet`]. Nothing here knows about sockets or webrtc-rs.

use std::time::{Duration, Instant};

use crate::allocate::LayerCost;
use crate::layer::MAX_LAYER;

/// Minimum spacing of keyframe requests sent to one layer. Requests inside the window are
/// merged into one sent when it ends.
pub const KEYFRAME_THROTTLE: Duration = Duration::from_millis(500);

/// The window of the rate meter: long enough to hold several frames and a keyframe's
/// burst, short enough that a layer's rate is current within two windows.
pub const RATE_WINDOW: Duration = Duration::from_millis(500);

/// A layer that sent nothing for this long, while the publisher was asked to send it, is
/// not offered to the allocator: the browser does not send it (Chromium drops simulcast
/// layers for small captures and on a congested uplink). It is offered again once it
/// sends.
pub const LAYER_ABSENT_AFTER: Duration = Duration::from_secs(2);

/// How long an absent layer stays off offer before it is tried again: the browser may
/// start sending it by then (Chromium turns its upper layers on only as its own uplink
/// estimate grows, which can take longer than [`LAYER_ABSENT_AFTER`] at the start of a
/// call), and a try costs at most [`LAYER_ABSENT_AFTER`] on the old layer, which keeps
/// playing. Long enough that a layer the browser never sends is not asked for in a loop.
pub const LAYER_RETRY_AFTER: Duration = Duration::from_secs(5);

/// What a layer costs while nothing about it is known: the rates `chorus.js` configures.
const DEFAULT_COSTS: [LayerCost; 3] = [
    LayerCost {
        bitrate: 150_000,
        width: 320,
        height: 180,
    },
    LayerCost {
        bitrate: 500_000,
        width: 640,
        height: 360,
    },
    LayerCost {
        bitrate: 2_500_000,
        width: 1280,
        height: 720,
    },
];

/// Bits per second over fixed windows of [`RATE_WINDOW`].
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    /// The rate of the last full window.
    rate: Option<u32>,
}

impl RateMeter {
    pub fn record(&mut self, bytes: usize, now: Instant) {
        self.roll(now);
        self.bytes += bytes as u64;
    }

    fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed < RATE_WINDOW {
            return;
        }
        // A window followed by silence: the rate of the silence is zero.
        self.rate = Some(if elapsed < 2 * RATE_WINDOW {
            (self.bytes * 8 * 1000 / elapsed.as_millis().max(1) as u64) as u32
        } else {
            0
        });
        self.bytes = 0;
        self.window_start = Some(now);
    }

    /// The measured rate, `None` until one window has passed.
    pub fn rate(&mut self, now: Instant) -> Option<u32> {
        self.roll(now);
        self.rate
    }
}

/// Keyframe requests to one layer, at most one per [`KEYFRAME_THROTTLE`].
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyframeThrottle {
    last: Option<Instant>,
    pending: bool,
}

impl KeyframeThrottle {
    /// Whether a request may go out now; if not, one is marked pending for
    /// [`due`](Self::due).
    pub fn try_request(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|last| now < last + KEYFRAME_THROTTLE) {
            self.pending = true;
            return false;
        }
        self.last = Some(now);
        self.pending = false;
        true
    }

    /// When a merged request is due, if one is pending.
    pub fn due(&self) -> Option<Instant> {
        self.last
            .filter(|_| self.pending)
            .map(|last| last + KEYFRAME_THROTTLE)
    }
}

/// One layer of a published track.
#[derive(Debug, Clone, Default)]
pub struct LayerState {
    /// What the client said it configured (`publishOffer` layers).
    declared: Option<LayerCost>,
    meter: RateMeter,
    /// The rate the layer last had while it flowed: what it will cost when it flows again
    /// after a pause (dynacast, or a subscriber paused for bandwidth). The client's declared
    /// `maxBitrate` is a ceiling the encoder rarely reaches, and a layer weighed by it may
    /// never be given back to anyone.
    last_rate: Option<u32>,
    /// From the layer's latest keyframe.
    size: Option<(u16, u16)>,
    last_packet: Option<Instant>,
    /// Since when the publisher was asked to send it; `None` while dynacast paused it.
    wanted_since: Option<Instant>,
    /// Since when it is absent: wanted for [`LAYER_ABSENT_AFTER`] and sent nothing, or not
    /// declared by a client that declared others. Cleared by a packet, and tried again
    /// after [`LAYER_RETRY_AFTER`].
    absent_since: Option<Instant>,
    pub keyframes: KeyframeThrottle,
}

/// The layers of one published track.
#[derive(Debug, Clone)]
pub struct SourceLayers {
    layers: Vec<LayerState>,
}

impl SourceLayers {
    /// A track of `count` layers (1 without simulcast, at most 3), with what the client
    /// declared for each, lowest first, and every layer wanted from `now`. When the client
    /// declared some layers, those it did not declare are absent from the start: it
    /// offered their rids but does not send them (`chorus.js` leaves the top encodings of
    /// a small capture off), and offering them to the allocator would only delay a
    /// subscriber's first frame by [`LAYER_ABSENT_AFTER`].
    pub fn new(count: usize, declared: &[Option<LayerCost>], now: Instant) -> Self {
        let count = count.clamp(1, usize::from(MAX_LAYER) + 1);
        let any_declared = declared.iter().any(Option::is_some);
        let layers = (0..count)
            .map(|i| {
                let declared = declared.get(i).copied().flatten();
                LayerState {
                    declared,
                    wanted_since: Some(now),
                    absent_since: (any_declared && declared.is_none()).then_some(now),
                    ..Default::default()
                }
            })
            .collect();
        Self { layers }
    }

    pub fn count(&self) -> usize {
        self.layers.len()
    }

    /// The measured rate of `layer` while it flows; `None` before a window has passed and
    /// after [`LAYER_ABSENT_AFTER`] of silence.
    pub fn flowing_rate(&mut self, layer: u8, now: Instant) -> Option<u32> {
        let state = self.layers.get_mut(usize::from(layer))?;
        state
            .last_packet
            .filter(|&t| now.saturating_duration_since(t) < LAYER_ABSENT_AFTER)?;
        state.meter.rate(now).filter(|&r| r > 0)
    }

    pub fn layer_mut(&mut self, layer: u8) -> Option<&mut LayerState> {
        self.layers.get_mut(usize::from(layer))
    }

    /// One packet of `layer` arrived, weighing `bytes` on a subscriber's link, and the size
    /// of the keyframe it starts, if it starts one.
    pub fn on_packet(
        &mut self,
        layer: u8,
        bytes: usize,
        keyframe_size: Option<(u16, u16)>,
        now: Instant,
    ) {
        let Some(state) = self.layers.get_mut(usize::from(layer)) else {
            return;
        };
        state.meter.record(bytes, now);
        state.last_packet = Some(now);
        state.absent_since = None;
        if keyframe_size.is_some() {
            state.size = keyframe_size;
        }
    }

    /// Dynacast: the publisher is now asked to send exactly layers `0..=highest` (none
    /// when `None`).
    pub fn set_wanted(&mut self, highest: Option<u8>, now: Instant) {
        for (i, state) in self.layers.iter_mut().enumerate() {
            let wanted = highest.is_some_and(|h| i <= usize::from(h));
            match (wanted, state.wanted_since) {
                (true, None) => state.wanted_since = Some(now),
                (false, Some(_)) => state.wanted_since = None,
                _ => {}
            }
        }
    }

    /// The layers the allocator may choose from, lowest first, each with its cost: the
    /// measured rate where the layer is flowing, else the rate it last flowed at, else what
    /// the client declared, else [`DEFAULT_COSTS`]. The list stops below the first absent
    /// layer (see [`LAYER_ABSENT_AFTER`] and [`LAYER_RETRY_AFTER`]); layer 0 is always
    /// offered.
    pub fn costs(&mut self, now: Instant) -> Vec<LayerCost> {
        let mut out = Vec::with_capacity(self.layers.len());
        for (i, state) in self.layers.iter_mut().enumerate() {
            let silent = state
                .last_packet
                .is_none_or(|t| now.saturating_duration_since(t) >= LAYER_ABSENT_AFTER);
            match state.absent_since {
                Some(since) if now.saturating_duration_since(since) >= LAYER_RETRY_AFTER => {
                    // Offered again: dynacast asks for it once someone is given it, and
                    // it has LAYER_ABSENT_AFTER from then to show up.
                    state.absent_since = None;
                    state.wanted_since = None;
                }
                Some(_) => {}
                None if silent
                    && state.wanted_since.is_some_and(|t| {
                        now.saturating_duration_since(t) >= LAYER_ABSENT_AFTER
                    }) =>
                {
                    state.absent_since = Some(now);
                }
                None => {}
            }
            if state.absent_since.is_some() && i > 0 {
                break;
            }
            let fallback = state.declared.unwrap_or(DEFAULT_COSTS[i.min(2)]);
            let measured = if silent {
                None
            } else {
                state.meter.rate(now).filter(|&r| r > 0)
            };
            if measured.is_some() {
                state.last_rate = measured;
            }
            let (width, height) = state.size.unwrap_or((fallback.width, fallback.height));
            out.push(LayerCost {
                bitrate: state.last_rate.unwrap_or(fallback.bitrate),
                width,
                height,
            });
        }
        out
    }

    /// The earliest pending keyframe request of any layer.
    pub fn keyframe_due(&self) -> Option<Instant> {
        self.layers.iter().filter_map(|l| l.keyframes.due()).min()
    }

    /// The layers whose merged keyframe request is due at `now`.
    pub fn keyframes_due(&self, now: Instant) -> impl Iterator<Item = u8> + '_ {
        self.layers
            .iter()
            .enumerate()
            .filter(move |(_, l)| l.keyframes.due().is_some_and(|t| now >= t))
            .map(|(i, _)| i as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_meter_measures_a_full_window_and_falls_to_zero_in_silence() {
        let t0 = Instant::now();
        let mut meter = RateMeter::default();
        assert_eq!(meter.rate(t0), None);
        // 1250 bytes every 10 ms is 1 Mbit/s
        for i in 0..60 {
            meter.record(1250, t0 + ms(10 * i));
        }
        let rate = meter.rate(t0 + ms(600)).expect("one window");
        assert!((950_000..=1_050_000).contains(&rate), "{rate}");
        assert_eq!(meter.rate(t0 + ms(3000)), Some(0));
    }

    #[test]
    fn throttled_keyframe_requests_merge_into_one_due_at_the_window_end() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::default();
        assert!(k.try_request(t0));
        assert_eq!(k.due(), None);
        assert!(!k.try_request(t0 + ms(100)));
        assert!(!k.try_request(t0 + ms(200)));
        assert_eq!(k.due(), Some(t0 + KEYFRAME_THROTTLE));
        assert!(k.try_request(t0 + KEYFRAME_THROTTLE));
        assert_eq!(k.due(), None);
    }

    #[test]
    fn costs_come_from_measurement_then_declaration_then_defaults() {
        let t0 = Instant::now();
        let declared = LayerCost {
            bitrate: 100_000,
            width: 160,
            height: 90,
        };
        let mut one = SourceLayers::new(1, &[Some(declared)], t0);
        assert_eq!(one.costs(t0), [declared]);
        let mut layers = SourceLayers::new(3, &[], t0);
        assert_eq!(layers.costs(t0), DEFAULT_COSTS);
        for i in 0..60 {
            let size = (i == 0).then_some((336, 190));
            layers.on_packet(1, 1000, size, t0 + ms(10 * i));
            layers.on_packet(0, 200, None, t0 + ms(10 * i));
            layers.on_packet(2, 3000, None, t0 + ms(10 * i));
        }
        let costs = layers.costs(t0 + ms(600));
        assert_eq!((costs[1].width, costs[1].height), (336, 190));
        assert!((750_000..=850_000).contains(&costs[1].bitrate), "{costs:?}");
    }

    #[test]
    fn a_flowing_rate_is_measured_and_forgotten_after_silence() {
        let t0 = Instant::now();
        let mut audio = SourceLayers::new(1, &[], t0);
        assert_eq!(audio.flowing_rate(0, t0), None);
        // 50 packets a second of 180 bytes on the link: 72 kbit/s
        for i in 0..50 {
            audio.on_packet(0, 180, None, t0 + ms(20 * i));
        }
        let rate = audio.flowing_rate(0, t0 + ms(1000)).expect("measured");
        assert!((65_000..=80_000).contains(&rate), "{rate}");
        assert_eq!(
            audio.flowing_rate(0, t0 + ms(980) + LAYER_ABSENT_AFTER),
            None
        );
        assert_eq!(audio.flowing_rate(3, t0), None);
    }

    #[test]
    fn a_wanted_layer_that_never_sends_is_not_offered_until_it_does() {
        let t0 = Instant::now();
        let mut layers = SourceLayers::new(3, &[], t0);
        for i in 0..300 {
            layers.on_packet(0, 200, None, t0 + ms(10 * i));
            layers.on_packet(1, 800, None, t0 + ms(10 * i));
        }
        assert_eq!(layers.costs(t0 + ms(1000)).len(), 3, "too early to tell");
        assert_eq!(layers.costs(t0 + ms(3000)).len(), 2, "f never came");
        // dynacast pauses it and resumes it: it stays absent until it sends
        layers.set_wanted(Some(1), t0 + ms(3000));
        layers.set_wanted(Some(2), t0 + ms(4000));
        layers.on_packet(0, 200, None, t0 + ms(4000));
        layers.on_packet(1, 800, None, t0 + ms(4000));
        assert_eq!(layers.costs(t0 + ms(4000)).len(), 2);
        layers.on_packet(2, 3000, None, t0 + ms(4010));
        assert_eq!(layers.costs(t0 + ms(4020)).len(), 3);
    }

    #[test]
    fn an_absent_layer_is_tried_again_and_drops_out_if_it_still_does_not_come() {
        let t0 = Instant::now();
        let mut layers = SourceLayers::new(3, &[], t0);
        let feed = |layers: &mut SourceLayers, from: u64, to: u64| {
            for i in from..to {
                layers.on_packet(0, 200, None, t0 + ms(10 * i));
                layers.on_packet(1, 800, None, t0 + ms(10 * i));
            }
        };
        feed(&mut layers, 0, 300);
        assert_eq!(layers.costs(t0 + ms(3000)).len(), 2, "f never came");
        feed(&mut layers, 300, 700);
        assert_eq!(layers.costs(t0 + ms(7_000)).len(), 2, "not yet retried");
        let retry = t0 + ms(3000) + LAYER_RETRY_AFTER;
        assert_eq!(layers.costs(retry).len(), 3, "offered again");
        // Someone is given f: dynacast asks for it; it does not come within the window.
        layers.set_wanted(Some(2), retry);
        feed(&mut layers, 800, 1100);
        let later = retry + LAYER_ABSENT_AFTER + ms(100);
        assert_eq!(layers.costs(later).len(), 2, "absent again");
    }

    #[test]
    fn layers_a_client_did_not_declare_are_absent_from_the_start() {
        let t0 = Instant::now();
        let q = LayerCost {
            bitrate: 300_000,
            width: 320,
            height: 180,
        };
        let mut layers = SourceLayers::new(3, &[Some(q), None, None], t0);
        assert_eq!(layers.costs(t0), [q]);
        // Without any declaration, every offered rid is on offer until shown absent.
        let mut undeclared = SourceLayers::new(3, &[], t0);
        assert_eq!(undeclared.costs(t0).len(), 3);
    }

    #[test]
    fn a_layer_paused_by_dynacast_stays_on_offer() {
        let t0 = Instant::now();
        let mut layers = SourceLayers::new(3, &[], t0);
        layers.set_wanted(Some(0), t0);
        for i in 0..500 {
            layers.on_packet(0, 200, None, t0 + ms(10 * i));
        }
        let costs = layers.costs(t0 + ms(5000));
        assert_eq!(costs.len(), 3, "h and f can be resumed: {costs:?}");
        assert_eq!(costs[2], DEFAULT_COSTS[2]);
        layers.set_wanted(None, t0 + ms(5000));
        assert_eq!(layers.costs(t0 + ms(9000)).len(), 3);
    }

    #[test]
    fn a_paused_layer_costs_what_it_last_flowed_at() {
        let t0 = Instant::now();
        let declared = LayerCost {
            bitrate: 2_500_000,
            width: 1280,
            height: 720,
        };
        let mut layers = SourceLayers::new(1, &[Some(declared)], t0);
        assert_eq!(
            layers.costs(t0)[0].bitrate,
            2_500_000,
            "nothing measured yet"
        );
        // 400 bytes every 10 ms: 320 kbit/s
        for i in 0..100 {
            layers.on_packet(0, 400, None, t0 + ms(10 * i));
        }
        let flowing = layers.costs(t0 + ms(1000))[0].bitrate;
        assert!((300_000..=340_000).contains(&flowing), "{flowing}");
        // Dynacast stops it; long after, it is still weighed at what it sent.
        layers.set_wanted(None, t0 + ms(1000));
        assert_eq!(layers.costs(t0 + ms(30_000))[0].bitrate, flowing);
    }
}
