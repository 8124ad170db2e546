// ChorusClient's signaling, driven through fake WebSocket and RTCPeerConnection with the
// protocol fixtures as the server's messages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { ChorusClient, ChorusError, SIMULCAST_LAYERS } from '../../../frontend/chorus.js';
import { fakeEnv, FakeWebSocket, FakePeerConnection, FakeTrack, FakeMediaStream, until } from './fakes.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const fixture = (name) => JSON.parse(readFileSync(path.resolve(here, '../../../crates/protocol/fixtures/server', `${name}.json`), 'utf8'));

// The publishOffer layers of the fakes' 1280x720 camera with the default simulcast layers.
const CAMERA_LAYERS = [
  { rid: 'q', maxBitrate: 150000, width: 320, height: 180 },
  { rid: 'h', maxBitrate: 500000, width: 640, height: 360 },
  { rid: 'f', maxBitrate: 2500000, width: 1280, height: 720 },
];

function localStream() {
  return new FakeMediaStream([new FakeTrack('audio', 'mic'), new FakeTrack('video', 'cam')]);
}

/** Joins with the joined fixture (we are participant 3, Ada (1) is there) and answers the publish. */
async function joinedClient(opts = {}) {
  const env = fakeEnv();
  const client = new ChorusClient({ ...env, ...opts });
  const events = [];
  for (const type of ['participantJoined', 'participantLeft', 'trackAdded', 'trackRemoved', 'trackPublished', 'muteChanged', 'chat', 'connectionState', 'serverError', 'bye', 'screenShare']) {
    client.on(type, (d) => events.push({ type, ...d }));
  }
  const joining = client.join({ room: 'standup', name: 'Grace', stream: opts.stream === undefined ? localStream() : opts.stream });
  const ws = await until(() => FakeWebSocket.last?.sent.length && FakeWebSocket.last, 1000, 'join sent');
  const joined = fixture('joined');
  joined.iceServers = [];
  ws.receive(joined);
  await joining;
  return { client, ws, events, env };
}

test('join sends the join message and resolves on joined with the others in place', async () => {
  const { client, ws, events } = await joinedClient();
  assert.deepEqual(ws.sent[0], { type: 'join', version: 1, room: 'standup', name: 'Grace' });
  assert.equal(client.participantId, 3);
  assert.equal(client.connectionState, 'joined');
  const ada = client.participants.get(1);
  assert.equal(ada.name, 'Ada');
  assert.equal(ChorusClient.trackOf(ada, 'camera').muted, true);
  assert.equal(ChorusClient.trackOf(ada, 'microphone').muted, false);
  assert.ok(events.some((e) => e.type === 'participantJoined' && e.participant.id === 1 && e.existing));
  // chatHistory becomes the chat, as history.
  assert.deepEqual(client.chat.map((l) => l.text), ['hi']);
  assert.ok(events.some((e) => e.type === 'chat' && e.history && e.line.text === 'hi'));
  // Two peers, with the server's ICE servers.
  assert.equal(FakePeerConnection.instances.length, 2);
  assert.deepEqual(FakePeerConnection.instances[0].config.iceServers, []);
  client.close();
});

