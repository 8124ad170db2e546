//! The configuration file (`config/chorus.toml`). Every default lives in this file, in the
//! `Default` impls; an unknown key is an error.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use chorus_signal::auth::{Auth, AuthMode};
use serde::Deserialize;

use crate::stun_client::{IceUrl, Scheme};
use crate::turn::TurnAuth;
use crate::webhook::{self, WebhookSettings};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub media: MediaConfig,
    pub limits: LimitsConfig,
    pub ice: IceConfig,
    pub auth: AuthConfig,
    pub metrics: MetricsConfig,
    pub webhooks: WebhooksConfig,
    pub shutdown: ShutdownConfig,
    pub audio: AudioConfig,
    /// `[cluster]`: absent, the server runs alone.
    pub cluster: Option<ClusterConfig>,
    pub recording: RecordingConfig,
}

/// `[recording]`: per-track recording to files (docs/recording.md).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingConfig {
    /// The base directory of recordings; unset: recording is off.
    pub dir: Option<std::path::PathBuf>,
    /// Rooms recorded from their first join.
    pub rooms: Vec<String>,
}

impl RecordingConfig {
    /// The hub's recording settings (the room names were checked by `validate`).
    pub fn settings(&self) -> chorus_sfu::RecordingSettings {
        chorus_sfu::RecordingSettings {
            dir: self.dir.clone(),
            rooms: self
                .rooms
                .iter()
                .filter_map(|r| chorus_protocol::RoomId::new(r.as_str()).ok())
                .collect(),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        for room in &self.rooms {
            if let Err(err) = chorus_protocol::RoomId::new(room.as_str()) {
                bail!("recording.rooms: {room:?} is no room name: {err}");
            }
        }
        if !self.rooms.is_empty() && self.dir.is_none() {
            bail!("recording.rooms needs recording.dir");
        }
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            bail!("recording.dir must not be empty (leave it out to switch recording off)");
        }
        Ok(())
    }
}

/// `[cluster]`: this server is one node of several sharing a Redis (docs/cluster.md).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The Redis every node uses: `redis://host:port[/db]` (`redis://:password@host:port`).
    #[serde(default = "ClusterConfig::default_redis")]
    pub redis: String,
    /// This node's id, unique in the cluster; generated at start-up when left out.
    #[serde(default)]
    pub node_id: Option<String>,
    /// How browsers and the other nodes reach this node's HTTP side, e.g.
    /// `https://node2.example.com`. Redirects send clients to its `/ws`.
    pub advertise_url: String,
    /// The cluster secret (at least 32 bytes), the same on every node: node records are
    /// signed with it, and records that do not verify are ignored.
    pub secret: String,
    /// How often the node writes its record, in ms.
    #[serde(default = "ClusterConfig::default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// How long a record and a room claim live without a heartbeat, in ms: a dead node's
    /// rooms can be placed again after this.
    #[serde(default = "ClusterConfig::default_ttl_ms")]
    pub ttl_ms: u64,
    /// How long a join that needs Redis waits for it before `clusterUnavailable`, in ms.
    #[serde(default = "ClusterConfig::default_placement_wait_ms")]
    pub placement_wait_ms: u64,
    /// How many of a room's participants its node holds before the next ones go to other
    /// nodes, which relay the room's media (0: never; a room stays on one node).
    #[serde(default)]
    pub max_participants_per_node: usize,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis", &"…")
            .field("node_id", &self.node_id)
            .field("advertise_url", &self.advertise_url)
            .field("secret", &"…")
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("ttl_ms", &self.ttl_ms)
            .field("placement_wait_ms", &self.placement_wait_ms)
            .field("max_participants_per_node", &self.max_participants_per_node)
            .finish()
    }
}

