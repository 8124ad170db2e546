//! The peer of a WHEP viewer: a subscriber leg on which the client offers (recvonly) and
//! the server answers, unlike the web app's subscriber leg, where the server offers.
//!
//! Every audio or video m-line the client receives on gets a sending track at once, with
//! no codec preference, so the answer takes every codec both sides have. The m-line is a
//! *slot*: it carries one source track at a time, and the source can change (the room's
//! speaker changed) without any renegotiation. Its outgoing copy keeps its own SSRC and
//! continues its sequence numbers and timestamps across the change, as across a layer
//! switch. An unbound slot is keyed by a placeholder [`TrackId`] that no real track has,
//! and sends nothing.

use std::time::Instant;

use chorus_protocol::{MediaKind, TrackId};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};

use super::{
    HeaderRewrite, Outbound, Peer, PeerSettings, SendCounters, SourceCodec, early_checks, internal,
    sdp_error,
};
use crate::MediaError;

/// The most m-lines a viewer's offer may receive on: a player offers one audio and one
/// video; a mosaic a few of each.
pub const MAX_VIEWER_SLOTS: usize = 16;

/// One m-line of a viewer's offer that Chorus sends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerSlot {
    pub mid: String,
    pub kind: MediaKind,
}

/// The placeholder key of unbound slot `index`: far above any id the worker hands out.
fn placeholder(index: usize) -> TrackId {
    TrackId(u64::MAX - index as u64)
}

impl Peer {
    /// A WHEP viewer's peer: a subscriber leg that answers. Its connectivity checks are
    /// taken at once, since the client's offer is applied before its first check.
    pub fn new_viewer(
        settings: &PeerSettings,
        ufrag: &str,
        pwd: &str,
        now: Instant,
    ) -> Result<Self, MediaError> {
        let mut peer = Peer::new(
            settings,
            chorus_protocol::PeerRole::Subscriber,
            ufrag,
            pwd,
            now,
        )?;
        peer.early_checks = early_checks::EarlyChecks::default();
        Ok(peer)
    }

