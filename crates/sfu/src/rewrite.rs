//! Per-subscription RTP header rewriting, on plain numbers so that it is tested without
//! any webrtc-rs type.
//!
//! Every subscription sends under its own SSRC, with the payload types and header-extension
//! ids that its subscriber negotiated, and with sequence numbers and timestamps that stay
//! continuous even when the source changes SSRC (a publisher restarting its camera).

/// Sequence-number and timestamp continuity for one subscription.
///
/// The output is `input + offset` (wrapping), so gaps and reordering upstream pass through
/// unchanged and the subscriber can NACK them. When the source SSRC changes, the offsets
/// are rebased so that the output carries on from the last packet sent.
#[derive(Debug, Clone)]
pub struct SeqRewriter {
    source_ssrc: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    /// Highest sequence number sent so far (in output space), for rebasing.
    last_seq: u16,
    /// Timestamp of that packet (in output space).
    last_ts: u32,
    /// The first output sequence number under the current offsets, once they were rebased
    /// (a source change, a resume). Numbers before it went out under other offsets, so a
    /// NACK for one is not answered from the current source. `None` under the first
    /// offsets: numbers before the first packet name the source's own earlier packets,
    /// which a NACK may still fetch from the history.
    epoch_start: Option<u16>,
    /// Padding went out since the last packet of the source: the next one goes on from it
    /// whatever its number ([`pad`](Self::pad)).
    padded: bool,
}

/// Timestamp step inserted between the last packet of an old source and the first of a
/// new one, so that the receiver sees time moving forward (about one 30 fps video frame).
const REBASE_TS_STEP: u32 = 3000;

impl SeqRewriter {
    /// A rewriter whose first output sequence number is `first_seq`.
    pub fn new(first_seq: u16) -> Self {
        Self {
            source_ssrc: None,
            seq_offset: 0,
            ts_offset: 0,
            last_seq: first_seq.wrapping_sub(1),
            last_ts: 0,
            epoch_start: None,
            padded: false,
        }
    }

    /// Maps one incoming packet's numbers to outgoing ones.
    pub fn rewrite(&mut self, source_ssrc: u32, seq: u16, ts: u32) -> (u16, u32) {
        if self.padded {
            self.padded = false;
            if self.source_ssrc == Some(source_ssrc) {
                self.seq_offset = self.last_seq.wrapping_add(1).wrapping_sub(seq);
            }
        }
        if self.source_ssrc != Some(source_ssrc) {
            let first = self.source_ssrc.is_none();
            self.source_ssrc = Some(source_ssrc);
            self.seq_offset = self.last_seq.wrapping_add(1).wrapping_sub(seq);
            if !first {
                self.epoch_start = Some(self.last_seq.wrapping_add(1));
            }
            self.ts_offset = if first {
                0
            } else {
                self.last_ts.wrapping_add(REBASE_TS_STEP).wrapping_sub(ts)
            };
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        if seq_newer(out_seq, self.last_seq) {
            self.last_seq = out_seq;
            self.last_ts = out_ts;
        }
        (out_seq, out_ts)
    }

    /// Like [`rewrite`](Self::rewrite), for the first packet after packets of the source
    /// were dropped for this subscription on purpose (a paused subscription resuming on a
    /// keyframe of the layer it was paused on): the output goes on from the last packet
    /// sent, without the hole a plain rewrite would leave and the subscriber would NACK.
    /// Timestamps keep their offset on the same source: its clock ran on, and so does the
    /// output's, which keeps lip sync.
    pub fn rewrite_resuming(&mut self, source_ssrc: u32, seq: u16, ts: u32) -> (u16, u32) {
        if self.source_ssrc == Some(source_ssrc) {
            self.seq_offset = self.last_seq.wrapping_add(1).wrapping_sub(seq);
            self.epoch_start = Some(self.last_seq.wrapping_add(1));
        }
        self.rewrite(source_ssrc, seq, ts)
    }

    /// The numbers of a padding-only packet (a probe, see [`crate::probe`]): the next
    /// output sequence number, at the last timestamp. The next packet of the source goes on
    /// after it, as after a resume. A NACK for the padding, or for anything sent before it,
    /// finds nothing to resend: under the current offsets those numbers name source packets
    /// that this subscription never got.
    pub fn pad(&mut self) -> (u16, u32) {
        let seq = self.last_seq.wrapping_add(1);
        self.last_seq = seq;
        self.epoch_start = Some(seq.wrapping_add(1));
        self.padded = true;
        (seq, self.last_ts)
    }

    /// The numbers an earlier packet of the current source was sent with, for sending it
    /// again; `None` for another source (its offsets are gone) or a packet from before the
    /// current offsets. Changes nothing.
    pub fn resend(&self, source_ssrc: u32, seq: u16, ts: u32) -> Option<(u16, u32)> {
        let out_seq = seq.wrapping_add(self.seq_offset);
        (self.source_ssrc == Some(source_ssrc) && !self.before_epoch(out_seq))
            .then(|| (out_seq, ts.wrapping_add(self.ts_offset)))
    }

    /// Whether `out_seq` went out before the current offsets were rebased.
    fn before_epoch(&self, out_seq: u16) -> bool {
        self.epoch_start
            .is_some_and(|start| seq_newer(start, out_seq))
    }

    /// The current source's (SSRC, sequence number) that went out as `out_seq`, to answer a
    /// NACK; `None` before the first packet, and for numbers from before the current
    /// offsets.
    pub fn source_of(&self, out_seq: u16) -> Option<(u32, u16)> {
        let ssrc = self.source_ssrc?;
        if self.before_epoch(out_seq) {
            return None;
        }
        Some((ssrc, out_seq.wrapping_sub(self.seq_offset)))
    }
}

/// RFC 1982 serial comparison: is `a` after `b`?
pub fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// Sentinel for "not negotiated" in [`IdMap`].
const UNMAPPED: u8 = 0;

/// A translation table for payload types. A payload type with no entry is not negotiated on
/// the destination, so its packets are dropped.
#[derive(Clone)]
pub struct IdMap {
    table: [u8; 256],
}

impl Default for IdMap {
    fn default() -> Self {
        Self {
            table: [UNMAPPED; 256],
        }
    }
}

impl std::fmt::Debug for IdMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries: Vec<_> = self
            .table
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != UNMAPPED)
            .collect();
        f.debug_map().entries(entries).finish()
    }
}