test('the publisher offers microphone and camera with their mids and learns the track ids', async () => {
  const { client, ws } = await joinedClient();
  const offer = await until(() => ws.sent.find((m) => m.type === 'publishOffer'), 1000, 'publishOffer');
  assert.deepEqual(offer.tracks, [
    { mid: '0', source: 'microphone' },
    { mid: '1', source: 'camera', layers: CAMERA_LAYERS },
  ]);
  assert.match(offer.sdp, /fake-offer/);
  // Candidates gathered go out after the offer, tagged with the peer.
  await until(() => ws.sent.some((m) => m.type === 'candidate' && m.peer === 'publisher'), 1000, 'publisher candidate');
  const idxOffer = ws.sent.indexOf(offer);
  const idxCand = ws.sent.findIndex((m) => m.type === 'candidate' && m.peer === 'publisher');
  assert.ok(idxCand > idxOffer, 'candidate after the offer');
  ws.receive(fixture('publishAnswer'));
  await until(() => client.trackIdOf('camera') === 2, 1000, 'track ids');
  assert.equal(client.trackIdOf('microphone'), 1);
  const pub = FakePeerConnection.instances[0];
  assert.equal(pub.remoteDescription.type, 'answer');

  // Muting sends setMute with the server's track id.
  await client.setMicMuted(true);
  assert.deepEqual(ws.sent.at(-1), { type: 'setMute', trackId: 1, muted: true });
  assert.equal(client.local.tracks.microphone.enabled, false);
  // Camera off stops the capture and sends nothing on the m-line.
  const cam = client.local.tracks.camera;
  await client.setCameraOff(true);
  assert.equal(cam.readyState, 'ended');
  assert.equal(pub.replaced.at(-1), null);
  assert.deepEqual(ws.sent.at(-1), { type: 'setMute', trackId: 2, muted: true });
  // Camera on captures anew and replaces the track: no new offer.
  const offers = ws.sent.filter((m) => m.type === 'publishOffer').length;
  await client.setCameraOff(false);
  assert.equal(pub.replaced.at(-1).kind, 'video');
  assert.equal(pub.replaced.at(-1).readyState, 'live');
  assert.deepEqual(ws.sent.at(-1), { type: 'setMute', trackId: 2, muted: false });
  assert.equal(ws.sent.filter((m) => m.type === 'publishOffer').length, offers);
  client.close();
});

test('a mute set before the publish answer reaches the others once the track has an id', async () => {
  const { client, ws } = await joinedClient();
  await client.setMicMuted(true);
  assert.ok(!ws.sent.some((m) => m.type === 'setMute'));
  await until(() => ws.sent.find((m) => m.type === 'publishOffer'), 1000, 'offer');
  ws.receive(fixture('publishAnswer'));
  await until(() => ws.sent.some((m) => m.type === 'setMute'), 1000, 'setMute');
  assert.deepEqual(ws.sent.find((m) => m.type === 'setMute'), { type: 'setMute', trackId: 1, muted: true });
  client.close();
});

test('the subscriber answers offers and maps mids to participants and tracks', async () => {
  const { client, ws, events } = await joinedClient();
  const offer = fixture('subscribeOffer'); // mid 0 -> track 1 of participant 1
  offer.sdp += 'a=mid:0/audio\r\n';
  ws.receive(offer);
  const answer = await until(() => ws.sent.find((m) => m.type === 'subscribeAnswer'), 1000, 'subscribeAnswer');
  assert.deepEqual(answer, { type: 'subscribeAnswer', sdp: 'fake-answer' });
  const added = await until(() => events.find((e) => e.type === 'trackAdded'), 1000, 'trackAdded');
  assert.equal(added.participant.id, 1);
  assert.equal(added.track.id, 1);
  assert.equal(added.track.source, 'microphone');
  assert.equal(added.track.mediaTrack.kind, 'audio');
  assert.ok(added.track.stream instanceof FakeMediaStream);

  // Trickle: a server candidate reaches the subscriber peer.
  ws.receive({ type: 'candidate', peer: 'subscriber', candidate: { candidate: 'candidate:1 1 udp 1 127.0.0.1 5 typ host', sdpMid: '0', sdpMLineIndex: 0 } });
  const sub = FakePeerConnection.instances[1];
  await until(() => sub.candidates.length === 1, 1000, 'candidate added');

  // Mute changes and leaving.
  ws.receive(fixture('muteChanged'));
  const mc = await until(() => events.find((e) => e.type === 'muteChanged'), 1000, 'muteChanged');
  assert.equal(mc.track.id, 1);
  assert.equal(mc.muted, true);
  ws.receive({ type: 'participantLeft', participantId: 1 });
  await until(() => events.find((e) => e.type === 'participantLeft'), 1000, 'participantLeft');
  assert.ok(events.some((e) => e.type === 'trackRemoved' && e.track.id === 1));
  assert.equal(client.participants.size, 0);
  client.close();
});

