// Call quality (issue 12), the way a user sees it: simulcast cameras (rids q/h/f), a
// per-subscriber downlink estimate, and dynacast.
//
// 1. Three pages in one room, each publishing Chromium's fake camera at 1280x720. The third
//    page's link from the server is capped at 300 kbit/s (tc tbf, lib/netlab.js). Within 2 s
//    it gets the low layer (frameWidth <= 320) or its tile says "paused: low bandwidth"; from
//    1 s later (SETTLE_MS) its audio keeps flowing with under 1 % loss; the other two pages
//    keep the high layer (frameWidth >= 640). Cap lifted: back to >= 640 within 10 s.
// 2. Dynacast: while every subscriber shows a publisher's camera in a tile at most 320 px
//    wide, that publisher's encoder stops sending rid f.
//
// Figures (widths, bit rates, switch times) are printed as test diagnostics and written to
// tests/artifacts/call-quality-*.json, for the closing notes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { openPage, waitJoined, waitMedia, poll, reportFailure, scenario, ARTIFACTS } from '../lib/harness.js';
import { createLab } from '../lib/netlab.js';

/**
 * Capture size of the publishing cameras in the capped test (CHORUS_QUALITY_RES): 1280x720
 * gives three simulcast layers (q 320, h 640, f 1280 wide).
 */
const HD = process.env.CHORUS_QUALITY_RES ?? '1280x720';
/**
 * The cap (tc rate syntax). The issue's test is 300 kbit/s; CHORUS_QUALITY_CAP tries others
 * for their figures (at 700kbit a step up from a flowing layer is its own, unprobed, try).
 * The assertions are the 300 kbit/s case's: where a half layer fits, "low or paused" fails
 * by design.
 */
const CAP_RATE = process.env.CHORUS_QUALITY_CAP ?? '300kbit';
/** Issue 12: the capped page is on the low layer (or paused) within this time of the cap. */
const DOWN_WITHIN_MS = 2000;
/** Issue 12: back on the high layer within this time of lifting the cap. */
const UP_WITHIN_MS = 10000;
/** How long the capped steady state is watched (audio loss, no upward flapping). */
const CAPPED_WINDOW_MS = 8000;
/**
 * How long after Cyd sees her videos low or paused the steady state begins: the link's
 * 300 ms queue, filled at the cap by what flowed before, drains only once the server has
 * cut what it sends, and a page is told `streamState` before that queue has drained. What
 * is lost meanwhile is the reaction's (no sender can take back what it queued before the
 * cap): reported as the loss "from the cap on", not asserted.
 */
const SETTLE_MS = 1000;
/**
 * The capped test's server keeps ICE-TCP on, as the default config does, unless
 * CHORUS_ICE_TCP=0. (It ran without it while a subscriber whose Chromium nominated its TCP
 * pair first and then moved to UDP was dropped 8 s later, 3 runs in 5 here; the server
 * follows a later nomination now, and specs/16-call-loss.test.js checks that on purpose.)
 */
const SERVER_CONFIG = process.env.CHORUS_ICE_TCP === '0' ? '[media]\nice_tcp = false\n' : '';
const LOW_MAX_WIDTH = 320;
const HIGH_MIN_WIDTH = 640;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pageUrl = (server, room, name, res = HD) => `${server.url}/?${new URLSearchParams({ room, name, res })}`;

/**
 * What a page receives, per remote participant: its camera's inbound-rtp (width, bytes,
 * frames), its audio's (packets received and lost), what the tile shows, and the
 * `streamState` the client was told (layer / paused), for the report.
 */
