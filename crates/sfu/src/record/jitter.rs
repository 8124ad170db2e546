//! The recorder's jitter buffer: puts one source's RTP packets back in sequence order and
//! waits a little for the missing ones (the publisher leg's NACK generator asks for them
//! again; a retransmission arrives on the same SSRC, late) before giving up on them.
//!
//! Sans-IO: packets go in with their arrival time, and [`JitterBuffer::pop`] says at a
//! given instant what can come out, in order, and how many packets were skipped before it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One packet out of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Released<T> {
    pub item: T,
    /// Packets given up on just before this one (0: it follows the last one released).
    pub lost: u64,
}

#[derive(Debug)]
pub struct JitterBuffer<T> {
    /// Packets waiting, by extended (64-bit) sequence number.
    waiting: BTreeMap<u64, (T, Instant)>,
    /// The extended number of the next packet to release; `None` before the first.
    next: Option<u64>,
    /// The highest extended number seen, for unwrapping the next one.
    highest: u64,
    /// How long a packet after a hole waits for the hole to fill.
    delay: Duration,
    /// At most this many packets wait; beyond it the oldest hole is given up.
    capacity: usize,
    /// Packets that came after their turn had passed (too late, or duplicates).
    late: u64,
}

impl<T> JitterBuffer<T> {
    pub fn new(delay: Duration, capacity: usize) -> Self {
        Self {
            waiting: BTreeMap::new(),
            next: None,
            highest: 0,
            delay,
            capacity: capacity.max(1),
            late: 0,
        }
    }

    /// Extends a 16-bit sequence number to 64 bits, nearest to the highest one seen.
    fn extend(&self, seq: u16) -> u64 {
        if self.next.is_none() {
            // The first packet: far from zero, so that numbers before it stay positive.
            return (1 << 32) + u64::from(seq);
        }
        let delta = i64::from(seq.wrapping_sub(self.highest as u16) as i16);
        (self.highest as i64 + delta) as u64
    }

    /// Adds a packet; a packet whose turn has passed (or a duplicate) is dropped and
    /// counted in [`late`](Self::late).
    pub fn push(&mut self, seq: u16, item: T, now: Instant) {
        let ext = self.extend(seq);
        let next = *self.next.get_or_insert(ext);
        if ext < next || self.waiting.contains_key(&ext) {
            self.late += 1;
            return;
        }
        self.highest = self.highest.max(ext);
        self.waiting.insert(ext, (item, now));
    }

    /// The next packet that may leave at `now`: the next in sequence, or, once the first
    /// packet after a hole has waited the delay (or the buffer is full), that packet with
    /// the hole counted as lost.
    pub fn pop(&mut self, now: Instant) -> Option<Released<T>> {
        let next = self.next?;
        let (&ext, (_, arrived)) = self.waiting.first_key_value()?;
        let ready = ext == next
            || now.saturating_duration_since(*arrived) >= self.delay
            || self.waiting.len() > self.capacity;
        if !ready {
            return None;
        }
        let (item, _) = self.waiting.remove(&ext)?;
        self.next = Some(ext + 1);
        Some(Released {
            item,
            lost: ext - next,
        })
    }

    /// Everything still waiting, in order, holes counted, as at the end of the stream.
    pub fn drain(&mut self) -> Vec<Released<T>> {
        let mut out = Vec::with_capacity(self.waiting.len());
        while let Some(next) = self.next {
            let Some((ext, (item, _))) = self.waiting.pop_first() else {
                break;
            };
            self.next = Some(ext + 1);
            out.push(Released {
                item,
                lost: ext - next,
            });
        }
        out
    }

    /// Forgets the sequence: the next packet pushed starts a new one (a new source SSRC).
    pub fn restart(&mut self) {
        self.waiting.clear();
        self.next = None;
        self.highest = 0;
    }

    pub fn late(&self) -> u64 {
        self.late
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(100);

    fn out(buffer: &mut JitterBuffer<u16>, now: Instant) -> Vec<(u16, u64)> {
        std::iter::from_fn(|| buffer.pop(now))
            .map(|r| (r.item, r.lost))
            .collect()
    }

    #[test]
    fn in_order_packets_leave_at_once() {
        let t = Instant::now();
        let mut b = JitterBuffer::new(DELAY, 64);
        for seq in [10u16, 11, 12] {
            b.push(seq, seq, t);
        }
        assert_eq!(out(&mut b, t), vec![(10, 0), (11, 0), (12, 0)]);
    }

    #[test]
    fn reordered_packets_are_put_back_in_order_across_the_wrap() {
        let t = Instant::now();
        let mut b = JitterBuffer::new(DELAY, 64);
        b.push(65534, 65534, t);
        b.push(0, 0, t);
        b.push(65535, 65535, t);
        b.push(1, 1, t);
        assert_eq!(out(&mut b, t), vec![(65534, 0), (65535, 0), (0, 0), (1, 0)]);
    }

    #[test]
    fn a_hole_waits_for_a_retransmission_then_gives_up() {
        let t = Instant::now();
        let mut b = JitterBuffer::new(DELAY, 64);
        b.push(1, 1, t);
        b.push(3, 3, t);
        assert_eq!(out(&mut b, t), vec![(1, 0)]);
        // the retransmission of 2 comes in time
        b.push(2, 2, t + Duration::from_millis(50));
        assert_eq!(
            out(&mut b, t + Duration::from_millis(50)),
            vec![(2, 0), (3, 0)]
        );
        // 4 never comes
        b.push(5, 5, t + Duration::from_millis(60));
        assert!(out(&mut b, t + Duration::from_millis(100)).is_empty());
        assert_eq!(out(&mut b, t + Duration::from_millis(160)), vec![(5, 1)]);
        // too late now
        b.push(4, 4, t + Duration::from_millis(170));
        assert!(out(&mut b, t + Duration::from_millis(500)).is_empty());
        assert_eq!(b.late(), 1);
    }

    #[test]
    fn a_full_buffer_gives_up_at_once_and_drain_counts_holes() {
        let t = Instant::now();
        let mut b = JitterBuffer::new(DELAY, 2);
        b.push(1, 1, t);
        assert_eq!(out(&mut b, t), vec![(1, 0)]);
        b.push(3, 3, t);
        b.push(4, 4, t);
        assert!(out(&mut b, t).is_empty());
        b.push(5, 5, t);
        assert_eq!(out(&mut b, t), vec![(3, 1), (4, 0), (5, 0)]);
        b.push(8, 8, t);
        b.push(7, 7, t);
        let drained: Vec<_> = b.drain().into_iter().map(|r| (r.item, r.lost)).collect();
        assert_eq!(drained, vec![(7, 1), (8, 0)]);
        b.restart();
        b.push(100, 100, t);
        assert_eq!(out(&mut b, t), vec![(100, 0)]);
    }
}
