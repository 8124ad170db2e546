//! A bare WebSocket to `/ws`, for sending what no well-behaved client sends (malformed JSON,
//! unknown types, oversized frames) and reading the typed replies.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chorus_protocol::{ClientMessage, PROTOCOL_VERSION, RoomId, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::wait;

/// Opens a WebSocket to `ws://addr/ws`. Incoming message size is unlimited, so that the tests,
/// not the client library, decide what is too large.
pub(crate) async fn open(addr: SocketAddr) -> Result<WebSocketStream<TcpStream>> {
    let tcp = wait::within(
        Duration::from_secs(5),
        "TCP connect",
        TcpStream::connect(addr),
    )
    .await?
    .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let url = format!("ws://{addr}/ws");
    let (ws, _response) = wait::within(
        Duration::from_secs(5),
        "WebSocket handshake",
        tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(config)),
    )
    .await?
    .with_context(|| format!("WebSocket handshake with {url}"))?;
    Ok(ws)
}

/// What arrived on a [`RawWs`] other than a server message.
#[derive(Debug)]
pub enum RawEvent {
    /// A text frame that parsed as a [`ServerMessage`].
    Message(ServerMessage),
    /// A text frame that did not parse (a server bug worth reporting).
    Unparsed(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// The server closed the socket (close frame or end of stream).
    Closed,
}

/// A WebSocket to the server with no client logic: what you send is what goes out.
pub struct RawWs {
    ws: WebSocketStream<TcpStream>,
}

impl RawWs {
    /// Connects to `ws://addr/ws`.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        Ok(Self {
            ws: open(addr).await?,
        })
    }

    /// Sends one text frame, verbatim.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        let text: String = text.into();
        self.ws
            .send(Message::Text(text.into()))
            .await
            .context("sending a text frame")
    }

    /// Sends one binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .context("sending a binary frame")
    }

    /// Sends a typed client message.
    pub async fn send(&mut self, message: &ClientMessage) -> Result<()> {
        self.send_text(serde_json::to_string(message)?).await
    }

    /// Sends `join` for `room` as `name`.
    pub async fn send_join(&mut self, room: &str, name: &str) -> Result<()> {
        self.send(&ClientMessage::Join {
            version: PROTOCOL_VERSION,
            room: RoomId::new(room).map_err(|e| anyhow!("room name {room:?}: {e}"))?,
            name: name.to_owned(),
            token: None,
        })
        .await
    }

    /// The next frame or close, within `within`. Pings and pongs are skipped.
    pub async fn next_event(&mut self, within: Duration) -> Result<RawEvent> {
        wait::within(within, "a frame from the server", async {
            loop {
                match self.ws.next().await {
                    None => return Ok(RawEvent::Closed),
                    Some(Err(err)) => {
                        tracing::debug!("raw ws read error: {err}");
                        return Ok(RawEvent::Closed);
                    }
                    Some(Ok(Message::Text(text))) => {
                        return Ok(match serde_json::from_str::<ServerMessage>(&text) {
                            Ok(message) => RawEvent::Message(message),
                            Err(_) => RawEvent::Unparsed(text.to_string()),
                        });
                    }
                    Some(Ok(Message::Binary(bytes))) => return Ok(RawEvent::Binary(bytes.into())),
                    Some(Ok(Message::Close(_))) => return Ok(RawEvent::Closed),
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await?
    }

    /// The next server message within `within`; fails on close or on a frame that is not one.
    pub async fn recv(&mut self, within: Duration) -> Result<ServerMessage> {
        match self.next_event(within).await? {
            RawEvent::Message(message) => Ok(message),
            other => bail!("expected a server message, got {other:?}"),
        }
    }

    /// Reads messages until one satisfies `pred` (returning it), skipping the rest, within
    /// `within` in total. Fails if the socket closes first.
    pub async fn recv_until(
        &mut self,
        within: Duration,
        mut pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        let deadline = tokio::time::Instant::now() + within;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Ok(RawEvent::Message(message)) if pred(&message) => return Ok(message),
                Ok(RawEvent::Message(message)) => skipped.push(message),
                Ok(RawEvent::Closed) => {
                    bail!("the socket closed before the awaited message; skipped {skipped:?}")
                }
                Ok(other) => bail!("unexpected frame {other:?}; skipped {skipped:?}"),
                Err(err) => return Err(err.context(format!("skipped {skipped:?}"))),
            }
        }
    }

    /// Joins `room` as `name` and returns the `joined` reply (or fails on anything else).
    pub async fn join(&mut self, room: &str, name: &str) -> Result<ServerMessage> {
        self.send_join(room, name).await?;
        let reply = self
            .recv_until(Duration::from_secs(10), |m| {
                matches!(
                    m,
                    ServerMessage::Joined { .. } | ServerMessage::Error { .. }
                )
            })
            .await?;
        match reply {
            ServerMessage::Joined { .. } => Ok(reply),
            other => bail!("join refused: {other:?}"),
        }
    }

    /// Closes the socket politely (close frame).
    pub async fn close(mut self) -> Result<()> {
        wait::within(
            Duration::from_secs(5),
            "WebSocket close",
            self.ws.close(None),
        )
        .await?
        .context("closing the WebSocket")
    }
}
