//! The room state machine, driven by inputs with no sockets and no tasks.

use super::*;
use crate::worker::{PublishOutcome, PublishedTrack, SubscriberOffer};

fn room(max: usize) -> Room {
    Room::new(
        RoomId::new("test").expect("room id"),
        RoomLimits {
            max_participants: max,
            chat_history: 2,
            max_chat_chars: 20,
            max_tracks_per_participant: 8,
            max_subscriptions_per_participant: 100,
        },
    )
}

fn join(room: &mut Room, id: u64, name: &str) -> Vec<Effect> {
    room.handle(Input::Join {
        participant: ParticipantId(id),
        name: name.into(),
        identity: None,
        grants: Grants::default(),
        ice_servers: vec![],
    })
}

fn sent_to(effects: &[Effect], id: u64) -> Vec<&ServerMessage> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(p, m) if *p == ParticipantId(id) => Some(m),
            _ => None,
        })
        .collect()
}

fn syncs(effects: &[Effect]) -> Vec<(u64, Vec<u64>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::SyncSubscriptions {
                participant,
                tracks,
            } => Some((participant.0, tracks.iter().map(|t| t.0).collect())),
            _ => None,
        })
        .collect()
}

/// Publishes audio (track 10*id) and video (10*id+1) for participant `id`.
fn publish(room: &mut Room, id: u64) -> Vec<Effect> {
    let p = ParticipantId(id);
    let tracks = vec![PublishTrack {
        mid: "1".into(),
        source: TrackSource::Screen,
        layers: Vec::new(),
    }];
    let fx = room.handle(Input::PublishOffer {
        participant: p,
        sdp: "offer".into(),
        tracks: tracks.clone(),
    });
    assert_eq!(
        fx,
        vec![Effect::Publish {
            participant: p,
            sdp: "offer".into(),
            tracks,
        }]
    );
    room.handle(Input::PublishApplied {
        participant: p,
        result: Ok(PublishOutcome {
            answer: "answer".into(),
            tracks: vec![
                PublishedTrack {
                    mid: "0".into(),
                    track: TrackId(10 * id),
                    kind: MediaKind::Audio,
                },
                PublishedTrack {
                    mid: "1".into(),
                    track: TrackId(10 * id + 1),
                    kind: MediaKind::Video,
                },
            ],
        }),
    })
}

#[test]
fn join_tells_everyone_and_refuses_when_full() {
    let mut r = room(2);
    let fx = join(&mut r, 1, "Ada");
    assert!(fx.contains(&Effect::Admitted(ParticipantId(1))));
    assert!(
        matches!(sent_to(&fx, 1)[0], ServerMessage::Joined { participants, .. } if participants.is_empty())
    );
    let fx = join(&mut r, 2, "Grace");
    assert!(
        matches!(sent_to(&fx, 1)[0], ServerMessage::ParticipantJoined { participant } if participant.name == "Grace")
    );
    assert!(
        matches!(sent_to(&fx, 2)[0], ServerMessage::Joined { participants, .. } if participants.len() == 1)
    );
    let fx = join(&mut r, 3, "Linus");
    assert!(matches!(
        &fx[..],
        [Effect::Refused(ParticipantId(3), ErrorCode::RoomFull, _)]
    ));
    assert_eq!(r.len(), 2);
}

#[test]
fn publishing_announces_tracks_and_subscribes_the_others() {
    let mut r = room(10);
    join(&mut r, 1, "Ada");
    join(&mut r, 2, "Grace");
    let fx = publish(&mut r, 1);
    // the publisher gets its answer with the mid → track map
    assert!(
        matches!(sent_to(&fx, 1)[0], ServerMessage::PublishAnswer { tracks, .. } if tracks.len() == 2)
    );
    // the other hears of both tracks; the declared source is kept
    let to2 = sent_to(&fx, 2);
    assert_eq!(to2.len(), 2);
    assert!(
        matches!(to2[1], ServerMessage::TrackPublished { track, .. } if track.source == TrackSource::Screen)
    );
    assert_eq!(syncs(&fx), vec![(2, vec![10, 11])]);
}

