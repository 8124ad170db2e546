//! The recent packets of one track, kept to answer NACKs: one history per track, shared by
//! all its subscriptions (each maps a NACKed number back to the source's with its own
//! rewriter), holding the received packets themselves, moved in after forwarding, so keeping
//! them costs no copy and no allocation per packet.

/// Packets a video track keeps: about 1.7 s of 2.5 Mbit/s video (300 packets/s), longer
/// than a browser keeps NACKing one packet. When full, the oldest is dropped (overwritten);
/// a NACK for it goes unanswered and is counted, and the receiver's decoder asks for a
/// keyframe instead.
pub const HISTORY_PACKETS: usize = 512;

/// A ring of packets indexed by sequence number. Empty (no allocation) until the first
/// packet, so a track that never sends, or an idle participant, costs nothing.
#[derive(Debug)]
pub struct History<T> {
    slots: Vec<Option<(u32, u16, T)>>,
}

impl<T> Default for History<T> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

impl<T> History<T> {
    /// Keeps `item`, the packet (`ssrc`, `seq`), in place of whatever had its slot.
    pub fn store(&mut self, ssrc: u32, seq: u16, item: T) {
        if self.slots.is_empty() {
            self.slots.resize_with(HISTORY_PACKETS, || None);
        }
        self.slots[usize::from(seq) % HISTORY_PACKETS] = Some((ssrc, seq, item));
    }

    /// The packet (`ssrc`, `seq`), if it is still kept.
    pub fn get(&self, ssrc: u32, seq: u16) -> Option<&T> {
        match self.slots.get(usize::from(seq) % HISTORY_PACKETS)? {
            Some((s, q, item)) if *s == ssrc && *q == seq => Some(item),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_packets_by_number_and_source() {
        let mut h = History::default();
        assert_eq!(h.get(1, 0), None);
        for seq in 65_000..65_536u32 {
            h.store(1, seq as u16, seq);
        }
        for seq in 0..100u16 {
            h.store(1, seq, 65_536 + u32::from(seq));
        }
        // the newest HISTORY_PACKETS, across the wrap
        assert_eq!(h.get(1, 99), Some(&65_635));
        assert_eq!(h.get(1, 65_124), Some(&65_124));
        // overwritten by newer ones
        assert_eq!(h.get(1, 65_100), None);
        // another source's packet with the same number is not this one
        assert_eq!(h.get(2, 99), None);
        h.store(2, 99, 7);
        assert_eq!(h.get(1, 99), None);
        assert_eq!(h.get(2, 99), Some(&7));
    }
}
