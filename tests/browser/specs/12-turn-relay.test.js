// Relay only, through a real coturn: a page restricted to TURN relay candidates
// (iceTransportPolicy 'relay') calls an unrestricted page. Both decode each other's video
// and receive audio, and the restricted page's selected pairs are relay pairs. The TURN
// credentials are either the ones chorus generates from coturn's static-auth-secret, or
// static ones (coturn lt-cred-mech with one user) that chorus hands to everyone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openPage, callUrl, waitJoined, waitMedia, poll, COLORS } from '../lib/harness.js';
import { coturnScenario, TURN_USER } from '../lib/coturn.js';
import { installIcePaths, withIcePath, selectedPairs } from '../lib/icepath.js';

/** The call: `checkCredentials(iceServers, participantId)` looks at what the page got. */
async function relayOnlyCall({ server, browser }, transport, checkCredentials) {
  await installIcePaths(browser);
  const a = await openPage(browser, withIcePath(callUrl(server, 'relay', 'Ada'), 'relay'), { color: COLORS.red, label: 'Ada' });
  const idA = await waitJoined(a);
  assert.equal(await a.evaluate(() => window.__icepath), 'relay');
  const ice = await a.evaluate(() => window.chorus.client.iceServers);
  assert.equal(ice.length, 1);
  checkCredentials(ice[0], idA);

  const b = await openPage(browser, callUrl(server, 'relay', 'Bob'), { color: COLORS.blue, label: 'Bob' });
  const idB = await waitJoined(b);

  await waitMedia(a, { video: [idB], audio: [idB], timeout: 40000 });
  await waitMedia(b, { video: [idA], audio: [idA], timeout: 40000 });

  const pairs = await poll(
    async () => {
      const p = await selectedPairs(a);
      return p.pub && p.sub ? p : null;
    },
    { timeout: 10000, message: 'selected candidate pairs on the relay-only page' },
  );
  for (const role of ['pub', 'sub']) {
    assert.equal(pairs[role].local.type, 'relay', `${role}: ${JSON.stringify(pairs[role])}`);
    assert.equal(pairs[role].local.relayProtocol, transport, `${role}: ${JSON.stringify(pairs[role])}`);
  }
  // The unrestricted page is not relayed.
  const direct = await selectedPairs(b);
  assert.notEqual(direct.sub?.local.type, 'relay', JSON.stringify(direct));
}

for (const transport of ['udp', 'tcp']) {
  test(`a relay-only page calls through coturn (TURN over ${transport.toUpperCase()})`, { timeout: 120000 }, (t) =>
    coturnScenario(
      t,
      (ctx) =>
        relayOnlyCall(ctx, transport, (server, id) => {
          assert.match(server.username, new RegExp(`^\\d+:p${id}$`), 'generated username expiry:participant');
        }),
      { ice: { transports: [transport] }, iceExtra: 'credential_ttl_secs = 600\n' },
    ));
}

test('a relay-only page calls through coturn with static TURN credentials', { timeout: 120000 }, (t) =>
  coturnScenario(
    t,
    (ctx) =>
      relayOnlyCall(ctx, 'udp', (server) => {
        assert.equal(server.username, TURN_USER.username);
        assert.equal(server.credential, TURN_USER.credential);
      }),
    { ice: { transports: ['udp'] }, user: TURN_USER },
  ));
