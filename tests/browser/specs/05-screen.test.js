// A screen share from one page is received by the others and shown large; the browser's
// own "stop sharing" (the track's `ended` event) ends it everywhere.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, openPage, callUrl, waitJoined, waitMedia, poll, tileColor, colorClose, COLORS } from '../lib/harness.js';

test('screen share is shown large to everyone and stops with the browser', { timeout: 120000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const SCREEN = [200, 120, 20];
    const pages = [];
    const ids = [];
    for (const [name, color] of [['Ada', COLORS.red], ['Bob', COLORS.blue], ['Cy', COLORS.green]]) {
      const p = await openPage(browser, callUrl(server, 'screen', name), { color, label: name, screenColor: SCREEN });
      ids.push(await waitJoined(p));
      pages.push(p);
    }
    const [a, b, c] = pages;
    const idA = ids[0];
    await waitMedia(b, { video: [idA], timeout: 30000 });

    await a.click('#btn-screen');
    assert.equal(await a.getAttribute('#btn-screen', 'aria-pressed'), 'true');
    assert.ok(await a.isVisible('#stage #screen-self'));
    for (const p of [b, c]) {
      await waitMedia(p, { video: [idA], source: 'screen', timeout: 30000 });
      const sel = `#stage .tile[data-source="screen"][data-participant-id="${idA}"]`;
      await poll(() => p.isVisible(sel), { message: 'screen tile on the stage' });
      // Large: the stage tile is bigger than any camera tile.
      const big = await p.locator(sel).boundingBox();
      const small = await p.locator(`#tile-${idA}`).boundingBox();
      assert.ok(big.width * big.height > 2 * small.width * small.height, `screen tile ${big.width}x${big.height} vs camera ${small.width}x${small.height}`);
      await poll(async () => colorClose(await tileColor(p, sel), SCREEN), { timeout: 10000, message: 'the screen content' });
      // The camera keeps flowing alongside.
      await waitMedia(p, { video: [idA], frames: 5 });
    }

    // The browser's "Stop sharing": the capture track ends.
    await a.evaluate(() => window.__fakeMedia.screenTracks.at(-1).dispatchEvent(new Event('ended')));
    await poll(async () => (await a.getAttribute('#btn-screen', 'aria-pressed')) === 'false', { message: 'sharer stopped' });
    for (const p of [a, b, c]) {
      await poll(async () => (await p.locator('#stage .tile').count()) === 0 && (await p.isHidden('#stage')), { timeout: 15000, message: 'screen tile gone' });
    }
    // Sharing again works.
    await a.click('#btn-screen');
    await waitMedia(b, { video: [idA], source: 'screen', timeout: 30000 });
  }));