test('a track published later (screen share) is bound when the offer names it', async () => {
  const { client, ws, events } = await joinedClient();
  ws.receive(fixture('participantJoined')); // Grace (4)... we are 3
  ws.receive({ type: 'trackPublished', participantId: 4, track: { id: 5, kind: 'video', source: 'screen', muted: false } });
  ws.receive({ type: 'subscribeOffer', sdp: 'a=mid:3/video\r\n', tracks: [{ mid: '3', trackId: 5, participantId: 4 }] });
  const added = await until(() => events.find((e) => e.type === 'trackAdded' && e.track.id === 5), 1000, 'screen trackAdded');
  assert.equal(added.track.source, 'screen');
  ws.receive(fixture('trackUnpublished')); // participant 1 track 5: not ours to remove
  ws.receive({ type: 'trackUnpublished', participantId: 4, trackId: 5 });
  await until(() => events.find((e) => e.type === 'trackRemoved' && e.track.id === 5), 1000, 'trackRemoved');
  client.close();
});

test('screen share adds a transceiver with source screen, and the track ending stops it', async () => {
  const { client, ws, events } = await joinedClient();
  await until(() => ws.sent.find((m) => m.type === 'publishOffer'), 1000, 'offer');
  ws.receive(fixture('publishAnswer'));
  await until(() => client.trackIdOf('camera') === 2, 1000, 'ids');
  const screen = new FakeTrack('video', 'screen');
  const sharing = client.startScreenShare({ stream: new FakeMediaStream([screen]) });
  const offer2 = await until(() => ws.sent.filter((m) => m.type === 'publishOffer')[1], 1000, 'second offer');
  assert.deepEqual(offer2.tracks, [
    { mid: '0', source: 'microphone' },
    { mid: '1', source: 'camera', layers: CAMERA_LAYERS },
    { mid: '2', source: 'screen' },
  ]);
  ws.receive({ type: 'publishAnswer', sdp: 'x', tracks: [{ mid: '0', trackId: 1 }, { mid: '1', trackId: 2 }, { mid: '2', trackId: 9 }] });
  await sharing;
  assert.equal(client.trackIdOf('screen'), 9);
  // The browser's "stop sharing" ends the track: a third offer without the screen.
  screen.fire('ended');
  const offer3 = await until(() => ws.sent.filter((m) => m.type === 'publishOffer')[2], 1000, 'third offer');
  assert.deepEqual(offer3.tracks.map((t) => t.source), ['microphone', 'camera']);
  ws.receive({ type: 'publishAnswer', sdp: 'y', tracks: [{ mid: '0', trackId: 1 }, { mid: '1', trackId: 2 }] });
  assert.ok(events.some((e) => e.type === 'screenShare' && e.active === false));
  assert.equal(screen.readyState, 'ended');
  client.close();
});

test('chat: sent lines show at once, the server echo replaces them, others are appended', async () => {
  const { client, ws } = await joinedClient();
  assert.equal(client.sendChat('  hello, all '), true);
  assert.deepEqual(ws.sent.at(-1), { type: 'chat', text: 'hello, all' });
  assert.equal(client.chat.at(-1).pending, true);
  ws.receive({ type: 'chat', line: { from: 3, name: 'Grace', text: 'hello, all', time: 5 } });
  ws.receive(fixture('chat'));
  await until(() => client.chat.length === 3, 1000, 'chat lines');
  assert.deepEqual(client.chat.map((l) => [l.text, l.pending ?? false]), [
    ['hi', false],
    ['hello, all', false],
    ['hi', false],
  ]);
  assert.equal(client.sendChat('   '), false);
  client.close();
});

test('receive-only join publishes nothing', async () => {
  const { client, ws } = await joinedClient({ stream: null });
  await new Promise((r) => setTimeout(r, 20));
  assert.ok(!ws.sent.some((m) => m.type === 'publishOffer'));
  client.close();
});

test('a join refused by the server rejects with its code', async () => {
  const env = fakeEnv();
  const client = new ChorusClient(env);
  const joining = client.join({ room: 'standup', name: 'Ada', stream: null });
  const ws = await until(() => FakeWebSocket.last?.sent.length && FakeWebSocket.last, 1000, 'join');
  ws.receive(fixture('error'));
  await assert.rejects(joining, (e) => e instanceof ChorusError && e.code === 'roomFull');
  assert.notEqual(client.connectionState, 'joined');
  client.close();
});

test('an unreachable server rejects the join with unreachable', async () => {
  const env = fakeEnv();
  FakeWebSocket.refuse = true;
  const client = new ChorusClient(env);
  await assert.rejects(client.join({ room: 'r', name: 'n', stream: null }), (e) => e.code === 'unreachable');
  client.close();
});

