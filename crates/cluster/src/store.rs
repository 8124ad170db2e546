//! The Redis side: the keys, their TTLs and the small Lua scripts that make every claim and
//! release atomic. Nothing here decides anything (see `placement.rs`); it reads and writes.
//!
//! | key | value | TTL | written by |
//! |---|---|---|---|
//! | `chorus:node:{id}` | the node's signed record (`record.rs`) | `ttl`, set at every heartbeat | that node |
//! | `chorus:nodes` | set of node ids, to find the node keys without a scan | none; ids whose key is gone are removed by every node's heartbeat | every node |
//! | `chorus:room:{room}` | the owner's node id | `ttl`, refreshed at every heartbeat by the owner only | the placing node (claim), the owner (refresh, release) |
//! | `chorus:satellites:{room}` | hash: node id → the room's participants there, for the nodes the owner placed some of a full room's participants on | `ttl`, renewed by the owner's heartbeat | the owner only |

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

/// The set of node ids.
pub const NODES_KEY: &str = "chorus:nodes";

/// The key of a node's record.
pub fn node_key(id: &str) -> String {
    format!("chorus:node:{id}")
}

/// The key listing a room's satellites.
pub fn satellites_key(room: &str) -> String {
    format!("chorus:satellites:{room}")
}

/// The key naming a room's owner.
pub fn room_key(room: &str) -> String {
    format!("chorus:room:{room}")
}

/// Claims a room for ARGV[1] with TTL ARGV[2] ms if it has no owner, or if its owner is
/// ARGV[3] (the stale owner the caller saw) and either that is the caller itself (ARGV[4],
/// a draining node handing its claim on) or the stale owner's node key (KEYS[2]) no longer
/// exists. Returns the owner after the call: ARGV[1] when the claim won.
const CLAIM: &str = r"
local cur = redis.call('GET', KEYS[1])
if (not cur) or (ARGV[3] ~= '' and cur == ARGV[3] and (cur == ARGV[4] or redis.call('EXISTS', KEYS[2]) == 0)) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return cur
";

/// The owner's heartbeat for its rooms (KEYS): each that names ARGV[1] gets its TTL
/// (ARGV[2] ms) renewed; each that does not exist (expired, or Redis lost its data) is
/// claimed again. Returns the keys some other node owns (a conflict: two nodes host the
/// room; see docs/cluster.md).
const REFRESH: &str = r"
local conflicts = {}
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  if cur == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  elseif not cur then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  else
    table.insert(conflicts, key)
  end
end
return conflicts
";

/// Removes each id (ARGV[i]) whose node key (KEYS[i + 1]) no longer exists from the node
/// set (KEYS[1]). Checked inside Redis: a node that wrote its record again since the caller
/// read the set stays listed.
const FORGET: &str = r"
for i, id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    redis.call('SREM', KEYS[1], id)
  end
end
return 0
";

/// Compare and delete: removes each room key (KEYS[2i - 1]), and its satellites
/// (KEYS[2i]), only while the room key names ARGV[1].
const RELEASE: &str = r"
local n = 0
for i = 1, #KEYS, 2 do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i], KEYS[i + 1])
    n = n + 1
  end
end
return n
";

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Writes this node's record and lists it.
pub async fn heartbeat(
    redis: &mut ConnectionManager,
    id: &str,
    signed: &str,
    ttl: Duration,
) -> redis::RedisResult<()> {
    redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(node_key(id))
        .arg(signed)
        .arg("PX")
        .arg(millis(ttl))
        .ignore()
        .cmd("SADD")
        .arg(NODES_KEY)
        .arg(id)
        .ignore()
        .query_async::<()>(redis)
        .await
}

/// Every listed node id with its stored record (None when the key is gone).
pub async fn nodes(
    redis: &mut ConnectionManager,
) -> redis::RedisResult<Vec<(String, Option<String>)>> {
    let ids: Vec<String> = redis.smembers(NODES_KEY).await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| node_key(id)).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(redis).await?;
    Ok(ids.into_iter().zip(values).collect())
}

/// Removes ids whose node key has expired from the node set.
pub async fn forget_nodes(redis: &mut ConnectionManager, ids: &[String]) -> redis::RedisResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let script = Script::new(FORGET);
    let mut script = script.prepare_invoke();
    script.key(NODES_KEY);
    for id in ids {
        script.key(node_key(id)).arg(id);
    }
    script.invoke_async::<i64>(redis).await.map(drop)
}

