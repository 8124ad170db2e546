// Phone width and keyboard use: nothing overflows at 390 px, every control has a name,
// and the call can be driven from the keyboard.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, openPage, callUrl, waitJoined, waitMedia, tileState, poll, RES, COLORS } from '../lib/harness.js';

test('the app works at phone width and from the keyboard', { timeout: 90000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const a = await openPage(browser, callUrl(server, 'mobile', 'Ada'), { color: COLORS.red, label: 'Ada' });
    const idA = await waitJoined(a);

    // Bob joins from the lobby on a phone-sized screen, with the keyboard only.
    const b = await browser.context.newPage();
    b.logs = [];
    b.on('console', (m) => b.logs.push(`[${m.type()}] ${m.text()}`));
    browser.pages.push(b);
    await b.setViewportSize({ width: 390, height: 780 });
    await b.goto(`${server.url}/?res=${RES}`);
    // The name Ada used in this browser is remembered, so the room field has the focus.
    await poll(() => b.evaluate(() => document.activeElement?.id === 'room-input'), { message: 'the room field focused' });
    assert.equal(await b.inputValue('#name-input'), 'Ada');
    await b.keyboard.press('Shift+Tab');
    await b.keyboard.press('Control+A');
    await b.keyboard.type('Bob');
    await b.keyboard.press('Tab');
    await b.keyboard.type('mobile');
    await b.keyboard.press('Enter');
    const idB = await waitJoined(b);
    await waitMedia(b, { video: [idA], audio: [idA] });

    const overflow = () => b.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok((await overflow()) <= 0, 'no horizontal overflow in the call');
    // On a phone the side panel starts closed, so the videos have the screen.
    assert.ok(await b.isHidden('#sidebar'));
    for (const id of ['#btn-mic', '#btn-camera', '#btn-chat', '#btn-leave', '#btn-invite']) {
      const box = await b.locator(id).boundingBox();
      assert.ok(box && box.x >= 0 && box.x + box.width <= 390 && box.y + box.height <= 780, `${id} inside the screen`);
    }
    const tile = await b.locator(`#tile-${idA}`).boundingBox();
    assert.ok(tile.width >= 300, `remote tile ${tile.width}px wide`);

    // Every button has an accessible name.
    const unnamed = await b.$$eval('button', (bs) => bs.filter((x) => !(x.getAttribute('aria-label') || x.textContent.trim())).map((x) => x.id || x.outerHTML.slice(0, 60)));
    assert.deepEqual(unnamed, []);

    // Keyboard: focus the mic button and press Space; Ada sees Bob muted.
    await b.focus('#btn-mic');
    await b.keyboard.press('Space');
    assert.equal(await b.getAttribute('#btn-mic', 'aria-pressed'), 'true');
    assert.equal(await b.getAttribute('#btn-mic', 'aria-label'), 'Unmute microphone');
    await poll(async () => (await tileState(a, `#tile-${idB}`))?.muted === 'true', { message: 'Bob muted on Ada\'s page' });

    // Open the chat as an overlay, send a line with Enter, close it with Escape.
    await b.focus('#btn-chat');
    await b.keyboard.press('Enter');
    await poll(() => b.evaluate(() => document.activeElement?.id === 'chat-input'), { message: 'focus in the chat input' });
    await b.keyboard.type('typed on a phone');
    await b.keyboard.press('Enter');
    await poll(async () => (await a.locator('#chat-log li[data-from] .chat-text').allTextContents()).includes('typed on a phone'), { message: 'the line on Ada\'s page' });
    assert.ok((await overflow()) <= 0, 'no horizontal overflow with the chat open');
    await b.keyboard.press('Escape');
    await poll(() => b.isHidden('#sidebar'), { message: 'the chat closed by Escape' });
  }));
