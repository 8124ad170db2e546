// Shared machinery of the browser tests: a real chorus server per test, headless Debian
// chromium through playwright-core, per-page fake media, and polling with deadlines.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, mkdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const BROWSER_DIR = path.resolve(here, '..');
export const REPO = path.resolve(BROWSER_DIR, '../..');
export const ARTIFACTS = path.join(REPO, 'tests/artifacts');
export const CHORUS_BIN = process.env.CHORUS_BIN
  ? path.resolve(BROWSER_DIR, process.env.CHORUS_BIN)
  : path.resolve(BROWSER_DIR, '../../target/debug/chorus');
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
/** Capture size for every page: small, so that 3–4 pages fit on 2 cores. */
export const RES = process.env.CHORUS_TEST_RES ?? '320x180';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `fn` until it returns a truthy value; returns that value. Throws after `timeout`
 * ms with `message` and the last value or error seen.
 */
export async function poll(fn, { timeout = 15000, interval = 200, message = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeout} ms waiting for ${message} (last: ${detail})`);
    }
    await sleep(interval);
  }
}

/**
 * Starts `chorus` on ephemeral loopback ports. Resolves once it printed its ready line.
 * `config` is the TOML text of its config file. `ip` is the address it listens on (HTTP,
 * media UDP and ICE-TCP, ephemeral ports) and announces; `wrap` is a command prefix that
 * runs it, such as `['ip', 'netns', 'exec', NS]` (it must exec, so the child is chorus).
 * `port` fixes the HTTP port (a cluster node must know its own URL before it starts).
 */
export async function startServer({ config = '', name = 'server', ip = '127.0.0.1', wrap = [], port = 0 } = {}) {
  if (!existsSync(CHORUS_BIN)) throw new Error(`no chorus binary at ${CHORUS_BIN} (cargo build -p chorus, or set CHORUS_BIN)`);
  const dir = mkdtempSync(path.join(tmpdir(), 'chorus-test-'));
  const cfg = path.join(dir, 'chorus.toml');
  writeFileSync(cfg, config);
  const args = ['--config', cfg, '--http', `${ip}:${port}`, '--udp', `${ip}:0`, '--announce', ip, '--frontend', path.join(REPO, 'frontend')];
  const cmd = [...wrap, CHORUS_BIN, ...args];
  const child = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: { RUST_LOG: process.env.RUST_LOG ?? 'info', ...process.env } });
  let stdout = '';
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > 4_000_000) stderr = stderr.slice(-2_000_000);
  });
  child.stdout.setEncoding('utf8');
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const ready = new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => {
      stdout += d;
      const m = /chorus ready http=(\S+) udp=(\S+)/.exec(stdout);
      if (m) resolve({ http: m[1], udp: m[2] });
    });
    exited.then(({ code, signal }) => reject(new Error(`chorus exited before ready (code ${code}, signal ${signal}):\n${stderr.slice(-3000)}`)));
  });
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`chorus not ready within 20 s:\n${stderr.slice(-3000)}`)), 20000);
  });
  let addr;
  try {
    addr = await Promise.race([ready, timeout]);
  } catch (err) {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return {
    name,
    url: `http://${addr.http}`,
    http: addr.http,
    udp: addr.udp,
    stderr: () => stderr,
    child,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        // SIGTERM drains (up to [shutdown] grace_secs while participants stay); a second
        // one ends the process at once.
        child.kill('SIGTERM');
        const again = setTimeout(() => child.kill('SIGTERM'), 3000);
        const t = setTimeout(() => child.kill('SIGKILL'), 6000);
        await exited;
        clearTimeout(again);
        clearTimeout(t);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--autoplay-policy=no-user-gesture-required',
];

/** One headless chromium (a persistent context in a fresh profile). */
export async function launchBrowser({ permissions = ['camera', 'microphone'], viewport = { width: 1280, height: 720 }, args = [], executablePath = CHROMIUM } = {}) {
  const profile = mkdtempSync(path.join(tmpdir(), 'chorus-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    permissions,
    viewport,
    args: [...CHROMIUM_ARGS, ...args],
  });
  // The persistent context opens one blank page; keep it out of the way.
  const blank = context.pages()[0];
  return {
    context,
    pages: [],
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
      void blank;
    },
  };
}

/**
 * In-page script (runs before the app): gives this page's camera a distinct solid colour
 * with a moving bar, so tiles can be told apart, and optionally refuses the camera or
 * fakes screen capture. Runs the real getUserMedia first so that the browser's media
 * permission logic (which also unlocks loopback ICE candidates) is exercised as usual.
 */
