//! One signaling session: a WebSocket, parsed once at the edge into [`ClientMessage`]s.
//!
//! The session is generic over a `Sink`/`Stream` of frames, so tests drive it with
//! channels. It owns the participant's membership: when the socket ends without `leave`,
//! it tells the room, and the room tells the others.

use std::sync::Arc;

use chorus_cluster::{Cluster, JoinRoute};
use chorus_protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION, PeerRole, ServerMessage};
use chorus_sfu::{Hub, Membership};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, Instant};

use crate::auth::{Auth, unix_now};
use crate::limits::{IpLimits, MessageRate};

/// Messages queued from the room to this session. Bounded: when a client reads too slowly
/// and the queue fills, the room removes the participant instead of waiting for it.
pub const SESSION_QUEUE: usize = 256;

/// A frame in either direction, independent of the WebSocket library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(usize),
    Close,
    /// Server to client: are you there?
    Ping,
    /// Client to server: a pong (or a ping of its own): it is there.
    Pong,
}

/// Settings of a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Text frames longer than this get a `messageTooLarge` error.
    pub max_message_bytes: usize,
    /// A session neither in a room nor watching the room list for this long is closed.
    pub join_timeout: Duration,
    /// How often the server pings the client.
    pub ping_interval: Duration,
    /// A client silent for this long (no message, no pong) is gone: the session closes.
    pub idle_timeout: Duration,
    /// Messages per second, on average (bursts of twice as many); more get `rateLimited`.
    pub max_messages_per_second: u32,
    /// The largest SDP in `publishOffer` or `subscribeAnswer`; larger get `limitReached`.
    pub max_sdp_bytes: usize,
    /// Trickled candidates per peer and join; more get `limitReached`.
    pub max_candidates_per_peer: usize,
}

/// Where a session's client is, and the per-IP counts it is held to.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    pub ip: std::net::IpAddr,
    pub limits: IpLimits,
}