test('the room list answers listRooms and follows pushes', async () => {
  const env = fakeEnv();
  const client = new ChorusClient(env);
  const seen = [];
  client.on('roomList', (d) => seen.push(d.rooms));
  const listing = client.listRooms();
  const ws = await until(() => FakeWebSocket.last?.sent.length && FakeWebSocket.last, 1000, 'listRooms');
  assert.deepEqual(ws.sent[0], { type: 'listRooms' });
  ws.receive(fixture('roomList'));
  assert.deepEqual(await listing, [{ room: 'standup', participants: 3 }]);
  ws.receive({ type: 'roomList', rooms: [] });
  await until(() => seen.length === 2, 1000, 'push');
  client.close();
});

test('after the socket drops, the client rejoins and rebuilds the room', async () => {
  const { client, ws, events } = await joinedClient();
  ws.drop();
  await until(() => events.some((e) => e.type === 'connectionState' && e.state === 'reconnecting'), 1000, 'reconnecting');
  assert.ok(events.some((e) => e.type === 'participantLeft' && e.reconnecting));
  const ws2 = await until(() => FakeWebSocket.instances.length === 2 && FakeWebSocket.last.sent.length && FakeWebSocket.last, 2000, 'rejoin');
  assert.deepEqual(ws2.sent[0], { type: 'join', version: 1, room: 'standup', name: 'Grace' });
  const joined = fixture('joined');
  joined.participantId = 7;
  ws2.receive(joined);
  await until(() => client.connectionState === 'joined' && client.participantId === 7, 1000, 'joined again');
  assert.equal(client.participants.size, 1);
  // The local tracks survive and are published again.
  await until(() => ws2.sent.some((m) => m.type === 'publishOffer'), 1000, 'republish');
  client.close();
});

test('a redirect moves the join to the named node, with the same room, name and token; a rejoin starts at the entry again', async () => {
  const env = fakeEnv();
  const client = new ChorusClient(env);
  const redirects = [];
  client.on('redirect', (d) => redirects.push(d));
  const joining = client.join({ room: 'standup', name: 'Grace', token: 'T', stream: null });
  const entry = await until(() => FakeWebSocket.last?.sent.length && FakeWebSocket.last, 1000, 'join sent');
  assert.equal(entry.url, 'ws://test/ws');
  entry.receive(fixture('redirect'));
  const node = await until(() => FakeWebSocket.instances.length === 2 && FakeWebSocket.last.sent.length && FakeWebSocket.last, 1000, 'join at the node');
  assert.equal(node.url, 'wss://node2.example.com/ws');
  assert.equal(entry.readyState, 3, 'the entry socket is closed');
  assert.deepEqual(node.sent[0], { type: 'join', version: 1, room: 'standup', name: 'Grace', token: 'T' });
  assert.deepEqual(redirects, [{ url: 'wss://node2.example.com/ws', room: 'standup' }]);
  const joined = fixture('joined');
  joined.iceServers = [];
  node.receive(joined);
  await joining;
  assert.equal(client.connectionState, 'joined');
  // The node dies: the rejoin goes through the entry, which may redirect elsewhere.
  node.drop();
  const again = await until(() => FakeWebSocket.instances.length === 3 && FakeWebSocket.last.sent.length && FakeWebSocket.last, 2000, 'rejoin');
  assert.equal(again.url, 'ws://test/ws');
  assert.deepEqual(again.sent[0], { type: 'join', version: 1, room: 'standup', name: 'Grace', token: 'T' });
  client.close();
});

test('a redirect that is not a WebSocket URL, or a redirect loop, fails the join', async () => {
  const env = fakeEnv();
  const client = new ChorusClient(env);
  let joining = client.join({ room: 'standup', name: 'Grace', stream: null });
  let ws = await until(() => FakeWebSocket.last?.sent.length && FakeWebSocket.last, 1000, 'join sent');
  ws.receive({ type: 'redirect', room: 'standup', url: 'javascript:alert(1)' });
  await assert.rejects(joining, (err) => err instanceof ChorusError && err.code === 'unreachable');
  joining = client.join({ room: 'standup', name: 'Grace', stream: null });
  for (let i = 0; i < 3; i++) {
    ws = await until(() => FakeWebSocket.last?.readyState === 1 && FakeWebSocket.last.sent.some((m) => m.type === 'join') && FakeWebSocket.last, 1000, `join ${i}`);
    const count = FakeWebSocket.instances.length;
    ws.receive({ type: 'redirect', room: 'standup', url: `ws://node${i}.test/ws` });
    if (i < 2) await until(() => FakeWebSocket.instances.length > count, 1000, `redirect ${i} followed`);
  }
  await assert.rejects(joining, (err) => err instanceof ChorusError && err.code === 'unreachable' && /redirected 3 times/.test(err.message));
  client.close();
});

