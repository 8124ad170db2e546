// Audio (issue 13): the speaker the server elects from the publishers' audio levels, and
// Opus RED against packet loss.
//
// 1. Speaker. Three pages without cameras. Ada and Bob share a Chromium whose fake
//    microphone plays a tone WAV (made here), each page through a gain it controls; Cy's
//    Chromium plays a silent WAV. Nobody is loud at first. Ada's gain goes up: within 1 s
//    every page's `activeSpeakers` names Ada first and its call view marks Ada's tile
//    speaking. Ada goes quiet and Bob loud: within 1.5 s every page follows.
// 2. RED. Two pages, each in a Chromium of its own network namespace (lib/netlab.js): Ada
//    plays the tone, Bob listens; 10 % of the UDP packets toward Bob are dropped at random
//    (nftables). Over a window Bob's inbound audio of Ada is RED (negotiated on both of his
//    descriptions, and its packets carry two frames: Chromium's inbound-rtp codecId names
//    the Opus it decodes out of the RED blocks, not RED), and its concealed share
//    (concealedSamples / totalSamplesReceived) is measured; the same run
//    with `[audio] red = false` gives the share without RED. Both figures are printed and
//    written to tests/artifacts/audio-red.json; RED's must be the lower.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServer, launchBrowser, openPage, waitJoined, poll, reportFailure, ARTIFACTS } from '../lib/harness.js';
import { createLab } from '../lib/netlab.js';

/** How long each RED run watches the lossy link (CHORUS_RED_SECONDS to change it). */
const RED_WINDOW_S = Number(process.env.CHORUS_RED_SECONDS ?? 20);
/** 1 in LOSS_EVERY UDP packets toward Bob is dropped, at random. */
const LOSS_EVERY = 10;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A 48 kHz mono 16-bit WAV of `seconds`: a 220 Hz voice-like harmonic tone whose loudness
 * swings at 3 Hz (a steady sine is what noise suppression removes), or silence.
 */
function wav(file, { tone, seconds = 4 }) {
  const rate = 48000;
  const n = rate * seconds;
  const buf = Buffer.alloc(44 + n * 2);
  buf.write('RIFF', 0);
  buf.writeUInt32LE(36 + n * 2, 4);
  buf.write('WAVEfmt ', 8);
  buf.writeUInt32LE(16, 16);
  buf.writeUInt16LE(1, 20); // PCM
  buf.writeUInt16LE(1, 22); // mono
  buf.writeUInt32LE(rate, 24);
  buf.writeUInt32LE(rate * 2, 28);
  buf.writeUInt16LE(2, 32);
  buf.writeUInt16LE(16, 34);
  buf.write('data', 36);
  buf.writeUInt32LE(n * 2, 40);
  for (let i = 0; i < n; i++) {
    const t = i / rate;
    let v = 0;
    if (tone) {
      const envelope = 0.55 + 0.45 * Math.sin(2 * Math.PI * 3 * t);
      v = envelope * 0.25 * [1, 0.6, 0.4, 0.25].reduce((a, g, k) => a + g * Math.sin(2 * Math.PI * 220 * (k + 1) * t), 0);
    }
    buf.writeInt16LE(Math.max(-32767, Math.min(32767, Math.round(v * 32767))), 44 + i * 2);
  }
  writeFileSync(file, buf);
  return file;
}

/**
 * In-page script: no camera (audio-only pages spare the CPU), and the microphone sent
 * through a gain node that the test sets (`window.__mic.gain.value`), starting at `gain`.
 */
function micInit({ gain }) {
  const md = navigator.mediaDevices;
  const real = md.getUserMedia.bind(md);
  window.__mic = null;
  md.getUserMedia = async (constraints = {}) => {
    if (constraints.video) throw new DOMException('Permission denied', 'NotAllowedError');
    const stream = await real(constraints);
    const [track] = stream.getAudioTracks();
    if (!track) return stream;
    const ctx = new AudioContext({ sampleRate: 48000 });
    await ctx.resume();
    const g = ctx.createGain();
    g.gain.value = gain;
    const dst = ctx.createMediaStreamDestination();
    ctx.createMediaStreamSource(new MediaStream([track])).connect(g).connect(dst);
    window.__mic = { ctx, gain: g, source: track };
    return dst.stream;
  };
}

async function openAudioPage(browser, url, { gain }) {
  const page = await browser.context.newPage();
  page.logs = [];
  page.on('console', (m) => page.logs.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => page.logs.push(`[pageerror] ${e.message}`));
  await page.addInitScript(micInit, { gain });
  await page.goto(url);
  browser.pages.push(page);
  return page;
}

const pageUrl = (server, room, name) => `${server.url}/?${new URLSearchParams({ room, name, res: '320x180' })}`;