function sample(page) {
  return page.evaluate(async () => {
    const c = window.chorus.client;
    const report = c._sub ? await c._sub.getStats() : undefined;
    const stats = await c.inboundStats(report);
    const raw = new Map();
    report?.forEach((s) => {
      if (s.type === 'inbound-rtp') raw.set(s.mid, s);
    });
    const out = { t: performance.now(), me: c.participantId, bye: c.lastBye ?? null, video: {}, audio: {}, tile: {}, told: {} };
    for (const s of stats) {
      if (s.participantId === null || s.source === 'screen') continue;
      const r = raw.get(s.mid) ?? {};
      out[s.kind][s.participantId] = {
        w: s.frameWidth,
        h: s.frameHeight,
        bytes: s.bytesReceived,
        frames: s.framesDecoded,
        recv: s.packetsReceived,
        lost: s.packetsLost,
        // decoder and repair counters, for telling a stall from a pause (reported only)
        rxFrames: r.framesReceived ?? 0,
        keyFrames: r.keyFramesDecoded ?? 0,
        freezes: r.freezeCount ?? 0,
        freezeS: r.totalFreezesDuration ?? 0,
        nack: r.nackCount ?? 0,
        pli: r.pliCount ?? 0,
        // audio: what the decoder had to conceal after RED's repair (reported only)
        concealed: r.concealedSamples ?? 0,
        samples: r.totalSamplesReceived ?? 0,
      };
    }
    for (const p of c.participants.values()) {
      if (p.id === c.participantId) continue;
      for (const tr of p.tracks.values()) if (tr.kind === 'video' && tr.source === 'camera') out.told[p.id] = { layer: tr.layer ?? null, paused: tr.paused ?? null };
      const tile = document.querySelector(`#tile-${p.id}`);
      if (tile) {
        const text = `${tile.innerText ?? ''} ${tile.textContent ?? ''}`.toLowerCase();
        const flag = `${tile.dataset.paused ?? ''} ${tile.dataset.streamState ?? ''}`;
        out.tile[p.id] = { pausedLowBandwidth: text.includes('paused: low bandwidth') || /lowbandwidth|low bandwidth/i.test(flag), width: Math.round(tile.getBoundingClientRect().width) };
      }
    }
    return out;
  });
}

/** Throws when the page of `name` is no longer participant `id` (it left and rejoined). */
function sameSession(x, id, name) {
  if (x.me !== id) throw new Error(`${name}'s page is participant ${x.me}, not ${id}: it left and rejoined (last bye: ${JSON.stringify(x.bye)})`);
  return x;
}

/** What the decoder of `id`'s camera did between two samples: frames received/decoded, keyframes, freezes, NACKs, PLIs. */
function repair(a, b, id) {
  const x = a.video[id];
  const y = b.video[id];
  if (!x || !y) return '';
  const d = (k) => y[k] - x[k];
  return `[rx ${d('rxFrames')}f dec ${d('frames')}f kf ${d('keyFrames')} frz ${d('freezes')}/${d('freezeS').toFixed(1)}s nack ${d('nack')} pli ${d('pli')} lost ${d('lost')}]`;
}

/** Bit rate (bit/s) of `kind` from `id` between two samples. */
function rate(a, b, kind, id) {
  const x = a[kind][id];
  const y = b[kind][id];
  if (!x || !y || b.t <= a.t) return 0;
  return Math.round(((y.bytes - x.bytes) * 8 * 1000) / (b.t - a.t));
}
const kbit = (bps) => `${Math.round(bps / 1000)}k`;

/**
 * How a page shows the camera of `id` between two samples: `low` (decoding frames at most
 * 320 wide), `paused` (the tile says paused: low bandwidth), `high` (decoding frames at
 * least 640 wide), `mid`, or `frozen` (no new frames, no pause shown).
 */
function shown(a, b, id) {
  if (b.tile[id]?.pausedLowBandwidth) return 'paused';
  const x = a.video[id];
  const y = b.video[id];
  if (!x || !y || y.frames <= x.frames) return 'frozen';
  if (y.w <= LOW_MAX_WIDTH) return 'low';
  if (y.w >= HIGH_MIN_WIDTH) return 'high';
  return 'mid';
}

