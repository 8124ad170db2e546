//! A latency histogram with fixed buckets, kept in relaxed atomics: any task records into
//! it without a lock or an allocation, and a metrics scrape reads it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The buckets of the join latency (`Hub::join`, from request to answer): from a
/// millisecond, which an idle server answers within, to ten seconds, beyond which a client
/// gives up.
pub const JOIN_LATENCY_BUCKETS: &[Duration] = &[
    Duration::from_millis(1),
    Duration::from_micros(2500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_millis(2500),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// Counts of durations by bucket, and their sum.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Upper bounds (inclusive), rising.
    bounds: &'static [Duration],
    /// One per bound, then one for everything above the last: not cumulative, so that a
    /// recording touches one bucket.
    counts: Box<[AtomicU64]>,
    /// The sum of every recorded duration, in nanoseconds.
    sum_nanos: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// (upper bound in seconds, count in that bucket alone); the last bound is infinity.
    pub buckets: Vec<(f64, u64)>,
    /// How many durations were recorded: the sum of the buckets' counts.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    /// A histogram over `bounds`, which must rise.
    pub fn new(bounds: &'static [Duration]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds must rise");
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, latency: Duration) {
        let bucket = self.bounds.partition_point(|bound| *bound < latency);
        if let Some(count) = self.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Starts timing something: the time until the returned guard drops is recorded.
    pub fn start(&self) -> LatencyTimer<'_> {
        LatencyTimer {
            histogram: self,
            started: Instant::now(),
        }
    }

    /// The counts as they are now.
    pub fn snapshot(&self) -> LatencySnapshot {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .map(Duration::as_secs_f64)
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        LatencySnapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum_seconds: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64(),
        }
    }
}

/// Records the time since it was made into its histogram when dropped, whichever way the
/// timed code ends.
#[derive(Debug)]
pub struct LatencyTimer<'a> {
    histogram: &'a LatencyHistogram,
    started: Instant,
}

impl Drop for LatencyTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[Duration] = &[Duration::from_millis(1), Duration::from_millis(10)];

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        let h = LatencyHistogram::new(BOUNDS);
        for ms in [0, 1, 2, 10, 11, 5000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.001, 2), (0.01, 2), (f64::INFINITY, 2)]);
        assert_eq!(s.count, 6);
        assert!((s.sum_seconds - 5.024).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn a_timer_records_once_when_dropped() {
        let h = LatencyHistogram::new(BOUNDS);
        {
            let _timer = h.start();
        }
        assert_eq!(h.snapshot().count, 1);
    }

    #[test]
    fn the_join_buckets_rise() {
        assert!(JOIN_LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}
