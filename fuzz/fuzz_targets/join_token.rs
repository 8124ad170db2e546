//! A join token from a client, in `token` mode, through `Auth::admit` (and so
//! `Auth::verify`). Either any string, or claims built as JSON and signed with the key's
//! real secret, so that the fuzzer gets past the signature to the claims' own checks.
#![no_main]

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use chorus_fuzz::Json;
use chorus_protocol::RoomId;
use chorus_signal::auth::{Auth, AuthMode, TokenError};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const KEY: &str = "fuzzkey";
const SECRET: &str = "fuzz-secret-of-at-least-32-bytes!";

#[derive(Debug)]
enum Token {
    /// Whatever a client sends.
    Raw(String),
    /// Claims signed with [`SECRET`] (or, sometimes, another secret).
    Signed { claims: Value, right_secret: bool },
}

impl<'a> Arbitrary<'a> for Token {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        if u.ratio(1, 4)? {
            return Ok(Token::Raw(String::arbitrary(u)?));
        }
        // Mostly well-shaped claims with arbitrary values; sometimes any JSON at all.
        let claims = if u.ratio(7, 8)? {
            let mut object = Map::new();
            let iss = if u.ratio(7, 8)? {
                Value::from(KEY)
            } else {
                Json::arbitrary(u)?.0
            };
            object.insert("iss".into(), iss);
            for key in ["sub", "name", "exp", "nbf", "grant"] {
                if u.ratio(5, 6)? {
                    let value = match key {
                        "exp" | "nbf" if u.ratio(3, 4)? => {
                            Value::from(u.int_in_range(0..=2_000u64)?)
                        }
                        "grant" if u.ratio(3, 4)? => {
                            let mut grant = Map::new();
                            let room = if u.ratio(1, 2)? { "*" } else { "standup" };
                            grant.insert("room".into(), Value::from(room));
                            if let Json(Value::Object(more)) = Json::arbitrary(u)? {
                                grant.extend(more);
                            }
                            Value::Object(grant)
                        }
                        _ => Json::arbitrary(u)?.0,
                    };
                    object.insert(key.into(), value);
                }
            }
            Value::Object(object)
        } else {
            Json::arbitrary(u)?.0
        };
        Ok(Token::Signed {
            claims,
            right_secret: u.ratio(15, 16)?,
        })
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    token: Token,
    now: u16,
    other_room: bool,
}

fuzz_target!(|input: Input| {
    let auth = Auth::new(
        AuthMode::Token,
        HashMap::from([(KEY.to_owned(), SECRET.to_owned())]),
        false,
    );
    let token = match input.token {
        Token::Raw(token) => token,
        Token::Signed {
            claims,
            right_secret,
        } => {
            let secret = if right_secret {
                SECRET
            } else {
                "another secret entirely"
            };
            let key = EncodingKey::from_secret(secret.as_bytes());
            match jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key) {
                Ok(token) => token,
                Err(_) => return,
            }
        }
    };
    let room = RoomId::new(if input.other_room { "other" } else { "standup" }).expect("a room id");
    let now = u64::from(input.now);
    match auth.verify(&token, now) {
        Ok(claims) => {
            assert_eq!(claims.iss, KEY);
            assert!(now < claims.exp.saturating_add(5), "expired token admitted");
            assert!(!claims.sub.trim().is_empty());
        }
        Err(err) => {
            let _ = err.code();
            let _ = err.to_string();
        }
    }
    match auth.admit(Some(&token), &room, now) {
        Ok(admitted) => {
            assert!(admitted.admission.identity.is_some());
        }
        Err(TokenError::Missing) => panic!("a token was given"),
        Err(_) => {}
    }
});
