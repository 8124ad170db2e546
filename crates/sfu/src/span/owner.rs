//! The owner's side of a node link: the satellite's sessions join the rooms here, and
//! each room drives the satellite's media worker for them through a *remote worker*: a
//! [`WorkerHandle`] whose commands cross the link instead of reaching a local thread.

use std::collections::HashMap;
use std::sync::Arc;

use chorus_protocol::{ErrorCode, ParticipantId, RoomId, ServerMessage};
use tokio::sync::mpsc;

use super::link::Core;
use super::lock;
use super::wire::{CommandWire, NoticeWire, ReplyWire, SpanMessage};
use crate::MediaError;
use crate::hub::{Admission, RoomCommand};
use crate::worker::{MediaNotice, PublishOutcome, SubscriberOffer, WorkerCommand, WorkerHandle};

/// Commands from one room to its remote worker on a link. The room awaits space, as it
/// does for a local worker's queue.
const REMOTE_COMMAND_QUEUE: usize = 256;

/// Messages from a room to one of the satellite's participants, on their way to the link:
/// as deep as a session's own queue on the satellite. When full, the room drops the
/// participant as it drops a session that cannot keep up.
const REMOTE_SESSION_QUEUE: usize = 256;

/// Replies and notices from the link to one room's remote worker. A room awaits each
/// reply it wants, so few are outstanding; notices that do not fit are dropped, as a
/// local worker drops what a room's full notice queue refuses.
const FROM_LINK_QUEUE: usize = 256;

/// What the link hands a room's remote worker.
enum FromLink {
    Reply(u64, Result<ReplyWire, (ErrorCode, String)>),
    Notice(NoticeWire),
}

struct RemoteRoom {
    worker: WorkerHandle,
    to_worker: mpsc::Sender<FromLink>,
}

pub(super) struct OwnerSide {
    core: Arc<Core>,
    rooms: HashMap<RoomId, RemoteRoom>,
    /// The satellite's participants in rooms here, and their rooms: written as they join
    /// (the join task), and as they go (their session closed, or their room removed
    /// their media).
    participants: Arc<Participants>,
}

#[derive(Default)]
struct Participants(std::sync::Mutex<HashMap<ParticipantId, RoomId>>);

impl Participants {
    fn joined(&self, core: &Core, participant: ParticipantId, room: RoomId) {
        lock(&self.0).insert(participant, room.clone());
        *lock(&core.rooms).entry(room).or_default() += 1;
    }

    /// Forgets a participant that left its room.
    fn left(&self, core: &Core, participant: ParticipantId) {
        let Some(room) = lock(&self.0).remove(&participant) else {
            return;
        };
        let mut rooms = lock(&core.rooms);
        if let Some(n) = rooms.get_mut(&room) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                rooms.remove(&room);
            }
        }
    }
}

impl OwnerSide {
    pub(super) fn new(core: Arc<Core>) -> Self {
        Self {
            core,
            rooms: HashMap::new(),
            participants: Arc::default(),
        }
    }

    /// The remote worker of `room` on this link, started on first use. Those of rooms
    /// with none of the satellite's participants left are let go (their tasks end).
    fn remote(&mut self, room: &RoomId) -> &RemoteRoom {
        let (core, participants) = (&self.core, &self.participants);
        {
            let used = lock(&core.rooms);
            self.rooms.retain(|r, _| r == room || used.contains_key(r));
        }
        self.rooms
            .entry(room.clone())
            .and_modify(|r| {
                if r.to_worker.is_closed() {
                    *r = start_remote(core, participants, room);
                }
            })
            .or_insert_with(|| start_remote(core, participants, room))
    }

