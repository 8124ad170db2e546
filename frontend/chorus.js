// Chorus client library: the signaling protocol, the two peer connections, and the call
// state a UI needs. Plain ES module, no dependencies, no build step.
//
// Every message this module sends or parses is defined in crates/protocol/src/lib.rs and
// has a JSON fixture in crates/protocol/fixtures/; frontend/test/ checks the two agree.
// docs/client.md documents the API for pages other than our own UI.

/** The protocol version this client speaks (sent in `join`). */
export const PROTOCOL_VERSION = 1;

/** Sources a published track can have. */
export const SOURCES = Object.freeze(['microphone', 'camera', 'screen']);

/**
 * What a participant may do when the server does not say (an older server, or `open` auth
 * mode): everything but room administration, and listed to the others.
 */
export const DEFAULT_GRANTS = Object.freeze({
  canPublish: true,
  canPublishSources: SOURCES,
  canSubscribe: true,
  canChat: true,
  roomAdmin: false,
  hidden: false,
});

/** `joined.grants` with every field present (missing ones take DEFAULT_GRANTS'), frozen. */
export function grantsOf(grants) {
  const g = grants && typeof grants === 'object' ? grants : {};
  const flag = (key) => (typeof g[key] === 'boolean' ? g[key] : DEFAULT_GRANTS[key]);
  const sources = Array.isArray(g.canPublishSources) ? g.canPublishSources.filter((s) => SOURCES.includes(s)) : DEFAULT_GRANTS.canPublishSources;
  return Object.freeze({
    canPublish: flag('canPublish'),
    canPublishSources: Object.freeze([...sources]),
    canSubscribe: flag('canSubscribe'),
    canChat: flag('canChat'),
    roomAdmin: flag('roomAdmin'),
    hidden: flag('hidden'),
  });
}

/** Whether `grants` allow publishing a track of `source` (a hidden participant publishes nothing). */
export function mayPublish(grants, source) {
  return Boolean(grants.canPublish && !grants.hidden && grants.canPublishSources.includes(source));
}

/** Whether `grants` allow sending chat (a hidden participant does not chat). */
export function mayChat(grants) {
  return Boolean(grants.canChat && !grants.hidden);
}

// ---------------------------------------------------------------------------------------
// Wire messages
// ---------------------------------------------------------------------------------------

/** An ICE candidate as the protocol carries it (`RTCIceCandidateInit`, absent fields left out). */
export function candidateInit(c) {
  const out = { candidate: String(c.candidate ?? '') };
  if (c.sdpMid !== undefined && c.sdpMid !== null) out.sdpMid = String(c.sdpMid);
  if (c.sdpMLineIndex !== undefined && c.sdpMLineIndex !== null) out.sdpMLineIndex = c.sdpMLineIndex;
  return out;
}

/** Builders for every client → server message. Each returns a plain object; send it as JSON. */
export const messages = Object.freeze({
  // `token`: the join token of a server in `token` auth mode; the key is left out without one.
  join: (room, name, token) => ({ type: 'join', version: PROTOCOL_VERSION, room, name, ...(token ? { token: String(token) } : {}) }),
  leave: () => ({ type: 'leave' }),
  publishOffer: (sdp, tracks) => ({
    type: 'publishOffer',
    sdp,
    tracks: tracks.map(publishTrack),
  }),
  subscribeAnswer: (sdp) => ({ type: 'subscribeAnswer', sdp }),
  candidate: (peer, candidate) => ({ type: 'candidate', peer, candidate: candidateInit(candidate) }),
  setMute: (trackId, muted) => ({ type: 'setMute', trackId, muted: Boolean(muted) }),
  chat: (text) => ({ type: 'chat', text }),
  listRooms: () => ({ type: 'listRooms' }),
  trackSettings: (trackId, visible, width = 0, height = 0) => ({
    type: 'trackSettings',
    trackId,
    visible: Boolean(visible),
    width: toU32(width),
    height: toU32(height),
  }),
  // Room admins only (`grants.roomAdmin`); anyone else gets `error forbidden`.
  removeParticipant: (participantId) => ({ type: 'removeParticipant', participantId }),
  muteTrack: (participantId, trackId, muted) => ({ type: 'muteTrack', participantId, trackId, muted: Boolean(muted) }),
});

// Sizes and bit rates: the server reads them as u32, so whole, non-negative and finite.
function toU32(n) {
  const v = Math.round(Number(n));
  return Number.isFinite(v) && v > 0 ? Math.min(v, 0xffff_ffff) : 0;
}

/** One `publishOffer.tracks` entry. `layers` only for a simulcast m-line (the server omits it empty). */
function publishTrack(t) {
  const out = { mid: String(t.mid), source: t.source };
  if (t.layers?.length) {
    out.layers = t.layers.map((l) => ({ rid: String(l.rid), maxBitrate: toU32(l.maxBitrate), width: toU32(l.width), height: toU32(l.height) }));
  }
  return out;
}

/** A message from the server that does not match the protocol. */
export class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/**
 * An error the server reported (`error {code, message}`), or a local failure with a code of
 * our own: `timeout`, `unreachable`, `closed`, `removed`.
 */
export class ChorusError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = 'ChorusError';
    this.code = code;
  }
}

// Field checks per server message type. 'id' is a numeric id (participant or track).
const SERVER_FIELDS = {
  joined: { version: 'number', participantId: 'id', room: 'string', name: 'string', participants: 'array', iceServers: 'array', chatHistory: 'array' },
  participantJoined: { participant: 'participant' },
  participantLeft: { participantId: 'id' },
  trackPublished: { participantId: 'id', track: 'track' },
  trackUnpublished: { participantId: 'id', trackId: 'id' },
  muteChanged: { participantId: 'id', trackId: 'id', muted: 'boolean' },
  publishAnswer: { sdp: 'string', tracks: 'array' },
  subscribeOffer: { sdp: 'string', tracks: 'array' },
  candidate: { peer: 'peer', candidate: 'object' },
  chat: { line: 'chatLine' },
  roomList: { rooms: 'array' },
  error: { code: 'string', message: 'string' },
  bye: { reason: 'string' },
  notice: { text: 'string', time: 'number' },
  draining: { seconds: 'number' },
  streamState: { trackId: 'id' },
  publishLayers: { trackId: 'id', rids: 'array' },
  activeSpeakers: { speakers: 'array' },
  redirect: { room: 'string', url: 'string' },
};

/** Every `type` the server may send. */
export const SERVER_TYPES = Object.freeze(Object.keys(SERVER_FIELDS));

function checkField(kind, value, where) {
  const ok = {
    number: () => typeof value === 'number' && Number.isFinite(value),
    id: () => (typeof value === 'number' && Number.isInteger(value) && value >= 0) || typeof value === 'string',
    string: () => typeof value === 'string',
    boolean: () => typeof value === 'boolean',
    array: () => Array.isArray(value),
    object: () => value !== null && typeof value === 'object' && !Array.isArray(value),
    peer: () => value === 'publisher' || value === 'subscriber',
    track: () => value && checkAll({ id: 'id', kind: 'string', source: 'string', muted: 'boolean' }, value, where),
    participant: () => value && checkAll({ id: 'id', name: 'string', tracks: 'array' }, value, where),
    chatLine: () => value && checkAll({ from: 'id', name: 'string', text: 'string', time: 'number' }, value, where),
  }[kind];
  if (!ok || !ok()) throw new ProtocolError(`${where}: expected ${kind}`);
  return true;
}

function checkAll(fields, obj, where) {
  for (const [key, kind] of Object.entries(fields)) checkField(kind, obj[key], `${where}.${key}`);
  return true;
}

function checkGrants(g) {
  checkField('object', g, 'joined.grants');
  for (const key of ['canPublish', 'canSubscribe', 'canChat', 'roomAdmin', 'hidden']) {
    if (g[key] !== undefined) checkField('boolean', g[key], `joined.grants.${key}`);
  }
  if (g.canPublishSources !== undefined) {
    checkField('array', g.canPublishSources, 'joined.grants.canPublishSources');
    g.canPublishSources.forEach((s, i) => checkField('string', s, `joined.grants.canPublishSources[${i}]`));
  }
}

/**
 * Parses one text frame from the server. Throws `ProtocolError` on malformed JSON or a known
 * type with missing fields. A message of an unknown type is returned as is (forward
 * compatibility); the client ignores it.
 */
export function parseServerMessage(data) {
  let msg = data;
  if (typeof data === 'string') {
    try {
      msg = JSON.parse(data);
    } catch {
      throw new ProtocolError('malformed JSON');
    }
  }
  if (msg === null || typeof msg !== 'object' || typeof msg.type !== 'string') {
    throw new ProtocolError('message without a type');
  }
  const fields = SERVER_FIELDS[msg.type];
  if (fields) {
    checkAll(fields, msg, msg.type);
    if (msg.type === 'joined') {
      if (msg.grants !== undefined) checkGrants(msg.grants);
      msg.participants.forEach((p, i) => checkField('participant', p, `joined.participants[${i}]`));
      msg.chatHistory.forEach((l, i) => checkField('chatLine', l, `joined.chatHistory[${i}]`));
    }
    if (msg.type === 'streamState') {
      if (msg.layer !== undefined && !(Number.isInteger(msg.layer) && msg.layer >= 0)) throw new ProtocolError('streamState.layer: expected a layer number');
      if (msg.paused !== undefined) checkField('string', msg.paused, 'streamState.paused');
      if (msg.layer === undefined && msg.paused === undefined) throw new ProtocolError('streamState: expected layer or paused');
    }
    if (msg.type === 'publishLayers') msg.rids.forEach((r, i) => checkField('string', r, `publishLayers.rids[${i}]`));
    if (msg.type === 'activeSpeakers') {
      msg.speakers.forEach((s, i) => {
        checkField('object', s, `activeSpeakers.speakers[${i}]`);
        checkField('id', s.participantId, `activeSpeakers.speakers[${i}].participantId`);
        if (!(Number.isInteger(s.level) && s.level >= 0 && s.level <= 127)) throw new ProtocolError(`activeSpeakers.speakers[${i}].level: expected 0 to 127`);
      });
    }
    for (const p of msg.type === 'joined' ? msg.participants : msg.type === 'participantJoined' ? [msg.participant] : []) {
      p.tracks.forEach((t, i) => checkField('track', t, `participant ${p.id}.tracks[${i}]`));
    }
  }
  return msg;
}

