//! Which media worker each of a room's participants lives on: the room's own (its home)
//! while the room is small, others once it grows (see [`crate::placement`]). The room task
//! sends each participant's commands to its worker, and commands about tracks (silence,
//! recording, the speaker) to every worker the room uses.

use std::sync::Arc;

use chorus_protocol::ParticipantId;
use dashmap::DashMap;

use crate::handoff::WorkerIndex;
use crate::placement::{WorkerLoad, place_participant};
use crate::worker::WorkerHandle;

/// A room's participants, by the worker they live on. Written by the room as they join
/// and leave; read by the hub for placement, `/api/stats` and the WHEP handlers (which
/// reach a viewer's worker directly).
pub(crate) type Placed = Arc<DashMap<ParticipantId, WorkerIndex>>;

pub(crate) struct RoomWorkers {
    home: WorkerHandle,
    /// Every media worker, by index.
    all: Vec<WorkerHandle>,
    placed: Placed,
    /// `media.spread_room_after`.
    spread_after: usize,
}

impl RoomWorkers {
    pub(crate) fn new(
        home: WorkerHandle,
        all: Vec<WorkerHandle>,
        placed: Placed,
        spread_after: usize,
    ) -> Self {
        Self {
            home,
            all,
            placed,
            spread_after,
        }
    }

    /// Places a joining participant, given every worker's load, and returns its worker.
    pub(crate) fn place(&self, participant: ParticipantId, loads: &[WorkerLoad]) -> WorkerHandle {
        let mut room = vec![0; self.all.len()];
        for entry in self.placed.iter() {
            if let Some(n) = room.get_mut(usize::from(*entry.value())) {
                *n += 1;
            }
        }
        let index = place_participant(self.home.index(), &room, loads, self.spread_after);
        let worker = self.handle(index).clone();
        self.placed.insert(participant, worker.index());
        worker
    }

    /// The worker of `participant` (the home for one not placed).
    pub(crate) fn of(&self, participant: ParticipantId) -> &WorkerHandle {
        match self.placed.get(&participant) {
            Some(index) => self.handle(*index),
            None => &self.home,
        }
    }

    pub(crate) fn remove(&self, participant: ParticipantId) {
        self.placed.remove(&participant);
    }

    /// Every worker that holds some of the room: the home and the participants'.
    pub(crate) fn used(&self) -> Vec<WorkerHandle> {
        let mut used = vec![false; self.all.len()];
        if let Some(home) = used.get_mut(usize::from(self.home.index())) {
            *home = true;
        }
        for entry in self.placed.iter() {
            if let Some(u) = used.get_mut(usize::from(*entry.value())) {
                *u = true;
            }
        }
        self.all
            .iter()
            .zip(used)
            .filter(|(_, used)| *used)
            .map(|(w, _)| w.clone())
            .collect()
    }

    fn handle(&self, index: WorkerIndex) -> &WorkerHandle {
        self.all.get(usize::from(index)).unwrap_or(&self.home)
    }
}