    /// Viewer: applies the client's offer, adds a sending track (with a fresh SSRC from
    /// `ssrc`) on every audio and video m-line it receives on, and returns the answer and
    /// those m-lines, in offer order. An offer that receives nothing is refused.
    pub fn answer_viewer(
        &mut self,
        sdp: String,
        mut ssrc: impl FnMut() -> u32,
        now: Instant,
    ) -> Result<(String, Vec<ViewerSlot>), MediaError> {
        let kinds = mid_kinds(&sdp);
        let offer = RTCSessionDescription::offer(sdp).map_err(sdp_error)?;
        self.pc()
            .set_remote_description(now, offer)
            .map_err(sdp_error)?;
        let mut wanted = Vec::new();
        let ids: Vec<_> = self.pc().get_transceivers().collect();
        for id in ids {
            let Some(t) = self.pc().rtp_transceiver(id) else {
                continue;
            };
            let Some(mid) = t.mid().clone() else { continue };
            if t.sender().is_some() {
                continue;
            }
            // A transceiver made for a recvonly m-line has no receiver to ask its kind.
            let Some(media_kind) = kinds.iter().find(|(m, _)| *m == mid).map(|(_, k)| *k) else {
                continue;
            };
            let kind = match media_kind {
                MediaKind::Audio => RtpCodecKind::Audio,
                MediaKind::Video => RtpCodecKind::Video,
            };
            wanted.push((mid, kind, media_kind));
        }
        if wanted.is_empty() {
            return Err(MediaError::InvalidSdp(
                "the offer receives no audio or video".into(),
            ));
        }
        if wanted.len() > MAX_VIEWER_SLOTS {
            return Err(MediaError::InvalidSdp(format!(
                "the offer receives on {} m-lines; at most {MAX_VIEWER_SLOTS}",
                wanted.len()
            )));
        }
        let mut slots = Vec::new();
        for (index, (mid, kind, media_kind)) in wanted.into_iter().enumerate() {
            let ssrc = ssrc();
            let rtc_track_id = format!("chorus-view-{mid}");
            let media = MediaStreamTrack::new(
                rtc_track_id.clone(),
                rtc_track_id.clone(),
                rtc_track_id.clone(),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    // No preference: the answer takes every codec both sides have, so
                    // that a slot can carry any source whose codec the client accepts.
                    codec: RTCRtpCodec::default(),
                    ..Default::default()
                }],
            );
            // add_track takes the first transceiver of the kind without a sender: the
            // offer's m-lines, in order.
            let sender: RTCRtpSenderId = self.pc().add_track(media).map_err(internal)?;
            let key = placeholder(index);
            self.outbound_by_rtc.insert(rtc_track_id.clone(), key);
            self.outbound.insert(
                key,
                Outbound {
                    sender,
                    rtc_track_id,
                    mid: Some(mid.clone()),
                    source: unbound_source(media_kind),
                    rewrite: HeaderRewrite::new(ssrc),
                    sent: SendCounters::default(),
                    ready: false,
                    twcc: None,
                },
            );
            slots.push(ViewerSlot {
                mid,
                kind: media_kind,
            });
        }
        let answer = self.pc().create_answer(None).map_err(sdp_error)?;
        self.pc()
            .set_local_description(now, answer)
            .map_err(sdp_error)?;
        let answer = self
            .pc()
            .local_description()
            .ok_or_else(|| MediaError::Internal("no local description".into()))?
            .sdp
            .clone();
        // The senders' mids are those of the offer's m-lines they took.
        let ids: Vec<_> = self.pc().get_transceivers().collect();
        for id in ids {
            let Some(t) = self.pc().rtp_transceiver(id) else {
                continue;
            };
            let (Some(mid), Some(sender)) = (t.mid().clone(), t.sender()) else {
                continue;
            };
            if let Some(out) = self.outbound.values_mut().find(|o| o.sender == sender) {
                out.mid = Some(mid);
            }
        }
        Ok((answer, slots))
    }

    /// Viewer: the track slot `mid` carries now (`None` while unbound or unknown).
    pub fn viewer_source(&self, mid: &str) -> Option<TrackId> {
        self.outbound
            .iter()
            .find(|(_, o)| o.mid.as_deref() == Some(mid))
            .map(|(track, _)| *track)
            .filter(|track| track.0 < u64::MAX - MAX_VIEWER_SLOTS as u64)
    }

    /// Viewer: makes slot `mid` carry `track`, whose codec is `source`, or nothing. The
    /// slot's SSRC and numbering go on. Refused when the client did not accept the
    /// source's codec on that m-line (the slot is then unbound).
    pub fn bind_viewer_slot(
        &mut self,
        mid: &str,
        source: Option<(TrackId, SourceCodec)>,
    ) -> Result<(), MediaError> {
        let Some((index, key)) = self
            .outbound
            .iter()
            .find(|(_, o)| o.mid.as_deref() == Some(mid))
            .map(|(k, o)| (o.rtc_track_id.clone(), *k))
        else {
            return Err(MediaError::UnknownTrack);
        };
        let Some(mut out) = self.outbound.remove(&key) else {
            return Err(MediaError::UnknownTrack);
        };
        // Placeholders are numbered by slot; a slot keeps the one it had, or takes the
        // first free one.
        let free = (0..=MAX_VIEWER_SLOTS)
            .map(placeholder)
            .find(|p| !self.outbound.contains_key(p))
            .unwrap_or(placeholder(MAX_VIEWER_SLOTS));
        let kind = out.source.kind;
        let (new_key, codec) = match source {
            Some((track, codec)) if codec.kind == kind => (track, codec),
            _ => (free, unbound_source(kind)),
        };
        out.source = codec;
        self.outbound.insert(new_key, out);
        self.outbound_by_rtc.insert(index, new_key);
        self.ready_outbound(new_key);
        let bound = self.outbound.get(&new_key).is_some_and(|o| o.ready);
        if new_key != free && !bound {
            // The client did not take this codec here: unbind the slot.
            if let Some(mut out) = self.outbound.remove(&new_key) {
                out.source = unbound_source(kind);
                out.ready = false;
                let rtc = out.rtc_track_id.clone();
                self.outbound.insert(free, out);
                self.outbound_by_rtc.insert(rtc, free);
            }
            return Err(MediaError::InvalidSdp(format!(
                "the viewer did not accept this track's codec on m-line {mid}"
            )));
        }
        Ok(())
    }
}

/// The kind of every audio and video m-line of an offer that the client receives on
/// (`recvonly` or `sendrecv`, the default), by its mid.
fn mid_kinds(sdp: &str) -> Vec<(String, MediaKind)> {
    struct Section {
        kind: Option<MediaKind>,
        mid: Option<String>,
        receives: bool,
    }
    let mut sections: Vec<Section> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim();
        if let Some(media) = line.strip_prefix("m=") {
            sections.push(Section {
                kind: match media.split(' ').next() {
                    Some("audio") => Some(MediaKind::Audio),
                    Some("video") => Some(MediaKind::Video),
                    _ => None,
                },
                mid: None,
                receives: true,
            });
        } else if let Some(section) = sections.last_mut() {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                section.mid = Some(mid.trim().to_owned());
            } else if line == "a=sendonly" || line == "a=inactive" {
                section.receives = false;
            }
        }
    }
    sections
        .into_iter()
        .filter(|s| s.receives)
        .filter_map(|s| Some((s.mid?, s.kind?)))
        .collect()
}

/// What an unbound slot of `kind` claims to carry: no codec, so nothing is ready.
fn unbound_source(kind: MediaKind) -> SourceCodec {
    SourceCodec {
        kind,
        codec: RTCRtpCodec::default(),
        payload_type: 0,
        red: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m_lines_are_read_by_mid() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:v\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\na=mid:s\r\n";
        assert_eq!(
            mid_kinds(sdp),
            vec![
                ("0".into(), MediaKind::Audio),
                ("v".into(), MediaKind::Video)
            ]
        );
    }
}
