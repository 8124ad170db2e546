//! Pacing: spreading one subscriber's video over time once its downlink has shown where it
//! congests, so that a keyframe does not arrive at the bottleneck as one burst.
//!
//! A keyframe is several times the size of the frames around it, and an SFU forwards it
//! the moment it arrives. On a link whose bottleneck queue holds less than the burst (a
//! 300 kbit/s link with 300 ms of buffer holds 11 KB; a 640×360 keyframe is 15 to 30 KB),
//! the tail of the burst is dropped, and with it the audio packets queued among it. The
//! pacer holds a congested subscriber's video copies in a queue of its own on the
//! server and releases them so that everything the subscriber is sent stays at a little
//! more than the rate the link was seen to carry: the bottleneck queue grows by a fraction
//! of the burst. Audio never waits (it goes out at once and takes its share of the rate
//! from the video).
//!
//! Sans-IO: the owner offers each video copy with its size, accounts for the others,
//! asks what is due at an instant, and asks when the next release is due. Items are
//! generic, so the tests pace plain numbers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How much faster than the link's known capacity the pacer lets a subscriber's media out
/// (audio counts against the rate but never waits): above one, so that the
/// pacer does not hold a link that has recovered a little to its old rate (the capacity
/// also follows what arrives), and low enough that a link overloaded for a couple of
/// seconds (a camera that resumed and then was taken back) fills its bottleneck queue by
/// under 4 KB a second at 300 kbit/s, rather than drop audio.
pub const PACING_FACTOR: f64 = 1.1;

/// The longest a copy waits in the pacer. Past it the head goes out regardless
/// (counted as late). Short: the pacer smooths bursts (a keyframe of the layer the link
/// carries: 10 KB take 0.24 s at 1.1 × 300 kbit/s), it does not hold an overload. Video
/// that the link cannot carry at all is the allocator's to take away, and every packet
/// held longer would be older video still to send when it has.
pub const MAX_QUEUE_DELAY: Duration = Duration::from_millis(250);

/// Copies one subscriber's pacer holds at most: half a second of a 2.5 Mbit/s layer and
/// then some (about 1.2 MB at 1200 bytes each). When it is full the oldest goes out at
/// once (counted as late), so nothing is dropped here and the queue never grows without
/// bound.
pub const PACER_QUEUE: usize = 1024;

/// The burst the pacer lets out at once after a quiet spell, in time at its rate: enough
/// for a frame's few packets, far less than a keyframe.
const BURST: Duration = Duration::from_millis(20);

/// At least this much burst whatever the rate: one full-size datagram.
const MIN_BURST_BYTES: f64 = 1500.0;

struct Held<T> {
    item: T,
    bytes: usize,
    since: Instant,
}

/// One subscriber's pacer. See the module documentation.
pub struct Pacer<T> {
    queue: VecDeque<Held<T>>,
    /// Bytes per second while pacing; `None` while the link is not known to congest (then
    /// everything goes out at once).
    rate: Option<f64>,
    /// Bytes that may go out now (a token bucket; below zero after a datagram larger than
    /// what was left).
    budget: f64,
    /// When `budget` was last brought up to date.
    updated: Option<Instant>,
    /// What the queue holds, in bytes.
    queued_bytes: usize,
    /// Items released because they waited [`MAX_QUEUE_DELAY`] or the queue was full.
    pub late: u64,
    /// Items that waited in the queue (not counting those sent at once).
    pub paced: u64,
}

impl<T> Default for Pacer<T> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            rate: None,
            budget: 0.0,
            updated: None,
            queued_bytes: 0,
            late: 0,
            paced: 0,
        }
    }
}

impl<T> Pacer<T> {
    /// Paces at `bps` bits per second from `now` on, or stops pacing (`None`: what is held
    /// is due at once).
    pub fn set_rate(&mut self, bps: Option<u32>, now: Instant) {
        self.refill(now);
        let was_pacing = self.rate.is_some();
        self.rate = bps.map(|bps| f64::from(bps.max(1)) / 8.0);
        if let Some(rate) = self.rate {
            // Pacing starts with a full burst; a new rate keeps what is left of it.
            self.budget = if was_pacing {
                self.budget.min(burst(rate))
            } else {
                burst(rate)
            };
        }
    }

    /// Whether the pacer holds anything or paces: when neither, items need not be
    /// offered at all (the owner skips looking into them).
    pub fn is_idle(&self) -> bool {
        self.rate.is_none() && self.queue.is_empty()
    }

    /// A packet that is not paced (audio) went out at `now`: it takes its share of
    /// the rate, so that video leaves room for it.
    pub fn account(&mut self, bytes: usize, now: Instant) {
        if self.rate.is_some() {
            self.refill(now);
            self.budget -= bytes as f64;
        }
    }

