//! What the media worker keeps of one audio track's levels between two reports to its
//! room: the mean loudness of the packets since the last report. Sans-IO; one per audio
//! track whose publisher sends the audio-level extension (RFC 6464).
//!
//! Loudness is 0 (silence, -127 dBov) to 127 (0 dBov), 127 minus the RFC 6464 level; the
//! mean is taken in dB, as LiveKit and Janus do, which weighs a sentence's quiet
//! syllables more than a mean of the energy would: a speaker's level holds up through it.

use std::time::Duration;

/// How often the worker reports levels to the rooms: one notice per room per interval,
/// with one level per publisher of audio. Five reports go into the election's smoothing
/// time, and a room of 50 publishers gets 500 levels a second.
pub const LEVEL_REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// The sum and count of one track's levels since the last report.
#[derive(Debug, Default, Clone, Copy)]
pub struct LevelMeter {
    sum: u32,
    count: u32,
    /// A level has come at least once: the track sends the extension, so an interval
    /// without packets (DTX, or a paused microphone) is silence rather than unknown.
    seen: bool,
}

impl LevelMeter {
    /// One packet's loudness (per packet: two additions).
    pub fn record(&mut self, loudness: u8) {
        self.sum = self.sum.saturating_add(u32::from(loudness.min(127)));
        self.count = self.count.saturating_add(1);
        self.seen = true;
    }

    /// The mean loudness since the last call, and a fresh start: `None` while the track
    /// has never sent a level, 0 for an interval without packets.
    pub fn take(&mut self) -> Option<u8> {
        if !self.seen {
            return None;
        }
        let mean = self.sum.checked_div(self.count).unwrap_or(0);
        self.sum = 0;
        self.count = 0;
        Some(mean as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_of_an_interval_then_silence_when_nothing_came() {
        let mut m = LevelMeter::default();
        assert_eq!(m.take(), None, "never a level: unknown");
        for l in [100, 90, 110] {
            m.record(l);
        }
        assert_eq!(m.take(), Some(100));
        assert_eq!(m.take(), Some(0), "no packets: silence");
        m.record(200);
        assert_eq!(m.take(), Some(127), "clamped");
    }
}
