// Three people join one room by the invite link; each sees and decodes the two others,
// receives their audio, and each tile shows the right person's video.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync } from 'node:fs';
import path from 'node:path';
import { scenario, openPage, waitJoined, waitMedia, tileColor, colorClose, poll, tileState, COLORS, ARTIFACTS, REPO, RES } from '../lib/harness.js';

test('three pages joined by the invite link see and hear each other', { timeout: 120000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    // Ada starts a call from the lobby.
    const a = await openPage(browser, `${server.url}/?res=${RES}`, { color: COLORS.red, label: 'Ada' });
    await a.fill('#name-input', 'Ada Lovelace');
    await a.fill('#room-input', 'design-review');
    await a.click('#join-button');
    const idA = await waitJoined(a);
    const invite = await a.getAttribute('#btn-invite', 'data-invite-link');
    assert.equal(invite, `${server.url}/?room=design-review`);

    // Bob and Grace open the invite link: they are asked for a name only.
    const people = [
      ['Bob Builder', COLORS.blue],
      ['Grace Hopper', COLORS.green],
    ];
    const pages = [a];
    const ids = [idA];
    for (const [name, color] of people) {
      const p = await openPage(browser, `${invite}&res=${RES}`, { color, label: name.split(' ')[0] });
      assert.equal(await p.inputValue('#room-input'), 'design-review');
      await p.fill('#name-input', name);
      await p.keyboard.press('Enter');
      ids.push(await waitJoined(p));
      pages.push(p);
    }
    const colors = [COLORS.red, COLORS.blue, COLORS.green];
    const names = ['Ada Lovelace', 'Bob Builder', 'Grace Hopper'];

    for (const [i, page] of pages.entries()) {
      const others = ids.filter((_, j) => j !== i);
      await waitMedia(page, { video: others, audio: others, timeout: 30000 });
      for (const [j, id] of ids.entries()) {
        if (j === i) continue;
        const tile = await tileState(page, `#tile-${id}`);
        assert.equal(tile.label, names[j]);
        assert.equal(tile.cameraOff, 'false');
        // The tile shows that person's camera, not someone else's.
        await poll(async () => colorClose(await tileColor(page, `#tile-${id}`), colors[j]), { timeout: 10000, message: `${names[i]} sees ${names[j]}'s colour` });
      }
      assert.equal(await page.locator('#grid .tile').count(), 3);
      // Every remote audio track has a playing element.
      await poll(() => page.evaluate(() => [...document.querySelectorAll('#audio-sink audio')].filter((el) => !el.paused).length === 2), { message: 'two playing audio elements' });
    }

    // The server forwards no audio-level header extension: the levels come from the audio
    // each browser decodes. Both remote microphones register on Ada's page.
    await a.evaluate(() => {
      window.loudest = {};
      window.chorus.client.on('audioLevels', ({ levels }) => {
        for (const [id, level] of Object.entries(levels)) window.loudest[id] = Math.max(window.loudest[id] ?? 0, level);
      });
    });
    await poll(() => a.evaluate((remote) => remote.every((id) => (window.loudest[id] ?? 0) > 0.01), [ids[1], ids[2]]), { timeout: 15000, message: 'audio levels of both remote microphones' });

    // The fake microphones only beep (20 ms every half second): the server's speaker
    // election takes none of them for speech, so nobody is highlighted (18-audio has a
    // speaker, with a tone).
    assert.equal(await a.evaluate(() => document.querySelectorAll('#grid .tile[data-speaking="true"]').length), 0, 'no speaker for beeps');

    // A picture of the call as Ada sees it, with a chat line and a muted microphone.
    await pages[1].fill('#chat-input', 'Morning! Mockups are in the shared folder.');
    await pages[1].press('#chat-input', 'Enter');
    await pages[2].click('#btn-mic');
    await poll(async () => (await a.locator('#chat-log li[data-from]').count()) === 1, { message: 'chat line on Ada\'s page' });
    await poll(async () => (await tileState(a, `#tile-${ids[2]}`)).muted === 'true', { message: 'Grace muted on Ada\'s page' });
    await a.bringToFront();
    await poll(async () => (await tileColor(a, `#tile-${ids[2]}`)) !== null, { message: 'frames for the screenshot' });
    const shot = path.join(ARTIFACTS, 'call.png');
    await a.screenshot({ path: shot });
    if (process.env.CHORUS_UPDATE_SCREENSHOT) copyFileSync(shot, path.join(REPO, 'docs/screenshot.png'));
  }));
