// Access control in ChorusClient: join tokens, grants, room admin messages, and the
// refusals of a server in token mode, driven through the fakes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { ChorusClient, ChorusError, DEFAULT_GRANTS } from '../../../frontend/chorus.js';
import { fakeEnv, FakeWebSocket, FakeTrack, FakeMediaStream, until } from './fakes.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const fixture = (name) => JSON.parse(readFileSync(path.resolve(here, '../../../crates/protocol/fixtures/server', `${name}.json`), 'utf8'));
const TOKEN = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJncmFjZSJ9.c2ln';
const tick = (ms = 20) => new Promise((r) => setTimeout(r, ms));

function localStream() {
  return new FakeMediaStream([new FakeTrack('audio', 'mic'), new FakeTrack('video', 'cam')]);
}

/** Joins with a token and the joined fixture, its grants replaced by `grants` (undefined: none sent). */
async function joinWith({ grants, stream = localStream(), token = TOKEN, ...opts } = {}) {
  const env = fakeEnv();
  const client = new ChorusClient({ ...env, ...opts });
  const events = [];
  for (const type of ['localMute', 'serverError', 'bye', 'connectionState', 'muteChanged']) client.on(type, (d) => events.push({ type, ...d }));
  const joining = client.join({ room: 'standup', name: 'Grace', stream, token });
  const ws = await until(() => FakeWebSocket.last?.sent.length && FakeWebSocket.last, 1000, 'join sent');
  const joined = fixture('joined');
  joined.iceServers = [];
  if (grants === undefined) delete joined.grants;
  else joined.grants = { ...joined.grants, ...grants };
  ws.receive(joined);
  await joining;
  return { client, ws, events };
}

/** Answers the publish: microphone track 1, camera track 2. */
async function answerPublish(ws, client) {
  await until(() => ws.sent.find((m) => m.type === 'publishOffer'), 1000, 'publishOffer');
  ws.receive(fixture('publishAnswer'));
  await until(() => client.trackIdOf('camera') === 2, 1000, 'track ids');
}

test('join sends the token, and a rejoin sends it again', async () => {
  const { client, ws } = await joinWith();
  assert.deepEqual(ws.sent[0], { type: 'join', version: 1, room: 'standup', name: 'Grace', token: TOKEN });
  assert.equal(client.token, TOKEN);
  ws.drop();
  const ws2 = await until(() => FakeWebSocket.instances.length === 2 && FakeWebSocket.last.sent.length && FakeWebSocket.last, 2000, 'rejoin');
  assert.equal(ws2.sent[0].token, TOKEN);
  client.close();
});

test('a join without a token has no token key', async () => {
  const { ws, client } = await joinWith({ token: null });
  assert.deepEqual(ws.sent[0], { type: 'join', version: 1, room: 'standup', name: 'Grace' });
  client.close();
});

test('the grants are on the client: the fixture\'s, or the defaults from a server that sends none', async () => {
  const a = await joinWith({ grants: { roomAdmin: true } });
  assert.equal(a.client.grants.roomAdmin, true);
  assert.deepEqual(a.client.grants.canPublishSources, ['microphone', 'camera', 'screen']);
  a.client.close();
  assert.equal(a.client.grants, null, 'none outside a room');
  const b = await joinWith({ grants: undefined });
  assert.deepEqual(b.client.grants, DEFAULT_GRANTS);
  b.client.close();
});

for (const [what, grants] of [['canPublish false', { canPublish: false }], ['hidden', { hidden: true }]]) {
  test(`${what}: nothing is published, and publishing later is refused locally`, async () => {
    const { client, ws } = await joinWith({ grants });
    await tick();
    assert.ok(!ws.sent.some((m) => m.type === 'publishOffer'));
    assert.equal(client.mayPublish('microphone'), false);
    await assert.rejects(client.setCameraOff(false), (e) => e instanceof ChorusError && e.code === 'forbidden');
    await assert.rejects(client.setMicMuted(false), (e) => e.code === 'forbidden');
    await assert.rejects(client.startScreenShare({ stream: new FakeMediaStream([new FakeTrack('video', 'scr')]) }), (e) => e.code === 'forbidden');
    assert.ok(!ws.sent.some((m) => m.type === 'publishOffer'));
    client.close();
  });
}

