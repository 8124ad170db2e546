//! The node links' I/O: the owner's side ([`accept`]) and the satellite's ([`dial`]) of the
//! handshake in [`crate::link`], over any WebSocket whose frames are pumped through a
//! [`LinkConn`]. The signaling crate pumps its axum socket at
//! [`LINK_PATH`](crate::link::LINK_PATH); [`dial`] pumps a tokio-tungstenite client.

use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::link::{self, Accept, Dial, LinkIds, LinkMessage, LinkRefusal, Role};
use crate::seal::{Opener, Sealer};

/// Frames each way between a link's WebSocket and the task that speaks on it. Handshake
/// messages are a few per link, and the room traffic that follows is paced by the
/// socket: when the queue is full the sender waits, which is TCP's back-pressure
/// carried through, never a drop.
pub const LINK_FRAME_QUEUE: usize = 256;

/// How long each handshake step may take before the link is given up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub use chorus_sfu::span::{Frame, LinkConn};

/// A link whose handshake succeeded: who is at both ends, and the connection.
#[derive(Debug)]
pub struct Link {
    pub ids: LinkIds,
    pub conn: LinkConn,
}

/// Why a dial failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    #[error("cannot reach {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the link was refused: {0}")]
    Refused(LinkRefusal),
    #[error("the other node closed the link or did not answer within {HANDSHAKE_TIMEOUT:?}")]
    NoAnswer,
}

async fn send(conn: &LinkConn, message: &LinkMessage) {
    let text = serde_json::to_string(message).unwrap_or_default();
    // A closed socket shows as the next receive ending.
    let _ = conn.outgoing.send(Frame::Text(text)).await;
}

/// The next handshake message; None when the socket closed or nothing came in time.
async fn receive(conn: &mut LinkConn) -> Option<Result<LinkMessage, LinkRefusal>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.incoming.recv()).await {
        Ok(Some(Frame::Text(text))) => Some(link::parse(&text)),
        Ok(Some(Frame::Binary(_))) => Some(Err(LinkRefusal::Malformed)),
        Ok(None) | Err(_) => None,
    }
}

/// The owner's side: challenges the satellite, checks its proof and asks `live` whether
/// the node it names is a live node of the cluster (Err: the check could not be made).
/// A refusal is sent to the satellite before it is returned; `Ok(None)` means the
/// satellite went away mid-handshake.
pub async fn accept<F, Fut>(
    mut conn: LinkConn,
    me: &str,
    secret: &[u8],
    live: F,
) -> Result<Option<Link>, LinkRefusal>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<bool, ()>>,
{
    let (accept, challenge) = Accept::new(me, chorus_sfu::token::random_token(link::NONCE_CHARS));
    send(&conn, &challenge).await;
    let outcome = async {
        let Some(hello) = receive(&mut conn).await else {
            return Ok(None);
        };
        let hello = accept.hello(hello?)?;
        let live = live(hello.node().to_owned())
            .await
            .map_err(|()| LinkRefusal::Unavailable)?;
        hello.verify(secret, live).map(Some)
    }
    .await;
    match outcome {
        Ok(Some((welcome, ids))) => {
            send(&conn, &welcome).await;
            Ok(Some(Link { ids, conn }))
        }
        Ok(None) => Ok(None),
        Err(refusal) => {
            send(&conn, &refusal.message()).await;
            Err(refusal)
        }
    }
}

/// The satellite's side over a connection already open to the owner `owner`.
pub async fn handshake(
    mut conn: LinkConn,
    me: &str,
    owner: &str,
    secret: &[u8],
) -> Result<Link, DialError> {
    let mut dial = Dial::new(
        me,
        owner,
        chorus_sfu::token::random_token(link::NONCE_CHARS),
    );
    let refuse = async |conn: &LinkConn, refusal: LinkRefusal| {
        send(conn, &refusal.message()).await;
        DialError::Refused(refusal)
    };
    let challenge = match receive(&mut conn).await.ok_or(DialError::NoAnswer)? {
        Ok(LinkMessage::Refused { reason, .. }) => return Err(DialError::Refused(reason)),
        Ok(message) => message,
        Err(refusal) => return Err(refuse(&conn, refusal).await),
    };
    let hello = match dial.challenge(secret, challenge) {
        Ok(hello) => hello,
        Err(refusal) => return Err(refuse(&conn, refusal).await),
    };
    send(&conn, &hello).await;
    let welcome = match receive(&mut conn).await.ok_or(DialError::NoAnswer)? {
        Ok(message) => message,
        Err(refusal) => return Err(refuse(&conn, refusal).await),
    };
    match dial.welcome(secret, welcome) {
        Ok(ids) => Ok(Link { ids, conn }),
        // the owner refused: it closes
        Err(refusal @ (LinkRefusal::UnknownNode | LinkRefusal::Unavailable)) => {
            Err(DialError::Refused(refusal))
        }
        Err(refusal) => Err(refuse(&conn, refusal).await),
    }
}