impl ClusterConfig {
    fn default_redis() -> String {
        "redis://127.0.0.1:6379".into()
    }
    fn default_heartbeat_ms() -> u64 {
        1000
    }
    fn default_ttl_ms() -> u64 {
        3000
    }
    fn default_placement_wait_ms() -> u64 {
        3000
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.secret.len() < chorus_cluster::record::MIN_SECRET_BYTES {
            bail!(
                "cluster.secret must have at least {} bytes (e.g. `openssl rand -hex 32`)",
                chorus_cluster::record::MIN_SECRET_BYTES
            );
        }
        if !(self.advertise_url.starts_with("http://")
            || self.advertise_url.starts_with("https://"))
        {
            bail!("cluster.advertise_url must be an http:// or https:// URL");
        }
        if !self.redis.starts_with("redis://") {
            bail!("cluster.redis must be a redis:// URL");
        }
        if let Some(id) = &self.node_id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'))
        {
            bail!("cluster.node_id must be 1 to 64 of A-Z a-z 0-9 - _ .");
        }
        if self.heartbeat_ms < 100 {
            bail!("cluster.heartbeat_ms must be at least 100");
        }
        if self.ttl_ms < 2 * self.heartbeat_ms {
            bail!("cluster.ttl_ms must be at least twice cluster.heartbeat_ms");
        }
        Ok(())
    }

    /// The settings the cluster crate takes; generates the node id when none is set.
    pub fn settings(&self) -> chorus_cluster::ClusterSettings {
        let node_id = self.node_id.clone().unwrap_or_else(generated_node_id);
        chorus_cluster::ClusterSettings {
            redis_url: self.redis.clone(),
            node_id,
            advertise_url: self.advertise_url.trim_end_matches('/').to_owned(),
            secret: self.secret.as_bytes().to_vec(),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            ttl: Duration::from_millis(self.ttl_ms),
            placement_wait: Duration::from_millis(self.placement_wait_ms),
            max_participants_per_node: self.max_participants_per_node,
        }
    }
}

/// A node id for a node that names none: the host name (when it is a valid id) and a
/// random suffix, so that two processes on one host differ.
fn generated_node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 40
                && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .unwrap_or_else(|| "node".to_owned());
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{host}-{:08x}", hasher.finish() as u32)
}

/// `[audio]`: RED, DTX and the speaker election.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudioConfig {
    pub red: bool,
    pub dtx: bool,
    pub speaker_min_level: u8,
    pub speaker_min_duration_ms: u64,
    pub speaker_hold_ms: u64,
    pub speaker_margin: u8,
    pub max_speakers: usize,
}

impl Default for AudioConfig {
    fn default() -> Self {
        let options = chorus_sfu::AudioOptions::default();
        let speakers = chorus_sfu::SpeakerSettings::default();
        Self {
            red: options.red,
            dtx: options.dtx,
            speaker_min_level: speakers.min_level,
            speaker_min_duration_ms: speakers.min_duration.as_millis() as u64,
            speaker_hold_ms: speakers.hold.as_millis() as u64,
            speaker_margin: speakers.margin,
            max_speakers: speakers.max_speakers,
        }
    }
}

impl AudioConfig {
    pub fn options(&self) -> chorus_sfu::AudioOptions {
        chorus_sfu::AudioOptions {
            red: self.red,
            dtx: self.dtx,
        }
    }

    pub fn speakers(&self) -> chorus_sfu::SpeakerSettings {
        chorus_sfu::SpeakerSettings {
            min_level: self.speaker_min_level,
            min_duration: std::time::Duration::from_millis(self.speaker_min_duration_ms),
            hold: std::time::Duration::from_millis(self.speaker_hold_ms),
            margin: self.speaker_margin,
            max_speakers: self.max_speakers,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub frontend_dir: PathBuf,
    /// Origins besides the server's own whose pages may open `/ws`.
    pub allowed_origins: Vec<String>,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpAddr>,
    /// Seconds a client has to send a request's headers.
    pub header_read_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            frontend_dir: PathBuf::from("frontend"),
            allowed_origins: vec![chorus_signal::origin::LOCALHOST.to_owned()],
            // A reverse proxy on this machine, the setup docs/self-hosting.md describes.
            trusted_proxies: vec![
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ],
            header_read_timeout_secs: 10,
        }
    }
}

