//! One signaling session: a WebSocket, parsed once at the edge into [`ClientMessage`]s.
//!
//! The session is generic over a `Sink`/`Stream` of frames, so tests drive it with
//! channels. It owns the participant's membership: when the socket ends without `leave`,
//! it tells the room, and the room tells the others.

use std::sync::Arc;

use chorus_protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};
use chorus_sfu::{Hub, Membership};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};

use crate::auth::{Auth, unix_now};

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

/// Runs a session until the client goes or the server says goodbye. `auth` decides who
/// may join and list rooms.
pub async fn run<S, R>(hub: Hub, limits: SessionLimits, auth: Arc<Auth>, mut sink: S, mut stream: R)
where
    S: Sink<Frame> + Unpin,
    R: Stream<Item = Frame> + Unpin,
{
    let mut session = Session {
        hub,
        limits,
        auth,
        membership: None,
        from_room: None,
        room_watch: None,
    };
    loop {
        let reply = tokio::select! {
            frame = stream.next() => match frame {
                None | Some(Frame::Close) => break,
                Some(frame) => session.on_frame(frame).await,
            },
            message = room_next(&mut session.from_room) => match message {
                Some(message) => {
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
                }
                None => {
                    // The room dropped this session's queue: it could not keep up and was
                    // removed. Close, so that the client reconnects with a clean state.
                    tracing::info!("session removed by its room; closing");
                    session.membership = None;
                    let _ = sink.send(Frame::Close).await;
                    break;
                }
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

/// The next message from the room, or never while the session is in no room.
async fn room_next(from_room: &mut Option<mpsc::Receiver<ServerMessage>>) -> Option<ServerMessage> {
    match from_room {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
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
    auth: Arc<Auth>,
    membership: Option<Membership>,
    /// The room's messages for this participant; a fresh queue per join, whose sender the
    /// room holds. It ends when the room removes the participant.
    from_room: Option<mpsc::Receiver<ServerMessage>>,
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
                token,
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
                let admitted = match self.auth.admit(token.as_deref(), &room, unix_now()) {
                    Ok(admitted) => admitted,
                    Err(err) => {
                        tracing::info!(%room, %err, "join refused");
                        return Some(ServerMessage::error(err.code(), err.to_string()));
                    }
                };
                let name = admitted.name.unwrap_or(name);
                let (to_session, from_room) = mpsc::channel(SESSION_QUEUE);
                match self
                    .hub
                    .join(room, name, admitted.admission, to_session)
                    .await
                {
                    Ok(membership) => {
                        tracing::info!(participant = %membership.participant, room = %membership.room, "joined");
                        self.membership = Some(membership);
                        self.from_room = Some(from_room);
                        self.room_watch = None;
                        None
                    }
                    Err(err) => Some(ServerMessage::error(err.code(), err.to_string())),
                }
            }
            ClientMessage::ListRooms => {
                if !self.auth.room_list_is_public() {
                    return Some(ServerMessage::error(
                        ErrorCode::Unauthorized,
                        "this server lists its rooms only to invited participants",
                    ));
                }
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
                    self.from_room = None;
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
                        self.from_room = None;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use std::collections::HashMap;

    use chorus_protocol::{Grants, RoomId, RoomSummary};
    use chorus_sfu::room::RoomLimits;
    use chorus_sfu::{HubConfig, PeerSettings};

    use super::*;
    use crate::auth::{AuthMode, Claims, Grant, sign};

    const DEADLINE: Duration = Duration::from_secs(5);

    async fn hub() -> Hub {
        let socket = chorus_sfu::net::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("udp");
        let addr = socket.local_addr().expect("addr");
        let worker = chorus_sfu::worker::spawn(
            socket,
            None,
            PeerSettings {
                candidates: vec![addr],
                tcp_candidates: vec![],
                srtp_profiles: vec!["aead_aes_128_gcm".into()],
                audio: Default::default(),
            },
            Arc::new(AtomicU64::new(1)),
        )
        .expect("media worker");
        Hub::new(
            worker,
            HubConfig {
                limits: RoomLimits {
                    max_participants: 2,
                    chat_history: 10,
                    max_chat_chars: 100,
                },
                max_rooms: 10,
                max_name_chars: 20,
                ice_servers: Arc::new(|_| Vec::new()),
                events: None,
                speakers: Default::default(),
            },
        )
    }

    /// A session driven by channels: frames in, parsed server messages out.
    struct Driver {
        input: mpsc::UnboundedSender<Frame>,
        output: mpsc::UnboundedReceiver<Frame>,
    }

    impl Driver {
        fn start(hub: &Hub) -> Self {
            Self::with_auth(hub, Auth::default())
        }

        fn with_auth(hub: &Hub, auth: Auth) -> Self {
            let (input, frames_in) = mpsc::unbounded_channel();
            let (frames_out, output) = mpsc::unbounded_channel();
            let stream = Box::pin(futures_util::stream::unfold(
                frames_in,
                |mut rx| async move { rx.recv().await.map(|frame| (frame, rx)) },
            ));
            let sink = Box::pin(futures_util::sink::unfold(
                frames_out,
                |tx, frame: Frame| async move {
                    tx.send(frame).map_err(|_| ())?;
                    Ok::<_, ()>(tx)
                },
            ));
            tokio::spawn(run(
                hub.clone(),
                SessionLimits {
                    max_message_bytes: 1000,
                },
                Arc::new(auth),
                sink,
                stream,
            ));
            Self { input, output }
        }

        fn send(&self, text: &str) {
            self.input
                .send(Frame::Text(text.to_owned()))
                .expect("session alive");
        }

        async fn next(&mut self) -> ServerMessage {
            let frame = tokio::time::timeout(DEADLINE, self.output.recv())
                .await
                .expect("a reply in time")
                .expect("session open");
            match frame {
                Frame::Text(text) => serde_json::from_str(&text).expect("server JSON"),
                other => panic!("unexpected frame {other:?}"),
            }
        }

        async fn expect_error(&mut self, code: ErrorCode) {
            match self.next().await {
                ServerMessage::Error { code: got, .. } => assert_eq!(got, code),
                other => panic!("expected {code:?}, got {other:?}"),
            }
        }
    }

    fn join(room: &str, name: &str) -> String {
        format!(r#"{{"type":"join","version":{PROTOCOL_VERSION},"room":"{room}","name":"{name}"}}"#)
    }

    #[tokio::test]
    async fn bad_frames_get_typed_errors_and_the_session_goes_on() {
        let hub = hub().await;
        let mut s = Driver::start(&hub);
        s.send("{oops");
        s.expect_error(ErrorCode::MalformedJson).await;
        s.send(r#"{"type":"dance"}"#);
        s.expect_error(ErrorCode::UnknownType).await;
        s.send(&format!(
            r#"{{"type":"chat","text":"{}"}}"#,
            "x".repeat(1100)
        ));
        s.expect_error(ErrorCode::MessageTooLarge).await;
        s.send(r#"{"type":"chat","text":"hi"}"#);
        s.expect_error(ErrorCode::OutOfOrder).await;
        s.input.send(Frame::Binary(3)).expect("alive");
        s.expect_error(ErrorCode::MalformedJson).await;
        s.send(r#"{"type":"join","version":99,"room":"a","name":"b"}"#);
        s.expect_error(ErrorCode::UnsupportedVersion).await;
        s.send(&join("a", ""));
        s.expect_error(ErrorCode::InvalidName).await;
        s.send(&join("a", "Ada"));
        assert!(matches!(s.next().await, ServerMessage::Joined { .. }));
        s.send(&join("b", "Ada"));
        s.expect_error(ErrorCode::OutOfOrder).await;
        s.send(r#"{"type":"chat","text":"hello"}"#);
        assert!(matches!(s.next().await, ServerMessage::Chat { line } if line.text == "hello"));
    }

    fn token_auth() -> Auth {
        Auth::new(
            AuthMode::Token,
            HashMap::from([("KEY".to_owned(), "SECRET".to_owned())]),
            false,
        )
    }

    fn token(room: &str, identity: &str, exp: u64, grants: Grants) -> String {
        sign(
            &Claims {
                iss: "KEY".into(),
                sub: identity.into(),
                name: None,
                exp,
                nbf: None,
                grant: Grant {
                    room: room.into(),
                    grants,
                },
            },
            "SECRET",
        )
        .expect("sign")
    }

    fn join_with(room: &str, name: &str, token: &str) -> String {
        format!(
            r#"{{"type":"join","version":{PROTOCOL_VERSION},"room":"{room}","name":"{name}","token":"{token}"}}"#
        )
    }

    #[tokio::test]
    async fn token_mode_admits_only_good_tokens_and_hides_the_room_list() {
        let hub = hub().await;
        let mut s = Driver::with_auth(&hub, token_auth());
        s.send(r#"{"type":"listRooms"}"#);
        s.expect_error(ErrorCode::Unauthorized).await;
        s.send(&join("a", "Ada"));
        s.expect_error(ErrorCode::Unauthorized).await;
        let hour = unix_now() + 3600;
        s.send(&join_with(
            "a",
            "Ada",
            &token("b", "ada", hour, Grants::default()),
        ));
        s.expect_error(ErrorCode::Unauthorized).await;
        s.send(&join_with(
            "a",
            "Ada",
            &token("a", "ada", 1000, Grants::default()),
        ));
        s.expect_error(ErrorCode::TokenExpired).await;
        s.send(&join_with("a", "Ada", "e30.e30.AAAA"));
        s.expect_error(ErrorCode::Unauthorized).await;
        // nothing of the room leaked, and the session is still usable
        assert_eq!(hub.room_list(), vec![]);
        let viewer = Grants {
            can_publish: false,
            ..Grants::default()
        };
        s.send(&join_with(
            "a",
            "Ada",
            &token("a", "ada", hour, viewer.clone()),
        ));
        match s.next().await {
            ServerMessage::Joined { grants, .. } => assert_eq!(grants, viewer),
            other => panic!("expected joined, got {other:?}"),
        }
        s.send(r#"{"type":"publishOffer","sdp":"v=0"}"#);
        s.expect_error(ErrorCode::Forbidden).await;
    }

    #[tokio::test]
    async fn the_lobby_sees_room_counts_change() {
        let hub = hub().await;
        let mut lobby = Driver::start(&hub);
        lobby.send(r#"{"type":"listRooms"}"#);
        assert_eq!(
            lobby.next().await,
            ServerMessage::RoomList { rooms: vec![] }
        );
        let mut ada = Driver::start(&hub);
        ada.send(&join("standup", "Ada"));
        assert!(matches!(ada.next().await, ServerMessage::Joined { .. }));
        let expected = vec![RoomSummary {
            room: RoomId::new("standup").expect("room"),
            participants: 1,
        }];
        assert_eq!(
            lobby.next().await,
            ServerMessage::RoomList { rooms: expected }
        );
        // the WebSocket goes away: the room empties and closes
        drop(ada);
        assert_eq!(
            lobby.next().await,
            ServerMessage::RoomList { rooms: vec![] }
        );
    }
}
