//! WHEP viewers in the worker: the answering subscriber peer ([`Peer::new_viewer`]) and
//! its slots, each bound to one source track at a time. A bound slot is an ordinary
//! subscription of that track: forwarding, layer choice (the allocation pass, on the
//! viewer's transport-cc estimate when it negotiated transport-cc), keyframe requests and
//! retransmissions are those of any subscriber. Rebinding a slot ends the old
//! subscription and starts a new one, which starts on a keyframe of the new source.

use std::sync::atomic::Ordering;
use std::time::Instant;

use chorus_protocol::{ParticipantId, PeerRole, TrackId};

use super::{Subscription, Worker, random_ssrc};
use crate::MediaError;
use crate::layer::LayerSwitch;
use crate::peer::{Peer, ViewerSlot};
use crate::token::random_token;

impl Worker {
    /// Creates `participant`'s viewer peer from the client's offer; returns the answer
    /// and the slots (the m-lines it sends on), all unbound.
    pub(super) fn viewer_offer(
        &mut self,
        participant: ParticipantId,
        sdp: String,
        now: Instant,
    ) -> Result<(String, Vec<ViewerSlot>), MediaError> {
        let media = self
            .participants
            .get_mut(&participant)
            .ok_or(MediaError::UnknownParticipant)?;
        if media.subscriber.is_some() {
            return Err(MediaError::Internal(
                "this participant already views".into(),
            ));
        }
        let ufrag = random_token(16);
        let pwd = random_token(32);
        let mut peer = Peer::new_viewer(&self.settings, &ufrag, &pwd, now)?;
        let (answer, slots) = peer.answer_viewer(sdp, random_ssrc, now)?;
        media.subscriber = Some(peer);
        self.directory.insert(&ufrag, self.index);
        self.by_ufrag
            .insert(ufrag, (participant, PeerRole::Subscriber));
        self.stats.peers.fetch_add(1, Ordering::Relaxed);
        self.timers_from = now;
        self.touched.push(participant);
        Ok((answer, slots))
    }

    /// Binds each named slot of `participant`'s viewer peer to a track (or to nothing).
    /// Returns the mids refused because the viewer did not take the track's codec there.
    pub(super) fn viewer_bind(
        &mut self,
        participant: ParticipantId,
        slots: Vec<(String, Option<TrackId>)>,
        now: Instant,
    ) -> Result<Vec<String>, MediaError> {
        // tracks published on other workers are received through mirrors here
        for track in slots.iter().filter_map(|(_, wanted)| *wanted) {
            self.route_or_mirror(track, now);
        }
        let result = self.bind_slots(participant, slots, now);
        self.close_idle_mirrors();
        result
    }

    fn bind_slots(
        &mut self,
        participant: ParticipantId,
        slots: Vec<(String, Option<TrackId>)>,
        now: Instant,
    ) -> Result<Vec<String>, MediaError> {
        let mut refused = Vec::new();
        for (mid, wanted) in slots {
            let media = self
                .participants
                .get_mut(&participant)
                .ok_or(MediaError::UnknownParticipant)?;
            let peer = media
                .subscriber
                .as_mut()
                .ok_or(MediaError::UnknownParticipant)?;
            let current = peer.viewer_source(&mid);
            if current == wanted {
                continue;
            }
            if let Some(route) = current.and_then(|old| self.tracks.get_mut(&old)) {
                let before = route.subscribers.len();
                route.subscribers.retain(|s| s.participant != participant);
                let gone = (before - route.subscribers.len()) as u64;
                self.stats.subscriptions.fetch_sub(gone, Ordering::Relaxed);
            }
            let source = wanted.and_then(|track| {
                let codec = self.tracks.get(&track)?.codec.clone()?;
                Some((track, codec))
            });
            match peer.bind_viewer_slot(&mid, source.clone()) {
                Ok(()) => {
                    if let Some((track, _)) = source
                        && let Some(route) = self.tracks.get_mut(&track)
                    {
                        // Nothing flows until allocation picks a layer, on the next pass,
                        // which asks the publisher for a keyframe to start on.
                        route.subscribers.push(Subscription {
                            participant,
                            switch: LayerSwitch::new(),
                        });
                        self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(err) => {
                    tracing::debug!(%participant, %mid, %err, "viewer slot not bound");
                    refused.push(mid);
                }
            }
            self.next_allocation = now;
        }
        Ok(refused)
    }
}