/** What `page` shows of the speaker: its client's list and the tiles marked speaking. */
function speakerView(page) {
  return page.evaluate(() => ({
    list: window.chorus.client.activeSpeakers.map((s) => s.participantId),
    tiles: [...document.querySelectorAll('.tile[data-speaking="true"]')].map((t) => Number(t.dataset.participantId)),
  }));
}

/** Waits until every page names `id` first and marks its tile; returns the time it took. */
async function everyoneNames(pages, id, within, what) {
  const start = Date.now();
  await poll(
    async () => {
      for (const p of pages) {
        const v = await speakerView(p);
        if (v.list[0] !== id || v.tiles.length !== 1 || v.tiles[0] !== id) return false;
      }
      return true;
    },
    { timeout: within, interval: 50, message: what },
  );
  return Date.now() - start;
}

/** Waits until `page` receives audio from participant `id`. */
async function waitAudio(page, id, timeout = 20000) {
  await poll(
    async () => (await page.evaluate(() => window.chorus.client.inboundStats())).some((s) => s.participantId === id && s.kind === 'audio' && s.packetsReceived > 20),
    { timeout, message: `audio from ${id}` },
  );
}

test('every page names the participant who speaks within 1 s, and follows a new speaker within 1.5 s', { timeout: 120000 }, async (t) => {
  mkdirSync(ARTIFACTS, { recursive: true });
  const dir = mkdtempSync(path.join(tmpdir(), 'chorus-audio-'));
  const tone = wav(path.join(dir, 'tone.wav'), { tone: true });
  const silence = wav(path.join(dir, 'silence.wav'), { tone: false });
  const server = await startServer();
  const browsers = [];
  const pages = [];
  try {
    const toned = await launchBrowser({ args: [`--use-file-for-fake-audio-capture=${tone}`] });
    browsers.push(toned);
    const quiet = await launchBrowser({ args: [`--use-file-for-fake-audio-capture=${silence}`] });
    browsers.push(quiet);
    const a = await openAudioPage(toned, pageUrl(server, 'speak', 'Ada'), { gain: 0 });
    const b = await openAudioPage(toned, pageUrl(server, 'speak', 'Bob'), { gain: 0 });
    const c = await openAudioPage(quiet, pageUrl(server, 'speak', 'Cy'), { gain: 1 });
    pages.push(a, b, c);
    const [idA, idB, idC] = [await waitJoined(a), await waitJoined(b), await waitJoined(c)];
    for (const [p, others] of [[a, [idB, idC]], [b, [idA, idC]], [c, [idA, idB]]]) for (const id of others) await waitAudio(p, id);
    // Silence (and the silent WAV) elects nobody.
    await sleep(1000);
    for (const p of pages) assert.deepEqual((await speakerView(p)).list, [], 'nobody speaks yet');

    await a.evaluate(() => window.__mic.gain.gain.setValueAtTime(1, window.__mic.ctx.currentTime));
    const toAda = await everyoneNames(pages, idA, 1000, 'every page to name Ada within 1 s');
    await b.evaluate(() => window.__mic.gain.gain.setValueAtTime(1, window.__mic.ctx.currentTime));
    await a.evaluate(() => window.__mic.gain.gain.setValueAtTime(0, window.__mic.ctx.currentTime));
    const toBob = await everyoneNames(pages, idB, 1500, 'every page to follow to Bob within 1.5 s');
    const line = `speaker named on every page ${toAda} ms after Ada's tone started; followed to Bob in ${toBob} ms`;
    t.diagnostic(line);
    console.log(`  [18-audio] ${line}`);
    await a.screenshot({ path: path.join(ARTIFACTS, 'audio-speaker.png') }).catch(() => {});
  } catch (err) {
    await reportFailure(t, err, { server, pages });
    throw err;
  } finally {
    for (const br of browsers) await br.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Bob's inbound audio of `id`: the codec and the sample counters, from getStats. */
function audioIn(page, id) {
  return page.evaluate(async (id) => {
    const c = window.chorus.client;
    const mids = new Set();
    for (const tr of c.participants.get(id)?.tracks.values() ?? []) if (tr.mid !== null && tr.mid !== undefined) mids.add(tr.mid);
    const r = await c._sub.getStats();
    let out = null;
    r.forEach((s) => {
      if (s.type !== 'inbound-rtp' || s.kind !== 'audio' || !mids.has(s.mid)) return;
      out = {
        codec: r.get(s.codecId)?.mimeType ?? null,
        packetsReceived: s.packetsReceived,
        packetsLost: s.packetsLost,
        concealedSamples: s.concealedSamples,
        totalSamplesReceived: s.totalSamplesReceived,
        fecPacketsReceived: s.fecPacketsReceived ?? null,
        bytesReceived: s.bytesReceived,
        codecs: [],
        sdpRed: /a=rtpmap:\d+ red\/48000/i.test(c._sub.remoteDescription?.sdp ?? '') && /a=rtpmap:\d+ red\/48000/i.test(c._sub.localDescription?.sdp ?? ''),
      };
    });
    r.forEach((s) => {
      if (out && s.type === 'codec') out.codecs.push(`${s.payloadType}:${s.mimeType}`);
    });
    return out;
  }, id);
}

/** One RED run: Ada's tone to Bob over a lossy link; returns Bob's figures. */
async function lossyRun(t, dir, { red }) {
  const lab = createLab();
  const pages = [];
  let server;
  try {
    const hostA = lab.addHost('ada');
    const hostB = lab.addHost('bob');
    server = await lab.startServer({ config: `[media]\nice_tcp = false\n\n[audio]\nred = ${red}\n` });
    const tone = path.join(dir, 'tone.wav');
    const silence = path.join(dir, 'silence.wav');
    const a = await openPage(await lab.launchBrowser(hostA, server, { args: [`--use-file-for-fake-audio-capture=${tone}`] }), pageUrl(server, 'red', 'Ada'), { denyCamera: true });
    pages.push(a);
    const idA = await waitJoined(a, 20000);
    const b = await openPage(await lab.launchBrowser(hostB, server, { args: [`--use-file-for-fake-audio-capture=${silence}`] }), pageUrl(server, 'red', 'Bob'), { denyCamera: true });
    pages.push(b);
    await waitJoined(b, 20000);
    await waitAudio(b, idA, 30000);
    await sleep(1000);
    lab.loss(b, { every: LOSS_EVERY, random: true });
    const n0 = lab.lossStats(b);
    const s0 = await audioIn(b, idA);
    await sleep(RED_WINDOW_S * 1000);
    const s1 = await audioIn(b, idA);
    const n1 = lab.lossStats(b);
    const d = (k) => s1[k] - s0[k];
    return {
      red,
      codec: s1.codec,
      codecs: s1.codecs,
      sdpRed: s1.sdpRed,
      bytesPerPacket: Number(((s1.bytesReceived - s0.bytesReceived) / (s1.packetsReceived - s0.packetsReceived)).toFixed(1)),
      seconds: RED_WINDOW_S,
      udpDropped: n1.dropped - n0.dropped,
      udpSeen: n1.udp - n0.udp,
      packetsReceived: d('packetsReceived'),
      packetsLost: d('packetsLost'),
      concealedSamples: d('concealedSamples'),
      totalSamplesReceived: d('totalSamplesReceived'),
      concealedPct: Number(((100 * d('concealedSamples')) / d('totalSamplesReceived')).toFixed(2)),
    };
  } catch (err) {
    if (server) await reportFailure(t, err, { server, pages });
    throw err;
  } finally {
    await lab.destroy();
  }
}

test('with Opus RED a page that loses 10 % of its packets conceals less audio than without', { timeout: 120000 + 4000 * RED_WINDOW_S }, async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'chorus-red-'));
  wav(path.join(dir, 'tone.wav'), { tone: true });
  wav(path.join(dir, 'silence.wav'), { tone: false });
  try {
    const on = await lossyRun(t, dir, { red: true });
    const off = await lossyRun(t, dir, { red: false });
    const figures = { lossEvery: LOSS_EVERY, random: true, on, off };
    mkdirSync(ARTIFACTS, { recursive: true });
    writeFileSync(path.join(ARTIFACTS, 'audio-red.json'), `${JSON.stringify(figures, null, 2)}\n`);
    for (const r of [on, off]) {
      const line = `RED ${r.red ? 'on ' : 'off'}: negotiated ${r.sdpRed}, getStats codec ${r.codec}, ${r.bytesPerPacket} bytes/packet, ${r.udpDropped}/${r.udpSeen} UDP packets dropped, ${r.packetsLost} audio packets lost, concealed ${r.concealedPct} % of ${r.totalSamplesReceived} samples`;
      t.diagnostic(line);
      console.log(`  [18-audio] ${line}`);
    }
    // Chromium's inbound-rtp names the codec it decoded (Opus, out of the RED blocks), so
    // RED shows as negotiated on both of Bob's descriptions and as bigger packets.
    assert.ok(on.sdpRed && !off.sdpRed, `RED negotiated on Bob's subscriber leg only when on: ${on.sdpRed} / ${off.sdpRed}`);
    assert.ok(on.bytesPerPacket > 1.5 * off.bytesPerPacket, `RED packets carry the previous frame too: ${on.bytesPerPacket} vs ${off.bytesPerPacket} bytes`);
    assert.ok(on.udpDropped > 0 && off.udpDropped > 0, 'the loss was in effect');
    assert.ok(on.concealedPct < off.concealedPct, `RED conceals less: ${on.concealedPct} % vs ${off.concealedPct} %`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
