// TCP only: a page that may use only the server's ICE-TCP candidates (its UDP candidates are
// dropped from the SDP and from trickle) calls an unrestricted page; both decode each
// other's video and receive audio, and the restricted page's selected pairs are TCP.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, openPage, callUrl, waitJoined, waitMedia, poll, COLORS } from '../lib/harness.js';
import { installIcePaths, withIcePath, selectedPairs } from '../lib/icepath.js';

test('a TCP-only page gets media over ICE-TCP', { timeout: 90000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    await installIcePaths(browser);
    const a = await openPage(browser, withIcePath(callUrl(server, 'tcp', 'Ada'), 'tcp'), { color: COLORS.red, label: 'Ada' });
    const idA = await waitJoined(a);
    assert.equal(await a.evaluate(() => window.__icepath), 'tcp');
    const b = await openPage(browser, callUrl(server, 'tcp', 'Bob'), { color: COLORS.blue, label: 'Bob' });
    const idB = await waitJoined(b);

    await waitMedia(a, { video: [idB], audio: [idB], timeout: 30000 });
    await waitMedia(b, { video: [idA], audio: [idA], timeout: 30000 });

    const pairs = await poll(
      async () => {
        const p = await selectedPairs(a);
        return p.pub && p.sub ? p : null;
      },
      { timeout: 10000, message: 'selected candidate pairs on the TCP-only page' },
    );
    for (const role of ['pub', 'sub']) {
      assert.equal(pairs[role].remote.protocol, 'tcp', `${role}: ${JSON.stringify(pairs[role])}`);
      assert.equal(pairs[role].local.protocol, 'tcp', `${role}: ${JSON.stringify(pairs[role])}`);
    }
  }));
