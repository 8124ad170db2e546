//! Join tokens: JWTs signed with HS256 under an API secret, carrying who joins (`sub`),
//! the room it may join and what it may do there (its grants).
//!
//! In `open` mode (the default) no token is needed and everyone gets the default grants.
//! In `token` mode every join needs a token that this server can verify: issued by one of
//! its API keys (`iss`), signed with that key's secret, inside its `nbf`..`exp` window, for
//! the room joined (or `"*"`). The JWT work is `jsonwebtoken`'s; this module only picks the
//! key and reads the claims.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use chorus_protocol::{ErrorCode, Grants, RoomId};
use chorus_sfu::Admission;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longer tokens are refused unread: a join token is a few hundred bytes, and the JSON
/// parser should not be handed megabytes from an unauthenticated client.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Clock skew allowed between the token's issuer and this server, in seconds.
const LEEWAY_SECS: u64 = 5;

/// The room grant that matches every room.
pub const ANY_ROOM: &str = "*";

/// Whether joins need a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone who reaches the server may join any room, with the default grants.
    #[default]
    Open,
    /// Every join needs a valid token.
    Token,
}

/// The claims of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key that issued the token; its secret signs it.
    pub iss: String,
    /// The participant's identity: one session per identity and room.
    pub sub: String,
    /// The display name; when absent, the one the client gives in `join`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub grant: Grant,
}

/// The grant object of a token: a room and what may be done there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// The room, or [`ANY_ROOM`].
    pub room: String,
    #[serde(flatten)]
    pub grants: Grants,
}

/// Why a token was refused. Every one is `unauthorized` on the wire, but an expired one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("this server needs a join token; ask for an invitation")]
    Missing,
    #[error("the token is over {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the token is not a valid HS256 join token: {0}")]
    Malformed(String),
    #[error("the token was issued by an API key this server does not know")]
    UnknownKey,
    #[error("the token's signature does not match")]
    BadSignature,
    #[error("the token has expired; ask for a new invitation")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another room")]
    WrongRoom,
    #[error("the token names no identity (sub)")]
    NoIdentity,
}

impl TokenError {
    /// The wire code a client sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::Expired => ErrorCode::TokenExpired,
            _ => ErrorCode::Unauthorized,
        }
    }
}

/// Why no API key could be chosen to sign with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyChoiceError {
    #[error("there is no API key in [auth] keys (`openssl rand -hex 32` makes a secret)")]
    NoKeys,
    #[error("[auth] keys has several keys ({0}); name the one to use")]
    Several(String),
    #[error("{0:?} is not a key in [auth] keys")]
    Unknown(String),
}

/// The server's auth settings: the mode and the API keys.
#[derive(Clone, Default)]
pub struct Auth {
    pub mode: AuthMode,
    /// API key → secret.
    keys: HashMap<String, String>,
    /// In token mode, whether sessions that have not joined may list rooms.
    pub public_room_list: bool,
}

// Secrets stay out of `{:?}` output, and so out of logs.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.mode)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("public_room_list", &self.public_room_list)
            .finish()
    }
}

/// Who joins, once its token (if any) is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub admission: Admission,
    /// The token's display name, which wins over the one in `join`.
    pub name: Option<String>,
}

impl Auth {
    pub fn new(mode: AuthMode, keys: HashMap<String, String>, public_room_list: bool) -> Self {
        Self {
            mode,
            keys,
            public_room_list,
        }
    }

    /// Whether the room list may be shown to sessions that have not joined.
    pub fn room_list_is_public(&self) -> bool {
        self.mode == AuthMode::Open || self.public_room_list
    }

    /// Decides a join of `room` with `token`, at `now` (seconds since the Unix epoch).
    pub fn admit(
        &self,
        token: Option<&str>,
        room: &RoomId,
        now: u64,
    ) -> Result<Admitted, TokenError> {
        if self.mode == AuthMode::Open {
            return Ok(Admitted {
                admission: Admission::default(),
                name: None,
            });
        }
        let claims = self.verify(token.ok_or(TokenError::Missing)?, now)?;
        if claims.grant.room != ANY_ROOM && claims.grant.room != room.as_str() {
            return Err(TokenError::WrongRoom);
        }
        Ok(Admitted {
            admission: Admission {
                identity: Some(claims.sub),
                grants: claims.grant.grants,
                ..Admission::default()
            },
            name: claims.name,
        })
    }

