// Restricting a page's ICE paths, and reading which path it took.
//
// `installIcePaths(browser)` wraps RTCPeerConnection in every page of the browser; a page
// opts in with `icepath=relay` or `icepath=tcp` in its URL (so other pages of the same
// browser stay unrestricted):
//   relay  iceTransportPolicy 'relay': only TURN relay candidates of its own;
//   tcp    drops the server's non-TCP candidates (from the SDP and from trickle), so only
//          ICE-TCP pairs exist.

function icePathInit() {
  const mode = new URLSearchParams(location.search).get('icepath');
  if (!mode) return;
  const Native = window.RTCPeerConnection;
  const transport = (line) => (String(line).replace(/^a=/, '').split(/\s+/)[2] ?? '').toLowerCase();
  const keepSdp = (sdp) => sdp.split('\r\n').filter((l) => !l.startsWith('a=candidate:') || transport(l) === 'tcp').join('\r\n');
  class Restricted extends Native {
    constructor(config = {}, ...rest) {
      super(mode === 'relay' ? { ...config, iceTransportPolicy: 'relay' } : config, ...rest);
    }
    setRemoteDescription(desc) {
      if (mode === 'tcp' && desc?.sdp) desc = { type: desc.type, sdp: keepSdp(desc.sdp) };
      return super.setRemoteDescription(desc);
    }
    addIceCandidate(c) {
      if (mode === 'tcp' && c?.candidate && transport(c.candidate) !== 'tcp') return Promise.resolve();
      return super.addIceCandidate(c);
    }
  }
  window.RTCPeerConnection = Restricted;
  window.__icepath = mode;
}

/** Installs the wrapper in every page opened later in `browser`. */
export async function installIcePaths(browser) {
  await browser.context.addInitScript(icePathInit);
}

/** Appends `icepath=MODE` to a page URL. */
export function withIcePath(url, mode) {
  const u = new URL(url);
  u.searchParams.set('icepath', mode);
  return u.toString();
}

/**
 * The selected candidate pair of the page's publisher and subscriber peers:
 * `{ pub: {local, remote}, sub: {local, remote} }`, each side `{type, protocol, relayProtocol}`.
 */
export function selectedPairs(page) {
  return page.evaluate(async () => {
    const c = window.chorus.client;
    const out = {};
    for (const [role, pc] of [['pub', c._pub], ['sub', c._sub]]) {
      if (!pc) continue;
      const stats = await pc.getStats();
      let pairId = null;
      stats.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
      });
      const pair = pairId ? stats.get(pairId) : null;
      if (!pair) {
        out[role] = null;
        continue;
      }
      const side = (id) => {
        const s = stats.get(id) ?? {};
        return { type: s.candidateType, protocol: s.protocol, relayProtocol: s.relayProtocol, address: s.address, port: s.port };
      };
      out[role] = { local: side(pair.localCandidateId), remote: side(pair.remoteCandidateId), bytesReceived: pair.bytesReceived, bytesSent: pair.bytesSent };
    }
    return out;
  });
}
