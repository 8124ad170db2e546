// The client library speaks exactly the protocol crate's messages: every client fixture is
// what a builder produces, and every server fixture parses.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { messages, parseServerMessage, ProtocolError, SERVER_TYPES, PROTOCOL_VERSION, candidateInit, grantsOf, mayPublish, mayChat, DEFAULT_GRANTS } from '../../../frontend/chorus.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const fixtures = path.resolve(here, '../../../crates/protocol/fixtures');
const load = (dir, name) => JSON.parse(readFileSync(path.join(fixtures, dir, `${name}.json`), 'utf8'));
const names = (dir) => readdirSync(path.join(fixtures, dir)).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)).sort();

// How to build each client fixture from its own fields, through the public builders.
const build = {
  join: (f) => messages.join(f.room, f.name, f.token),
  leave: () => messages.leave(),
  publishOffer: (f) => messages.publishOffer(f.sdp, f.tracks),
  subscribeAnswer: (f) => messages.subscribeAnswer(f.sdp),
  candidate: (f) => messages.candidate(f.peer, f.candidate),
  setMute: (f) => messages.setMute(f.trackId, f.muted),
  chat: (f) => messages.chat(f.text),
  listRooms: () => messages.listRooms(),
  trackSettings: (f) => messages.trackSettings(f.trackId, f.visible, f.width, f.height),
  removeParticipant: (f) => messages.removeParticipant(f.participantId),
  muteTrack: (f) => messages.muteTrack(f.participantId, f.trackId, f.muted),
};

test('there is a builder for every client fixture and a fixture for every builder', () => {
  assert.deepEqual(names('client'), Object.keys(build).sort());
  assert.deepEqual(Object.keys(messages).sort(), Object.keys(build).sort());
});

for (const name of names('client')) {
  test(`client message ${name} matches its fixture exactly`, () => {
    const fixture = load('client', name);
    const built = build[name](fixture);
    assert.deepEqual(built, fixture);
    // Same keys in the same order as the Rust serializer writes them.
    assert.equal(JSON.stringify(built), JSON.stringify(fixture));
  });
}

test('join carries the protocol version', () => {
  assert.equal(load('client', 'join').version, PROTOCOL_VERSION);
});

test('candidateInit leaves out absent fields and keeps a browser candidate', () => {
  assert.deepEqual(candidateInit({ candidate: 'candidate:1', sdpMid: null, sdpMLineIndex: null }), { candidate: 'candidate:1' });
  const browserLike = { candidate: 'candidate:2', sdpMid: '1', sdpMLineIndex: 1, usernameFragment: 'abc', toJSON() {} };
  assert.deepEqual(candidateInit(browserLike), { candidate: 'candidate:2', sdpMid: '1', sdpMLineIndex: 1 });
});

test('there is a server fixture for every server type the client knows', () => {
  assert.deepEqual(names('server'), [...SERVER_TYPES].sort());
});

for (const name of names('server')) {
  test(`server message ${name} parses from its fixture`, () => {
    const text = readFileSync(path.join(fixtures, 'server', `${name}.json`), 'utf8');
    const msg = parseServerMessage(text);
    assert.equal(msg.type, name);
    assert.deepEqual(msg, JSON.parse(text));
  });
}

test('parser rejects malformed and incomplete messages, passes unknown types through', () => {
  assert.throws(() => parseServerMessage('{nope'), ProtocolError);
  assert.throws(() => parseServerMessage('{"no":"type"}'), ProtocolError);
  const joined = load('server', 'joined');
  delete joined.participantId;
  assert.throws(() => parseServerMessage(JSON.stringify(joined)), /participantId/);
  const pj = load('server', 'participantJoined');
  pj.participant.tracks = [{ id: 1, kind: 'audio' }];
  assert.throws(() => parseServerMessage(pj), /tracks\[0\]/);
  assert.equal(parseServerMessage('{"type":"somethingNew","x":1}').type, 'somethingNew');
});

test('join leaves the token key out when there is no token', () => {
  for (const none of [undefined, null, '']) {
    const built = messages.join('standup', 'Ada', none);
    assert.equal(JSON.stringify(built), '{"type":"join","version":1,"room":"standup","name":"Ada"}');
  }
  assert.equal(messages.join('standup', 'Ada', 'abc').token, 'abc');
});

test('muteTrack sends muted as a boolean', () => {
  assert.equal(messages.muteTrack(4, 7).muted, false);
  assert.equal(messages.muteTrack(4, 7, 1).muted, true);
});

test('joined grants: the fixture\'s parse; absent ones mean the defaults; malformed ones are refused', () => {
  const joined = load('server', 'joined');
  assert.deepEqual(grantsOf(parseServerMessage(JSON.stringify(joined)).grants), joined.grants);
  delete joined.grants;
  assert.equal(parseServerMessage(JSON.stringify(joined)).grants, undefined);
  assert.deepEqual(grantsOf(undefined), DEFAULT_GRANTS);
  // A field left out takes its default; an unknown source is dropped.
  const partial = grantsOf({ canPublish: false, canPublishSources: ['camera', 'hologram'] });
  assert.equal(partial.canPublish, false);
  assert.deepEqual(partial.canPublishSources, ['camera']);
  assert.equal(partial.canChat, true);
  assert.equal(partial.roomAdmin, false);
  for (const bad of [{ canPublish: 'yes' }, { canPublishSources: 'camera' }, { canPublishSources: [1] }, []]) {
    assert.throws(() => parseServerMessage({ ...load('server', 'joined'), grants: bad }), ProtocolError, JSON.stringify(bad));
  }
});

test('mayPublish and mayChat read the grants; hidden publishes and chats nothing', () => {
  assert.ok(mayPublish(DEFAULT_GRANTS, 'screen'));
  assert.ok(mayChat(DEFAULT_GRANTS));
  const cameraOnly = grantsOf({ canPublishSources: ['camera'] });
  assert.ok(mayPublish(cameraOnly, 'camera'));
  assert.ok(!mayPublish(cameraOnly, 'microphone'));
  assert.ok(!mayPublish(grantsOf({ canPublish: false }), 'camera'));
  const hidden = grantsOf({ hidden: true });
  assert.ok(!mayPublish(hidden, 'microphone'));
  assert.ok(!mayChat(hidden));
  assert.ok(!mayChat(grantsOf({ canChat: false })));
});
