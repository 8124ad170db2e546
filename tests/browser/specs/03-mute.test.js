// Mic mute and camera off on one page show on the two others; camera back on resumes video.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, openPage, callUrl, waitJoined, waitMedia, framesFrom, tileState, poll, COLORS } from '../lib/harness.js';

test('mute and camera off show everywhere, and video resumes when the camera is back', { timeout: 120000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const spec = [['Ada', COLORS.red], ['Bob', COLORS.blue], ['Cy', COLORS.green]];
    const pages = [];
    const ids = [];
    for (const [name, color] of spec) {
      const p = await openPage(browser, callUrl(server, 'mute', name), { color, label: name });
      ids.push(await waitJoined(p));
      pages.push(p);
    }
    const [a, b, c] = pages;
    const [idA, idB, idC] = ids;
    await waitMedia(b, { video: [idA, idC], audio: [idA, idC], timeout: 30000 });
    await waitMedia(c, { video: [idA, idB], audio: [idA, idB], timeout: 30000 });

    // Ada mutes her microphone.
    await a.click('#btn-mic');
    assert.equal(await a.getAttribute('#btn-mic', 'aria-pressed'), 'true');
    assert.equal((await tileState(a, '#tile-self')).muted, 'true');
    for (const p of [b, c]) {
      await poll(async () => (await tileState(p, `#tile-${idA}`))?.muted === 'true', { message: 'muted icon on the others' });
      assert.ok(await p.isVisible(`#tile-${idA} .mic-state`));
    }

    // Ada turns her camera off: avatar with initials everywhere.
    await a.click('#btn-camera');
    await poll(async () => (await tileState(a, '#tile-self')).cameraOff === 'true', { message: 'own camera off' });
    for (const p of [b, c]) {
      await poll(async () => (await tileState(p, `#tile-${idA}`))?.cameraOff === 'true', { message: 'camera-off on the others' });
      assert.ok(await p.isVisible(`#tile-${idA} .avatar`));
      assert.equal(await p.textContent(`#tile-${idA} .initials`), 'AD');
    }
    // No frames flow while it is off.
    const stalled = await framesFrom(b, idA);
    await poll(async () => (await framesFrom(b, idA)) === stalled, { timeout: 5000, interval: 1500, message: 'frames to stop' });

    // Camera back on and unmuted: video resumes on both others.
    await a.click('#btn-camera');
    await a.click('#btn-mic');
    for (const p of [b, c]) {
      await poll(async () => {
        const s = await tileState(p, `#tile-${idA}`);
        return s?.cameraOff === 'false' && s?.muted === 'false';
      }, { message: 'camera and mic back on the others' });
      const before = await framesFrom(p, idA);
      await poll(async () => (await framesFrom(p, idA)) > before + 10, { timeout: 20000, message: 'framesDecoded to grow again' });
    }
    // The others' tiles never changed.
    assert.equal((await tileState(b, `#tile-${idC}`)).cameraOff, 'false');
  }));
