// Call quality under packet loss (issue 12): a page whose downlink from the server loses
// 5 % of its UDP packets keeps decoding.
//
// Two pages, each in a Chromium of its own network namespace (lib/netlab.js). Ada publishes
// Chromium's fake camera at 1280x720 (simulcast q/h/f); Bob watches. Every 20th UDP packet
// from the server to Bob's host is dropped (nftables on Bob's end of the veth: the
// server→page direction only, deterministic 5 %; the kernel has no netem). Over the
// measured window Bob's inbound video of Ada's camera:
// - keeps decoding (framesDecoded grows at >= MIN_FPS),
// - freezes for under 1 s per minute (Chromium's totalFreezesDuration, scaled),
// and Bob stays the same participant (no `bye mediaFailed` and rejoin).
// Reported, not asserted: freezes, NACKs sent, packets lost after retransmission, RTX
// packets received, the server's retransmissions (/api/stats), layer width, audio loss.
// Figures go to tests/artifacts/call-loss.json and the test's diagnostics.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { openPage, waitJoined, waitMedia, poll, reportFailure, ARTIFACTS } from '../lib/harness.js';
import { createLab } from '../lib/netlab.js';

/** Drop every LOSS_EVERY-th UDP packet toward Bob: 20 -> 5 %. */
const LOSS_EVERY = 20;
/** How long the lossy link is watched (CHORUS_LOSS_SECONDS to change it). */
const WINDOW_S = Number(process.env.CHORUS_LOSS_SECONDS ?? 45);
/** The sampling interval of the window (and its report). */
const SAMPLE_MS = 5000;
/** The issue's bound: freezes under 1 s per minute of video. */
const FREEZE_S_PER_MIN = 1;
/** Decoded frames per second at least (the fake camera sends about 15 here). */
const MIN_FPS = 8;

/**
 * The loss test's server runs without ICE-TCP unless CHORUS_ICE_TCP=1: the loss is made on
 * UDP only, and a page whose Chromium took its ICE-TCP pair would not see it.
 */
const LOSS_SERVER_CONFIG = process.env.CHORUS_ICE_TCP === '1' ? '' : '[media]\nice_tcp = false\n';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pageUrl = (server, room, name, res) => `${server.url}/?${new URLSearchParams({ room, name, res })}`;

/** The inbound-rtp video and audio of participant `id` on `page`, raw from getStats. */
function inboundOf(page, id) {
  return page.evaluate(async (id) => {
    const c = window.chorus.client;
    const out = { t: performance.now(), me: c.participantId, bye: c.lastBye ?? null, video: null, audio: null };
    if (!c._sub) return out;
    const mids = new Map();
    for (const tr of c.participants.get(id)?.tracks.values() ?? []) if (tr.mid !== null && tr.mid !== undefined) mids.set(tr.mid, tr);
    const r = await c._sub.getStats();
    r.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      const tr = mids.get(s.mid);
      if (!tr) return;
      const keys =
        s.kind === 'video'
          ? ['framesDecoded', 'framesReceived', 'framesDropped', 'keyFramesDecoded', 'frameWidth', 'frameHeight', 'freezeCount', 'totalFreezesDuration', 'pauseCount', 'totalPausesDuration', 'nackCount', 'pliCount', 'firCount', 'packetsReceived', 'packetsLost', 'retransmittedPacketsReceived', 'bytesReceived', 'jitterBufferDelay', 'jitterBufferEmittedCount']
          : ['packetsReceived', 'packetsLost', 'concealedSamples', 'totalSamplesReceived', 'bytesReceived'];
      const row = {};
      for (const k of keys) row[k] = s[k] ?? null;
      if (s.kind === 'video' && tr.source === 'camera') out.video = row;
      if (s.kind === 'audio') out.audio = row;
    });
    return out;
  }, id);
}

/** The server's counters (/api/stats), fetched by a page of the same origin. */
function serverStats(page) {
  return page.evaluate(async () => (await fetch('/api/stats')).json());
}

const diff = (a, b, k) => (a?.[k] ?? 0) === null || (b?.[k] ?? 0) === null ? null : (b?.[k] ?? 0) - (a?.[k] ?? 0);

