//! The room's decisions, as a sans-IO state machine: [`Room::handle`] takes one [`Input`]
//! at an instant and returns [`Effect`]s. No sockets, no tasks, no clocks: the room task
//! (`room_task.rs`) performs the effects and feeds results back in.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chorus_protocol::{
    ByeReason, ChatLine, ErrorCode, Grants, IceServer, MediaKind, PROTOCOL_VERSION, ParticipantId,
    ParticipantInfo, PublishTrack, PublishedMid, RoomId, ServerMessage, SubscribedMid, TrackId,
    TrackInfo, TrackSource,
};

use crate::MediaError;
use crate::events::{LeaveReason, RoomEvent};
use crate::worker::{PublishOutcome, SubscriberOffer};

/// Per-room limits, from the config.
#[derive(Debug, Clone)]
pub struct RoomLimits {
    pub max_participants: usize,
    /// Chat lines kept for late joiners.
    pub chat_history: usize,
    /// Longest chat message, in characters.
    pub max_chat_chars: usize,
    /// Tracks one participant may publish at once; more get `limitReached`.
    pub max_tracks_per_participant: usize,
    /// Tracks one participant receives at most; it gets the oldest ones, and
    /// `limitReached` once when it misses some.
    pub max_subscriptions_per_participant: usize,
}

/// Something that happens to a room.
#[derive(Debug)]
pub enum Input {
    /// A session asks to join.
    Join {
        participant: ParticipantId,
        name: String,
        /// Who it is, from its join token: a second join with the same identity replaces
        /// the first. None in open mode, where every join is someone new.
        identity: Option<String>,
        grants: Grants,
        ice_servers: Vec<IceServer>,
    },
    /// The participant leaves: it said so, its WebSocket dropped, its media failed ...
    Leave {
        participant: ParticipantId,
        reason: LeaveReason,
    },
    PublishOffer {
        participant: ParticipantId,
        sdp: String,
        tracks: Vec<PublishTrack>,
    },
    /// The worker applied a publisher offer.
    PublishApplied {
        participant: ParticipantId,
        result: Result<PublishOutcome, MediaError>,
    },
    /// The worker synced a subscriber peer (and made an offer if anything changed).
    SubscriptionsSynced {
        participant: ParticipantId,
        result: Result<Option<SubscriberOffer>, MediaError>,
    },
    SubscribeAnswer {
        participant: ParticipantId,
        sdp: String,
    },
    /// The worker applied a subscriber answer.
    AnswerApplied {
        participant: ParticipantId,
        result: Result<(), MediaError>,
    },
    SetMute {
        participant: ParticipantId,
        track: TrackId,
        muted: bool,
    },
    Chat {
        participant: ParticipantId,
        text: String,
        /// Server time, ms since the Unix epoch.
        time: u64,
    },
    /// Someone removes a participant: a room admin (`by`), or the operator (`None`).
    Remove {
        by: Option<ParticipantId>,
        target: ParticipantId,
    },
    /// Someone mutes or unmutes another participant's track, which stops or resumes its
    /// forwarding: a room admin (`by`), or the operator (`None`).
    MuteTrack {
        by: Option<ParticipantId>,
        target: ParticipantId,
        track: TrackId,
        muted: bool,
    },
    /// The operator closes the room: everyone leaves.
    Close,
    /// The server drains and stops within `seconds`: everyone is told.
    Drain { seconds: u32 },
    /// The server is stopping.
    Shutdown,
}