/** The publisher's camera encodings by rid: active, bytes sent, width, fps, limitation. */
function outbound(page) {
  return page.evaluate(async () => {
    const pc = window.chorus.client._pub;
    const out = { t: performance.now(), rid: {}, avail: null };
    if (!pc) return out;
    const r = await pc.getStats();
    let pair;
    r.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = s.selectedCandidatePairId;
    });
    r.forEach((s) => {
      if (s.type === 'candidate-pair' && s.id === pair) out.avail = s.availableOutgoingBitrate ?? null;
      if (s.type !== 'outbound-rtp' || s.kind !== 'video') return;
      out.rid[s.rid ?? '-'] = { active: s.active ?? null, bytes: s.bytesSent ?? 0, w: s.frameWidth ?? 0, fps: s.framesPerSecond ?? 0, limit: s.qualityLimitationReason ?? null };
    });
    return out;
  });
}

/**
 * The server's probe counters (/metrics, fetched by a page of the call): probes of
 * subscribers' downlinks started, and the padding-only packets they sent.
 */
async function probeCounters(page) {
  const text = await page.evaluate(async () => (await fetch('/metrics')).text());
  const read = (name) => Number(new RegExp(`^chorus_${name}_total (\\d+)`, 'm').exec(text)?.[1] ?? NaN);
  return { probes: read('probes'), padding: read('padding_packets') };
}

/**
 * Each peer connection's selected ICE pair as Chromium sees it: protocol, addresses, STUN
 * requests and responses both ways, and how long ago it last received a packet. For the
 * report: the server removes a participant whose peer sends it no STUN for 8 s.
 */
function icePairs(page) {
  return page.evaluate(async () => {
    const c = window.chorus?.client;
    const out = {};
    for (const [role, pc] of [['pub', c?._pub], ['sub', c?._sub]]) {
      if (!pc) continue;
      const r = await pc.getStats();
      let pairId;
      r.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
      });
      const p = pairId && r.get(pairId);
      if (!p) {
        out[role] = `${pc.connectionState}, no selected pair`;
        continue;
      }
      const l = r.get(p.localCandidateId);
      const m = r.get(p.remoteCandidateId);
      const ago = (ts) => (ts ? `${Math.round(performance.timeOrigin + performance.now() - ts)}ms` : '?');
      out[role] =
        `${pc.connectionState} ${l?.protocol} ${l?.address}:${l?.port}->${m?.address}:${m?.port} ${p.state}` +
        ` req out ${p.requestsSent}/resp in ${p.responsesReceived}, req in ${p.requestsReceived}/resp out ${p.responsesSent}, consent out ${p.consentRequestsSent ?? '?'}` +
        ` rtt ${p.currentRoundTripTime ?? '?'}s, last in ${ago(p.lastPacketReceivedTimestamp)} ago, last out ${ago(p.lastPacketSentTimestamp)} ago`;
    }
    return out;
  });
}
const outRate = (a, b, rid) => (a.rid[rid] && b.rid[rid] && b.t > a.t ? Math.round(((b.rid[rid].bytes - a.rid[rid].bytes) * 8 * 1000) / (b.t - a.t)) : 0);
const describeOut = (a, b) =>
  `${Object.keys(b.rid)
    .sort()
    .map((rid) => `${rid}:${b.rid[rid].active === false ? 'inactive' : 'active'} ${b.rid[rid].w}w ${Math.round(b.rid[rid].fps)}fps ${kbit(outRate(a, b, rid))}bps${b.rid[rid].limit && b.rid[rid].limit !== 'none' ? ` (${b.rid[rid].limit})` : ''}`)
    .join(', ')}; uplink estimate ${b.avail === null ? '?' : `${kbit(b.avail)}bps`}`;

function saveFigures(name, figures) {
  mkdirSync(ARTIFACTS, { recursive: true });
  writeFileSync(path.join(ARTIFACTS, `call-quality-${name}.json`), `${JSON.stringify(figures, null, 2)}\n`);
}