#[test]
fn renegotiation_waits_for_the_outstanding_answer() {
    let mut r = room(10);
    join(&mut r, 1, "Ada");
    join(&mut r, 2, "Grace");
    join(&mut r, 3, "Linus");
    publish(&mut r, 1);
    let fx = r.handle(Input::SubscriptionsSynced {
        participant: ParticipantId(3),
        result: Ok(Some(SubscriberOffer {
            sdp: "sub-offer".into(),
            mids: vec![("0".into(), TrackId(10)), ("1".into(), TrackId(11))],
        })),
    });
    assert!(
        matches!(sent_to(&fx, 3)[0], ServerMessage::SubscribeOffer { tracks, .. }
        if tracks.iter().all(|t| t.participant_id == ParticipantId(1)) && tracks.len() == 2)
    );
    // participant 2 publishes while 3's offer is outstanding: no second offer yet
    let fx = publish(&mut r, 2);
    assert_eq!(syncs(&fx), vec![(1, vec![20, 21])]);
    // 3 answers: now the pending change goes out
    let fx = r.handle(Input::SubscribeAnswer {
        participant: ParticipantId(3),
        sdp: "ans".into(),
    });
    assert_eq!(
        fx,
        vec![Effect::ApplyAnswer {
            participant: ParticipantId(3),
            sdp: "ans".into()
        }]
    );
    let fx = r.handle(Input::AnswerApplied {
        participant: ParticipantId(3),
        result: Ok(()),
    });
    assert_eq!(syncs(&fx), vec![(3, vec![10, 11, 20, 21])]);
}

#[test]
fn an_answer_without_an_offer_is_out_of_order() {
    let mut r = room(10);
    join(&mut r, 1, "Ada");
    let fx = r.handle(Input::SubscribeAnswer {
        participant: ParticipantId(1),
        sdp: "x".into(),
    });
    assert!(matches!(
        sent_to(&fx, 1)[0],
        ServerMessage::Error {
            code: ErrorCode::OutOfOrder,
            ..
        }
    ));
}

#[test]
fn a_late_joiner_is_offered_existing_tracks() {
    let mut r = room(10);
    join(&mut r, 1, "Ada");
    publish(&mut r, 1);
    let fx = join(&mut r, 2, "Grace");
    assert!(
        matches!(sent_to(&fx, 2)[0], ServerMessage::Joined { participants, .. }
        if participants[0].tracks.len() == 2)
    );
    assert_eq!(syncs(&fx), vec![(2, vec![10, 11])]);
}

#[test]
fn leaving_removes_media_and_renegotiates_the_others() {
    let mut r = room(10);
    join(&mut r, 1, "Ada");
    join(&mut r, 2, "Grace");
    publish(&mut r, 1);
    r.handle(Input::SubscriptionsSynced {
        participant: ParticipantId(2),
        result: Ok(None),
    });
    let fx = r.handle(Input::Leave {
        participant: ParticipantId(1),
        reason: LeaveReason::Left,
    });
    assert!(fx.contains(&Effect::Remove(ParticipantId(1))));
    let to2 = sent_to(&fx, 2);
    assert!(matches!(
        to2[0],
        ServerMessage::TrackUnpublished {
            track_id: TrackId(10),
            ..
        }
    ));
    assert!(matches!(
        to2[1],
        ServerMessage::TrackUnpublished {
            track_id: TrackId(11),
            ..
        }
    ));
    assert!(
        matches!(to2[2], ServerMessage::ParticipantLeft { participant_id } if *participant_id == ParticipantId(1))
    );
    assert_eq!(syncs(&fx), vec![(2, vec![])]);
    assert!(fx.contains(&Effect::CountChanged(1)));
    let fx = r.handle(Input::Leave {
        participant: ParticipantId(2),
        reason: LeaveReason::MediaFailed,
    });
    assert!(matches!(
        sent_to(&fx, 2)[0],
        ServerMessage::Bye {
            reason: ByeReason::MediaFailed
        }
    ));
    assert!(r.is_empty());
}