    /// Checks a token's signature and validity window at `now`, and returns its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let secret = self
            .keys
            .get(&unverified_issuer(token)?)
            .ok_or(TokenError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::HS256);
        // The window is checked below against the caller's clock, which tests control.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .map_err(|err| match err.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature
            | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => TokenError::BadSignature,
            _ => TokenError::Malformed(err.to_string()),
        })?;
        let claims = data.claims;
        if now >= claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS))
        {
            return Err(TokenError::NotYetValid);
        }
        if claims.sub.trim().is_empty() {
            return Err(TokenError::NoIdentity);
        }
        Ok(claims)
    }

    /// The key to sign with (tokens, webhooks, the admin API's Basic credentials) and its
    /// secret: `key` when given, else the only key there is.
    pub fn signing_key(&self, key: Option<&str>) -> Result<(&str, &str), KeyChoiceError> {
        let name = match key {
            Some(key) => key,
            None => match self.key_names().as_slice() {
                [only] => only,
                [] => return Err(KeyChoiceError::NoKeys),
                several => return Err(KeyChoiceError::Several(several.join(", "))),
            },
        };
        self.keys
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .ok_or_else(|| KeyChoiceError::Unknown(name.to_owned()))
    }

    /// The secret of API key `key`, to sign tokens with.
    pub fn secret(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }

    /// The configured API keys, sorted.
    pub fn key_names(&self) -> Vec<&str> {
        let mut keys: Vec<_> = self.keys.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }
}

/// The `iss` of a token whose signature is not checked yet: it names the key to check it
/// with. Nothing else of an unverified token is believed.
fn unverified_issuer(token: &str) -> Result<String, TokenError> {
    #[derive(Deserialize)]
    struct Issuer {
        iss: String,
    }
    let mut peek = Validation::new(Algorithm::HS256);
    peek.insecure_disable_signature_validation();
    peek.validate_exp = false;
    peek.required_spec_claims.clear();
    jsonwebtoken::decode::<Issuer>(token, &DecodingKey::from_secret(&[]), &peek)
        .map(|data| data.claims.iss)
        .map_err(|err| TokenError::Malformed(err.to_string()))
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case).
pub(crate) fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares a presented secret with the expected one in time that depends only on the
/// expected one's length, so that timing tells an attacker nothing of its bytes.
pub(crate) fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut differ = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!*e);
        differ |= std::hint::black_box(g ^ e);
    }
    differ == 0
}