function fakeMediaInit({ color, label, denyCamera, screenColor }) {
  const md = navigator.mediaDevices;
  const real = md.getUserMedia.bind(md);
  const canvasTrack = (rgb, text, w, h, fps) => {
    const c = document.createElement('canvas');
    c.width = w;
    c.height = h;
    const g = c.getContext('2d');
    let x = 0;
    const draw = () => {
      g.fillStyle = `rgb(${rgb.join(',')})`;
      g.fillRect(0, 0, w, h);
      g.fillStyle = 'rgba(255,255,255,0.85)';
      g.fillRect(x, h * 0.75, w / 8, h * 0.2);
      x = (x + w / 40) % w;
      g.fillStyle = '#fff';
      g.font = `bold ${Math.round(h / 5)}px sans-serif`;
      g.textAlign = 'center';
      g.fillText(text, w / 2, h / 2);
    };
    draw();
    const timer = setInterval(draw, 1000 / fps);
    const track = c.captureStream(fps).getVideoTracks()[0];
    const stop = track.stop.bind(track);
    track.stop = () => {
      clearInterval(timer);
      stop();
    };
    return track;
  };
  window.__fakeMedia = { color, label, screenTracks: [] };
  md.getUserMedia = async (constraints = {}) => {
    if (denyCamera && constraints.video) throw new DOMException('Permission denied', 'NotAllowedError');
    const stream = await real(constraints);
    if (!color || !constraints.video) return stream;
    for (const t of stream.getVideoTracks()) {
      stream.removeTrack(t);
      t.stop();
      stream.addTrack(canvasTrack(color, label, 320, 180, 15));
    }
    return stream;
  };
  md.getDisplayMedia = async () => {
    const track = canvasTrack(screenColor ?? [30, 30, 120], 'SCREEN', 640, 360, 10);
    window.__fakeMedia.screenTracks.push(track);
    return new MediaStream([track]);
  };
}

export const COLORS = {
  red: [200, 40, 40],
  green: [40, 160, 60],
  blue: [40, 70, 200],
  yellow: [210, 180, 30],
};

/** Opens a page at `url` with fake media; keeps its console for failure reports. */
export async function openPage(browser, url, { color, label, denyCamera = false, screenColor } = {}) {
  const page = await browser.context.newPage();
  page.logs = [];
  page.on('console', (m) => page.logs.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => page.logs.push(`[pageerror] ${e.message}`));
  await page.addInitScript(fakeMediaInit, { color: color ?? null, label: label ?? '', denyCamera, screenColor: screenColor ?? null });
  await page.goto(url);
  browser.pages.push(page);
  return page;
}

/** `http://host/?room=..&name=..&res=..` */
export function callUrl(server, room, name) {
  const q = new URLSearchParams({ room, res: RES });
  if (name) q.set('name', name);
  return `${server.url}/?${q}`;
}

/** Waits until the page shows the call view, joined. Returns its participant id. */
export async function waitJoined(page, timeout = 15000) {
  return poll(
    () => page.evaluate(() => (window.chorus?.client.connectionState === 'joined' && document.body.dataset.view === 'call' ? window.chorus.client.participantId : null)),
    { timeout, message: 'the page to join' },
  );
}

/** Per remote track counters (framesDecoded, packetsReceived, ...) from the page's client. */
export function inbound(page) {
  return page.evaluate(() => window.chorus.client.inboundStats());
}

/**
 * Waits until `page` decodes video from each participant in `ids` (framesDecoded grows by
 * `frames` after first being seen) and receives audio from each in `audioFrom`.
 */
export async function waitMedia(page, { video = [], audio = [], source = 'camera', frames = 10, timeout = 20000 } = {}) {
  const first = new Map();
  await poll(
    async () => {
      const stats = await inbound(page);
      for (const id of video) {
        const s = stats.find((x) => x.participantId === id && x.kind === 'video' && x.source === source);
        if (!s || s.framesDecoded <= 0) return false;
        if (!first.has(id)) first.set(id, s.framesDecoded);
        if (s.framesDecoded < first.get(id) + frames) return false;
      }
      for (const id of audio) {
        const s = stats.find((x) => x.participantId === id && x.kind === 'audio');
        if (!s || s.packetsReceived <= 0) return false;
      }
      return true;
    },
    { timeout, message: `media on the page of ${await page.evaluate(() => window.chorus.client.name)}: video ${source} from [${video}], audio from [${audio}]` },
  );
}

