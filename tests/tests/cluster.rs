//! A cluster: a real `redis-server` and three Chorus nodes on loopback, simulated browsers
//! connecting to different nodes. Rooms are placed through Redis, joins are redirected to
//! the room's node, a dead node's rooms come back on a live one, and a Redis restart stops
//! only new placements. Build the server first: `cargo build -p chorus`. Needs
//! `redis-server` (Debian's `redis-server` package); without it every test fails.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use chorus_cluster::record::NodeRecord;
use chorus_protocol::{ErrorCode, MediaKind};
use chorus_tests::media::{expected_payload, is_vp8_keyframe, parse_tag};
use chorus_tests::{
    Client, MediaRate, PublishOptions, Server, init_tracing, redirect_url, refusal_code, wait,
};
use tokio::process::{Child, Command};

const T: Duration = Duration::from_secs(15);

/// The cluster secret of the test nodes.
const SECRET: &str = "a-cluster-test-secret-of-at-least-32-bytes";

/// How many more spare ports a node is started on when the one picked was taken.
const START_TRIES: u32 = 3;

/// A port nobody listens on right now.
fn spare_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `redis-server` on a spare loopback port, without persistence. Killed when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    async fn start() -> Result<Self> {
        let port = spare_port()?;
        let mut redis = Self { child: None, port };
        redis.restart().await?;
        Ok(redis)
    }

    /// Starts the server (again) on the same port: empty, as a restart without
    /// persistence leaves it.
    async fn restart(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        self.child = Some(child);
        let port = self.port;
        wait::poll_until(T, "redis-server to answer PING", || {
            let pong: Option<String> = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .ok()?
                .get_connection()
                .ok()
                .and_then(|mut c| redis::cmd("PING").query(&mut c).ok());
            pong
        })
        .await?;
        Ok(())
    }

    async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn connection(&self) -> Result<redis::Connection> {
        Ok(redis::Client::open(self.url())?.get_connection()?)
    }

    fn keys(&self, pattern: &str) -> Result<Vec<String>> {
        Ok(redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.connection()?)?)
    }

    fn get(&self, key: &str) -> Result<Option<String>> {
        Ok(redis::cmd("GET").arg(key).query(&mut self.connection()?)?)
    }

    fn members(&self, key: &str) -> Result<Vec<String>> {
        Ok(redis::cmd("SMEMBERS")
            .arg(key)
            .query(&mut self.connection()?)?)
    }
}

/// One Chorus node of the cluster.
struct Node {
    id: String,
    server: Server,
}

