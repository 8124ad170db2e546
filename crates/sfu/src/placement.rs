//! Which media worker a new room lives on (sans-IO).
//!
//! A room lives on one worker, with all its participants' peers and tracks, so that its
//! forwarding never crosses threads: every copy of a packet is made where the packet was
//! decrypted. Rooms are spread over the workers by load when they open.

use crate::handoff::WorkerIndex;

/// What one worker carries now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerLoad {
    pub rooms: usize,
    pub participants: usize,
}

/// The worker for a new room: the one with the fewest participants, then the fewest rooms
/// (empty rooms cost little but fill up), then the lowest index.
pub fn place_room(loads: &[WorkerLoad]) -> WorkerIndex {
    loads
        .iter()
        .enumerate()
        .min_by_key(|(i, load)| (load.participants, load.rooms, *i))
        .map_or(0, |(i, _)| WorkerIndex::try_from(i).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(rooms: usize, participants: usize) -> WorkerLoad {
        WorkerLoad {
            rooms,
            participants,
        }
    }

    #[test]
    fn one_worker_takes_every_room() {
        assert_eq!(place_room(&[load(5, 40)]), 0);
        assert_eq!(place_room(&[]), 0);
    }

    #[test]
    fn the_least_loaded_worker_takes_the_room() {
        assert_eq!(place_room(&[load(1, 8), load(1, 3)]), 1);
        assert_eq!(place_room(&[load(2, 3), load(1, 8)]), 0);
    }

    #[test]
    fn ties_go_to_fewer_rooms_then_the_first_worker() {
        assert_eq!(place_room(&[load(2, 0), load(1, 0)]), 1);
        assert_eq!(place_room(&[load(1, 4), load(1, 4), load(0, 4)]), 2);
        assert_eq!(place_room(&[load(0, 0), load(0, 0)]), 0);
    }

    #[test]
    fn new_rooms_alternate_between_idle_workers() {
        let mut loads = vec![WorkerLoad::default(); 3];
        let mut placed = Vec::new();
        for _ in 0..6 {
            let w = place_room(&loads);
            loads[usize::from(w)].rooms += 1;
            placed.push(w);
        }
        assert_eq!(placed, vec![0, 1, 2, 0, 1, 2]);
    }
}
