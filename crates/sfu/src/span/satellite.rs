//! The satellite's side of a node link. A room the owner placed some participants of
//! here is a *satellite room* in this node's hub: joins and client messages to it cross
//! the link to the owner's room, whose messages come back to the sessions here; the
//! owner's commands for the participants here run on this node's media worker, in the
//! order sent, one room at a time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chorus_protocol::{ByeReason, ErrorCode, ParticipantId, RoomId, ServerMessage};
use tokio::sync::{mpsc, oneshot};

use super::link::Core;
use super::wire::{CommandWire, NoticeWire, ReplyWire, SpanMessage, error_wire};
use crate::hub::{JoinError, ROOM_COMMAND_QUEUE, RoomCommand, RoomEntry};
use crate::room_workers::Placed;
use crate::worker::{MediaNotice, WorkerCommand, WorkerHandle};
use crate::{Hub, MediaError};

/// The owner's commands for one satellite room, waiting for the media worker. The room
/// on the owner awaits each reply it wants, so the queue holds few; the link waits for
/// space.
const COMMAND_QUEUE: usize = 64;

/// Notices of the media worker for one satellite room, on their way to the link: as deep
/// as a room's own notice queue, and dropped and counted by the worker the same way when
/// full.
const NOTICE_QUEUE: usize = 256;

/// From a satellite room to its link.
pub(crate) enum ToLink {
    /// A satellite room opened; its commands follow.
    Open {
        room: RoomId,
        home: WorkerHandle,
        placed: Placed,
        members: Arc<AtomicUsize>,
        generation: u64,
    },
    Room(RoomId, RoomCommand),
}

struct SatRoom {
    exec: mpsc::Sender<(u64, CommandWire)>,
    members: Arc<AtomicUsize>,
    generation: u64,
}

pub(super) struct SatelliteSide {
    core: Arc<Core>,
    requests: mpsc::Receiver<ToLink>,
    rooms: HashMap<RoomId, SatRoom>,
    sessions: HashMap<ParticipantId, (RoomId, mpsc::Sender<ServerMessage>)>,
    joining: HashMap<ParticipantId, (RoomId, mpsc::Sender<ServerMessage>, JoinReply)>,
}

type JoinReply = oneshot::Sender<Result<(), JoinError>>;

impl SatelliteSide {
    pub(super) fn new(core: Arc<Core>, requests: mpsc::Receiver<ToLink>) -> Self {
        Self {
            core,
            requests,
            rooms: HashMap::new(),
            sessions: HashMap::new(),
            joining: HashMap::new(),
        }
    }

    pub(super) async fn next_request(&mut self) -> Option<ToLink> {
        self.requests.recv().await
    }

    pub(super) async fn on_request(&mut self, request: ToLink) {
        let (room, command) = match request {
            ToLink::Open {
                room,
                home,
                placed,
                members,
                generation,
            } => {
                let (exec, commands) = mpsc::channel(COMMAND_QUEUE);
                tokio::spawn(execute(
                    self.core.clone(),
                    room.clone(),
                    home,
                    placed,
                    commands,
                ));
                self.rooms.insert(
                    room,
                    SatRoom {
                        exec,
                        members,
                        generation,
                    },
                );
                return;
            }
            ToLink::Room(room, command) => (room, command),
        };
        match command {
            RoomCommand::Join {
                participant,
                name,
                admission,
                session,
                reply,
                via: _,
            } => {
                self.joining
                    .insert(participant, (room.clone(), session, reply));
                self.core
                    .send(&SpanMessage::Join {
                        room,
                        participant,
                        name,
                        identity: admission.identity,
                        grants: admission.grants,
                        ingest: admission.ingest,
                    })
                    .await;
            }
            RoomCommand::Client {
                participant,
                message,
            } => {
                self.core
                    .send(&SpanMessage::Client {
                        room,
                        participant,
                        message,
                    })
                    .await;
            }
            RoomCommand::Gone { participant } => {
                self.left(participant);
                self.core
                    .send(&SpanMessage::Gone { room, participant })
                    .await;
            }
            RoomCommand::Shutdown => {
                let here: Vec<ParticipantId> = self
                    .sessions
                    .iter()
                    .filter(|(_, (r, _))| *r == room)
                    .map(|(p, _)| *p)
                    .collect();
                for participant in here {
                    if let Some((_, session)) = self.sessions.get(&participant) {
                        let _ = session.try_send(ServerMessage::Bye {
                            reason: ByeReason::ServerShutdown,
                        });
                    }
                    self.left(participant);
                    self.core
                        .send(&SpanMessage::Gone {
                            room: room.clone(),
                            participant,
                        })
                        .await;
                }
            }
            // The room's state lives on its owner: the admin API and recording are
            // served there (their callers see the room as closed here). A drain notice
            // reaches the participants from the owner.
            RoomCommand::Describe { .. }
            | RoomCommand::Record { .. }
            | RoomCommand::Admin { .. }
            | RoomCommand::Drain { .. } => {}
        }
    }