// A gate since the server probes before a paused video comes back (crates/sfu/src/probe.rs).
// Before, it was a `todo` that failed one run in eight or more, losing 1.4-5.7 % of an audio
// track while capped: a paused video resumed on the estimate's word (its keyframe overflowed
// the capped queue), or a lowest layer kept through a shallow cut on a link it did not fit.
// Each run prints its figures: audio loss in the steady state and from the cap on, tbf drops,
// probes and their padding, and the times to go down and back up.
test('a page whose downlink is capped at 300 kbit/s drops to the low layer or pauses; the others keep the high layer; it recovers when the cap goes', {
  timeout: 240000,
}, async (t) => {
  const lab = createLab();
  t.after(() => lab.destroy());
  const free = lab.addHost('free');
  const capped = lab.addHost('cap');
  const server = await lab.startServer({ config: SERVER_CONFIG });
  const pages = [];
  const figures = { cap: CAP_RATE, iceTcp: SERVER_CONFIG === '' };
  const note = (line) => {
    t.diagnostic(line);
    console.log(`  [15-call-quality] ${line}`);
  };
  const names = ['Ada', 'Bob', 'Cyd'];
  const ids = [];
  try {
    const freeBrowser = await lab.launchBrowser(free, server);
    const capBrowser = await lab.launchBrowser(capped, server);
    for (const [i, name] of names.entries()) {
      const page = await openPage(i < 2 ? freeBrowser : capBrowser, pageUrl(server, 'quality', name));
      pages.push(page);
      ids.push(await waitJoined(page, 20000));
    }
    const [a, b, c] = pages;
    const [idA, idB, idC] = ids;
    assert.equal(c.netHost ?? capBrowser.host, capped);
    for (const [i, page] of pages.entries()) {
      const others = ids.filter((_, j) => j !== i);
      await waitMedia(page, { video: others, audio: others, timeout: 30000 });
    }

    // Before the cap: everyone gets at least the half layer of everyone (BWE ramp-up of
    // the publishers included).
    let before;
    await poll(
      async () => {
        const s0 = await Promise.all(pages.map(sample));
        await sleep(1000);
        const s1 = await Promise.all(pages.map(sample));
        before = { s0, s1 };
        s1.forEach((x, i) => sameSession(x, ids[i], names[i]));
        return pages.every((_, i) => ids.every((id, j) => j === i || shown(s0[i], s1[i], id) === 'high'));
      },
      { timeout: 40000, interval: 500, message: `every page receiving every camera at >= ${HIGH_MIN_WIDTH} px` },
    ).catch(async (err) => {
      if (before) note(`before the cap (not all high): ${describeAll(before.s0, before.s1)}`);
      for (const [i, page] of pages.entries()) note(`${names[i]} sends: ${describeOut(...(await outboundPair(page)))}`);
      throw err;
    });
    figures.before = describeAll(before.s0, before.s1);
    note(`before the cap: ${figures.before}`);
    note(`Ada sends: ${describeOut(...(await outboundPair(a)))}`);

    // Cap the server→Cyd direction.
    let prev = await sample(c);
    const atCap = prev;
    note(`Cyd's ICE before the cap: ${JSON.stringify(await icePairs(c))}`);
    lab.cap(c, CAP_RATE);
    note(`capped at ${new Date().toISOString()}`);
    const capAt = prev.t;
    const downAt = {};
    const trace = [];
    await poll(
      async () => {
        const cur = sameSession(await sample(c), idC, 'Cyd');
        const row = { ms: Math.round(cur.t - capAt) };
        for (const id of [idA, idB]) {
          const how = shown(prev, cur, id);
          row[names[ids.indexOf(id)]] = `${how} ${cur.video[id]?.w ?? 0}w ${kbit(rate(prev, cur, 'video', id))}bps told=${JSON.stringify(cur.told[id] ?? null)}`;
          if ((how === 'low' || how === 'paused') && downAt[id] === undefined) downAt[id] = cur.t - capAt;
          if (how !== 'low' && how !== 'paused') delete downAt[id];
        }
        trace.push(row);
        prev = cur;
        return downAt[idA] !== undefined && downAt[idB] !== undefined;
      },
      { timeout: 15000, interval: 250, message: `Cyd showing both cameras at <= ${LOW_MAX_WIDTH} px or paused after the cap` },
    ).catch((err) => {
      note(`after the cap (trace): ${JSON.stringify(trace.slice(-12))}`);
      note(`qdisc: ${lab.qdiscStats(c).text}`);
      throw err;
    });
    const downMs = Math.round(Math.max(downAt[idA], downAt[idB]));
    figures.downMs = { Ada: Math.round(downAt[idA]), Bob: Math.round(downAt[idB]) };
    figures.downTrace = trace;
    note(`capped: Cyd on low/paused for Ada after ${figures.downMs.Ada} ms, for Bob after ${figures.downMs.Bob} ms`);

    // The capped steady state: Cyd's audio keeps flowing; its videos stay low or paused;
    // Ada and Bob keep the high layer of everyone.
    await sleep(SETTLE_MS);
    const w0 = await Promise.all(pages.map(sample));
    const q0 = lab.qdiscStats(c);
    const p0 = await probeCounters(a);
    const flaps = [];
    const othersLow = [];
    const cydCameraLow = [];
    const windowTrace = [];
    let last = w0;
    const windowEnd = Date.now() + CAPPED_WINDOW_MS;
    while (Date.now() < windowEnd) {
      await sleep(1000);
      const cur = await Promise.all(pages.map(sample));
      cur.forEach((x, i) => sameSession(x, ids[i], names[i]));
      const row = { ms: Math.round(cur[2].t - capAt) };
      for (const id of [idA, idB]) {
        const how = shown(last[2], cur[2], id);
        row[names[ids.indexOf(id)]] = `${how} ${cur[2].video[id]?.w ?? 0}w ${kbit(rate(last[2], cur[2], 'video', id))}bps told=${JSON.stringify(cur[2].told[id] ?? null)} ${repair(last[2], cur[2], id)}`;
        if (how !== 'low' && how !== 'paused') flaps.push(`${names[ids.indexOf(id)]} ${row[names[ids.indexOf(id)]]} at +${row.ms} ms`);
      }
      row.qdiscDropped = lab.qdiscStats(c).dropped - q0.dropped;
      windowTrace.push(row);
      for (const i of [0, 1]) {
        for (const id of ids) {
          if (id === ids[i]) continue;
          const how = shown(last[i], cur[i], id);
          if (how === 'high') continue;
          const line = `${names[i]} gets ${names[ids.indexOf(id)]} ${how} ${cur[i].video[id]?.w}w ${kbit(rate(last[i], cur[i], 'video', id))}bps ${repair(last[i], cur[i], id)} at +${Math.round(cur[i].t - capAt)} ms`;
          // Cyd's own camera may fall: the server's feedback to her publisher (transport-cc,
          // receiver reports) shares the capped link, so her browser's send-side estimate
          // sees the queue too. Reported, not asserted.
          (id === idC ? cydCameraLow : othersLow).push(line);
        }
      }
      last = cur;
    }
    const w1 = last;
    const q1 = lab.qdiscStats(c);
    const p1 = await probeCounters(a);
    const audio = {};
    for (const id of [idA, idB]) {
      const x = w0[2].audio[id];
      const y = w1[2].audio[id];
      const recv = y.recv - x.recv;
      const lost = y.lost - x.lost;
      const samples = y.samples - x.samples;
      const concealedPct = samples > 0 ? Number(((100 * (y.concealed - x.concealed)) / samples).toFixed(2)) : null;
      audio[names[ids.indexOf(id)]] = { recv, lost, lossPct: recv > 0 ? Number(((100 * lost) / recv).toFixed(2)) : null, concealedPct, bps: rate(w0[2], w1[2], 'audio', id) };
    }
    // The loss over the whole capped time, the first moments (before the server reacts)
    // included: reported, not asserted.
    const whole = {};
    for (const id of [idA, idB]) {
      const x = atCap.audio[id];
      const y = w1[2].audio[id];
      whole[names[ids.indexOf(id)]] = { recv: y.recv - x.recv, lost: y.lost - x.lost };
    }
    const secs = (w1[2].t - w0[2].t) / 1000;
    figures.capped = {
      probes: { started: p1.probes - p0.probes, paddingPackets: p1.padding - p0.padding },
      seconds: Number(secs.toFixed(1)),
      cyd: describeOne(w0[2], w1[2], [idA, idB], names, ids),
      cydTotalBps: [idA, idB].reduce((n, id) => n + rate(w0[2], w1[2], 'video', id) + rate(w0[2], w1[2], 'audio', id), 0),
      cydAudio: audio,
      cydAudioFromCapIncludingReaction: whole,
      ada: describeOne(w0[0], w1[0], [idB, idC], names, ids),
      bob: describeOne(w0[1], w1[1], [idA, idC], names, ids),
      qdisc: q0.bytes !== undefined ? { bytes: q1.bytes - q0.bytes, packets: q1.packets - q0.packets, dropped: q1.dropped - q0.dropped } : q1.text,
      flaps,
      othersLow,
      cydCameraLow,
      trace: windowTrace,
    };
    note(`capped ${figures.capped.seconds} s: Cyd gets ${figures.capped.cyd} (total ${kbit(figures.capped.cydTotalBps)}bps), audio ${JSON.stringify(audio)}; from the cap on: ${JSON.stringify(whole)}`);
    note(`capped: Ada gets ${figures.capped.ada}; Bob gets ${figures.capped.bob}; qdisc ${JSON.stringify(figures.capped.qdisc)}; probes ${JSON.stringify(figures.capped.probes)}`);
    if (flaps.length) note(`capped: Cyd's videos neither low nor paused (${flaps.length}): ${flaps.join(' | ')}`);
    if (cydCameraLow.length) note(`capped (reported only): Cyd's own camera below ${HIGH_MIN_WIDTH} px at Ada/Bob: ${cydCameraLow.join(' | ')}`);
    note(`Ada sends while Cyd is capped: ${describeOut(...(await outboundPair(a)))}`);

    // Lift the cap: Cyd is back on (at least) the half layer within 10 s.
    prev = await sample(c);
    note(`Cyd's ICE at the end of the capped window: ${JSON.stringify(await icePairs(c))}`);
    lab.uncap(c);
    note(`uncapped at ${new Date().toISOString()}`);
    const upStart = prev.t;
    const upAt = {};
    const upTrace = [];
    await poll(
      async () => {
        const cur = sameSession(await sample(c), idC, 'Cyd');
        const row = { ms: Math.round(cur.t - upStart) };
        for (const id of [idA, idB]) {
          const how = shown(prev, cur, id);
          row[names[ids.indexOf(id)]] = `${how} ${cur.video[id]?.w ?? 0}w ${kbit(rate(prev, cur, 'video', id))}bps told=${JSON.stringify(cur.told[id] ?? null)} ${repair(prev, cur, id)}`;
          if (how === 'high' && upAt[id] === undefined) upAt[id] = cur.t - upStart;
          if (how !== 'high') delete upAt[id];
        }
        upTrace.push(row);
        prev = cur;
        return upAt[idA] !== undefined && upAt[idB] !== undefined;
      },
      { timeout: 30000, interval: 500, message: `Cyd back on >= ${HIGH_MIN_WIDTH} px for both cameras after the cap was lifted` },
    ).catch((err) => {
      note(`after lifting the cap (trace): ${JSON.stringify(upTrace.slice(-12))}`);
      throw err;
    });
    const upMs = Math.round(Math.max(upAt[idA], upAt[idB]));
    figures.upMs = { Ada: Math.round(upAt[idA]), Bob: Math.round(upAt[idB]) };
    figures.upTrace = upTrace;
    const after0 = await sample(c);
    await sleep(1000);
    const after1 = await sample(c);
    figures.after = describeOne(after0, after1, [idA, idB], names, ids);
    figures.probesAtEnd = await probeCounters(a);
    note(`uncapped: Cyd back on high for Ada after ${figures.upMs.Ada} ms, Bob after ${figures.upMs.Bob} ms; then ${figures.after}; probes in all ${JSON.stringify(figures.probesAtEnd)}`);
    saveFigures('capped', figures);

    // The assertions of issue 12 (the figures above are printed either way).
    assert.ok(downMs <= DOWN_WITHIN_MS, `Cyd on the low layer or paused ${downMs} ms after the cap (want <= ${DOWN_WITHIN_MS} ms)`);
    assert.deepEqual(flaps, [], 'Cyd stays on the low layer or paused while capped');
    for (const [who, x] of Object.entries(audio)) {
      assert.ok(x.recv >= 25 * secs, `Cyd keeps receiving ${who}'s audio while capped: ${x.recv} packets in ${secs.toFixed(1)} s`);
      assert.ok(x.lost / x.recv < 0.01, `Cyd loses under 1 % of ${who}'s audio while capped: ${x.lost}/${x.recv}`);
    }
    assert.deepEqual(othersLow, [], `Ada and Bob keep each other's camera at >= ${HIGH_MIN_WIDTH} px while Cyd is capped`);
    assert.ok(upMs <= UP_WITHIN_MS, `Cyd back on >= ${HIGH_MIN_WIDTH} px ${upMs} ms after the cap was lifted (want <= ${UP_WITHIN_MS} ms)`);
  } catch (err) {
    saveFigures('capped', { ...figures, error: String(err.message ?? err) });
    for (const [i, page] of pages.entries()) note(`${names[i]}'s ICE at the failure (${new Date().toISOString()}): ${JSON.stringify(await icePairs(page).catch((e) => e.message))}`);
    await reportFailure(t, err, { server, pages });
    throw err;
  } finally {
    // The server's log of every run, passed or not (RUST_LOG picks what it holds).
    writeFileSync(path.join(ARTIFACTS, 'call-quality-capped-server.log'), server.stderr());
  }

  function describeAll(s0, s1) {
    return pages.map((_, i) => `${names[i]}<-{${describeOne(s0[i], s1[i], ids.filter((_, j) => j !== i), names, ids)}}`).join(' ');
  }
  async function outboundPair(page) {
    const x = await outbound(page);
    await sleep(1000);
    return [x, await outbound(page)];
  }
});

