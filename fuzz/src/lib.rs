//! Helpers shared by Chorus's fuzz targets: JSON built by `arbitrary` in the shape of the
//! signaling messages and join-token claims, the checks every parse of a client message
//! must pass, and the settings of the sans-IO peers the SDP and datagram targets make.

use arbitrary::{Arbitrary, Result, Unstructured};
use chorus_protocol::{CLIENT_TYPES, ClientMessage};
use serde_json::{Map, Number, Value};

/// Words the wire types use besides the client messages' `type` values
/// ([`CLIENT_TYPES`]): the field names of every message, track, layer, candidate, grant
/// and token claim, and some of their values. Generated objects draw
/// their keys (and some strings) from here, so that they reach the fields' own checks
/// instead of stopping at an unknown key.
pub const WORDS: &[&str] = &[
    // fields
    "type",
    "version",
    "room",
    "name",
    "token",
    "sdp",
    "tracks",
    "mid",
    "source",
    "layers",
    "rid",
    "maxBitrate",
    "width",
    "height",
    "peer",
    "sdpMid",
    "sdpMLineIndex",
    "trackId",
    "muted",
    "text",
    "visible",
    "participantId",
    // values
    "publisher",
    "subscriber",
    "camera",
    "microphone",
    "screen",
    "screenAudio",
    "q",
    "h",
    "f",
    // join-token claims
    "iss",
    "sub",
    "exp",
    "nbf",
    "grant",
    "canPublish",
    "canPublishSources",
    "canSubscribe",
    "canChat",
    "roomAdmin",
    "*",
];

/// How deep generated values nest.
const MAX_DEPTH: u32 = 5;

/// Any JSON value, biased towards [`WORDS`].
#[derive(Debug)]
pub struct Json(pub Value);

impl<'a> Arbitrary<'a> for Json {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        value(u, 0).map(Json)
    }
}

/// A JSON object with a `type`, most often a client message's, and fields named by
/// [`WORDS`]: what a client (or an attacker) sends on the WebSocket.
#[derive(Debug)]
pub struct Message(pub Value);

impl<'a> Arbitrary<'a> for Message {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut object = Map::new();
        if u.ratio(15, 16)? {
            let kind = if u.ratio(7, 8)? {
                Value::String(u.choose(CLIENT_TYPES)?.to_string())
            } else {
                value(u, MAX_DEPTH - 1)?
            };
            object.insert("type".to_owned(), kind);
        }
        fields(u, &mut object, 1)?;
        Ok(Message(Value::Object(object)))
    }
}

/// A word of the wire types: a client message type or one of [`WORDS`].
fn word(u: &mut Unstructured<'_>) -> Result<&'static str> {
    if u.ratio(1, 4)? {
        u.choose(CLIENT_TYPES).copied()
    } else {
        u.choose(WORDS).copied()
    }
}

fn fields(u: &mut Unstructured<'_>, object: &mut Map<String, Value>, depth: u32) -> Result<()> {
    let count = u.int_in_range(0..=6)?;
    for _ in 0..count {
        let key = if u.ratio(7, 8)? {
            word(u)?.to_string()
        } else {
            String::arbitrary(u)?
        };
        object.insert(key, value(u, depth)?);
    }
    Ok(())
}

fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let last = if depth >= MAX_DEPTH { 5 } else { 7 };
    Ok(match u.int_in_range(0..=last)? {
        0 => Value::Null,
        1 => Value::Bool(bool::arbitrary(u)?),
        2 => Value::Number(match u.int_in_range(0..=3)? {
            0 => Number::from(u.int_in_range(0..=4096u32)?),
            1 => Number::from(u64::arbitrary(u)?),
            2 => Number::from(i64::arbitrary(u)?),
            _ => Number::from_f64(f64::arbitrary(u)?).unwrap_or_else(|| Number::from(0)),
        }),
        3 => Value::String(String::arbitrary(u)?),
        4 | 5 => Value::String(word(u)?.to_string()),
        6 => {
            let count = u.int_in_range(0..=4)?;
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push(value(u, depth + 1)?);
            }
            Value::Array(items)
        }
        _ => {
            let mut object = Map::new();
            fields(u, &mut object, depth + 1)?;
            Value::Object(object)
        }
    })
}

/// Parses `text` as the session does, and checks what a parse promises: an error has a
/// wire code and a message, and a message survives a round trip through its own JSON.
pub fn check_client_message(text: &str) {
    match ClientMessage::parse(text) {
        Ok(message) => {
            let json = serde_json::to_string(&message).expect("a parsed message serializes");
            let again = ClientMessage::parse(&json).expect("a serialized message parses");
            assert_eq!(message, again, "round trip of {json}");
        }
        Err(err) => {
            let _ = err.code();
            let _ = err.to_string();
        }
    }
}

/// The settings of the sans-IO peers the SDP and datagram targets make: one UDP and one
/// ICE-TCP candidate on a documentation address, and AES-GCM.
pub fn peer_settings() -> chorus_sfu::PeerSettings {
    chorus_sfu::PeerSettings {
        candidates: vec![([192, 0, 2, 10], 3478).into()],
        tcp_candidates: vec![([192, 0, 2, 10], 3478).into()],
        srtp_profiles: vec!["aead_aes_128_gcm".to_owned()],
        audio: Default::default(),
    }
}