test('only the sources in canPublishSources are published', async () => {
  const { client, ws } = await joinWith({ grants: { canPublishSources: ['camera'] } });
  const offer = await until(() => ws.sent.find((m) => m.type === 'publishOffer'), 1000, 'publishOffer');
  assert.deepEqual(offer.tracks.map((t) => t.source), ['camera']);
  client.close();
});

test('publish() after a join without media publishes what the grants allow, in one offer', async () => {
  const { client, ws } = await joinWith({ stream: null, grants: { canPublishSources: ['microphone', 'screen'] } });
  await tick();
  assert.ok(!ws.sent.some((m) => m.type === 'publishOffer'));
  const cam = new FakeTrack('video', 'cam');
  await Promise.race([client.publish(new FakeMediaStream([new FakeTrack('audio', 'mic'), cam])), tick(50)]);
  const offers = ws.sent.filter((m) => m.type === 'publishOffer');
  assert.equal(offers.length, 1);
  assert.deepEqual(offers[0].tracks.map((t) => t.source), ['microphone']);
  assert.equal(cam.readyState, 'ended', 'a forbidden source is let go');
  assert.equal(client.local.tracks.camera, null);
  client.close();
});

test('without canChat, sendChat sends nothing', async () => {
  const { client, ws } = await joinWith({ grants: { canChat: false } });
  assert.equal(client.mayChat(), false);
  assert.equal(client.sendChat('hello'), false);
  assert.ok(!ws.sent.some((m) => m.type === 'chat'));
  client.close();
});

test('admin messages: removeParticipant and muteTrack', async () => {
  const { client, ws } = await joinWith({ grants: { roomAdmin: true } });
  assert.equal(client.removeParticipant(1), true);
  assert.equal(client.muteTrack(1, 1), true);
  assert.equal(client.muteTrack(1, 1, false), true);
  assert.deepEqual(ws.sent.slice(-3), [
    { type: 'removeParticipant', participantId: 1 },
    { type: 'muteTrack', participantId: 1, trackId: 1, muted: true },
    { type: 'muteTrack', participantId: 1, trackId: 1, muted: false },
  ]);
  client.close();
  assert.equal(client.removeParticipant(1), false, 'not outside a room');
});

test('our own mute echoes are ours; a room admin\'s mute is told apart, and our unmute is undone while it holds', async () => {
  const { client, ws, events } = await joinWith();
  await answerPublish(ws, client);
  // Our own mute and unmute, echoed by the server: no admin involved.
  await client.setMicMuted(true);
  await client.setMicMuted(false);
  ws.receive({ type: 'muteChanged', participantId: 3, trackId: 1, muted: true });
  ws.receive({ type: 'muteChanged', participantId: 3, trackId: 1, muted: false });
  await tick();
  assert.equal(client.local.adminMuted.microphone, false);
  assert.equal(client.local.muted.microphone, false);
  // An admin mutes us.
  ws.receive({ type: 'muteChanged', participantId: 3, trackId: 1, muted: true });
  await until(() => client.local.adminMuted.microphone, 1000, 'admin mute');
  assert.equal(client.local.muted.microphone, true);
  assert.equal(client.local.tracks.microphone.enabled, false);
  assert.ok(events.some((e) => e.type === 'localMute' && e.byAdmin && e.adminMuted && e.source === 'microphone'));
  // Our unmute is refused while the admin holds it: muted again.
  await client.setMicMuted(false);
  assert.deepEqual(ws.sent.at(-1), { type: 'setMute', trackId: 1, muted: false });
  ws.receive({ type: 'error', code: 'forbidden', message: 'a room admin muted this track' });
  await until(() => client.local.muted.microphone, 1000, 'muted again');
  assert.equal(client.local.tracks.microphone.enabled, false);
  assert.equal(client.local.adminMuted.microphone, true);
  assert.ok(events.some((e) => e.type === 'serverError' && e.code === 'forbidden'));
  // The admin lifts the hold (the server says nothing); the next unmute goes through.
  await client.setMicMuted(false);
  ws.receive({ type: 'muteChanged', participantId: 3, trackId: 1, muted: false });
  await until(() => !client.local.adminMuted.microphone, 1000, 'hold gone');
  assert.equal(client.local.muted.microphone, false);
  assert.equal(client.local.tracks.microphone.enabled, true);
  client.close();
});