    /// A video copy of `bytes` going out at `now`: returned when it may go at once,
    /// else held (released by [`Pacer::release`]).
    pub fn offer(&mut self, item: T, bytes: usize, now: Instant) -> Option<T> {
        self.refill(now);
        if self.rate.is_none() || (self.queue.is_empty() && self.budget > 0.0) {
            self.budget -= bytes as f64;
            return Some(item);
        }
        if self.queue.is_empty() {
            // The first to wait: the queue is allocated on first use, once.
            self.queue.reserve_exact(PACER_QUEUE);
        }
        self.paced += 1;
        self.queued_bytes += bytes;
        self.queue.push_back(Held {
            item,
            bytes,
            since: now,
        });
        None
    }

    /// Hands out what is due at `now`, oldest first: what the budget allows, what has
    /// waited [`MAX_QUEUE_DELAY`], and the oldest beyond [`PACER_QUEUE`].
    pub fn release(&mut self, now: Instant, mut send: impl FnMut(T)) {
        self.refill(now);
        while let Some(head) = self.queue.front() {
            let late = now.saturating_duration_since(head.since) >= MAX_QUEUE_DELAY
                || self.queue.len() > PACER_QUEUE;
            if !(late || self.rate.is_none() || self.budget > 0.0) {
                break;
            }
            let Some(head) = self.queue.pop_front() else {
                break;
            };
            if late {
                self.late += 1;
            }
            self.queued_bytes -= head.bytes;
            self.budget -= head.bytes as f64;
            send(head.item);
        }
    }

    /// When [`Pacer::release`] next has something to hand out, if anything is held.
    pub fn next_release(&self) -> Option<Instant> {
        let head = self.queue.front()?;
        let aged = head.since + MAX_QUEUE_DELAY;
        let (Some(rate), Some(updated)) = (self.drain_rate(), self.updated) else {
            return self.updated.map(|t| t.max(head.since)).or(Some(head.since));
        };
        if self.budget > 0.0 {
            return Some(updated);
        }
        // A byte over zero, so that the budget is positive when the owner comes back.
        let wait = Duration::from_secs_f64((1.0 - self.budget) / rate);
        Some((updated + wait).min(aged))
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = self
            .updated
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.updated = Some(self.updated.map_or(now, |t| t.max(now)));
        if let Some(rate) = self.drain_rate() {
            self.budget = (self.budget + rate * elapsed.as_secs_f64()).min(burst(rate));
        }
    }

    /// The rate the queue drains at: the pacing rate, or faster when the queue holds more
    /// than that rate empties within [`MAX_QUEUE_DELAY`]. Under an overload the output then
    /// follows the input, still spread out, rather than each datagram leaving when it
    /// turns late, in the bursts it came in.
    fn drain_rate(&self) -> Option<f64> {
        let rate = self.rate?;
        Some(rate.max(self.queued_bytes as f64 / MAX_QUEUE_DELAY.as_secs_f64()))
    }
}

