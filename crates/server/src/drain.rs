//! `chorus drain`: asks the running server (at `http.listen`, on this machine) to drain,
//! through the admin API's `POST /api/v1/drain`, authenticated with an API key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chorus_signal::auth::Auth;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the server may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends the drain request to the server listening on `listen`, signed in with `key` (or
/// the only key of `auth`). Returns the server's answer line.
pub async fn request(listen: SocketAddr, auth: &Auth, key: Option<&str>) -> anyhow::Result<String> {
    let (key, secret) = auth
        .signing_key(key)
        .context("choosing the API key (--key)")?;
    // A wildcard listen address is reached on loopback.
    let addr = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    };
    let credentials = BASE64.encode(format!("{key}:{secret}"));
    let request = format!(
        "POST /api/v1/drain HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {credentials}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the server at {addr}"))?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(String::from_utf8_lossy(&raw).into_owned())
    })
    .await
    .context("the server did not answer in time")??;
    let status = answer.lines().next().unwrap_or_default().to_owned();
    if !status.contains(" 202 ") {
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        bail!("the server refused: {status} {body}");
    }
    Ok(status)
}
