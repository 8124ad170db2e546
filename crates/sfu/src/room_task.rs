//! The room task: the one owner of a room's state. It feeds commands into the sans-IO
//! [`Room`], performs the effects (messages to sessions, calls to the media worker) and
//! feeds the results back in.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use chorus_protocol::api::RecordingInfo;
use chorus_protocol::{ClientMessage, ErrorCode, ParticipantId, RoomId, ServerMessage, TrackId};
use tokio::sync::{mpsc, oneshot};

use crate::allocate::Tile;
use crate::events::LeaveReason;
use crate::hub::{Hub, JoinError, ROOM_COMMAND_QUEUE, RoomCommand, RoomEntry};
use crate::record::{RecordError, Recorder, TrackMeta};
use crate::room::{AdminAction, Effect, Input, Room};
use crate::room_workers::{Placed, RoomWorkers};
use crate::speaker::Speakers;
use crate::worker::{MediaNotice, WorkerCommand, WorkerHandle};

/// Notices from the media worker to one room: peer failures, the `streamState` and
/// `publishLayers` messages of allocation, which change at most once per allocation pass
/// (200 ms) per subscription, and one report of audio levels per 100 ms. Bounded: the worker `try_send`s and counts what does not
/// fit (`notice_drops`; a lost `streamState` is corrected by the next change); the
/// WebSocket close path still removes a participant whose failure notice was lost.
const MEDIA_NOTICE_QUEUE: usize = 256;

/// Starts the task of room `id`, whose media lives on `worker` while it is small (see
/// [`crate::placement`]).
pub(crate) fn spawn(hub: Hub, id: RoomId, generation: u64, worker: WorkerHandle) -> RoomEntry {
    let (tx, rx) = mpsc::channel(ROOM_COMMAND_QUEUE);
    let members = Arc::new(AtomicUsize::new(0));
    let speaker_settings = hub.inner.config.speakers;
    let index = worker.index();
    let placed = Placed::default();
    let workers = RoomWorkers::new(
        worker,
        hub.inner.workers.clone(),
        placed.clone(),
        hub.inner.config.spread_room_after,
    );
    let task = RoomTask {
        room: Room::new(id.clone(), hub.inner.config.limits.clone()),
        id,
        generation,
        hub,
        workers,
        members: members.clone(),
        sessions: HashMap::new(),
        pending_joins: HashMap::new(),
        evicted: Vec::new(),
        notices: mpsc::channel(MEDIA_NOTICE_QUEUE),
        speakers: Speakers::new(speaker_settings),
        told_speaker: None,
        recorder: None,
        recorded: HashSet::new(),
    };
    tokio::spawn(task.run(rx));
    RoomEntry {
        tx,
        members,
        generation,
        worker: index,
        placed,
        satellite: false,
    }
}

