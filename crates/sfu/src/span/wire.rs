//! What crosses a node link after its handshake: [`SpanMessage`]s as JSON in text frames,
//! and media packets in binary frames ([`write_media`], [`read_media`]).

use bytes::{Buf, BufMut, Bytes};
use chorus_protocol::{
    ClientMessage, ErrorCode, Grants, IceCandidate, MediaKind, ParticipantId, PeerRole,
    PublishTrack, RoomId, ServerMessage, TrackId,
};
use serde::{Deserialize, Serialize};

use crate::MediaError;
use crate::allocate::{LayerCost, Tile};
use crate::peer::MediaPacket;
use crate::peer::wire::CodecWire;
use crate::worker::{PublishOutcome, PublishedTrack, SubscriberOffer};

/// One control message on a node link. Sessions travel satellite → owner (`join`,
/// `client`, `gone`) and owner → satellite (`joined`, `deliver`); the owner's rooms drive
/// the satellite's media workers (`command` → `reply`, `notice` back); both sides tell
/// each other which tracks they need (`want`, `keyframe`, `trackEnded`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum SpanMessage {
    /// A session on the satellite joins the owner's room.
    Join {
        room: RoomId,
        participant: ParticipantId,
        name: String,
        identity: Option<String>,
        grants: Grants,
        ingest: bool,
    },
    /// The owner's answer to a join: `None` if admitted, else why not.
    Joined {
        participant: ParticipantId,
        refused: Option<(ErrorCode, String)>,
    },
    /// A message from a satellite's participant to its room.
    Client {
        room: RoomId,
        participant: ParticipantId,
        message: ClientMessage,
    },
    /// A satellite's participant's WebSocket closed.
    Gone {
        room: RoomId,
        participant: ParticipantId,
    },
    /// A message from the room to a satellite's participant.
    Deliver {
        participant: ParticipantId,
        message: ServerMessage,
    },
    /// The room asks the satellite's media worker of a participant to act.
    Command {
        id: u64,
        room: RoomId,
        command: CommandWire,
    },
    /// The satellite's answer to a command that wants one.
    Reply {
        id: u64,
        room: RoomId,
        result: Result<ReplyWire, (ErrorCode, String)>,
    },
    /// A media worker's notice about a satellite's participant, for its room.
    Notice { room: RoomId, notice: NoticeWire },
    /// Whether the sender's node wants the packets of a track the other node sent it the
    /// description of, and the highest layer it needs (dynacast).
    Want {
        track: TrackId,
        fed: bool,
        highest: Option<u8>,
    },
    /// The sender's node needs a keyframe of a track the other node feeds it.
    Keyframe { track: TrackId, layer: u8 },
    /// A track the sender described ended.
    TrackEnded { track: TrackId },
    /// The sender is alive (sent every second; a link that hears nothing for a while is
    /// closed).
    Alive,
}

/// A [`crate::worker::WorkerCommand`] for a satellite's participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum CommandWire {
    Register {
        participant: ParticipantId,
        ingest: bool,
    },
    Publish {
        participant: ParticipantId,
        sdp: String,
        tracks: Vec<PublishTrack>,
    },
    TrackSettings {
        participant: ParticipantId,
        track: TrackId,
        tile: TileWire,
    },
    /// With the description of every track the owner's node knows, so that the satellite
    /// can mirror the ones published elsewhere.
    SyncSubscriptions {
        participant: ParticipantId,
        tracks: Vec<TrackId>,
        described: Vec<TrackWire>,
    },
    SubscribeAnswer {
        participant: ParticipantId,
        sdp: String,
    },
    Candidate {
        participant: ParticipantId,
        role: PeerRole,
        candidate: IceCandidate,
    },
    Remove {
        participant: ParticipantId,
    },
    Silence {
        track: TrackId,
        silenced: bool,
    },
    Speaker {
        previous: Option<ParticipantId>,
        current: Option<ParticipantId>,
    },
}

