//! WHEP viewers: which tracks a viewer's slots carry ([`Stage`], sans-IO), and the hub's
//! door to the worker's viewer peers.
//!
//! A viewer follows the room from the messages a participant gets (`joined`,
//! `participantJoined`/`Left`, `trackPublished`/`Unpublished`, `activeSpeakers`). Its
//! participants are ranked: the pinned one (`?participant=`) first, then everyone who has
//! spoken, the most recent first (a speaker keeps first place until someone else speaks,
//! so silence does not move the picture), then the others in the order they joined. The
//! i-th audio slot carries the audio of the i-th ranked participant that has audio, and
//! the i-th video slot the video (a camera, else a screen share) of the i-th ranked
//! participant that has video: one audio and one video slot carry the top participant.

use chorus_protocol::{
    MediaKind, ParticipantId, RoomId, ServerMessage, TrackId, TrackInfo, TrackSource,
};

use crate::peer::ViewerSlot;
use crate::worker::WorkerCommand;
use crate::{Hub, MediaError};

/// What a viewer knows of one participant.
#[derive(Debug, Clone)]
struct Member {
    id: ParticipantId,
    name: String,
    tracks: Vec<TrackInfo>,
}

/// The room as a viewer sees it, and the ranking that decides its slots.
#[derive(Debug, Clone, Default)]
pub struct Stage {
    /// In the order they joined.
    members: Vec<Member>,
    /// Who spoke, the most recent first.
    spoke: Vec<ParticipantId>,
    /// `?participant=`: a participant id (`p3` or `3`) or a display name.
    pinned: Option<String>,
}

impl Stage {
    pub fn new(pinned: Option<String>) -> Self {
        Self {
            pinned: pinned.filter(|p| !p.is_empty()),
            ..Self::default()
        }
    }

    /// Takes in one message of the viewer's participant; true when the room changed in a
    /// way that may move the slots.
    pub fn on_message(&mut self, message: &ServerMessage) -> bool {
        match message {
            ServerMessage::Joined { participants, .. } => {
                self.members = participants
                    .iter()
                    .map(|p| Member {
                        id: p.id,
                        name: p.name.clone(),
                        tracks: p.tracks.clone(),
                    })
                    .collect();
                true
            }
            ServerMessage::ParticipantJoined { participant } => {
                self.members.retain(|m| m.id != participant.id);
                self.members.push(Member {
                    id: participant.id,
                    name: participant.name.clone(),
                    tracks: participant.tracks.clone(),
                });
                true
            }
            ServerMessage::ParticipantLeft { participant_id } => {
                self.members.retain(|m| m.id != *participant_id);
                self.spoke.retain(|p| p != participant_id);
                true
            }
            ServerMessage::TrackPublished {
                participant_id,
                track,
            } => match self.members.iter_mut().find(|m| m.id == *participant_id) {
                Some(member) => {
                    member.tracks.retain(|t| t.id != track.id);
                    member.tracks.push(track.clone());
                    true
                }
                None => false,
            },
            ServerMessage::TrackUnpublished {
                participant_id,
                track_id,
            } => match self.members.iter_mut().find(|m| m.id == *participant_id) {
                Some(member) => {
                    member.tracks.retain(|t| t.id != *track_id);
                    true
                }
                None => false,
            },
            ServerMessage::ActiveSpeakers { speakers } => {
                let before = self.spoke.clone();
                for speaker in speakers.iter().rev() {
                    self.spoke.retain(|p| *p != speaker.participant_id);
                    self.spoke.insert(0, speaker.participant_id);
                }
                self.spoke != before
            }
            _ => false,
        }
    }

    /// The participants, best first.
    fn ranked(&self) -> Vec<&Member> {
        let pinned = self.pinned.as_deref().and_then(|p| {
            self.members
                .iter()
                .find(|m| m.id.to_string() == p || m.id.0.to_string() == p)
                .or_else(|| self.members.iter().find(|m| m.name == p))
        });
        let mut ranked: Vec<&Member> = pinned.into_iter().collect();
        for id in &self.spoke {
            if let Some(m) = self.members.iter().find(|m| m.id == *id)
                && !ranked.iter().any(|r| r.id == m.id)
            {
                ranked.push(m);
            }
        }
        for m in &self.members {
            if !ranked.iter().any(|r| r.id == m.id) {
                ranked.push(m);
            }
        }
        ranked
    }

    /// What each slot should carry now, by mid.
    pub fn choose(&self, slots: &[ViewerSlot]) -> Vec<(String, Option<TrackId>)> {
        let ranked = self.ranked();
        let pick = |member: &Member, kind: MediaKind| {
            let of_kind = |source: Option<TrackSource>| {
                member
                    .tracks
                    .iter()
                    .find(|t| t.kind == kind && source.is_none_or(|s| t.source == s))
            };
            match kind {
                MediaKind::Video => of_kind(Some(TrackSource::Camera)).or_else(|| of_kind(None)),
                MediaKind::Audio => of_kind(None),
            }
            .map(|t| t.id)
        };
        let sources = |kind| {
            ranked
                .iter()
                .filter_map(move |m| pick(m, kind))
                .collect::<Vec<_>>()
                .into_iter()
        };
        let mut audio = sources(MediaKind::Audio);
        let mut video = sources(MediaKind::Video);
        slots
            .iter()
            .map(|slot| {
                let track = match slot.kind {
                    MediaKind::Audio => audio.next(),
                    MediaKind::Video => video.next(),
                };
                (slot.mid.clone(), track)
            })
            .collect()
    }

    /// The participant whose track `track` is, for logs.
    pub fn owner_of(&self, track: TrackId) -> Option<ParticipantId> {
        self.members
            .iter()
            .find(|m| m.tracks.iter().any(|t| t.id == track))
            .map(|m| m.id)
    }
}