#[test]
fn mute_chat_and_history() {
    let mut r = room(10);
    join(&mut r, 1, "Ada");
    join(&mut r, 2, "Grace");
    publish(&mut r, 1);
    let fx = r.handle(Input::SetMute {
        participant: ParticipantId(1),
        track: TrackId(10),
        muted: true,
    });
    assert!(matches!(
        sent_to(&fx, 2)[0],
        ServerMessage::MuteChanged { muted: true, .. }
    ));
    let fx = r.handle(Input::SetMute {
        participant: ParticipantId(2),
        track: TrackId(10),
        muted: true,
    });
    assert!(matches!(
        sent_to(&fx, 2)[0],
        ServerMessage::Error {
            code: ErrorCode::UnknownTrack,
            ..
        }
    ));
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        let fx = r.handle(Input::Chat {
            participant: ParticipantId(1),
            text: (*text).into(),
            time: i as u64,
        });
        assert_eq!(sent_to(&fx, 2).len(), 1);
    }
    let fx = r.handle(Input::Chat {
        participant: ParticipantId(1),
        text: "x".repeat(21),
        time: 9,
    });
    assert!(matches!(
        sent_to(&fx, 1)[0],
        ServerMessage::Error {
            code: ErrorCode::InvalidChat,
            ..
        }
    ));
    // the history keeps the last two lines
    let fx = join(&mut r, 3, "Linus");
    assert!(
        matches!(sent_to(&fx, 3)[0], ServerMessage::Joined { chat_history, .. }
        if chat_history.iter().map(|l| l.text.as_str()).collect::<Vec<_>>() == ["two", "three"])
    );
}

#[test]
fn shutdown_says_goodbye_to_everyone() {
    let mut r = room(10);
    join(&mut r, 1, "Ada");
    join(&mut r, 2, "Grace");
    let fx = r.handle(Input::Shutdown);
    for id in [1, 2] {
        assert!(matches!(
            sent_to(&fx, id)[0],
            ServerMessage::Bye {
                reason: ByeReason::ServerShutdown
            }
        ));
        assert!(fx.contains(&Effect::Remove(ParticipantId(id))));
    }
    assert!(r.is_empty());
}

fn join_as(room: &mut Room, id: u64, identity: Option<&str>, grants: Grants) -> Vec<Effect> {
    room.handle(Input::Join {
        participant: ParticipantId(id),
        name: format!("p{id}"),
        identity: identity.map(str::to_owned),
        grants,
        ice_servers: vec![],
    })
}

fn errors_to(effects: &[Effect], id: u64) -> Vec<ErrorCode> {
    sent_to(effects, id)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Error { code, .. } => Some(*code),
            _ => None,
        })
        .collect()
}

fn offer(room: &mut Room, id: u64, tracks: Vec<PublishTrack>) -> Vec<Effect> {
    room.handle(Input::PublishOffer {
        participant: ParticipantId(id),
        sdp: "offer".into(),
        tracks,
    })
}

#[test]
fn a_subscribe_only_participant_cannot_publish_and_still_receives() {
    let mut r = room(10);
    join(&mut r, 1, "Ada");
    let viewer = Grants {
        can_publish: false,
        ..Grants::default()
    };
    join_as(&mut r, 2, Some("viewer"), viewer);
    let fx = offer(&mut r, 2, Vec::new());
    assert_eq!(errors_to(&fx, 2), vec![ErrorCode::Forbidden]);
    assert_eq!(fx.len(), 1, "no publisher peer: {fx:?}");
    let fx = publish(&mut r, 1);
    assert_eq!(syncs(&fx), vec![(2, vec![10, 11])]);
}

