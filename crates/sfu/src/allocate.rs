//! Allocation: which simulcast layer each of one subscriber's video subscriptions gets,
//! sharing that subscriber's downlink estimate among them. Sans-IO: estimates, tile sizes
//! and instants go in, choices come out; nothing here knows about sockets or webrtc-rs.
//!
//! The order of claims on the estimate:
//! 1. audio, always (a call without video is still a call; without audio it is not);
//! 2. screen shares, then the active speaker, then everyone else, each first at its lowest
//!    layer, so that as many participants as possible are seen at all;
//! 3. then upgrades in the same order, each capped by the size at which the subscriber
//!    shows the tile (a 320 px tile gains nothing from a 1280 px layer).
//!
//! A video whose lowest layer does not fit is paused, and so is a hidden tile. Downgrades
//! happen at once (congestion costs frames now); upgrades wait [`UPGRADE_HOLD`] after the
//! last downgrade and then climb one layer per [`UPGRADE_STEP`], because an estimate that
//! has just recovered is the least trustworthy one, and a layer switch costs a keyframe.
//!
//! The estimate forces downgrades only while congestion is recent ([`CONGESTION_MEMORY`]
//! after the estimator last cut it): otherwise the server sends less than the link could
//! carry, and a low estimate is no reason to take layers away. A move up a layer needs
//! room in the estimate, whose app-limited ceiling leaves room to try the next layer (the
//! held, one-layer, one-subscription step up is the probe). A step the link cannot carry
//! shows as congestion within a feedback or two, is undone at once, and doubles the hold
//! before the next try (up to [`MAX_UPGRADE_HOLD`]).
//!
//! A paused video's return needs more than room in the estimate: the link must have been
//! seen to deliver what flows plus the video's lowest layer, with room to spare. The
//! subscriber's peer probes for it with padding first ([`crate::probe`]): a resume
//! starts with a keyframe, the largest burst a video sends, so on a link that cannot take
//! it the first thing lost would be the audio queued behind it. A subscriber without an
//! estimate (no transport-cc) gets its video back without proof.

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use chorus_protocol::PauseReason;
use chorus_protocol::TrackId;

use crate::probe::{Probe, Prober};

/// How long after a downgrade no subscription of the subscriber moves up again: long enough
/// that a congested link's estimate has settled, short enough that a lifted cap is noticed
/// within the 10 s a user forgives.
pub const UPGRADE_HOLD: Duration = Duration::from_secs(3);

/// The longest hold after steps up that the link could not carry: a link that stays
/// capped is tried at most this often, and a lifted cap is still noticed and climbed to the
/// top layer within the 10 s a user forgives.
pub const MAX_UPGRADE_HOLD: Duration = Duration::from_secs(6);

/// How long after the estimator's last cut its estimate limits the allocation: long enough
/// to span the allocation passes after a cut and the estimator's hold, short enough that a
/// false alarm (a burst of jitter) costs no more than one downgrade.
pub const CONGESTION_MEMORY: Duration = Duration::from_secs(3);

/// The share of a flowing video's lowest layer that must fit in what is left of the
/// estimate for the video to be kept rather than paused. Below one because pausing is the
/// one move that takes a picture away: an estimate just after a cut (0.85 of what arrived)
/// must not pause a single-layer video that was flowing, while a link that carries well
/// under its rate still pauses it. A paused video comes back only when all of its lowest
/// layer fits: the gap between the two keeps a video from flapping on a link that carries
/// about its rate.
pub const LOWEST_LAYER_FIT: f64 = 0.6;

/// A binding estimate under this share of what flows is a deep cut, not a shallow one:
/// the link fell far below the allocation (a cap, a handover to a slower network), not
/// just under it (one overuse cut is 0.85 × what arrives). Then a flowing video is kept
/// only when all of its lowest layer fits: keeping it costs its keyframe on a link whose
/// buffer is already full, and the audio queued behind both.
pub const DEEP_CUT: f64 = 0.7;

/// How long congestion must have gone on (the estimator cutting again and again, each cut
/// within [`CONGESTION_MEMORY`] of the one before) before a flowing video is kept only
/// when all of its lowest layer fits: a shallow cut, or the first reaction to a drop, keeps
/// it at [`LOWEST_LAYER_FIT`]; a link still congested a second later does not carry it,
/// and keeping it holds the bottleneck's buffer full, the audio waiting behind it.
pub const PERSISTENT_CONGESTION: Duration = Duration::from_secs(1);

/// The least time between two upward steps of one subscriber's allocation. Each step adds
/// at most one layer per subscription, so the estimate sees the new rate before the next.
pub const UPGRADE_STEP: Duration = Duration::from_secs(1);

/// One simulcast layer of a video track, as the allocator weighs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerCost {
    /// What the layer costs on the wire, in bits per second (measured, or the publisher's
    /// declared maximum while it is not being sent).
    pub bitrate: u32,
    pub width: u16,
    pub height: u16,
}

/// How much a video matters to this subscriber, most important first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Importance {
    Screen,
    Speaker,
    Other,
}

/// How the subscriber shows a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    /// The client has not said: no cap.
    Unknown,
    /// Off-screen or hidden: the video is paused.
    Hidden,
    /// Shown at this many CSS pixels (times the device pixel ratio).
    Size { width: u16, height: u16 },
}

impl Tile {
    /// The tile a client's `trackSettings` describe: sizes in device pixels, 0 for unknown.
    /// Sizes beyond 16 bits are far beyond any layer, which is what they mean.
    pub fn from_settings(visible: bool, width: u32, height: u32) -> Self {
        if !visible {
            return Tile::Hidden;
        }
        if width == 0 || height == 0 {
            return Tile::Unknown;
        }
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        Tile::Size {
            width: clamp(width),
            height: clamp(height),
        }
    }
}

