// Leaving removes the tile everywhere.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, openPage, callUrl, waitJoined, waitMedia, poll, COLORS } from '../lib/harness.js';

test('leaving removes the tile from every page', { timeout: 90000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const pages = [];
    const ids = [];
    for (const [name, color] of [['Ada', COLORS.red], ['Bob', COLORS.blue], ['Cy', COLORS.green]]) {
      const p = await openPage(browser, callUrl(server, 'leave', name), { color, label: name });
      ids.push(await waitJoined(p));
      pages.push(p);
    }
    const [a, b, c] = pages;
    const idC = ids[2];
    await waitMedia(a, { video: [idC], timeout: 30000 });
    for (const p of [a, b]) await poll(async () => (await p.locator('#grid .tile').count()) === 3, { message: 'three tiles' });

    await c.click('#btn-leave');
    await poll(() => c.evaluate(() => document.body.dataset.view === 'lobby'), { message: 'back in the lobby' });
    assert.equal(await c.locator('#grid .tile').count(), 0);
    // The camera is released.
    assert.equal(await c.evaluate(() => window.chorus.client.local.stream), null);
    for (const p of [a, b]) {
      await poll(async () => (await p.locator(`#tile-${idC}`).count()) === 0, { message: 'the leaver\'s tile to go' });
      await poll(async () => (await p.locator('#grid .tile').count()) === 2, { message: 'two tiles left' });
      assert.equal(await p.locator(`#participant-list li[data-participant-id="${idC}"]`).count(), 0);
      assert.equal(await p.locator(`#audio-sink audio[data-participant-id="${idC}"]`).count(), 0);
    }
    // Closing a page without pressing leave removes it too.
    await b.close();
    await poll(async () => (await a.locator('#grid .tile').count()) === 1, { timeout: 20000, message: 'closed page\'s tile to go' });
  }));
