// What users see when things go wrong: a full room, a dropped connection (the client
// rejoins by itself), the server shutting down, the server unreachable from the lobby.
// Also device switching without renegotiation.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, openPage, callUrl, waitJoined, waitMedia, framesFrom, tileColor, colorClose, poll, RES, COLORS } from '../lib/harness.js';

const bannerVisible = (page, id) => page.locator(`#banners [data-banner="${id}"]`).isVisible();
const offersSent = (page) => page.logs.filter((l) => l.includes('-> publishOffer')).length;

test('a full room says so and leaves the page in the lobby', { timeout: 60000 }, (t) =>
  scenario(
    t,
    async ({ server, browser }) => {
      const a = await openPage(browser, callUrl(server, 'tiny', 'Ada'));
      await waitJoined(a);
      // Alone in a room, the indicator still says the media is connected.
      await poll(async () => (await a.textContent('#conn-text')) === 'Connected', { message: 'Connected while alone' });
      const b = await openPage(browser, callUrl(server, 'tiny', 'Bob'));
      await poll(() => bannerVisible(b, 'room-full'), { message: 'the room-full banner' });
      assert.equal(await b.evaluate(() => document.body.dataset.view), 'lobby');
      assert.equal(await b.inputValue('#room-input'), 'tiny');
      // Its camera is released again.
      assert.equal(await b.evaluate(() => window.chorus.client.local.stream), null);
    },
    { config: '[limits]\nmax_participants_per_room = 1\n' },
  ));

test('switching the camera keeps the call going without renegotiation; a dropped connection rejoins', { timeout: 90000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const a = await openPage(browser, callUrl(server, 'resilient', 'Ada'), { color: COLORS.red, label: 'Ada' });
    const idA = await waitJoined(a);
    const b = await openPage(browser, callUrl(server, 'resilient', 'Bob'), { color: COLORS.blue, label: 'Bob' });
    const idB = await waitJoined(b);
    await waitMedia(b, { video: [idA], audio: [idA] });

    // Device switch from the settings dialog.
    const offers = offersSent(a);
    const oldTrack = await a.evaluate(() => window.chorus.client.local.tracks.camera.id);
    await a.click('#btn-settings');
    await poll(() => a.isVisible('#settings-dialog'), { message: 'the devices dialog' });
    const cams = await a.$$eval('#camera-select option', (os) => os.map((o) => o.value));
    assert.ok(cams.length >= 1, 'a camera is listed');
    await a.selectOption('#camera-select', cams.at(-1));
    await poll(async () => (await a.evaluate(() => window.chorus.client.local.tracks.camera?.id)) !== oldTrack, { message: 'a new camera track' });
    await a.click('#settings-dialog button[value="close"]');
    const before = await framesFrom(b, idA);
    await poll(async () => (await framesFrom(b, idA)) > before + 10, { message: 'video after the switch' });
    assert.equal(offersSent(a), offers, 'no publisher renegotiation for a device switch');
    assert.ok(colorClose(await tileColor(b, `#tile-${idA}`), COLORS.red));

    // The WebSocket drops: Ada's page rejoins by itself with a new id.
    await a.evaluate(() => {
      window.__states = [];
      window.chorus.client.on('connectionState', (e) => window.__states.push(e.state));
      window.chorus.client._socket.close();
    });
    const idA2 = await poll(
      () => a.evaluate((old) => {
        const c = window.chorus.client;
        return c.connectionState === 'joined' && c.participantId !== old ? c.participantId : null;
      }, idA),
      { message: 'the rejoin under a new id' },
    );
    assert.ok((await a.evaluate(() => window.__states)).includes('reconnecting'));
    assert.equal(await bannerVisible(a, 'reconnecting'), false);
    await poll(async () => (await b.locator(`#tile-${idA}`).count()) === 0 && (await b.locator(`#tile-${idA2}`).count()) === 1, { message: 'Bob sees the new Ada only' });
    await waitMedia(b, { video: [idA2], audio: [idA2] });
    await waitMedia(a, { video: [idB], audio: [idB] });
  }));

test('server shutdown and an unreachable server show banners', { timeout: 60000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const a = await openPage(browser, callUrl(server, 'bye', 'Ada'));
    await waitJoined(a);
    const lobby = await openPage(browser, `${server.url}/?res=${RES}`);
    await poll(async () => (await lobby.locator('#room-list li[data-room="bye"]').count()) === 1, { message: 'the room in the lobby' });
    await server.stop();
    await poll(() => bannerVisible(a, 'server-shutdown'), { message: 'the shutdown banner' });
    await poll(async () => (await a.getAttribute('#conn-indicator', 'data-state')) === 'reconnecting', { message: 'reconnecting indicator' });
    assert.match(await a.textContent('#conn-text'), /Reconnecting/);
    await poll(() => bannerVisible(lobby, 'unreachable'), { message: 'the unreachable banner in the lobby' });
  }, { config: '[shutdown]\ngrace_secs = 1\n' }));