/// `[shutdown]`: how the server stops.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long a drain waits for the rooms to empty before it ends the calls left.
    pub grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_secs: 30 }
    }
}

/// `[auth]`: who may join.
#[derive(Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// API key → secret.
    pub keys: HashMap<String, String>,
    pub public_room_list: bool,
}

// Secrets stay out of `{:?}` output (and so out of logs).
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<_> = self.keys.keys().collect();
        keys.sort();
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field("keys", &keys)
            .field("public_room_list", &self.public_room_list)
            .finish()
    }
}

/// The shortest API secret accepted: HS256 is only as strong as its secret.
const MIN_SECRET_BYTES: usize = 32;

impl AuthConfig {
    /// The signaling side's view of this section.
    pub fn auth(&self) -> Auth {
        Auth::new(self.mode, self.keys.clone(), self.public_room_list)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.mode == AuthMode::Token && self.keys.is_empty() {
            bail!("auth.mode = \"token\" needs at least one key in auth.keys");
        }
        for (key, secret) in &self.keys {
            if key.is_empty() {
                bail!("auth.keys: an API key name is empty");
            }
            if secret.len() < MIN_SECRET_BYTES {
                bail!(
                    "auth.keys.{key}: the secret has {} bytes; use at least {MIN_SECRET_BYTES} \
                     random ones (for example `openssl rand -hex 32`)",
                    secret.len()
                );
            }
        }
        Ok(())
    }
}

/// `[webhooks]`: where room events are POSTed (see `docs/webhooks.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// http:// or https:// URLs; empty: no webhooks.
    pub urls: Vec<String>,
    /// The API key (of `auth.keys`) whose secret signs; None: the only key there is.
    pub key: Option<String>,
    pub timeout_secs: u64,
    pub max_attempts: u32,
    /// Events waiting per URL.
    pub queue: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            key: None,
            timeout_secs: webhook::TIMEOUT.as_secs(),
            max_attempts: webhook::MAX_ATTEMPTS,
            queue: webhook::URL_QUEUE,
        }
    }
}

