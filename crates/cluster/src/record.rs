//! A node's heartbeat record: what it tells the other nodes about itself, signed with the
//! cluster secret so that a record written by anyone else is ignored.
//!
//! The stored value is `<hex HMAC-SHA256 of the JSON> <JSON>`. The signature covers the
//! exact JSON bytes, and the record names its own node id, which must match the key it is
//! read from: a genuine record copied under another node's key is refused too.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// What one node publishes with every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// The node's id (also in its key).
    pub id: String,
    /// Where clients (and other nodes) reach this node's HTTP side, e.g.
    /// `https://node2.example.com`; redirects point at its `/ws`.
    pub url: String,
    /// A draining node takes no new rooms.
    pub draining: bool,
    /// Participants in this node's rooms.
    pub participants: u64,
    /// Forwarded RTP packets per second, over the last heartbeat interval.
    pub forwarded_pps: u64,
    /// The media workers' mean busy share of their cores over the last interval, 0.0 to
    /// 1.0.
    pub cpu: f64,
    /// The rooms this node hosts, with their participant counts (for the cluster's room
    /// list).
    pub rooms: BTreeMap<String, u32>,
    /// The sender's wall clock, milliseconds since the Unix epoch. Informational only:
    /// liveness is decided by the key's TTL in Redis (the server's clock), never by this.
    pub sent_at_ms: u64,
}

/// Why a stored record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the record is not `<signature> <json>`")]
    Malformed,
    #[error("the record's signature does not match (not written with this cluster's secret)")]
    BadSignature,
    #[error("the record does not parse: {0}")]
    Json(String),
    #[error("the record names node {named:?} but is stored under node {key:?}")]
    WrongNode { named: String, key: String },
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` fails for none.
    HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key"))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl NodeRecord {
    /// The value to store: signature, a space, the JSON.
    pub fn sign(&self, secret: &[u8]) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let mut mac = mac(secret);
        mac.update(json.as_bytes());
        format!("{} {json}", hex(&mac.finalize().into_bytes()))
    }

    /// Checks a stored value read from node `key_id`'s key and parses it.
    pub fn verify(value: &str, key_id: &str, secret: &[u8]) -> Result<Self, RecordError> {
        let (sig, json) = value.split_once(' ').ok_or(RecordError::Malformed)?;
        let sig = unhex(sig).ok_or(RecordError::Malformed)?;
        let mut mac = mac(secret);
        mac.update(json.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&sig)
            .map_err(|_| RecordError::BadSignature)?;
        let record: NodeRecord =
            serde_json::from_str(json).map_err(|e| RecordError::Json(e.to_string()))?;
        if record.id != key_id {
            return Err(RecordError::WrongNode {
                named: record.id,
                key: key_id.to_owned(),
            });
        }
        Ok(record)
    }

    /// The WebSocket URL of this node: its `url` with `http` turned into `ws` (`https`
    /// into `wss`) and `/ws` appended.
    pub fn ws_url(&self) -> String {
        ws_url(&self.url)
    }

    /// The origin of this node's pages (`scheme://host[:port]`), for the WebSocket origin
    /// check: a page served by one node may open a session on another.
    pub fn origin(&self) -> &str {
        origin_of(&self.url)
    }
}

/// `http(s)://host[:port][/prefix]` → `ws(s)://host[:port][/prefix]/ws`.
pub fn ws_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let swapped = if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        url.to_owned()
    };
    format!("{swapped}/ws")
}

/// The inverse of [`ws_url`]: `ws(s)://host[:port][/prefix]/ws` →
/// `http(s)://host[:port][/prefix]`, the base of the node's HTTP endpoints (WHIP, WHEP).
pub fn http_url(ws: &str) -> String {
    let base = ws.strip_suffix("/ws").unwrap_or(ws);
    if let Some(rest) = base.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = base.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        base.to_owned()
    }
}

/// The `scheme://authority` part of a URL.
pub fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => &url[..after_scheme + slash],
        None => url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn record(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            url: "http://127.0.0.1:8081".into(),
            draining: false,
            participants: 3,
            forwarded_pps: 1200,
            cpu: 0.25,
            rooms: BTreeMap::from([("standup".to_owned(), 3)]),
            sent_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_signed_record_verifies_and_round_trips() {
        let value = record("a").sign(SECRET);
        assert_eq!(NodeRecord::verify(&value, "a", SECRET), Ok(record("a")));
    }

    #[test]
    fn a_record_with_another_secret_or_edited_is_refused() {
        let value = record("a").sign(b"another secret of thirty-two bytes!");
        assert_eq!(
            NodeRecord::verify(&value, "a", SECRET),
            Err(RecordError::BadSignature)
        );
        let edited = record("a")
            .sign(SECRET)
            .replace("\"participants\":3", "\"participants\":0");
        assert_eq!(
            NodeRecord::verify(&edited, "a", SECRET),
            Err(RecordError::BadSignature)
        );
        assert_eq!(
            NodeRecord::verify("nonsense", "a", SECRET),
            Err(RecordError::Malformed)
        );
        assert_eq!(
            NodeRecord::verify("zz {}", "a", SECRET),
            Err(RecordError::Malformed)
        );
    }

    #[test]
    fn a_genuine_record_under_another_key_is_refused() {
        let value = record("a").sign(SECRET);
        assert!(matches!(
            NodeRecord::verify(&value, "b", SECRET),
            Err(RecordError::WrongNode { .. })
        ));
    }

    #[test]
    fn urls_and_origins() {
        assert_eq!(ws_url("http://127.0.0.1:8081"), "ws://127.0.0.1:8081/ws");
        for base in ["http://127.0.0.1:8081", "https://example.com/chorus"] {
            assert_eq!(http_url(&ws_url(base)), base);
        }
        assert_eq!(ws_url("https://n2.example.com/"), "wss://n2.example.com/ws");
        assert_eq!(
            ws_url("https://example.com/chorus"),
            "wss://example.com/chorus/ws"
        );
        assert_eq!(
            origin_of("https://example.com/chorus"),
            "https://example.com"
        );
        assert_eq!(origin_of("http://127.0.0.1:8081"), "http://127.0.0.1:8081");
    }
}
