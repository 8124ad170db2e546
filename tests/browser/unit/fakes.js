// Minimal stand-ins for WebSocket, RTCPeerConnection and MediaStream, enough to drive
// ChorusClient's signaling in node without a browser.

export class FakeWebSocket {
  static instances = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWebSocket.instances.push(this);
    queueMicrotask(() => {
      if (FakeWebSocket.refuse) {
        this.readyState = 3;
        this.onerror?.({});
        this.onclose?.({ code: 1006 });
        return;
      }
      this.readyState = 1;
      this.onopen?.({});
    });
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  /** Delivers a server message (an object or a fixture's text). */
  receive(msg) {
    this.onmessage?.({ data: typeof msg === 'string' ? msg : JSON.stringify(msg) });
  }
  close(code = 1000) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code });
  }
  /** The server drops the connection. */
  drop() {
    this.close(1006);
  }
  static get last() {
    return FakeWebSocket.instances.at(-1);
  }
}

export class FakeTrack {
  /** A video track reports a capture size (`getSettings`), as a camera's does. */
  constructor(kind, label = kind, { width = 1280, height = 720 } = {}) {
    this.kind = kind;
    this.label = label;
    this.size = kind === 'video' ? { width, height } : null;
    this.enabled = true;
    this.readyState = 'live';
    this.listeners = {};
  }
  stop() {
    this.readyState = 'ended';
  }
  addEventListener(t, fn) {
    (this.listeners[t] ??= []).push(fn);
  }
  removeEventListener(t, fn) {
    this.listeners[t] = (this.listeners[t] ?? []).filter((f) => f !== fn);
  }
  fire(t) {
    for (const fn of this.listeners[t] ?? []) fn({ type: t });
  }
  getSettings() {
    return { deviceId: this.label, ...this.size };
  }
}

export class FakeMediaStream {
  constructor(tracks = []) {
    this.tracks = [...tracks];
  }
  getTracks() {
    return [...this.tracks];
  }
  getAudioTracks() {
    return this.tracks.filter((t) => t.kind === 'audio');
  }
  getVideoTracks() {
    return this.tracks.filter((t) => t.kind === 'video');
  }
  addTrack(t) {
    if (!this.tracks.includes(t)) this.tracks.push(t);
  }
  removeTrack(t) {
    this.tracks = this.tracks.filter((x) => x !== t);
  }
}

class FakeTransceiver {
  constructor(pc, trackOrKind, init = {}) {
    this.pc = pc;
    this.mid = null;
    this.direction = init.direction ?? 'sendrecv';
    this.stopped = false;
    const track = typeof trackOrKind === 'string' ? null : trackOrKind;
    this.init = init;
    // The encodings as RTCRtpSender keeps them: one per sendEncodings entry, all active
    // unless said otherwise, or one default encoding.
    const encodings = (init.sendEncodings ?? [{}]).map((e) => ({ active: true, ...e }));
    let transaction = 0;
    this.sender = {
      track,
      encodings,
      /** Every successful setParameters, as the encodings' active flags by rid. */
      setCalls: [],
      replaceTrack: async (t) => {
        this.sender.track = t;
        pc.replaced.push(t);
      },
      getParameters: () => ({ transactionId: String(++transaction), encodings: this.sender.encodings.map((e) => ({ ...e })) }),
      setParameters: async (params) => {
        // Like the browser: only the parameters of the latest getParameters are accepted.
        if (params.transactionId !== String(transaction)) throw new DOMException('stale transactionId', 'InvalidModificationError');
        await Promise.resolve();
        this.sender.encodings = params.encodings.map((e) => ({ ...e }));
        this.sender.setCalls.push(Object.fromEntries(params.encodings.map((e) => [e.rid ?? '', e.active])));
      },
    };
    this.receiver = { track: new FakeTrack(typeof trackOrKind === 'string' ? trackOrKind : trackOrKind.kind, 'remote') };
  }
  setCodecPreferences(codecs) {
    this.codecPreferences = codecs;
  }
  stop() {
    this.stopped = true;
  }
}

export class FakePeerConnection {
  static instances = [];
  constructor(config) {
    this.config = config;
    this.transceivers = [];
    this.localDescription = null;
    this.remoteDescription = null;
    this.signalingState = 'stable';
    this.connectionState = 'new';
    this.candidates = [];
    this.replaced = [];
    this.nextMid = 0;
    FakePeerConnection.instances.push(this);
  }
  addTransceiver(trackOrKind, init) {
    const t = new FakeTransceiver(this, trackOrKind, init);
    this.transceivers.push(t);
    return t;
  }
  getTransceivers() {
    return [...this.transceivers];
  }
  async createOffer() {
    for (const t of this.transceivers) if (t.mid === null && !t.stopped) t.mid = String(this.nextMid++);
    return { type: 'offer', sdp: `fake-offer ${this.transceivers.map((t) => t.mid).join(',')}` };
  }
  async createAnswer() {
    return { type: 'answer', sdp: 'fake-answer' };
  }
  async setLocalDescription(d) {
    this.localDescription = d;
    this.signalingState = d.type === 'offer' ? 'have-local-offer' : 'stable';
    queueMicrotask(() => this.onicecandidate?.({ candidate: { candidate: 'candidate:9 1 udp 1 127.0.0.1 9 typ host', sdpMid: '0', sdpMLineIndex: 0 } }));
  }
  async setRemoteDescription(d) {
    this.remoteDescription = d;
    if (d.type === 'offer') {
      // The server's offer: one receiving transceiver per listed mid (the test puts them in the sdp).
      const mids = (d.sdp.match(/mid:(\S+)/g) ?? []).map((m) => m.slice(4));
      for (const spec of mids) {
        const [mid, kind] = spec.split('/');
        if (!this.transceivers.some((t) => t.mid === mid)) {
          const t = new FakeTransceiver(this, kind ?? 'video', { direction: 'recvonly' });
          t.mid = mid;
          this.transceivers.push(t);
        }
      }
      this.signalingState = 'have-remote-offer';
    } else {
      this.signalingState = 'stable';
    }
  }
  async addIceCandidate(c) {
    this.candidates.push(c);
  }
  async getStats() {
    return new Map();
  }
  close() {
    this.signalingState = 'closed';
  }
}

/** Installs fresh fakes and returns the options to pass to ChorusClient. */
export function fakeEnv() {
  FakeWebSocket.instances = [];
  FakeWebSocket.refuse = false;
  FakePeerConnection.instances = [];
  const timers = new Set();
  return {
    url: 'ws://test/ws',
    WebSocket: FakeWebSocket,
    RTCPeerConnection: FakePeerConnection,
    MediaStream: FakeMediaStream,
    mediaDevices: {
      async getUserMedia(c) {
        const tracks = [];
        if (c.audio) tracks.push(new FakeTrack('audio', 'mic2'));
        if (c.video) tracks.push(new FakeTrack('video', 'cam2'));
        return new FakeMediaStream(tracks);
      },
    },
    statsIntervalMs: 1e9,
    setTimeout: (fn, ms) => {
      const t = setTimeout(() => {
        timers.delete(t);
        fn();
      }, Math.min(ms, 50));
      timers.add(t);
      return t;
    },
    clearTimeout: (t) => {
      clearTimeout(t);
      timers.delete(t);
    },
  };
}

/** Polls `fn` until it returns a truthy value, or fails after `ms`. */
export async function until(fn, ms = 2000, what = 'condition') {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