impl IdMap {
    /// Maps `from` to `to`. Id 0 is reserved in both uses and is ignored.
    pub fn insert(&mut self, from: u8, to: u8) {
        if from != 0 && to != 0 {
            self.table[usize::from(from)] = to;
        }
    }

    /// The destination id, or `None` when `from` is not negotiated there.
    pub fn get(&self, from: u8) -> Option<u8> {
        match self.table[usize::from(from)] {
            UNMAPPED => None,
            to => Some(to),
        }
    }

    /// Whether no id maps.
    pub fn is_empty(&self) -> bool {
        self.table.iter().all(|v| *v == UNMAPPED)
    }

    /// A destination id that some source id maps to (the one of the lowest source id).
    pub fn any(&self) -> Option<u8> {
        self.table.iter().copied().find(|v| *v != UNMAPPED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_takes_the_next_numbers_and_the_source_goes_on_after_it() {
        let mut r = SeqRewriter::new(1000);
        assert_eq!(r.rewrite(7, 50, 90_000), (1000, 90_000));
        assert_eq!(r.rewrite(7, 51, 93_000), (1001, 93_000));
        // Paused while the source sent 52..=99; padding, then the source again.
        assert_eq!(r.pad(), (1002, 93_000));
        assert_eq!(r.pad(), (1003, 93_000));
        assert_eq!(r.rewrite(7, 100, 96_000), (1004, 96_000));
        assert_eq!(r.rewrite(7, 101, 99_000), (1005, 99_000));
        // NACKs: not for the padding nor anything before it; for what came after, yes.
        assert_eq!(r.source_of(1003), None);
        assert_eq!(r.source_of(1001), None);
        assert_eq!(r.source_of(1005), Some((7, 101)));
        assert_eq!(r.resend(7, 51, 93_000), None);
    }

    #[test]
    fn padding_before_the_first_packet_leaves_no_gap() {
        let mut r = SeqRewriter::new(500);
        assert_eq!(r.pad().0, 500);
        assert_eq!(r.rewrite(9, 7000, 1234).0, 501);
    }

    #[test]
    fn any_gives_a_mapped_id() {
        let mut map = IdMap::default();
        assert_eq!(map.any(), None);
        map.insert(100, 96);
        map.insert(111, 97);
        assert_eq!(map.any(), Some(96));
    }

    #[test]
    fn continuous_from_the_first_packet() {
        let mut r = SeqRewriter::new(1000);
        assert_eq!(r.rewrite(7, 50, 90_000), (1000, 90_000));
        assert_eq!(r.rewrite(7, 51, 93_000), (1001, 93_000));
        // a gap upstream stays a gap, so the subscriber can NACK it
        assert_eq!(r.rewrite(7, 53, 96_000), (1003, 96_000));
        // a late packet maps into its slot
        assert_eq!(r.rewrite(7, 52, 93_000), (1002, 93_000));
    }

    #[test]
    fn sequence_wraps_around() {
        let mut r = SeqRewriter::new(65_534);
        assert_eq!(r.rewrite(1, 10, 0).0, 65_534);
        assert_eq!(r.rewrite(1, 11, 0).0, 65_535);
        assert_eq!(r.rewrite(1, 12, 0).0, 0);
        assert_eq!(r.rewrite(1, 13, 0).0, 1);
        // input wrapping too
        let mut r = SeqRewriter::new(5);
        assert_eq!(r.rewrite(1, 65_535, 0).0, 5);
        assert_eq!(r.rewrite(1, 0, 0).0, 6);
    }

    #[test]
    fn timestamp_wraps_around() {
        let mut r = SeqRewriter::new(0);
        assert_eq!(r.rewrite(1, 0, u32::MAX - 1000).1, u32::MAX - 1000);
        assert_eq!(r.rewrite(1, 1, 2000).1, 2000);
    }

    #[test]
    fn a_new_source_ssrc_continues_the_output() {
        let mut r = SeqRewriter::new(100);
        assert_eq!(r.rewrite(1, 7, 1_000), (100, 1_000));
        assert_eq!(r.rewrite(1, 8, 4_000), (101, 4_000));
        // the publisher restarted: new SSRC, unrelated numbers
        let (seq, ts) = r.rewrite(2, 40_000, 123);
        assert_eq!(seq, 102);
        assert_eq!(ts, 4_000 + REBASE_TS_STEP);
        assert_eq!(
            r.rewrite(2, 40_001, 3_123),
            (103, 4_000 + REBASE_TS_STEP + 3_000)
        );
    }

    #[test]
    fn a_nacked_packet_maps_back_to_its_source_and_resends_with_the_same_numbers() {
        let mut r = SeqRewriter::new(65_530);
        assert_eq!(r.source_of(65_530), None);
        let sent: Vec<(u16, u32)> = (0..10u16)
            .map(|i| r.rewrite(9, 60_000u16.wrapping_add(i * 1000), u32::from(i) * 3000))
            .collect();
        for (i, &(out_seq, out_ts)) in sent.iter().enumerate() {
            let i = i as u16;
            let (ssrc, seq) = r.source_of(out_seq).expect("current source");
            assert_eq!((ssrc, seq), (9, 60_000u16.wrapping_add(i * 1000)));
            assert_eq!(
                r.resend(ssrc, seq, u32::from(i) * 3000),
                Some((out_seq, out_ts))
            );
        }
        // resending changes nothing: the next packet continues as before
        assert_eq!(
            r.rewrite(9, 60_000u16.wrapping_add(10_000), 30_000).0,
            65_530u16.wrapping_add(10_000)
        );
        // after a source change the old source's packets are not resent
        r.rewrite(10, 5, 0);
        assert_eq!(r.resend(9, 60_000, 0), None);
    }

    #[test]
    fn a_resume_on_the_same_source_leaves_no_hole_and_nacks_before_it_go_unanswered() {
        let mut r = SeqRewriter::new(500);
        assert_eq!(r.rewrite(4, 10, 9_000), (500, 9_000));
        assert_eq!(r.rewrite(4, 11, 12_000), (501, 12_000));
        // packets 12..=40 of the same source were dropped while paused
        assert_eq!(r.rewrite_resuming(4, 41, 99_000), (502, 99_000));
        assert_eq!(r.rewrite(4, 42, 102_000), (503, 102_000));
        assert_eq!(r.source_of(502), Some((4, 41)));
        // the packet before the resume went out under other offsets
        assert_eq!(r.source_of(501), None);
        assert_eq!(r.resend(4, 11, 12_000), None);
        assert_eq!(r.resend(4, 42, 102_000), Some((503, 102_000)));
        // resuming on another source is a plain source change
        let (seq, ts) = r.rewrite_resuming(5, 7, 1);
        assert_eq!((seq, ts), (504, 102_000 + REBASE_TS_STEP));
        assert_eq!(r.source_of(503), None);
    }

    #[test]
    fn serial_comparison() {
        assert!(seq_newer(1, 0));
        assert!(seq_newer(0, 65_535));
        assert!(!seq_newer(65_535, 0));
        assert!(!seq_newer(5, 5));
    }

    #[test]
    fn id_map_translates_and_drops() {
        let mut m = IdMap::default();
        assert!(m.is_empty());
        m.insert(96, 100);
        m.insert(3, 5);
        m.insert(0, 9);
        assert_eq!(m.get(96), Some(100));
        assert_eq!(m.get(3), Some(5));
        assert_eq!(m.get(97), None);
        assert_eq!(m.get(0), None);
        assert!(!m.is_empty());
    }
}