test('bye removed ends the call without reconnecting', async () => {
  const { client, ws, events } = await joinedClient();
  ws.receive({ type: 'bye', reason: 'removed' });
  await until(() => events.some((e) => e.type === 'bye'), 1000, 'bye');
  ws.close(1000);
  await until(() => client.connectionState === 'disconnected', 1000, 'disconnected');
  await new Promise((r) => setTimeout(r, 120));
  assert.equal(FakeWebSocket.instances.length, 1);
  client.close();
});

// ----- simulcast, tiles, stream state, dynacast --------------------------------------

/** A joined client whose publish was answered: our camera is track `cameraId`. */
async function publishedClient(opts = {}, cameraId = 3) {
  const c = await joinedClient(opts);
  await until(() => c.ws.sent.find((m) => m.type === 'publishOffer'), 1000, 'offer');
  c.ws.receive({ type: 'publishAnswer', sdp: 'a', tracks: [{ mid: '0', trackId: 1 }, { mid: '1', trackId: cameraId }] });
  await until(() => c.client.trackIdOf('camera') === cameraId, 1000, 'track ids');
  c.pub = FakePeerConnection.instances[0];
  c.camera = c.pub.transceivers[1];
  return c;
}

test('the camera is sent as three simulcast layers, lowest first; a screen as one', async () => {
  const { client, ws, camera, pub } = await publishedClient();
  assert.deepEqual(camera.init.sendEncodings, [
    { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000, active: true },
    { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000, active: true },
    { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 2500000, active: true },
  ]);
  assert.equal(camera.init.direction, 'sendonly');
  assert.deepEqual(SIMULCAST_LAYERS.map((l) => l.rid), ['q', 'h', 'f']);
  assert.ok(Object.isFrozen(SIMULCAST_LAYERS) && Object.isFrozen(SIMULCAST_LAYERS[0]));
  // The microphone has no encodings of its own.
  assert.equal(pub.transceivers[0].init.sendEncodings, undefined);

  // A screen share: one encoding without rid, and no layers in the offer.
  const sharing = client.startScreenShare({ stream: new FakeMediaStream([new FakeTrack('video', 'screen', { width: 1920, height: 1080 })]) });
  const offer2 = await until(() => ws.sent.filter((m) => m.type === 'publishOffer')[1], 1000, 'second offer');
  assert.deepEqual(pub.transceivers[2].init.sendEncodings, [{ maxBitrate: 1500000 }]);
  assert.deepEqual(offer2.tracks[2], { mid: '2', source: 'screen' });
  ws.receive({ type: 'publishAnswer', sdp: 'b', tracks: [{ mid: '0', trackId: 1 }, { mid: '1', trackId: 3 }, { mid: '2', trackId: 9 }] });
  await sharing;
  client.close();
});

test('a small capture sends its top layers under the lowest rids, and the rest stay off', async () => {
  const small = new FakeMediaStream([new FakeTrack('audio', 'mic'), new FakeTrack('video', 'cam', { width: 320, height: 180 })]);
  const { client, ws, camera } = await publishedClient({ stream: small });
  assert.deepEqual(camera.init.sendEncodings, [
    { rid: 'q', scaleResolutionDownBy: 1, maxBitrate: 150000, active: true },
    { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000, active: false },
    { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 2500000, active: false },
  ]);
  assert.deepEqual(ws.sent.find((m) => m.type === 'publishOffer').tracks[1].layers, [{ rid: 'q', maxBitrate: 150000, width: 320, height: 180 }]);
  // The server asking for all of them does not switch on what the capture cannot fill.
  ws.receive({ type: 'publishLayers', trackId: 3, rids: ['q', 'h', 'f'] });
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(camera.sender.encodings.map((e) => e.active), [true, false, false]);
  ws.receive({ type: 'publishLayers', trackId: 3, rids: [] });
  await until(() => camera.sender.encodings[0].active === false, 1000, 'q off');
  client.close();
});

