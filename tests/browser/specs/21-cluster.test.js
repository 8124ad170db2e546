// A cluster of Chorus nodes sharing a real redis-server: two pages that open different
// nodes' URLs for one room end up on the room's node (one of them follows a `redirect`)
// and see and hear each other; they rejoin when that node dies; and a room over its
// node's cap spans two nodes, the pages seeing and hearing each other through the node
// link. Needs redis-server (Debian's package).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { startServer, launchBrowser, openPage, callUrl, waitJoined, waitMedia, reportFailure, poll, COLORS } from '../lib/harness.js';

const SECRET = 'a-browser-cluster-secret-of-at-least-32-bytes';

/** A loopback TCP port nobody listens on now. */
function sparePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** redis-server on a spare port, without persistence; resolves once it listens. */
async function startRedis() {
  const port = await sparePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d) => { out += d; });
  const failed = new Promise((_, reject) => {
    child.on('error', (err) => reject(new Error(`redis-server did not start (apt-get install redis-server): ${err.message}`)));
    child.on('exit', (code) => reject(new Error(`redis-server exited (${code}): ${out.slice(-2000)}`)));
  });
  await Promise.race([poll(() => /Ready to accept connections/.test(out), { message: 'redis-server to be ready' }), failed]);
  failed.catch(() => {});
  return { port, stop: () => child.kill('SIGKILL') };
}