impl WebhooksConfig {
    /// The sender's settings, with the signing key resolved from `auth`; None when no URL
    /// is configured.
    pub fn settings(&self, auth: &AuthConfig) -> anyhow::Result<Option<WebhookSettings>> {
        if self.urls.is_empty() {
            return Ok(None);
        }
        let targets = self
            .urls
            .iter()
            .map(|url| {
                webhook::Target::parse(url).map_err(|e| anyhow::anyhow!("webhooks.urls: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let auth = auth.auth();
        let (key, secret) = auth
            .signing_key(self.key.as_deref())
            .map_err(|e| anyhow::anyhow!("webhooks.key: {e}"))?;
        let (key, secret) = (key.to_owned(), secret.to_owned());
        for (name, value) in [
            ("webhooks.timeout_secs", self.timeout_secs),
            ("webhooks.max_attempts", u64::from(self.max_attempts)),
            ("webhooks.queue", self.queue as u64),
        ] {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        Ok(Some(WebhookSettings {
            targets,
            key,
            secret: secret.as_bytes().to_vec(),
            timeout: Duration::from_secs(self.timeout_secs),
            max_attempts: self.max_attempts,
            queue: self.queue,
            backoff_base: webhook::BACKOFF_BASE,
        }))
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
    /// A STUN server (`host:port`) asked at start-up for this server's public IP, which is
    /// then announced too. None: no discovery.
    pub stun_discovery: Option<String>,
    /// Media worker threads, each with its own socket on the media port; 0: one per core.
    pub workers: usize,
    /// How many of a room's participants live on the room's worker before the next ones
    /// are spread over the others; 0: never.
    pub spread_room_after: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            udp_listen: SocketAddr::from(([0, 0, 0, 0], 50000)),
            ice_tcp: true,
            tcp_listen: None,
            announced_ips: Vec::new(),
            srtp_profiles: vec!["aead_aes_128_gcm".into(), "aead_aes_256_gcm".into()],
            stun_discovery: None,
            workers: 0,
            spread_room_after: 16,
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
    pub join_timeout_secs: u64,
    pub ws_ping_interval_secs: u64,
    pub ws_idle_timeout_secs: u64,
    pub max_connections_per_ip: usize,
    pub max_joins_per_ip_per_minute: usize,
    pub max_messages_per_second: u32,
    pub max_sdp_bytes: usize,
    pub max_candidates_per_peer: usize,
    pub max_tracks_per_participant: usize,
    pub max_subscriptions_per_participant: usize,
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
            join_timeout_secs: 30,
            ws_ping_interval_secs: 15,
            ws_idle_timeout_secs: 45,
            max_connections_per_ip: 100,
            max_joins_per_ip_per_minute: 100,
            max_messages_per_second: 20,
            max_sdp_bytes: 32 * 1024,
            max_candidates_per_peer: 50,
            max_tracks_per_participant: 8,
            max_subscriptions_per_participant: 200,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IceConfig {
    /// Lifetime of generated (`auth_secret`) TURN credentials, in seconds.
    pub credential_ttl_secs: u64,
    pub servers: Vec<IceServerConfig>,
}

impl Default for IceConfig {
    fn default() -> Self {
        Self {
            credential_ttl_secs: 24 * 3600,
            servers: Vec::new(),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServerConfig {
    pub urls: Vec<String>,
    /// Static credentials, the same for every participant.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
    /// coturn's `static-auth-secret`: per-participant credentials are generated from it.
    #[serde(default)]
    pub auth_secret: Option<String>,
}

// Passwords and secrets stay out of `{:?}` output (and so out of logs).
impl std::fmt::Debug for IceServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServerConfig")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field("credential", &self.credential.as_ref().map(|_| "..."))
            .field("auth_secret", &self.auth_secret.as_ref().map(|_| "..."))
            .finish()
    }
}

/// `[metrics]`: Prometheus metrics at `/metrics`.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// When set, a scrape must send `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        // On, without a token: `/metrics` tells no more than `/api/stats` already does.
        Self {
            enabled: true,
            bearer_token: None,
        }
    }
}

// The token stays out of `{:?}` output (and so out of logs).
impl std::fmt::Debug for MetricsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsConfig")
            .field("enabled", &self.enabled)
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| "..."))
            .finish()
    }
}

impl IceServerConfig {
    /// How this server's clients authenticate; `ttl` applies to generated credentials.
    pub fn auth(&self, ttl: std::time::Duration) -> TurnAuth {
        match (&self.auth_secret, &self.username, &self.credential) {
            (Some(secret), _, _) => TurnAuth::Ephemeral {
                secret: secret.clone(),
                ttl,
            },
            (None, Some(username), Some(credential)) => TurnAuth::Static {
                username: username.clone(),
                credential: credential.clone(),
            },
            _ => TurnAuth::None,
        }
    }

    /// The parsed URLs (checked by [`Config::validate`]).
    pub fn parsed_urls(&self) -> Vec<(String, Result<IceUrl, String>)> {
        self.urls
            .iter()
            .map(|u| (u.clone(), IceUrl::parse(u)))
            .collect()
    }

    fn validate(&self, i: usize) -> anyhow::Result<()> {
        let at = format!("ice.servers[{i}]");
        if self.urls.is_empty() {
            bail!("{at}.urls must list at least one stun:, turn: or turns: URL");
        }
        let mut turn = false;
        for (_, url) in self.parsed_urls() {
            let url = url.map_err(|e| anyhow::anyhow!("{at}.urls: {e}"))?;
            turn |= url.scheme != Scheme::Stun;
        }
        let has_static = self.username.is_some() || self.credential.is_some();
        if self.auth_secret.is_some() && has_static {
            bail!("{at}: give either auth_secret or username and credential, not both");
        }
        if self.username.is_some() != self.credential.is_some() {
            bail!("{at}: username and credential go together");
        }
        // Browsers refuse a TURN URL without credentials (and with it the whole call).
        if turn && !has_static && self.auth_secret.is_none() {
            bail!("{at}: TURN needs auth_secret, or username and credential");
        }
        if self.auth_secret.as_deref() == Some("") {
            bail!("{at}.auth_secret is empty");
        }
        Ok(())
    }
}

/// The most media workers a server runs (each is a thread with a socket).
pub const MAX_MEDIA_WORKERS: usize = 256;

impl MediaConfig {
    /// How many media workers to run: `workers`, or one per core when it is 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
        .min(MAX_MEDIA_WORKERS)
    }

    /// `media.stun_discovery` as a URL (`host:port`, `stun:` optional), if set.
    pub fn stun_discovery_url(&self) -> Option<Result<IceUrl, String>> {
        let server = self.stun_discovery.as_deref()?;
        let url = if server.starts_with("stun:") {
            server.to_owned()
        } else {
            format!("stun:{server}")
        };
        Some(IceUrl::parse(&url))
    }
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
        if self.media.workers > MAX_MEDIA_WORKERS {
            bail!(
                "media.workers: {} is more than {MAX_MEDIA_WORKERS}",
                self.media.workers
            );
        }
        if self.media.srtp_profiles.is_empty() {
            bail!("media.srtp_profiles must name at least one profile");
        }
        if let Some(Err(err)) = self.media.stun_discovery_url() {
            bail!("media.stun_discovery: {err}");
        }
        if self.audio.speaker_min_level > 127 {
            bail!("audio.speaker_min_level must be 0 to 127");
        }
        if self.audio.max_speakers == 0 {
            bail!("audio.max_speakers must be at least 1");
        }
        if self.ice.credential_ttl_secs == 0 {
            bail!("ice.credential_ttl_secs must be at least 1");
        }
        for (i, server) in self.ice.servers.iter().enumerate() {
            server.validate(i)?;
        }
        self.auth.validate()?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        self.recording.validate()?;
        if let Some(token) = &self.metrics.bearer_token
            && (token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            bail!("metrics.bearer_token must be printable ASCII without spaces, or left out");
        }
        self.webhooks.settings(&self.auth)?;
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
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
            (
                "limits.max_joins_per_ip_per_minute",
                l.max_joins_per_ip_per_minute,
            ),
            (
                "limits.max_messages_per_second",
                l.max_messages_per_second as usize,
            ),
            ("limits.max_sdp_bytes", l.max_sdp_bytes),
            ("limits.max_candidates_per_peer", l.max_candidates_per_peer),
            (
                "limits.max_tracks_per_participant",
                l.max_tracks_per_participant,
            ),
            (
                "limits.max_subscriptions_per_participant",
                l.max_subscriptions_per_participant,
            ),
            ("limits.join_timeout_secs", l.join_timeout_secs as usize),
            (
                "http.header_read_timeout_secs",
                self.http.header_read_timeout_secs as usize,
            ),
            (
                "limits.ws_ping_interval_secs",
                l.ws_ping_interval_secs as usize,
            ),
        ] {
            if value == 0 {
                bail!("{key} must be at least 1");
            }
        }
        if l.ws_idle_timeout_secs <= l.ws_ping_interval_secs {
            bail!(
                "limits.ws_idle_timeout_secs must be longer than limits.ws_ping_interval_secs \
                 (a client gets at least one ping to answer)"
            );
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
    fn the_cluster_section_is_optional_and_checked() {
        assert!(
            Config::default().cluster.is_none(),
            "alone unless configured"
        );
        let good = "[cluster]\nadvertise_url = \"https://node1.example.com/\"\n\
                    secret = \"0123456789abcdef0123456789abcdef\"\n";
        let config: Config = toml::from_str(good).expect("toml");
        config.validate().expect("valid");
        let cluster = config.cluster.expect("cluster");
        let settings = cluster.settings();
        assert_eq!(settings.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(settings.advertise_url, "https://node1.example.com");
        assert_eq!(settings.heartbeat, Duration::from_secs(1));
        assert_eq!(settings.ttl, Duration::from_secs(3));
        assert!(!settings.node_id.is_empty(), "a generated node id");
        assert!(
            format!("{cluster:?}").contains("secret: \"…\""),
            "the secret is not logged"
        );
        for bad in [
            // no secret, a short one, no URL, a bad URL, a bad id, a TTL under two beats
            "[cluster]\nadvertise_url = \"https://n.example\"\n",
            "[cluster]\nadvertise_url = \"https://n.example\"\nsecret = \"short\"\n",
            "[cluster]\nsecret = \"0123456789abcdef0123456789abcdef\"\n",
            "[cluster]\nadvertise_url = \"n.example\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n",
            "[cluster]\nadvertise_url = \"https://n.example\"\nsecret = \"0123456789abcdef0123456789abcdef\"\nnode_id = \"a b\"\n",
            "[cluster]\nadvertise_url = \"https://n.example\"\nsecret = \"0123456789abcdef0123456789abcdef\"\nttl_ms = 1500\n",
        ] {
            let refused = toml::from_str::<Config>(bad)
                .map_err(anyhow::Error::from)
                .and_then(|c| c.validate());
            assert!(refused.is_err(), "accepted {bad:?}");
        }
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
        let config: Config = toml::from_str("[recording]\nrooms = [\"a\"]\n").expect("toml");
        assert!(config.validate().is_err(), "rooms without a dir");
        let config: Config =
            toml::from_str("[recording]\ndir = \"/tmp/r\"\nrooms = [\"a b\"]\n").expect("toml");
        assert!(config.validate().is_err(), "a bad room name");
        let config: Config =
            toml::from_str("[recording]\ndir = \"/tmp/r\"\nrooms = [\"standup\"]\n").expect("toml");
        assert!(config.validate().is_ok());
        assert_eq!(config.recording.settings().rooms[0].as_str(), "standup");
    }

    fn ice_error(servers: &str) -> String {
        let config: Config = toml::from_str(&format!("[ice]\n{servers}")).expect("toml");
        match config.validate() {
            Ok(()) => String::new(),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn ice_servers_are_checked() {
        let ok = [
            "[[ice.servers]]\nurls = [\"stun:stun.example.org:3478\"]\n",
            "[[ice.servers]]\nurls = [\"turn:t.example.org?transport=tcp\", \"turns:t.example.org:443\"]\nauth_secret = \"s\"\n",
            "[[ice.servers]]\nurls = [\"turn:t.example.org\"]\nusername = \"u\"\ncredential = \"c\"\n",
        ];
        for text in ok {
            assert_eq!(ice_error(text), "", "{text}");
        }
        let bad = [
            ("[[ice.servers]]\nurls = []\n", "at least one"),
            ("[[ice.servers]]\nurls = [\"http://x\"]\n", "scheme"),
            ("[[ice.servers]]\nurls = [\"turn:x\"]\n", "TURN needs"),
            (
                "[[ice.servers]]\nurls = [\"turn:x\"]\nusername = \"u\"\n",
                "go together",
            ),
            (
                "[[ice.servers]]\nurls = [\"turn:x\"]\nauth_secret = \"s\"\nusername = \"u\"\ncredential = \"c\"\n",
                "not both",
            ),
            ("credential_ttl_secs = 0\n", "credential_ttl_secs"),
        ];
        for (text, want) in bad {
            let err = ice_error(text);
            assert!(err.contains(want), "{text}: {err:?}");
        }
        let config: Config =
            toml::from_str("[media]\nstun_discovery = \"stun.example.org:x\"\n").expect("toml");
        assert!(config.validate().is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config: Config =
            toml::from_str("[[ice.servers]]\nurls = [\"turn:x\"]\nauth_secret = \"north-wind\"\n")
                .expect("toml");
        assert!(!format!("{config:?}").contains("north-wind"));
        let secret = "north-wind-".repeat(4);
        let config: Config =
            toml::from_str(&format!("[auth]\nkeys = {{ K = \"{secret}\" }}\n")).expect("toml");
        assert!(!format!("{config:?}").contains("north-wind"));
        let config: Config =
            toml::from_str("[metrics]\nbearer_token = \"south-wind\"\n").expect("toml");
        assert!(!format!("{config:?}").contains("south-wind"));
    }

    #[test]
    fn auth_is_checked() {
        let err = |text: &str| {
            let config: Config = toml::from_str(text).expect("toml");
            config
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("[auth]\nmode = \"token\"\n").contains("at least one key"));
        assert!(err("[auth]\nkeys = { K = \"short\" }\n").contains("at least 32"));
        let good = format!(
            "[auth]\nmode = \"token\"\nkeys = {{ K = \"{}\" }}\n",
            "s".repeat(32)
        );
        assert_eq!(err(&good), "");
        assert!(toml::from_str::<Config>("[auth]\nmode = \"closed\"\n").is_err());
    }

    #[test]
    fn metrics_keys_parse_and_a_bad_token_is_an_error() {
        let config: Config =
            toml::from_str("[metrics]\nenabled = false\nbearer_token = \"s3cret\"\n")
                .expect("toml");
        assert!(!config.metrics.enabled);
        assert_eq!(config.metrics.bearer_token.as_deref(), Some("s3cret"));
        config.validate().expect("valid");
        for bad in ["\"\"", "\"two words\""] {
            let config: Config =
                toml::from_str(&format!("[metrics]\nbearer_token = {bad}\n")).expect("toml");
            let err = config.validate().expect_err(bad).to_string();
            assert!(err.contains("metrics.bearer_token"), "{err}");
        }
        assert!(toml::from_str::<Config>("[metrics]\ntoken = \"x\"\n").is_err());
    }

    #[test]
    fn webhooks_are_checked() {
        let err = |text: &str| {
            let config: Config = toml::from_str(text).expect("toml");
            config
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let secret = "s".repeat(32);
        let one = format!("[auth]\nkeys = {{ K = \"{secret}\" }}\n");
        let two = format!("[auth]\nkeys = {{ K = \"{secret}\", L = \"{secret}\" }}\n");
        let hook = "[webhooks]\nurls = [\"https://hooks.example.org/chorus\"]\n";
        assert_eq!(err(""), "", "no URL needs no key");
        assert!(err(hook).contains("no API key"), "{}", err(hook));
        assert_eq!(err(&format!("{one}{hook}")), "");
        assert!(err(&format!("{two}{hook}")).contains("several keys"));
        assert_eq!(err(&format!("{two}{hook}key = \"L\"\n")), "");
        assert!(err(&format!("{one}{hook}key = \"M\"\n")).contains("not a key"));
        assert!(err(&format!("{one}[webhooks]\nurls = [\"ftp://x\"]\n")).contains("scheme"));
        assert!(err(&format!("{one}{hook}queue = 0\n")).contains("webhooks.queue"));
        assert!(err(&format!("{one}{hook}max_attempts = 0\n")).contains("max_attempts"));
        assert!(toml::from_str::<Config>("[webhooks]\nurl = []\n").is_err());
        let config: Config = toml::from_str(&format!("{one}{hook}")).expect("toml");
        let settings = config
            .webhooks
            .settings(&config.auth)
            .expect("settings")
            .expect("some");
        assert_eq!(settings.key, "K");
        assert!(!format!("{settings:?}").contains(&secret));
    }
}