test('a room admin\'s mute of our camera turns the camera off', async () => {
  const { client, ws } = await joinWith();
  await answerPublish(ws, client);
  const cam = client.local.tracks.camera;
  ws.receive({ type: 'muteChanged', participantId: 3, trackId: 2, muted: true });
  await until(() => client.local.tracks.camera === null, 1000, 'camera off');
  assert.equal(cam.readyState, 'ended');
  assert.equal(client.local.adminMuted.camera, true);
  client.close();
});

for (const code of ['unauthorized', 'tokenExpired']) {
  test(`a join refused with ${code} rejects with it`, async () => {
    const env = fakeEnv();
    const client = new ChorusClient(env);
    const joining = client.join({ room: 'standup', name: 'Ada', stream: null });
    const ws = await until(() => FakeWebSocket.last?.sent.length && FakeWebSocket.last, 1000, 'join');
    ws.receive({ type: 'error', code, message: 'no' });
    await assert.rejects(joining, (e) => e instanceof ChorusError && e.code === code);
    client.close();
  });
}

test('a rejoin refused because the token expired ends the call instead of retrying', async () => {
  const { client, ws, events } = await joinWith();
  ws.drop();
  const ws2 = await until(() => FakeWebSocket.instances.length === 2 && FakeWebSocket.last.sent.length && FakeWebSocket.last, 2000, 'rejoin');
  ws2.receive({ type: 'error', code: 'tokenExpired', message: 'expired' });
  await until(() => client.connectionState === 'disconnected', 1000, 'disconnected');
  assert.equal(events.find((e) => e.type === 'connectionState' && e.state === 'disconnected').error.code, 'tokenExpired');
  await tick(150);
  assert.equal(FakeWebSocket.instances.length, 2, 'no further attempt');
  client.close();
});

test('a refused room list rejects once and is not asked again; a join right after it is not failed by it', async () => {
  const env = fakeEnv();
  const client = new ChorusClient(env);
  const listing = client.listRooms();
  const ws = await until(() => FakeWebSocket.last?.sent.length && FakeWebSocket.last, 1000, 'listRooms');
  // The join goes out before the list's refusal comes back.
  const joining = client.join({ room: 'standup', name: 'Ada', stream: null, token: TOKEN });
  await until(() => ws.sent.some((m) => m.type === 'join'), 1000, 'join');
  ws.receive({ type: 'error', code: 'unauthorized', message: 'the room list needs a token' });
  await assert.rejects(listing, (e) => e.code === 'unauthorized');
  assert.equal(client.roomListRefused, true);
  const joined = fixture('joined');
  joined.iceServers = [];
  ws.receive(joined);
  await joining;
  assert.equal(client.connectionState, 'joined');
  client.close();
});

test('a refused room list is not retried after the socket drops', async () => {
  const env = fakeEnv();
  const client = new ChorusClient(env);
  const listing = client.listRooms();
  const ws = await until(() => FakeWebSocket.last?.sent.length && FakeWebSocket.last, 1000, 'listRooms');
  ws.receive({ type: 'error', code: 'unauthorized', message: 'no' });
  await assert.rejects(listing, (e) => e.code === 'unauthorized');
  ws.drop();
  await tick(150);
  assert.equal(FakeWebSocket.instances.length, 1);
  client.close();
});

test('bye roomClosed ends the call without reconnecting, like removed', async () => {
  const { client, ws, events } = await joinWith();
  ws.receive({ type: 'bye', reason: 'roomClosed' });
  await until(() => events.some((e) => e.type === 'bye'), 1000, 'bye');
  ws.close(1000);
  await until(() => client.connectionState === 'disconnected', 1000, 'disconnected');
  await tick(120);
  assert.equal(FakeWebSocket.instances.length, 1);
  client.close();
});