/** `Bob: high 1280w 620kbps, ...` for the cameras of `from` between two samples. */
function describeOne(a, b, from, names, ids) {
  return from.map((id) => `${names[ids.indexOf(id)]}: ${shown(a, b, id)} ${b.video[id]?.w ?? 0}w ${kbit(rate(a, b, 'video', id))}bps`).join(', ');
}

test('dynacast: while every subscriber shows a camera in a tile at most 320 px wide, its publisher stops sending rid f', { timeout: 120000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const note = (line) => {
      t.diagnostic(line);
      console.log(`  [15-call-quality] ${line}`);
    };
    const figures = {};
    // Ada publishes 1280x720 in a large window. Bob and Cyd watch in small windows (their
    // own cameras are small, to spare the CPU).
    const a = await openPage(browser, pageUrl(server, 'dyna', 'Ada'));
    const idA = await waitJoined(a);
    const viewers = [];
    for (const name of ['Bob', 'Cyd']) {
      const p = await openPage(browser, pageUrl(server, 'dyna', name, '320x180'));
      await p.setViewportSize({ width: 640, height: 400 });
      await waitJoined(p);
      viewers.push(p);
    }
    for (const p of viewers) await waitMedia(p, { video: [idA], audio: [idA], timeout: 30000 });

    // Every tile of Ada's camera is small (css px = device px here).
    const tileWidths = await Promise.all(viewers.map((p) => p.evaluate((id) => ({ w: document.querySelector(`#tile-${id}`)?.getBoundingClientRect().width ?? null, dpr: window.devicePixelRatio }), idA)));
    figures.tiles = tileWidths;
    note(`Ada's tile on Bob's and Cyd's pages: ${JSON.stringify(tileWidths)}`);
    for (const { w, dpr } of tileWidths) assert.ok(w !== null && w * dpr <= 320, `tile ${w} px x ${dpr} is at most 320 device px`);

    // Ada's f layer goes quiet: inactive, or no bytes sent for 2 s.
    const start = Date.now();
    let last;
    const seen = [];
    await poll(
      async () => {
        const x = await outbound(a);
        await sleep(2000);
        const y = await outbound(a);
        last = [x, y];
        seen.push(`+${Date.now() - start} ms ${describeOut(x, y)}`);
        const f = y.rid.f;
        if (!f) return false; // not simulcast (yet)
        return f.active === false || y.rid.f.bytes === x.rid.f.bytes;
      },
      { timeout: 30000, interval: 0, message: "Ada's rid f inactive or silent while every tile of her camera is small" },
    ).catch(async (err) => {
      note(`Ada's encodings: ${seen.slice(-5).join(' | ')}`);
      // Diagnosis only (the test fails either way): does the server's dynacast work when
      // the viewers' clients are told the tile sizes through the API, bypassing the app?
      const told = await Promise.all(viewers.map((p) => p.evaluate(({ id, w }) => {
        const c = window.chorus.client;
        const track = [...(c.participants.get(id)?.tracks.values() ?? [])].find((x) => x.kind === 'video' && x.source === 'camera');
        return track ? c.setTrackView(track.id, { visible: true, width: Math.round(w), height: Math.round((w * 9) / 16) }) : false;
      }, { id: idA, w: tileWidths[0].w })));
      let probe = null;
      for (let i = 0; i < 5 && !probe; i++) {
        const x = await outbound(a);
        await sleep(2000);
        const y = await outbound(a);
        if (y.rid.f && (y.rid.f.active === false || y.rid.f.bytes === x.rid.f.bytes)) probe = describeOut(x, y);
      }
      const diagnosis = `client.setTrackView told on both viewers: ${JSON.stringify(told)}; f then ${probe ? `off: ${probe}` : 'still on after 10 s'}`;
      note(`diagnosis: ${diagnosis}`);
      saveFigures('dynacast', { ...figures, seen, diagnosis, error: err.message });
      throw err;
    });
    figures.offAfterMs = Date.now() - start;
    figures.small = describeOut(...last);
    note(`dynacast: Ada's f off ${figures.offAfterMs} ms after the viewers were in (2 s windows): ${figures.small}`);

    // Report only: Bob's window grows, Ada's tile there is large; does f come back?
    await viewers[0].setViewportSize({ width: 1920, height: 1080 });
    const tileWidth = () => viewers[0].evaluate((id) => document.querySelector(`#tile-${id}`)?.getBoundingClientRect().width ?? 0, idA);
    await poll(async () => (await tileWidth()) > 640, { timeout: 5000, message: "Ada's tile on Bob's page wider than 640 px" }).catch(() => {});
    const big = await tileWidth();
    const t0 = Date.now();
    let back = null;
    for (let i = 0; i < 10 && back === null; i++) {
      const x = await outbound(a);
      await sleep(1000);
      const y = await outbound(a);
      if (y.rid.f && y.rid.f.active !== false && y.rid.f.bytes > x.rid.f.bytes) back = { ms: Date.now() - t0, layers: describeOut(x, y) };
    }
    figures.bigTile = big;
    figures.fBack = back;
    note(`report: with Ada's tile ${Math.round(big)} px wide on Bob's page, f back: ${back ? `${back.ms} ms, ${back.layers}` : 'not within 20 s'}`);
    saveFigures('dynacast', figures);
  }));