// ---------------------------------------------------------------------------------------
// Local media
// ---------------------------------------------------------------------------------------

/** Default capture constraints without simulcast: modest, because the one stream sent is what every receiver gets. */
export const DEFAULT_VIDEO = Object.freeze({ width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 24 } });

/**
 * Default capture constraints with simulcast: the full layer can be large, because each
 * receiver gets only the layer its tile and downlink need.
 */
export const DEFAULT_SIMULCAST_VIDEO = Object.freeze({ width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 24 } });

/** The rids the server knows, lowest layer first: quarter, half and full resolution. */
export const SIMULCAST_RIDS = Object.freeze(['q', 'h', 'f']);

/**
 * The camera's simulcast layers, lowest first, as `sendEncodings` take them. The quarter
 * layer is small and cheap enough for a thumbnail on a weak link; the full layer is only
 * forwarded to someone who shows the camera large.
 */
export const SIMULCAST_LAYERS = Object.freeze([
  Object.freeze({ rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 }),
  Object.freeze({ rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 }),
  Object.freeze({ rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 2_500_000 }),
]);

/**
 * How many simulcast layers Chromium encodes of a capture of `size`: its resolution-based
 * layer limit keeps only the lowest encodings of a small capture (three from 960×540, two
 * from 480×270, else one). Unknown size: all of them.
 */
function layerBudget(size, count) {
  if (!size) return count;
  const px = size.width * size.height;
  return Math.min(count, px >= 960 * 540 ? 3 : px >= 480 * 270 ? 2 : 1);
}

// What the camera and a screen send without simulcast: one encoding each.
const SINGLE_CAMERA_BITRATE = 900_000;
const SCREEN_BITRATE = 1_500_000;

/**
 * Checks a simulcast layer list: the server forwards at most three layers, named by the
 * rids `q`, `h`, `f` in that order (a rid's position is its layer number), so a list it
 * would refuse (`invalidSimulcast`) fails here, when the client is made, not mid-call.
 */
function checkSimulcastLayers(layers) {
  if (!Array.isArray(layers) || layers.length < 1 || layers.length > SIMULCAST_RIDS.length) {
    throw new ChorusError('invalid', `simulcastLayers: expected 1 to ${SIMULCAST_RIDS.length} layers`);
  }
  let last = -1;
  return Object.freeze(
    layers.map((l, i) => {
      const at = SIMULCAST_RIDS.indexOf(l?.rid);
      if (at <= last) throw new ChorusError('invalid', `simulcastLayers[${i}]: rid must be one of ${SIMULCAST_RIDS.join(', ')}, lowest first, each once`);
      last = at;
      const scale = l.scaleResolutionDownBy ?? 1;
      if (!(Number.isFinite(scale) && scale >= 1)) throw new ChorusError('invalid', `simulcastLayers[${i}]: scaleResolutionDownBy must be at least 1`);
      if (!(Number.isFinite(l.maxBitrate) && l.maxBitrate > 0)) throw new ChorusError('invalid', `simulcastLayers[${i}]: maxBitrate must be positive`);
      const out = { rid: l.rid, scaleResolutionDownBy: scale, maxBitrate: Math.round(l.maxBitrate) };
      if (l.maxFramerate !== undefined) out.maxFramerate = l.maxFramerate;
      return Object.freeze(out);
    }),
  );
}

function videoConstraints(base, deviceId) {
  const c = { ...(base || DEFAULT_VIDEO) };
  if (deviceId) c.deviceId = { exact: deviceId };
  return c;
}

/** A video track's capture size from its settings, or null when it does not say. */
function sizeOf(track) {
  const s = track?.getSettings?.() ?? {};
  return s.width > 0 && s.height > 0 ? { width: s.width, height: s.height } : null;
}

function audioConstraints(deviceId) {
  const c = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  if (deviceId) c.deviceId = { exact: deviceId };
  return c;
}

/**
 * Asks for microphone and camera, and tells which of them failed. Never throws: a denied or
 * absent device leaves its error in `errors` and the call can go on receive-only.
 *
 * @returns {Promise<{stream: MediaStream|null, errors: {audio?: Error, video?: Error}}>}
 */
export async function getLocalMedia({
  audio = true,
  video = true,
  audioDeviceId,
  videoDeviceId,
  videoConstraints: vc,
  mediaDevices = globalThis.navigator?.mediaDevices,
} = {}) {
  const errors = {};
  if (!mediaDevices?.getUserMedia) {
    const e = new ChorusError('unsupported', 'this browser cannot capture media (needs https or localhost)');
    if (audio) errors.audio = e;
    if (video) errors.video = e;
    return { stream: null, errors };
  }
  const want = { audio: audio ? audioConstraints(audioDeviceId) : false, video: video ? videoConstraints(vc, videoDeviceId) : false };
  if (!want.audio && !want.video) return { stream: null, errors };
  try {
    return { stream: await mediaDevices.getUserMedia(want), errors };
  } catch (both) {
    // Find out which one fails, and keep the other.
    if (!(want.audio && want.video)) {
      errors[want.audio ? 'audio' : 'video'] = both;
      return { stream: null, errors };
    }
    const tracks = [];
    for (const kind of ['audio', 'video']) {
      try {
        const s = await mediaDevices.getUserMedia({ [kind]: want[kind] });
        tracks.push(...s.getTracks());
      } catch (e) {
        errors[kind] = e;
      }
    }
    if (!tracks.length) return { stream: null, errors };
    const MS = globalThis.MediaStream;
    return { stream: MS ? new MS(tracks) : null, errors };
  }
}

// ---------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------

const STATS_INTERVAL_MS = 500;
// A join refused for one of these is not retried: trying again gets the same answer.
const FATAL_JOIN_ERRORS = new Set(['roomFull', 'invalidName', 'unsupportedVersion', 'tooManyRooms', 'unauthorized', 'tokenExpired', 'forbidden']);
const PUBLISH_ERRORS = new Set(['invalidSdp', 'outOfOrder', 'invalidMessage', 'internal', 'invalidSimulcast', 'forbidden']);
// A call ended with one of these `bye` reasons is over: rejoining would be undoing it.
const FINAL_BYES = new Set(['removed', 'roomClosed']);
// What a server in token mode answers to `listRooms` when its room list is not public.
const ROOM_LIST_REFUSALS = new Set(['unauthorized', 'forbidden']);
// At most one trackSettings per track this often: a tile being resized fires many size
// changes, and the server's allocation runs every 200 ms anyway.
const TRACK_SETTINGS_INTERVAL_MS = 300;

/**
 * How many `redirect`s one join follows. A cluster redirects a join at most once (to the
 * room's node); a second can happen when the room moved in between, more means a loop.
 */
const MAX_REDIRECTS = 3;