/// The most budget a pacer at `rate` bytes per second may build up.
fn burst(rate: f64) -> f64 {
    (rate * BURST.as_secs_f64()).max(MIN_BURST_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Drives a pacer from `start` for `span`, in 1 ms steps, releasing into `out` with the
    /// instant each went.
    fn run(pacer: &mut Pacer<u32>, start: Instant, span: Duration, out: &mut Vec<(u32, Instant)>) {
        let mut t = start;
        while t <= start + span {
            pacer.release(t, |i| out.push((i, t)));
            t += MS;
        }
    }

    /// A bottleneck like `tc tbf`: drains `bps`, drops what would wait over `max_wait`.
    struct Bottleneck {
        bytes_per_s: f64,
        max_wait: Duration,
        /// When the queue will have drained.
        busy_until: Option<Instant>,
    }

    impl Bottleneck {
        /// Whether a datagram entering at `t` gets through.
        fn enter(&mut self, bytes: usize, t: Instant) -> bool {
            let start = self.busy_until.map_or(t, |b| b.max(t));
            if start.duration_since(t) > self.max_wait {
                return false;
            }
            self.busy_until =
                Some(start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_s));
            true
        }
    }

    /// Audio lost at a 300 kbit/s link with 300 ms of buffer, where a subscriber gets two
    /// voices (48 kbit/s each) and a 150 kbit/s camera, and a second camera resumes at 1 s
    /// with a 10 KB keyframe, until allocation takes it back 600 ms later (an upgrade the
    /// link could not carry), with the subscriber paced at `pacing`.
    fn audio_lost(pacing: Option<u32>) -> usize {
        let t0 = Instant::now();
        let mut link = Bottleneck {
            bytes_per_s: 300_000.0 / 8.0,
            max_wait: 300 * MS,
            busy_until: None,
        };
        let mut pacer: Pacer<usize> = Pacer::default();
        pacer.set_rate(pacing, t0);
        let mut lost = 0;
        for ms in 0..4000u32 {
            let t = t0 + MS * ms;
            let mut video = Vec::new();
            if ms % 66 == 0 {
                video.push(1250);
            }
            if ms == 1000 {
                video.extend(std::iter::repeat_n(1000, 10));
            }
            if (1000..1600).contains(&ms) && ms % 66 == 33 {
                video.push(1250);
            }
            pacer.release(t, |bytes| {
                link.enter(bytes, t);
            });
            for bytes in video {
                if let Some(bytes) = pacer.offer(bytes, bytes, t) {
                    link.enter(bytes, t);
                }
            }
            if ms % 20 == 0 {
                for _ in 0..2 {
                    pacer.account(120, t);
                    lost += usize::from(!link.enter(120, t));
                }
            }
        }
        lost
    }

    #[test]
    fn pacing_keeps_a_resumed_camera_from_dropping_audio() {
        let unpaced = audio_lost(None);
        let paced = audio_lost(Some((300_000.0 * PACING_FACTOR) as u32));
        eprintln!("audio lost behind a resumed camera: {unpaced} unpaced, {paced} paced");
        assert!(
            unpaced >= 10,
            "unpaced, the link's buffer overflows: {unpaced}"
        );
        assert!(
            paced * 5 <= unpaced,
            "paced, far less audio is lost: {paced} against {unpaced}"
        );
    }

    #[test]
    fn without_a_rate_everything_goes_at_once() {
        let mut p = Pacer::default();
        let t = Instant::now();
        for i in 0..100 {
            assert_eq!(p.offer(i, 1200, t), Some(i));
        }
        assert!(p.is_idle());
        assert_eq!(p.next_release(), None);
    }

    #[test]
    fn a_burst_goes_out_at_the_rate() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        // 375 kbit/s = 46,875 bytes a second
        p.set_rate(Some(375_000), t0);
        let mut out = Vec::new();
        for i in 0..8 {
            if let Some(i) = p.offer(i, 1200, t0) {
                out.push((i, t0));
            }
        }
        assert_eq!(out.len(), 2, "only the first burst goes at once");
        run(&mut p, t0, Duration::from_secs(1), &mut out);
        assert_eq!(out.len(), 8);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "in order");
        // a datagram leaves once the budget is above zero: the last, after the 6.9 KB
        // before it have been paid for at 46.9 KB/s, 0.15 s after the first
        let last = out[7].1.duration_since(t0);
        assert!((140 * MS..=160 * MS).contains(&last), "{last:?}");
        assert_eq!(p.late, 0);
        assert_eq!(p.next_release(), None);
    }

    #[test]
    fn nothing_waits_longer_than_the_maximum_delay() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        // 80 kbit/s: 10 KB a second, far below the 120 KB a second offered
        p.set_rate(Some(80_000), t0);
        let mut out = Vec::new();
        let mut t = t0;
        for i in 0..200 {
            if let Some(i) = p.offer(i, 1200, t) {
                out.push((i, t));
            }
            p.release(t, |i| out.push((i, t)));
            t += 10 * MS;
        }
        run(&mut p, t, Duration::from_secs(1), &mut out);
        assert_eq!(out.len(), 200);
        for (i, at) in &out {
            let offered = t0 + 10 * MS * *i;
            assert!(
                at.duration_since(offered) <= MAX_QUEUE_DELAY + MS,
                "{i} waited {:?}",
                at.duration_since(offered)
            );
        }
        assert!(p.late > 0);
    }

    #[test]
    fn stopping_releases_what_is_held() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        p.set_rate(Some(100_000), t0);
        let held = (0..10).filter(|i| p.offer(*i, 1200, t0).is_none()).count();
        assert!(held >= 8);
        assert!(p.next_release().is_some_and(|t| t > t0));
        p.set_rate(None, t0 + MS);
        let mut out = Vec::new();
        p.release(t0 + MS, |i| out.push(i));
        assert_eq!(out.len(), held);
        assert!(p.is_idle());
    }

    #[test]
    fn the_next_release_is_when_the_budget_allows_one() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        p.set_rate(Some(80_000), t0); // 10 bytes per ms
        while p.offer(0, 1000, t0).is_some() {}
        let due = p.next_release().expect("something is held");
        let mut out = Vec::new();
        p.release(due - MS, |i| out.push(i));
        assert!(out.is_empty(), "nothing before it is due");
        p.release(due, |i| out.push(i));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_full_queue_lets_the_oldest_go() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        p.set_rate(Some(50_000), t0);
        let mut out = Vec::new();
        for i in 0..(PACER_QUEUE as u32 + 50) {
            if let Some(i) = p.offer(i, 1200, t0) {
                out.push(i);
            }
        }
        p.release(t0, |i| out.push(i));
        assert!(p.queue.len() <= PACER_QUEUE);
        assert!(out.windows(2).all(|w| w[0] < w[1]));
    }
}