impl CommandWire {
    /// Whether the owner's room awaits a [`SpanMessage::Reply`] to it.
    pub fn wants_reply(&self) -> bool {
        !matches!(
            self,
            CommandWire::Register { .. }
                | CommandWire::Remove { .. }
                | CommandWire::Silence { .. }
                | CommandWire::Speaker { .. }
        )
    }
}

/// A [`Tile`] on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TileWire {
    Unknown,
    Hidden,
    Size(u16, u16),
}

impl From<Tile> for TileWire {
    fn from(tile: Tile) -> Self {
        match tile {
            Tile::Unknown => TileWire::Unknown,
            Tile::Hidden => TileWire::Hidden,
            Tile::Size { width, height } => TileWire::Size(width, height),
        }
    }
}

impl From<TileWire> for Tile {
    fn from(tile: TileWire) -> Self {
        match tile {
            TileWire::Unknown => Tile::Unknown,
            TileWire::Hidden => Tile::Hidden,
            TileWire::Size(width, height) => Tile::Size { width, height },
        }
    }
}

/// A command's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ReplyWire {
    Done,
    /// A publish offer applied: the answer, every track sent now (mid, track, kind), and
    /// the description of each, so the owner's node can mirror them.
    Published {
        answer: String,
        tracks: Vec<(String, TrackId, MediaKind)>,
        described: Vec<TrackWire>,
    },
    /// Subscriptions synced: the offer, if anything changed (SDP, mid → track).
    Synced {
        offer: Option<(String, Vec<(String, TrackId)>)>,
    },
}

impl ReplyWire {
    pub fn published(outcome: PublishOutcome, described: Vec<TrackWire>) -> Self {
        ReplyWire::Published {
            answer: outcome.answer,
            tracks: outcome
                .tracks
                .into_iter()
                .map(|t| (t.mid, t.track, t.kind))
                .collect(),
            described,
        }
    }

    /// The publish outcome this reply carries.
    pub fn into_published(self) -> Result<(PublishOutcome, Vec<TrackWire>), MediaError> {
        match self {
            ReplyWire::Published {
                answer,
                tracks,
                described,
            } => Ok((
                PublishOutcome {
                    answer,
                    tracks: tracks
                        .into_iter()
                        .map(|(mid, track, kind)| PublishedTrack { mid, track, kind })
                        .collect(),
                },
                described,
            )),
            _ => Err(mismatch()),
        }
    }

    pub fn synced(offer: Option<SubscriberOffer>) -> Self {
        ReplyWire::Synced {
            offer: offer.map(|o| (o.sdp, o.mids)),
        }
    }

    pub fn into_synced(self) -> Result<Option<SubscriberOffer>, MediaError> {
        match self {
            ReplyWire::Synced { offer } => {
                Ok(offer.map(|(sdp, mids)| SubscriberOffer { sdp, mids }))
            }
            _ => Err(mismatch()),
        }
    }

    pub fn into_done(self) -> Result<(), MediaError> {
        match self {
            ReplyWire::Done => Ok(()),
            _ => Err(mismatch()),
        }
    }
}

fn mismatch() -> MediaError {
    MediaError::Internal("the other node answered another command".into())
}

/// A media error as the far node reports it.
pub fn error_wire(err: &MediaError) -> (ErrorCode, String) {
    (err.code(), err.to_string())
}

/// A [`crate::worker::MediaNotice`] on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum NoticeWire {
    PeerFailed {
        participant: ParticipantId,
    },
    Deliver {
        participant: ParticipantId,
        message: ServerMessage,
    },
    AudioLevels {
        levels: Vec<(ParticipantId, u8)>,
    },
}

/// What a node needs to know of a track published on another to mirror it: the
/// [`crate::worker::relay::SharedTrack`]'s description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackWire {
    pub track: TrackId,
    pub publisher: ParticipantId,
    pub kind: MediaKind,
    pub codec: Option<CodecWire>,
    /// Per layer: (bitrate, width, height) as declared, or none.
    pub costs: Vec<Option<(u32, u16, u16)>>,
    pub screen: bool,
    pub silenced: bool,
}