struct RoomTask {
    id: RoomId,
    generation: u64,
    room: Room,
    hub: Hub,
    /// The media workers that hold this room's peers and tracks.
    workers: RoomWorkers,
    members: Arc<AtomicUsize>,
    /// Each member's outbound message queue (owned by its WebSocket session).
    sessions: HashMap<ParticipantId, mpsc::Sender<ServerMessage>>,
    pending_joins: HashMap<ParticipantId, oneshot::Sender<Result<(), JoinError>>>,
    /// Sessions that could not keep up, to be removed after the current input.
    evicted: Vec<ParticipantId>,
    notices: (mpsc::Sender<MediaNotice>, mpsc::Receiver<MediaNotice>),
    /// The speaker election, fed by the worker's level reports.
    speakers: Speakers,
    /// The first speaker as the worker was last told it (for allocation).
    told_speaker: Option<ParticipantId>,
    /// The room's recording, while one runs.
    recorder: Option<Recorder>,
    /// The tracks the recording (and the worker) were told to record.
    recorded: HashSet<TrackId>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RoomTask {
    async fn run(mut self, mut commands: mpsc::Receiver<RoomCommand>) {
        tracing::info!(room = %self.id, "room opened");
        // A room the config records is recorded from its first join, which opened it.
        if self.hub.inner.config.recording.rooms.contains(&self.id)
            && let Err(err) = self.start_recording()
        {
            tracing::warn!(room = %self.id, %err, "recording did not start");
        }
        loop {
            let speakers_due = self.speakers.poll_timeout();
            // Whether what happened may have changed the room's tracks (commands and
            // inputs may; level reports and relayed notices do not).
            let mut changed = true;
            let input = tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.input_for(command).await,
                    None => None,
                },
                Some(notice) = self.notices.1.recv() => match notice {
                    MediaNotice::PeerFailed(participant) => Some(Input::Leave {
                        participant,
                        reason: LeaveReason::MediaFailed,
                    }),
                    MediaNotice::Deliver(participant, message) => {
                        self.deliver(participant, message);
                        changed = false;
                        None
                    }
                    MediaNotice::AudioLevels(levels) => {
                        self.speakers.on_levels(Instant::now(), &levels);
                        self.send_speakers().await;
                        changed = false;
                        None
                    }
                },
                _ = sleep_until_some(speakers_due) => {
                    self.send_speakers().await;
                    changed = false;
                    None
                }
            };
            if let Some(input) = input {
                self.perform(input).await;
            }
            changed |= !self.evicted.is_empty();
            while let Some(participant) = self.evicted.pop() {
                self.perform(Input::Leave {
                    participant,
                    reason: LeaveReason::TooSlow,
                })
                .await;
            }
            if changed {
                self.sync_recording().await;
            }
            if self.room.is_empty() && self.pending_joins.is_empty() {
                break;
            }
        }
        // Drain and shutdown end here too: the files are finished before the room is gone.
        self.stop_recording().await;
        // Closed: later joins must not land here.
        self.hub.room_closed(&self.id, self.generation);
        commands.close();
        while let Ok(command) = commands.try_recv() {
            if let RoomCommand::Join { reply, .. } = command {
                let _ = reply.send(Err(JoinError::RoomClosed));
            }
        }
        tracing::info!(room = %self.id, "room closed");
    }

    /// Turns a command into a state-machine input; handles the parts that need no decision.
    async fn input_for(&mut self, command: RoomCommand) -> Option<Input> {
        match command {
            RoomCommand::Join {
                participant,
                name,
                admission,
                session,
                reply,
                via,
            } => {
                self.sessions.insert(participant, session);
                self.pending_joins.insert(participant, reply);
                let before = self.workers.used();
                let worker = match via {
                    Some(remote) => self.workers.place_remote(participant, remote),
                    None => self.workers.place(participant, &self.hub.worker_loads()),
                };
                let mut registered = worker
                    .send(WorkerCommand::Register {
                        participant,
                        notices: self.notices.0.clone(),
                        ingest: admission.ingest,
                    })
                    .await;
                // A worker new to the room learns who speaks, for the mirrors it opens.
                if registered.is_ok()
                    && self.told_speaker.is_some()
                    && !before.iter().any(|w| w.index() == worker.index())
                {
                    registered = worker
                        .send(WorkerCommand::Speaker {
                            previous: None,
                            current: self.told_speaker,
                        })
                        .await;
                }
                if registered.is_err() {
                    self.workers.remove(participant);
                    self.sessions.remove(&participant);
                    if let Some(reply) = self.pending_joins.remove(&participant) {
                        let _ = reply.send(Err(JoinError::Refused(
                            ErrorCode::Internal,
                            "the media worker has stopped".into(),
                        )));
                    }
                    return None;
                }
                Some(Input::Join {
                    participant,
                    name,
                    identity: admission.identity,
                    grants: admission.grants,
                    ice_servers: (self.hub.inner.config.ice_servers)(participant),
                })
            }
            RoomCommand::Gone { participant } => Some(Input::Leave {
                participant,
                reason: LeaveReason::Disconnected,
            }),
            RoomCommand::Shutdown => Some(Input::Shutdown),
            RoomCommand::Drain { seconds } => Some(Input::Drain { seconds }),
            RoomCommand::Describe { reply } => {
                let mut details = self.room.details();
                details.recording = self.recorder.as_ref().map(Recorder::info);
                let _ = reply.send(details);
                None
            }
            RoomCommand::Record { on, reply } => {
                let result = if on {
                    self.start_recording()
                } else {
                    self.stop_recording().await;
                    Ok(None)
                };
                let _ = reply.send(result);
                None
            }
            RoomCommand::Admin { action, reply } => {
                let action = match action {
                    AdminAction::Notice { to, text, .. } => AdminAction::Notice {
                        to,
                        text,
                        time: now_ms(),
                    },
                    other => other,
                };
                match self.room.admin(action) {
                    Ok(effects) => {
                        let _ = reply.send(Ok(()));
                        self.perform_effects(effects).await;
                    }
                    Err(err) => {
                        let _ = reply.send(Err(err));
                    }
                }
                None
            }
            RoomCommand::Client {
                participant,
                message,
            } => self.client_input(participant, message).await,
        }
    }

    async fn client_input(
        &mut self,
        participant: ParticipantId,
        message: ClientMessage,
    ) -> Option<Input> {
        match message {
            ClientMessage::Leave => Some(Input::Leave {
                participant,
                reason: LeaveReason::Left,
            }),
            ClientMessage::PublishOffer { sdp, tracks } => Some(Input::PublishOffer {
                participant,
                sdp,
                tracks,
            }),
            ClientMessage::SubscribeAnswer { sdp } => {
                Some(Input::SubscribeAnswer { participant, sdp })
            }
            ClientMessage::SetMute { track_id, muted } => Some(Input::SetMute {
                participant,
                track: track_id,
                muted,
            }),
            ClientMessage::Chat { text } => Some(Input::Chat {
                participant,
                text,
                time: now_ms(),
            }),
            ClientMessage::Candidate { peer, candidate } => {
                // Candidates need no room decision: straight to the worker.
                let result = self
                    .workers
                    .of(participant)
                    .call(|reply| WorkerCommand::Candidate {
                        participant,
                        role: peer,
                        candidate,
                        reply,
                    })
                    .await;
                if let Err(err) = result {
                    self.deliver(
                        participant,
                        ServerMessage::error(err.code(), err.to_string()),
                    );
                }
                None
            }
            ClientMessage::TrackSettings {
                track_id,
                visible,
                width,
                height,
            } => {
                // A subscriber's view of one video needs no room decision: the worker's
                // allocator reads it.
                let result = self
                    .workers
                    .of(participant)
                    .call(|reply| WorkerCommand::TrackSettings {
                        participant,
                        track: track_id,
                        tile: Tile::from_settings(visible, width, height),
                        reply,
                    })
                    .await;
                if let Err(err) = result {
                    self.deliver(
                        participant,
                        ServerMessage::error(err.code(), err.to_string()),
                    );
                }
                None
            }
            ClientMessage::RemoveParticipant { participant_id } => Some(Input::Remove {
                by: Some(participant),
                target: participant_id,
            }),
            ClientMessage::MuteTrack {
                participant_id,
                track_id,
                muted,
            } => Some(Input::MuteTrack {
                by: Some(participant),
                target: participant_id,
                track: track_id,
                muted,
            }),
            // Handled by the session before it reaches a room.
            ClientMessage::Join { .. } | ClientMessage::ListRooms => None,
        }
    }

    /// Feeds one input and performs every effect, including those of fed-back results.
    async fn perform(&mut self, input: Input) {
        let effects = self.room.handle(input);
        self.perform_effects(effects).await;
    }

    /// Performs effects, including those of fed-back results.
    async fn perform_effects(&mut self, effects: Vec<Effect>) {
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            let next = match effect {
                Effect::Send(participant, message) => {
                    let joined = matches!(message, ServerMessage::Joined { .. });
                    self.deliver(participant, message);
                    // a newcomer learns who speaks now, right after `joined`
                    let speakers = self.speakers.last_sent();
                    if joined && !speakers.is_empty() {
                        let message = ServerMessage::ActiveSpeakers {
                            speakers: speakers.to_vec(),
                        };
                        self.deliver(participant, message);
                    }
                    None
                }
                Effect::Admitted(participant) => {
                    if let Some(reply) = self.pending_joins.remove(&participant) {
                        let _ = reply.send(Ok(()));
                    }
                    None
                }
                Effect::Refused(participant, code, message) => {
                    self.sessions.remove(&participant);
                    self.remove_media(participant).await;
                    if let Some(reply) = self.pending_joins.remove(&participant) {
                        let _ = reply.send(Err(JoinError::Refused(code, message)));
                    }
                    None
                }
                Effect::Publish {
                    participant,
                    sdp,
                    tracks,
                } => {
                    let result = self
                        .workers
                        .of(participant)
                        .call(|reply| WorkerCommand::Publish {
                            participant,
                            sdp,
                            tracks,
                            reply,
                        })
                        .await;
                    Some(Input::PublishApplied {
                        participant,
                        result,
                    })
                }
                Effect::SyncSubscriptions {
                    participant,
                    tracks,
                } => {
                    let result = self
                        .workers
                        .of(participant)
                        .call(|reply| WorkerCommand::SyncSubscriptions {
                            participant,
                            tracks,
                            reply,
                        })
                        .await;
                    Some(Input::SubscriptionsSynced {
                        participant,
                        result,
                    })
                }
                Effect::ApplyAnswer { participant, sdp } => {
                    let result = self
                        .workers
                        .of(participant)
                        .call(|reply| WorkerCommand::SubscribeAnswer {
                            participant,
                            sdp,
                            reply,
                        })
                        .await;
                    Some(Input::AnswerApplied {
                        participant,
                        result,
                    })
                }
                Effect::Remove(participant) => {
                    self.sessions.remove(&participant);
                    self.speakers.remove(participant);
                    self.remove_media(participant).await;
                    None
                }
                Effect::Silence { track, silenced } => {
                    // the publisher's worker and the mirrors
                    for worker in self.workers.used() {
                        let _ = worker
                            .send(WorkerCommand::Silence { track, silenced })
                            .await;
                    }
                    None
                }
                Effect::Event(event) => {
                    self.hub.emit(event);
                    None
                }
                Effect::CountChanged(count) => {
                    self.members.store(count, Ordering::Relaxed);
                    self.hub.publish_room_list();
                    None
                }
            };
            if let Some(input) = next {
                queue.extend(self.room.handle(input));
            }
        }
    }

    /// Starts recording the room (a running recording goes on).
    fn start_recording(&mut self) -> Result<Option<RecordingInfo>, RecordError> {
        if self.recorder.is_none() {
            let dir = self
                .hub
                .inner
                .config
                .recording
                .dir
                .clone()
                .ok_or(RecordError::NotConfigured)?;
            self.recorder = Some(Recorder::start(
                &dir,
                &self.id,
                self.hub.inner.recording.clone(),
            )?);
        }
        Ok(self.recorder.as_ref().map(Recorder::info))
    }

    /// Stops the recording, if one runs: the worker's taps first, then the files are
    /// finished.
    async fn stop_recording(&mut self) {
        let Some(recorder) = self.recorder.take() else {
            return;
        };
        let workers = self.workers.used();
        for track in self.recorded.drain() {
            for worker in &workers {
                let _ = worker
                    .send(WorkerCommand::Record { track, sink: None })
                    .await;
            }
        }
        recorder.finish().await;
    }

    /// Makes the recording cover exactly the room's published tracks: a new track (a
    /// join, a renegotiation that adds a screen share) gets its file, an ended one's file
    /// is finished. Nothing to do (and nothing done) when the room is not recorded.
    async fn sync_recording(&mut self) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let details = self.room.details();
        let mut live = HashSet::new();
        let mut added = Vec::new();
        for participant in &details.participants {
            for track in &participant.tracks {
                live.insert(track.id);
                if !self.recorded.contains(&track.id) {
                    let meta = TrackMeta {
                        participant: participant.id,
                        name: participant.name.clone(),
                        identity: participant.identity.clone(),
                        kind: track.kind,
                        source: track.source,
                    };
                    added.push((participant.id, track.id, recorder.add_track(track.id, meta)));
                }
            }
        }
        let gone: Vec<TrackId> = self
            .recorded
            .iter()
            .filter(|t| !live.contains(t))
            .copied()
            .collect();
        for track in &gone {
            recorder.remove_track(*track);
            self.recorded.remove(track);
        }
        // The publisher's worker records; an end goes to every worker of the room, since
        // the publisher may have left with its track.
        let workers = self.workers.used();
        for (publisher, track, sink) in added {
            self.recorded.insert(track);
            let _ = self
                .workers
                .of(publisher)
                .send(WorkerCommand::Record {
                    track,
                    sink: Some(sink),
                })
                .await;
        }
        for track in gone {
            for worker in &workers {
                let _ = worker
                    .send(WorkerCommand::Record { track, sink: None })
                    .await;
            }
        }
    }

    /// Sends `activeSpeakers` to everyone when the list changed (at most every 300 ms), and
    /// tells the worker when the first speaker changed.
    async fn send_speakers(&mut self) {
        let Some(speakers) = self.speakers.poll(Instant::now()) else {
            return;
        };
        let first = speakers.first().map(|s| s.participant_id);
        let everyone: Vec<ParticipantId> = self.sessions.keys().copied().collect();
        let message = ServerMessage::ActiveSpeakers { speakers };
        for participant in everyone {
            self.deliver(participant, message.clone());
        }
        if first != self.told_speaker {
            let previous = std::mem::replace(&mut self.told_speaker, first);
            for worker in self.workers.used() {
                let _ = worker
                    .send(WorkerCommand::Speaker {
                        previous,
                        current: first,
                    })
                    .await;
            }
        }
    }

    /// Closes a participant's peers on its worker and forgets where it lived.
    async fn remove_media(&mut self, participant: ParticipantId) {
        let worker = self.workers.of(participant).clone();
        let _ = worker.send(WorkerCommand::Remove { participant }).await;
        self.workers.remove(participant);
    }

    /// Queues a message for a session. A session whose queue is full is not keeping up;
    /// it is dropped (its WebSocket closes) rather than allowed to stall the room.
    fn deliver(&mut self, participant: ParticipantId, message: ServerMessage) {
        let Some(session) = self.sessions.get(&participant) else {
            return;
        };
        match session.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%participant, room = %self.id, "session queue full; dropping it");
                self.sessions.remove(&participant);
                self.evicted.push(participant);
            }
            // The session is ending: it drops its queue only as it sends `leave` or `Gone`,
            // which follows with the true reason (evicting here would report `tooSlow`).
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.sessions.remove(&participant);
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
