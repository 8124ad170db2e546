// Connectivity check: this browser's own path to the Chorus server.
//
// Each media check is a throwaway participant: a WebSocket, `join` to a fresh room, a
// publisher peer with one canvas video track (no camera or microphone needed), and the
// server's answer filtered to the path under test:
//   udp       only the server's UDP candidates;
//   tcp       only its ICE-TCP candidates;
//   turn-*    `iceTransportPolicy: 'relay'` with only that kind of TURN URL from `joined`.
// The check passes when the peer connects; the selected candidate pair (getStats) shows
// which path it took. Results are also in `window.connectivity` (for tests and scripts).
import { messages, candidateInit } from './chorus.js';

/** How long one media check may take to connect. */
const CONNECT_TIMEOUT_MS = 12000;
/** How long the WebSocket may take to open and answer `join`. */
const SIGNAL_TIMEOUT_MS = 8000;

const HINTS = {
  websocket:
    'The signaling WebSocket at /ws did not open. Behind a reverse proxy, it must pass WebSocket upgrades (the Upgrade and Connection headers) to Chorus: see docs/self-hosting.md.',
  udp:
    "UDP to the server's media port failed. A firewall (this network's or the server's) may block it, or the server announces an IP this browser cannot reach: check media.announced_ips and media.udp_listen's port. Calls can still work over TCP or TURN.",
  tcp:
    "ICE-TCP failed: is media.ice_tcp on, and is its TCP port open in the server's firewall? Networks that block UDP usually allow TCP to common ports only; TURN over TCP or TLS on port 443 helps there.",
  'turn-udp':
    'The TURN server did not relay over UDP: wrong credentials (auth_secret must equal coturn\'s static-auth-secret), its UDP port is blocked, or it may not reach the media port (coturn\'s denied-peer-ip).',
  'turn-tcp':
    'The TURN server did not relay over TCP: its TCP listening port may be blocked, or the credentials are refused.',
  turns:
    "The TURN server did not relay over TLS: check coturn's certificate (it must match the host name in the turns: URL) and its tls-listening-port.",
};

const CHECKS = ['websocket', 'udp', 'tcp', 'turn-udp', 'turn-tcp', 'turns'];

const state = { running: false, done: false, results: {}, server: null };
window.connectivity = state;

function row(check) {
  return document.querySelector(`#checks tr[data-check="${check}"]`);
}

/** Records and shows one result: status is ok | fail | skip | running | pending. */
function report(check, status, detail = '', hint = '') {
  state.results[check] = { status, detail, hint };
  const tr = row(check);
  if (!tr) return;
  tr.dataset.status = status;
  tr.querySelector('.status').textContent = { ok: 'OK', fail: 'FAIL', skip: 'skipped', running: 'testing…', pending: 'waiting' }[status] ?? status;
  const cell = tr.querySelector('.detail');
  cell.textContent = detail;
  if (hint) {
    const h = document.createElement('span');
    h.className = 'hint';
    h.textContent = hint;
    cell.append(h);
  }
}

function wsUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms / 1000} s`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** A throwaway signaling session: open, join a fresh room, then hand out server messages. */
async function openSession() {
  const ws = new WebSocket(wsUrl());
  const queue = [];
  let waiter = null;
  let closed = null;
  ws.onmessage = (ev) => {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    queue.push(msg);
    waiter?.();
  };
  ws.onclose = () => {
    closed = closed ?? new Error('the server closed the WebSocket');
    waiter?.();
  };
  await withTimeout(
    new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error('the WebSocket did not open'));
    }),
    SIGNAL_TIMEOUT_MS,
    'opening the WebSocket',
  );
  const session = {
    ws,
    send: (msg) => ws.send(JSON.stringify(msg)),
    /** The next message (any type), or an error when the socket closes. */
    next() {
      return new Promise((resolve, reject) => {
        const take = () => {
          if (queue.length) {
            waiter = null;
            resolve(queue.shift());
          } else if (closed) {
            waiter = null;
            reject(closed);
          } else waiter = take;
        };
        take();
      });
    },
    close() {
      try {
        ws.close();
      } catch {}
    },
  };
  const room = `connectivity-check-${Math.random().toString(36).slice(2, 10)}`;
  session.send(messages.join(room, 'connectivity check'));
  const joined = await withTimeout(
    (async () => {
      for (;;) {
        const msg = await session.next();
        if (msg.type === 'joined') return msg;
        if (msg.type === 'error') throw new Error(`the server refused to join: ${msg.code} ${msg.message}`);
      }
    })(),
    SIGNAL_TIMEOUT_MS,
    'joining',
  );
  session.joined = joined;
  return session;
}

/** The transport of an ICE candidate line (`candidate:F 1 udp P IP PORT typ ...`). */
function candidateTransport(line) {
  const parts = String(line).replace(/^a=/, '').split(/\s+/);
  return (parts[2] ?? '').toLowerCase();
}

/** Keeps only the server's candidates of `transport` ('udp' | 'tcp') in an SDP. */
function filterSdp(sdp, transport) {
  return sdp
    .split('\r\n')
    .filter((l) => !l.startsWith('a=candidate:') || candidateTransport(l) === transport)
    .join('\r\n');
}

function serverCandidates(sdp) {
  return sdp
    .split('\r\n')
    .filter((l) => l.startsWith('a=candidate:'))
    .map((l) => {
      const p = l.slice(2).split(/\s+/);
      return `${p[2]} ${p[4]}:${p[5]}`;
    });
}

/** A video track from a canvas: media to send without asking for a camera. */
function canvasTrack() {
  const c = document.createElement('canvas');
  c.width = 160;
  c.height = 90;
  const g = c.getContext('2d');
  let n = 0;
  const draw = () => {
    g.fillStyle = `hsl(${(n += 7) % 360} 60% 45%)`;
    g.fillRect(0, 0, c.width, c.height);
  };
  draw();
  const timer = setInterval(draw, 100);
  const track = c.captureStream(10).getVideoTracks()[0];
  return { track, stop: () => (clearInterval(timer), track.stop()) };
}

/** The selected candidate pair: {local, remote, rtt} from getStats, or null. */
async function selectedPair(pc) {
  const stats = await pc.getStats();
  let pairId = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  });
  let pair = pairId ? stats.get(pairId) : null;
  if (!pair) stats.forEach((s) => {
    if (!pair && s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
  });
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId) ?? {};
  const remote = stats.get(pair.remoteCandidateId) ?? {};
  return {
    local: { type: local.candidateType, protocol: local.protocol, relayProtocol: local.relayProtocol, address: local.address, port: local.port },
    remote: { type: remote.candidateType, protocol: remote.protocol, address: remote.address, port: remote.port },
    rtt: pair.currentRoundTripTime,
  };
}

function describePair(p) {
  if (!p) return 'connected';
  const via = p.local.type === 'relay' ? ` through a TURN relay (${p.local.relayProtocol ?? '?'} to the TURN server)` : '';
  const rtt = typeof p.rtt === 'number' ? `, round trip ${Math.round(p.rtt * 1000)} ms` : '';
  return `connected over ${p.remote.protocol} to ${p.remote.address}:${p.remote.port}${via}${rtt}`;
}

/** TURN servers from `joined` with only the URLs of one kind. */
function turnServers(iceServers, kind) {
  const wanted = (url) => {
    const u = url.toLowerCase();
    if (kind === 'turns') return u.startsWith('turns:');
    if (!u.startsWith('turn:')) return false;
    const tcp = u.includes('transport=tcp');
    return kind === 'turn-tcp' ? tcp : !tcp;
  };
  return iceServers
    .map((s) => ({ ...s, urls: (Array.isArray(s.urls) ? s.urls : [s.urls]).filter(wanted) }))
    .filter((s) => s.urls.length > 0);
}

/**
 * One media check on a fresh session. `mode` is 'udp' | 'tcp' | 'turn-udp' | 'turn-tcp' |
 * 'turns'. Resolves with the selected pair; rejects with the reason.
 */
async function mediaCheck(mode, iceServers) {
  const session = await openSession();
  const relay = mode.startsWith('turn');
  const config = relay
    ? { iceServers, iceTransportPolicy: 'relay', bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' }
    : { iceServers: [], bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' };
  const pc = new RTCPeerConnection(config);
  const media = canvasTrack();
  const keep = (c) => relay || !c.candidate || candidateTransport(c.candidate) === mode;
  const pendingRemote = [];
  let gotAnswer = false;
  let localCount = 0;
  const turnErrors = [];
  try {
    pc.onicecandidate = (ev) => {
      if (ev.candidate && ev.candidate.candidate) {
        localCount++;
        session.send(messages.candidate('publisher', candidateInit(ev.candidate)));
      }
    };
    // TURN refusals (401 and the like) and unreachable TURN servers show up here.
    pc.onicecandidateerror = (ev) => {
      if (ev.url) turnErrors.push(`${ev.url}: ${ev.errorCode} ${ev.errorText}`.trim());
    };
    const transceiver = pc.addTransceiver(media.track, { direction: 'sendonly' });
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    session.send(messages.publishOffer(pc.localDescription.sdp, [{ mid: transceiver.mid ?? '0', source: 'camera' }]));
    const why = () => (turnErrors.length ? ` (${turnErrors.join('; ')})` : '');
    const connected = new Promise((resolve, reject) => {
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === 'connected') resolve();
        else if (pc.connectionState === 'failed') reject(new Error(`ICE failed: no candidate pair worked${why()}`));
      };
      // A relay check without a single relay candidate cannot connect: say why at once.
      pc.onicegatheringstatechange = () => {
        if (relay && pc.iceGatheringState === 'complete' && localCount === 0) reject(new Error(`the TURN server gave no relay address${why()}`));
      };
    });
    const signaling = (async () => {
      for (;;) {
        const msg = await session.next();
        if (msg.type === 'publishAnswer') {
          state.server = state.server ?? serverCandidates(msg.sdp);
          const sdp = relay ? msg.sdp : filterSdp(msg.sdp, mode);
          if (!relay && !sdp.includes('a=candidate:')) throw new Error(`the server announces no ${mode.toUpperCase()} candidate`);
          await pc.setRemoteDescription({ type: 'answer', sdp });
          gotAnswer = true;
          for (const c of pendingRemote.splice(0)) await pc.addIceCandidate(c).catch(() => {});
        } else if (msg.type === 'candidate' && msg.peer === 'publisher') {
          if (!keep(msg.candidate)) continue;
          if (gotAnswer) await pc.addIceCandidate(msg.candidate).catch(() => {});
          else pendingRemote.push(msg.candidate);
        } else if (msg.type === 'error') {
          throw new Error(`server error ${msg.code}: ${msg.message}`);
        } else if (msg.type === 'bye') {
          throw new Error(`the server ended the session (${msg.reason})`);
        }
      }
    })();
    await withTimeout(Promise.race([connected, signaling]), CONNECT_TIMEOUT_MS, 'connecting');
    let pair = null;
    for (let i = 0; i < 20 && !pair; i++) {
      pair = await selectedPair(pc);
      if (!pair) await new Promise((r) => setTimeout(r, 100));
    }
    return pair;
  } finally {
    media.stop();
    pc.close();
    try {
      session.send(messages.leave());
    } catch {}
    session.close();
  }
}

async function run() {
  if (state.running) return;
  state.running = true;
  state.done = false;
  state.results = {};
  const again = document.getElementById('again');
  again.disabled = true;
  for (const c of CHECKS) report(c, 'pending');
  document.getElementById('verdict').textContent = '';

  report('websocket', 'running');
  let iceServers = [];
  try {
    const session = await openSession();
    iceServers = session.joined.iceServers ?? [];
    session.send(messages.leave());
    session.close();
    const turnCount = iceServers.filter((s) => (Array.isArray(s.urls) ? s.urls : [s.urls]).some((u) => /^turns?:/i.test(u))).length;
    report('websocket', 'ok', `joined a test room over ${wsUrl()}; the server hands out ${iceServers.length} ICE server entr${iceServers.length === 1 ? 'y' : 'ies'} (${turnCount} with TURN)`);
  } catch (err) {
    report('websocket', 'fail', err.message, HINTS.websocket);
    for (const c of CHECKS.slice(1)) report(c, 'skip', 'needs signaling');
    finish();
    return;
  }

  for (const mode of ['udp', 'tcp', 'turn-udp', 'turn-tcp', 'turns']) {
    let servers = [];
    if (mode.startsWith('turn')) {
      servers = turnServers(iceServers, mode);
      if (!servers.length) {
        report(mode, 'skip', `no ${mode === 'turns' ? 'turns:' : mode === 'turn-tcp' ? 'turn:…?transport=tcp' : 'turn: (UDP)'} URL configured ([[ice.servers]])`);
        continue;
      }
    }
    report(mode, 'running');
    try {
      const pair = await mediaCheck(mode, servers);
      if (mode.startsWith('turn') && pair && pair.local.type !== 'relay') throw new Error(`connected, but not through the relay (${pair.local.type})`);
      report(mode, 'ok', describePair(pair));
      state.results[mode].pair = pair;
    } catch (err) {
      report(mode, 'fail', err.message, HINTS[mode]);
    }
  }
  finish();
}

function finish() {
  const r = state.results;
  const media = ['udp', 'tcp', 'turn-udp', 'turn-tcp', 'turns'].filter((c) => r[c]?.status === 'ok');
  const verdict = document.getElementById('verdict');
  if (r.websocket?.status !== 'ok') {
    verdict.dataset.status = 'fail';
    verdict.textContent = 'Calls will not work from this browser: it cannot reach the signaling WebSocket.';
  } else if (!media.length) {
    verdict.dataset.status = 'fail';
    verdict.textContent = 'Calls will not work from this browser: no media path reached the server.';
  } else {
    verdict.dataset.status = 'ok';
    verdict.textContent = r.udp?.status === 'ok'
      ? 'Calls will work from this browser (media over UDP, the best path).'
      : `Calls will work from this browser, over ${media.join(', ')} (UDP, the best path, failed).`;
  }
  if (state.server?.length) document.getElementById('server').textContent = `The server announces: ${[...new Set(state.server)].join(', ')}`;
  state.running = false;
  state.done = true;
  document.getElementById('again').disabled = false;
}

document.getElementById('again').addEventListener('click', run);
run();
