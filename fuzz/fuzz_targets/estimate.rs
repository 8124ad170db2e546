//! The subscriber's downlink estimator fed transport-cc feedback as the wire numbers say
//! it (`twcc_arrivals`: base number, reference time, status symbols, receive deltas), with
//! the packets it names sent before. Structured, so that the feedback names packets the
//! estimator knows and reaches the delay and loss arithmetic. The estimate must stay a
//! number inside its bounds and the loss fraction a fraction.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use chorus_sfu::estimate::{Estimator, INITIAL_BPS, MAX_BPS, MIN_BPS, twcc_arrivals};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    /// `count` packets of `bytes` each go out, `gap_us` apart, numbered on from the last.
    Send { count: u8, bytes: u16, gap_us: u16 },
    /// One feedback, as its wire fields.
    Feedback {
        /// How far back from the next number its base is.
        back: u16,
        reference_time: u32,
        status_count: u16,
        symbols: Vec<u8>,
        deltas_us: Vec<i32>,
    },
    /// Time passes, in ms.
    Wait(u16),
}

fuzz_target!(|ops: Vec<Op>| {
    let start = Instant::now();
    let mut now = start;
    let mut estimator = Estimator::new(INITIAL_BPS, now);
    let mut next: u16 = 0;
    let mut arrivals = Vec::new();
    for op in ops {
        match op {
            Op::Send {
                count,
                bytes,
                gap_us,
            } => {
                for _ in 0..count {
                    estimator.on_sent(next, usize::from(bytes), now);
                    next = next.wrapping_add(1);
                    now += Duration::from_micros(u64::from(gap_us));
                }
            }
            Op::Feedback {
                back,
                reference_time,
                status_count,
                symbols,
                deltas_us,
            } => {
                twcc_arrivals(
                    next.wrapping_sub(back),
                    reference_time,
                    status_count,
                    symbols.into_iter().map(|s| s % 4),
                    deltas_us.into_iter().map(|d| i64::from(d) * 250),
                    &mut arrivals,
                );
                estimator.on_feedback(&arrivals, now);
            }
            Op::Wait(ms) => now += Duration::from_millis(u64::from(ms)),
        }
        let estimate = estimator.estimate();
        assert!(
            (MIN_BPS..=MAX_BPS).contains(&estimate),
            "estimate {estimate}"
        );
        let loss = estimator.loss_fraction();
        assert!((0.0..=1.0).contains(&loss), "loss {loss}");
        if let Some(at) = estimator.last_decrease() {
            assert!(at >= start && at <= now);
        }
    }
});