    pub(super) async fn on_message(&mut self, message: SpanMessage) {
        match message {
            SpanMessage::Joined {
                participant,
                refused,
            } => {
                let Some((room, session, reply)) = self.joining.remove(&participant) else {
                    return;
                };
                match refused {
                    None => {
                        if let Some(r) = self.rooms.get(&room) {
                            r.members.fetch_add(1, Ordering::Relaxed);
                        }
                        self.sessions.insert(participant, (room, session));
                        let _ = reply.send(Ok(()));
                    }
                    Some((code, message)) => {
                        let _ = reply.send(Err(JoinError::Refused(code, message)));
                        self.close_if_empty(&room);
                    }
                }
            }
            SpanMessage::Deliver {
                participant,
                message,
            } => {
                let bye = matches!(message, ServerMessage::Bye { .. });
                // The room's first messages may come before the join's answer.
                let session = match self.sessions.get(&participant) {
                    Some((_, session)) => session,
                    None => match self.joining.get(&participant) {
                        Some((_, session, _)) => session,
                        None => return,
                    },
                };
                // A session that cannot keep up closes (its client reconnects), as the
                // room drops it on a single node.
                if session.try_send(message).is_err() || bye {
                    self.left(participant);
                }
            }
            SpanMessage::Command { id, room, command } => {
                let wants_reply = command.wants_reply();
                // The room let the participant go (it left, was removed, or failed).
                let removed = match &command {
                    CommandWire::Remove { participant } => Some(*participant),
                    _ => None,
                };
                match self.rooms.get(&room) {
                    Some(r) => {
                        let _ = r.exec.send((id, command)).await;
                    }
                    None if wants_reply => {
                        self.core
                            .send(&SpanMessage::Reply {
                                id,
                                room,
                                result: Err(error_wire(&MediaError::UnknownParticipant)),
                            })
                            .await;
                    }
                    None => {}
                }
                if let Some(participant) = removed {
                    self.left(participant);
                }
            }
            other => {
                tracing::warn!(peer = %self.core.peer, ?other, "node link: not a message for a satellite");
            }
        }
    }

    /// A participant here left its room (its session closed, or the room let it go).
    fn left(&mut self, participant: ParticipantId) {
        if let Some((room, _)) = self.sessions.remove(&participant) {
            if let Some(r) = self.rooms.get(&room) {
                r.members.fetch_sub(1, Ordering::Relaxed);
            }
            self.close_if_empty(&room);
        }
    }

    /// Ends a satellite room that has nobody here and nobody joining.
    fn close_if_empty(&mut self, room: &RoomId) {
        let busy = self.sessions.values().any(|(r, _)| r == room)
            || self.joining.values().any(|(r, _, _)| r == room);
        if busy {
            return;
        }
        if let Some(r) = self.rooms.remove(room) {
            self.core.hub.room_closed(room, r.generation);
        }
    }

    /// The link closed: the sessions here close (their clients rejoin through placement)
    /// and the satellite rooms end.
    pub(super) fn close(mut self) {
        for (_, (_, _, reply)) in self.joining.drain() {
            let _ = reply.send(Err(JoinError::Refused(
                ErrorCode::ClusterUnavailable,
                "the room's node cannot be reached; try again shortly".into(),
            )));
        }
        self.sessions.clear();
        for (room, r) in self.rooms.drain() {
            self.core.hub.room_closed(&room, r.generation);
        }
    }
}

/// Runs the owner's commands for one satellite room on this node's media worker.
async fn execute(
    core: Arc<Core>,
    room: RoomId,
    home: WorkerHandle,
    placed: Placed,
    mut commands: mpsc::Receiver<(u64, CommandWire)>,
) {
    let (notices_tx, mut notices) = mpsc::channel::<MediaNotice>(NOTICE_QUEUE);
    let mut here: HashSet<ParticipantId> = HashSet::new();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some((id, command)) = command else { break };
                let wants_reply = command.wants_reply();
                let result = run(&core, &home, &placed, &notices_tx, &mut here, command).await;
                if wants_reply {
                    core.send(&SpanMessage::Reply {
                        id,
                        room: room.clone(),
                        result: result.map_err(|e| error_wire(&e)),
                    })
                    .await;
                }
            }
            Some(notice) = notices.recv() => {
                let notice = match notice {
                    MediaNotice::PeerFailed(participant) => NoticeWire::PeerFailed { participant },
                    MediaNotice::Deliver(participant, message) => {
                        NoticeWire::Deliver { participant, message }
                    }
                    MediaNotice::AudioLevels(levels) => NoticeWire::AudioLevels { levels },
                };
                core.send(&SpanMessage::Notice { room: room.clone(), notice }).await;
            }
        }
    }
    for participant in here {
        placed.remove(&participant);
        let _ = home.send(WorkerCommand::Remove { participant }).await;
    }
}

