// WHEP playback (issue 16): a Chromium page on another origin plays a room with npm
// `whip-whep`'s WHEPClient (recvonly audio and video: the client offers, Chorus answers).
// Two participants publish: Ada, a Chorus page with a red camera, and aiortc over WHIP
// with a blue picture and a tone. Three players: one pinned to aiortc by name, which
// must show blue; one pinned to Ada by participant id, which must show red; one unpinned,
// which must play someone. Each player's video element plays decoded frames and its audio
// arrives. DELETE (the client's stop()) ends a player.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { scenario, openPage, callUrl, waitJoined, colorClose, poll, COLORS, REPO } from '../lib/harness.js';
import { serveOtherOrigin } from '../fixtures/broadcast/serve.js';

/** Opens a WHEP player page for `url` and starts it. */
async function player(browser, origin, url) {
  const page = await browser.context.newPage();
  browser.pages.push(page);
  page.logs = [];
  page.on('console', (m) => page.logs.push(`[${m.type()}] ${m.text()}`));
  await page.goto(`${origin}/whep.html?whep=${encodeURIComponent(url)}`);
  await page.evaluate(() => window.startWhep());
  return page;
}

/** The player's decoded video frames, its video size and audio packets. */
function playerStats(page) {
  return page.evaluate(async () => {
    const out = { frames: 0, audioPackets: 0, error: window.whep.error, state: window.whep.pc?.connectionState };
    if (!window.whep.pc) return out;
    (await window.whep.pc.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      if (s.kind === 'video') out.frames = s.framesDecoded ?? 0;
      if (s.kind === 'audio') out.audioPackets = s.packetsReceived ?? 0;
    });
    const v = document.getElementById('player');
    out.width = v.videoWidth;
    out.time = v.currentTime;
    return out;
  });
}

/** Waits until the player decodes `frames` more frames, its element plays and audio comes. */
async function waitPlaying(page, frames = 20) {
  let first = null;
  let firstTime = null;
  return poll(
    async () => {
      const s = await playerStats(page);
      if (s.error) throw new Error(`player error: ${s.error}`);
      if (s.frames <= 0 || !s.width) return false;
      first ??= s.frames;
      firstTime ??= s.time;
      return s.frames >= first + frames && s.time > firstTime && s.audioPackets > 0 ? s : false;
    },
    { timeout: 25000, message: 'the WHEP player to play decoded video and receive audio' },
  );
}

/** The average colour of the middle-left of the player's picture. */
function playerColor(page) {
  return page.evaluate(() => {
    const v = document.getElementById('player');
    if (!v.videoWidth) return null;
    const c = document.createElement('canvas');
    c.width = v.videoWidth;
    c.height = v.videoHeight;
    const g = c.getContext('2d');
    g.drawImage(v, 0, 0);
    const d = g.getImageData(Math.floor(c.width * 0.05), Math.floor(c.height * 0.1), Math.max(1, Math.floor(c.width * 0.1)), Math.max(1, Math.floor(c.height * 0.2))).data;
    const sum = [0, 0, 0];
    for (let i = 0; i < d.length; i += 4) for (let k = 0; k < 3; k++) sum[k] += d[i + k];
    return sum.map((s) => Math.round(s / (d.length / 4)));
  });
}

test('npm WHEP players on another origin play a room: pinned by name, by id, and unpinned', { timeout: 150000 }, async (t) => {
  const other = await serveOtherOrigin();
  let child;
  try {
    await scenario(t, async ({ server, browser }) => {
      const python = path.join(REPO, 'tests/.venv/bin/python');
      assert.ok(existsSync(python), `no Python venv at ${python}: tests/run-all.sh installs aiortc==1.16.0 into it`);
      const ada = await openPage(browser, callUrl(server, 'show', 'Ada'), { color: COLORS.red, label: 'Ada' });
      const adaId = await waitJoined(ada);

      child = spawn(python, [path.join(REPO, 'tests/whip/publish.py'), `${server.url}/whip/show?name=aiortc`, '--color', '40,70,200'], {
        stdio: ['pipe', 'pipe', 'inherit'],
      });
      const events = [];
      readline.createInterface({ input: child.stdout }).on('line', (line) => events.push(JSON.parse(line)));
      await poll(() => events.find((e) => e.event === 'connected' || e.event === 'failed'), { timeout: 20000, message: 'aiortc to publish' })
        .then((e) => assert.equal(e.event, 'connected', JSON.stringify(events)));

      const base = `${server.url}/whep/show`;
      const blue = await player(browser, other.origin, `${base}?participant=aiortc`);
      const red = await player(browser, other.origin, `${base}?participant=${adaId}`);
      const any = await player(browser, other.origin, base);

      for (const page of [blue, red, any]) await waitPlaying(page);
      // Chromium negotiated transport-cc with the server's answer: layer choice runs on
      // its downlink estimate, as for the web app's subscribers.
      assert.ok(await any.evaluate(() => window.whep.pc.remoteDescription.sdp.includes('transport-wide-cc')), 'transport-cc in the answer');
      await poll(async () => colorClose(await playerColor(blue), COLORS.blue, 60), { message: 'aiortc\'s blue in the player pinned to it by name' });
      await poll(async () => colorClose(await playerColor(red), COLORS.red, 60), { message: 'Ada\'s red in the player pinned to her by id' });

      // The viewers are hidden: Ada's page lists only aiortc.
      const names = await ada.evaluate(() => [...window.chorus.client.participants.values()].map((p) => p.name));
      assert.ok(names.includes('aiortc') && !names.includes('WHEP viewer'), `Ada's page lists ${names}`);

      // aiortc leaves: the player pinned to it falls back to Ada, on the same stream.
      child.stdin.end();
      await poll(() => events.find((e) => e.event === 'deleted'), { timeout: 15000, message: 'aiortc to DELETE its session' });
      await poll(async () => colorClose(await playerColor(blue), COLORS.red, 60), { timeout: 20000, message: 'the pinned player to fall back to Ada' });
      const after = await playerStats(blue);
      await poll(async () => (await playerStats(blue)).frames > after.frames + 10, { message: 'the fallen-back player to go on decoding' });

      // stop() DELETEs the session.
      const statsBefore = await (await fetch(`${server.url}/api/stats`)).json();
      await any.evaluate(() => window.stopWhep());
      await poll(async () => (await (await fetch(`${server.url}/api/stats`)).json()).peers < statsBefore.peers, { message: 'the stopped viewer to leave' });
    }, { config: `[http]\nallowed_origins = ["${other.origin}"]\n` });
  } finally {
    child?.kill('SIGTERM');
    await other.close();
  }
});