test('simulcast can be turned off, and its layers configured', async () => {
  {
    const { client, ws, camera } = await publishedClient({ simulcast: false });
    assert.deepEqual(camera.init.sendEncodings, [{ maxBitrate: 900000 }]);
    assert.deepEqual(ws.sent.find((m) => m.type === 'publishOffer').tracks[1], { mid: '1', source: 'camera' });
    client.close();
  }
  {
    const layers = [
      { rid: 'q', scaleResolutionDownBy: 3, maxBitrate: 200000 },
      { rid: 'f', maxBitrate: 1200000, maxFramerate: 30 },
    ];
    const { client, ws, camera } = await publishedClient({ simulcastLayers: layers });
    assert.deepEqual(camera.init.sendEncodings, [
      { rid: 'q', scaleResolutionDownBy: 3, maxBitrate: 200000, active: true },
      { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1200000, maxFramerate: 30, active: true },
    ]);
    assert.deepEqual(ws.sent.find((m) => m.type === 'publishOffer').tracks[1].layers, [
      { rid: 'q', maxBitrate: 200000, width: 426, height: 240 },
      { rid: 'f', maxBitrate: 1200000, width: 1280, height: 720 },
    ]);
    client.close();
  }
  // Lists the server would refuse fail when the client is made.
  for (const bad of [[], [{ rid: 'x', maxBitrate: 1 }], [{ rid: 'h', maxBitrate: 1 }, { rid: 'q', maxBitrate: 1 }], [{ rid: 'q', maxBitrate: 0 }], [{ rid: 'q', maxBitrate: 1, scaleResolutionDownBy: 0.5 }]]) {
    assert.throws(() => new ChorusClient({ ...fakeEnv(), simulcastLayers: bad }), (e) => e instanceof ChorusError && e.code === 'invalid');
  }
});

test('camera off and on, device switch and replaceTrack keep the simulcast transceiver', async () => {
  const { client, ws, pub, camera } = await publishedClient();
  const offers = () => ws.sent.filter((m) => m.type === 'publishOffer').length;
  const before = offers();
  await client.setCameraOff(true);
  assert.equal(camera.sender.track, null);
  await client.setCameraOff(false);
  assert.equal(camera.sender.track.kind, 'video');
  await client.switchDevice('video', 'cam2');
  assert.equal(camera.sender.setCalls.length, 0, 'same capture size: encodings untouched');
  // A smaller camera: Chromium would encode two layers of it, so the top two are sent as q and h.
  await client.replaceTrack('camera', new FakeTrack('video', 'cam3', { width: 640, height: 360 }));
  assert.equal(camera.sender.track.label, 'cam3');
  assert.equal(offers(), before, 'no renegotiation');
  assert.equal(pub.transceivers.length, 2, 'the same transceivers');
  assert.deepEqual(camera.sender.encodings.map((e) => [e.rid, e.scaleResolutionDownBy, e.maxBitrate, e.active]), [
    ['q', 2, 150000, true],
    ['h', 1, 500000, true],
    ['f', 1, 2500000, false],
  ]);

  // A renegotiation while the camera is off declares the layers of the last capture.
  await client.setCameraOff(true);
  const sharing = client.startScreenShare({ stream: new FakeMediaStream([new FakeTrack('video', 'screen')]) });
  const offer = await until(() => ws.sent.filter((m) => m.type === 'publishOffer')[before], 1000, 'offer');
  assert.deepEqual(offer.tracks[1].layers, [
    { rid: 'q', maxBitrate: 150000, width: 320, height: 180 },
    { rid: 'h', maxBitrate: 500000, width: 640, height: 360 },
  ]);
  ws.receive({ type: 'publishAnswer', sdp: 'b', tracks: [{ mid: '0', trackId: 1 }, { mid: '1', trackId: 3 }, { mid: '2', trackId: 9 }] });
  await sharing;
  client.close();
});