/// Something the room task must do.
#[derive(Debug, PartialEq)]
pub enum Effect {
    Send(ParticipantId, ServerMessage),
    /// The join succeeded.
    Admitted(ParticipantId),
    /// The join was refused with this error.
    Refused(ParticipantId, ErrorCode, String),
    /// Apply a publisher offer in the worker, then feed back [`Input::PublishApplied`].
    /// `tracks` is what the client declared of its m-lines (sources, simulcast layers).
    Publish {
        participant: ParticipantId,
        sdp: String,
        tracks: Vec<PublishTrack>,
    },
    /// Make the subscriber peer carry exactly these tracks, then feed back
    /// [`Input::SubscriptionsSynced`].
    SyncSubscriptions {
        participant: ParticipantId,
        tracks: Vec<TrackId>,
    },
    /// Apply a subscriber answer, then feed back [`Input::AnswerApplied`].
    ApplyAnswer {
        participant: ParticipantId,
        sdp: String,
    },
    /// Tear down the participant's media and forget its session.
    Remove(ParticipantId),
    /// Stop (or resume) forwarding a track to everyone: a mute that a room admin imposed.
    Silence {
        track: TrackId,
        silenced: bool,
    },
    /// The member count changed (for the room list).
    CountChanged(usize),
    /// Something the outside world hears of (webhooks).
    Event(RoomEvent),
}

/// Where a participant's subscriber negotiation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubscriberState {
    /// Nothing outstanding.
    Idle,
    /// The worker is building an offer.
    Syncing,
    /// The client has the offer; its answer is due.
    AwaitingAnswer,
}

#[derive(Debug)]
struct Member {
    name: String,
    identity: Option<String>,
    grants: Grants,
    tracks: BTreeMap<TrackId, TrackInfo>,
    /// Tracks a room admin muted: not forwarded, and the owner cannot unmute them.
    silenced: BTreeSet<TrackId>,
    /// It misses tracks for `max_subscriptions_per_participant` (it was told so once).
    subscriptions_capped: bool,
    /// Sources the last publish offer declared, by mid.
    pending_sources: Vec<PublishTrack>,
    subscriber: SubscriberState,
    /// The subscriptions changed while a negotiation was outstanding.
    subscriber_dirty: bool,
}

/// One room's state.
#[derive(Debug)]
pub struct Room {
    id: RoomId,
    limits: RoomLimits,
    members: BTreeMap<ParticipantId, Member>,
    chat: VecDeque<ChatLine>,
}