/** Runs one redis-cli command against `redis`; returns its output. */
function redisCli(redis, ...args) {
  const r = spawnSync('redis-cli', ['-p', String(redis.port), ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`redis-cli ${args.join(' ')}: ${r.stderr || r.error}`);
  return r.stdout.trim();
}

async function startNode(redis, id, clusterKeys = '') {
  const port = await sparePort();
  const config = `[cluster]\nredis = "redis://127.0.0.1:${redis.port}"\nnode_id = "${id}"\n`
    + `advertise_url = "http://127.0.0.1:${port}"\nsecret = "${SECRET}"\n${clusterKeys}`
    + '[shutdown]\ngrace_secs = 1\n';
  return startServer({ config, name: id, port });
}

/**
 * Starts redis-server and the nodes `ids` (each with the `[cluster]` keys `clusterKeys`),
 * waits until every node sees all of them, launches Chromium and runs `body`; a failure is
 * reported with every node's log, and everything is stopped after.
 */
async function inCluster(t, ids, clusterKeys, body) {
  const redis = await startRedis();
  const nodes = [];
  let browser;
  try {
    for (const id of ids) nodes.push(await startNode(redis, id, clusterKeys));
    for (const node of nodes) {
      await poll(async () => {
        const r = await fetch(`${node.url}/api/cluster`);
        return r.ok && (await r.json()).nodes.length === ids.length;
      }, { message: `${node.name} to see ${ids.length} nodes` });
    }
    browser = await launchBrowser();
    await body({ redis, nodes, browser });
  } catch (err) {
    const combined = { stderr: () => nodes.map((n) => `=== ${n.name}\n${n.stderr().slice(-20000)}`).join('\n') };
    await reportFailure(t, err, { server: combined, pages: browser?.pages ?? [] });
    throw err;
  } finally {
    await browser?.close();
    for (const node of nodes) await node.stop();
    redis.stop();
  }
}

test('two pages that open different nodes for one room see and hear each other', { timeout: 120000 }, (t) => inCluster(t, ['node-a', 'node-b'], '', async ({ nodes, browser }) => {
  const a = await openPage(browser, callUrl(nodes[0], 'cluster', 'Ada'), { color: COLORS.red, label: 'Ada' });
  const idA = await waitJoined(a);
  const b = await openPage(browser, callUrl(nodes[1], 'cluster', 'Bob'), { color: COLORS.blue, label: 'Bob' });
  const idB = await waitJoined(b);
  // Both are on the room's node: one of them was redirected there.
  const urls = await Promise.all([a, b].map((p) => p.evaluate(() => window.chorus.client.url)));
  assert.equal(urls[0], urls[1], `both pages on one node (${urls})`);
  const entries = await Promise.all([a, b].map((p) => p.evaluate(() => window.chorus.client.entryUrl)));
  assert.notEqual(entries[0], entries[1], 'the pages entered through different nodes');
  assert.ok(entries.includes(urls[0]) && !entries.every((e) => e === urls[0]), 'exactly one page was redirected');
  await waitMedia(a, { video: [idB], audio: [idB] });
  await waitMedia(b, { video: [idA], audio: [idA] });
  // The room is hosted by one node only.
  const rooms = await Promise.all(nodes.map(async (n) => (await (await fetch(`${n.url}/api/stats`)).json()).rooms));
  assert.deepEqual([...rooms].sort(), [0, 1]);
}));

test('when the node hosting a call is killed, both pages rejoin on another node within 10 s and see and hear each other again', { timeout: 150000 }, (t) => inCluster(t, ['node-a', 'node-b', 'node-c'], '', async ({ redis, nodes, browser }) => {
  // The room is claimed for node A, so that both pages, entering through B and C, are
  // redirected there, and their entries survive A.
  assert.equal(redisCli(redis, 'SET', 'chorus:room:failover', 'node-a', 'PX', '20000'), 'OK');
  const a = await openPage(browser, callUrl(nodes[1], 'failover', 'Ada'), { color: COLORS.red, label: 'Ada' });
  const idA = await waitJoined(a);
  const b = await openPage(browser, callUrl(nodes[2], 'failover', 'Bob'), { color: COLORS.blue, label: 'Bob' });
  const idB = await waitJoined(b);
  for (const p of [a, b]) assert.equal(await p.evaluate(() => window.chorus.client.url), `ws://${nodes[0].http}/ws`);
  await waitMedia(a, { video: [idB], audio: [idB] });
  await waitMedia(b, { video: [idA], audio: [idA] });

  const killedAt = Date.now();
  nodes[0].child.kill('SIGKILL');
  // Both rejoin through their entries, on one live node. (Participant ids are per node:
  // the new ones may equal the old.)
  const dead = `ws://${nodes[0].http}/ws`;
  const ids = await Promise.all([a, b].map((p) => poll(
    () => p.evaluate((deadUrl) => {
      const c = window.chorus.client;
      return c.connectionState === 'joined' && c.url !== deadUrl ? c.participantId : null;
    }, dead),
    { timeout: 20000, message: 'the page to rejoin on a live node' },
  )));
  const rejoined = Date.now() - killedAt;
  console.log(`both pages rejoined ${rejoined} ms after the kill`);
  // The cluster's part, placing the room again once the dead node's record expired, is
  // bounded here. Media setup afterwards is Chromium's and this machine's: on a loaded
  // 2-core machine it took 3 to 6 s more, so it is only logged (tests/tests/cluster.rs
  // asserts the whole 10 s with simulated browsers).
  assert.ok(rejoined < 10000, `the pages took ${rejoined} ms to rejoin`);
  await waitMedia(a, { video: [ids[1]], audio: [ids[1]], frames: 5 });
  await waitMedia(b, { video: [ids[0]], audio: [ids[0]], frames: 5 });
  const back = Date.now() - killedAt;
  console.log(`the call was back (media both ways) ${back} ms after the kill`);
  const urls = await Promise.all([a, b].map((p) => p.evaluate(() => window.chorus.client.url)));
  assert.equal(urls[0], urls[1], `both pages on one node (${urls})`);
  assert.notEqual(urls[0], dead);
}));

test('a room over its node cap spans two nodes, and pages on both see and hear each other', { timeout: 120000 }, (t) => inCluster(t, ['node-a', 'node-b'], 'max_participants_per_node = 1\n', async ({ nodes, browser }) => {
  const a = await openPage(browser, callUrl(nodes[0], 'spanning', 'Ada'), { color: COLORS.red, label: 'Ada' });
  const idA = await waitJoined(a);
  const b = await openPage(browser, callUrl(nodes[0], 'spanning', 'Bob'), { color: COLORS.blue, label: 'Bob' });
  const idB = await waitJoined(b);
  // Ada's node holds its cap of one: Bob was sent to the other node.
  const urls = await Promise.all([a, b].map((p) => p.evaluate(() => window.chorus.client.url)));
  assert.notEqual(urls[0], urls[1], `the pages on two nodes (${urls})`);
  await waitMedia(a, { video: [idB], audio: [idB] });
  await waitMedia(b, { video: [idA], audio: [idA] });
  // One link, from Bob's node to Ada's, carrying each page's audio and video once.
  const owner = nodes.find((n) => urls[0] === `ws://${n.http}/ws`);
  const status = await (await fetch(`${owner.url}/api/cluster`)).json();
  assert.equal(status.links.length, 1, JSON.stringify(status.links));
  const [link] = status.links;
  assert.ok(link.accepted && link.tracksOut === 2 && link.tracksIn === 2, JSON.stringify(link));
  assert.ok(link.packetsOut > 0 && link.packetsIn > 0, JSON.stringify(link));
  console.log(`node link: ${JSON.stringify(link)}`);
}));