// At 5 % loss every lost packet is repaired and Bob decodes about 14 fps. The freezes of
// about 3 s after a PLI that this test used to find (3.6-8.2 s/min in one run of two) were
// the VP8 picture ids jumping backwards at a layer switch, which the server now keeps
// continuous (crates/sfu/src/vp8.rs). What remains are single freezes of about 0.3 s, 0-2
// in 45 s (0-0.8 s/min in ten runs here), probably a retransmission that was lost too.
test('a page whose downlink loses 5 % of its UDP packets keeps decoding, with freezes under 1 s per minute', {
  timeout: 60000 + WINDOW_S * 2000,
}, async (t) => {
  const lab = createLab();
  t.after(() => lab.destroy());
  const free = lab.addHost('free');
  const lossy = lab.addHost('lossy');
  const server = await lab.startServer({ config: LOSS_SERVER_CONFIG });
  const pages = [];
  const figures = { lossEvery: LOSS_EVERY, windowSeconds: WINDOW_S, iceTcp: LOSS_SERVER_CONFIG === '' };
  const note = (line) => {
    t.diagnostic(line);
    console.log(`  [16-call-loss] ${line}`);
  };
  try {
    const a = await openPage(await lab.launchBrowser(free, server), pageUrl(server, 'loss', 'Ada', '1280x720'));
    pages.push(a);
    const idA = await waitJoined(a, 20000);
    // Bob's own camera is small, to spare the CPU; he only watches.
    const b = await openPage(await lab.launchBrowser(lossy, server), pageUrl(server, 'loss', 'Bob', '320x180'));
    pages.push(b);
    const idB = await waitJoined(b, 20000);
    await waitMedia(b, { video: [idA], audio: [idA], timeout: 30000 });
    await waitMedia(a, { video: [idB], audio: [idB], timeout: 30000 });

    // Before the loss: Bob decodes Ada's camera (whatever layer his tile and estimate
    // give; the width is reported).
    const pre0 = await inboundOf(b, idA);
    await sleep(2000);
    const pre1 = await inboundOf(b, idA);
    const preFps = (pre1.video.framesDecoded - pre0.video.framesDecoded) / ((pre1.t - pre0.t) / 1000);
    figures.before = { width: pre1.video.frameWidth, fps: Number(preFps.toFixed(1)), freezes: pre1.video.freezeCount, nack: pre1.video.nackCount };
    note(`before the loss: Bob decodes Ada at ${pre1.video.frameWidth}w ${preFps.toFixed(1)} fps`);

    lab.loss(b, { every: LOSS_EVERY });
    note(`loss on at ${new Date().toISOString()}: every ${LOSS_EVERY}th UDP packet toward Bob dropped`);
    const s0 = await inboundOf(b, idA);
    const api0 = await serverStats(a);
    const n0 = lab.lossStats(b);
    const rows = [];
    let prev = s0;
    const end = Date.now() + WINDOW_S * 1000;
    while (Date.now() < end) {
      await sleep(Math.min(SAMPLE_MS, Math.max(0, end - Date.now())));
      const cur = await inboundOf(b, idA);
      if (cur.me !== idB) throw new Error(`Bob's page is participant ${cur.me}, not ${idB}: it left and rejoined (last bye: ${JSON.stringify(cur.bye)})`);
      const secs = (cur.t - prev.t) / 1000;
      const row = {
        s: Math.round((cur.t - s0.t) / 1000),
        w: cur.video?.frameWidth ?? 0,
        fps: Number(((diff(prev.video, cur.video, 'framesDecoded') ?? 0) / secs).toFixed(1)),
        freezes: diff(prev.video, cur.video, 'freezeCount'),
        freezeS: Number((diff(prev.video, cur.video, 'totalFreezesDuration') ?? 0).toFixed(2)),
        nack: diff(prev.video, cur.video, 'nackCount'),
        lost: diff(prev.video, cur.video, 'packetsLost'),
        rtx: diff(prev.video, cur.video, 'retransmittedPacketsReceived'),
        pli: diff(prev.video, cur.video, 'pliCount'),
        kf: diff(prev.video, cur.video, 'keyFramesDecoded'),
      };
      rows.push(row);
      note(`+${row.s}s ${JSON.stringify(row)}`);
      prev = cur;
    }
    const s1 = prev;
    const api1 = await serverStats(a);
    const n1 = lab.lossStats(b);
    const secs = (s1.t - s0.t) / 1000;
    const v = (k) => diff(s0.video, s1.video, k);
    const au = (k) => diff(s0.audio, s1.audio, k);
    const freezeS = v('totalFreezesDuration');
    figures.window = {
      seconds: Number(secs.toFixed(1)),
      width: s1.video.frameWidth,
      framesDecoded: v('framesDecoded'),
      fps: Number((v('framesDecoded') / secs).toFixed(1)),
      framesDropped: v('framesDropped'),
      keyFramesDecoded: v('keyFramesDecoded'),
      freezeCount: v('freezeCount'),
      totalFreezesDuration: Number(freezeS.toFixed(3)),
      freezeSecondsPerMinute: Number(((freezeS * 60) / secs).toFixed(3)),
      pauseCount: v('pauseCount'),
      nackCount: v('nackCount'),
      pliCount: v('pliCount'),
      packetsReceived: v('packetsReceived'),
      packetsLostAfterRetransmission: v('packetsLost'),
      retransmittedPacketsReceived: v('retransmittedPacketsReceived'),
      audio: { packetsReceived: au('packetsReceived'), packetsLost: au('packetsLost'), concealedPct: s1.audio && au('totalSamplesReceived') ? Number(((100 * au('concealedSamples')) / au('totalSamplesReceived')).toFixed(2)) : null },
      dropped: n0.udp !== undefined && n1.udp !== undefined ? { udp: n1.udp - n0.udp, dropped: n1.dropped - n0.dropped } : n1,
      server: { retransmitted: api1.retransmitted - api0.retransmitted, retransmitMisses: api1.retransmit_misses - api0.retransmit_misses, keyframeRequests: api1.keyframe_requests - api0.keyframe_requests },
      rows,
    };
    const w = figures.window;
    note(
      `${w.seconds} s at 1/${LOSS_EVERY} loss (${w.dropped.dropped}/${w.dropped.udp} UDP packets dropped): Bob decoded ${w.framesDecoded} frames (${w.fps} fps, ${w.width}w), ` +
        `${w.freezeCount} freezes for ${w.totalFreezesDuration} s (${w.freezeSecondsPerMinute} s/min), ${w.nackCount} NACKs, ${w.retransmittedPacketsReceived} RTX packets received, ` +
        `${w.packetsLostAfterRetransmission} packets lost after retransmission, ${w.pliCount} PLIs, ${w.keyFramesDecoded} keyframes; ` +
        `server retransmitted ${w.server.retransmitted} (misses ${w.server.retransmitMisses}), keyframe requests ${w.server.keyframeRequests}; audio ${JSON.stringify(w.audio)}`,
    );
    mkdirSync(ARTIFACTS, { recursive: true });
    writeFileSync(path.join(ARTIFACTS, 'call-loss.json'), `${JSON.stringify(figures, null, 2)}\n`);

    assert.ok(w.dropped.udp > 0 && Math.abs(w.dropped.dropped / w.dropped.udp - 1 / LOSS_EVERY) < 0.01, `the loss was in effect: ${JSON.stringify(w.dropped)}`);
    assert.ok(w.fps >= MIN_FPS, `Bob keeps decoding Ada's camera: ${w.fps} fps (want >= ${MIN_FPS})`);
    assert.ok(w.freezeSecondsPerMinute < FREEZE_S_PER_MIN, `Bob's video of Ada froze ${w.totalFreezesDuration} s in ${w.seconds} s = ${w.freezeSecondsPerMinute} s/min (want < ${FREEZE_S_PER_MIN})`);
  } catch (err) {
    mkdirSync(ARTIFACTS, { recursive: true });
    writeFileSync(path.join(ARTIFACTS, 'call-loss.json'), `${JSON.stringify({ ...figures, error: String(err.message ?? err) }, null, 2)}\n`);
    await reportFailure(t, err, { server, pages });
    throw err;
  }
});