#[test]
fn a_participant_that_may_not_subscribe_gets_no_subscriber_peer() {
    let mut r = room(10);
    join(&mut r, 1, "Ada");
    let deaf = Grants {
        can_subscribe: false,
        ..Grants::default()
    };
    join_as(&mut r, 2, None, deaf.clone());
    let fx = publish(&mut r, 1);
    assert_eq!(syncs(&fx), vec![]);
    assert_eq!(syncs(&join_as(&mut r, 3, None, deaf)), vec![]);
}

#[test]
fn sources_outside_the_grant_are_not_published() {
    let mut r = room(10);
    let microphone_only = Grants {
        can_publish_sources: vec![TrackSource::Microphone],
        ..Grants::default()
    };
    join_as(&mut r, 1, None, microphone_only);
    join(&mut r, 2, "Grace");
    // a declared screen share is refused before anything is negotiated
    let screen = vec![PublishTrack {
        mid: "1".into(),
        source: TrackSource::Screen,
        layers: Vec::new(),
    }];
    let fx = offer(&mut r, 1, screen);
    assert_eq!(errors_to(&fx, 1), vec![ErrorCode::Forbidden]);
    // an undeclared video m-line is a camera: negotiated, never published
    let fx = offer(&mut r, 1, Vec::new());
    assert!(matches!(fx[..], [Effect::Publish { .. }]));
    let fx = r.handle(Input::PublishApplied {
        participant: ParticipantId(1),
        result: Ok(PublishOutcome {
            answer: "answer".into(),
            tracks: vec![
                PublishedTrack {
                    mid: "0".into(),
                    track: TrackId(10),
                    kind: MediaKind::Audio,
                },
                PublishedTrack {
                    mid: "1".into(),
                    track: TrackId(11),
                    kind: MediaKind::Video,
                },
            ],
        }),
    });
    assert_eq!(errors_to(&fx, 1), vec![ErrorCode::Forbidden]);
    assert!(sent_to(&fx, 1).iter().any(
        |m| matches!(m, ServerMessage::PublishAnswer { tracks, .. } if tracks.len() == 1 && tracks[0].track_id == TrackId(10))
    ));
    let to2 = sent_to(&fx, 2);
    assert_eq!(to2.len(), 1);
    assert!(
        matches!(to2[0], ServerMessage::TrackPublished { track, .. } if track.id == TrackId(10))
    );
    assert_eq!(syncs(&fx), vec![(2, vec![10])]);
}

#[test]
fn chat_needs_the_grant() {
    let mut r = room(10);
    let mute = Grants {
        can_chat: false,
        ..Grants::default()
    };
    join_as(&mut r, 1, None, mute);
    join(&mut r, 2, "Grace");
    let fx = r.handle(Input::Chat {
        participant: ParticipantId(1),
        text: "hello".into(),
        time: 1,
    });
    assert_eq!(errors_to(&fx, 1), vec![ErrorCode::Forbidden]);
    assert!(sent_to(&fx, 2).is_empty());
}

#[test]
fn a_second_join_with_the_same_identity_replaces_the_first() {
    let mut r = room(2);
    join_as(&mut r, 1, Some("ada"), Grants::default());
    join_as(&mut r, 2, Some("grace"), Grants::default());
    publish(&mut r, 1);
    // the room is full, but the newcomer takes the old session's place
    let fx = join_as(&mut r, 3, Some("ada"), Grants::default());
    assert!(fx.contains(&Effect::Send(
        ParticipantId(1),
        ServerMessage::Bye {
            reason: ByeReason::Removed
        }
    )));
    assert!(fx.contains(&Effect::Remove(ParticipantId(1))));
    assert!(fx.contains(&Effect::Admitted(ParticipantId(3))));
    assert!(sent_to(&fx, 2).iter().any(|m| matches!(
        m,
        ServerMessage::ParticipantLeft { participant_id } if *participant_id == ParticipantId(1)
    )));
    assert_eq!(r.len(), 2);
}