    pub(super) async fn on_message(&mut self, message: SpanMessage) {
        match message {
            SpanMessage::Join {
                room,
                participant,
                name,
                identity,
                grants,
                ingest,
            } => {
                let worker = self.remote(&room).worker.clone();
                let admission = Admission {
                    identity,
                    grants,
                    ingest,
                };
                // The room's messages to the participant cross the link.
                let (session, mut from_room) = mpsc::channel::<ServerMessage>(REMOTE_SESSION_QUEUE);
                let core = self.core.clone();
                tokio::spawn(async move {
                    while let Some(message) = from_room.recv().await {
                        core.send(&SpanMessage::Deliver {
                            participant,
                            message,
                        })
                        .await;
                    }
                });
                // Counted from now, so that the room's remote worker is kept while the
                // join is under way; forgotten again if it is refused.
                self.participants
                    .joined(&self.core, participant, room.clone());
                let (core, participants) = (self.core.clone(), self.participants.clone());
                // The join waits for the room; the link goes on meanwhile.
                tokio::spawn(async move {
                    let result = core
                        .hub
                        .join_remote(room, participant, name, admission, session, worker)
                        .await;
                    if result.is_err() {
                        participants.left(&core, participant);
                    }
                    core.send(&SpanMessage::Joined {
                        participant,
                        refused: result.err().map(|e| (e.code(), e.to_string())),
                    })
                    .await;
                });
            }
            SpanMessage::Client {
                room,
                participant,
                message,
            } => {
                self.to_room(
                    &room,
                    RoomCommand::Client {
                        participant,
                        message,
                    },
                )
                .await;
            }
            SpanMessage::Gone { room, participant } => {
                self.gone(&room, participant).await;
            }
            SpanMessage::Reply { id, room, result } => {
                if let Some(r) = self.rooms.get(&room) {
                    let _ = r.to_worker.send(FromLink::Reply(id, result)).await;
                }
            }
            SpanMessage::Notice { room, notice } => {
                if let Some(r) = self.rooms.get(&room) {
                    let _ = r.to_worker.try_send(FromLink::Notice(notice));
                }
            }
            other => {
                tracing::warn!(peer = %self.core.peer, ?other, "node link: not a message for an owner");
            }
        }
    }

    async fn to_room(&self, room: &RoomId, command: RoomCommand) {
        let tx = self.core.hub.inner.rooms.get(room).map(|e| e.tx.clone());
        if let Some(tx) = tx {
            let _ = tx.send(command).await;
        }
    }

    async fn gone(&self, room: &RoomId, participant: ParticipantId) {
        self.participants.left(&self.core, participant);
        self.to_room(room, RoomCommand::Gone { participant }).await;
    }

    /// The link closed: the satellite's participants leave their rooms, as after a lost
    /// connection.
    pub(super) async fn close(self) {
        let participants: Vec<_> = lock(&self.participants.0).drain().collect();
        for (participant, room) in participants {
            self.to_room(&room, RoomCommand::Gone { participant }).await;
        }
        lock(&self.core.rooms).clear();
    }
}

fn start_remote(core: &Arc<Core>, participants: &Arc<Participants>, room: &RoomId) -> RemoteRoom {
    let (tx, commands) = mpsc::channel(REMOTE_COMMAND_QUEUE);
    let (to_worker, from_link) = mpsc::channel(FROM_LINK_QUEUE);
    tokio::spawn(remote_worker(
        core.clone(),
        participants.clone(),
        room.clone(),
        commands,
        from_link,
    ));
    RemoteRoom {
        worker: WorkerHandle::remote(tx, core.slot),
        to_worker,
    }
}

/// A reply the room awaits, by what it expects.
enum Pending {
    Published(tokio::sync::oneshot::Sender<Result<PublishOutcome, MediaError>>),
    Synced(tokio::sync::oneshot::Sender<Result<Option<SubscriberOffer>, MediaError>>),
    Done(tokio::sync::oneshot::Sender<Result<(), MediaError>>),
}

