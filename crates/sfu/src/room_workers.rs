//! Which media worker each of a room's participants lives on: the room's own (its home)
//! while the room is small, others once it grows (see [`crate::placement`]). The room task
//! sends each participant's commands to its worker, and commands about tracks (silence,
//! recording, the speaker) to every worker the room uses.

use std::collections::HashMap;
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
    /// Participants whose media lives on another node: their remote workers there (see
    /// [`crate::span`]).
    remote: HashMap<ParticipantId, WorkerHandle>,
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
            remote: HashMap::new(),
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

    /// Places a participant whose media lives on another node, on its remote worker.
    pub(crate) fn place_remote(
        &mut self,
        participant: ParticipantId,
        remote: WorkerHandle,
    ) -> WorkerHandle {
        self.remote.insert(participant, remote.clone());
        remote
    }

    /// The worker of `participant` (the home for one not placed).
    pub(crate) fn of(&self, participant: ParticipantId) -> &WorkerHandle {
        if let Some(remote) = self.remote.get(&participant) {
            return remote;
        }
        match self.placed.get(&participant) {
            Some(index) => self.handle(*index),
            None => &self.home,
        }
    }

    pub(crate) fn remove(&mut self, participant: ParticipantId) {
        self.placed.remove(&participant);
        self.remote.remove(&participant);
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
        let mut workers: Vec<WorkerHandle> = self
            .all
            .iter()
            .zip(used)
            .filter(|(_, used)| *used)
            .map(|(w, _)| w.clone())
            .collect();
        for remote in self.remote.values() {
            if !workers.iter().any(|w| w.index() == remote.index()) {
                workers.push(remote.clone());
            }
        }
        workers
    }

    fn handle(&self, index: WorkerIndex) -> &WorkerHandle {
        self.all.get(usize::from(index)).unwrap_or(&self.home)
    }
}