#[test]
fn hidden_participants_are_not_listed() {
    let mut r = room(10);
    join(&mut r, 1, "Ada");
    let hidden = Grants {
        hidden: true,
        ..Grants::default()
    };
    let fx = join_as(&mut r, 2, Some("recorder"), hidden);
    assert!(sent_to(&fx, 1).is_empty());
    assert!(!fx.iter().any(|e| matches!(e, Effect::CountChanged(_))));
    let fx = join(&mut r, 3, "Grace");
    assert!(
        matches!(sent_to(&fx, 3)[0], ServerMessage::Joined { participants, .. } if participants.len() == 1)
    );
    // it receives, but may neither publish nor chat
    let fx = publish(&mut r, 1);
    assert!(syncs(&fx).contains(&(2, vec![10, 11])));
    assert_eq!(
        errors_to(&offer(&mut r, 2, Vec::new()), 2),
        vec![ErrorCode::Forbidden]
    );
    let fx = r.handle(Input::Leave {
        participant: ParticipantId(2),
        reason: LeaveReason::Left,
    });
    let not_events: Vec<_> = fx
        .iter()
        .filter(|e| !matches!(e, Effect::Event(_)))
        .collect();
    assert_eq!(not_events, vec![&Effect::Remove(ParticipantId(2))]);
}

fn events(effects: &[Effect]) -> Vec<&RoomEvent> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event(event) => Some(event),
            _ => None,
        })
        .collect()
}

fn names(effects: &[Effect]) -> Vec<&'static str> {
    events(effects).into_iter().map(RoomEvent::name).collect()
}

#[test]
fn the_room_reports_its_life_as_events() {
    let mut r = room(10);
    let fx = join_as(&mut r, 1, Some("ada"), Grants::default());
    assert_eq!(names(&fx), vec!["roomStarted", "participantJoined"]);
    assert!(matches!(
        events(&fx)[1],
        RoomEvent::ParticipantJoined { identity: Some(identity), name, .. } if identity == "ada" && name == "p1"
    ));
    join(&mut r, 2, "Grace");
    assert_eq!(names(&publish(&mut r, 1)), vec!["trackPublished"; 2]);
    // a reconnect replaces ada: her tracks go, she leaves, she joins again
    let fx = join_as(&mut r, 3, Some("ada"), Grants::default());
    assert_eq!(
        names(&fx),
        vec![
            "trackUnpublished",
            "trackUnpublished",
            "participantLeft",
            "participantJoined"
        ]
    );
    assert!(matches!(
        events(&fx)[2],
        RoomEvent::ParticipantLeft {
            reason: LeaveReason::Replaced,
            ..
        }
    ));
    let fx = r.handle(Input::Leave {
        participant: ParticipantId(2),
        reason: LeaveReason::Disconnected,
    });
    assert_eq!(names(&fx), vec!["participantLeft"]);
    let fx = r.handle(Input::Close);
    assert_eq!(names(&fx), vec!["participantLeft", "roomFinished"]);
    assert!(fx.contains(&Effect::Send(
        ParticipantId(3),
        ServerMessage::Bye {
            reason: ByeReason::RoomClosed
        }
    )));
    assert!(r.is_empty());
}

