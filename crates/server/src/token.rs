//! `chorus token`: mints a join token for an invite link, signed with a key of the
//! config's `[auth]` section.

use std::time::Duration;

use anyhow::Context;
use chorus_protocol::{Grants, TrackSource};
use chorus_signal::auth::{Auth, Claims, Grant, sign, unix_now};
use clap::Args;

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The room the token admits to; `*` for any room.
    #[arg(long)]
    room: String,
    /// Who the participant is. One session per identity and room: a second join with the
    /// same identity replaces the first.
    #[arg(long)]
    identity: String,
    /// The display name; without it, the one the participant types.
    #[arg(long)]
    name: Option<String>,
    /// How long the token is valid: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
    /// Whether the participant may publish.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    can_publish: bool,
    /// The sources it may publish, comma-separated: camera, microphone, screen.
    #[arg(long, value_delimiter = ',', value_parser = parse_source)]
    sources: Option<Vec<TrackSource>>,
    /// Whether it receives the others' media.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    can_subscribe: bool,
    /// Whether it may chat.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    can_chat: bool,
    /// A room admin: may remove others and mute their tracks.
    #[arg(long)]
    admin: bool,
    /// Not listed to the others (a recorder, an observer); cannot publish or chat.
    #[arg(long)]
    hidden: bool,
    /// The API key to sign with; needed when auth.keys has more than one.
    #[arg(long)]
    key: Option<String>,
}

/// The token `args` ask for, signed with the chosen key's secret.
pub fn mint(auth: &Auth, args: &TokenArgs) -> anyhow::Result<String> {
    let (key, secret) = auth
        .signing_key(args.key.as_deref())
        .context("choosing the API key (--key)")?;
    let now = unix_now();
    let defaults = Grants::default();
    let claims = Claims {
        iss: key.to_owned(),
        sub: args.identity.clone(),
        name: args.name.clone(),
        exp: now.saturating_add(args.ttl.as_secs()),
        nbf: Some(now),
        grant: Grant {
            room: args.room.clone(),
            grants: Grants {
                can_publish: args.can_publish,
                can_publish_sources: args.sources.clone().unwrap_or(defaults.can_publish_sources),
                can_subscribe: args.can_subscribe,
                can_chat: args.can_chat,
                room_admin: args.admin,
                hidden: args.hidden,
            },
        },
    };
    sign(&claims, secret).context("signing the token")
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with s, m, h or d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => return Err(format!("{other:?}: the unit is s, m, h or d")),
    };
    match n.checked_mul(unit) {
        Some(0) | None => Err(format!("{text:?}: give a lifetime of at least 1 s")),
        Some(secs) => Ok(Duration::from_secs(secs)),
    }
}

fn parse_source(text: &str) -> Result<TrackSource, String> {
    match text.trim() {
        "camera" => Ok(TrackSource::Camera),
        "microphone" => Ok(TrackSource::Microphone),
        "screen" => Ok(TrackSource::Screen),
        other => Err(format!(
            "{other:?}: a source is camera, microphone or screen"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chorus_protocol::RoomId;
    use chorus_signal::auth::AuthMode;
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TokenArgs,
    }

    fn args(line: &[&str]) -> TokenArgs {
        Cli::try_parse_from(std::iter::once("token").chain(line.iter().copied()))
            .expect("arguments")
            .args
    }

    #[test]
    fn a_minted_token_admits_with_the_grants_asked_for() {
        let auth = Auth::new(
            AuthMode::Token,
            HashMap::from([("KEY".to_owned(), "s".repeat(32))]),
            false,
        );
        let token = mint(
            &auth,
            &args(&[
                "--room",
                "standup",
                "--identity",
                "ada",
                "--name",
                "Ada",
                "--ttl",
                "2h",
                "--can-publish",
                "true",
                "--sources",
                "camera,microphone",
                "--admin",
            ]),
        )
        .expect("mint");
        let room = RoomId::new("standup").expect("room");
        let admitted = auth.admit(Some(&token), &room, unix_now()).expect("admit");
        assert_eq!(admitted.name.as_deref(), Some("Ada"));
        let grants = admitted.admission.grants;
        assert!(grants.room_admin && grants.can_publish);
        assert!(!grants.may_publish(TrackSource::Screen));
        assert!(auth.admit(Some(&token), &room, unix_now() + 7300).is_err());
        let viewer = mint(
            &auth,
            &args(&["--room", "*", "--identity", "bob", "--can-publish", "false"]),
        )
        .expect("mint");
        let admitted = auth.admit(Some(&viewer), &room, unix_now()).expect("admit");
        assert!(!admitted.admission.grants.can_publish);
    }

    #[test]
    fn the_key_must_be_known_and_picked_when_there_are_several() {
        let one = ["--room", "r", "--identity", "i"];
        assert!(mint(&Auth::default(), &args(&one)).is_err());
        let two = Auth::new(
            AuthMode::Token,
            HashMap::from([
                ("A".to_owned(), "a".repeat(32)),
                ("B".to_owned(), "b".repeat(32)),
            ]),
            false,
        );
        assert!(mint(&two, &args(&one)).is_err());
        assert!(
            mint(
                &two,
                &args(&["--room", "r", "--identity", "i", "--key", "B"])
            )
            .is_ok()
        );
        assert!(
            mint(
                &two,
                &args(&["--room", "r", "--identity", "i", "--key", "C"])
            )
            .is_err()
        );
    }

    #[test]
    fn lifetimes_and_sources_parse() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_source("webcam").is_err());
    }
}
