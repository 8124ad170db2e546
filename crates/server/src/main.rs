//! The `chorus` binary: reads the config, binds the HTTP and media sockets, runs until
//! SIGINT or SIGTERM, and tells every participant before it goes.

mod doctor;
mod drain;
mod http_serve;
mod token;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use chorus::stun_client;
use chorus::turn::TurnAuth;
use chorus::webhook::Webhooks;
use chorus_protocol::{IceServer, ParticipantId};
use chorus_sfu::room::RoomLimits;
use chorus_sfu::{Hub, HubConfig, PeerSettings};
use chorus_signal::{AuthMode, IpLimitSettings, MetricsSettings, SessionLimits, SignalConfig};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use chorus::config::Config;

/// The default log filter: our crates at info, webrtc-rs quiet unless something breaks.
const DEFAULT_LOG: &str = "info,rtc=error,rtc_dtls=error,rtc_ice=error,rtc_srtp=error,\
rtc_interceptor=error,rtc_sctp=error,rtc_rtp=error,rtc_rtcp=error";

/// At shutdown, how long queued webhooks (the rooms' last events among them) may take.
const WEBHOOK_DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    name = "chorus",
    version,
    about = "A self-hostable SFU for multi-party video calls"
)]
struct Cli {
    /// The config file.
    #[arg(long, global = true, default_value = "config/chorus.toml")]
    config: PathBuf,
    /// HTTP address for the web app and the signaling WebSocket (overrides http.listen).
    #[arg(long, global = true)]
    http: Option<SocketAddr>,
    /// Media UDP address (overrides media.udp_listen).
    #[arg(long, global = true)]
    udp: Option<SocketAddr>,
    /// ICE-TCP address (overrides media.tcp_listen).
    #[arg(long, global = true)]
    tcp: Option<SocketAddr>,
    /// Public IPs to announce, comma-separated (overrides media.announced_ips).
    #[arg(long, global = true, value_delimiter = ',')]
    announce: Option<Vec<IpAddr>>,
    /// Folder of the web app (overrides http.frontend_dir).
    #[arg(long, global = true)]
    frontend: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check this machine and config for self-hosting: ports, announced IPs, STUN and
    /// TURN servers (a real allocation). Prints OK/FAIL per check; exits 1 on any FAIL.
    Doctor,
    /// Print a join token (a JWT signed with an API secret from the config's auth.keys)
    /// for an invite link: `http://host:8080/?room=R&token=...`.
    Token(token::TokenArgs),
    /// Drain the running server (the one at http.listen): it takes no new joins, tells
    /// everyone, waits up to shutdown.grace_secs for the rooms to empty, then stops.
    /// Signs in to the admin API with an API key of the config.
    Drain {
        /// The API key to sign in with; needed when auth.keys has more than one.
        #[arg(long)]
        key: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let explicit = std::env::args_os()
        .any(|a| a == "--config" || a.to_string_lossy().starts_with("--config="));
    let doctor = matches!(cli.command, Some(Command::Doctor));
    let mut config = match Config::load(&cli.config, explicit) {
        Ok(config) => config,
        Err(err) if doctor => std::process::exit(doctor::config_failed(&cli.config, &err)),
        Err(err) => return Err(err),
    };
    if let Some(http) = cli.http {
        config.http.listen = http;
    }
    if let Some(udp) = cli.udp {
        config.media.udp_listen = udp;
    }
    if let Some(tcp) = cli.tcp {
        config.media.tcp_listen = Some(tcp);
    }
    if let Some(ips) = cli.announce {
        config.media.announced_ips = ips;
    }
    if let Some(dir) = cli.frontend {
        config.http.frontend_dir = dir;
    }
    if doctor {
        std::process::exit(doctor::run(&cli.config, &config));
    }
    if let Some(Command::Token(args)) = &cli.command {
        println!("{}", token::mint(&config.auth.auth(), args)?);
        return Ok(());
    }
    if let Some(Command::Drain { key }) = &cli.command {
        let answer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?
            .block_on(drain::request(
                config.http.listen,
                &config.auth.auth(),
                key.as_deref(),
            ))?;
        println!("draining: {answer}");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(serve(config))
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    let workers = config.media.worker_count();
    let udp = chorus_sfu::net::bind_udp_shared(config.media.udp_listen, workers > 1)
        .with_context(|| format!("binding media UDP {}", config.media.udp_listen))?;
    let udp_addr = udp.local_addr()?;
    // Before the other workers' sockets join the port: the answer comes back to this one.
    if let Some(ip) = discover_public_ip(&config, &udp).await
        && !config.media.announced_ips.contains(&ip)
    {
        config.media.announced_ips.push(ip);
    }
    let mut sockets = vec![udp];
    sockets.extend(
        chorus_sfu::net::bind_udp_more(&sockets[0], workers - 1)
            .with_context(|| format!("binding {workers} media sockets on {udp_addr}"))?,
    );
    match chorus_sfu::net::receive_buffer_bytes(&sockets[0]) {
        Ok(bytes) if bytes < chorus_sfu::net::SOCKET_BUFFER_BYTES => tracing::warn!(
            bytes,
            wanted = chorus_sfu::net::SOCKET_BUFFER_BYTES,
            "the media socket's receive buffer is small and bursts may be lost; run as root \
             or raise net.core.rmem_max"
        ),
        _ => {}
    }
    let candidates = chorus_sfu::net::host_candidates(udp_addr, &config.media.announced_ips);
    let (tcp, tcp_candidates) = if config.media.ice_tcp {
        let tcp_listen = config.media.tcp_listen.unwrap_or(config.media.udp_listen);
        let listener = tokio::net::TcpListener::bind(tcp_listen)
            .await
            .with_context(|| format!("binding ICE-TCP {tcp_listen}"))?;
        let addr = listener.local_addr()?;
        let candidates = chorus_sfu::net::host_candidates(addr, &config.media.announced_ips);
        (Some(listener), candidates)
    } else {
        (None, Vec::new())
    };
    let tcp_addr = match &tcp {
        Some(listener) => listener.local_addr()?.to_string(),
        None => "off".to_owned(),
    };
    tracing::info!(?candidates, ?tcp_candidates, "announcing host candidates");
    tracing::info!(workers, %udp_addr, "media workers");
    // In a cluster, ids start at a random point so that a room spanning nodes never sees
    // one id twice (see `cluster_id_base`).
    let first_id = if config.cluster.is_some() {
        chorus_sfu::hub::cluster_id_base()
    } else {
        1
    };
    let workers = chorus_sfu::worker::spawn(
        sockets,
        tcp,
        &PeerSettings {
            candidates,
            tcp_candidates,
            srtp_profiles: config.media.srtp_profiles.clone(),
            audio: config.audio.options(),
        },
        &Arc::new(AtomicU64::new(first_id)),
    )
    .context("starting the media workers")?;
    let ttl = Duration::from_secs(config.ice.credential_ttl_secs);
    let ice_servers: Vec<(Vec<String>, TurnAuth)> = config
        .ice
        .servers
        .iter()
        .map(|s| (s.urls.clone(), s.auth(ttl)))
        .collect();
    // Generated credentials are per participant and fresh at each join.
    let ice_servers = move |participant: ParticipantId| {
        let now = SystemTime::now();
        ice_servers
            .iter()
            .map(|(urls, auth)| {
                let (username, credential) =
                    auth.credentials(&participant.to_string(), now).unzip();
                IceServer {
                    urls: urls.clone(),
                    username,
                    credential,
                }
            })
            .collect::<Vec<IceServer>>()
    };
    // Room events go to the webhook sender when webhooks are configured.
    let (events, webhooks) = match config.webhooks.settings(&config.auth)? {
        Some(settings) => {
            tracing::info!(urls = config.webhooks.urls.len(), key = %settings.key, "webhooks on");
            let (webhooks, tx) = Webhooks::spawn(settings, chorus_sfu::events::EVENT_QUEUE)
                .context("starting webhooks")?;
            (Some(tx), Some(webhooks))
        }
        None => (None, None),
    };
    let hub = Hub::new(
        workers,
        HubConfig {
            limits: RoomLimits {
                max_participants: config.limits.max_participants_per_room,
                chat_history: config.limits.chat_history,
                max_chat_chars: config.limits.max_chat_chars,
                max_tracks_per_participant: config.limits.max_tracks_per_participant,
                max_subscriptions_per_participant: config.limits.max_subscriptions_per_participant,
            },
            max_rooms: config.limits.max_rooms,
            max_name_chars: config.limits.max_name_chars,
            ice_servers: Arc::new(ice_servers),
            events,
            speakers: config.audio.speakers(),
            recording: config.recording.settings(),
            spread_room_after: config.media.spread_room_after,
            first_id,
        },
    );
    // Set by the admin API's `POST /api/v1/drain`; SIGTERM does the same.
    let drain = Arc::new(tokio::sync::Notify::new());
    // One node of a cluster (docs/cluster.md); without `[cluster]` no Redis code runs.
    let cluster = match &config.cluster {
        Some(cluster_config) => {
            let settings = cluster_config.settings();
            tracing::info!(
                node = %settings.node_id,
                url = %settings.advertise_url,
                "cluster node (Redis at {})",
                redact_redis(&settings.redis_url)
            );
            Some(
                chorus_cluster::Cluster::start(settings, hub.clone())
                    .context("joining the cluster")?,
            )
        }
        None => None,
    };
    let app = chorus_signal::router(
        hub.clone(),
        SignalConfig {
            limits: SessionLimits {
                max_message_bytes: config.limits.max_message_bytes,
                join_timeout: Duration::from_secs(config.limits.join_timeout_secs),
                ping_interval: Duration::from_secs(config.limits.ws_ping_interval_secs),
                idle_timeout: Duration::from_secs(config.limits.ws_idle_timeout_secs),
                max_messages_per_second: config.limits.max_messages_per_second,
                max_sdp_bytes: config.limits.max_sdp_bytes,
                max_candidates_per_peer: config.limits.max_candidates_per_peer,
            },
            frontend_dir: config.http.frontend_dir.clone(),
            auth: Arc::new(config.auth.auth()),
            drain: drain.clone(),
            allowed_origins: config.http.allowed_origins.clone(),
            ip_limits: IpLimitSettings {
                max_connections: config.limits.max_connections_per_ip,
                max_joins_per_minute: config.limits.max_joins_per_ip_per_minute,
                trusted_proxies: config.http.trusted_proxies.clone(),
            },
            metrics: MetricsSettings {
                enabled: config.metrics.enabled,
                bearer_token: config.metrics.bearer_token.clone(),
            },
            cluster: cluster.clone(),
        },
    );
    let grace = Duration::from_secs(config.shutdown.grace_secs);
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    if config.auth.mode == AuthMode::Open && !http_addr.ip().is_loopback() {
        tracing::warn!(
            "auth.mode is \"open\" on {http_addr}: anyone who reaches this address can join \
             any room and publish. Set auth.mode = \"token\" for a server others can reach \
             (see the README's \"Secure your server\")"
        );
    }
    tracing::info!("serving http://{http_addr} (media on udp {udp_addr}, ICE-TCP {tcp_addr})");
    // One machine-readable line on stdout, for scripts and tests started on port 0.
    println!("chorus ready http={http_addr} udp={udp_addr} tcp={tcp_addr}");
    let header_read_timeout = Duration::from_secs(config.http.header_read_timeout_secs);
    http_serve::serve(listener, app, header_read_timeout, async move {
        tokio::select! {
            () = shutdown_signal() => tracing::info!("signal: draining"),
            () = drain.notified() => tracing::info!("admin API: draining"),
        }
        // A draining node takes no new rooms: its heartbeat says so now.
        if let Some(cluster) = &cluster {
            cluster.set_draining();
        }
        // A second signal ends the process at once.
        tokio::spawn(async {
            shutdown_signal().await;
            tracing::warn!("second signal: exiting now");
            std::process::exit(1);
        });
        if hub.drain(grace).await {
            tracing::info!("every room emptied");
        } else {
            tracing::info!("drain grace of {grace:?} is over; ending the remaining calls");
        }
        hub.shutdown().await;
        if let Some(cluster) = &cluster {
            cluster.leave().await;
        }
    })
    .await;
    if let Some(webhooks) = webhooks
        && !webhooks.drain(WEBHOOK_DRAIN).await
    {
        tracing::warn!(
            pending = webhooks.stats().snapshot().pending,
            "stopping with webhooks still undelivered"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// Asks `media.stun_discovery` (if set), from the media socket itself, for this server's
/// public address. Failure is logged and start-up goes on with the configured IPs.
async fn discover_public_ip(config: &Config, udp: &tokio::net::UdpSocket) -> Option<IpAddr> {
    let url = match config.media.stun_discovery_url()? {
        Ok(url) => url,
        Err(err) => {
            tracing::warn!("STUN discovery: {err}");
            return None;
        }
    };
    let server = format!("{}:{}", url.host, url.port);
    let result = match tokio::net::lookup_host(server.as_str()).await {
        Ok(mut addrs) => match addrs.find(|a| a.is_ipv4() == udp_is_ipv4(udp)) {
            Some(addr) => stun_client::binding_async(udp, addr, Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string()),
            None => Err("no address of the same IP family as the media socket".into()),
        },
        Err(err) => Err(format!("resolving: {err}")),
    };
    match result {
        Ok(public) => {
            tracing::info!(
                "STUN discovery: {server} sees the media socket as {public}; announcing {}",
                public.ip()
            );
            Some(public.ip())
        }
        Err(err) => {
            tracing::warn!(
                "STUN discovery via {server} failed ({err}); announcing only {:?} (or the \
                 interface addresses when that is empty)",
                config.media.announced_ips
            );
            None
        }
    }
}

/// A Redis URL without its password, for the log.
fn redact_redis(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn udp_is_ipv4(udp: &tokio::net::UdpSocket) -> bool {
    udp.local_addr().map(|a| a.is_ipv4()).unwrap_or(true)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!(%err, "no SIGTERM handler");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