impl TrackWire {
    pub fn costs(&self) -> Vec<Option<LayerCost>> {
        self.costs
            .iter()
            .map(|c| {
                c.map(|(bitrate, width, height)| LayerCost {
                    bitrate,
                    width,
                    height,
                })
            })
            .collect()
    }
}

/// The bytes of a media frame before the packet: track, layer, flags, frame size.
const MEDIA_HEADER: usize = 8 + 1 + 1 + 4;
const FLAG_KEYFRAME: u8 = 1;
const FLAG_SIZE: u8 = 2;

/// One packet of a track, as a binary frame carries it.
pub struct MediaFrame {
    pub track: TrackId,
    pub layer: u8,
    pub keyframe: bool,
    pub size: Option<(u16, u16)>,
    pub packet: MediaPacket,
}

/// Writes a media frame into `out` (cleared first).
pub fn write_media(
    out: &mut Vec<u8>,
    track: TrackId,
    layer: u8,
    keyframe: bool,
    size: Option<(u16, u16)>,
    packet: &MediaPacket,
) {
    out.clear();
    out.put_u64(track.0);
    out.put_u8(layer);
    out.put_u8(
        if keyframe { FLAG_KEYFRAME } else { 0 } | if size.is_some() { FLAG_SIZE } else { 0 },
    );
    let (w, h) = size.unwrap_or((0, 0));
    out.put_u16(w);
    out.put_u16(h);
    packet.write_link(out);
}

/// Reads a media frame; None when the bytes are not one.
pub fn read_media(mut bytes: Bytes) -> Option<MediaFrame> {
    if bytes.len() < MEDIA_HEADER {
        return None;
    }
    let track = TrackId(bytes.get_u64());
    let layer = bytes.get_u8();
    let flags = bytes.get_u8();
    let (w, h) = (bytes.get_u16(), bytes.get_u16());
    let packet = MediaPacket::read_link(bytes)?;
    Some(MediaFrame {
        track,
        layer,
        keyframe: flags & FLAG_KEYFRAME != 0,
        size: (flags & FLAG_SIZE != 0).then_some((w, h)),
        packet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_json() {
        let messages = [
            SpanMessage::Command {
                id: 7,
                room: RoomId::new("r").unwrap(),
                command: CommandWire::TrackSettings {
                    participant: ParticipantId(3),
                    track: TrackId(9),
                    tile: TileWire::Size(320, 180),
                },
            },
            SpanMessage::Reply {
                id: 7,
                room: RoomId::new("r").unwrap(),
                result: Err((ErrorCode::InvalidSdp, "bad".into())),
            },
            SpanMessage::Want {
                track: TrackId(9),
                fed: true,
                highest: Some(1),
            },
        ];
        for message in messages {
            let json = serde_json::to_string(&message).unwrap();
            let back: SpanMessage = serde_json::from_str(&json).unwrap();
            assert_eq!(back, message, "{json}");
        }
        assert!(serde_json::from_str::<SpanMessage>("{\"type\":\"want\"}").is_err());
    }

    #[test]
    fn a_media_frame_reads_back_and_short_ones_do_not() {
        let mut raw = Vec::new();
        // a packet as its origin would hand it over: built through the link format
        let mut rtp = vec![0xFF, 1, 96, 0, 5, 0, 0, 0, 9, 0, 0, 0, 42, 0];
        rtp.extend_from_slice(b"payload");
        let packet = MediaPacket::read_link(Bytes::from(rtp)).unwrap();
        write_media(&mut raw, TrackId(77), 2, true, Some((640, 360)), &packet);
        let frame = read_media(Bytes::from(raw.clone())).unwrap();
        assert_eq!(
            (frame.track, frame.layer, frame.keyframe),
            (TrackId(77), 2, true)
        );
        assert_eq!(frame.size, Some((640, 360)));
        assert_eq!(frame.packet.sequence_number(), 5);
        assert_eq!(frame.packet.payload(), b"payload");
        for cut in 0..MEDIA_HEADER + 14 {
            assert!(
                read_media(Bytes::from(raw[..cut].to_vec())).is_none(),
                "{cut}"
            );
        }
    }
}