/// One subscription, as the allocator sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    Audio {
        bitrate: u32,
    },
    Video {
        importance: Importance,
        /// Lowest first. A track without simulcast has one.
        layers: Vec<LayerCost>,
        tile: Tile,
    },
}

/// What one subscription gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Audio is always forwarded.
    Audio,
    /// This layer (0 is the lowest).
    Layer(u8),
    Paused(PauseReason),
}

impl Choice {
    /// The layer a video is on, or none.
    pub fn layer(self) -> Option<u8> {
        match self {
            Choice::Layer(layer) => Some(layer),
            _ => None,
        }
    }
}

/// What the allocator knows of one subscriber's downlink: the estimator's figure, when it
/// last cut it, and what arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// In bits per second.
    pub bps: u32,
    /// When the estimator last cut the estimate for congestion (overuse or loss).
    pub congested_at: Option<Instant>,
    /// What arrives at the subscriber now (bits per second), once known.
    pub acked_bps: Option<u32>,
}

impl Estimate {
    /// Whether the estimate binds at `now`: the estimator cut it less than
    /// [`CONGESTION_MEMORY`] ago.
    pub fn binding(&self, now: Instant) -> bool {
        self.congested_at
            .is_some_and(|t| now.saturating_duration_since(t) < CONGESTION_MEMORY)
    }
}

/// The allocation state of one subscriber: what it got last time, and when it last moved.
#[derive(Debug, Default)]
pub struct Allocator {
    previous: HashMap<TrackId, Choice>,
    last_downgrade: Option<Instant>,
    last_upgrade: Option<Instant>,
    /// Steps up in a row that were undone by congestion within [`UPGRADE_HOLD`]: each
    /// doubles the hold before the next.
    failed_steps: u32,
    /// Probes for the return of paused videos.
    prober: Prober,
    /// The current congestion episode: its first cut and its latest.
    episode: Option<(Instant, Instant)>,
    /// The last probe's span: from its start until the feedback on its padding has come
    /// ([`PROBE_ECHO`] after its last pass). A cut within it is the probe's.
    probe_span: Option<(Instant, Instant)>,
    /// The estimator's last cut that was not a probe's.
    real_cut: Option<Instant>,
}

/// How long after a probe's padding stops a cut is still the probe's: the feedback on the
/// last padding takes a round trip and a feedback interval to come (about 100 ms on a LAN,
/// a few hundred on a long path).
pub const PROBE_ECHO: Duration = Duration::from_millis(400);

/// The highest layer worth sending into `tile`: the lowest one that covers it, or the top
/// layer when none does.
fn cap(layers: &[LayerCost], tile: Tile) -> usize {
    let top = layers.len().saturating_sub(1);
    match tile {
        Tile::Unknown | Tile::Hidden => top,
        Tile::Size { width, height } => layers
            .iter()
            .position(|l| l.width >= width && l.height >= height)
            .unwrap_or(top),
    }
}

/// A rank that orders choices by how much they send: paused < layer 0 < layer 1 ...
fn rank(choice: Option<Choice>) -> i16 {
    match choice {
        Some(Choice::Layer(layer)) => i16::from(layer),
        _ => -1,
    }
}