/** Each peer connection's selected ICE pair on `page`: `{ pub, sub }` of `udp`/`tcp`/null. */
function selectedProtocols(page) {
  return page.evaluate(async () => {
    const c = window.chorus?.client;
    const out = { me: c?.participantId ?? null, bye: c?.lastBye ?? null };
    for (const [role, pc] of [['pub', c?._pub], ['sub', c?._sub]]) {
      out[role] = null;
      if (!pc || pc.connectionState !== 'connected') continue;
      const r = await pc.getStats();
      let pairId;
      r.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
      });
      const pair = pairId && r.get(pairId);
      out[role] = (pair && r.get(pair.localCandidateId)?.protocol) ?? null;
    }
    return out;
  });
}

// Loss of a different shape: every UDP packet from a page to the server is lost while it
// connects, so its ICE-TCP pair is the first to work and Chromium (the controlling agent)
// nominates it; then UDP comes back and Chromium moves to its better UDP pair, nominating
// that one. The page must stay in the call. webrtc-rs 0.21's ICE-lite agent keeps the
// first pair it selected and takes consent only from STUN on it, so before the server
// followed the later nomination itself (crates/sfu/src/peer/path.rs) it dropped the page
// 8 s after the move with `bye mediaFailed`; under load that happened without any loss
// whenever a TCP check won the race.
test('a page whose UDP is lost while it connects (ICE-TCP first) stays in the call when its browser moves to UDP', { timeout: 120000 }, async (t) => {
  const lab = createLab();
  t.after(() => lab.destroy());
  const free = lab.addHost('free');
  const late = lab.addHost('udplate');
  const server = await lab.startServer();
  const pages = [];
  const note = (line) => {
    t.diagnostic(line);
    console.log(`  [16-call-loss] ${line}`);
  };
  const figures = {};
  try {
    const a = await openPage(await lab.launchBrowser(free, server), pageUrl(server, 'tcpfirst', 'Ada', '320x180'));
    pages.push(a);
    const idA = await waitJoined(a, 20000);

    lab.blockUdp(late);
    const b = await openPage(await lab.launchBrowser(late, server), pageUrl(server, 'tcpfirst', 'Bob', '320x180'));
    pages.push(b);
    const idB = await waitJoined(b, 20000);
    const onTcp = await poll(async () => {
      const p = await selectedProtocols(b);
      return p.pub === 'tcp' && p.sub === 'tcp' ? p : null;
    }, { timeout: 30000, message: "Bob's publisher and subscriber connected over ICE-TCP while his UDP is blocked" });
    await waitMedia(b, { video: [idA], audio: [idA], timeout: 30000 });
    note(`Bob connected over ${JSON.stringify(onTcp)} with UDP blocked; decoding Ada`);

    lab.unblockUdp(late);
    const t0 = Date.now();
    note(`UDP unblocked at ${new Date(t0).toISOString()}`);
    const onUdp = await poll(async () => {
      const p = await selectedProtocols(b);
      if (p.me !== idB) throw new Error(`Bob's page is participant ${p.me}, not ${idB} (last bye ${JSON.stringify(p.bye)})`);
      return p.sub === 'udp' ? p : null;
    }, { timeout: 20000, interval: 250, message: "Bob's browser moving his subscriber to UDP (the premise of this test)" });
    figures.movedToUdpMs = Date.now() - t0;
    note(`Bob's browser moved to ${JSON.stringify(onUdp)} ${figures.movedToUdpMs} ms after UDP came back`);

    // 15 s (well past the server's 8 s consent timeout): still participant idB, still
    // decoding Ada.
    const watchEnd = Date.now() + 15000;
    let frames = null;
    const seen = [];
    while (Date.now() < watchEnd) {
      await sleep(1000);
      const p = await selectedProtocols(b);
      const f = p.me === idB ? await framesOf(b, idA) : null;
      seen.push(`+${Date.now() - t0}ms ${p.me === idB ? `${p.pub}/${p.sub} ${f} frames` : `participant ${p.me}, bye ${JSON.stringify(p.bye)}`}`);
      if (p.me !== idB) {
        note(`Bob after UDP came back: ${seen.join(' | ')}`);
        const failed = server.stderr().split('\n').filter((l) => /peer failed|Setting new connection state: (Disconnected|Failed)/.test(l)).map((l) => l.replace(/\x1b\[[0-9;]*m/g, ''));
        note(`server: ${failed.join(' | ')}`);
        assert.fail(`Bob was dropped ${Date.now() - t0} ms after his browser moved from ICE-TCP to UDP (bye ${JSON.stringify(p.bye)}); he is participant ${p.me} now, not ${idB}`);
      }
      frames = f;
    }
    note(`Bob after UDP came back: ${seen.join(' | ')}`);
    assert.ok(frames > 0, 'Bob still decodes Ada');
  } catch (err) {
    await reportFailure(t, err, { server, pages });
    throw err;
  }
});

async function framesOf(page, id) {
  return (await inboundOf(page, id)).video?.framesDecoded ?? 0;
}
