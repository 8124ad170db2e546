//! One signaling session: a WebSocket, parsed once at the edge into [`ClientMessage`]s.
//!
//! The session is generic over a `Sink`/`Stream` of frames, so tests drive it with
//! channels. It owns the participant's membership: when the socket ends without `leave`,
//! it tells the room, and the room tells the others.

use chorus_protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};
use chorus_sfu::{Hub, Membership};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};

/// Messages queued from the room to this session. Bounded: when a client reads too slowly
/// and the queue fills, the room removes the participant instead of waiting for it.
pub const SESSION_QUEUE: usize = 256;

/// A frame in either direction, independent of the WebSocket library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(usize),
    Close,
}

/// Settings of a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Text frames longer than this get a `messageTooLarge` error.
    pub max_message_bytes: usize,
}

/// Runs a session until the client goes or the server says goodbye.
pub async fn run<S, R>(hub: Hub, limits: SessionLimits, mut sink: S, mut stream: R)
where
    S: Sink<Frame> + Unpin,
    R: Stream<Item = Frame> + Unpin,
{
    let (out_tx, mut out_rx) = mpsc::channel::<ServerMessage>(SESSION_QUEUE);
    let mut session = Session {
        hub,
        limits,
        out_tx,
        membership: None,
        room_watch: None,
    };
    loop {
        let reply = tokio::select! {
            frame = stream.next() => match frame {
                None | Some(Frame::Close) => break,
                Some(frame) => session.on_frame(frame).await,
            },
            Some(message) = out_rx.recv() => {
                let bye = matches!(message, ServerMessage::Bye { .. });
                if sink.send(Frame::Text(message.to_json())).await.is_err() {
                    break;
                }
                if bye {
                    // The room has already let the participant go.
                    session.membership = None;
                    let _ = sink.send(Frame::Close).await;
                    break;
                }
                None
            },
            Some(rooms) = watch_next(&mut session.room_watch) => {
                Some(ServerMessage::RoomList { rooms })
            },
        };
        if let Some(reply) = reply
            && sink.send(Frame::Text(reply.to_json())).await.is_err()
        {
            break;
        }
    }
    if let Some(membership) = session.membership.take() {
        membership.gone().await;
    }
}

/// The next room list from a watch, or never when there is no watch.
async fn watch_next(
    watch: &mut Option<watch::Receiver<Vec<chorus_protocol::RoomSummary>>>,
) -> Option<Vec<chorus_protocol::RoomSummary>> {
    match watch {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

struct Session {
    hub: Hub,
    limits: SessionLimits,
    out_tx: mpsc::Sender<ServerMessage>,
    membership: Option<Membership>,
    /// Set while a session that has not joined watches the room list.
    room_watch: Option<watch::Receiver<Vec<chorus_protocol::RoomSummary>>>,
}

impl Session {
    /// Handles one frame; returns a direct reply, if any.
    async fn on_frame(&mut self, frame: Frame) -> Option<ServerMessage> {
        let text = match frame {
            Frame::Text(text) => text,
            Frame::Binary(_) => {
                return Some(ServerMessage::error(
                    ErrorCode::MalformedJson,
                    "send JSON in text frames",
                ));
            }
            Frame::Close => return None,
        };
        if text.len() > self.limits.max_message_bytes {
            return Some(ServerMessage::error(
                ErrorCode::MessageTooLarge,
                format!(
                    "message of {} bytes is over the limit of {}",
                    text.len(),
                    self.limits.max_message_bytes
                ),
            ));
        }
        match ClientMessage::parse(&text) {
            Ok(message) => self.on_message(message).await,
            Err(err) => Some(ServerMessage::error(err.code(), err.to_string())),
        }
    }

    async fn on_message(&mut self, message: ClientMessage) -> Option<ServerMessage> {
        match message {
            ClientMessage::Join {
                version,
                room,
                name,
            } => {
                if self.membership.is_some() {
                    return Some(ServerMessage::error(
                        ErrorCode::OutOfOrder,
                        "already in a room; leave first",
                    ));
                }
                if version != PROTOCOL_VERSION {
                    return Some(ServerMessage::error(
                        ErrorCode::UnsupportedVersion,
                        format!("this server speaks protocol version {PROTOCOL_VERSION}"),
                    ));
                }
                match self.hub.join(room, name, self.out_tx.clone()).await {
                    Ok(membership) => {
                        tracing::info!(participant = %membership.participant, room = %membership.room, "joined");
                        self.membership = Some(membership);
                        self.room_watch = None;
                        None
                    }
                    Err(err) => Some(ServerMessage::error(err.code(), err.to_string())),
                }
            }
            ClientMessage::ListRooms => {
                if self.membership.is_none() {
                    let mut watch = self.hub.watch_rooms();
                    watch.mark_unchanged();
                    self.room_watch = Some(watch);
                }
                Some(ServerMessage::RoomList {
                    rooms: self.hub.room_list(),
                })
            }
            ClientMessage::Leave => match self.membership.take() {
                Some(membership) => {
                    membership.send(ClientMessage::Leave).await;
                    None
                }
                None => Some(ServerMessage::error(ErrorCode::OutOfOrder, "not in a room")),
            },
            other => match &self.membership {
                Some(membership) => {
                    if membership.send(other).await {
                        None
                    } else {
                        self.membership = None;
                        Some(ServerMessage::error(
                            ErrorCode::Internal,
                            "the room has closed",
                        ))
                    }
                }
                None => Some(ServerMessage::error(
                    ErrorCode::OutOfOrder,
                    "join a room first",
                )),
            },
        }
    }
}