/// One node's stored record, if its key exists.
pub async fn node(redis: &mut ConnectionManager, id: &str) -> redis::RedisResult<Option<String>> {
    redis.get(node_key(id)).await
}

/// The room's owner, if any.
pub async fn owner(
    redis: &mut ConnectionManager,
    room: &str,
) -> redis::RedisResult<Option<String>> {
    redis.get(room_key(room)).await
}

/// Runs [`CLAIM`]; returns the owner after the call.
pub async fn claim(
    redis: &mut ConnectionManager,
    room: &str,
    for_node: &str,
    stale: Option<&str>,
    me: &str,
    ttl: Duration,
) -> redis::RedisResult<String> {
    let stale = stale.unwrap_or("");
    Script::new(CLAIM)
        .key(room_key(room))
        .key(node_key(if stale.is_empty() { "-" } else { stale }))
        .arg(for_node)
        .arg(millis(ttl))
        .arg(stale)
        .arg(me)
        .invoke_async(redis)
        .await
}

/// Runs [`REFRESH`] for `rooms`; returns the rooms another node owns.
pub async fn refresh(
    redis: &mut ConnectionManager,
    rooms: &[String],
    me: &str,
    ttl: Duration,
) -> redis::RedisResult<Vec<String>> {
    if rooms.is_empty() {
        return Ok(Vec::new());
    }
    let script = Script::new(REFRESH);
    let mut script = script.prepare_invoke();
    for room in rooms {
        script.key(room_key(room));
    }
    let conflicts: Vec<String> = script.arg(me).arg(millis(ttl)).invoke_async(redis).await?;
    Ok(conflicts
        .into_iter()
        .map(|key| key.trim_start_matches("chorus:room:").to_owned())
        .collect())
}

/// Runs [`RELEASE`] for `rooms`.
pub async fn release(
    redis: &mut ConnectionManager,
    rooms: &[String],
    me: &str,
) -> redis::RedisResult<()> {
    if rooms.is_empty() {
        return Ok(());
    }
    let script = Script::new(RELEASE);
    let mut script = script.prepare_invoke();
    for room in rooms {
        script.key(room_key(room)).key(satellites_key(room));
    }
    script.arg(me).invoke_async::<i64>(redis).await.map(drop)
}

/// Names `node` a satellite of `room` (the owner's decision), renewing the list's TTL.
pub async fn add_satellite(
    redis: &mut ConnectionManager,
    room: &str,
    node: &str,
    ttl: Duration,
) -> redis::RedisResult<()> {
    let key = satellites_key(room);
    redis::pipe()
        .atomic()
        .hset(&key, node, 0)
        .ignore()
        .pexpire(&key, i64::try_from(millis(ttl)).unwrap_or(i64::MAX))
        .ignore()
        .query_async::<()>(redis)
        .await
}

/// The owner's heartbeat for its rooms' satellites: each one's participant count, and
/// the lists' TTL renewed.
pub async fn renew_satellites(
    redis: &mut ConnectionManager,
    rooms: &[(String, Vec<(String, usize)>)],
    ttl: Duration,
) -> redis::RedisResult<()> {
    if rooms.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (room, satellites) in rooms {
        let key = satellites_key(room);
        for (node, count) in satellites {
            pipe.hset(&key, node, *count).ignore();
        }
        pipe.pexpire(&key, i64::try_from(millis(ttl)).unwrap_or(i64::MAX))
            .ignore();
    }
    pipe.query_async::<()>(redis).await
}

/// Whether the owner of `room` named `node` one of its satellites.
pub async fn is_satellite(
    redis: &mut ConnectionManager,
    room: &str,
    node: &str,
) -> redis::RedisResult<bool> {
    redis.hexists(satellites_key(room), node).await
}

/// Removes this node from Redis: its record and its entry in the node set.
pub async fn leave(redis: &mut ConnectionManager, id: &str) -> redis::RedisResult<()> {
    redis::pipe()
        .del(node_key(id))
        .ignore()
        .srem(NODES_KEY, id)
        .ignore()
        .query_async::<()>(redis)
        .await
}
