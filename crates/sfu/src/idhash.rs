//! Hash maps keyed by the server's own numeric ids ([`ParticipantId`], [`TrackId`]), for the
//! per-packet path: the worker looks up every subscriber and every subscription once per
//! forwarded copy, and the standard SipHash was about 4 % of the forwarder's CPU at load.
//!
//! These ids are counters the server assigns, never values a client chooses, so a keyed
//! hash buys no protection against crafted collisions here; one multiplication by an odd
//! constant spreads consecutive ids over the table's high bits (which pick the control
//! byte) and keeps the low bits (which pick the bucket) distinct. Maps keyed by anything a
//! client controls (addresses, ufrags, SDP strings) keep `std`'s default hasher.
//!
//! [`ParticipantId`]: chorus_protocol::ParticipantId
//! [`TrackId`]: chorus_protocol::TrackId

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` for server-assigned numeric ids.
pub type IdHashMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// 2^64 / the golden ratio, made odd: a multiplier that mixes every input bit upwards.
const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

/// The hasher of [`IdHashMap`]; see the module documentation for why it may be this cheap.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(SPREAD);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use chorus_protocol::{ParticipantId, TrackId};

    use super::*;

    #[test]
    fn consecutive_ids_land_in_distinct_buckets_and_control_bytes() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let hashes: Vec<u64> = (1..=1024).map(|i| build.hash_one(TrackId(i))).collect();
        // A table of 1024 buckets indexes by the low 10 bits, tags by the top 7.
        let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(buckets.len(), 1024);
        assert_eq!(tags.len(), 128);
    }

    #[test]
    fn works_as_a_map() {
        let mut map: IdHashMap<ParticipantId, u32> = IdHashMap::default();
        for i in 0..1000 {
            map.insert(ParticipantId(i), i as u32);
        }
        assert!((0..1000).all(|i| map[&ParticipantId(i)] == i as u32));
        assert_eq!(map.get(&ParticipantId(1000)), None);
    }
}