/// Signs `claims` with `secret` (HS256).
pub fn sign(claims: &Claims, secret: &str) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use chorus_protocol::TrackSource;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn auth() -> Auth {
        Auth::new(
            AuthMode::Token,
            HashMap::from([
                ("KEY".to_owned(), "SECRET".to_owned()),
                ("OTHER".to_owned(), "ANOTHER SECRET".to_owned()),
            ]),
            false,
        )
    }

    fn claims(room: &str) -> Claims {
        Claims {
            iss: "KEY".into(),
            sub: "ada".into(),
            name: Some("Ada".into()),
            exp: NOW + 3600,
            nbf: Some(NOW - 10),
            grant: Grant {
                room: room.into(),
                grants: Grants {
                    can_publish: false,
                    ..Grants::default()
                },
            },
        }
    }

    fn room(name: &str) -> RoomId {
        RoomId::new(name).expect("room")
    }

    #[test]
    fn a_good_token_admits_with_its_identity_name_and_grants() {
        let token = sign(&claims("standup"), "SECRET").expect("sign");
        let admitted = auth()
            .admit(Some(&token), &room("standup"), NOW)
            .expect("admit");
        assert_eq!(admitted.admission.identity.as_deref(), Some("ada"));
        assert_eq!(admitted.name.as_deref(), Some("Ada"));
        assert!(!admitted.admission.grants.can_publish);
        assert!(admitted.admission.grants.can_subscribe);
        let any = sign(&claims(ANY_ROOM), "SECRET").expect("sign");
        assert!(auth().admit(Some(&any), &room("other"), NOW).is_ok());
    }

    #[test]
    fn open_mode_needs_no_token_and_gives_the_default_grants() {
        let open = Auth::default();
        let admitted = open.admit(None, &room("a"), NOW).expect("open");
        assert_eq!(admitted.admission, Admission::default());
        assert!(open.room_list_is_public());
        assert!(!auth().room_list_is_public());
    }

    #[test]
    fn bad_tokens_are_refused_with_the_right_error() {
        let auth = auth();
        let standup = room("standup");
        let good = sign(&claims("standup"), "SECRET").expect("sign");
        let check = |token: Option<&str>, now: u64| auth.admit(token, &standup, now).err();
        assert_eq!(check(None, NOW), Some(TokenError::Missing));
        assert_eq!(
            auth.admit(Some(&good), &room("other"), NOW).err(),
            Some(TokenError::WrongRoom)
        );
        assert_eq!(
            check(Some(&good), NOW + 3600 + 5),
            Some(TokenError::Expired)
        );
        assert_eq!(TokenError::Expired.code(), ErrorCode::TokenExpired);
        assert!(
            check(Some(&good), NOW + 3600 + 4).is_none(),
            "within the leeway"
        );
        assert_eq!(check(Some(&good), NOW - 20), Some(TokenError::NotYetValid));
        // signed with another key's secret, or naming a key the server lacks
        let forged = sign(&claims("standup"), "ANOTHER SECRET").expect("sign");
        assert_eq!(check(Some(&forged), NOW), Some(TokenError::BadSignature));
        let stranger = sign(
            &Claims {
                iss: "NOBODY".into(),
                ..claims("standup")
            },
            "SECRET",
        )
        .expect("sign");
        assert_eq!(check(Some(&stranger), NOW), Some(TokenError::UnknownKey));
        let anonymous = sign(
            &Claims {
                sub: " ".into(),
                ..claims("standup")
            },
            "SECRET",
        )
        .expect("sign");
        assert_eq!(check(Some(&anonymous), NOW), Some(TokenError::NoIdentity));
        // oversized, garbage
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(check(Some(&huge), NOW), Some(TokenError::TooLarge));
        assert!(matches!(
            check(Some("not.a.token"), NOW),
            Some(TokenError::Malformed(_))
        ));
        assert!(matches!(
            check(Some(""), NOW),
            Some(TokenError::Malformed(_))
        ));
        for err in [
            TokenError::Missing,
            TokenError::BadSignature,
            TokenError::WrongRoom,
        ] {
            assert_eq!(err.code(), ErrorCode::Unauthorized);
        }
    }

    /// The three parts of a token, decoded, to tamper with.
    fn parts(token: &str) -> (serde_json::Value, serde_json::Value, String) {
        let mut it = token.split('.');
        let mut json = || -> serde_json::Value {
            serde_json::from_slice(&B64.decode(it.next().expect("part")).expect("b64"))
                .expect("json")
        };
        let header = json();
        let payload = json();
        (header, payload, it.next().expect("signature").to_owned())
    }

    fn join_parts(header: &serde_json::Value, payload: &serde_json::Value, sig: &str) -> String {
        format!(
            "{}.{}.{sig}",
            B64.encode(header.to_string()),
            B64.encode(payload.to_string())
        )
    }

    #[test]
    fn tampered_tokens_and_alg_none_are_refused() {
        let auth = auth();
        let standup = room("standup");
        let good = sign(&claims("standup"), "SECRET").expect("sign");
        let (header, payload, sig) = parts(&good);
        // a payload that grants more, under the old signature
        let mut greedy = payload.clone();
        greedy["grant"]["roomAdmin"] = true.into();
        greedy["grant"]["canPublish"] = true.into();
        let tampered = join_parts(&header, &greedy, &sig);
        assert_eq!(
            auth.admit(Some(&tampered), &standup, NOW).err(),
            Some(TokenError::BadSignature)
        );
        // a signature that is not the right one
        let bad_sig = join_parts(&header, &payload, &B64.encode([0u8; 32]));
        assert_eq!(
            auth.admit(Some(&bad_sig), &standup, NOW).err(),
            Some(TokenError::BadSignature)
        );
        // alg none, with and without a signature
        let none = serde_json::json!({"alg": "none", "typ": "JWT"});
        for sig in ["", "x"] {
            let unsigned = join_parts(&none, &payload, sig);
            assert!(matches!(
                auth.admit(Some(&unsigned), &standup, NOW).err(),
                Some(TokenError::Malformed(_))
            ));
        }
        // another HMAC algorithm than HS256
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims("standup"),
            &EncodingKey::from_secret(b"SECRET"),
        )
        .expect("sign");
        assert_eq!(
            auth.admit(Some(&hs512), &standup, NOW).err(),
            Some(TokenError::BadSignature)
        );
    }

    #[test]
    fn grants_default_to_everything_but_admin_and_hidden() {
        let minimal = serde_json::json!({
            "iss": "KEY", "sub": "bob", "exp": NOW + 60, "grant": {"room": "standup"}
        });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &minimal,
            &EncodingKey::from_secret(b"SECRET"),
        )
        .expect("sign");
        let admitted = auth()
            .admit(Some(&token), &room("standup"), NOW)
            .expect("admit");
        assert_eq!(admitted.admission.grants, Grants::default());
        assert_eq!(admitted.name, None);
        let sources = serde_json::json!({
            "iss": "KEY", "sub": "bob", "exp": NOW + 60,
            "grant": {"room": "standup", "canPublishSources": ["screen"], "hidden": true}
        });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &sources,
            &EncodingKey::from_secret(b"SECRET"),
        )
        .expect("sign");
        let grants = auth()
            .admit(Some(&token), &room("standup"), NOW)
            .expect("admit")
            .admission
            .grants;
        assert_eq!(grants.can_publish_sources, vec![TrackSource::Screen]);
        assert!(grants.hidden && !grants.may_publish(TrackSource::Screen));
    }
}