#[test]
fn admins_remove_and_mute_others_and_others_may_not() {
    let mut r = room(10);
    let admin = Grants {
        room_admin: true,
        ..Grants::default()
    };
    join_as(&mut r, 1, None, admin);
    join(&mut r, 2, "Grace");
    join(&mut r, 3, "Linus");
    publish(&mut r, 2);
    let by = |id| Some(ParticipantId(id));
    let fx = r.handle(Input::Remove {
        by: by(3),
        target: ParticipantId(2),
    });
    assert_eq!(errors_to(&fx, 3), vec![ErrorCode::Forbidden]);
    assert_eq!(r.len(), 3);
    let mute = |r: &mut Room, who, muted| {
        r.handle(Input::MuteTrack {
            by: by(who),
            target: ParticipantId(2),
            track: TrackId(20),
            muted,
        })
    };
    assert_eq!(
        errors_to(&mute(&mut r, 3, true), 3),
        vec![ErrorCode::Forbidden]
    );
    let fx = mute(&mut r, 1, true);
    assert!(fx.contains(&Effect::Silence {
        track: TrackId(20),
        silenced: true
    }));
    for id in [1, 2, 3] {
        assert!(sent_to(&fx, id).iter().any(|m| matches!(
            m,
            ServerMessage::MuteChanged { track_id, muted: true, .. } if *track_id == TrackId(20)
        )));
    }
    // the owner cannot undo it; muting again is not news
    let own_unmute = |r: &mut Room| {
        r.handle(Input::SetMute {
            participant: ParticipantId(2),
            track: TrackId(20),
            muted: false,
        })
    };
    assert_eq!(
        errors_to(&own_unmute(&mut r), 2),
        vec![ErrorCode::Forbidden]
    );
    assert!(mute(&mut r, 1, true).is_empty());
    // lifting it resumes forwarding; the owner unmutes when it wants to
    let fx = mute(&mut r, 1, false);
    assert_eq!(
        fx,
        vec![Effect::Silence {
            track: TrackId(20),
            silenced: false
        }]
    );
    assert_eq!(sent_to(&own_unmute(&mut r), 3).len(), 1);
    // unknown targets, then a removal by the admin and one by the operator
    let fx = r.handle(Input::Remove {
        by: by(1),
        target: ParticipantId(99),
    });
    assert_eq!(errors_to(&fx, 1), vec![ErrorCode::UnknownParticipant]);
    let fx = r.handle(Input::Remove {
        by: by(1),
        target: ParticipantId(2),
    });
    assert!(fx.contains(&Effect::Send(
        ParticipantId(2),
        ServerMessage::Bye {
            reason: ByeReason::Removed
        }
    )));
    assert!(sent_to(&fx, 3).iter().any(|m| matches!(
        m,
        ServerMessage::ParticipantLeft { participant_id } if *participant_id == ParticipantId(2)
    )));
    r.handle(Input::Remove {
        by: None,
        target: ParticipantId(3),
    });
    assert_eq!(r.len(), 1);
}

#[test]
fn tracks_and_subscriptions_are_capped_per_participant() {
    let mut r = Room::new(
        RoomId::new("test").expect("room id"),
        RoomLimits {
            max_participants: 10,
            chat_history: 2,
            max_chat_chars: 20,
            max_tracks_per_participant: 1,
            max_subscriptions_per_participant: 1,
        },
    );
    join(&mut r, 1, "Ada");
    join(&mut r, 2, "Grace");
    // two tracks, one allowed: the second is negotiated but never published
    let fx = publish(&mut r, 1);
    assert_eq!(errors_to(&fx, 1), vec![ErrorCode::LimitReached]);
    assert_eq!(syncs(&fx), vec![(2, vec![10])]);
    // two declared tracks are refused before anything is negotiated
    let two = vec![
        PublishTrack {
            mid: "0".into(),
            source: TrackSource::Microphone,
            layers: Vec::new(),
        },
        PublishTrack {
            mid: "1".into(),
            source: TrackSource::Camera,
            layers: Vec::new(),
        },
    ];
    assert_eq!(
        errors_to(&offer(&mut r, 2, two), 2),
        vec![ErrorCode::LimitReached]
    );
    publish(&mut r, 2);
    // a third participant would receive 10 and 20: it gets the earliest, and is told
    let fx = join(&mut r, 3, "Linus");
    assert_eq!(syncs(&fx), vec![(3, vec![10])]);
    assert_eq!(errors_to(&fx, 3), vec![ErrorCode::LimitReached]);
}