impl Hub {
    /// Gives `participant` (joined, without subscriber grants) a WHEP viewer peer answering
    /// `sdp`; returns the answer and its slots, all unbound.
    pub async fn view(
        &self,
        room: &RoomId,
        participant: ParticipantId,
        sdp: String,
    ) -> Result<(String, Vec<ViewerSlot>), MediaError> {
        self.worker_of(room, participant)?
            .call(|reply| WorkerCommand::ViewerOffer {
                participant,
                sdp,
                reply,
            })
            .await
    }

    /// Binds a viewer's slots (by mid) to tracks; returns the mids refused (codec).
    pub async fn bind_view(
        &self,
        room: &RoomId,
        participant: ParticipantId,
        slots: Vec<(String, Option<TrackId>)>,
    ) -> Result<Vec<String>, MediaError> {
        self.worker_of(room, participant)?
            .call(|reply| WorkerCommand::ViewerBind {
                participant,
                slots,
                reply,
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use chorus_protocol::{ActiveSpeaker, ParticipantInfo};

    use super::*;

    fn track(id: u64, kind: MediaKind, source: TrackSource) -> TrackInfo {
        TrackInfo {
            id: TrackId(id),
            kind,
            source,
            muted: false,
        }
    }

    fn person(id: u64, name: &str) -> ParticipantInfo {
        ParticipantInfo {
            id: ParticipantId(id),
            name: name.into(),
            tracks: vec![
                track(id * 10, MediaKind::Audio, TrackSource::Microphone),
                track(id * 10 + 1, MediaKind::Video, TrackSource::Camera),
            ],
        }
    }

    fn slots() -> Vec<ViewerSlot> {
        vec![
            ViewerSlot {
                mid: "0".into(),
                kind: MediaKind::Audio,
            },
            ViewerSlot {
                mid: "1".into(),
                kind: MediaKind::Video,
            },
        ]
    }

    fn speakers(ids: &[u64]) -> ServerMessage {
        ServerMessage::ActiveSpeakers {
            speakers: ids
                .iter()
                .map(|id| ActiveSpeaker {
                    participant_id: ParticipantId(*id),
                    level: 90,
                })
                .collect(),
        }
    }

    fn chosen(stage: &Stage) -> Vec<Option<u64>> {
        stage
            .choose(&slots())
            .into_iter()
            .map(|(_, t)| t.map(|t| t.0))
            .collect()
    }

    #[test]
    fn the_first_joined_until_someone_speaks_then_the_latest_speaker_stays() {
        let mut stage = Stage::new(None);
        assert_eq!(chosen(&stage), vec![None, None]);
        assert!(stage.on_message(&ServerMessage::ParticipantJoined {
            participant: person(1, "ada")
        }));
        stage.on_message(&ServerMessage::ParticipantJoined {
            participant: person(2, "bob"),
        });
        assert_eq!(chosen(&stage), vec![Some(10), Some(11)]);
        assert!(stage.on_message(&speakers(&[2])));
        assert_eq!(chosen(&stage), vec![Some(20), Some(21)]);
        // Silence: bob keeps the stage.
        assert!(!stage.on_message(&speakers(&[])));
        assert_eq!(chosen(&stage), vec![Some(20), Some(21)]);
        stage.on_message(&speakers(&[1]));
        assert_eq!(chosen(&stage), vec![Some(10), Some(11)]);
        // The speaker leaves: the one who spoke before takes over.
        stage.on_message(&ServerMessage::ParticipantLeft {
            participant_id: ParticipantId(1),
        });
        assert_eq!(chosen(&stage), vec![Some(20), Some(21)]);
    }

    #[test]
    fn a_pinned_participant_by_id_or_name_comes_first() {
        for pin in ["p2", "2", "bob"] {
            let mut stage = Stage::new(Some(pin.into()));
            stage.on_message(&ServerMessage::ParticipantJoined {
                participant: person(1, "ada"),
            });
            assert_eq!(chosen(&stage), vec![Some(10), Some(11)], "not here yet");
            stage.on_message(&ServerMessage::ParticipantJoined {
                participant: person(2, "bob"),
            });
            stage.on_message(&speakers(&[1]));
            assert_eq!(chosen(&stage), vec![Some(20), Some(21)], "pinned {pin}");
        }
    }

    #[test]
    fn slots_take_the_next_participant_with_that_kind_and_cameras_before_screens() {
        let mut stage = Stage::new(None);
        let mut ada = person(1, "ada");
        ada.tracks.retain(|t| t.kind == MediaKind::Audio);
        let mut bob = person(2, "bob");
        bob.tracks
            .push(track(29, MediaKind::Video, TrackSource::Screen));
        stage.on_message(&ServerMessage::ParticipantJoined { participant: ada });
        stage.on_message(&ServerMessage::ParticipantJoined { participant: bob });
        let mut many = slots();
        many.push(ViewerSlot {
            mid: "2".into(),
            kind: MediaKind::Audio,
        });
        many.push(ViewerSlot {
            mid: "3".into(),
            kind: MediaKind::Video,
        });
        let got: Vec<_> = stage
            .choose(&many)
            .into_iter()
            .map(|(m, t)| (m, t.map(|t| t.0)))
            .collect();
        assert_eq!(
            got,
            vec![
                ("0".into(), Some(10)),
                ("1".into(), Some(21)),
                ("2".into(), Some(20)),
                ("3".into(), None),
            ]
        );
        stage.on_message(&ServerMessage::TrackUnpublished {
            participant_id: ParticipantId(2),
            track_id: TrackId(21),
        });
        assert_eq!(chosen(&stage), vec![Some(10), Some(29)]);
    }
}