/// Seals a link whose handshake succeeded, as its end `me`: returns the connection the
/// link's task speaks on, whose frames cross the socket sealed ([`crate::seal`]). A frame
/// from the far end that does not open (or comes in the clear) ends the link, and its
/// reason goes to `on_bad`.
pub fn sealed(
    link: Link,
    secret: &[u8],
    me: Role,
    on_bad: impl Fn(LinkRefusal) + Send + 'static,
) -> LinkConn {
    let other = match me {
        Role::Owner => Role::Satellite,
        Role::Satellite => Role::Owner,
    };
    let mut sealer = Sealer::new(&link.ids.key(secret, me));
    let mut opener = Opener::new(&link.ids.key(secret, other));
    let LinkConn {
        incoming: mut raw_in,
        outgoing: raw_out,
    } = link.conn;
    let (plain_in_tx, plain_in) = mpsc::channel(LINK_FRAME_QUEUE);
    let (plain_out, mut plain_out_rx) = mpsc::channel::<Frame>(LINK_FRAME_QUEUE);
    tokio::spawn(async move {
        while let Some(frame) = plain_out_rx.recv().await {
            let sealed = match frame {
                Frame::Text(text) => sealer.seal(true, text.as_bytes()),
                Frame::Binary(bytes) => sealer.seal(false, &bytes),
            };
            if raw_out.send(Frame::Binary(sealed)).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(frame) = raw_in.recv().await {
            // nothing travels in the clear after the handshake
            let opened = match frame {
                Frame::Binary(bytes) => opener.open(bytes),
                Frame::Text(_) => Err(LinkRefusal::BadFrame),
            };
            let frame = match opened {
                Ok((false, bytes)) => Frame::Binary(bytes),
                Ok((true, bytes)) => match String::from_utf8(bytes) {
                    Ok(text) => Frame::Text(text),
                    Err(_) => {
                        on_bad(LinkRefusal::BadFrame);
                        break;
                    }
                },
                Err(refusal) => {
                    on_bad(refusal);
                    break;
                }
            };
            if plain_in_tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    LinkConn {
        incoming: plain_in,
        outgoing: plain_out,
    }
}

/// What a WebSocket message is to a link.
pub enum Incoming {
    Frame(Frame),
    /// Not for the link (a ping or pong, answered by the WebSocket layer).
    Skip,
    /// The other end closes.
    Close,
}

/// Pumps a WebSocket's halves through a [`LinkConn`]: the writer sends the frames queued
/// together in one write (`to_message` makes each the socket's message), the reader turns
/// messages into frames (`from_message`) until the socket closes. Returns the connection
/// and the reader's and writer's tasks.
pub fn pump<M, S, T, E>(
    mut sink: S,
    mut stream: T,
    to_message: fn(Frame) -> M,
    from_message: fn(M) -> Incoming,
) -> (LinkConn, JoinHandle<()>, JoinHandle<()>)
where
    M: Send + 'static,
    S: Sink<M> + Unpin + Send + 'static,
    T: Stream<Item = Result<M, E>> + Unpin + Send + 'static,
    E: Send + 'static,
{
    let (in_tx, incoming) = mpsc::channel(LINK_FRAME_QUEUE);
    let (outgoing, mut out_rx) = mpsc::channel::<Frame>(LINK_FRAME_QUEUE);
    let writer = tokio::spawn(async move {
        'link: while let Some(frame) = out_rx.recv().await {
            if sink.feed(to_message(frame)).await.is_err() {
                return;
            }
            while let Ok(frame) = out_rx.try_recv() {
                if sink.feed(to_message(frame)).await.is_err() {
                    break 'link;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            match from_message(message) {
                Incoming::Frame(frame) => {
                    if in_tx.send(frame).await.is_err() {
                        break;
                    }
                }
                Incoming::Skip => {}
                Incoming::Close => break,
            }
        }
    });
    (LinkConn { incoming, outgoing }, reader, writer)
}

/// The URL of a node's link endpoint, from its advertised `http(s)://` URL.
pub fn link_url(advertise_url: &str) -> String {
    let ws = crate::record::ws_url(advertise_url);
    format!("{}{}", ws.trim_end_matches("/ws"), link::LINK_PATH)
}

/// Opens a link from satellite `me` to node `owner` at its advertised URL.
pub async fn dial(
    advertise_url: &str,
    me: &str,
    owner: &str,
    secret: &[u8],
) -> Result<Link, DialError> {
    let url = link_url(advertise_url);
    // No Nagle delay: a link's media frames are small and must not wait for ACKs.
    let connect = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true);
    let socket = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Ok(Ok((socket, _))) => socket,
        Ok(Err(err)) => {
            return Err(DialError::Connect {
                url,
                reason: err.to_string(),
            });
        }
        Err(_) => return Err(DialError::NoAnswer),
    };
    let (sink, stream) = socket.split();
    let (conn, _, _) = pump(
        sink,
        stream,
        |frame| match frame {
            Frame::Text(text) => Message::text(text),
            Frame::Binary(bytes) => Message::binary(bytes),
        },
        |message| match message {
            Message::Text(text) => Incoming::Frame(Frame::Text(text.as_str().to_owned())),
            Message::Binary(bytes) => Incoming::Frame(Frame::Binary(bytes.to_vec())),
            Message::Close(_) => Incoming::Close,
            _ => Incoming::Skip,
        },
    );
    handshake(conn, me, owner, secret).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const SECRET: &[u8] = b"a cluster secret of at least thirty-two bytes";

    /// Two connected ends, as a WebSocket would connect them.
    fn pair() -> (LinkConn, LinkConn) {
        let (a_tx, b_rx) = mpsc::channel(LINK_FRAME_QUEUE);
        let (b_tx, a_rx) = mpsc::channel(LINK_FRAME_QUEUE);
        (
            LinkConn {
                incoming: a_rx,
                outgoing: a_tx,
            },
            LinkConn {
                incoming: b_rx,
                outgoing: b_tx,
            },
        )
    }

    #[tokio::test]
    async fn a_live_node_with_the_secret_links_up() {
        let (owner, satellite) = pair();
        let (accepted, dialled) = tokio::join!(
            accept(owner, "node1", SECRET, async |node| Ok(node == "node2")),
            handshake(satellite, "node2", "node1", SECRET),
        );
        let accepted = accepted.unwrap().unwrap();
        let dialled = dialled.unwrap();
        assert_eq!(accepted.ids, dialled.ids);
        // the link carries frames both ways after the handshake
        accepted
            .conn
            .outgoing
            .send(Frame::Binary(vec![1, 2]))
            .await
            .unwrap();
        let mut dialled = dialled;
        assert_eq!(
            dialled.conn.incoming.recv().await,
            Some(Frame::Binary(vec![1, 2]))
        );
    }

    #[tokio::test]
    async fn both_ends_learn_why_a_link_is_refused() {
        for (live, secret, expected) in [
            (Ok(false), SECRET, LinkRefusal::UnknownNode),
            (Err(()), SECRET, LinkRefusal::Unavailable),
            (
                Ok(true),
                &b"a different secret, long enough for a cluster"[..],
                LinkRefusal::BadProof,
            ),
        ] {
            let (owner, satellite) = pair();
            let (accepted, dialled) = tokio::join!(
                accept(owner, "node1", SECRET, async |_| live),
                handshake(satellite, "node2", "node1", secret),
            );
            assert_eq!(accepted.unwrap_err(), expected);
            assert_eq!(dialled.unwrap_err(), DialError::Refused(expected));
        }
    }

    #[tokio::test]
    async fn the_wrong_owner_is_refused_by_the_satellite() {
        let (owner, satellite) = pair();
        let (accepted, dialled) = tokio::join!(
            accept(owner, "node3", SECRET, async |_| Ok(true)),
            handshake(satellite, "node2", "node1", SECRET),
        );
        assert_eq!(
            dialled.unwrap_err(),
            DialError::Refused(LinkRefusal::WrongNode)
        );
        assert_eq!(
            accepted.unwrap_err(),
            LinkRefusal::WrongNode,
            "told, not left waiting"
        );
    }

    #[tokio::test]
    async fn a_sealed_link_carries_frames_and_ends_on_one_that_does_not_open() {
        let (owner, satellite) = pair();
        let (accepted, dialled) = tokio::join!(
            accept(owner, "node1", SECRET, async |_| Ok(true)),
            handshake(satellite, "node2", "node1", SECRET),
        );
        let (accepted, dialled) = (accepted.unwrap().unwrap(), dialled.unwrap());
        let raw = dialled.conn.outgoing.clone();
        let bad = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = bad.clone();
        let mut owner = sealed(accepted, SECRET, Role::Owner, move |r| {
            seen.lock().unwrap().push(r);
        });
        let mut satellite = sealed(dialled, SECRET, Role::Satellite, |_| {});
        satellite
            .outgoing
            .send(Frame::Text("{\"type\":\"alive\"}".into()))
            .await
            .unwrap();
        assert_eq!(
            owner.incoming.recv().await,
            Some(Frame::Text("{\"type\":\"alive\"}".into()))
        );
        owner
            .outgoing
            .send(Frame::Binary(vec![1, 2]))
            .await
            .unwrap();
        assert_eq!(
            satellite.incoming.recv().await,
            Some(Frame::Binary(vec![1, 2]))
        );
        // a frame that was not sealed under the link's key ends the owner's end
        raw.send(Frame::Binary(vec![0; 40])).await.unwrap();
        assert_eq!(owner.incoming.recv().await, None);
        assert_eq!(*bad.lock().unwrap(), vec![LinkRefusal::BadFrame]);
    }

    #[test]
    fn the_link_url_is_beside_the_websocket() {
        assert_eq!(
            link_url("http://127.0.0.1:8080"),
            "ws://127.0.0.1:8080/cluster/link"
        );
        assert_eq!(
            link_url("https://node1.example.com/chorus/"),
            "wss://node1.example.com/chorus/cluster/link"
        );
    }
}