impl Allocator {
    /// Shares the subscriber's downlink among `claims` at `now` (`estimate` `None`: none, as
    /// for a client that gives no transport-cc feedback). Returns one choice per claim, in
    /// the order given. Subscriptions no longer claimed are forgotten.
    pub fn allocate(
        &mut self,
        estimate: Option<Estimate>,
        claims: &[(TrackId, Claim)],
        now: Instant,
    ) -> Vec<(TrackId, Choice)> {
        let estimate = estimate.map(|e| self.without_probe_cuts(e, now));
        let budget = match estimate {
            Some(estimate) if estimate.binding(now) => estimate.bps,
            _ => u32::MAX,
        };
        // A shallow cut keeps a flowing video a little under its lowest layer; a deep one
        // (the link fell far below what flows), or congestion that goes on, does not.
        let deep = f64::from(budget) < DEEP_CUT * f64::from(flowing_total(claims, &self.previous));
        let keep_fit = if deep || self.persistent_congestion(estimate, now) {
            1.0
        } else {
            LOWEST_LAYER_FIT
        };
        let ideal = ideal_fn(budget, claims, &self.previous, keep_fit);
        // How far the estimate itself would go: a move up a layer must fit in it (the
        // estimator's app-limited ceiling leaves room to try the next layer). A paused
        // video's return goes by proof instead (`proven_resumes`).
        let room: HashMap<TrackId, Choice> = match estimate {
            Some(estimate) if budget == u32::MAX => {
                ideal_fn(estimate.bps, claims, &self.previous, keep_fit)
            }
            _ => ideal.clone(),
        }
        .into_iter()
        .collect();
        let downgraded = ideal
            .iter()
            .any(|(track, choice)| rank(Some(*choice)) < rank(self.previous.get(track).copied()));
        if let Some(up) = self.last_upgrade {
            let since_up = now.saturating_duration_since(up);
            if downgraded && since_up < UPGRADE_HOLD {
                self.failed_steps = self.failed_steps.saturating_add(1);
            } else if since_up >= UPGRADE_HOLD && self.last_downgrade.is_none_or(|down| down < up) {
                self.failed_steps = 0;
            }
        }
        if downgraded {
            self.last_downgrade = Some(now);
        }
        let hold = UPGRADE_HOLD
            .saturating_mul(1 << self.failed_steps.min(4))
            .min(MAX_UPGRADE_HOLD);
        let held = self
            .last_downgrade
            .is_none_or(|t| now.saturating_duration_since(t) >= hold);
        let may_step_up = held
            && self
                .last_upgrade
                .is_none_or(|t| now.saturating_duration_since(t) >= UPGRADE_STEP);
        // While the estimate does not bind, a step up is its own try: one subscription steps
        // per pass, the most important first, so that a link that cannot carry it loses
        // one step's worth, not every subscription's.
        let stepping = (budget == u32::MAX)
            .then(|| self.first_step(&ideal, &room, claims))
            .flatten();
        // Paused videos come back only as far as the link was seen to carry them.
        // A probe may run while the step before it settles: it only pads, and the step it
        // is for still waits for `may_step_up`.
        let proven = self.proven_resumes(estimate, &ideal, claims, held, now);
        let mut stepped = false;
        let mut resumed = false;
        let out: Vec<(TrackId, Choice)> = ideal
            .into_iter()
            .map(|(track, choice)| {
                let before = self.previous.get(&track).copied();
                let Choice::Layer(want) = choice else {
                    return (track, choice);
                };
                let now_on = match before {
                    Some(Choice::Layer(layer)) => Some(layer),
                    // A new subscription, or one coming back into view, starts at its
                    // lowest layer; a video paused for bandwidth waits for a step.
                    None | Some(Choice::Paused(PauseReason::NotVisible)) => {
                        return (track, Choice::Layer(0));
                    }
                    _ => None,
                };
                let no_room =
                    now_on.is_some_and(|layer| rank(room.get(&track).copied()) <= i16::from(layer));
                let waits = match (now_on, &proven) {
                    (None, Some(proven)) => !proven.contains(&track),
                    _ => stepping.is_some_and(|first| first != track),
                };
                match now_on {
                    Some(layer) if want <= layer => (track, choice),
                    _ if !may_step_up || no_room || waits => (
                        track,
                        before.unwrap_or(Choice::Paused(PauseReason::LowBandwidth)),
                    ),
                    next => {
                        stepped = true;
                        resumed |= next.is_none();
                        (track, Choice::Layer(next.map_or(0, |l| l + 1)))
                    }
                }
            })
            .collect();
        if stepped {
            self.last_upgrade = Some(now);
        }
        if resumed {
            self.prober.succeeded();
        } else if let Some(probe) = self.prober.current() {
            let still_paused = out.iter().any(|(track, choice)| {
                *track == probe.track && *choice == Choice::Paused(PauseReason::LowBandwidth)
            });
            if !still_paused {
                self.prober.forget();
            }
        }
        self.previous = out.iter().copied().collect();
        out
    }

    /// Ends the probe under way when its time is up or the estimator cut for it, and
    /// returns the estimate as the rest of the allocation sees it: a cut that a probe
    /// caused (its padding overran the link) says the probe failed, not that what flows
    /// does not fit, so it neither binds nor joins a congestion episode; the last cut
    /// before it stands instead.
    fn without_probe_cuts(&mut self, mut estimate: Estimate, now: Instant) -> Estimate {
        if let Some(probe) = self.prober.current() {
            self.probe_span = Some((probe.since, now + PROBE_ECHO));
        }
        self.prober
            .update(estimate.congested_at, estimate.acked_bps, now);
        match estimate.congested_at {
            Some(cut)
                if self
                    .probe_span
                    .is_some_and(|(from, to)| cut >= from && cut <= to) =>
            {
                estimate.congested_at = self.real_cut;
            }
            Some(cut) => self.real_cut = Some(cut),
            None => {}
        }
        estimate
    }

    /// Follows the estimator's cuts into episodes; whether the one under way binds at
    /// `now` and has lasted [`PERSISTENT_CONGESTION`].
    fn persistent_congestion(&mut self, estimate: Option<Estimate>, now: Instant) -> bool {
        let Some(estimate) = estimate else {
            return false;
        };
        let Some(cut) = estimate.congested_at else {
            return false;
        };
        let (first, last) = match self.episode {
            Some((first, last)) if cut <= last => (first, last),
            Some((first, last)) if cut.saturating_duration_since(last) < CONGESTION_MEMORY => {
                (first, cut)
            }
            _ => (cut, cut),
        };
        self.episode = Some((first, last));
        estimate.binding(now) && last.saturating_duration_since(first) >= PERSISTENT_CONGESTION
    }

    /// The probe the subscriber's peer should be sending padding for, if any.
    pub fn probe(&self) -> Option<Probe> {
        self.prober.current()
    }

    /// Of the videos paused for bandwidth that `ideal` brings back, the ones a probe showed
    /// the link carrying with what already flows, the most important first; for the first
    /// that it did not, asks for a probe (when `may_probe`: the hold after a downgrade is
    /// over).
    /// `None` for a subscriber without an estimate: nothing to prove anything with, so
    /// paused videos come back as the estimate-less allocation says.
    fn proven_resumes(
        &mut self,
        estimate: Option<Estimate>,
        ideal: &[(TrackId, Choice)],
        claims: &[(TrackId, Claim)],
        may_probe: bool,
        now: Instant,
    ) -> Option<Vec<TrackId>> {
        let estimate = estimate?;
        // Not while a probe is under way: its first feedback can show a rate the link
        // carried only from a buffer that was empty (a token bucket's burst), before the
        // queue its excess builds shows; a probe that lasts its time without a cut has
        // shown the rate is sustained.
        if self.prober.current().is_some() {
            return Some(Vec::new());
        }
        let mut waiting: Vec<(Importance, TrackId, u32)> = ideal
            .iter()
            .zip(claims)
            .filter(|((track, choice), _)| {
                matches!(choice, Choice::Layer(_))
                    && self.previous.get(track) == Some(&Choice::Paused(PauseReason::LowBandwidth))
            })
            .filter_map(|((track, _), (_, claim))| match claim {
                Claim::Video {
                    importance, layers, ..
                } => Some((*importance, *track, layers.first()?.bitrate)),
                Claim::Audio { .. } => None,
            })
            .collect();
        waiting.sort_unstable();
        let mut total = flowing_total(claims, &self.previous);
        let mut proven = Vec::new();
        for (_, track, cost) in waiting {
            let needed = total.saturating_add(cost);
            if self.prober.shows(needed, now) {
                proven.push(track);
                total = needed;
                continue;
            }
            if may_probe {
                self.prober.want(track, needed, estimate.acked_bps, now);
            }
            break;
        }
        Some(proven)
    }

