// Server smoke test: two pages in one room decode each other's video and receive audio.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, openPage, callUrl, waitJoined, waitMedia, tileState, poll, COLORS } from '../lib/harness.js';

test('two pages in a room decode each other\'s video and receive audio', { timeout: 90000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const a = await openPage(browser, callUrl(server, 'smoke', 'Ada'), { color: COLORS.red, label: 'Ada' });
    const idA = await waitJoined(a);
    const b = await openPage(browser, callUrl(server, 'smoke', 'Bob'), { color: COLORS.blue, label: 'Bob' });
    const idB = await waitJoined(b);
    assert.notEqual(idA, idB);

    await waitMedia(a, { video: [idB], audio: [idB] });
    await waitMedia(b, { video: [idA], audio: [idA] });

    // Each page shows the other's tile, named.
    assert.equal((await tileState(a, `#tile-${idB}`)).label, 'Bob');
    assert.equal((await tileState(b, `#tile-${idA}`)).label, 'Ada');
    assert.equal((await tileState(a, '#tile-self')).label, 'Ada (you)');
    // The server's sender reports reach the browser, which builds remote-outbound-rtp stats
    // (packets sent, as the server counts them) from them, for both kinds.
    await poll(
      () => b.evaluate(async () => {
        const kinds = new Set();
        (await window.chorus.client._sub.getStats()).forEach((s) => {
          if (s.type === 'remote-outbound-rtp' && s.packetsSent > 0 && s.reportsSent > 0) kinds.add(s.kind);
        });
        return kinds.has('audio') && kinds.has('video');
      }),
      { message: 'remote-outbound-rtp stats for audio and video (the server\'s sender reports)' },
    );
    for (const p of [a, b]) {
      await poll(async () => (await p.textContent('#conn-text')) === 'Connected', { message: 'the Connected indicator' });
      assert.equal(await p.getAttribute('#conn-indicator', 'data-state'), 'joined');
    }
  }));