impl Room {
    pub fn new(id: RoomId, limits: RoomLimits) -> Self {
        Self {
            id,
            limits,
            members: BTreeMap::new(),
            chat: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Handles one input.
    pub fn handle(&mut self, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Join {
                participant,
                name,
                identity,
                grants,
                ice_servers,
            } => self.join(participant, name, identity, grants, ice_servers, &mut out),
            Input::Leave {
                participant,
                reason,
            } => self.leave(participant, reason, &mut out),
            Input::PublishOffer {
                participant,
                sdp,
                tracks,
            } => self.publish_offer(participant, sdp, tracks, &mut out),
            Input::PublishApplied {
                participant,
                result,
            } => self.publish_applied(participant, result, &mut out),
            Input::SubscriptionsSynced {
                participant,
                result,
            } => self.synced(participant, result, &mut out),
            Input::SubscribeAnswer { participant, sdp } => {
                let Some(member) = self.members.get(&participant) else {
                    return out;
                };
                if member.subscriber == SubscriberState::AwaitingAnswer {
                    out.push(Effect::ApplyAnswer { participant, sdp });
                } else {
                    out.push(error(
                        participant,
                        ErrorCode::OutOfOrder,
                        "subscribeAnswer without an outstanding subscribeOffer",
                    ));
                }
            }
            Input::AnswerApplied {
                participant,
                result,
            } => match result {
                Ok(()) => {
                    if let Some(member) = self.members.get_mut(&participant) {
                        member.subscriber = SubscriberState::Idle;
                    }
                    if self
                        .members
                        .get(&participant)
                        .is_some_and(|m| m.subscriber_dirty)
                    {
                        self.sync(participant, &mut out);
                    }
                }
                Err(err) => out.push(error(participant, err.code(), err.to_string())),
            },
            Input::SetMute {
                participant,
                track,
                muted,
            } => self.set_mute(participant, track, muted, &mut out),
            Input::Chat {
                participant,
                text,
                time,
            } => self.chat(participant, &text, time, &mut out),
            Input::Remove { by, target } => self.remove_by(by, target, &mut out),
            Input::MuteTrack {
                by,
                target,
                track,
                muted,
            } => self.mute_track(by, target, track, muted, &mut out),
            Input::Drain { seconds } => {
                self.broadcast(&ServerMessage::Draining { seconds }, &mut out);
            }
            Input::Close => {
                let all: Vec<_> = self.members.keys().copied().collect();
                for participant in all {
                    self.leave(participant, LeaveReason::RoomClosed, &mut out);
                }
            }
            Input::Shutdown => {
                // Everyone goes at once: no one needs to hear of the others leaving.
                let all = std::mem::take(&mut self.members);
                for (participant, member) in all {
                    out.push(Effect::Send(
                        participant,
                        ServerMessage::Bye {
                            reason: ByeReason::ServerShutdown,
                        },
                    ));
                    out.push(Effect::Remove(participant));
                    self.departure_events(
                        participant,
                        &member,
                        LeaveReason::ServerShutdown,
                        &mut out,
                    );
                }
                out.push(Effect::CountChanged(0));
                out.push(Effect::Event(RoomEvent::RoomFinished {
                    room: self.id.clone(),
                }));
            }
        }
        out
    }

    fn join(
        &mut self,
        participant: ParticipantId,
        name: String,
        identity: Option<String>,
        grants: Grants,
        ice_servers: Vec<IceServer>,
        out: &mut Vec<Effect>,
    ) {
        // One session per identity: the newest (a reconnect, another tab) wins.
        let previous = identity.as_ref().and_then(|identity| {
            self.members
                .iter()
                .find(|(_, m)| m.identity.as_ref() == Some(identity))
                .map(|(p, _)| *p)
        });
        if let Some(previous) = previous {
            self.leave(previous, LeaveReason::Replaced, out);
        }
        if self.members.len() >= self.limits.max_participants {
            out.push(Effect::Refused(
                participant,
                ErrorCode::RoomFull,
                format!(
                    "room {} is full ({} participants)",
                    self.id, self.limits.max_participants
                ),
            ));
            return;
        }
        let participants = self.infos();
        let hidden = grants.hidden;
        if self.members.is_empty() {
            out.push(Effect::Event(RoomEvent::RoomStarted {
                room: self.id.clone(),
            }));
        }
        out.push(Effect::Event(RoomEvent::ParticipantJoined {
            room: self.id.clone(),
            participant_id: participant,
            identity: identity.clone(),
            name: name.clone(),
        }));
        self.members.insert(
            participant,
            Member {
                name: name.clone(),
                identity,
                grants: grants.clone(),
                tracks: BTreeMap::new(),
                silenced: BTreeSet::new(),
                subscriptions_capped: false,
                pending_sources: Vec::new(),
                subscriber: SubscriberState::Idle,
                subscriber_dirty: false,
            },
        );
        out.push(Effect::Admitted(participant));
        out.push(Effect::Send(
            participant,
            ServerMessage::Joined {
                version: PROTOCOL_VERSION,
                participant_id: participant,
                room: self.id.clone(),
                name: name.clone(),
                participants,
                ice_servers,
                chat_history: self.chat.iter().cloned().collect(),
                grants,
            },
        ));
        if !hidden {
            let info = ParticipantInfo {
                id: participant,
                name,
                tracks: Vec::new(),
            };
            self.broadcast_except(
                participant,
                &ServerMessage::ParticipantJoined { participant: info },
                out,
            );
            out.push(Effect::CountChanged(self.listed()));
        }
        if self.members.values().any(|m| !m.tracks.is_empty()) {
            self.sync(participant, out);
        }
    }

    /// How many members the others see (the room list's count).
    fn listed(&self) -> usize {
        self.members.values().filter(|m| !m.grants.hidden).count()
    }

    fn publish_offer(
        &mut self,
        participant: ParticipantId,
        sdp: String,
        tracks: Vec<PublishTrack>,
        out: &mut Vec<Effect>,
    ) {
        let Some(member) = self.members.get_mut(&participant) else {
            return;
        };
        if !member.grants.can_publish || member.grants.hidden {
            out.push(error(
                participant,
                ErrorCode::Forbidden,
                "your grants do not allow publishing",
            ));
            return;
        }
        if tracks.len() > self.limits.max_tracks_per_participant {
            out.push(error(
                participant,
                ErrorCode::LimitReached,
                format!(
                    "the offer declares {} tracks; at most {} per participant",
                    tracks.len(),
                    self.limits.max_tracks_per_participant
                ),
            ));
            return;
        }
        if let Some(refused) = tracks.iter().find(|t| !member.grants.may_publish(t.source)) {
            out.push(error(
                participant,
                ErrorCode::Forbidden,
                format!(
                    "your grants do not allow publishing a {:?} track (mid {})",
                    refused.source, refused.mid
                ),
            ));
            return;
        }
        member.pending_sources = tracks.clone();
        out.push(Effect::Publish {
            participant,
            sdp,
            tracks,
        });
    }

    /// The events of a participant's going: its tracks are unpublished, then it leaves.
    fn departure_events(
        &self,
        participant: ParticipantId,
        member: &Member,
        reason: LeaveReason,
        out: &mut Vec<Effect>,
    ) {
        for track_id in member.tracks.keys() {
            out.push(Effect::Event(RoomEvent::TrackUnpublished {
                room: self.id.clone(),
                participant_id: participant,
                track_id: *track_id,
            }));
        }
        out.push(Effect::Event(RoomEvent::ParticipantLeft {
            room: self.id.clone(),
            participant_id: participant,
            identity: member.identity.clone(),
            reason,
        }));
    }

    fn leave(&mut self, participant: ParticipantId, reason: LeaveReason, out: &mut Vec<Effect>) {
        let Some(member) = self.members.remove(&participant) else {
            return;
        };
        if let Some(reason) = reason.bye() {
            out.push(Effect::Send(participant, ServerMessage::Bye { reason }));
        }
        out.push(Effect::Remove(participant));
        self.departure_events(participant, &member, reason, out);
        if self.members.is_empty() {
            out.push(Effect::Event(RoomEvent::RoomFinished {
                room: self.id.clone(),
            }));
        }
        if member.grants.hidden {
            return;
        }
        for track_id in member.tracks.keys() {
            self.broadcast(
                &ServerMessage::TrackUnpublished {
                    participant_id: participant,
                    track_id: *track_id,
                },
                out,
            );
        }
        self.broadcast(
            &ServerMessage::ParticipantLeft {
                participant_id: participant,
            },
            out,
        );
        out.push(Effect::CountChanged(self.listed()));
        if !member.tracks.is_empty() {
            self.sync_all_except(participant, out);
        }
    }

    fn publish_applied(
        &mut self,
        participant: ParticipantId,
        result: Result<PublishOutcome, MediaError>,
        out: &mut Vec<Effect>,
    ) {
        let Some(member) = self.members.get_mut(&participant) else {
            return;
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(err) => {
                out.push(error(participant, err.code(), err.to_string()));
                return;
            }
        };
        let mut published = Vec::new();
        let mut unpublished = Vec::new();
        let mut refused: Vec<(TrackId, ErrorCode, String)> = Vec::new();
        let mut kept = member
            .tracks
            .keys()
            .filter(|id| outcome.tracks.iter().any(|t| t.track == **id))
            .count();
        for t in &outcome.tracks {
            if member.tracks.contains_key(&t.track) {
                continue;
            }
            let source = member
                .pending_sources
                .iter()
                .find(|s| s.mid == t.mid)
                .map(|s| s.source)
                .unwrap_or(match t.kind {
                    MediaKind::Audio => TrackSource::Microphone,
                    MediaKind::Video => TrackSource::Camera,
                });
            // An m-line the offer did not declare is a camera or microphone by default;
            // one the grants do not cover is negotiated but never published.
            if !member.grants.may_publish(source) {
                refused.push((
                    t.track,
                    ErrorCode::Forbidden,
                    format!(
                        "your grants do not allow publishing a {source:?} track (mid {})",
                        t.mid
                    ),
                ));
                continue;
            }
            if kept >= self.limits.max_tracks_per_participant {
                refused.push((
                    t.track,
                    ErrorCode::LimitReached,
                    format!(
                        "at most {} tracks per participant (mid {} is not published)",
                        self.limits.max_tracks_per_participant, t.mid
                    ),
                ));
                continue;
            }
            kept += 1;
            let info = TrackInfo {
                id: t.track,
                kind: t.kind,
                source,
                muted: false,
            };
            member.tracks.insert(t.track, info.clone());
            published.push(info);
        }
        member.tracks.retain(|id, _| {
            let keep = outcome.tracks.iter().any(|t| t.track == *id);
            if !keep {
                unpublished.push(*id);
            }
            keep
        });
        for (_, code, message) in &refused {
            out.push(error(participant, *code, message.clone()));
        }
        out.push(Effect::Send(
            participant,
            ServerMessage::PublishAnswer {
                sdp: outcome.answer,
                tracks: outcome
                    .tracks
                    .iter()
                    .filter(|t| !refused.iter().any(|(track, _, _)| *track == t.track))
                    .map(|t| PublishedMid {
                        mid: t.mid.clone(),
                        track_id: t.track,
                    })
                    .collect(),
            },
        ));
        let changed = !published.is_empty() || !unpublished.is_empty();
        for track in &published {
            out.push(Effect::Event(RoomEvent::TrackPublished {
                room: self.id.clone(),
                participant_id: participant,
                track: track.clone(),
            }));
        }
        for track_id in &unpublished {
            out.push(Effect::Event(RoomEvent::TrackUnpublished {
                room: self.id.clone(),
                participant_id: participant,
                track_id: *track_id,
            }));
        }
        for track in published {
            self.broadcast_except(
                participant,
                &ServerMessage::TrackPublished {
                    participant_id: participant,
                    track,
                },
                out,
            );
        }
        for track_id in unpublished {
            self.broadcast_except(
                participant,
                &ServerMessage::TrackUnpublished {
                    participant_id: participant,
                    track_id,
                },
                out,
            );
        }
        if changed {
            self.sync_all_except(participant, out);
        }
    }

    fn synced(
        &mut self,
        participant: ParticipantId,
        result: Result<Option<SubscriberOffer>, MediaError>,
        out: &mut Vec<Effect>,
    ) {
        let owners: BTreeMap<TrackId, ParticipantId> = self
            .members
            .iter()
            .flat_map(|(p, m)| m.tracks.keys().map(move |t| (*t, *p)))
            .collect();
        let Some(member) = self.members.get_mut(&participant) else {
            return;
        };
        match result {
            Ok(Some(offer)) => {
                member.subscriber = SubscriberState::AwaitingAnswer;
                let tracks = offer
                    .mids
                    .into_iter()
                    .filter_map(|(mid, track_id)| {
                        Some(SubscribedMid {
                            mid,
                            track_id,
                            participant_id: *owners.get(&track_id)?,
                        })
                    })
                    .collect();
                out.push(Effect::Send(
                    participant,
                    ServerMessage::SubscribeOffer {
                        sdp: offer.sdp,
                        tracks,
                    },
                ));
            }
            Ok(None) => {
                member.subscriber = SubscriberState::Idle;
                if member.subscriber_dirty {
                    self.sync(participant, out);
                }
            }
            Err(err) => {
                member.subscriber = SubscriberState::Idle;
                let retry = member.subscriber_dirty;
                out.push(error(participant, ErrorCode::Internal, err.to_string()));
                if retry {
                    self.sync(participant, out);
                }
            }
        }
    }

    fn set_mute(
        &mut self,
        participant: ParticipantId,
        track: TrackId,
        muted: bool,
        out: &mut Vec<Effect>,
    ) {
        if !muted
            && self
                .members
                .get(&participant)
                .is_some_and(|m| m.silenced.contains(&track))
        {
            out.push(error(
                participant,
                ErrorCode::Forbidden,
                "a room admin muted this track; only an admin can unmute it",
            ));
            return;
        }
        let Some(info) = self
            .members
            .get_mut(&participant)
            .and_then(|m| m.tracks.get_mut(&track))
        else {
            out.push(error(
                participant,
                ErrorCode::UnknownTrack,
                format!("track {} is not yours", track.0),
            ));
            return;
        };
        if info.muted == muted {
            return;
        }
        info.muted = muted;
        self.broadcast(
            &ServerMessage::MuteChanged {
                participant_id: participant,
                track_id: track,
                muted,
            },
            out,
        );
    }

    fn chat(&mut self, participant: ParticipantId, text: &str, time: u64, out: &mut Vec<Effect>) {
        let Some(member) = self.members.get(&participant) else {
            return;
        };
        if !member.grants.may_chat() {
            out.push(error(
                participant,
                ErrorCode::Forbidden,
                "your grants do not allow chat",
            ));
            return;
        }
        let text = text.trim().to_owned();
        let chars = text.chars().count();
        if chars == 0 || chars > self.limits.max_chat_chars {
            out.push(error(
                participant,
                ErrorCode::InvalidChat,
                format!(
                    "a chat message has 1 to {} characters",
                    self.limits.max_chat_chars
                ),
            ));
            return;
        }
        let line = ChatLine {
            from: participant,
            name: member.name.clone(),
            text,
            time,
        };
        if self.limits.chat_history > 0 {
            if self.chat.len() >= self.limits.chat_history {
                self.chat.pop_front();
            }
            self.chat.push_back(line.clone());
        }
        self.broadcast(&ServerMessage::Chat { line }, out);
    }

    /// Everyone else's tracks: what `participant` should receive.
    fn wanted(&self, participant: ParticipantId) -> Vec<TrackId> {
        self.members
            .iter()
            .filter(|(p, _)| **p != participant)
            .flat_map(|(_, m)| m.tracks.keys().copied())
            .collect()
    }

    /// Starts a subscriber negotiation, or marks one as needed after the current one. A
    /// participant without the `canSubscribe` grant never gets a subscriber peer.
    fn sync(&mut self, participant: ParticipantId, out: &mut Vec<Effect>) {
        let mut tracks = self.wanted(participant);
        let cap = self.limits.max_subscriptions_per_participant;
        let Some(member) = self
            .members
            .get_mut(&participant)
            .filter(|m| m.grants.can_subscribe)
        else {
            return;
        };
        let capped = tracks.len() > cap;
        tracks.truncate(cap);
        if capped && !member.subscriptions_capped {
            out.push(error(
                participant,
                ErrorCode::LimitReached,
                format!("at most {cap} subscriptions per participant: you get the earliest"),
            ));
        }
        member.subscriptions_capped = capped;
        if member.subscriber == SubscriberState::Idle {
            member.subscriber = SubscriberState::Syncing;
            member.subscriber_dirty = false;
            out.push(Effect::SyncSubscriptions {
                participant,
                tracks,
            });
        } else {
            member.subscriber_dirty = true;
        }
    }

    fn sync_all_except(&mut self, except: ParticipantId, out: &mut Vec<Effect>) {
        let others: Vec<_> = self
            .members
            .keys()
            .copied()
            .filter(|p| *p != except)
            .collect();
        for p in others {
            self.sync(p, out);
        }
    }

    /// The participants the others see (hidden ones are not listed).
    fn infos(&self) -> Vec<ParticipantInfo> {
        self.members
            .iter()
            .filter(|(_, m)| !m.grants.hidden)
            .map(|(id, m)| ParticipantInfo {
                id: *id,
                name: m.name.clone(),
                tracks: m.tracks.values().cloned().collect(),
            })
            .collect()
    }

    fn broadcast(&self, message: &ServerMessage, out: &mut Vec<Effect>) {
        for p in self.members.keys() {
            out.push(Effect::Send(*p, message.clone()));
        }
    }

    fn broadcast_except(
        &self,
        except: ParticipantId,
        message: &ServerMessage,
        out: &mut Vec<Effect>,
    ) {
        for p in self.members.keys().filter(|p| **p != except) {
            out.push(Effect::Send(*p, message.clone()));
        }
    }
}

fn error(participant: ParticipantId, code: ErrorCode, message: impl Into<String>) -> Effect {
    Effect::Send(participant, ServerMessage::error(code, message))
}

mod moderation;
pub use moderation::{AdminAction, AdminError};
#[cfg(test)]
mod tests;