impl Node {
    /// A node must know its URL before it starts, so its HTTP port is picked first and
    /// may be taken meanwhile (by another test's outgoing connection): then it is started
    /// again on another spare port.
    async fn start(redis: &Redis, id: &str, extra: &str) -> Result<Self> {
        let mut tries = 0;
        loop {
            let http: SocketAddr = format!("127.0.0.1:{}", spare_port()?).parse()?;
            let config = format!(
                "[cluster]\nredis = \"{}\"\nnode_id = \"{id}\"\nadvertise_url = \"http://{http}\"\n\
                 secret = \"{SECRET}\"\n{extra}",
                redis.url()
            );
            match Server::start_at(http, &config).await {
                Ok(server) => {
                    return Ok(Self {
                        id: id.to_owned(),
                        server,
                    });
                }
                Err(err) if tries < START_TRIES => {
                    eprintln!("node {id} did not start on {http} ({err:#}); another port");
                    tries += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.http_addr()
    }
}

async fn start_nodes(redis: &Redis, extra: &str) -> Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        nodes.push(Node::start(redis, id, extra).await?);
    }
    // Every node has heartbeated and seen the others.
    for node in &nodes {
        wait::poll_until_async(T, "every node to see three nodes", || async {
            let (status, body) = chorus_tests::harness::http_get(node.addr(), "/api/cluster")
                .await
                .ok()?;
            let json: serde_json::Value = serde_json::from_str(&body).ok()?;
            (status == 200 && json["nodes"].as_array()?.len() == 3).then_some(())
        })
        .await?;
    }
    Ok(nodes)
}

/// `ws://127.0.0.1:P/ws` → `127.0.0.1:P`.
fn addr_of(url: &str) -> Result<SocketAddr> {
    url.strip_prefix("ws://")
        .and_then(|rest| rest.strip_suffix("/ws"))
        .ok_or_else(|| anyhow!("not a ws://host:port/ws URL: {url}"))?
        .parse()
        .with_context(|| format!("redirect URL {url}"))
}

/// Joins `room` as `name` through `entry`, following redirects as chorus.js does. Returns
/// the client and the node it joined on.
async fn join_via(entry: SocketAddr, room: &str, name: &str) -> Result<(Client, SocketAddr)> {
    join_via_with(entry, room, name, |_| {}).await
}

/// [`join_via`], with `setup` applied to each client before it joins.
async fn join_via_with(
    entry: SocketAddr,
    room: &str,
    name: &str,
    setup: fn(&Client),
) -> Result<(Client, SocketAddr)> {
    let mut addr = entry;
    for _ in 0..3 {
        let client = Client::connect(addr, name).await?;
        setup(&client);
        match client.join(room).await {
            Ok(_) => return Ok((client, addr)),
            Err(err) => match redirect_url(&err) {
                Some(url) => {
                    client.close().await;
                    addr = addr_of(&url)?;
                }
                None => return Err(err),
            },
        }
    }
    bail!("{name}: more than 3 redirects for {room}")
}

/// Rejoins `room` as `name` as chorus.js does after a failure: backs off 0.5, 1, 2, 4 s
/// through `entry`, following redirects, until `deadline` (from `since`).
async fn rejoin(
    entry: SocketAddr,
    room: &str,
    name: &str,
    since: Instant,
) -> Result<(Client, SocketAddr)> {
    let mut delay = Duration::from_millis(500);
    loop {
        tokio::time::sleep(delay).await;
        match join_via(entry, room, name).await {
            Ok(joined) => return Ok(joined),
            Err(err) => {
                tracing::info!("{name} rejoin failed: {err:#}");
                ensure!(since.elapsed() < T, "{name} could not rejoin: {err:#}");
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Checks that every packet `receiver` got from `sender`'s `kind` track is byte-identical
/// to the one sent with the same counter; returns how many there were.
fn assert_bytes_match(receiver: &Client, sender: &Client, kind: MediaKind) -> Result<usize> {
    let id = sender.id()?;
    let tracks = sender.published().context("not published")?;
    let track = match kind {
        MediaKind::Audio => tracks.audio,
        MediaKind::Video => tracks.video,
    };
    let got = receiver.received(id, track);
    let sent = sender.sent();
    ensure!(
        !got.is_empty(),
        "{} got nothing of {kind:?}",
        receiver.name()
    );
    for packet in &got {
        let tag = parse_tag(&packet.payload)
            .with_context(|| format!("untagged payload of {} bytes", packet.payload.len()))?;
        ensure!(
            tag.sender == sender.name() && tag.kind == kind,
            "foreign packet"
        );
        ensure!(packet.payload == expected_payload(&tag), "payload differs");
        let original = sent
            .iter()
            .find(|s| s.kind == kind && s.counter == tag.counter)
            .with_context(|| format!("counter {} never sent", tag.counter))?;
        ensure!(
            original.payload == packet.payload,
            "packet {} differs",
            tag.counter
        );
    }
    Ok(got.len())
}

/// The rooms a node hosts now, from its `/api/stats`.
async fn rooms_on(node: &Node) -> Result<u64> {
    Ok(node.server.stats().await?.rooms)
}

async fn cluster_status(node: &Node) -> Result<serde_json::Value> {
    let (status, body) = chorus_tests::harness::http_get(node.addr(), "/api/cluster").await?;
    ensure!(status == 200, "/api/cluster: {status} {body}");
    Ok(serde_json::from_str(&body)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_different_nodes_meet_in_one_room_and_get_each_others_media_intact()
-> Result<()> {
    init_tracing();
    let redis = Redis::start().await?;
    let nodes = start_nodes(&redis, "").await?;
    let (ada, ada_node) = join_via(nodes[0].addr(), "standup", "ada").await?;
    let (bob, bob_node) = join_via(nodes[1].addr(), "standup", "bob").await?;
    ensure!(ada_node == bob_node, "ada on {ada_node}, bob on {bob_node}");
    // The room is claimed in Redis by the node that hosts it.
    let host = nodes
        .iter()
        .find(|n| n.addr() == ada_node)
        .context("a node of ours")?;
    ensure!(redis.get("chorus:room:standup")?.as_deref() == Some(host.id.as_str()));
    let ada_tracks = ada.publish_and_stream(MediaRate::default()).await?;
    let bob_tracks = bob.publish_and_stream(MediaRate::default()).await?;
    bob.wait_for_packets(ada.id()?, ada_tracks.audio, 100, T)
        .await?;
    bob.wait_for_packets(ada.id()?, ada_tracks.video, 60, T)
        .await?;
    ada.wait_for_packets(bob.id()?, bob_tracks.audio, 100, T)
        .await?;
    ada.wait_for_packets(bob.id()?, bob_tracks.video, 60, T)
        .await?;
    for kind in [MediaKind::Audio, MediaKind::Video] {
        assert_bytes_match(&bob, &ada, kind)?;
        assert_bytes_match(&ada, &bob, kind)?;
    }
    // Every node's room list shows the room, with both participants.
    for node in &nodes {
        wait::poll_until_async(T, "the room in every node's list", || async {
            let (_, body) = chorus_tests::harness::http_get(node.addr(), "/api/rooms")
                .await
                .ok()?;
            let json: serde_json::Value = serde_json::from_str(&body).ok()?;
            (json["rooms"] == serde_json::json!([{"room": "standup", "participants": 2}]))
                .then_some(())
        })
        .await?;
    }
    // Both leave: the owner releases the room at once.
    ada.leave().await?;
    bob.leave().await?;
    wait::poll_until(T, "the room key to go", || {
        redis
            .get("chorus:room:standup")
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_rooms_spread_over_three_nodes_by_load() -> Result<()> {
    init_tracing();
    let redis = Redis::start().await?;
    let nodes = start_nodes(&redis, "").await?;
    let mut clients = Vec::new();
    for i in 0..30 {
        let entry = nodes[i % 3].addr();
        let (client, _) = join_via(entry, &format!("room-{i}"), &format!("p{i}")).await?;
        clients.push(client);
    }
    let mut per_node = HashMap::new();
    for node in &nodes {
        per_node.insert(node.id.clone(), rooms_on(node).await?);
    }
    tracing::info!(?per_node, "rooms per node");
    ensure!(
        per_node.values().sum::<u64>() == 30,
        "every room is on one node: {per_node:?}"
    );
    ensure!(
        per_node.values().all(|&n| n >= 6),
        "every node takes at least 6 of 30 rooms: {per_node:?}"
    );
    // The cluster's room list (any node's) has all 30.
    wait::poll_until_async(T, "30 rooms in the cluster's list", || async {
        let (_, body) = chorus_tests::harness::http_get(nodes[2].addr(), "/api/rooms")
            .await
            .ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        (json["rooms"].as_array()?.len() == 30).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_participants_are_back_in_a_call_within_10_s_and_redis_forgets_it()
-> Result<()> {
    init_tracing();
    let redis = Redis::start().await?;
    let nodes = start_nodes(&redis, "").await?;
    let (ada, host) = join_via(nodes[0].addr(), "standup", "ada").await?;
    let (bob, _) = join_via(nodes[1].addr(), "standup", "bob").await?;
    let ada_tracks = ada.publish_and_stream(MediaRate::default()).await?;
    bob.wait_for_packets(ada.id()?, ada_tracks.audio, 50, T)
        .await?;
    let dead = nodes
        .iter()
        .position(|n| n.addr() == host)
        .context("the host is ours")?;
    let dead_id = nodes[dead].id.clone();
    // The clients' entry is a live node, as a load balancer in front of the cluster
    // would give them after the failure.
    let entry = nodes[(dead + 1) % 3].addr();

    let killed_at = Instant::now();
    nodes[dead].server.signal("KILL")?;
    ada.wait_closed(T).await?;
    bob.wait_closed(T).await?;
    // Rejoin as chorus.js does (a redirect to the dead node fails to connect until its
    // key expires).
    let ((ada2, ada_node), (bob2, bob_node)) = tokio::try_join!(
        rejoin(entry, "standup", "ada", killed_at),
        rejoin(entry, "standup", "bob", killed_at)
    )?;
    ensure!(
        ada_node == bob_node && ada_node != host,
        "rejoined on {ada_node}/{bob_node}"
    );
    let tracks = ada2.publish_and_stream(MediaRate::default()).await?;
    bob2.wait_for_packets(ada2.id()?, tracks.audio, 10, T)
        .await?;
    let back = killed_at.elapsed();
    tracing::info!(?back, "the call is back");
    ensure!(
        back < Duration::from_secs(10),
        "the call took {back:?} to come back"
    );
    assert_bytes_match(&bob2, &ada2, MediaKind::Audio)?;
    // After its TTL (3 s) and a heartbeat of the others, Redis holds nothing of it.
    wait::poll_until(T, "no trace of the dead node in Redis", || {
        let node_key = redis.get(&format!("chorus:node:{dead_id}")).ok()?;
        let listed = redis.members("chorus:nodes").ok()?.contains(&dead_id);
        let rooms_of_dead = redis
            .keys("chorus:room:*")
            .ok()?
            .iter()
            .any(|k| redis.get(k).ok().flatten().as_deref() == Some(dead_id.as_str()));
        (node_key.is_none() && !listed && !rooms_of_dead).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_leaves_calls_going_fails_new_placements_clearly_and_recovers() -> Result<()>
{
    init_tracing();
    let mut redis = Redis::start().await?;
    let nodes = start_nodes(&redis, "placement_wait_ms = 1500\n").await?;
    let (ada, host) = join_via(nodes[0].addr(), "standup", "ada").await?;
    let (bob, _) = join_via(nodes[1].addr(), "standup", "bob").await?;
    let tracks = ada.publish_and_stream(MediaRate::default()).await?;
    bob.wait_for_packets(ada.id()?, tracks.audio, 50, T).await?;
    let host_node = nodes
        .iter()
        .find(|n| n.addr() == host)
        .context("the host is ours")?;

    redis.kill().await?;
    // The call goes on.
    let got = bob.received_count(ada.id()?, tracks.audio);
    bob.wait_for_packets(ada.id()?, tracks.audio, got + 100, T)
        .await?;
    // A join to the call's node for the call's room still works: no Redis needed.
    let cy = Client::connect(host, "cy").await?;
    cy.join("standup").await?;
    // A join that needs placement fails with a typed error after the wait.
    let other = nodes
        .iter()
        .find(|n| n.addr() != host)
        .context("another node")?;
    let late = Client::connect(other.addr(), "dee").await?;
    let refused = late
        .join("elsewhere")
        .await
        .expect_err("no placement without Redis");
    ensure!(
        refusal_code(&refused) == Some(ErrorCode::ClusterUnavailable),
        "expected clusterUnavailable, got {refused:#}"
    );
    ensure!(
        ada.is_connected() && bob.is_connected(),
        "the call was dropped"
    );

    redis.restart().await?;
    // New joins work again, and the host claims its room again in the empty Redis.
    wait::poll_until_async(T, "a placement after the restart", || async {
        join_via(other.addr(), "elsewhere", "dee")
            .await
            .ok()
            .map(drop)
    })
    .await?;
    wait::poll_until(T, "the host to claim its room again", || {
        (redis.get("chorus:room:standup").ok()?.as_deref() == Some(host_node.id.as_str()))
            .then_some(())
    })
    .await?;
    let got = bob.received_count(ada.id()?, tracks.audio);
    bob.wait_for_packets(ada.id()?, tracks.audio, got + 50, T)
        .await?;
    assert_bytes_match(&bob, &ada, MediaKind::Audio)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_record_with_a_bad_signature_is_ignored_and_counted() -> Result<()> {
    init_tracing();
    let redis = Redis::start().await?;
    let nodes = start_nodes(&redis, "").await?;
    // A record for an unknown node, signed with another secret, with no load at all: were
    // it believed, every new room would go there.
    let trap: SocketAddr = format!("127.0.0.1:{}", spare_port()?).parse()?;
    let forged = NodeRecord {
        id: "evil".into(),
        url: format!("http://{trap}"),
        draining: false,
        participants: 0,
        forwarded_pps: 0,
        cpu: 0.0,
        rooms: Default::default(),
        sent_at_ms: 0,
    }
    .sign(b"not the cluster secret, but as long as one");
    let mut conn = redis.connection()?;
    redis::cmd("SET")
        .arg("chorus:node:evil")
        .arg(&forged)
        .query::<()>(&mut conn)?;
    redis::cmd("SADD")
        .arg("chorus:nodes")
        .arg("evil")
        .query::<()>(&mut conn)?;
    // A room claimed for it, for 1.5 s: no node redirects there; a join waits for the
    // claim to expire and then places the room on a real node.
    redis::cmd("SET")
        .arg("chorus:room:trapped")
        .arg("evil")
        .arg("PX")
        .arg(1500)
        .query::<()>(&mut conn)?;
    let (_held, node) = join_via(nodes[0].addr(), "trapped", "ada").await?;
    ensure!(node != trap, "redirected to the forged node");
    let mut clients = Vec::new();
    for i in 0..6 {
        let (client, node) = join_via(nodes[i % 3].addr(), &format!("r{i}"), "bob").await?;
        ensure!(
            nodes.iter().any(|n| n.addr() == node),
            "room r{i} went to {node}"
        );
        clients.push(client);
    }
    for node in &nodes {
        let status = cluster_status(node).await?;
        ensure!(
            status["badRecords"].as_u64().unwrap_or(0) > 0,
            "{}: no bad record counted: {status}",
            node.id
        );
        let ids: Vec<&str> = status["nodes"]
            .as_array()
            .context("nodes")?
            .iter()
            .filter_map(|n| n["id"].as_str())
            .collect();
        ensure!(!ids.contains(&"evil"), "{}: lists {ids:?}", node.id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_takes_no_new_rooms_and_keeps_its_own() -> Result<()> {
    init_tracing();
    let redis = Redis::start().await?;
    let mut nodes = start_nodes(&redis, "[shutdown]\ngrace_secs = 60\n").await?;
    // Find a room that lands on node A.
    let mut on_a = None;
    let mut others = Vec::new();
    for i in 0..12 {
        let (client, node) = join_via(nodes[1].addr(), &format!("old-{i}"), "ada").await?;
        if node == nodes[0].addr() {
            on_a = Some((client, format!("old-{i}")));
            break;
        }
        others.push(client);
    }
    let (ada, room) = on_a.context("no room landed on node A in 12 tries")?;
    let tracks = ada.publish_and_stream(MediaRate::default()).await?;
    let (bob, _) = join_via(nodes[2].addr(), &room, "bob").await?;
    bob.wait_for_packets(ada.id()?, tracks.audio, 20, T).await?;

    nodes[0].server.signal("TERM")?;
    ada.wait_for(T, "draining", |m| {
        matches!(m, chorus_protocol::ServerMessage::Draining { .. })
    })
    .await?;
    wait::poll_until_async(T, "node A's record to say draining", || async {
        let status = cluster_status(&nodes[1]).await.ok()?;
        status["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["id"] == "node-a" && n["draining"] == true)
            .then_some(())
    })
    .await?;
    let before = rooms_on(&nodes[0]).await?;
    let mut new = Vec::new();
    for i in 0..9 {
        // A third of them reach node A first: it redirects them elsewhere.
        let (client, node) = join_via(nodes[i % 3].addr(), &format!("new-{i}"), "cy").await?;
        ensure!(node != nodes[0].addr(), "new-{i} went to the draining node");
        new.push(client);
    }
    ensure!(rooms_on(&nodes[0]).await? == before, "node A took a room");
    // Its call goes on.
    let got = bob.received_count(ada.id()?, tracks.audio);
    bob.wait_for_packets(ada.id()?, tracks.audio, got + 50, T)
        .await?;
    // Once its call is over it exits, and leaves nothing behind in Redis: its record and
    // claim are deleted at exit, not left to expire.
    ada.leave().await?;
    bob.leave().await?;
    let status = nodes[0].server.wait_exit(T).await?;
    ensure!(status.success(), "node A exited with {status}");
    ensure!(
        redis.get("chorus:node:node-a")?.is_none(),
        "node A's record is still in Redis"
    );
    ensure!(
        !redis
            .members("chorus:nodes")?
            .contains(&"node-a".to_owned()),
        "node A is still listed"
    );
    ensure!(
        redis.get(&format!("chorus:room:{room}"))?.is_none(),
        "node A's room is still claimed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_is_far_off_keeps_its_rooms_until_its_key_expires() -> Result<()> {
    init_tracing();
    let redis = Redis::start().await?;
    let nodes = start_nodes(&redis, "").await?;
    // A genuine node (signed with the cluster secret) whose clock says 1970, owning a room.
    // Its record and claim live 5 s in Redis, as a real node's would between heartbeats.
    let elsewhere: SocketAddr = format!("127.0.0.1:{}", spare_port()?).parse()?;
    let record = NodeRecord {
        id: "skewed".into(),
        url: format!("http://{elsewhere}"),
        draining: false,
        participants: 1,
        forwarded_pps: 0,
        cpu: 0.0,
        rooms: [("standup".to_owned(), 1)].into(),
        sent_at_ms: 0,
    }
    .sign(SECRET.as_bytes());
    let mut conn = redis.connection()?;
    redis::pipe()
        .cmd("SET")
        .arg("chorus:node:skewed")
        .arg(&record)
        .arg("PX")
        .arg(5000)
        .cmd("SADD")
        .arg("chorus:nodes")
        .arg("skewed")
        .cmd("SET")
        .arg("chorus:room:standup")
        .arg("skewed")
        .arg("PX")
        .arg(5000)
        .query::<()>(&mut conn)?;
    // While its key lives, its room is its own: every node redirects there, none takes it.
    for node in &nodes {
        let client = Client::connect(node.addr(), "ada").await?;
        let err = client.join("standup").await.expect_err("a redirect");
        ensure!(
            redirect_url(&err).as_deref() == Some(format!("ws://{elsewhere}/ws").as_str()),
            "{}: expected a redirect to the skewed node, got {err:#}",
            node.id
        );
    }
    ensure!(redis.get("chorus:room:standup")?.as_deref() == Some("skewed"));
    // Once its key expires (Redis's clock), the room is placed on a live node.
    wait::poll_until(T, "the skewed node's key to expire", || {
        redis
            .get("chorus:node:skewed")
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    let (_ada, node) = join_via(nodes[0].addr(), "standup", "ada").await?;
    ensure!(nodes.iter().any(|n| n.addr() == node), "placed on {node}");
    Ok(())
}

/// WHIP and WHEP in a cluster: a POST to a node that does not host the room is redirected
/// (`307`, RFC 9725 section 4.5) to the same endpoint on the room's node, query kept, so
/// that a broadcast publisher or player never starts a second copy of a room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_posts_are_redirected_to_the_rooms_node() -> Result<()> {
    init_tracing();
    let redis = Redis::start().await?;
    let nodes = start_nodes(&redis, "").await?;
    let (_ada, host) = join_via(nodes[0].addr(), "show", "ada").await?;
    // An offer the endpoints take a first look at (a video section): the redirect comes
    // before any peer connection would see it.
    let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\na=sendrecv\r\n";
    let others: Vec<&Node> = nodes.iter().filter(|n| n.addr() != host).collect();
    ensure!(others.len() == 2, "two nodes do not host the room");
    for node in others {
        for (path, query) in [("whip", "name=Cam%201"), ("whep", "participant=ada")] {
            let response = chorus_tests::harness::http_exchange(
                node.addr(),
                "POST",
                &format!("/{path}/show?{query}"),
                &[],
                Some(("application/sdp", offer)),
            )
            .await?;
            let wanted = format!("http://{host}/{path}/show?{query}");
            ensure!(
                response.status == 307 && response.header("location") == Some(wanted.as_str()),
                "{path} on {}: {response:?}, wanted a redirect to {wanted}",
                node.id
            );
        }
    }
    Ok(())
}

/// Node links: a node takes a link only from a live node of the cluster that proves it
/// holds the secret; anything else is refused with its reason and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_link_is_taken_only_from_a_live_node_with_the_secret() -> Result<()> {
    use chorus_cluster::link::LinkRefusal;
    use chorus_cluster::links::{self, DialError};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    init_tracing();
    let redis = Redis::start().await?;
    let nodes = start_nodes(&redis, "").await?;
    let (owner, satellite) = (&nodes[0], &nodes[1]);
    let url = format!("http://{}", owner.addr());
    let secret = SECRET.as_bytes();
    let wrong = b"not the cluster secret, but as long as one".as_slice();

    // A node id that has no record in Redis, with the right secret.
    let refused = links::dial(&url, "ghost", &owner.id, secret).await;
    ensure!(
        refused.as_ref().err() == Some(&DialError::Refused(LinkRefusal::UnknownNode)),
        "{refused:?}"
    );
    // A live node's id, with the wrong secret.
    let refused = links::dial(&url, &satellite.id, &owner.id, wrong).await;
    ensure!(
        refused.as_ref().err() == Some(&DialError::Refused(LinkRefusal::BadProof)),
        "{refused:?}"
    );
    // Dialling one node and reaching another: the satellite refuses the owner.
    let refused = links::dial(&url, &satellite.id, &nodes[2].id, secret).await;
    ensure!(
        refused.as_ref().err() == Some(&DialError::Refused(LinkRefusal::WrongNode)),
        "{refused:?}"
    );
    // Not a handshake at all.
    let (mut socket, _) = tokio_tungstenite::connect_async(links::link_url(&url)).await?;
    let challenge = socket.next().await.context("a challenge")??;
    ensure!(
        challenge.to_text()?.contains("\"challenge\""),
        "{challenge:?}"
    );
    socket.send(Message::text("{\"type\":\"welcome\"}")).await?;
    let refusal = socket.next().await.context("a refusal")??;
    ensure!(refusal.to_text()?.contains("\"malformed\""), "{refusal:?}");

    // The live node with the secret: the link is up, and listed until it closes.
    let link = links::dial(&url, &satellite.id, &owner.id, secret).await?;
    ensure!(link.ids.owner == owner.id && link.ids.satellite == satellite.id);
    let status = cluster_status(owner).await?;
    let listed = status["links"].as_array().context("links")?;
    ensure!(
        listed.len() == 1
            && listed[0]["node"] == satellite.id.as_str()
            && listed[0]["accepted"] == true,
        "{status}"
    );
    ensure!(status["linksAccepted"] == 1, "{status}");
    for reason in ["unknownNode", "badProof", "wrongNode", "malformed"] {
        ensure!(status["linksRefused"][reason] == 1, "{reason}: {status}");
    }
    drop(link);
    wait::poll_until_async(T, "the closed link to leave the list", || async {
        let status = cluster_status(owner).await.ok()?;
        (status["links"].as_array()?.is_empty()).then_some(())
    })
    .await?;
    Ok(())
}

/// A room over its node's cap (`max_participants_per_node = 4`) spreads over the three
/// nodes; everyone receives everyone byte for byte, and each track crosses each node link
/// once, whatever the number of its subscribers on the far node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_over_its_node_cap_spans_nodes_and_everyone_gets_everyone() -> Result<()> {
    init_tracing();
    let mut redis = Redis::start().await?;
    let nodes = start_nodes(&redis, "max_participants_per_node = 4\n").await?;
    let mut clients = Vec::new();
    for i in 0..10 {
        let (client, node) = join_via(nodes[i % 3].addr(), "big", &format!("p{i}")).await?;
        clients.push((client, node));
    }
    let owner_id = redis.get("chorus:room:big")?.context("the room's owner")?;
    let owner = nodes.iter().find(|n| n.id == owner_id).context("owner")?;
    let mut per_node: Vec<usize> = nodes
        .iter()
        .map(|n| clients.iter().filter(|(_, a)| *a == n.addr()).count())
        .collect();
    per_node.sort_unstable();
    ensure!(per_node == [2, 4, 4], "participants per node: {per_node:?}");
    ensure!(
        clients.iter().filter(|(_, a)| *a == owner.addr()).count() == 4,
        "the owner holds its cap"
    );
    // Light media: 20 audio and 10 video packets a second each.
    let rate = MediaRate {
        audio_interval: Duration::from_millis(50),
        video_interval: Duration::from_millis(100),
        keyframe_every: 10,
        keyframe_on_request: true,
    };
    let mut tracks = Vec::new();
    for (client, _) in &clients {
        tracks.push(client.publish_and_stream(rate).await?);
    }
    for (i, (receiver, _)) in clients.iter().enumerate() {
        for (j, (sender, _)) in clients.iter().enumerate() {
            if i == j {
                continue;
            }
            receiver
                .wait_for_packets(sender.id()?, tracks[j].audio, 20, T)
                .await
                .with_context(|| format!("p{i} hears p{j}"))?;
            receiver
                .wait_for_packets(sender.id()?, tracks[j].video, 10, T)
                .await
                .with_context(|| format!("p{i} sees p{j}"))?;
        }
    }
    for (i, (receiver, _)) in clients.iter().enumerate() {
        for (j, (sender, _)) in clients.iter().enumerate() {
            if i != j {
                for kind in [MediaKind::Audio, MediaKind::Video] {
                    assert_bytes_match(receiver, sender, kind)
                        .with_context(|| format!("p{i} from p{j}"))?;
                }
            }
        }
    }
    // Each link carries each track once: over a few seconds, what the owner sent on the
    // link to a satellite matches what the publishers elsewhere sent, not that times the
    // satellite's subscribers.
    let satellites: Vec<&Node> = nodes.iter().filter(|n| n.id != owner.id).collect();
    let sent_by = |node: &Node| -> usize {
        clients
            .iter()
            .filter(|(_, a)| *a != node.addr())
            .map(|(c, _)| c.sent().len())
            .sum()
    };
    let link_out = |status: &serde_json::Value, node: &str| -> Option<u64> {
        status["links"]
            .as_array()?
            .iter()
            .find(|l| l["node"] == node && l["accepted"] == true)?["packetsOut"]
            .as_u64()
    };
    let before_status = cluster_status(owner).await?;
    let before_sent: Vec<usize> = satellites.iter().map(|s| sent_by(s)).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_status = cluster_status(owner).await?;
    let after_sent: Vec<usize> = satellites.iter().map(|s| sent_by(s)).collect();
    for (k, satellite) in satellites.iter().enumerate() {
        let expected = (after_sent[k] - before_sent[k]) as f64;
        let crossed = (link_out(&after_status, &satellite.id).context("a link")?
            - link_out(&before_status, &satellite.id).context("a link")?)
            as f64;
        tracing::info!(satellite = %satellite.id, expected, crossed, "packets over the link");
        ensure!(
            (crossed - expected).abs() <= expected * 0.15 + 30.0,
            "owner → {}: {crossed} packets crossed for {expected} sent by the publishers \
             elsewhere: {after_status}",
            satellite.id
        );
        let link = after_status["links"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["node"] == satellite.id.as_str()))
            .context("the link")?;
        let here = clients
            .iter()
            .filter(|(_, a)| *a == satellite.addr())
            .count() as u64;
        ensure!(
            link["tracksOut"] == 2 * (10 - here) && link["tracksIn"] == 2 * here,
            "{}: {link}",
            satellite.id
        );
    }
    // A Redis restart mid-call: media goes on across the links (they never touch Redis),
    // and the owner's heartbeat names its satellites again.
    ensure!(redis.keys("chorus:satellites:big")?.len() == 1);
    redis.kill().await?;
    redis.restart().await?;
    let far = clients
        .iter()
        .position(|(_, a)| *a != owner.addr())
        .context("a participant on a satellite")?;
    let near = clients
        .iter()
        .position(|(_, a)| *a == owner.addr())
        .context("a participant on the owner")?;
    let (listener, speaker) = (&clients[near].0, &clients[far].0);
    let heard = listener.received_count(speaker.id()?, tracks[far].audio);
    listener
        .wait_for_packets(speaker.id()?, tracks[far].audio, heard + 20, T)
        .await
        .context("media across a link after the Redis restart")?;
    wait::poll_until(T, "the satellites named again", || {
        (redis.keys("chorus:satellites:big").ok()?.len() == 1).then_some(())
    })
    .await?;
    // When everyone leaves, nothing is left.
    for (client, _) in clients {
        client.leave().await?;
    }
    wait::poll_until(T, "the room and its satellites to go from Redis", || {
        (redis.get("chorus:room:big").ok()?.is_none()
            && redis.keys("chorus:satellites:*").ok()?.is_empty())
        .then_some(())
    })
    .await?;
    // and every node, satellites included, has closed its copy of the room; the owner's
    // links count nobody in it (the participants left with `leave`, not by closing)
    wait::poll_until_async(T, "the owner's links to count nobody", || async {
        let status = cluster_status(owner).await.ok()?;
        status["links"]
            .as_array()?
            .iter()
            .all(|l| l["rooms"].as_object().is_some_and(|r| r.is_empty()))
            .then_some(())
    })
    .await?;
    for node in &nodes {
        wait::poll_until_async(T, "no room left on the node", || async {
            (rooms_on(node).await.ok()? == 0).then_some(())
        })
        .await?;
    }
    Ok(())
}

/// A spanning room survives its nodes' deaths as a room on one node does: when a
/// satellite dies, only its participants drop (the others see them leave and their call
/// goes on) and they are back within 10 s on a live node; when the owner dies, the
/// satellites' participants drop with it, and everyone is back within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spanning_room_outlives_a_satellite_and_then_its_owner() -> Result<()> {
    init_tracing();
    let redis = Redis::start().await?;
    let nodes = start_nodes(&redis, "max_participants_per_node = 2\n").await?;
    let entry = nodes[0].addr();
    let (ada, owner) = join_via(entry, "span", "ada").await?;
    let (bob, _) = join_via(entry, "span", "bob").await?;
    let (cyd, satellite) = join_via(entry, "span", "cyd").await?;
    let (dan, dan_node) = join_via(entry, "span", "dan").await?;
    ensure!(
        satellite != owner && dan_node == satellite,
        "cyd and dan share a satellite"
    );
    let rate = MediaRate {
        audio_interval: Duration::from_millis(50),
        ..MediaRate::default()
    };
    let ada_tracks = ada.publish_and_stream(rate).await?;
    let cyd_tracks = cyd.publish_and_stream(rate).await?;
    bob.wait_for_packets(cyd.id()?, cyd_tracks.audio, 20, T)
        .await?;
    dan.wait_for_packets(ada.id()?, ada_tracks.audio, 20, T)
        .await?;

    // The satellite dies.
    let node_of = |addr: SocketAddr| nodes.iter().position(|n| n.addr() == addr);
    let sat = node_of(satellite).context("the satellite is ours")?;
    let killed_at = Instant::now();
    nodes[sat].server.signal("KILL")?;
    cyd.wait_closed(T).await?;
    dan.wait_closed(T).await?;
    bob.wait_for_left(cyd.id()?).await?;
    bob.wait_for_left(dan.id()?).await?;
    let before = bob.received_count(ada.id()?, ada_tracks.audio);
    bob.wait_for_packets(ada.id()?, ada_tracks.audio, before + 20, T)
        .await
        .context("the owner's call goes on")?;
    let (cyd2, cyd_node) = rejoin(entry, "span", "cyd", killed_at).await?;
    let (dan2, _) = rejoin(entry, "span", "dan", killed_at).await?;
    ensure!(
        cyd_node != satellite && cyd_node != owner,
        "cyd back on {cyd_node}"
    );
    let cyd2_tracks = cyd2.publish_and_stream(rate).await?;
    bob.wait_for_packets(cyd2.id()?, cyd2_tracks.audio, 10, T)
        .await?;
    dan2.wait_for_packets(ada.id()?, ada_tracks.audio, 10, T)
        .await?;
    let back = killed_at.elapsed();
    tracing::info!(?back, "a satellite's participants are back");
    ensure!(back < Duration::from_secs(10), "{back:?} to come back");
    assert_bytes_match(&bob, &cyd2, MediaKind::Audio)?;

    // The owner dies: its participants and the satellite's all drop, and all come back.
    let entry = nodes[node_of(cyd_node).context("ours")?].addr();
    let killed_at = Instant::now();
    nodes[node_of(owner).context("the owner is ours")?]
        .server
        .signal("KILL")?;
    for client in [&ada, &bob, &cyd2, &dan2] {
        client.wait_closed(T).await?;
    }
    let (ada3, bob3) = tokio::try_join!(
        rejoin(entry, "span", "ada", killed_at),
        rejoin(entry, "span", "bob", killed_at)
    )?;
    let (ada3, bob3) = (ada3.0, bob3.0);
    let tracks = ada3.publish_and_stream(rate).await?;
    bob3.wait_for_packets(ada3.id()?, tracks.audio, 10, T)
        .await?;
    let back = killed_at.elapsed();
    tracing::info!(?back, "the owner's room is back");
    ensure!(back < Duration::from_secs(10), "{back:?} to come back");
    Ok(())
}

/// Across a node link, a keyframe request from a satellite's subscriber reaches the
/// publisher on the owner (and its keyframe comes back), and a NACK is answered on the
/// subscriber's node from its mirror's history, not by the publisher's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframe_requests_cross_a_node_link_and_nacks_are_answered_on_the_subscribers_node()
-> Result<()> {
    init_tracing();
    let redis = Redis::start().await?;
    let nodes = start_nodes(&redis, "max_participants_per_node = 1\n").await?;
    let (ada, owner) = join_via(nodes[0].addr(), "pli", "ada").await?;
    let (bob, satellite) = join_via(nodes[0].addr(), "pli", "bob").await?;
    ensure!(owner != satellite, "bob is on a satellite");
    let tracks = ada.publish_and_stream(MediaRate::default()).await?;
    bob.wait_for_packets(ada.id()?, tracks.video, 30, T).await?;
    let (_, video_ssrc) = ada.published_ssrcs().context("ssrcs")?;
    wait::poll_until(T, "keyframe requests to go quiet", || {
        let last = ada.keyframe_requests().last().map(|r| r.at);
        last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
            .then_some(())
    })
    .await?;
    let before = ada.keyframe_requests().len();
    let asked = Instant::now();
    bob.send_pli(ada.id()?, tracks.video).await?;
    wait::poll_until(T, "bob's PLI at ada, across the link", || {
        (ada.keyframe_requests().len() > before).then_some(())
    })
    .await?;
    ensure!(ada.keyframe_requests()[before].media_ssrc == video_ssrc);
    wait::poll_until(T, "ada's keyframe at bob", || {
        bob.received(ada.id().ok()?, tracks.video)
            .iter()
            .any(|p| p.at > asked && is_vp8_keyframe(&p.payload))
            .then_some(())
    })
    .await?;

    // NACK three packets bob has: his node resends them from its mirror (his SRTP drops
    // the second copies, as a browser's would); the owner resends nothing.
    let retransmitted = async |addr: SocketAddr| -> Result<u64> {
        let (_, body) = chorus_tests::harness::http_get(addr, "/api/stats").await?;
        let stats: serde_json::Value = serde_json::from_str(&body)?;
        stats["retransmitted"].as_u64().context("retransmitted")
    };
    let owner_before = retransmitted(owner).await?;
    let satellite_before = retransmitted(satellite).await?;
    let got = bob.received(ada.id()?, tracks.video);
    let seqs: Vec<u16> = got
        .iter()
        .rev()
        .take(3)
        .map(|p| p.sequence_number)
        .collect();
    bob.send_nack(ada.id()?, tracks.video, &seqs).await?;
    wait::poll_until_async(T, "the satellite to resend the NACKed packets", || async {
        let now = retransmitted(satellite).await.ok()?;
        (now >= satellite_before + 3).then_some(())
    })
    .await?;
    let owner_after = retransmitted(owner).await?;
    ensure!(
        owner_after == owner_before,
        "the owner resent {} packets",
        owner_after - owner_before
    );
    Ok(())
}

/// The layers a satellite's subscriber needs reach the publisher on the owner (dynacast
/// across a node link): a small tile there stops the top layers, a large one brings them
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_satellite_subscribers_tile_decides_the_owners_publisher_layers() -> Result<()> {
    init_tracing();
    let redis = Redis::start().await?;
    let nodes = start_nodes(&redis, "max_participants_per_node = 1\n").await?;
    let (ada, owner) = join_via(nodes[0].addr(), "tiles", "ada").await?;
    let tracks = ada.publish_with(PublishOptions::simulcast()).await?;
    ada.start_media(MediaRate::default())?;
    let (bob, satellite) = join_via_with(
        nodes[0].addr(),
        "tiles",
        "bob",
        Client::without_downlink_estimate,
    )
    .await?;
    ensure!(owner != satellite, "bob is on a satellite");
    let video = tracks.video;
    bob.wait_for_packets(ada.id()?, video, 20, T).await?;
    bob.track_settings(video, true, 160, 90)?;
    wait::poll_until(T, "publishLayers [q] at ada", || {
        (ada.latest_publish_layers(video)? == ["q"]).then_some(())
    })
    .await
    .with_context(|| format!("ada's layers: {:?}", ada.latest_publish_layers(video)))?;
    bob.track_settings(video, true, 1280, 720)?;
    wait::poll_until(T, "publishLayers with f at ada", || {
        ada.latest_publish_layers(video)?
            .iter()
            .any(|r| r == "f")
            .then_some(())
    })
    .await
    .with_context(|| format!("ada's layers: {:?}", ada.latest_publish_layers(video)))?;
    Ok(())
}

/// A node link that goes silent (here the owner hangs: SIGSTOP, its sockets open) is
/// closed by the satellite within seconds: the satellite's participants' sessions close,
/// so that their clients rejoin through placement, as after a node's death.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_satellite_closes_a_silent_link_and_its_sessions() -> Result<()> {
    init_tracing();
    let redis = Redis::start().await?;
    let nodes = start_nodes(&redis, "max_participants_per_node = 1\n").await?;
    let (_ada, owner) = join_via(nodes[0].addr(), "hang", "ada").await?;
    let (bob, satellite) = join_via(nodes[0].addr(), "hang", "bob").await?;
    ensure!(owner != satellite, "bob is on a satellite");
    let hung = nodes
        .iter()
        .find(|n| n.addr() == owner)
        .context("the owner is ours")?;
    let sat = nodes
        .iter()
        .find(|n| n.addr() == satellite)
        .context("the satellite is ours")?;
    hung.server.signal("STOP")?;
    let stopped = Instant::now();
    let closed = bob.wait_closed(T).await;
    let after = stopped.elapsed();
    hung.server.signal("CONT")?;
    closed?;
    tracing::info!(?after, "bob's session closed");
    ensure!(after < Duration::from_secs(10), "{after:?} to close");
    let status = cluster_status(sat).await?;
    ensure!(
        status["links"].as_array().is_some_and(Vec::is_empty),
        "the satellite dropped its link: {status}"
    );
    Ok(())
}