/// One room's remote worker on a link: turns the room's worker commands into messages,
/// and the satellite's replies and notices back.
async fn remote_worker(
    core: Arc<Core>,
    participants: Arc<Participants>,
    room: RoomId,
    mut commands: mpsc::Receiver<WorkerCommand>,
    mut from_link: mpsc::Receiver<FromLink>,
) {
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut next_id = 0u64;
    let mut notices: Option<mpsc::Sender<MediaNotice>> = None;
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                let (wire, reply) = match command {
                    WorkerCommand::Register { participant, notices: n, ingest } => {
                        notices = Some(n);
                        (CommandWire::Register { participant, ingest }, None)
                    }
                    WorkerCommand::Publish { participant, sdp, tracks, reply } => (
                        CommandWire::Publish { participant, sdp, tracks },
                        Some(Pending::Published(reply)),
                    ),
                    WorkerCommand::TrackSettings { participant, track, tile, reply } => (
                        CommandWire::TrackSettings { participant, track, tile: tile.into() },
                        Some(Pending::Done(reply)),
                    ),
                    WorkerCommand::SyncSubscriptions { participant, tracks, reply } => {
                        let described = tracks.iter().filter_map(|t| core.describe(*t)).collect();
                        (
                            CommandWire::SyncSubscriptions { participant, tracks, described },
                            Some(Pending::Synced(reply)),
                        )
                    }
                    WorkerCommand::SubscribeAnswer { participant, sdp, reply } => (
                        CommandWire::SubscribeAnswer { participant, sdp },
                        Some(Pending::Done(reply)),
                    ),
                    WorkerCommand::Candidate { participant, role, candidate, reply } => (
                        CommandWire::Candidate { participant, role, candidate },
                        Some(Pending::Done(reply)),
                    ),
                    WorkerCommand::Remove { participant } => {
                        // the room let the participant go, whatever the reason
                        participants.left(&core, participant);
                        (CommandWire::Remove { participant }, None)
                    }
                    WorkerCommand::Silence { track, silenced } => {
                        (CommandWire::Silence { track, silenced }, None)
                    }
                    WorkerCommand::Speaker { previous, current } => {
                        (CommandWire::Speaker { previous, current }, None)
                    }
                    // Recording taps a track where it is published, and WHEP viewers are
                    // never remote: nothing to do on the satellite.
                    WorkerCommand::Record { .. }
                    | WorkerCommand::ViewerOffer { .. }
                    | WorkerCommand::ViewerBind { .. } => continue,
                };
                next_id += 1;
                if let Some(reply) = reply {
                    pending.insert(next_id, reply);
                }
                core.send(&SpanMessage::Command { id: next_id, room: room.clone(), command: wire })
                    .await;
            }
            from = from_link.recv() => match from {
                None => break,
                Some(FromLink::Reply(id, result)) => {
                    let Some(waiting) = pending.remove(&id) else { continue };
                    let result = result.map_err(|(code, message)| MediaError::Remote(code, message));
                    match waiting {
                        Pending::Published(reply) => {
                            let outcome = result.and_then(ReplyWire::into_published).map(
                                |(outcome, described)| {
                                    for track in described {
                                        core.import(track);
                                    }
                                    outcome
                                },
                            );
                            let _ = reply.send(outcome);
                        }
                        Pending::Synced(reply) => {
                            let _ = reply.send(result.and_then(ReplyWire::into_synced));
                        }
                        Pending::Done(reply) => {
                            let _ = reply.send(result.and_then(ReplyWire::into_done));
                        }
                    }
                }
                Some(FromLink::Notice(notice)) => {
                    let notice = match notice {
                        NoticeWire::PeerFailed { participant } => MediaNotice::PeerFailed(participant),
                        NoticeWire::Deliver { participant, message } => {
                            MediaNotice::Deliver(participant, message)
                        }
                        NoticeWire::AudioLevels { levels } => MediaNotice::AudioLevels(levels),
                    };
                    if let Some(notices) = &notices {
                        let _ = notices.try_send(notice);
                    }
                }
            }
        }
    }
    // Waiting rooms see their calls fail as with a stopped worker.
    drop(pending);
}