/** framesDecoded of one participant's video of `source` on `page` (0 if none). */
export async function framesFrom(page, id, source = 'camera') {
  const s = (await inbound(page)).find((x) => x.participantId === id && x.kind === 'video' && x.source === source);
  return s?.framesDecoded ?? 0;
}

/** The average colour of the middle-left of a tile's video, as drawn into a canvas. */
export function tileColor(page, selector) {
  return page.evaluate((sel) => {
    const v = document.querySelector(`${sel} video`);
    if (!v || !v.videoWidth) return null;
    const c = document.createElement('canvas');
    c.width = v.videoWidth;
    c.height = v.videoHeight;
    const g = c.getContext('2d');
    g.drawImage(v, 0, 0);
    const d = g.getImageData(Math.floor(c.width * 0.05), Math.floor(c.height * 0.1), Math.max(1, Math.floor(c.width * 0.1)), Math.max(1, Math.floor(c.height * 0.2))).data;
    const sum = [0, 0, 0];
    for (let i = 0; i < d.length; i += 4) for (let k = 0; k < 3; k++) sum[k] += d[i + k];
    const n = d.length / 4;
    return sum.map((s) => Math.round(s / n));
  }, selector);
}

export function colorClose(a, b, tol = 45) {
  return a && b && a.every((v, i) => Math.abs(v - b[i]) <= tol);
}

/** The attributes of a tile, or null. */
export function tileState(page, selector) {
  return page.evaluate((sel) => {
    const t = document.querySelector(sel);
    return t ? { ...t.dataset, label: t.querySelector('.name')?.textContent ?? null } : null;
  }, selector);
}

/** Sender and receiver RTP counters of a page, as one line per stream (for failure reports). */
async function rtpStats(page) {
  if (page.isClosed()) return 'closed';
  return page.evaluate(async () => {
    const c = window.chorus?.client;
    const lines = [`participant ${c?.participantId} state ${c?.connectionState} media ${c?.mediaState}`];
    for (const [role, pc] of [['pub', c?._pub], ['sub', c?._sub]]) {
      if (!pc) continue;
      lines.push(`${role}: ${pc.connectionState} ${pc.signalingState}`);
      const r = await pc.getStats();
      r.forEach((s) => {
        if (s.type !== 'outbound-rtp' && s.type !== 'inbound-rtp') return;
        const keys = ['mid', 'rid', 'active', 'kind', 'ssrc', 'frameWidth', 'bytesSent', 'bytesReceived', 'packetsSent', 'packetsReceived', 'framesEncoded', 'framesDecoded', 'keyFramesEncoded', 'keyFramesDecoded', 'pliCount', 'firCount', 'nackCount'];
        lines.push(`  ${s.type} ${keys.filter((k) => s[k] !== undefined).map((k) => `${k}=${s[k]}`).join(' ')}`);
      });
    }
    return lines.join('\n');
  });
}

/**
 * Writes the failure report of test `t` (each page's console, RTP counters and screenshot,
 * the server's stderr) to the artifacts and stderr.
 */
export async function reportFailure(t, err, { server, pages = [] }) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const slug = t.name.replace(/[^a-z0-9]+/gi, '-').toLowerCase().slice(0, 60);
  const report = [`=== ${t.name} failed: ${err.stack ?? err}`];
  for (const [i, page] of pages.entries()) {
    report.push(`--- page ${i} (${page.url()}) console:`, ...(page.logs ?? []).slice(-150));
    report.push(`--- page ${i} rtp stats: ${await rtpStats(page).catch((e) => e.message)}`);
    await page.screenshot({ path: path.join(ARTIFACTS, `${slug}-page${i}.png`) }).catch(() => {});
  }
  report.push('--- server stderr (tail):', server.stderr().slice(-6000));
  writeFileSync(path.join(ARTIFACTS, `${slug}-failure.log`), `${report.join('\n')}\n${server.stderr()}`);
  console.error(report.join('\n'));
}

/** Runs `body` with a fresh server and browser; on failure attaches logs and screenshots. */
export async function scenario(t, body, { config = '', browserOptions } = {}) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const server = await startServer({ config });
  let browser;
  try {
    browser = await launchBrowser(browserOptions);
    await body({ server, browser });
  } catch (err) {
    await reportFailure(t, err, { server, pages: browser?.pages ?? [] });
    throw err;
  } finally {
    await browser?.close();
    await server.stop();
  }
}