async fn run(
    core: &Core,
    home: &WorkerHandle,
    placed: &Placed,
    notices: &mpsc::Sender<MediaNotice>,
    here: &mut HashSet<ParticipantId>,
    command: CommandWire,
) -> Result<ReplyWire, MediaError> {
    match command {
        CommandWire::Register {
            participant,
            ingest,
        } => {
            here.insert(participant);
            placed.insert(participant, home.index());
            home.send(WorkerCommand::Register {
                participant,
                notices: notices.clone(),
                ingest,
            })
            .await?;
        }
        CommandWire::Publish {
            participant,
            sdp,
            tracks,
        } => {
            let outcome = home
                .call(|reply| WorkerCommand::Publish {
                    participant,
                    sdp,
                    tracks,
                    reply,
                })
                .await?;
            let described = outcome
                .tracks
                .iter()
                .filter_map(|t| core.describe(t.track))
                .collect();
            return Ok(ReplyWire::published(outcome, described));
        }
        CommandWire::TrackSettings {
            participant,
            track,
            tile,
        } => {
            home.call(|reply| WorkerCommand::TrackSettings {
                participant,
                track,
                tile: tile.into(),
                reply,
            })
            .await?;
        }
        CommandWire::SyncSubscriptions {
            participant,
            tracks,
            described,
        } => {
            for track in described {
                core.import(track);
            }
            let offer = home
                .call(|reply| WorkerCommand::SyncSubscriptions {
                    participant,
                    tracks,
                    reply,
                })
                .await?;
            return Ok(ReplyWire::synced(offer));
        }
        CommandWire::SubscribeAnswer { participant, sdp } => {
            home.call(|reply| WorkerCommand::SubscribeAnswer {
                participant,
                sdp,
                reply,
            })
            .await?;
        }
        CommandWire::Candidate {
            participant,
            role,
            candidate,
        } => {
            home.call(|reply| WorkerCommand::Candidate {
                participant,
                role,
                candidate,
                reply,
            })
            .await?;
        }
        CommandWire::Remove { participant } => {
            here.remove(&participant);
            placed.remove(&participant);
            home.send(WorkerCommand::Remove { participant }).await?;
        }
        CommandWire::Silence { track, silenced } => {
            home.send(WorkerCommand::Silence { track, silenced })
                .await?;
        }
        CommandWire::Speaker { previous, current } => {
            home.send(WorkerCommand::Speaker { previous, current })
                .await?;
        }
    }
    Ok(ReplyWire::Done)
}

impl Hub {
    /// Makes `room` a satellite room here, whose owner is `owner`, over the open link to
    /// it; true if it is one now (or already a room here). False without such a link.
    pub fn open_satellite(&self, room: &RoomId, owner: &str) -> bool {
        if self.inner.rooms.contains_key(room) {
            return true;
        }
        let Some(to_owner) = self
            .inner
            .links
            .get(&(owner.to_owned(), false))
            .and_then(|e| e.to_owner.clone())
        else {
            return false;
        };
        let home = self.place_room();
        let (tx, mut rx) = mpsc::channel(ROOM_COMMAND_QUEUE);
        let members = Arc::new(AtomicUsize::new(0));
        let placed = Placed::default();
        let generation = self.next_generation();
        let mut opened = false;
        self.inner.rooms.entry(room.clone()).or_insert_with(|| {
            opened = true;
            RoomEntry {
                tx,
                members: members.clone(),
                generation,
                worker: home.index(),
                placed: placed.clone(),
                satellite: true,
            }
        });
        if !opened {
            return true;
        }
        let room = room.clone();
        tokio::spawn(async move {
            let open = ToLink::Open {
                room: room.clone(),
                home,
                placed,
                members,
                generation,
            };
            if to_owner.send(open).await.is_err() {
                return;
            }
            while let Some(command) = rx.recv().await {
                if to_owner
                    .send(ToLink::Room(room.clone(), command))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        tracing::info!(%owner, "satellite room opened");
        true
    }
}