/** Whether `url` is a WebSocket URL a `redirect` may send the client to. */
export function redirectTarget(url) {
  try {
    const u = new URL(url);
    return u.protocol === 'ws:' || u.protocol === 'wss:' ? u.href : null;
  } catch {
    return null;
  }
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) return null;
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/ws`;
}

/** A one-line description of a message for debug logs (no SDP bodies). */
export function summarize(msg) {
  const { type, sdp, ...rest } = msg;
  const body = JSON.stringify(rest);
  return `${type}${sdp ? ` sdp(${sdp.length}b, ${(sdp.match(/^m=/gm) ?? []).length} m-lines)` : ''} ${body.length > 300 ? `${body.slice(0, 300)}…` : body}`;
}

/**
 * Lists Opus RED (`audio/red`, RFC 2198) first on a microphone's transceiver, where the
 * browser has it: the offer's order is what the server's answer echoes, and Chromium sends
 * the answer's first codec, so this is what makes it send RED. A server that negotiates no
 * RED (`[audio] red = false`) answers Opus alone, and plain Opus goes. Returns whether RED
 * is now preferred.
 */
export function preferRed(transceiver, RTCRtpSender) {
  const caps = RTCRtpSender?.getCapabilities?.('audio');
  if (!caps || typeof transceiver.setCodecPreferences !== 'function') return false;
  const isRed = (c) => c.mimeType.toLowerCase() === 'audio/red';
  const red = caps.codecs.filter(isRed);
  if (red.length === 0) return false;
  try {
    transceiver.setCodecPreferences([...red, ...caps.codecs.filter((c) => !isRed(c))]);
    return true;
  } catch {
    return false;
  }
}

function defaultSourceFor(kind) {
  return kind === 'audio' ? 'microphone' : 'camera';
}

/**
 * One person's connection to a Chorus server. See docs/client.md.
 *
 * Events (subscribe with `on(type, fn)`; every handler receives one detail object):
 * `connectionState`, `roomList`, `joined`, `participantJoined`, `participantLeft`,
 * `trackPublished`, `trackAdded`, `trackRemoved`, `muteChanged`, `streamState`, `chat`,
 * `activeSpeaker`, `activeSpeakers`, `audioLevels`, `quality`, `localTracks`, `screenShare`, `published`,
 * `publishLayers`, `serverError`, `notice`, `draining`, `bye`, `redirect`, `warning`.
 */
export class ChorusClient {
  constructor(options = {}) {
    this.url = options.url ?? defaultUrl();
    /**
     * Where every join starts: `url` as given. A `redirect` (a cluster node that does not
     * host the room) moves `url` to the room's node for that join; a rejoin after a failure
     * starts here again, so that it lands on a live node (docs/cluster.md).
     */
    this.entryUrl = this.url;
    this.reconnect = options.reconnect ?? true;
    this.joinTimeoutMs = options.joinTimeoutMs ?? 10000;
    this.statsIntervalMs = options.statsIntervalMs ?? STATS_INTERVAL_MS;
    this.iceServersOverride = options.iceServers; // undefined: use what `joined` says
    /** Whether the camera is sent as simulcast layers (screen share never is). */
    this.simulcast = options.simulcast ?? true;
    this.simulcastLayers = checkSimulcastLayers(options.simulcastLayers ?? SIMULCAST_LAYERS);
    this.videoConstraints = options.videoConstraints ?? (this.simulcast ? DEFAULT_SIMULCAST_VIDEO : DEFAULT_VIDEO);
    this.trackSettingsIntervalMs = options.trackSettingsIntervalMs ?? TRACK_SETTINGS_INTERVAL_MS;
    this._now = options.now ?? (() => Date.now());
    this.screenStopMode = options.screenStopMode ?? 'stop'; // 'stop' | 'inactive'
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._RTCPeerConnection = options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    this._MediaStream = options.MediaStream ?? globalThis.MediaStream;
    this._mediaDevices = options.mediaDevices ?? globalThis.navigator?.mediaDevices;
    this._RTCRtpSender = options.RTCRtpSender ?? globalThis.RTCRtpSender;
    this._setTimeout = options.setTimeout ?? globalThis.setTimeout.bind(globalThis);
    this._clearTimeout = options.clearTimeout ?? globalThis.clearTimeout.bind(globalThis);
    this._log = options.log ?? (() => {});

    this._listeners = new Map();
    /** 'idle' | 'connecting' | 'connected' (socket open, not in a room) | 'joining' | 'joined' | 'reconnecting' | 'disconnected' */
    this.connectionState = 'idle';
    /** 'new' | 'connecting' | 'connected' | 'failed' | 'closed': the worse of the two peers */
    this.mediaState = 'new';
    this.room = null;
    this.name = null;
    /** The join token (token auth mode), kept for rejoins; null without one. */
    this.token = null;
    /** What this participant may do (`joined.grants`, see DEFAULT_GRANTS); null outside a room. */
    this.grants = null;
    /** Whether the server refused to list rooms to this session (token mode, list not public). */
    this.roomListRefused = false;
    this.participantId = null;
    /** @type {Map<number, {id, name, tracks: Map<number, object>, audioLevel: number}>} */
    this.participants = new Map();
    this.chat = [];
    this.rooms = [];
    /** The speaker the server elected (its `activeSpeakers` list's first), or null. */
    this.activeSpeaker = null;
    /** The server's whole list: [{participantId, level (0..127)}], loudest first. */
    this.activeSpeakers = [];
    /** Whether the microphone prefers Opus RED (RFC 2198) where the browser has it. */
    this.red = options.red ?? true;
    this.quality = { level: 'unknown', rtt: null, loss: null };
    this.iceServers = [];
    this.local = {
      stream: null, // MediaStream with the current microphone and camera tracks
      tracks: { microphone: null, camera: null, screen: null },
      muted: { microphone: false, camera: false },
      // Muted by a room admin (`muteTrack`): the server refuses our unmute until an admin lifts it.
      adminMuted: { microphone: false, camera: false, screen: false },
      screenStream: null,
    };
    this.lastBye = null;

    this._socket = null;
    this._socketOpen = null; // Promise while opening
    this._epoch = 0; // bumps with every socket, so late messages of an old one are dropped
    this._queue = Promise.resolve();
    this._waiters = [];
    this._wantJoined = false;
    this._wantRoomList = false;
    this._reconnectAttempt = 0;
    this._reconnectTimer = null;
    this._roomListTimer = null;
    this._resetCall();
  }

  // ----- events ------------------------------------------------------------------------

  /** Subscribes to an event; returns a function that unsubscribes. */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this._listeners.get(type)?.delete(fn);
  }

  /** Resolves with the detail of the next `type` event that passes `filter`. */
  once(type, filter = () => true) {
    return new Promise((resolve) => {
      const off = this.on(type, (d) => {
        if (filter(d)) {
          off();
          resolve(d);
        }
      });
    });
  }

  _emit(type, detail = {}) {
    for (const fn of [...(this._listeners.get(type) ?? [])]) {
      try {
        fn(detail);
      } catch (err) {
        this._log('listener failed', type, err);
      }
    }
  }

  _setConnectionState(state, extra = {}) {
    if (this.connectionState === state && !extra.force) return;
    this.connectionState = state;
    this._emit('connectionState', { state, ...extra });
  }

  // ----- socket ------------------------------------------------------------------------

  /** Opens the WebSocket if it is not open. Resolves when it is. */
  connect() {
    if (this._socket && this._socket.readyState === 1) return Promise.resolve();
    if (this._socketOpen) return this._socketOpen;
    if (!this.url) return Promise.reject(new ChorusError('unreachable', 'no server URL'));
    const epoch = ++this._epoch;
    if (!this._wantJoined) this._setConnectionState('connecting');
    this._socketOpen = new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new this._WebSocket(this.url);
      } catch (err) {
        this._socketOpen = null;
        reject(new ChorusError('unreachable', String(err?.message ?? err)));
        return;
      }
      this._socket = ws;
      let opened = false;
      // Handlers go on before anything is sent: a message can arrive right after `join`.
      ws.onmessage = (ev) => {
        if (epoch !== this._epoch) return;
        let msg;
        try {
          msg = parseServerMessage(ev.data);
        } catch (err) {
          this._log('bad server message', err, ev.data);
          this._emit('warning', { error: err });
          return;
        }
        this._log('<-', summarize(msg));
        this._queue = this._queue
          .then(() => (epoch === this._epoch ? this._handle(msg) : undefined))
          .catch((err) => {
            this._log('handling failed', msg.type, err);
            this._emit('warning', { error: err, message: msg });
          });
      };
      ws.onopen = () => {
        opened = true;
        this._socketOpen = null;
        if (!this._wantJoined) this._setConnectionState('connected');
        resolve();
      };
      ws.onerror = () => {};
      ws.onclose = (ev) => {
        if (epoch !== this._epoch) return;
        this._socket = null;
        this._socketOpen = null;
        if (!opened) reject(new ChorusError('unreachable', `cannot reach the server (${ev?.code ?? 'closed'})`));
        this._onSocketClosed(ev, opened);
      };
    });
    return this._socketOpen;
  }

  _send(msg) {
    if (!this._socket || this._socket.readyState !== 1) {
      this._log('not sent, socket closed', msg.type);
      return false;
    }
    this._socket.send(JSON.stringify(msg));
    this._log('->', summarize(msg));
    return true;
  }

  _waitFor(match, failMatch, timeoutMs, what) {
    return new Promise((resolve, reject) => {
      const w = { match, failMatch, resolve, reject };
      w.timer = this._setTimeout(() => {
        this._waiters = this._waiters.filter((x) => x !== w);
        reject(new ChorusError('timeout', `no ${what} from the server within ${timeoutMs} ms`));
      }, timeoutMs);
      this._waiters.push(w);
    });
  }

  /**
   * Resolves every waiter `msg` matches. An error fails only the oldest waiter it would
   * fail: the server answers requests in order, so it answers that one (a `listRooms`
   * refused just before a `join` must not fail the join).
   */
  _settleWaiters(msg) {
    let failed = false;
    for (const w of [...this._waiters]) {
      if (w.match(msg)) {
        this._clearTimeout(w.timer);
        this._waiters = this._waiters.filter((x) => x !== w);
        w.resolve(msg);
      } else if (!failed && w.failMatch?.(msg)) {
        failed = true;
        this._clearTimeout(w.timer);
        this._waiters = this._waiters.filter((x) => x !== w);
        w.reject(new ChorusError(msg.code, msg.message));
      }
    }
  }

  _failWaiters(err) {
    for (const w of this._waiters) {
      this._clearTimeout(w.timer);
      w.reject(err);
    }
    this._waiters = [];
  }

  _onSocketClosed(ev, opened) {
    this._failWaiters(new ChorusError('closed', 'the connection to the server closed'));
    const inCall = this._wantJoined && this.participantId !== null;
    const final = FINAL_BYES.has(this.lastBye?.reason);
    if (this._wantJoined && this.reconnect && !final && (inCall || this._reconnectAttempt > 0)) {
      this._scheduleReconnect();
    } else if (!this._wantJoined && this._wantRoomList) {
      this._setConnectionState('disconnected', { code: ev?.code });
      clearTimeout(this._roomListTimer);
      this._roomListTimer = this._setTimeout(() => {
        if (this._wantRoomList && !this._wantJoined) this.listRooms().catch(() => {});
      }, 2000);
    } else if (opened || this.connectionState !== 'idle') {
      if (!this._wantJoined || !this.reconnect || final) this._teardownCall();
      this._setConnectionState('disconnected', { code: ev?.code, reason: this.lastBye?.reason });
    }
  }

  // ----- lobby -------------------------------------------------------------------------

  /**
   * Asks for the room list. The server answers with `roomList` and, while this session is
   * not in a room, pushes a new one whenever the counts change. Resolves with the rooms.
   */
  async listRooms() {
    this._wantRoomList = true;
    await this.connect();
    const p = this._waitFor(
      (m) => m.type === 'roomList',
      (m) => m.type === 'error' && ROOM_LIST_REFUSALS.has(m.code),
      5000,
      'roomList',
    );
    this._send(messages.listRooms());
    try {
      const m = await p;
      this.roomListRefused = false;
      return m.rooms;
    } catch (err) {
      // Refused (a token-mode server whose list is not public): asking again gets the same.
      if (ROOM_LIST_REFUSALS.has(err.code)) {
        this.roomListRefused = true;
        this.stopListingRooms();
      }
      throw err;
    }
  }

  /** Stops asking for room list updates (they stop for good on join). */
  stopListingRooms() {
    this._wantRoomList = false;
    clearTimeout(this._roomListTimer);
  }

  // ----- joining -----------------------------------------------------------------------

  /**
   * Joins `room` as `name`, publishing the tracks of `stream` (microphone and camera; pass
   * null to join receive-only) that the grants allow. `token` is the join token a server in
   * token mode needs. Resolves once joined (media may still be connecting). Rejects with a
   * ChorusError (`roomFull`, `invalidName`, `unauthorized`, `tokenExpired`, `unreachable`,
   * `timeout`, ...).
   */
  async join({ room, name, stream = null, token = null } = {}) {
    if (this._wantJoined) throw new ChorusError('outOfOrder', 'already in a room; leave first');
    this.room = room;
    this.name = name;
    this.token = token || null;
    this.lastBye = null;
    this._setLocalStream(stream);
    this._wantJoined = true;
    this.stopListingRooms();
    this._reconnectAttempt = 0;
    try {
      return await this._connectAndJoin();
    } catch (err) {
      this._wantJoined = false;
      this._teardownCall();
      this._setLocalStream(null); // the caller's stream: no longer ours to hold
      this._setConnectionState(this._socket ? 'connected' : 'disconnected', { error: err });
      throw err;
    }
  }

  async _connectAndJoin() {
    this._setConnectionState(this._reconnectAttempt > 0 ? 'reconnecting' : 'joining');
    let joined;
    for (let redirects = 0; ; redirects++) {
      await this.connect();
      const p = this._waitFor(
        (m) => m.type === 'joined' || m.type === 'redirect',
        (m) => m.type === 'error',
        this.joinTimeoutMs,
        'joined',
      );
      this._send(messages.join(this.room, this.name, this.token));
      const reply = await p;
      if (reply.type === 'joined') {
        joined = reply;
        break;
      }
      const target = redirectTarget(reply.url);
      if (!target) throw new ChorusError('unreachable', `the server redirected to ${JSON.stringify(reply.url)}, not a WebSocket URL`);
      if (redirects + 1 >= MAX_REDIRECTS) throw new ChorusError('unreachable', `redirected ${MAX_REDIRECTS} times; giving up`);
      this._followRedirect(target);
    }
    this._reconnectAttempt = 0;
    // Publish in the background; the caller does not wait for media.
    this._publishInitial().catch((err) => {
      this._log('publish failed', err);
      this._emit('warning', { error: err, during: 'publish' });
    });
    return joined;
  }

  /** Drops the socket quietly and points `url` at the room's node; the join goes on there. */
  _followRedirect(url) {
    this._log('redirected to', url);
    this._dropSocket();
    this.url = url;
    this._emit('redirect', { url, room: this.room });
  }

  _scheduleReconnect() {
    this._teardownCall({ reconnecting: true });
    this._setConnectionState('reconnecting', { attempt: this._reconnectAttempt + 1, reason: this.lastBye?.reason });
    const delay = Math.min(500 * 2 ** this._reconnectAttempt, 5000);
    this._reconnectAttempt += 1;
    this._clearTimeout(this._reconnectTimer);
    this._reconnectTimer = this._setTimeout(async () => {
      if (!this._wantJoined) return;
      try {
        this.lastBye = null;
        // Back through the entry: the node that hosted the call may be the one that failed.
        if (this.url !== this.entryUrl) {
          this._dropSocket();
          this.url = this.entryUrl;
        }
        await this._connectAndJoin();
      } catch (err) {
        if (!this._wantJoined) return;
        if (FATAL_JOIN_ERRORS.has(err.code)) {
          this._wantJoined = false;
          this._teardownCall();
          this._setConnectionState('disconnected', { error: err });
          return;
        }
        // A socket that closed has already scheduled the next try (onclose); one that is
        // still open (a timeout, a passing server error) is dropped and retried.
        if (err.code !== 'unreachable' && err.code !== 'closed') this._restartSession();
      }
    }, delay);
  }

  /**
   * Leaves the room. The WebSocket stays open (it can list rooms and join again). Stops the
   * local capture tracks unless `stopTracks` is false.
   */
  async leave({ stopTracks = true } = {}) {
    this._wantJoined = false;
    this._clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._send(messages.leave());
    this._teardownCall();
    this.stopScreenShareTracks();
    if (stopTracks) {
      for (const t of this.local.stream?.getTracks() ?? []) t.stop();
      this._setLocalStream(null);
    }
    this._setConnectionState(this._socket ? 'connected' : 'disconnected');
  }

  /** Closes everything, including the WebSocket. */
  close() {
    this.leave().catch(() => {});
    this.stopListingRooms();
    this._epoch++;
    try {
      this._socket?.close();
    } catch {}
    this._socket = null;
    this._setConnectionState('disconnected');
  }

  // ----- call state --------------------------------------------------------------------

  _resetCall() {
    this.participantId = null;
    this.grants = null;
    this.local.adminMuted = { microphone: false, camera: false, screen: false };
    this._pub = null;
    this._sub = null;
    this._publications = new Map(); // source -> {source, transceiver, trackId}
    this._midMap = new Map(); // subscriber mid -> {trackId, participantId}
    this._pubChain = Promise.resolve();
    this._pendingRemoteCandidates = { publisher: [], subscriber: [] };
    this._pendingLocalCandidates = { publisher: [], subscriber: [] };
    this._canSendCandidates = { publisher: false, subscriber: false };
    this._pendingChat = [];
    this._prevStats = new Map();
    this._peerStates = { publisher: 'new', subscriber: 'new' };
    this.activeSpeaker = null;
    this.activeSpeakers = [];
    // trackId -> {want, sent, timer, lastSent}: how the UI shows each subscribed video,
    // and what the server was last told (trackSettings). A new session starts untold.
    this._views = new Map();
    // trackId -> {layer, paused}: the last streamState, kept also for a track whose
    // trackPublished has not come yet.
    this._streamStates = new Map();
  }

  _teardownCall({ reconnecting = false } = {}) {
    this._clearTimeout(this._statsTimer);
    this._statsTimer = null;
    for (const v of this._views.values()) this._clearTimeout(v.timer);
    for (const p of [...this.participants.values()]) this._removeParticipant(p, { reconnecting });
    for (const pc of [this._pub, this._sub]) {
      try {
        pc?.close();
      } catch {}
    }
    this._resetCall();
    this._setMediaState('closed');
  }

  _setLocalStream(stream) {
    this.local.stream = stream;
    this.local.tracks.microphone = stream?.getAudioTracks()[0] ?? null;
    this.local.tracks.camera = stream?.getVideoTracks()[0] ?? null;
    if (this.local.tracks.microphone) this.local.tracks.microphone.enabled = !this.local.muted.microphone;
    if (!this.local.tracks.camera && stream) this.local.muted.camera = true;
    this._emit('localTracks', { stream, tracks: { ...this.local.tracks } });
  }

  /** A participant's track of one source (the first one), or undefined. */
  static trackOf(participant, source) {
    for (const t of participant?.tracks?.values() ?? []) if (t.source === source) return t;
    return undefined;
  }

  _addParticipant(info, existing) {
    const p = this.participants.get(info.id) ?? { id: info.id, name: info.name, tracks: new Map(), audioLevel: 0 };
    p.name = info.name;
    this.participants.set(p.id, p);
    for (const t of info.tracks) {
      const prev = p.tracks.get(t.id);
      p.tracks.set(t.id, prev ? Object.assign(prev, t, { guessed: false }) : this._newTrack(t));
    }
    this._emit('participantJoined', { participant: p, existing });
    return p;
  }

  _removeParticipant(p, extra = {}) {
    for (const t of [...p.tracks.values()]) this._removeTrack(p, t, extra);
    this.participants.delete(p.id);
    if (this.activeSpeaker === p.id) this._setActiveSpeaker(null);
    this._emit('participantLeft', { participant: p, ...extra });
  }

  _removeTrack(p, t, extra = {}) {
    p.tracks.delete(t.id);
    this._clearTimeout(this._views.get(t.id)?.timer);
    this._views.delete(t.id);
    this._streamStates.delete(t.id);
    for (const [mid, e] of this._midMap) if (e.trackId === t.id) this._midMap.delete(mid);
    if (t.mediaTrack) this._emit('trackRemoved', { participant: p, track: t, ...extra });
  }

  /** Binds subscriber transceivers to the tracks the mid map names. Idempotent. */
  _bindSubscriber() {
    const pc = this._sub;
    if (!pc) return;
    for (const tr of pc.getTransceivers()) {
      const mid = tr.mid;
      if (mid === null || mid === undefined || tr.stopped) continue;
      const entry = this._midMap.get(mid);
      if (!entry) continue;
      const p = this.participants.get(entry.participantId);
      if (!p) continue;
      let t = p.tracks.get(entry.trackId);
      const mediaTrack = tr.receiver.track;
      if (!t) {
        // The offer came before `trackPublished`: guess the source from the kind until then.
        t = this._newTrack({ id: entry.trackId, kind: mediaTrack.kind, source: defaultSourceFor(mediaTrack.kind), muted: false, guessed: true });
        p.tracks.set(t.id, t);
      }
      if (t.mediaTrack === mediaTrack && t.mid === mid) continue;
      t.mid = mid;
      t.mediaTrack = mediaTrack;
      t.stream = new this._MediaStream([mediaTrack]);
      this._emit('trackAdded', { participant: p, track: t });
      // A view set before the track was subscribed can be told now.
      this._flushView(t.id);
    }
  }

  /** A remote track's model, from the server's track info. */
  _newTrack(info) {
    const state = this._streamStates.get(info.id);
    return { ...info, mid: null, mediaTrack: null, stream: null, layer: state?.layer ?? null, paused: state?.paused ?? null };
  }

  /** The participant and track model of a remote track id, or null. */
  _findTrack(trackId) {
    for (const p of this.participants.values()) {
      const t = p.tracks.get(trackId);
      if (t) return { participant: p, track: t };
    }
    return null;
  }

  // ----- message handling (one at a time, in arrival order) ------------------------------

  async _handle(msg) {
    const callMessage = !['joined', 'roomList', 'error', 'bye', 'notice', 'redirect'].includes(msg.type);
    if (callMessage && this.participantId === null) {
      this._log('not in a room; ignoring', msg.type);
      this._settleWaiters(msg);
      return;
    }
    switch (msg.type) {
      case 'joined':
        this._onJoined(msg);
        break;
      case 'participantJoined':
        if (msg.participant.id !== this.participantId) {
          this._addParticipant(msg.participant, false);
          this._bindSubscriber();
        }
        break;
      case 'participantLeft': {
        const p = this.participants.get(msg.participantId);
        if (p) this._removeParticipant(p);
        break;
      }
      case 'trackPublished': {
        const p = this.participants.get(msg.participantId);
        if (!p) break;
        const prev = p.tracks.get(msg.track.id);
        const t = prev ? Object.assign(prev, msg.track, { guessed: false }) : this._newTrack(msg.track);
        p.tracks.set(t.id, t);
        this._emit('trackPublished', { participant: p, track: t });
        this._bindSubscriber();
        break;
      }
      case 'trackUnpublished': {
        const p = this.participants.get(msg.participantId);
        const t = p?.tracks.get(msg.trackId);
        if (t) this._removeTrack(p, t);
        break;
      }
      case 'muteChanged': {
        if (msg.participantId === this.participantId) {
          this._onOwnMuteChanged(msg);
          break;
        }
        const p = this.participants.get(msg.participantId);
        const t = p?.tracks.get(msg.trackId);
        if (t) {
          t.muted = msg.muted;
          this._emit('muteChanged', { participant: p, track: t, muted: msg.muted });
        }
        break;
      }
      case 'publishAnswer':
        await this._onPublishAnswer(msg);
        break;
      case 'subscribeOffer':
        await this._onSubscribeOffer(msg);
        break;
      case 'candidate':
        await this._onRemoteCandidate(msg.peer, msg.candidate);
        break;
      case 'chat':
        this._onChat(msg.line);
        break;
      case 'streamState':
        this._onStreamState(msg);
        break;
      case 'publishLayers':
        await this._onPublishLayers(msg);
        break;
      case 'activeSpeakers':
        this._onActiveSpeakers(msg);
        break;
      case 'roomList':
        this.rooms = msg.rooms;
        this._emit('roomList', { rooms: msg.rooms });
        break;
      case 'error':
        if (msg.code === 'forbidden') this._onUnmuteRefused();
        this._emit('serverError', { code: msg.code, message: msg.message });
        break;
      case 'notice':
        this._emit('notice', { text: msg.text, time: msg.time });
        break;
      case 'draining':
        this._emit('draining', { seconds: msg.seconds });
        break;
      case 'redirect':
        // The answer to our join: `_connectAndJoin` follows it.
        break;
      case 'bye':
        this.lastBye = { reason: msg.reason };
        this._emit('bye', { reason: msg.reason });
        if (FINAL_BYES.has(msg.reason)) this._wantJoined = false;
        break;
      default:
        this._log('ignoring unknown message', msg.type);
    }
    this._settleWaiters(msg);
  }

  _onJoined(msg) {
    this.participantId = msg.participantId;
    this.room = msg.room ?? this.room;
    this.name = msg.name ?? this.name; // a join token's name wins over the typed one
    this.grants = grantsOf(msg.grants);
    this.iceServers = this.iceServersOverride ?? msg.iceServers;
    this._createPeers();
    this._peerStates = { publisher: 'new', subscriber: 'new' };
    this._setMediaState(this.local.stream?.getTracks().length ? 'connecting' : 'connected');
    this._setConnectionState('joined', { participantId: msg.participantId, room: this.room });
    this.chat = msg.chatHistory.map((l) => ({ ...l }));
    this._emit('joined', { participantId: msg.participantId, room: this.room, participants: msg.participants, chatHistory: this.chat, grants: this.grants });
    for (const info of msg.participants) if (info.id !== this.participantId) this._addParticipant(info, true);
    for (const line of this.chat) this._emit('chat', { line, history: true, self: line.from === this.participantId });
    this._scheduleStats();
  }

  _createPeers() {
    const config = { iceServers: this.iceServers, bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' };
    for (const role of ['publisher', 'subscriber']) {
      const pc = new this._RTCPeerConnection(config);
      pc.onicecandidate = (ev) => {
        if (!ev.candidate || !ev.candidate.candidate) return;
        const c = candidateInit(ev.candidate);
        if (this._canSendCandidates[role]) this._send(messages.candidate(role, c));
        else this._pendingLocalCandidates[role].push(c);
      };
      pc.onconnectionstatechange = () => this._onPeerState(role, pc.connectionState);
      if (role === 'publisher') this._pub = pc;
      else {
        this._sub = pc;
        pc.ontrack = () => this._bindSubscriber();
      }
    }
  }

  _onPeerState(role, state) {
    this._peerStates[role] = state;
    this._updateMediaState();
    if (state === 'failed' && this._wantJoined && this.reconnect) {
      // The server may also say `bye mediaFailed`; either way, rejoin on a fresh session.
      this._log(`${role} peer failed; rejoining`);
      this._restartSession();
    }
  }

  /** The worse state of the peers that carry something (a peer not negotiated yet does not count). */
  _updateMediaState() {
    const used = [];
    if (this._pub?.localDescription) used.push(this._peerStates.publisher);
    if (this._sub?.remoteDescription) used.push(this._peerStates.subscriber);
    let media = 'connected';
    if (used.includes('failed')) media = 'failed';
    else if (used.includes('disconnected')) media = 'disconnected';
    else if (used.some((s) => s === 'new' || s === 'connecting')) media = 'connecting';
    this._setMediaState(media);
  }

  /** The two RTCPeerConnections of the call (null outside a room), for stats or diagnostics. */
  get peers() {
    return { publisher: this._pub, subscriber: this._sub };
  }

  _setMediaState(state) {
    if (this.mediaState === state) return;
    this.mediaState = state;
    this._emit('mediaState', { state });
  }

  /** Drops the WebSocket and joins again on a new one (what a network change needs). */
  _restartSession() {
    this._dropSocket();
    this._failWaiters(new ChorusError('closed', 'restarting the session'));
    this._scheduleReconnect();
  }

  /** Closes the WebSocket without the close handler's reconnect; its late messages are ignored (a new epoch). */
  _dropSocket() {
    const ws = this._socket;
    this._epoch++;
    this._socket = null;
    this._socketOpen = null;
    try {
      if (ws) {
        ws.onclose = null;
        ws.close();
      }
    } catch {}
  }

  _flushLocalCandidates(role) {
    this._canSendCandidates[role] = true;
    for (const c of this._pendingLocalCandidates[role].splice(0)) this._send(messages.candidate(role, c));
  }

  async _onRemoteCandidate(role, candidate) {
    const pc = role === 'publisher' ? this._pub : this._sub;
    if (!pc) return;
    if (!pc.remoteDescription) {
      this._pendingRemoteCandidates[role].push(candidate);
      return;
    }
    await this._addCandidate(pc, candidate);
  }

  async _addCandidate(pc, c) {
    try {
      await pc.addIceCandidate(c.candidate ? c : { candidate: '', sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex });
    } catch (err) {
      this._log('addIceCandidate failed', err, c);
    }
  }

  async _flushRemoteCandidates(role) {
    const pc = role === 'publisher' ? this._pub : this._sub;
    for (const c of this._pendingRemoteCandidates[role].splice(0)) await this._addCandidate(pc, c);
  }

  async _onSubscribeOffer(msg) {
    const pc = this._sub;
    if (!pc) return;
    for (const t of msg.tracks) this._midMap.set(String(t.mid), { trackId: t.trackId, participantId: t.participantId });
    await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    await this._flushRemoteCandidates('subscriber');
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    this._send(messages.subscribeAnswer(pc.localDescription.sdp));
    this._flushLocalCandidates('subscriber');
    this._bindSubscriber();
    this._updateMediaState();
  }

  // ----- publishing --------------------------------------------------------------------

  /** Publishes the local microphone and camera not published yet, as far as the grants allow. */
  async _publishInitial() {
    let added = false;
    for (const source of ['microphone', 'camera']) {
      const track = this.local.tracks[source];
      if (!track || this._publications.has(source)) continue;
      if (!this.mayPublish(source)) {
        this._log(`not publishing ${source}: the grants do not allow it`);
        continue;
      }
      this._addPublication(source, track, this.local.stream);
      added = true;
    }
    if (added) await this._negotiate();
  }

  /** Whether this participant may publish a track of `source` (always true before `joined`). */
  mayPublish(source) {
    return mayPublish(this.grants ?? DEFAULT_GRANTS, source);
  }

  /** Whether this participant may send chat (always true before `joined`). */
  mayChat() {
    return mayChat(this.grants ?? DEFAULT_GRANTS);
  }

  /**
   * Publishes the microphone and camera of `stream` once in the room: for a page that
   * joined with `stream: null` to learn its grants first, and captures only what they
   * allow. Tracks of a source already published, or one the grants forbid, are left out
   * (and stopped). One renegotiation for all of them.
   */
  async publish(stream) {
    if (!this._pub || !this._wantJoined) throw new ChorusError('outOfOrder', 'join a room first');
    for (const [source, track] of [['microphone', stream?.getAudioTracks()[0]], ['camera', stream?.getVideoTracks()[0]]]) {
      if (!track) continue;
      if (this.local.tracks[source] || !this.mayPublish(source)) {
        track.stop();
        continue;
      }
      if (!this.local.stream) this.local.stream = new this._MediaStream();
      this.local.stream.addTrack(track);
      this.local.tracks[source] = track;
      if (source === 'microphone') track.enabled = !this.local.muted.microphone;
      else this.local.muted.camera = false;
    }
    this._emit('localTracks', { stream: this.local.stream, tracks: { ...this.local.tracks } });
    await this._publishInitial();
  }

  _addPublication(source, track, stream) {
    const init = { direction: 'sendonly', streams: stream ? [stream] : [] };
    // Only the camera is simulcast: a screen is read at full size or not at all, and its
    // one layer keeps text sharp.
    const simulcast = source === 'camera' && this.simulcast;
    const captureSize = simulcast ? sizeOf(track) : null;
    if (simulcast) init.sendEncodings = this._ladder(captureSize).map(({ usable, ...e }) => ({ ...e, active: usable }));
    else if (source === 'camera') init.sendEncodings = [{ maxBitrate: SINGLE_CAMERA_BITRATE }];
    else if (source === 'screen') init.sendEncodings = [{ maxBitrate: SCREEN_BITRATE }];
    const transceiver = this._pub.addTransceiver(track, init);
    if (track.kind === 'audio' && this.red) preferRed(transceiver, this._RTCRtpSender);
    // wantedRids: what the server last said (publishLayers) it needs; null until it says.
    // serverMuted / echoes: what the server holds of its mute, and the muteChanged echoes of ours still to come.
    const pub = { source, transceiver, trackId: null, simulcast, captureSize, wantedRids: null, layersChain: Promise.resolve(), serverMuted: false, echoes: [] };
    this._publications.set(source, pub);
    return pub;
  }

  /**
   * Remembers the capture size of a simulcast publication's track (offers made while the
   * camera is off use the last one). Returns whether it changed.
   */
  _noteCaptureSize(pub, track) {
    const size = sizeOf(track);
    if (!size || (pub.captureSize?.width === size.width && pub.captureSize?.height === size.height)) return false;
    pub.captureSize = size;
    return true;
  }

  /**
   * The camera's encodings for a capture of `size`, one per configured layer. A capture
   * too small for all layers (see layerBudget) sends the scales of the configured TOP
   * layers under the lowest rids: otherwise Chromium would send only the smallest
   * scale-downs (a 320×180 camera would reach everyone at 80×45), and the server numbers
   * layers by rid, so the layers sent must be q, then h. Each rid keeps its own bit rate:
   * a small capture's full size is about what the low layers of a large one are (with
   * the defaults, 320×180 at 150 kbit/s from a 320×180 or a 1280×720 camera alike), and
   * the server counts a layer's maxBitrate as its cost until it has measured it.
   * Encodings left over are `usable: false` and stay off, so no browser sends a duplicate.
   */
  _ladder(size) {
    const layers = this.simulcastLayers;
    const n = layerBudget(size, layers.length);
    return layers.map((l, i) => {
      const scale = i < n ? layers[layers.length - n + i].scaleResolutionDownBy : l.scaleResolutionDownBy;
      const e = { rid: l.rid, scaleResolutionDownBy: scale, maxBitrate: l.maxBitrate };
      if (l.maxFramerate !== undefined) e.maxFramerate = l.maxFramerate;
      return { ...e, usable: i < n };
    });
  }

  /**
   * A simulcast publication's `publishOffer` layers: each rid with its bit rate and the
   * size it is scaled to from the capture. While the camera is off the last capture size
   * stands in; 0 means unknown (the server then measures the size from keyframes).
   */
  _layersOf(pub) {
    if (!pub.simulcast) return undefined;
    const size = pub.captureSize ?? { width: 0, height: 0 };
    return this._ladder(pub.captureSize)
      .filter((e) => e.usable)
      .map((e) => ({
        rid: e.rid,
        maxBitrate: e.maxBitrate,
        // Rounded down, as the encoder does (it may align sizes further; the server reads the real size from keyframes).
        width: Math.floor(size.width / e.scaleResolutionDownBy),
        height: Math.floor(size.height / e.scaleResolutionDownBy),
      }));
  }

  /** Sends a publisher offer and applies the answer; serialized, one at a time. */
  _negotiate() {
    const run = async () => {
      const pc = this._pub;
      if (!pc || pc.signalingState === 'closed') return;
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      const tracks = [];
      for (const pub of this._publications.values()) {
        const mid = pub.transceiver.mid;
        if (mid !== null && mid !== undefined && !pub.transceiver.stopped) tracks.push({ mid, source: pub.source, layers: this._layersOf(pub) });
      }
      const answered = this._waitFor(
        (m) => m.type === 'publishAnswer',
        (m) => m.type === 'error' && PUBLISH_ERRORS.has(m.code),
        15000,
        'publishAnswer',
      );
      this._send(messages.publishOffer(pc.localDescription.sdp, tracks));
      this._flushLocalCandidates('publisher');
      this._updateMediaState();
      await answered;
    };
    const p = this._pubChain.then(run, run);
    this._pubChain = p.catch(() => {});
    return p;
  }

  async _onPublishAnswer(msg) {
    const pc = this._pub;
    if (!pc || pc.signalingState !== 'have-local-offer') return;
    await pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
    await this._flushRemoteCandidates('publisher');
    this._updateMediaState();
    for (const { mid, trackId } of msg.tracks) {
      for (const pub of this._publications.values()) {
        if (pub.transceiver.mid === String(mid) && pub.trackId !== trackId) {
          pub.trackId = trackId;
          pub.serverMuted = false;
          pub.echoes = [];
          // Tell the others about a mute set before the track had an id.
          if (pub.source !== 'screen' && this.local.muted[pub.source]) this._sendMute(pub.source, true);
        }
      }
    }
    // Dynacast's choice survives renegotiation: a browser may rebuild the encodings when
    // it applies an answer, so the server's last publishLayers is applied again.
    for (const pub of this._publications.values()) if (pub.simulcast || pub.wantedRids) this._applyLayers(pub);
    this._emit('published', { tracks: [...this._publications.values()].map((p) => ({ source: p.source, trackId: p.trackId, mid: p.transceiver.mid })) });
  }

  /**
   * Dynacast: the server says which layers of one of our tracks anyone needs. The others
   * are switched off (`active: false`), which saves our uplink and CPU; listed ones are
   * switched on again.
   */
  async _onPublishLayers(msg) {
    const rids = msg.rids.map(String);
    const pub = [...this._publications.values()].find((p) => p.trackId === msg.trackId);
    if (!pub) {
      this._log('publishLayers for a track we do not publish', msg.trackId);
      return;
    }
    pub.wantedRids = rids;
    this._emit('publishLayers', { source: pub.source, trackId: msg.trackId, rids: [...rids] });
    await this._applyLayers(pub);
  }

  /**
   * Sets each encoding as the capture size (the ladder) and the server (publishLayers)
   * want it: on only if it is usable and the server wants its rid (or has not said yet).
   * Calls are chained per publication, because two overlapping setParameters calls fail
   * (the second one's transaction id is stale). An encoding without a rid (a single-layer
   * track) is left alone.
   */
  _applyLayers(pub) {
    const run = async () => {
      const sender = pub.transceiver.sender;
      if (pub.transceiver.stopped || !sender.getParameters || !sender.setParameters) return;
      const params = sender.getParameters();
      const want = pub.wantedRids ? new Set(pub.wantedRids) : null;
      const ladder = pub.simulcast ? new Map(this._ladder(pub.captureSize).map((e) => [e.rid, e])) : new Map();
      let changed = false;
      const set = (enc, key, value) => {
        if (value !== undefined && enc[key] !== value) {
          enc[key] = value;
          changed = true;
        }
      };
      for (const enc of params.encodings ?? []) {
        if (!enc.rid) continue;
        const rung = ladder.get(enc.rid);
        set(enc, 'active', (rung?.usable ?? true) && (!want || want.has(enc.rid)));
        if (rung) {
          set(enc, 'scaleResolutionDownBy', rung.scaleResolutionDownBy);
          set(enc, 'maxBitrate', rung.maxBitrate);
          set(enc, 'maxFramerate', rung.maxFramerate);
        }
      }
      if (changed) await sender.setParameters(params);
    };
    const p = pub.layersChain.then(run).catch((err) => {
      this._log('setParameters failed', err);
      this._emit('warning', { error: err, during: 'publishLayers' });
    });
    pub.layersChain = p;
    return p;
  }

  /** streamState: what the server now forwards of a video we receive. */
  _onStreamState(msg) {
    const state = { layer: msg.layer ?? null, paused: msg.paused ?? null };
    this._streamStates.set(msg.trackId, state);
    const hit = this._findTrack(msg.trackId);
    if (!hit) return;
    Object.assign(hit.track, state);
    this._emit('streamState', { participant: hit.participant, track: hit.track, trackId: msg.trackId, ...state });
  }

  /**
   * Tells the server how this page shows a subscribed video: `visible: false` while it is
   * off-screen or hidden (the server pauses it), and its size in device pixels (the server
   * forwards the lowest layer that covers it; 0 = unknown). Call it whenever the tile
   * changes; the client sends only changes, at most once per `trackSettingsIntervalMs`
   * per track, and (again) once the track is subscribed. Returns false outside a call.
   */
  setTrackView(trackId, { visible = true, width = 0, height = 0 } = {}) {
    if (this.participantId === null) return false;
    const want = { visible: Boolean(visible), width: toU32(width), height: toU32(height) };
    let v = this._views.get(trackId);
    if (!v) {
      v = { want, sent: null, timer: null, lastSent: -Infinity };
      this._views.set(trackId, v);
    }
    v.want = want;
    this._flushView(trackId);
    return true;
  }

  /** The view the server was last told of `trackId`, or null. */
  trackView(trackId) {
    const sent = this._views.get(trackId)?.sent;
    return sent ? { ...sent } : null;
  }

  _flushView(trackId, fromTimer = false) {
    const v = this._views.get(trackId);
    if (!v) return;
    if (fromTimer) v.timer = null;
    const { want, sent } = v;
    if (sent && sent.visible === want.visible && sent.width === want.width && sent.height === want.height) {
      // Changed and changed back within the interval: nothing to say.
      this._clearTimeout(v.timer);
      v.timer = null;
      return;
    }
    // The server refuses settings for a track it has not subscribed us to yet;
    // _bindSubscriber flushes once it has.
    if (!this._findTrack(trackId)?.track.mediaTrack) return;
    if (v.timer) return; // the pending send will carry the latest view
    const wait = v.lastSent + this.trackSettingsIntervalMs - this._now();
    if (!fromTimer && wait > 0) {
      v.timer = this._setTimeout(() => this._flushView(trackId, true), wait);
      return;
    }
    if (this._send(messages.trackSettings(trackId, want.visible, want.width, want.height))) {
      v.sent = { ...want };
      v.lastSent = this._now();
    }
  }

  _sendMute(source, muted) {
    const pub = this._publications.get(source);
    if (pub?.trackId === null || pub?.trackId === undefined) return;
    if (!this._send(messages.setMute(pub.trackId, muted))) return;
    // The server echoes a change to everyone, us included; remember which echoes are ours,
    // so that any other muteChanged of our own track is known for a room admin's.
    if (pub.serverMuted !== Boolean(muted)) pub.echoes.push(Boolean(muted));
    pub.serverMuted = Boolean(muted);
    // While an admin holds the track muted the server answers an unmute with `forbidden`
    // (and lifting the hold is not announced): so try, and undo it if refused.
    pub.unmuteMayBeRefused = !muted && this.local.adminMuted[source];
  }

  /** Our unmute of a track a room admin still holds muted was refused: muted again, locally too. */
  _onUnmuteRefused() {
    const pub = [...this._publications.values()].find((p) => p.unmuteMayBeRefused);
    if (!pub) return;
    pub.unmuteMayBeRefused = false;
    pub.echoes = [];
    pub.serverMuted = true;
    const source = pub.source;
    if (source === 'microphone') {
      this.local.muted.microphone = true;
      if (this.local.tracks.microphone) this.local.tracks.microphone.enabled = false;
    } else if (source === 'camera') {
      this.setCameraOff(true).catch((err) => this._log('camera off failed', err));
    }
    this._emit('localMute', { source, muted: true, byAdmin: true, adminMuted: true });
  }

  /** A muteChanged of one of our own tracks: our own echo, or a room admin's `muteTrack`. */
  _onOwnMuteChanged(msg) {
    const pub = [...this._publications.values()].find((p) => p.trackId === msg.trackId);
    if (!pub) return;
    if (pub.echoes.length && pub.echoes[0] === msg.muted) {
      pub.echoes.shift();
      // Our unmute went through: no admin holds the track any more.
      if (!msg.muted && this.local.adminMuted[pub.source]) {
        this.local.adminMuted[pub.source] = false;
        pub.unmuteMayBeRefused = false;
        this._emit('localMute', { source: pub.source, muted: false, byAdmin: false, adminMuted: false });
      }
      return;
    }
    pub.echoes = [];
    pub.serverMuted = msg.muted;
    const source = pub.source;
    this.local.adminMuted[source] = msg.muted;
    if (msg.muted && source === 'microphone') {
      this.local.muted.microphone = true;
      if (this.local.tracks.microphone) this.local.tracks.microphone.enabled = false;
    } else if (msg.muted && source === 'camera' && this.local.tracks.camera) {
      // Nothing of it is forwarded any more: let go of the camera too (its light goes out).
      this.setCameraOff(true).catch((err) => this._log('camera off failed', err));
    } else if (!msg.muted && source !== 'screen' && this.local.muted[source]) {
      // Not what this server does (lifting a hold is silent), but never unmute from afar:
      // stay muted, and say so.
      this._sendMute(source, true);
    }
    this._emit('localMute', { source, muted: source === 'screen' ? msg.muted : this.local.muted[source], byAdmin: true, adminMuted: msg.muted });
  }

  /** The track id the server gave our own track of `source`, or null. */
  trackIdOf(source) {
    return this._publications.get(source)?.trackId ?? null;
  }

  /** Mutes or unmutes the microphone (the others see it). Acquires a microphone if there is none. */
  async setMicMuted(muted) {
    this.local.muted.microphone = Boolean(muted);
    let track = this.local.tracks.microphone;
    if (!muted && !this.mayPublish('microphone')) throw new ChorusError('forbidden', 'your grants do not allow publishing the microphone');
    if (!muted && !track && this._wantJoined) {
      track = await this._acquire('audio');
      this._installTrack('microphone', track);
    }
    if (track) track.enabled = !muted;
    this._sendMute('microphone', muted);
    this._emit('localMute', { source: 'microphone', muted: this.local.muted.microphone });
  }

  /**
   * Turns the camera off (stops capture: the camera light goes out) or on again (captures
   * anew and resumes sending on the same m-line, without renegotiation).
   */
  async setCameraOff(off) {
    if (off) {
      this.local.muted.camera = true;
      const pub = this._publications.get('camera');
      const old = this.local.tracks.camera;
      if (pub) await pub.transceiver.sender.replaceTrack(null);
      if (old) {
        old.stop();
        this.local.stream?.removeTrack(old);
      }
      this.local.tracks.camera = null;
      this._sendMute('camera', true);
      this._emit('localTracks', { stream: this.local.stream, tracks: { ...this.local.tracks } });
    } else {
      if (!this.mayPublish('camera')) throw new ChorusError('forbidden', 'your grants do not allow publishing the camera');
      const track = await this._acquire('video');
      this.local.muted.camera = false;
      this._installTrack('camera', track);
      this._sendMute('camera', false);
    }
    this._emit('localMute', { source: 'camera', muted: this.local.muted.camera });
  }

  async _acquire(kind) {
    if (!this._mediaDevices?.getUserMedia) throw new ChorusError('unsupported', 'no media devices');
    const deviceId = kind === 'audio' ? this._audioDeviceId : this._videoDeviceId;
    const constraints = kind === 'audio' ? { audio: audioConstraints(deviceId) } : { video: videoConstraints(this.videoConstraints, deviceId) };
    const s = await this._mediaDevices.getUserMedia(constraints);
    return kind === 'audio' ? s.getAudioTracks()[0] : s.getVideoTracks()[0];
  }

  /** Puts `track` in place of the current one of `source`, publishing it if needed. */
  _installTrack(source, track) {
    if (!this.mayPublish(source)) {
      track.stop();
      throw new ChorusError('forbidden', `your grants do not allow publishing the ${source}`);
    }
    const old = this.local.tracks[source];
    if (!this.local.stream) this.local.stream = new this._MediaStream();
    if (old && old !== track) {
      old.stop();
      this.local.stream.removeTrack(old);
    }
    this.local.stream.addTrack(track);
    this.local.tracks[source] = track;
    if (source === 'microphone') track.enabled = !this.local.muted.microphone;
    const pub = this._publications.get(source);
    let done;
    if (pub) {
      done = pub.transceiver.sender.replaceTrack(track);
      // Another capture size may allow more or fewer layers: set the encodings to match.
      if (pub.simulcast && this._noteCaptureSize(pub, track)) done = Promise.all([done, this._applyLayers(pub)]);
    }
    else if (this._pub && this._wantJoined) {
      this._addPublication(source, track, this.local.stream);
      done = this._negotiate();
    }
    this._emit('localTracks', { stream: this.local.stream, tracks: { ...this.local.tracks } });
    return done;
  }

  /**
   * Replaces the track sent for `source` ('microphone' or 'camera') with `track`, without
   * renegotiating. The old track is stopped.
   */
  async replaceTrack(source, track) {
    if (source !== 'microphone' && source !== 'camera') throw new ChorusError('invalid', `cannot replace ${source}`);
    await this._installTrack(source, track);
  }

  /** Switches to another microphone or camera (a deviceId from `enumerateDevices`). */
  async switchDevice(kind, deviceId) {
    if (kind === 'audio' || kind === 'audioinput') {
      this._audioDeviceId = deviceId;
      if (this.local.tracks.microphone || !this.local.muted.microphone) await this.replaceTrack('microphone', await this._acquire('audio'));
    } else {
      this._videoDeviceId = deviceId;
      // A camera that is off stays off; the new device is used when it comes back on.
      if (this.local.tracks.camera) await this.replaceTrack('camera', await this._acquire('video'));
    }
  }

  /** The deviceIds in use (or chosen for next capture). */
  get devices() {
    return {
      audio: this.local.tracks.microphone?.getSettings?.().deviceId ?? this._audioDeviceId ?? null,
      video: this.local.tracks.camera?.getSettings?.().deviceId ?? this._videoDeviceId ?? null,
    };
  }

  /**
   * Shares a screen: asks the browser for one (`getDisplayMedia`) unless `stream` is given,
   * and publishes it as an extra track with source `screen`. When the browser's own "stop
   * sharing" ends the track, the share stops by itself.
   */
  async startScreenShare({ stream } = {}) {
    if (!this._pub) throw new ChorusError('outOfOrder', 'join a room first');
    if (!this.mayPublish('screen')) throw new ChorusError('forbidden', 'your grants do not allow sharing a screen');
    if (this._publications.has('screen')) return this.local.screenStream;
    if (!stream) {
      if (!this._mediaDevices?.getDisplayMedia) throw new ChorusError('unsupported', 'this browser cannot share a screen');
      stream = await this._mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: false });
    }
    const track = stream.getVideoTracks()[0];
    if (!track) throw new ChorusError('invalid', 'the screen stream has no video');
    if ('contentHint' in track) track.contentHint = 'detail';
    const onEnded = () => this.stopScreenShare().catch((err) => this._log('stop share failed', err));
    track.addEventListener('ended', onEnded, { once: true });
    this.local.tracks.screen = track;
    this.local.screenStream = stream;
    this._screenOnEnded = onEnded;
    this._addPublication('screen', track, stream);
    this._emit('screenShare', { active: true, stream });
    await this._negotiate();
    return stream;
  }

  /** Stops sharing: stops the capture, ends the m-line, and renegotiates. */
  async stopScreenShare() {
    const pub = this._publications.get('screen');
    this.stopScreenShareTracks();
    if (!pub) return;
    this._publications.delete('screen');
    try {
      await pub.transceiver.sender.replaceTrack(null);
    } catch {}
    if (this.screenStopMode === 'stop' && typeof pub.transceiver.stop === 'function') pub.transceiver.stop();
    else pub.transceiver.direction = 'inactive';
    this._emit('screenShare', { active: false, stream: null });
    if (this._pub && this._pub.signalingState !== 'closed') await this._negotiate();
  }

  /** Stops the local screen capture tracks (no signaling). */
  stopScreenShareTracks() {
    const track = this.local.tracks.screen;
    if (track) {
      if (this._screenOnEnded) track.removeEventListener('ended', this._screenOnEnded);
      track.stop();
    }
    for (const t of this.local.screenStream?.getTracks() ?? []) t.stop();
    const was = Boolean(this.local.screenStream);
    this.local.tracks.screen = null;
    this.local.screenStream = null;
    this._screenOnEnded = null;
    if (was && !this._publications.has('screen')) this._emit('screenShare', { active: false, stream: null });
  }

  // ----- room admin --------------------------------------------------------------------

  /**
   * Removes another participant from the room (needs `grants.roomAdmin`). They get `bye`
   * with reason `removed`; everyone else `participantLeft`. Returns whether it was sent;
   * a refusal comes back as a `serverError` (`forbidden`, `unknownParticipant`).
   */
  removeParticipant(participantId) {
    if (this.participantId === null) return false;
    return this._send(messages.removeParticipant(participantId));
  }

  /**
   * Mutes (or lets go of) another participant's track (needs `grants.roomAdmin`). The
   * server stops forwarding it and everyone gets `muteChanged`; its owner cannot unmute it
   * until an admin sends `muted: false`. Returns whether it was sent.
   */
  muteTrack(participantId, trackId, muted = true) {
    if (this.participantId === null) return false;
    return this._send(messages.muteTrack(participantId, trackId, muted));
  }

  // ----- chat --------------------------------------------------------------------------

  /** Sends a chat line to everyone in the room. */
  sendChat(text) {
    const clean = String(text ?? '').trim();
    if (!clean || !this.mayChat()) return false;
    if (!this._send(messages.chat(clean))) return false;
    // Shown at once; replaced by the server's copy if the server echoes it back.
    const line = { from: this.participantId, name: this.name, text: clean, time: Date.now(), pending: true };
    this._pendingChat.push(line);
    this.chat.push(line);
    this._trimChat();
    this._emit('chat', { line, history: false, self: true });
    return true;
  }

  _onChat(line) {
    const self = line.from === this.participantId;
    if (self) {
      const i = this._pendingChat.findIndex((l) => l.text === line.text);
      if (i >= 0) {
        const pending = this._pendingChat.splice(i, 1)[0];
        const j = this.chat.indexOf(pending);
        if (j >= 0) this.chat[j] = line;
        this._emit('chat', { line, history: false, self, replaces: pending });
        return;
      }
    }
    this.chat.push(line);
    this._trimChat();
    this._emit('chat', { line, history: false, self });
  }

  _trimChat() {
    if (this.chat.length > 500) this.chat.splice(0, this.chat.length - 500);
  }

  // ----- stats: active speaker, quality ------------------------------------------------

  _scheduleStats() {
    this._clearTimeout(this._statsTimer);
    this._statsTimer = this._setTimeout(async () => {
      try {
        await this._pollStats();
      } catch (err) {
        this._log('stats failed', err);
      }
      if (this._sub) this._scheduleStats();
    }, this.statsIntervalMs);
  }

  /**
   * Per-track inbound statistics, for a UI's quality display or a test: one entry per
   * received track with its participant, source, and the browser's counters.
   */
  async inboundStats(report) {
    const out = [];
    if (!this._sub) return out;
    report ??= await this._sub.getStats();
    const byMid = new Map();
    for (const p of this.participants.values()) for (const t of p.tracks.values()) if (t.mid !== null && t.mid !== undefined) byMid.set(t.mid, { p, t });
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      const hit = byMid.get(s.mid);
      out.push({
        participantId: hit?.p.id ?? null,
        trackId: hit?.t.id ?? null,
        source: hit?.t.source ?? null,
        kind: s.kind,
        mid: s.mid,
        packetsReceived: s.packetsReceived ?? 0,
        packetsLost: s.packetsLost ?? 0,
        bytesReceived: s.bytesReceived ?? 0,
        framesDecoded: s.framesDecoded ?? 0,
        frameWidth: s.frameWidth ?? 0,
        frameHeight: s.frameHeight ?? 0,
        audioLevel: s.audioLevel ?? null,
        totalAudioEnergy: s.totalAudioEnergy ?? null,
        totalSamplesDuration: s.totalSamplesDuration ?? null,
        jitter: s.jitter ?? null,
      });
    });
    return out;
  }

  async _pollStats() {
    if (!this._sub) return;
    const subReport = await this._sub.getStats();
    const inbound = await this.inboundStats(subReport);
    const levels = {};
    let lost = 0;
    let received = 0;
    for (const s of inbound) {
      const prev = this._prevStats.get(s.mid);
      this._prevStats.set(s.mid, s);
      if (prev) {
        lost += Math.max(0, s.packetsLost - prev.packetsLost);
        received += Math.max(0, s.packetsReceived - prev.packetsReceived);
      }
      if (s.kind !== 'audio' || s.participantId === null) continue;
      let level = s.audioLevel;
      if (level === null && prev && s.totalSamplesDuration > prev.totalSamplesDuration) {
        level = Math.sqrt((s.totalAudioEnergy - prev.totalAudioEnergy) / (s.totalSamplesDuration - prev.totalSamplesDuration));
      }
      const p = this.participants.get(s.participantId);
      const muted = ClientMute.isMuted(p, 'microphone');
      levels[s.participantId] = muted ? 0 : level ?? 0;
      if (p) p.audioLevel = levels[s.participantId];
    }
    // Our own level, from the publisher's media-source stats.
    if (this._pub && this.local.tracks.microphone && !this.local.muted.microphone) {
      try {
        const r = await this._pub.getStats();
        r.forEach((s) => {
          if (s.type === 'media-source' && s.kind === 'audio' && typeof s.audioLevel === 'number') levels[this.participantId] = s.audioLevel;
        });
      } catch {}
    }
    // Levels for meters only: who speaks is the server's decision (activeSpeakers).
    this._emit('audioLevels', { levels });

    // Quality: loss over the last interval and the subscriber's round-trip time.
    let rtt = null;
    try {
      const r = subReport;
      let pairId = null;
      r.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
      });
      r.forEach((s) => {
        if (s.type === 'candidate-pair' && (s.id === pairId || (!pairId && s.nominated)) && typeof s.currentRoundTripTime === 'number') rtt = s.currentRoundTripTime;
      });
    } catch {}
    const loss = received + lost > 0 ? lost / (received + lost) : 0;
    let level = 'good';
    if (this.mediaState === 'failed' || this.mediaState === 'disconnected') level = 'poor';
    else if (this.mediaState !== 'connected') level = 'unknown';
    else if (loss > 0.08 || (rtt !== null && rtt > 0.6)) level = 'poor';
    else if (loss > 0.02 || (rtt !== null && rtt > 0.3)) level = 'fair';
    const changed = level !== this.quality.level;
    this.quality = { level, rtt, loss };
    if (changed) this._emit('quality', { ...this.quality });
  }

  /** activeSpeakers: the server's election; its first entry is the one to highlight. */
  _onActiveSpeakers(msg) {
    this.activeSpeakers = msg.speakers.map((s) => ({ participantId: s.participantId, level: s.level }));
    this._emit('activeSpeakers', { speakers: this.activeSpeakers });
    this._setActiveSpeaker(this.activeSpeakers[0]?.participantId ?? null);
  }

  _setActiveSpeaker(id) {
    if (this.activeSpeaker === id) return;
    this.activeSpeaker = id;
    this._emit('activeSpeaker', { participantId: id });
  }
}

// Small helpers shared with UIs.
export const ClientMute = Object.freeze({
  /** Whether a participant's first track of `source` is muted (true also when absent for camera). */
  isMuted(participant, source) {
    const t = ChorusClient.trackOf(participant, source);
    return t ? Boolean(t.muted) : false;
  },
});
