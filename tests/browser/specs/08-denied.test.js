// A page whose camera is refused still joins, sees the others, and says why it has no video.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, openPage, callUrl, waitJoined, waitMedia, tileState, poll, COLORS } from '../lib/harness.js';

test('a page without camera permission joins with a banner and still sees the others', { timeout: 90000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const a = await openPage(browser, callUrl(server, 'denied', 'Ada'), { color: COLORS.red, label: 'Ada' });
    const idA = await waitJoined(a);
    const b = await openPage(browser, callUrl(server, 'denied', 'Bob'), { denyCamera: true });
    const idB = await waitJoined(b);

    const banner = b.locator('#banners [data-banner="media"]');
    await poll(() => banner.isVisible(), { message: 'the camera banner' });
    assert.equal(await banner.getAttribute('data-camera'), 'blocked');
    assert.equal(await banner.getAttribute('data-microphone'), 'ok');
    assert.match(await banner.textContent(), /camera/i);

    // Bob sees and hears Ada.
    await waitMedia(b, { video: [idA], audio: [idA], timeout: 30000 });
    // Ada sees Bob as an avatar (no camera), and hears him.
    await poll(async () => (await tileState(a, `#tile-${idB}`))?.cameraOff === 'true', { message: 'Bob without camera on Ada\'s page' });
    await waitMedia(a, { audio: [idB], timeout: 30000 });
    assert.equal((await tileState(b, '#tile-self')).cameraOff, 'true');
    assert.equal(await b.getAttribute('#btn-camera', 'aria-pressed'), 'true');
  }));
