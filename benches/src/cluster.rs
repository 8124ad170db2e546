//! `--cluster N`: a `redis-server` and N Chorus nodes on loopback, so that a room can be
//! loaded across nodes (`--max-per-node`) and the relay's cost compared with one server's.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use chorus_tests::Server;

/// The cluster secret of the load's nodes (loopback only).
const SECRET: &str = "the-load-generator-cluster-secret-32+";

/// How long the nodes may take to see each other.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

fn spare_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The started nodes and their Redis (killed when dropped).
pub(crate) struct Cluster {
    pub nodes: Vec<Server>,
    redis: Child,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.redis.kill();
        let _ = self.redis.wait();
    }
}

impl Cluster {
    /// Starts Redis and `n` nodes of `bin` with `config` (without a `[cluster]` section)
    /// and `max_per_node`; returns once every node sees all of them.
    pub async fn start(bin: &Path, config: &str, n: usize, max_per_node: usize) -> Result<Self> {
        let port = spare_port()?;
        let redis = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let mut cluster = Self {
            nodes: Vec::new(),
            redis,
        };
        chorus_tests::wait::poll_until(READY_TIMEOUT, "redis-server to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
        })
        .await?;
        for i in 0..n {
            let http: SocketAddr = format!("127.0.0.1:{}", spare_port()?).parse()?;
            let node = format!(
                "{config}[cluster]\nredis = \"redis://127.0.0.1:{port}\"\nnode_id = \"load-{i}\"\n\
                 advertise_url = \"http://{http}\"\nsecret = \"{SECRET}\"\n\
                 max_participants_per_node = {max_per_node}\n"
            );
            cluster
                .nodes
                .push(Server::start_bin_at(bin, &node, http).await?);
        }
        for node in &cluster.nodes {
            chorus_tests::wait::poll_until_async(
                READY_TIMEOUT,
                "the nodes to see each other",
                || async {
                    let (status, body) =
                        chorus_tests::harness::http_get(node.http_addr(), "/api/cluster")
                            .await
                            .ok()?;
                    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
                    (status == 200 && json["nodes"].as_array()?.len() == n).then_some(())
                },
            )
            .await?;
        }
        if cluster.nodes.is_empty() {
            bail!("--cluster needs at least one node");
        }
        Ok(cluster)
    }
}

/// The packets the nodes sent each other over their node links, from `/api/cluster`.
pub(crate) async fn link_packets(nodes: &[SocketAddr]) -> u64 {
    let mut total = 0;
    for node in nodes {
        let Ok((200, body)) = chorus_tests::harness::http_get(*node, "/api/cluster").await else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        total += json["links"].as_array().map_or(0, |links| {
            links
                .iter()
                .filter_map(|l| l["packetsOut"].as_u64())
                .sum::<u64>()
        });
    }
    total
}
