//! `GET /cluster/link`: the WebSocket where other nodes of the cluster open node links to
//! this one. The handshake and what follows it live in `chorus_cluster`; this module
//! only pumps the socket's frames to it.

use std::net::SocketAddr;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chorus_cluster::Cluster;
use chorus_cluster::links::{Frame, LINK_FRAME_QUEUE, LinkConn};
use chorus_protocol::ErrorCode;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::{AppState, api_error};

/// The largest frame a node link takes: handshake messages are a few hundred bytes, and
/// an RTP packet with its framing stays well under this.
const MAX_LINK_FRAME: usize = 64 * 1024;

pub(crate) async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(cluster) = state.config.cluster.clone() else {
        return api_error(
            StatusCode::NOT_FOUND,
            ErrorCode::ClusterUnavailable,
            "this server is not in a cluster ([cluster] in the config)",
        );
    };
    // Every attempt costs a Redis read: the same per-address cap as sessions.
    let ip = state.ip_limits.client_ip(peer, &headers);
    let Some(connection) = state.ip_limits.connect(ip) else {
        return api_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many open connections from your address (limits.max_connections_per_ip)",
        );
    };
    upgrade
        .max_message_size(MAX_LINK_FRAME)
        .on_upgrade(move |socket| async move {
            serve(cluster, socket).await;
            drop(connection);
        })
}

async fn serve(cluster: Cluster, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (in_tx, incoming) = mpsc::channel(LINK_FRAME_QUEUE);
    let (outgoing, mut out_rx) = mpsc::channel::<Frame>(LINK_FRAME_QUEUE);
    let writer = tokio::spawn(async move {
        let message = |frame| match frame {
            Frame::Text(text) => Message::Text(text.into()),
            Frame::Binary(bytes) => Message::Binary(bytes.into()),
        };
        // Frames queued together go out in one write.
        'link: while let Some(frame) = out_rx.recv().await {
            if sink.feed(message(frame)).await.is_err() {
                return;
            }
            while let Ok(frame) = out_rx.try_recv() {
                if sink.feed(message(frame)).await.is_err() {
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
            let frame = match message {
                Message::Text(text) => Frame::Text(text.as_str().to_owned()),
                Message::Binary(bytes) => Frame::Binary(bytes.to_vec()),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if in_tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    cluster.accept_link(LinkConn { incoming, outgoing }).await;
    reader.abort();
    let _ = writer.await;
}
