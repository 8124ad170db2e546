//! The HTTP accept loop: axum's router on hyper's HTTP/1 connections, with the limits
//! `axum::serve` does not set: a client must send its request headers within
//! `http.header_read_timeout_secs` (a slowloris client that trickles them cannot hold
//! connections), and each connection's peer address reaches the handlers as
//! `ConnectInfo` (the per-IP limits read it).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// A pause after a failed `accept` (out of file descriptors), so that the loop does not
/// spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `shutdown` completes. A client has
/// `header_read_timeout` to send a request's headers, on a new connection and between
/// requests of a kept-alive one. Connections still open at the end, WebSockets included,
/// are left to end with the process.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "accepting an HTTP connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        // WebSocket messages are small and latency-bound (signaling, and a node link's
        // media): no Nagle delay waiting for the peer's delayed ACK (up to 40 ms on Linux).
        let _ = stream.set_nodelay(true);
        let app = app.clone().layer(axum::Extension(ConnectInfo(peer)));
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let connection = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                .with_upgrades();
            if let Err(err) = connection.await {
                tracing::debug!(%peer, %err, "HTTP connection ended");
            }
        });
    }
}