test('publishLayers switches off the encodings nobody needs, in order, and survives renegotiation', async () => {
  const { client, ws, camera } = await publishedClient();
  const seen = [];
  client.on('publishLayers', (d) => seen.push(d));
  const active = () => Object.fromEntries(camera.sender.encodings.map((e) => [e.rid, e.active]));

  ws.receive(fixture('publishLayers')); // track 3: q and h
  await until(() => camera.sender.setCalls.length === 1, 1000, 'setParameters');
  assert.deepEqual(active(), { q: true, h: true, f: false });
  assert.deepEqual(seen, [{ source: 'camera', trackId: 3, rids: ['q', 'h'] }]);

  // Back-to-back changes are applied one after the other (no stale transaction), the last wins.
  ws.receive({ type: 'publishLayers', trackId: 3, rids: [] });
  ws.receive({ type: 'publishLayers', trackId: 3, rids: ['q'] });
  await until(() => camera.sender.setCalls.length === 3, 1000, 'two more setParameters');
  assert.deepEqual(camera.sender.setCalls.slice(1), [{ q: false, h: false, f: false }, { q: true, h: false, f: false }]);
  // Nothing to change: no call.
  ws.receive({ type: 'publishLayers', trackId: 3, rids: ['q'] });
  await until(() => seen.length === 4, 1000, 'event');
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(camera.sender.setCalls.length, 3);
  // A track that is not ours is ignored.
  ws.receive({ type: 'publishLayers', trackId: 77, rids: [] });

  // A renegotiation that rebuilt the encodings gets the server's choice back.
  const sharing = client.startScreenShare({ stream: new FakeMediaStream([new FakeTrack('video', 'screen')]) });
  await until(() => ws.sent.filter((m) => m.type === 'publishOffer').length === 2, 1000, 'offer');
  camera.sender.encodings = camera.sender.encodings.map((e) => ({ ...e, active: true }));
  ws.receive({ type: 'publishAnswer', sdp: 'b', tracks: [{ mid: '0', trackId: 1 }, { mid: '1', trackId: 3 }, { mid: '2', trackId: 9 }] });
  await sharing;
  await until(() => camera.sender.setCalls.length === 4, 1000, 're-applied');
  assert.deepEqual(active(), { q: true, h: false, f: false });
  client.close();
});

test('streamState goes on the track model and out as an event', async () => {
  const { client, ws } = await joinedClient();
  const seen = [];
  client.on('streamState', (d) => seen.push(d));
  const ada = client.participants.get(1);
  const cam = ChorusClient.trackOf(ada, 'camera');
  assert.equal(cam.layer, null);
  assert.equal(cam.paused, null);

  ws.receive({ type: 'streamState', trackId: 2, paused: 'lowBandwidth' });
  await until(() => seen.length === 1, 1000, 'streamState');
  assert.equal(seen[0].participant, ada);
  assert.equal(seen[0].track, cam);
  assert.deepEqual([seen[0].trackId, seen[0].layer, seen[0].paused], [2, null, 'lowBandwidth']);
  assert.equal(cam.paused, 'lowBandwidth');

  ws.receive({ type: 'streamState', trackId: 2, layer: 1 });
  await until(() => seen.length === 2, 1000, 'second streamState');
  assert.deepEqual([cam.layer, cam.paused], [1, null]);

  // One for a track not announced yet is kept for it.
  ws.receive({ type: 'streamState', trackId: 8, paused: 'notVisible' });
  ws.receive({ type: 'trackPublished', participantId: 1, track: { id: 8, kind: 'video', source: 'screen', muted: false } });
  await until(() => ada.tracks.get(8), 1000, 'trackPublished');
  assert.equal(ada.tracks.get(8).paused, 'notVisible');
  assert.equal(seen.length, 2);
  client.close();
});

