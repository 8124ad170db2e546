// WHIP ingest (issue 16) with clients Chorus did not write, watched by a Chorus page in
// the room, which must decode the publisher's video and play its audio:
//
// 1. npm `whip-whep`'s WHIPClient in a Chromium page served from another origin (a second
//    HTTP server on another port), allowed by an exact `http.allowed_origins` entry; the
//    same page from an origin not listed is refused by CORS. Its DELETE ends the
//    participant.
// 2. aiortc (PyPI, tests/.venv) publishing a generated red picture and a 440 Hz tone with a
//    plain HTTP POST (tests/whip/publish.py), offering only AES-CM SRTP as ffmpeg's WHIP
//    muxer does.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { scenario, openPage, callUrl, waitJoined, inbound, tileColor, colorClose, poll, COLORS, REPO } from '../lib/harness.js';
import { serveOtherOrigin } from '../fixtures/broadcast/serve.js';

/** The id of the participant named `name` on the page's client, once it is there. */
function participantNamed(page, name) {
  return poll(
    () => page.evaluate((n) => [...window.chorus.client.participants.values()].find((p) => p.name === n)?.id ?? null, name),
    { timeout: 20000, message: `${name} in the room` },
  );
}

/**
 * Waits until `page` decodes `frames` more video frames of participant `id` and its audio
 * of `id` carries energy that grows (it plays, and it is not silence).
 */
async function waitDecodedAndAudible(page, id, frames = 20) {
  let first = null;
  await poll(
    async () => {
      const stats = await inbound(page);
      const v = stats.find((s) => s.participantId === id && s.kind === 'video');
      if (!v || v.framesDecoded <= 0) return false;
      first ??= v.framesDecoded;
      return v.framesDecoded >= first + frames;
    },
    { timeout: 25000, message: `decoded video of participant ${id}` },
  );
  const energy = async () => (await inbound(page)).find((s) => s.participantId === id && s.kind === 'audio')?.totalAudioEnergy ?? 0;
  const start = await poll(async () => { const e = await energy(); return e > 0 ? e : null; }, { timeout: 20000, message: `audio energy from participant ${id}` });
  await poll(async () => (await energy()) > start, { timeout: 10000, message: `growing audio energy from participant ${id}` });
}

test('an npm WHIP client on another origin publishes into a room; a Chorus page decodes and hears it', { timeout: 120000 }, async (t) => {
  const other = await serveOtherOrigin();
  try {
    await scenario(t, async ({ server, browser }) => {
      const viewer = await openPage(browser, callUrl(server, 'stage', 'Viewer'), { color: COLORS.green, label: 'Viewer' });
      await waitJoined(viewer);

      const whipUrl = `${server.url}/whip/stage?name=npm-whip`;
      const page = await browser.context.newPage();
      browser.pages.push(page);
      page.logs = [];
      page.on('console', (m) => page.logs.push(`[${m.type()}] ${m.text()}`));
      await page.goto(`${other.origin}/whip.html?whip=${encodeURIComponent(whipUrl)}`);
      await page.evaluate(() => window.startWhip());
      await poll(() => page.evaluate(() => (window.whip.error ? `error: ${window.whip.error}` : window.whip.pc?.connectionState === 'connected')), {
        timeout: 20000,
        message: 'the WHIP page to connect',
      }).then((r) => assert.equal(r, true, String(r)));

      const id = await participantNamed(viewer, 'npm-whip');
      await waitDecodedAndAudible(viewer, id);

      // The same page from an origin that http.allowed_origins does not list: the
      // preflight is refused, so the browser never sends the offer.
      const port = new URL(other.origin).port;
      const refused = await browser.context.newPage();
      browser.pages.push(refused);
      await refused.goto(`http://localhost:${port}/whip.html?whip=${encodeURIComponent(`${server.url}/whip/stage?name=intruder`)}`);
      await refused.evaluate(() => window.startWhip());
      const outcome = await poll(() => refused.evaluate(() => (window.whip.state === 'error' ? window.whip.error : window.whip.pc?.connectionState === 'connected' ? 'CONNECTED' : null)), {
        timeout: 15000,
        message: 'the unlisted origin to be refused',
      });
      assert.notEqual(outcome, 'CONNECTED');
      assert.equal(
        await viewer.evaluate(() => [...window.chorus.client.participants.values()].some((p) => p.name === 'intruder')),
        false,
      );

      // The client's stop() DELETEs the session: the participant leaves the room.
      await page.evaluate(() => window.stopWhip());
      await poll(() => viewer.evaluate((pid) => !window.chorus.client.participants.has(pid), id), { message: 'the WHIP participant to leave' });
    }, { config: `[http]\nallowed_origins = ["${other.origin}"]\n` });
  } finally {
    await other.close();
  }
});

test('aiortc publishes a generated picture and tone over WHIP with AES-CM; a Chorus page decodes and hears it', { timeout: 120000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const python = path.join(REPO, 'tests/.venv/bin/python');
    assert.ok(existsSync(python), `no Python venv at ${python}: tests/run-all.sh installs aiortc==1.16.0 into it`);
    const viewer = await openPage(browser, callUrl(server, 'stage', 'Viewer'), { color: COLORS.green, label: 'Viewer' });
    await waitJoined(viewer);

    const child = spawn(python, [path.join(REPO, 'tests/whip/publish.py'), `${server.url}/whip/stage?name=aiortc`, '--srtp', 'aes-cm', '--color', '200,40,40'], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const events = [];
    const exited = new Promise((resolve) => child.on('exit', resolve));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      try {
        events.push(JSON.parse(line));
      } catch {
        events.push({ event: 'garbage', line });
      }
    });
    const event = (name) => poll(() => events.find((e) => e.event === name || e.event === 'failed'), { timeout: 20000, message: `aiortc's ${name}` });
    try {
      const posted = await event('posted');
      assert.equal(posted.status, 201, JSON.stringify(posted));
      assert.equal(posted.contentType, 'application/sdp');
      assert.match(posted.location, /^\/whip\/stage\/\w{16,}$/);
      assert.equal((await event('connected')).event, 'connected');

      const id = await participantNamed(viewer, 'aiortc');
      await waitDecodedAndAudible(viewer, id);
      // What is decoded is aiortc's picture: red.
      await poll(async () => colorClose(await tileColor(viewer, `#tile-${id}`), COLORS.red, 60), { message: 'the red picture in the aiortc tile' });

      child.stdin.end(); // it DELETEs its session
      const deleted = await event('deleted');
      assert.equal(deleted.status, 200, JSON.stringify(deleted));
      await poll(() => viewer.evaluate((pid) => !window.chorus.client.participants.has(pid), id), { message: 'the aiortc participant to leave' });
    } finally {
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    }
  }));
