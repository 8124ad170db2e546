//! ICE-TCP (RFC 6544, passive side): one listening TCP port, each connection carrying
//! RFC 4571 frames (a 16-bit big-endian length, then one STUN/DTLS/SRTP datagram).
//!
//! Each accepted connection gets a reader task and a writer task. Frames are handed to the
//! media worker that owns the connection's peer as [`TcpEvent`]s, so the worker treats
//! them like UDP datagrams from the connection's remote address. The owner is found from
//! the connection's first frame, the client's STUN check (see [`TcpRouter`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::handoff::Directory;

/// Frames from all ICE-TCP connections to one worker. Bounded: when the worker is behind,
/// readers wait, and TCP flow control slows the clients that use this fallback.
pub const TCP_INBOUND_QUEUE: usize = 1024;

/// Framed datagrams queued for one connection's writer. When full, the worker drops the
/// datagram and counts it, as it would on a full UDP socket buffer.
pub const TCP_OUTBOUND_QUEUE: usize = 512;

/// The largest frame RFC 4571 allows.
const MAX_FRAME: usize = u16::MAX as usize;

/// What ICE-TCP connections tell the worker.
#[derive(Debug)]
pub enum TcpEvent {
    /// A connection opened; frames for `from` go to `writer`.
    Opened {
        from: SocketAddr,
        writer: mpsc::Sender<Vec<u8>>,
    },
    /// One frame arrived.
    Frame { from: SocketAddr, data: BytesMut },
    /// The connection ended.
    Closed { from: SocketAddr },
}

/// Which worker each connection's frames go to.
#[derive(Clone)]
pub struct TcpRouter {
    workers: Vec<mpsc::Sender<TcpEvent>>,
    directory: Arc<Directory>,
}

impl TcpRouter {
    pub fn new(workers: Vec<mpsc::Sender<TcpEvent>>, directory: Arc<Directory>) -> Self {
        Self { workers, directory }
    }

    /// The worker for a connection whose first frame is `first`: the owner of the ufrag
    /// of its STUN check, else the first worker (which drops what it cannot route).
    fn pick(&self, first: &[u8]) -> Option<&mpsc::Sender<TcpEvent>> {
        let owner = crate::stun::local_ufrag(first)
            .and_then(|ufrag| self.directory.owner(ufrag))
            .unwrap_or(0);
        self.workers
            .get(usize::from(owner))
            .or_else(|| self.workers.first())
    }
}

/// Accepts connections forever, giving each to its peer's worker.
pub async fn accept_loop(listener: TcpListener, router: TcpRouter) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, from, router.clone()));
            }
            Err(err) => {
                tracing::debug!(%err, "ICE-TCP accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve(stream: TcpStream, from: SocketAddr, router: TcpRouter) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    // The active side speaks first, with a STUN check that names the peer.
    let Some(first) = read_frame(&mut read).await else {
        return;
    };
    let Some(events) = router.pick(&first).cloned() else {
        return;
    };
    let (writer, mut outbound) = mpsc::channel::<Vec<u8>>(TCP_OUTBOUND_QUEUE);
    if events
        .send(TcpEvent::Opened { from, writer })
        .await
        .is_err()
        || events
            .send(TcpEvent::Frame { from, data: first })
            .await
            .is_err()
    {
        return;
    }
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = outbound.recv().await {
            if write.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    read_frames(read, from, &events).await;
    writer_task.abort();
    let _ = events.send(TcpEvent::Closed { from }).await;
}

/// Reads RFC 4571 frames from one connection's byte stream and hands each to `events` as
/// a [`TcpEvent::Frame`] from `from`, until the stream ends, breaks off inside a frame, or
/// the worker is gone. Any byte stream is safe: a frame is at most 64 KiB by construction.
pub async fn read_frames<R: AsyncRead + Unpin>(
    read: R,
    from: SocketAddr,
    events: &mpsc::Sender<TcpEvent>,
) {
    let mut read = BufReader::new(read);
    while let Some(data) = read_frame(&mut read).await {
        if events.send(TcpEvent::Frame { from, data }).await.is_err() {
            break;
        }
    }
}

/// One RFC 4571 frame, or `None` when the stream ends or breaks off inside a frame.
async fn read_frame<R: AsyncRead + Unpin>(read: &mut R) -> Option<BytesMut> {
    let len = read.read_u16().await.ok()?;
    let mut data = BytesMut::zeroed(usize::from(len));
    read.read_exact(&mut data).await.ok()?;
    Some(data)
}

/// Prefixes one datagram with its RFC 4571 length.
pub fn frame(datagram: &[u8]) -> Option<Vec<u8>> {
    if datagram.len() > MAX_FRAME {
        return None;
    }
    let mut out = Vec::with_capacity(2 + datagram.len());
    out.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    out.extend_from_slice(datagram);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_length() {
        assert_eq!(frame(&[1, 2, 3]), Some(vec![0, 3, 1, 2, 3]));
        assert_eq!(frame(&vec![0; MAX_FRAME + 1]), None);
    }

    #[tokio::test]
    async fn a_connection_goes_to_the_worker_that_owns_its_ufrag() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx0, mut rx0) = mpsc::channel(8);
        let (tx1, mut rx1) = mpsc::channel(8);
        let directory = Arc::new(Directory::default());
        directory.insert("owned", 1);
        tokio::spawn(accept_loop(
            listener,
            TcpRouter::new(vec![tx0, tx1], directory),
        ));
        let check = crate::stun::binding_request("owned:remote");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(&frame(&check).expect("frame"))
            .await
            .expect("write");
        assert!(matches!(rx1.recv().await, Some(TcpEvent::Opened { .. })));
        let Some(TcpEvent::Frame { data, .. }) = rx1.recv().await else {
            panic!("no frame");
        };
        assert_eq!(&data[..], &check[..]);
        assert!(rx0.try_recv().is_err(), "worker 0 got nothing");
    }

    #[tokio::test]
    async fn a_connection_reports_frames_and_closing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, mut rx) = mpsc::channel(8);
        let router = TcpRouter::new(vec![tx], Arc::new(Directory::default()));
        tokio::spawn(accept_loop(listener, router));
        let mut client = TcpStream::connect(addr).await.expect("connect");
        // The connection is given to a worker once its first frame says whose it is.
        client
            .write_all(&[0, 2, 9, 8, 0, 1, 7])
            .await
            .expect("write");
        let Some(TcpEvent::Opened { writer, from }) = rx.recv().await else {
            panic!("no open event");
        };
        let Some(TcpEvent::Frame { data, .. }) = rx.recv().await else {
            panic!("no frame");
        };
        assert_eq!(data, vec![9, 8]);
        let Some(TcpEvent::Frame { data, .. }) = rx.recv().await else {
            panic!("no frame");
        };
        assert_eq!(data, vec![7]);
        writer
            .send(frame(&[5, 5]).expect("frame"))
            .await
            .expect("send");
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.expect("read");
        assert_eq!(buf, [0, 2, 5, 5]);
        drop(client);
        let Some(TcpEvent::Closed { from: closed }) = rx.recv().await else {
            panic!("no close");
        };
        assert_eq!(closed, from);
    }
}
