//! TURN credentials handed to clients in the `joined` message.
//!
//! Two kinds:
//! - **static**: the same username and password for everyone (coturn `lt-cred-mech` with a
//!   `user=` line). Simple, but the password is visible to every participant and never expires.
//! - **ephemeral**: the "TURN REST API" scheme that coturn implements with `use-auth-secret`
//!   and `static-auth-secret=SECRET`. Chorus and coturn share only the secret; each
//!   participant gets `username = "EXPIRY:PARTICIPANT"` (EXPIRY in Unix seconds) and
//!   `credential = base64(HMAC-SHA1(SECRET, username))`. coturn recomputes the credential
//!   from the username and refuses it once EXPIRY has passed, so a leaked credential is
//!   only good until then.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// How a TURN server authenticates the clients we send to it.
#[derive(Clone, PartialEq, Eq)]
pub enum TurnAuth {
    /// No credentials (a STUN server).
    None,
    /// The same username and password for every participant.
    Static {
        username: String,
        credential: String,
    },
    /// Per-participant credentials derived from a secret shared with coturn.
    Ephemeral { secret: String, ttl: Duration },
}

// Secrets stay out of logs and `{:?}` output.
impl std::fmt::Debug for TurnAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Static { username, .. } => f
                .debug_struct("Static")
                .field("username", username)
                .finish_non_exhaustive(),
            Self::Ephemeral { ttl, .. } => f
                .debug_struct("Ephemeral")
                .field("ttl", ttl)
                .finish_non_exhaustive(),
        }
    }
}

impl TurnAuth {
    /// The `(username, credential)` to hand to `participant` at `now`, if any.
    pub fn credentials(&self, participant: &str, now: SystemTime) -> Option<(String, String)> {
        match self {
            Self::None => None,
            Self::Static {
                username,
                credential,
            } => Some((username.clone(), credential.clone())),
            Self::Ephemeral { secret, ttl } => {
                Some(ephemeral_credentials(secret, participant, now + *ttl))
            }
        }
    }
}

/// Ephemeral credentials for `participant`, valid until `expires` (coturn `use-auth-secret`).
pub fn ephemeral_credentials(
    secret: &str,
    participant: &str,
    expires: SystemTime,
) -> (String, String) {
    let expiry = expires
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let username = format!("{expiry}:{participant}");
    let credential = credential_for(secret, &username);
    (username, credential)
}

/// `base64(HMAC-SHA1(secret, username))`: the password coturn expects for `username`.
pub fn credential_for(secret: &str, username: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes())
        .expect("HMAC-SHA1 takes keys of any length");
    mac.update(username.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently with Python's standard library:
    ///
    /// ```text
    /// python3 -c "import hmac, hashlib, base64; print(base64.b64encode(hmac.new(
    ///     b'north-wind', b'1700000000:p42', hashlib.sha1).digest()).decode())"
    /// McDhysRsUXHKwxMdzo+OdwSFO8w=
    /// ```
    #[test]
    fn matches_an_independently_computed_vector() {
        assert_eq!(
            credential_for("north-wind", "1700000000:p42"),
            "McDhysRsUXHKwxMdzo+OdwSFO8w="
        );
    }

    #[test]
    fn ephemeral_usernames_are_expiry_colon_participant() {
        let auth = TurnAuth::Ephemeral {
            secret: "north-wind".into(),
            ttl: Duration::from_secs(3600),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000 - 3600);
        let (username, credential) = auth.credentials("p42", now).expect("credentials");
        assert_eq!(username, "1700000000:p42");
        assert_eq!(credential, "McDhysRsUXHKwxMdzo+OdwSFO8w=");
    }

    #[test]
    fn static_and_none() {
        let auth = TurnAuth::Static {
            username: "u".into(),
            credential: "c".into(),
        };
        assert_eq!(
            auth.credentials("p1", SystemTime::now()),
            Some(("u".into(), "c".into()))
        );
        assert_eq!(TurnAuth::None.credentials("p1", SystemTime::now()), None);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let auth = TurnAuth::Ephemeral {
            secret: "north-wind".into(),
            ttl: Duration::from_secs(60),
        };
        assert!(!format!("{auth:?}").contains("north-wind"));
        let auth = TurnAuth::Static {
            username: "u".into(),
            credential: "hunter2".into(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