test('setTrackView sends trackSettings once the track is subscribed, only changes, throttled per track', async () => {
  const { client, ws } = await joinedClient({ trackSettingsIntervalMs: 100 });
  const settings = () => ws.sent.filter((m) => m.type === 'trackSettings');

  // Before the server subscribed us to Ada's camera: kept, not sent.
  assert.equal(client.setTrackView(2, { visible: true, width: 639.6, height: 360 }), true);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(settings().length, 0);
  ws.receive({ type: 'subscribeOffer', sdp: 'a=mid:0/audio\r\na=mid:1/video\r\n', tracks: [{ mid: '0', trackId: 1, participantId: 1 }, { mid: '1', trackId: 2, participantId: 1 }] });
  await until(() => settings().length === 1, 1000, 'trackSettings after subscription');
  assert.deepEqual(settings()[0], { type: 'trackSettings', trackId: 2, visible: true, width: 640, height: 360 });
  assert.deepEqual(client.trackView(2), { visible: true, width: 640, height: 360 });

  // The same view again: nothing.
  client.setTrackView(2, { visible: true, width: 640, height: 360 });
  // A burst of changes within the interval: one message, with the last one.
  client.setTrackView(2, { visible: true, width: 500, height: 280 });
  client.setTrackView(2, { visible: true, width: 400, height: 225 });
  client.setTrackView(2, { visible: false, width: 400, height: 225 });
  assert.equal(settings().length, 1);
  await until(() => settings().length === 2, 1000, 'trailing trackSettings');
  assert.deepEqual(settings()[1], { type: 'trackSettings', trackId: 2, visible: false, width: 400, height: 225 });
  // Changed and changed back before the interval is over: nothing to say.
  client.setTrackView(2, { visible: true, width: 400, height: 225 });
  client.setTrackView(2, { visible: false, width: 400, height: 225 });
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(settings().length, 2, 'a change undone is not sent');

  // Tracks are throttled separately; an unknown size is 0.
  client.setTrackView(1, { visible: true });
  await until(() => settings().length === 3, 1000, 'other track');
  assert.deepEqual(settings()[2], { type: 'trackSettings', trackId: 1, visible: true, width: 0, height: 0 });

  // A track that goes away forgets its view; outside a call nothing is kept.
  ws.receive({ type: 'trackUnpublished', participantId: 1, trackId: 2 });
  await until(() => !client.participants.get(1).tracks.has(2), 1000, 'unpublished');
  assert.equal(client.trackView(2), null);
  await client.leave();
  assert.equal(client.setTrackView(1, { visible: true }), false);
  client.close();
});

test('activeSpeakers sets the server-elected speaker, in order, and an empty list clears it', async () => {
  const { client, ws } = await joinedClient();
  const seen = [];
  client.on('activeSpeakers', (d) => seen.push(d.speakers.map((s) => s.participantId)));
  const speakers = [];
  client.on('activeSpeaker', (d) => speakers.push(d.participantId));
  ws.receive(fixture('activeSpeakers')); // 4 first, then 2
  await until(() => seen.length === 1, 1000, 'activeSpeakers event');
  assert.deepEqual(client.activeSpeakers, [{ participantId: 4, level: 96 }, { participantId: 2, level: 71 }]);
  assert.equal(client.activeSpeaker, 4);
  ws.receive({ type: 'activeSpeakers', speakers: [{ participantId: 1, level: 100 }] });
  ws.receive({ type: 'activeSpeakers', speakers: [] });
  await until(() => seen.length === 3, 1000, 'two more');
  assert.equal(client.activeSpeaker, null);
  assert.deepEqual(speakers, [4, 1, null]);
  client.close();
});

test('the microphone lists RED first where the browser has it, and not when turned off', async () => {
  const caps = { codecs: [{ mimeType: 'audio/opus' }, { mimeType: 'audio/red' }, { mimeType: 'audio/PCMU' }] };
  const RTCRtpSender = { getCapabilities: (kind) => (kind === 'audio' ? caps : null) };
  const { client } = await joinedClient({ RTCRtpSender });
  const pub = FakePeerConnection.instances[0];
  const mic = pub.transceivers.find((t) => t.sender.track?.kind === 'audio');
  assert.deepEqual(mic.codecPreferences.map((c) => c.mimeType), ['audio/red', 'audio/opus', 'audio/PCMU']);
  const cam = pub.transceivers.find((t) => t.sender.track?.kind === 'video');
  assert.equal(cam.codecPreferences, undefined, 'video untouched');
  client.close();
  const off = await joinedClient({ RTCRtpSender, red: false });
  const mic2 = FakePeerConnection.instances.at(-2).transceivers.find((t) => t.sender.track?.kind === 'audio');
  assert.equal(mic2.codecPreferences, undefined);
  off.client.close();
});
