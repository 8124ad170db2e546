//! The configuration file (`config/chorus.toml`). Every default lives in this file, in the
//! `Default` impls; an unknown key is an error.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub media: MediaConfig,
    pub limits: LimitsConfig,
    pub ice: IceConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub frontend_dir: PathBuf,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            frontend_dir: PathBuf::from("frontend"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    pub udp_listen: SocketAddr,
    pub ice_tcp: bool,
    /// None: the same address as `udp_listen` (an ephemeral port when that one is 0).
    pub tcp_listen: Option<SocketAddr>,
    pub announced_ips: Vec<IpAddr>,
    pub srtp_profiles: Vec<String>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            udp_listen: SocketAddr::from(([0, 0, 0, 0], 50000)),
            ice_tcp: true,
            tcp_listen: None,
            announced_ips: Vec::new(),
            srtp_profiles: vec!["aead_aes_128_gcm".into(), "aead_aes_256_gcm".into()],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    pub max_participants_per_room: usize,
    pub max_rooms: usize,
    pub max_name_chars: usize,
    pub max_chat_chars: usize,
    pub chat_history: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_participants_per_room: 50,
            max_rooms: 100,
            max_name_chars: 64,
            max_chat_chars: 2000,
            chat_history: 50,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct IceConfig {
    pub servers: Vec<IceServerConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServerConfig {
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

impl Config {
    /// Reads a config file. A missing file is an error only when `explicit`.
    pub fn load(path: &Path, explicit: bool) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if !explicit && err.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "no config file; using the defaults");
                return Ok(Self::default());
            }
            Err(err) => {
                return Err(err).with_context(|| format!("reading {}", path.display()));
            }
        };
        let config: Config =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        for name in &self.media.srtp_profiles {
            if !chorus_sfu::peer::SRTP_PROFILE_NAMES.contains(&name.as_str()) {
                bail!(
                    "media.srtp_profiles: unknown profile {name:?} (known: {})",
                    chorus_sfu::peer::SRTP_PROFILE_NAMES.join(", ")
                );
            }
        }
        if self.media.srtp_profiles.is_empty() {
            bail!("media.srtp_profiles must name at least one profile");
        }
        let l = &self.limits;
        for (key, value) in [
            ("limits.max_message_bytes", l.max_message_bytes),
            (
                "limits.max_participants_per_room",
                l.max_participants_per_room,
            ),
            ("limits.max_rooms", l.max_rooms),
            ("limits.max_name_chars", l.max_name_chars),
            ("limits.max_chat_chars", l.max_chat_chars),
        ] {
            if value == 0 {
                bail!("{key} must be at least 1");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/chorus.toml");
        let shipped = Config::load(&path, true).expect("config/chorus.toml");
        let defaults = Config::default();
        assert_eq!(format!("{shipped:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<Config>("[http]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n")
            .expect_err("unknown key");
        assert!(err.to_string().contains("listne"), "{err}");
        assert!(toml::from_str::<Config>("[mdia]\n").is_err());
    }

    #[test]
    fn bad_values_are_errors() {
        let config: Config =
            toml::from_str("[media]\nsrtp_profiles = [\"rot13\"]\n").expect("toml");
        assert!(config.validate().is_err());
        let config: Config = toml::from_str("[limits]\nmax_rooms = 0\n").expect("toml");
        assert!(config.validate().is_err());
    }
}