    /// Of the subscriptions `ideal` would move up from where they are, the one a calm
    /// pass steps: a paused one before one on a layer, then the most important, then the
    /// lowest track id.
    fn first_step(
        &self,
        ideal: &[(TrackId, Choice)],
        room: &HashMap<TrackId, Choice>,
        claims: &[(TrackId, Claim)],
    ) -> Option<TrackId> {
        ideal
            .iter()
            .zip(claims)
            .filter(|((track, choice), _)| {
                let before = self.previous.get(track).copied();
                rank(Some(*choice)) > rank(before)
                    && match before {
                        Some(Choice::Paused(PauseReason::LowBandwidth)) => true,
                        Some(Choice::Layer(layer)) => {
                            rank(room.get(track).copied()) > i16::from(layer)
                        }
                        _ => false,
                    }
            })
            // Videos paused for bandwidth come back before any moves up a layer, as in
            // `ideal`: as many participants as possible are seen at all.
            .min_by_key(|((track, _), (_, claim))| {
                let moving_up = matches!(self.previous.get(track), Some(Choice::Layer(_)));
                let importance = match claim {
                    Claim::Video { importance, .. } => *importance,
                    Claim::Audio { .. } => Importance::Other,
                };
                (moving_up, importance, *track)
            })
            .map(|((track, _), _)| *track)
    }
}

/// The best allocation for `estimate`, ignoring history: audio first, then every visible
/// video at its lowest layer in order of importance, then upgrades in the same order. A
/// video flowing in `previous` keeps its lowest layer when `keep_fit` of it fits.
fn ideal_fn(
    estimate: u32,
    claims: &[(TrackId, Claim)],
    previous: &HashMap<TrackId, Choice>,
    keep_fit: f64,
) -> Vec<(TrackId, Choice)> {
    let mut budget = i64::from(estimate);
    for (_, claim) in claims {
        if let Claim::Audio { bitrate } = claim {
            budget -= i64::from(*bitrate);
        }
    }
    let mut videos: Vec<(usize, Importance, &[LayerCost], Tile)> = claims
        .iter()
        .enumerate()
        .filter_map(|(i, (_, claim))| match claim {
            Claim::Video {
                importance,
                layers,
                tile,
            } if !layers.is_empty() && *tile != Tile::Hidden => {
                Some((i, *importance, layers.as_slice(), *tile))
            }
            _ => None,
        })
        .collect();
    videos.sort_by_key(|(i, importance, _, _)| (*importance, claims[*i].0));
    let mut layer: Vec<Option<usize>> = vec![None; claims.len()];
    for (i, _, layers, _) in &videos {
        let cost = i64::from(layers[0].bitrate);
        let flowing = matches!(previous.get(&claims[*i].0), Some(Choice::Layer(_)));
        let fit = if flowing { keep_fit } else { 1.0 };
        if (cost as f64 * fit) as i64 <= budget {
            budget -= cost;
            layer[*i] = Some(0);
        }
    }
    for (i, _, layers, tile) in &videos {
        let Some(mut on) = layer[*i] else { continue };
        while on < cap(layers, *tile) {
            let extra = i64::from(layers[on + 1].bitrate) - i64::from(layers[on].bitrate);
            if extra > budget {
                break;
            }
            budget -= extra;
            on += 1;
        }
        layer[*i] = Some(on);
    }
    claims
        .iter()
        .zip(layer)
        .map(|((track, claim), on)| {
            let choice = match (claim, on) {
                (Claim::Audio { .. }, _) => Choice::Audio,
                (_, Some(on)) => Choice::Layer(on as u8),
                (
                    Claim::Video {
                        tile: Tile::Hidden, ..
                    },
                    None,
                ) => Choice::Paused(PauseReason::NotVisible),
                (Claim::Video { .. }, None) => Choice::Paused(PauseReason::LowBandwidth),
            };
            (*track, choice)
        })
        .collect()
}

/// What the subscriber's subscriptions send as `previous` left them, in bits per second:
/// every audio track, and every video on its layer.
fn flowing_total(claims: &[(TrackId, Claim)], previous: &HashMap<TrackId, Choice>) -> u32 {
    claims
        .iter()
        .map(|(track, claim)| match (claim, previous.get(track)) {
            (Claim::Audio { bitrate }, _) => *bitrate,
            (Claim::Video { layers, .. }, Some(Choice::Layer(layer))) => layers
                .get(usize::from(*layer))
                .or(layers.last())
                .map_or(0, |l| l.bitrate),
            (Claim::Video { .. }, _) => 0,
        })
        .fold(0u32, u32::saturating_add)
}

