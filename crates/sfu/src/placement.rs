//! Which media worker a new room, and each participant of a room, lives on (sans-IO).
//!
//! A room opens on one worker, its home, and keeps its participants' peers and tracks
//! there while it is small, so that its forwarding never crosses threads: every copy of a
//! packet is made where the packet was decrypted. Rooms are spread over the workers by
//! load when they open. A room that outgrows `media.spread_room_after` participants on its
//! home spreads over the other workers too; then each packet of a track is handed once to
//! every other worker that has subscribers of it (`worker/relay.rs`).

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

/// The worker for a room's next participant. `room[w]` is how many of the room's
/// participants live on worker `w`. The room stays on its `home` while fewer than
/// `spread_after` of them live there (`0`: always); past that the participant goes to the
/// worker with the fewest of the room's participants, then the fewest participants in all,
/// then the lowest index, so that a big room spreads evenly.
pub fn place_participant(
    home: WorkerIndex,
    room: &[usize],
    loads: &[WorkerLoad],
    spread_after: usize,
) -> WorkerIndex {
    let at_home = room.get(usize::from(home)).copied().unwrap_or(0);
    if spread_after == 0 || at_home < spread_after || loads.len() < 2 {
        return home;
    }
    loads
        .iter()
        .enumerate()
        .min_by_key(|(i, load)| (room.get(*i).copied().unwrap_or(0), load.participants, *i))
        .map_or(home, |(i, _)| WorkerIndex::try_from(i).unwrap_or(home))
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

    #[test]
    fn a_small_room_stays_home() {
        let loads = [load(1, 30), load(0, 0)];
        assert_eq!(place_participant(0, &[3, 0], &loads, 4), 0);
        assert_eq!(
            place_participant(0, &[300, 0], &loads, 0),
            0,
            "never spread"
        );
        assert_eq!(
            place_participant(0, &[9], &[load(1, 9)], 4),
            0,
            "one worker"
        );
    }

    #[test]
    fn a_big_room_spreads_evenly() {
        let mut room = vec![0; 3];
        let mut loads = vec![load(1, 0), load(0, 5), load(0, 0)];
        let mut placed = Vec::new();
        for _ in 0..7 {
            let w = usize::from(place_participant(0, &room, &loads, 2));
            room[w] += 1;
            loads[w].participants += 1;
            placed.push(w);
        }
        // two at home, then always to the worker with the fewest of the room, the least
        // loaded of those first
        assert_eq!(placed, vec![0, 0, 2, 1, 2, 1, 0]);
        assert_eq!(room, vec![3, 2, 2]);
    }

    #[test]
    fn a_home_that_emptied_takes_participants_back() {
        let loads = [load(1, 1), load(0, 4)];
        assert_eq!(place_participant(0, &[1, 4], &loads, 1), 0);
        assert_eq!(place_participant(1, &[4, 1], &loads, 1), 1);
    }
}