/// Runs a session until the client goes or the server says goodbye. `auth` decides who
/// may join and list rooms.
pub async fn run<S, R>(
    hub: Hub,
    cluster: Option<Cluster>,
    limits: SessionLimits,
    auth: Arc<Auth>,
    client: ClientAddr,
    mut sink: S,
    mut stream: R,
) where
    S: Sink<Frame> + Unpin,
    R: Stream<Item = Frame> + Unpin,
{
    let mut session = Session {
        hub,
        cluster,
        limits,
        auth,
        membership: None,
        from_room: None,
        room_watch: None,
        idle_since: Some(Instant::now()),
        rate: MessageRate::new(limits.max_messages_per_second, std::time::Instant::now()),
        candidates: [0; 2],
        client,
    };
    let mut heard = Instant::now();
    let mut pings =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    loop {
        let join_deadline = session.idle_since.map(|since| since + limits.join_timeout);
        let reply = tokio::select! {
            frame = stream.next() => match frame {
                None | Some(Frame::Close) => break,
                Some(frame) => {
                    heard = Instant::now();
                    session.on_frame(frame).await
                }
            },
            () = sleep_until(join_deadline) => {
                tracing::info!("session closed: no join within {:?}", limits.join_timeout);
                let _ = sink.send(Frame::Close).await;
                break;
            },
            _ = pings.tick() => {
                if heard.elapsed() >= limits.idle_timeout {
                    tracing::info!("session closed: the client was silent for {:?}", heard.elapsed());
                    let _ = sink.send(Frame::Close).await;
                    break;
                }
                if sink.send(Frame::Ping).await.is_err() {
                    break;
                }
                None
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

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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
    /// The cluster this node belongs to, if any: joins ask it where the room lives.
    cluster: Option<Cluster>,
    limits: SessionLimits,
    auth: Arc<Auth>,
    membership: Option<Membership>,
    /// The room's messages for this participant; a fresh queue per join, whose sender the
    /// room holds. It ends when the room removes the participant.
    from_room: Option<mpsc::Receiver<ServerMessage>>,
    /// Set while a session that has not joined watches the room list.
    room_watch: Option<watch::Receiver<Vec<chorus_protocol::RoomSummary>>>,
    /// Since when the session has been neither in a room nor watching the room list.
    idle_since: Option<Instant>,
    rate: MessageRate,
    /// Candidates trickled since the join, for the publisher and the subscriber peer.
    candidates: [usize; 2],
    client: ClientAddr,
}

impl Session {
    /// Handles one frame; returns a direct reply, if any.
    async fn on_frame(&mut self, frame: Frame) -> Option<ServerMessage> {
        if matches!(frame, Frame::Close | Frame::Ping | Frame::Pong) {
            return None;
        }
        // Every data frame counts against the rate, whether or not it parses: a client
        // that floods garbage is throttled like one that floods chat.
        if !self.rate.take(std::time::Instant::now()) {
            return Some(ServerMessage::error(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages a second; this one was dropped",
                    self.limits.max_messages_per_second
                ),
            ));
        }
        let Frame::Text(text) = frame else {
            return Some(ServerMessage::error(
                ErrorCode::MalformedJson,
                "send JSON in text frames",
            ));
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
            Ok(message) => match self.over_limit(&message) {
                Some(refusal) => Some(refusal),
                None => self.on_message(message).await,
            },
            Err(err) => Some(ServerMessage::error(err.code(), err.to_string())),
        }
    }

    /// The refusal of a message over one of the session's limits, if it is.
    fn over_limit(&mut self, message: &ClientMessage) -> Option<ServerMessage> {
        let limits = &self.limits;
        match message {
            ClientMessage::PublishOffer { sdp, .. } | ClientMessage::SubscribeAnswer { sdp }
                if sdp.len() > limits.max_sdp_bytes =>
            {
                Some(ServerMessage::error(
                    ErrorCode::LimitReached,
                    format!(
                        "an SDP of {} bytes is over the limit of {}",
                        sdp.len(),
                        limits.max_sdp_bytes
                    ),
                ))
            }
            ClientMessage::Candidate { peer, .. } if self.membership.is_some() => {
                let count = &mut self.candidates[usize::from(*peer == PeerRole::Subscriber)];
                *count += 1;
                (*count > limits.max_candidates_per_peer).then(|| {
                    ServerMessage::error(
                        ErrorCode::LimitReached,
                        format!(
                            "more than {} candidates for one peer",
                            limits.max_candidates_per_peer
                        ),
                    )
                })
            }
            _ => None,
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
                if !self
                    .client
                    .limits
                    .allow_join(self.client.ip, std::time::Instant::now())
                {
                    return Some(ServerMessage::error(
                        ErrorCode::RateLimited,
                        "too many joins from your address in the last minute",
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
                if let Some(cluster) = &self.cluster {
                    match cluster.route_join(&room).await {
                        Ok(JoinRoute::Local) => {}
                        Ok(JoinRoute::Redirect { url, .. }) => {
                            return Some(ServerMessage::Redirect { room, url });
                        }
                        Err(err) => {
                            tracing::info!(%room, %err, "join refused: no placement");
                            // Redis unreachable, or every node draining: either way the
                            // client may try again shortly.
                            return Some(ServerMessage::error(
                                ErrorCode::ClusterUnavailable,
                                err.to_string(),
                            ));
                        }
                    }
                }
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
                        self.idle_since = None;
                        self.candidates = [0; 2];
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
                    let mut watch = match &self.cluster {
                        Some(cluster) => cluster.watch_rooms(),
                        None => self.hub.watch_rooms(),
                    };
                    watch.mark_unchanged();
                    self.room_watch = Some(watch);
                    self.idle_since = None;
                }
                Some(ServerMessage::RoomList {
                    rooms: match &self.cluster {
                        Some(cluster) => cluster.room_list(),
                        None => self.hub.room_list(),
                    },
                })
            }
            ClientMessage::Leave => match self.membership.take() {
                Some(membership) => {
                    self.from_room = None;
                    self.idle_since = Some(Instant::now());
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
                        self.idle_since = Some(Instant::now());
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
    use std::collections::HashMap;
    use std::time::Duration;

    use chorus_protocol::{Grants, RoomId, RoomSummary};

    use super::*;
    use crate::auth::{AuthMode, Claims, Grant, sign};

    const DEADLINE: Duration = Duration::from_secs(5);

    fn hub() -> Hub {
        crate::test_hub::hub(2)
    }

    fn limits() -> SessionLimits {
        SessionLimits {
            max_message_bytes: 1000,
            join_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            max_messages_per_second: 100,
            max_sdp_bytes: 500,
            max_candidates_per_peer: 3,
        }
    }

    fn client() -> ClientAddr {
        ClientAddr {
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            limits: IpLimits::new(crate::limits::IpLimitSettings {
                max_connections: 100,
                max_joins_per_minute: 100,
                trusted_proxies: Vec::new(),
            }),
        }
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
            Self::with(hub, auth, limits(), client())
        }

        fn with(hub: &Hub, auth: Auth, limits: SessionLimits, client: ClientAddr) -> Self {
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
                None,
                limits,
                Arc::new(auth),
                client,
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
        let hub = hub();
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
        let hub = hub();
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

    impl Driver {
        /// The next frame of any kind.
        async fn frame(&mut self) -> Frame {
            tokio::time::timeout(DEADLINE, self.output.recv())
                .await
                .expect("a frame in time")
                .expect("session open")
        }
    }

    /// Limits with timeouts short enough for a test: pings every 100 ms.
    fn quick() -> SessionLimits {
        SessionLimits {
            join_timeout: Duration::from_millis(350),
            ping_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(250),
            ..limits()
        }
    }

    #[tokio::test]
    async fn a_session_that_does_not_join_is_closed_after_the_join_timeout() {
        let hub = hub();
        let mut s = Driver::with(&hub, Auth::default(), quick(), client());
        // it answers every ping, but never joins
        let t0 = std::time::Instant::now();
        loop {
            match s.frame().await {
                Frame::Ping => s.input.send(Frame::Pong).expect("alive"),
                Frame::Close => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(t0.elapsed() >= Duration::from_millis(350));
        // watching the room list is a reason to stay
        let mut lobby = Driver::with(&hub, Auth::default(), quick(), client());
        lobby.send(r#"{"type":"listRooms"}"#);
        assert!(matches!(lobby.next().await, ServerMessage::RoomList { .. }));
        for _ in 0..8 {
            assert_eq!(lobby.frame().await, Frame::Ping);
            lobby.input.send(Frame::Pong).expect("alive");
        }
    }

    #[tokio::test]
    async fn a_client_that_answers_no_ping_is_closed() {
        let hub = hub();
        let mut s = Driver::with(&hub, Auth::default(), quick(), client());
        s.send(&join("a", "Ada"));
        assert!(matches!(s.next().await, ServerMessage::Joined { .. }));
        let mut pings = 0;
        loop {
            match s.frame().await {
                Frame::Ping => pings += 1,
                Frame::Close => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(pings >= 1, "pinged before it was closed");
        // and the room let it go
        tokio::time::timeout(DEADLINE, async {
            while !hub.room_list().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the room emptied");
    }

    #[tokio::test]
    async fn per_session_limits_refuse_with_typed_errors() {
        let hub = hub();
        // messages per second: bursts of twice the rate, then refusals
        let slow = SessionLimits {
            max_messages_per_second: 2,
            ..limits()
        };
        let mut s = Driver::with(&hub, Auth::default(), slow, client());
        for _ in 0..4 {
            s.send(r#"{"type":"chat","text":"hi"}"#);
            s.expect_error(ErrorCode::OutOfOrder).await;
        }
        s.send(r#"{"type":"chat","text":"hi"}"#);
        s.expect_error(ErrorCode::RateLimited).await;
        // frames that do not parse count against the same rate
        let mut s = Driver::with(&hub, Auth::default(), slow, client());
        for _ in 0..4 {
            s.send("{not json");
            s.expect_error(ErrorCode::MalformedJson).await;
        }
        s.send("{not json");
        s.expect_error(ErrorCode::RateLimited).await;
        // SDP size and candidates per peer
        let mut s = Driver::start(&hub);
        s.send(&join("b", "Bob"));
        assert!(matches!(s.next().await, ServerMessage::Joined { .. }));
        let sdp = "v".repeat(600);
        s.send(&format!(r#"{{"type":"publishOffer","sdp":"{sdp}"}}"#));
        s.expect_error(ErrorCode::LimitReached).await;
        let candidate = r#"{"type":"candidate","peer":"publisher","candidate":{"candidate":""}}"#;
        for _ in 0..3 {
            s.send(candidate);
            s.expect_error(ErrorCode::OutOfOrder).await;
        }
        s.send(candidate);
        s.expect_error(ErrorCode::LimitReached).await;
        // joins per IP per minute
        let one_join = ClientAddr {
            ip: std::net::Ipv4Addr::new(192, 0, 2, 1).into(),
            limits: IpLimits::new(crate::limits::IpLimitSettings {
                max_connections: 10,
                max_joins_per_minute: 1,
                trusted_proxies: Vec::new(),
            }),
        };
        let mut s = Driver::with(&hub, Auth::default(), limits(), one_join);
        s.send(&join("c", "Cy"));
        assert!(matches!(s.next().await, ServerMessage::Joined { .. }));
        s.send(r#"{"type":"leave"}"#);
        s.send(&join("c", "Cy"));
        s.expect_error(ErrorCode::RateLimited).await;
    }

    #[tokio::test]
    async fn the_lobby_sees_room_counts_change() {
        let hub = hub();
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