/// Dynacast: the highest layer any subscriber gets of a track, given every subscriber's
/// choice for it. Layers above it need not be sent by the publisher; `None` means no
/// layer at all is needed.
pub fn highest_needed(choices: impl IntoIterator<Item = Choice>) -> Option<u8> {
    choices.into_iter().filter_map(Choice::layer).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chromium's three camera layers as the client publishes them.
    fn camera() -> Vec<LayerCost> {
        vec![
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
        ]
    }

    fn video(importance: Importance, tile: Tile) -> Claim {
        Claim::Video {
            importance,
            layers: camera(),
            tile,
        }
    }

    const AUDIO: Claim = Claim::Audio { bitrate: 40_000 };

    /// An estimate the estimator cut at `at`: it binds.
    fn congested(bps: u32, at: Instant) -> Option<Estimate> {
        Some(Estimate {
            bps,
            congested_at: Some(at),
            acked_bps: None,
        })
    }

    /// An estimate with no congestion seen: it does not bind.
    fn calm(bps: u32) -> Option<Estimate> {
        Some(Estimate {
            bps,
            congested_at: None,
            acked_bps: None,
        })
    }

    fn one_layer(bitrate: u32) -> Claim {
        Claim::Video {
            importance: Importance::Other,
            layers: vec![LayerCost {
                bitrate,
                width: 1280,
                height: 720,
            }],
            tile: Tile::Unknown,
        }
    }

    fn choices(out: &[(TrackId, Choice)]) -> Vec<Choice> {
        out.iter().map(|(_, c)| *c).collect()
    }

    /// A subscriber that has been on `claims` at a steady `estimate` long enough to have
    /// climbed to its ideal.
    fn settled(estimate: u32, claims: &[(TrackId, Claim)], t0: Instant) -> (Allocator, Instant) {
        let mut alloc = Allocator::default();
        let mut t = t0;
        for _ in 0..6 {
            alloc.allocate(calm(estimate), claims, t);
            t += UPGRADE_STEP;
        }
        (alloc, t)
    }

    #[test]
    fn audio_goes_first_and_a_video_that_does_not_fit_is_paused() {
        let claims = [
            (TrackId(1), AUDIO),
            (TrackId(2), video(Importance::Other, Tile::Unknown)),
        ];
        let mut alloc = Allocator::default();
        let now = Instant::now();
        let out = alloc.allocate(congested(100_000, now), &claims, now);
        assert_eq!(
            choices(&out),
            [Choice::Audio, Choice::Paused(PauseReason::LowBandwidth)]
        );
    }

    #[test]
    fn screen_then_speaker_then_the_others_get_the_estimate() {
        let claims = [
            (TrackId(1), video(Importance::Other, Tile::Unknown)),
            (TrackId(2), video(Importance::Speaker, Tile::Unknown)),
            (TrackId(3), video(Importance::Screen, Tile::Unknown)),
        ];
        // Room for three low layers and one step up (150 * 3 + 350 = 800 k): the screen
        // takes the step.
        let out = ideal_fn(800_000, &claims, &HashMap::new(), LOWEST_LAYER_FIT);
        assert_eq!(
            choices(&out),
            [Choice::Layer(0), Choice::Layer(0), Choice::Layer(1)]
        );
        // Room for two low layers only: the least important video is the one paused.
        let out = ideal_fn(300_000, &claims, &HashMap::new(), LOWEST_LAYER_FIT);
        assert_eq!(
            choices(&out),
            [
                Choice::Paused(PauseReason::LowBandwidth),
                Choice::Layer(0),
                Choice::Layer(0)
            ]
        );
    }

    #[test]
    fn a_small_tile_caps_the_layer_and_a_hidden_one_pauses() {
        let claims = [
            (
                TrackId(1),
                video(
                    Importance::Other,
                    Tile::Size {
                        width: 300,
                        height: 170,
                    },
                ),
            ),
            (
                TrackId(2),
                video(
                    Importance::Other,
                    Tile::Size {
                        width: 600,
                        height: 340,
                    },
                ),
            ),
            (TrackId(3), video(Importance::Other, Tile::Hidden)),
            (
                TrackId(4),
                video(
                    Importance::Other,
                    Tile::Size {
                        width: 1920,
                        height: 1080,
                    },
                ),
            ),
        ];
        let out = ideal_fn(10_000_000, &claims, &HashMap::new(), LOWEST_LAYER_FIT);
        assert_eq!(
            choices(&out),
            [
                Choice::Layer(0),
                Choice::Layer(1),
                Choice::Paused(PauseReason::NotVisible),
                Choice::Layer(2)
            ]
        );
    }

    #[test]
    fn a_drop_in_the_estimate_downgrades_at_once() {
        let t0 = Instant::now();
        let claims = [
            (TrackId(1), AUDIO),
            (TrackId(2), video(Importance::Other, Tile::Unknown)),
        ];
        let (mut alloc, t) = settled(5_000_000, &claims, t0);
        assert_eq!(
            choices(&alloc.allocate(calm(5_000_000), &claims, t)),
            [Choice::Audio, Choice::Layer(2)]
        );
        // The link is capped at 300 kbit/s: the very next allocation is on the low layer.
        let t = t + Duration::from_millis(100);
        assert_eq!(
            choices(&alloc.allocate(congested(300_000, t), &claims, t)),
            [Choice::Audio, Choice::Layer(0)]
        );
        let t = t + Duration::from_millis(100);
        assert_eq!(
            choices(&alloc.allocate(congested(120_000, t), &claims, t)),
            [Choice::Audio, Choice::Paused(PauseReason::LowBandwidth)]
        );
    }

    #[test]
    fn recovery_waits_for_the_hold_then_climbs_one_layer_per_step() {
        let t0 = Instant::now();
        let claims = [(TrackId(2), video(Importance::Other, Tile::Unknown))];
        let (mut alloc, t) = settled(5_000_000, &claims, t0);
        alloc.allocate(congested(50_000, t), &claims, t);
        // The cap is lifted 100 ms later: nothing moves until the hold has passed. Then a
        // probe (the link delivers what it pads) brings the video back, and it climbs.
        let mut at = t + Duration::from_millis(100);
        let mut seen = Vec::new();
        while at < t + Duration::from_secs(10) {
            let estimate = arriving(congested(5_000_000, t), 190_000);
            let choice = alloc.allocate(estimate, &claims, at)[0].1;
            if seen.last() != Some(&(choice)) {
                seen.push(choice);
                if choice == Choice::Layer(0) {
                    assert!(at - t >= UPGRADE_HOLD, "no step before the hold ends");
                }
            }
            at += Duration::from_millis(100);
        }
        assert_eq!(
            seen,
            [
                Choice::Paused(PauseReason::LowBandwidth),
                Choice::Layer(0),
                Choice::Layer(1),
                Choice::Layer(2)
            ],
            "one layer per step, back on the top layer within 10 s"
        );
    }

    #[test]
    fn a_tile_coming_into_view_starts_low_without_waiting() {
        let t0 = Instant::now();
        let hidden = [(TrackId(1), video(Importance::Other, Tile::Hidden))];
        let (mut alloc, t) = settled(5_000_000, &hidden, t0);
        assert_eq!(
            alloc.allocate(calm(5_000_000), &hidden, t)[0].1,
            Choice::Paused(PauseReason::NotVisible)
        );
        let shown = [(TrackId(1), video(Importance::Other, Tile::Unknown))];
        assert_eq!(
            alloc.allocate(calm(5_000_000), &shown, t + Duration::from_millis(10))[0].1,
            Choice::Layer(0)
        );
    }

    #[test]
    fn a_track_without_simulcast_has_one_layer() {
        let claims = [(
            TrackId(1),
            Claim::Video {
                importance: Importance::Screen,
                layers: vec![LayerCost {
                    bitrate: 1_000_000,
                    width: 1920,
                    height: 1080,
                }],
                tile: Tile::Unknown,
            },
        )];
        assert_eq!(
            choices(&ideal_fn(
                2_000_000,
                &claims,
                &HashMap::new(),
                LOWEST_LAYER_FIT
            )),
            [Choice::Layer(0)]
        );
        // Flowing, it is kept a little under its rate (see LOWEST_LAYER_FIT) and paused well
        // under it; paused, it comes back only when all of it fits.
        let flowing: HashMap<TrackId, Choice> = [(TrackId(1), Choice::Layer(0))].into();
        let paused: HashMap<TrackId, Choice> =
            [(TrackId(1), Choice::Paused(PauseReason::LowBandwidth))].into();
        assert_eq!(
            choices(&ideal_fn(900_000, &claims, &flowing, LOWEST_LAYER_FIT)),
            [Choice::Layer(0)]
        );
        assert_eq!(
            choices(&ideal_fn(900_000, &claims, &paused, LOWEST_LAYER_FIT)),
            [Choice::Paused(PauseReason::LowBandwidth)]
        );
        assert_eq!(
            choices(&ideal_fn(500_000, &claims, &flowing, LOWEST_LAYER_FIT)),
            [Choice::Paused(PauseReason::LowBandwidth)]
        );
    }

    #[test]
    fn an_estimate_with_no_congestion_behind_it_pauses_nothing() {
        let t0 = Instant::now();
        // A single-layer 2.5 Mbit/s camera, and an estimate that has not grown to it (the
        // estimator starts at 1 Mbit/s and only grows from what arrives).
        let claims = [(TrackId(1), AUDIO), (TrackId(2), one_layer(2_500_000))];
        let mut alloc = Allocator::default();
        for step in 0..10 {
            let t = t0 + Duration::from_millis(200 * step);
            assert_eq!(
                choices(&alloc.allocate(calm(1_000_000), &claims, t)),
                [Choice::Audio, Choice::Layer(0)]
            );
        }
    }

    #[test]
    fn a_cut_just_below_a_single_layer_keeps_it_and_a_deep_one_pauses_it() {
        let t0 = Instant::now();
        let claims = [(TrackId(1), AUDIO), (TrackId(2), one_layer(1_000_000))];
        let mut alloc = Allocator::default();
        alloc.allocate(calm(5_000_000), &claims, t0);
        // 0.85 of what arrived: a jitter burst, or a real but shallow squeeze.
        let t = t0 + Duration::from_millis(200);
        assert_eq!(
            choices(&alloc.allocate(congested(890_000, t), &claims, t)),
            [Choice::Audio, Choice::Layer(0)]
        );
        let t = t + Duration::from_millis(200);
        assert_eq!(
            choices(&alloc.allocate(congested(400_000, t), &claims, t)),
            [Choice::Audio, Choice::Paused(PauseReason::LowBandwidth)]
        );
    }

    #[test]
    fn steps_the_link_cannot_carry_double_the_hold_up_to_its_maximum() {
        let t0 = Instant::now();
        let claims = [(TrackId(2), video(Importance::Other, Tile::Unknown))];
        let mut alloc = Allocator::default();
        let mut t = t0;
        let mut congested_at = None;
        let mut tries = Vec::new();
        let mut on = None;
        // A link that carries layer 0 and no more, under an estimate that (app-limited)
        // has room for layer 1 while calm: every step up is undone by a cut 400 ms later,
        // after which the estimate binds at 200 kbit/s for CONGESTION_MEMORY.
        while t < t0 + Duration::from_secs(40) {
            let cut = congested_at.filter(|c| t >= *c);
            let binding = cut.is_some_and(|c| t - c < CONGESTION_MEMORY);
            let bps = if binding { 200_000 } else { 1_000_000 };
            let estimate = Some(Estimate {
                bps,
                congested_at: cut,
                acked_bps: None,
            });
            let choice = alloc.allocate(estimate, &claims, t)[0].1;
            if choice == Choice::Layer(1) && on != Some(Choice::Layer(1)) {
                tries.push(t - t0);
                congested_at = Some(t + Duration::from_millis(400));
            }
            on = Some(choice);
            t += Duration::from_millis(200);
        }
        assert_backs_off(&tries, 4, MAX_UPGRADE_HOLD + Duration::from_secs(1));
    }

    /// At least `count` gaps between the `tries`, growing, none longer than `longest`.
    fn assert_backs_off(tries: &[Duration], count: usize, longest: Duration) {
        let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= count, "tries at {tries:?}");
        assert!(
            gaps.windows(2).all(|w| w[1] >= w[0]),
            "the gaps grow: {gaps:?}"
        );
        assert!(gaps.iter().all(|g| *g <= longest), "{gaps:?}");
    }

    /// A subscriber calm at `calm_bps` from `t0`, then cut to `cut_bps` 200 ms later, and
    /// the instant of the cut.
    fn cut_after_calm(
        claims: &[(TrackId, Claim)],
        calm_bps: u32,
        cut_bps: u32,
        t0: Instant,
    ) -> (Allocator, Instant) {
        let mut alloc = Allocator::default();
        alloc.allocate(calm(calm_bps), claims, t0);
        let cut = t0 + Duration::from_millis(200);
        alloc.allocate(congested(cut_bps, cut), claims, cut);
        (alloc, cut)
    }

    /// `estimate` with `acked` arriving at the subscriber.
    fn arriving(estimate: Option<Estimate>, acked: u32) -> Option<Estimate> {
        estimate.map(|e| Estimate {
            acked_bps: Some(acked),
            ..e
        })
    }

    #[test]
    fn paused_videos_return_as_far_as_a_probe_showed_room_for_them_most_important_first() {
        let t0 = Instant::now();
        let claims = [
            (TrackId(1), video(Importance::Other, Tile::Unknown)),
            (TrackId(2), video(Importance::Screen, Tile::Unknown)),
        ];
        let mut alloc = Allocator::default();
        alloc.allocate(calm(5_000_000), &claims, t0);
        // A cut deep enough to pause both.
        let cut = t0 + Duration::from_millis(200);
        assert_eq!(
            choices(&alloc.allocate(congested(50_000, cut), &claims, cut)),
            [
                Choice::Paused(PauseReason::LowBandwidth),
                Choice::Paused(PauseReason::LowBandwidth)
            ]
        );
        // Once neither the congestion nor the hold binds, nothing comes back on the
        // estimate's word alone: a probe starts for the screen share (first), which needs
        // 150 k, padding from the 50 k that arrive up to 1.25 × that.
        let mut t = cut + CONGESTION_MEMORY.max(UPGRADE_HOLD);
        let paused = [
            Choice::Paused(PauseReason::LowBandwidth),
            Choice::Paused(PauseReason::LowBandwidth),
        ];
        let out = alloc.allocate(arriving(calm(5_000_000), 50_000), &claims, t);
        assert_eq!(choices(&out), paused);
        let probe = alloc.probe().expect("a probe");
        assert_eq!((probe.track, probe.needed_bps), (TrackId(2), 150_000));
        assert_eq!(probe.pad_bps, 187_500 - 50_000);
        // Nothing comes back while it runs, whatever arrives (the start of a probe may be
        // a buffer's burst, not what the link sustains).
        let early = t + Duration::from_millis(200);
        let out = alloc.allocate(arriving(calm(5_000_000), 400_000), &claims, early);
        assert_eq!(choices(&out), paused);
        // It lasted its time without a cut and 180 k arrive as it ends (1.2 × 150 k): the
        // screen share comes back; the other (300 k in all) waits for a probe of its own.
        t += crate::probe::PROBE_DURATION;
        let out = alloc.allocate(arriving(calm(5_000_000), 180_000), &claims, t);
        assert_eq!(
            choices(&out),
            [Choice::Paused(PauseReason::LowBandwidth), Choice::Layer(0)]
        );
        assert_eq!(alloc.probe(), None, "not within PROBE_GAP of the last");
        t += UPGRADE_STEP;
        let out = alloc.allocate(arriving(calm(5_000_000), 180_000), &claims, t);
        assert_eq!(out[0].1, Choice::Paused(PauseReason::LowBandwidth));
        let probe = alloc.probe().expect("a second probe");
        assert_eq!((probe.track, probe.needed_bps), (TrackId(1), 300_000));
        t += crate::probe::PROBE_DURATION;
        let out = alloc.allocate(arriving(calm(5_000_000), 360_000), &claims, t);
        assert_eq!(choices(&out), [Choice::Layer(0), Choice::Layer(0)]);
        assert_eq!(alloc.probe(), None);
    }

    #[test]
    fn a_probe_that_shows_too_little_brings_nothing_back() {
        let t0 = Instant::now();
        let claims = [(TrackId(1), AUDIO), (TrackId(2), one_layer(150_000))];
        let (mut alloc, cut) = cut_after_calm(&claims, 1_000_000, 100_000, t0);
        let t = cut + CONGESTION_MEMORY.max(UPGRADE_HOLD);
        alloc.allocate(arriving(calm(1_000_000), 40_000), &claims, t);
        assert!(alloc.probe().is_some());
        // 200 k arrive as it ends: more than the 190 k needed, less than 1.15 × that.
        let end = t + crate::probe::PROBE_DURATION;
        let out = alloc.allocate(arriving(calm(1_000_000), 200_000), &claims, end);
        assert_eq!(out[1].1, Choice::Paused(PauseReason::LowBandwidth));
    }

    #[test]
    fn a_probe_the_link_cannot_carry_brings_nothing_back_and_waits_longer_each_time() {
        let t0 = Instant::now();
        let claims = [(TrackId(1), AUDIO), (TrackId(2), one_layer(150_000))];
        let (mut alloc, cut) = cut_after_calm(&claims, 1_000_000, 100_000, t0);
        let mut t = cut + CONGESTION_MEMORY.max(UPGRADE_HOLD);
        let mut starts = Vec::new();
        let mut last_cut = cut;
        while t < cut + Duration::from_secs(30) {
            // The link delivers 120 k: every probe ends in a cut 200 ms in, and the estimate
            // binds for CONGESTION_MEMORY after it.
            if let Some(probe) = alloc.probe()
                && t >= probe.since + Duration::from_millis(200)
            {
                last_cut = probe.since + Duration::from_millis(200);
            }
            let estimate = if t - last_cut < CONGESTION_MEMORY {
                congested(100_000, last_cut)
            } else {
                calm(1_000_000).map(|e| Estimate {
                    congested_at: Some(last_cut),
                    ..e
                })
            };
            let out = alloc.allocate(arriving(estimate, 120_000), &claims, t);
            assert_eq!(
                out[1].1,
                Choice::Paused(PauseReason::LowBandwidth),
                "at {:?}",
                t - t0
            );
            if let Some(probe) = alloc.probe()
                && probe.since == t
            {
                assert_eq!(probe.needed_bps, 190_000);
                starts.push(t - t0);
            }
            t += Duration::from_millis(200);
        }
        // The probe's own cut does not bind, so only the probe gap spaces probes.
        assert_backs_off(
            &starts,
            6,
            crate::probe::MAX_PROBE_GAP + Duration::from_millis(200),
        );
    }

    #[test]
    fn a_subscriber_without_an_estimate_gets_its_paused_video_back_unproven() {
        let t0 = Instant::now();
        let claims = [(TrackId(1), video(Importance::Other, Tile::Unknown))];
        let (mut alloc, cut) = cut_after_calm(&claims, 400_000, 50_000, t0);
        // The estimate is gone (no feedback): nothing can be proven, nothing is probed.
        let later = cut + CONGESTION_MEMORY.max(UPGRADE_HOLD);
        assert_eq!(alloc.allocate(None, &claims, later)[0].1, Choice::Layer(0));
        assert_eq!(alloc.probe(), None);
    }

    #[test]
    fn a_flowing_video_kept_through_a_shallow_cut_is_paused_when_congestion_goes_on() {
        let t0 = Instant::now();
        let claims = [(TrackId(1), AUDIO), (TrackId(2), one_layer(200_000))];
        let mut alloc = Allocator::default();
        alloc.allocate(calm(1_000_000), &claims, t0);
        // Cut to 200 k: 160 k left after audio, under the video's 200 k but over 0.6 of it.
        let mut t = t0 + Duration::from_millis(200);
        let first_cut = t;
        let mut kept = Duration::ZERO;
        let mut last = Choice::Layer(0);
        // The link stays full: the estimator cuts every 400 ms.
        while t < first_cut + Duration::from_secs(3) {
            let cuts_so_far = u32::try_from((t - first_cut).as_millis() / 400).unwrap_or(0);
            let cut = first_cut + Duration::from_millis(400) * cuts_so_far;
            last = alloc.allocate(congested(200_000, cut), &claims, t)[1].1;
            if last == Choice::Layer(0) {
                kept = t - first_cut;
            }
            t += Duration::from_millis(200);
        }
        assert_eq!(last, Choice::Paused(PauseReason::LowBandwidth));
        assert!(kept >= Duration::from_millis(800), "kept for {kept:?}");
        assert!(
            kept < PERSISTENT_CONGESTION + Duration::from_millis(400),
            "kept for {kept:?}"
        );
        // One cut and no more (a burst of jitter): kept.
        let mut alloc = Allocator::default();
        alloc.allocate(calm(1_000_000), &claims, t0);
        let cut = t0 + Duration::from_millis(200);
        let mut t = cut;
        while t < cut + CONGESTION_MEMORY {
            assert_eq!(
                alloc.allocate(congested(200_000, cut), &claims, t)[1].1,
                Choice::Layer(0)
            );
            t += Duration::from_millis(200);
        }
    }

    #[test]
    fn a_deep_cut_pauses_a_video_whose_lowest_layer_does_not_fit_whole() {
        let t0 = Instant::now();
        let claims = [(TrackId(1), AUDIO), (TrackId(2), one_layer(200_000))];
        let (mut alloc, t) = settled(1_000_000, &claims, t0);
        // 240 k flow; cut to 165 k (0.69 of it): 125 k left, 0.6 of the 200 k layer fits,
        // but the cut is deep.
        let out = alloc.allocate(congested(165_000, t), &claims, t);
        assert_eq!(out[1].1, Choice::Paused(PauseReason::LowBandwidth));
        // Cut to 190 k (0.79): shallow, the video is kept.
        let (mut alloc, t) = settled(1_000_000, &claims, t0);
        let out = alloc.allocate(congested(190_000, t), &claims, t);
        assert_eq!(out[1].1, Choice::Layer(0));
    }

    #[test]
    fn dynacast_needs_only_the_highest_layer_anyone_gets() {
        assert_eq!(
            highest_needed([Choice::Layer(0), Choice::Paused(PauseReason::NotVisible)]),
            Some(0)
        );
        assert_eq!(
            highest_needed([Choice::Layer(1), Choice::Layer(0), Choice::Layer(1)]),
            Some(1)
        );
        assert_eq!(
            highest_needed([Choice::Paused(PauseReason::LowBandwidth)]),
            None
        );
    }
}
