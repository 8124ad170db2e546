// The Chorus web app: lobby and call view on top of chorus.js.
//
// The view is derived from the client's state: every event calls `render()`, which
// reconciles the DOM (tiles, audio elements, lists) with `client.participants` and
// `client.local`. Tests read the DOM through stable ids and data attributes:
//   .tile[data-participant-id][data-self][data-source=camera|screen][data-muted][data-camera-off][data-speaking]
//   #room-list li[data-room][data-count], #chat-log li[data-from], #banners .banner[data-banner]

import { ChorusClient, ChorusError, getLocalMedia, DEFAULT_VIDEO, DEFAULT_SIMULCAST_VIDEO } from './chorus.js';

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.search);

// ---------------------------------------------------------------------------------------
// Icons (inline SVG, stroke = currentColor)
// ---------------------------------------------------------------------------------------

const ICONS = {
  mic: '<rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3"/>',
  micOff: '<rect x="9" y="3" width="6" height="11" rx="3"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3M4 4l16 16"/>',
  camera: '<rect x="3" y="6" width="13" height="12" rx="2"/><path d="M16 10.5l5-3v9l-5-3z"/>',
  cameraOff: '<rect x="3" y="6" width="13" height="12" rx="2"/><path d="M16 10.5l5-3v9l-5-3zM3 3l18 18"/>',
  screen: '<rect x="3" y="4" width="18" height="13" rx="2"/><path d="M8 21h8M12 17v4M12 14V8M9 11l3-3 3 3"/>',
  sliders: '<path d="M4 7h9M17 7h3M4 17h3M11 17h9"/><circle cx="15" cy="7" r="2"/><circle cx="9" cy="17" r="2"/>',
  people: '<circle cx="9" cy="8" r="3"/><path d="M3 20c0-3.3 2.7-6 6-6s6 2.7 6 6"/><circle cx="17" cy="9" r="2.5"/><path d="M16 14.2c2.8.4 5 2.7 5 5.8"/>',
  chat: '<path d="M4 5h16v11H9l-5 4z"/>',
  leave: '<path d="M10 4H5v16h5M14 8l4 4-4 4M18 12H9"/>',
  link: '<path d="M10 14a4 4 0 0 0 5.7 0l3-3a4 4 0 0 0-5.7-5.7l-1 1M14 10a4 4 0 0 0-5.7 0l-3 3a4 4 0 0 0 5.7 5.7l1-1"/>',
  close: '<path d="M6 6l12 12M18 6L6 18"/>',
};

function icon(name) {
  return `<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true" focusable="false">${ICONS[name]}</svg>`;
}

function setIcon(button, name) {
  if (button.dataset.iconNow === name) return;
  button.dataset.iconNow = name;
  button.querySelector('svg')?.remove();
  button.insertAdjacentHTML('afterbegin', icon(name));
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

function initials(name) {
  const words = String(name).trim().split(/\s+/).filter(Boolean);
  if (!words.length) return '?';
  const chars = words.length === 1 ? [...words[0]].slice(0, 2) : [[...words[0]][0], [...words.at(-1)][0]];
  return chars.join('').toUpperCase();
}

function hue(name) {
  let h = 0;
  for (const c of String(name)) h = (h * 31 + c.codePointAt(0)) % 360;
  return h;
}

function clockTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

const ROOM_RE = /^[\p{L}\p{N}._-]{1,64}$/u;

/**
 * The link others can join by: the room only. A join token is personal (it names who you
 * are and what you may do), so your own never goes into a link for someone else.
 */
function inviteLink(room) {
  return `${location.origin}${location.pathname}?room=${encodeURIComponent(room)}`;
}

// ---------------------------------------------------------------------------------------
// Invitation: a join token for one room (`?room=R&token=T`)
// ---------------------------------------------------------------------------------------

const INVITATION_KEY = 'chorus.invitation';

/**
 * The invitation of this tab: from the URL, else from sessionStorage (so a reload keeps
 * it). It is kept out of the address bar, where it could be copied and shared.
 */
function readInvitation() {
  const room = params.get('room');
  const token = params.get('token');
  if (room && token) {
    try {
      sessionStorage.setItem(INVITATION_KEY, JSON.stringify({ room, token }));
    } catch {}
    return { room, token };
  }
  try {
    const saved = JSON.parse(sessionStorage.getItem(INVITATION_KEY) ?? 'null');
    if (typeof saved?.room === 'string' && typeof saved?.token === 'string') return saved;
  } catch {}
  return null;
}

const invitation = readInvitation();

/** The token to join `room` with, or null. */
function tokenFor(room) {
  return invitation?.room === room ? invitation.token : null;
}

/** Takes `token` out of the address bar (the rest of the URL stays). */
function hideTokenFromUrl() {
  if (!params.has('token')) return;
  const q = new URLSearchParams(params);
  q.delete('token');
  const rest = q.toString();
  history.replaceState(null, '', `${location.pathname}${rest ? `?${rest}` : ''}`);
}

function videoConstraintsFromParams() {
  // `?res=WxH` picks the capture size (small sizes help tests and slow machines).
  const m = /^(\d{2,4})x(\d{2,4})$/.exec(params.get('res') ?? '');
  // With simulcast the full layer can be large: each receiver gets the layer it needs.
  if (!m) return simulcast ? DEFAULT_SIMULCAST_VIDEO : DEFAULT_VIDEO;
  return { width: { ideal: Number(m[1]) }, height: { ideal: Number(m[2]) }, frameRate: { ideal: 15 } };
}

/** The URL parameters that outlive a call (capture size, simulcast), after `lead`, or ''. */
function keptParams(lead) {
  const kept = new URLSearchParams();
  for (const key of ['res', 'simulcast']) if (params.has(key)) kept.set(key, params.get(key));
  const q = kept.toString();
  return q ? `${lead}${q}` : '';
}

function describeMediaError(err) {
  const name = err?.name ?? '';
  if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') return 'blocked';
  if (name === 'NotFoundError' || name === 'OverconstrainedError' || name === 'DevicesNotFoundError') return 'absent';
  if (name === 'NotReadableError' || name === 'TrackStartError') return 'busy';
  return 'unavailable';
}

// ---------------------------------------------------------------------------------------
// Banners and toast
// ---------------------------------------------------------------------------------------

/** Shows (or replaces) the banner `id`. `level`: info | warn | error. */
function showBanner(id, text, { level = 'warn', action, dismissible = true } = {}) {
  let el = document.querySelector(`#banners [data-banner="${id}"]`);
  if (!el) {
    el = document.createElement('div');
    el.className = 'banner';
    el.dataset.banner = id;
    el.setAttribute('role', level === 'error' ? 'alert' : 'status');
    $('#banners').append(el);
  }
  el.dataset.level = level;
  el.replaceChildren();
  const span = document.createElement('span');
  span.className = 'banner-text';
  span.textContent = text;
  el.append(span);
  if (action) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = action.label;
    b.addEventListener('click', action.run);
    el.append(b);
  }
  if (dismissible) {
    const x = document.createElement('button');
    x.type = 'button';
    x.className = 'icon-only';
    x.setAttribute('aria-label', 'Dismiss');
    x.innerHTML = icon('close');
    x.addEventListener('click', () => el.remove());
    el.append(x);
  }
}

function hideBanner(id) {
  document.querySelector(`#banners [data-banner="${id}"]`)?.remove();
}

let toastTimer;
function toast(text) {
  const el = $('#toast');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 2500);
}

// ---------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------

// `?simulcast=0` sends the camera as one layer: for a weak CPU, or to tell a simulcast
// problem from another one.
const simulcast = params.get('simulcast') !== '0';

const client = new ChorusClient({
  simulcast,
  videoConstraints: videoConstraintsFromParams(),
  log: (...a) => console.debug('[chorus]', ...a),
});

const app = {
  view: 'lobby',
  joining: false,
  audioBlocked: false,
  unread: 0,
  sidebarOpen: window.matchMedia('(min-width: 761px)').matches,
  panel: 'chat',
  selfView: null, // MediaStream shown in our own tile
};

// Exposed for debugging in the console, and for the browser tests.
window.chorus = { client, app };

// ---------------------------------------------------------------------------------------
// Lobby
// ---------------------------------------------------------------------------------------

function showView(view) {
  app.view = view;
  document.body.dataset.view = view;
  $('#lobby').hidden = view !== 'lobby';
  $('#call').hidden = view !== 'call';
}

function renderRooms(rooms) {
  const list = $('#room-list');
  const sorted = [...rooms].filter((r) => r.participants > 0).sort((a, b) => b.participants - a.participants || a.room.localeCompare(b.room));
  list.replaceChildren(
    ...sorted.map((r) => {
      const li = document.createElement('li');
      li.dataset.room = r.room;
      li.dataset.count = String(r.participants);
      const b = document.createElement('button');
      b.type = 'button';
      const name = document.createElement('span');
      name.className = 'room-name';
      name.textContent = r.room;
      const count = document.createElement('span');
      count.className = 'count';
      count.textContent = `${r.participants} ${r.participants === 1 ? 'person' : 'people'}`;
      b.append(name, count);
      b.setAttribute('aria-label', `Join room ${r.room}, ${count.textContent} in the call`);
      b.addEventListener('click', () => {
        $('#room-input').value = r.room;
        const nameInput = $('#name-input');
        if (nameInput.value.trim()) $('#join-form').requestSubmit();
        else nameInput.focus();
      });
      li.append(b);
      return li;
    }),
  );
  $('#room-list-empty').hidden = sorted.length > 0;
}

function startRoomList() {
  if (client.roomListRefused) return;
  client.listRooms().then(
    (rooms) => {
      hideBanner('unreachable');
      renderRooms(rooms);
    },
    () => {
      // A server that admits only invited people keeps its rooms to itself: no list, no error.
      if (client.roomListRefused) hideRoomList();
      else if (app.view === 'lobby') showBanner('unreachable', 'Cannot reach the Chorus server. Retrying…', { level: 'error', dismissible: false });
    },
  );
}

function hideRoomList() {
  hideBanner('unreachable');
  $('#rooms').hidden = true;
  $('#room-hint').textContent = 'Letters, digits, “-”, “_” and “.”. This server admits only people with an invitation.';
}

function fieldError(input, errorEl, text) {
  input.setAttribute('aria-invalid', text ? 'true' : 'false');
  errorEl.textContent = text ?? '';
  errorEl.hidden = !text;
}

function validateLobby() {
  const name = $('#name-input').value.trim();
  const room = $('#room-input').value.trim();
  let ok = true;
  if (!name) {
    fieldError($('#name-input'), $('#name-error'), 'Please enter your name.');
    ok = false;
  } else fieldError($('#name-input'), $('#name-error'), null);
  if (!ROOM_RE.test(room)) {
    fieldError($('#room-input'), $('#room-error'), room ? 'Use only letters, digits, “-”, “_” and “.” (at most 64).' : 'Please enter a room name.');
    ok = false;
  } else fieldError($('#room-input'), $('#room-error'), null);
  if (!ok) (name ? $('#room-input') : $('#name-input')).focus();
  return ok ? { name, room } : null;
}

// ---------------------------------------------------------------------------------------
// Joining and leaving
// ---------------------------------------------------------------------------------------

async function joinCall(room, name) {
  if (app.joining) return;
  app.joining = true;
  $('#join-button').disabled = true;
  try {
    localStorage.setItem('chorus.name', name);
  } catch {}
  for (const id of ['room-full', 'removed', 'server-shutdown', 'join-failed', 'media', 'unreachable', 'unauthorized', 'token-expired', 'grants', 'admin-muted', 'room-closed']) hideBanner(id);

  // With an invitation, the grants (known once joined) say what to capture: a viewer is
  // never asked for a camera. Without one, capture first, as an open server lets anyone publish.
  const token = tokenFor(room);
  let stream = null;
  if (!token) {
    const media = await getLocalMedia({ videoConstraints: videoConstraintsFromParams() });
    reportMediaErrors(media.errors);
    stream = media.stream;
  }

  $('#room-title').textContent = room;
  $('#btn-invite').dataset.inviteLink = inviteLink(room);
  $('#chat-log').replaceChildren();
  showView('call');
  // The side panel starts open where there is room for it, closed on a phone.
  setSidebar(window.matchMedia('(min-width: 761px)').matches, app.panel);
  render();
  try {
    await client.join({ room, name, stream, token });
    history.replaceState(null, '', `?room=${encodeURIComponent(room)}${keptParams('&')}`);
    document.title = `${room} · Chorus`;
    reportGrants();
    render();
    renderChat();
    if (token) await captureGranted();
    refreshDevices();
  } catch (err) {
    for (const t of stream?.getTracks() ?? []) t.stop();
    showView('lobby');
    reportJoinError(err);
    startRoomList();
  } finally {
    app.joining = false;
    $('#join-button').disabled = false;
  }
}

function reportMediaErrors(errors) {
  hideBanner('media');
  const a = errors.audio && describeMediaError(errors.audio);
  const v = errors.video && describeMediaError(errors.video);
  if (!a && !v) return;
  let text;
  if (a && v) {
    text = a === 'blocked' || v === 'blocked'
      ? 'Camera and microphone are blocked, so you joined to watch and listen only. Allow them in the browser’s site settings to take part.'
      : 'No camera or microphone is available, so you joined to watch and listen only.';
  } else if (v) {
    text = {
      blocked: 'Camera access is blocked, so you joined without video. Allow the camera in the browser’s site settings to turn it on.',
      absent: 'No camera was found, so you joined without video.',
      busy: 'The camera is in use by another program, so you joined without video.',
      unavailable: 'The camera could not be started, so you joined without video.',
    }[v];
  } else {
    text = {
      blocked: 'Microphone access is blocked: others cannot hear you. Allow it in the browser’s site settings.',
      absent: 'No microphone was found: others cannot hear you.',
      busy: 'The microphone is in use by another program: others cannot hear you.',
      unavailable: 'The microphone could not be started: others cannot hear you.',
    }[a];
  }
  showBanner('media', text, { level: 'warn' });
  const el = document.querySelector('#banners [data-banner="media"]');
  el.dataset.camera = v ?? 'ok';
  el.dataset.microphone = a ?? 'ok';
}

/** Captures and publishes what the grants allow (after a join with an invitation). */
async function captureGranted() {
  const audio = client.mayPublish('microphone');
  const video = client.mayPublish('camera');
  if (!audio && !video) return;
  const { stream, errors } = await getLocalMedia({ audio, video, videoConstraints: videoConstraintsFromParams() });
  reportMediaErrors(errors);
  if (!stream) return;
  if (client.participantId === null) {
    for (const t of stream.getTracks()) t.stop();
    return;
  }
  try {
    await client.publish(stream);
  } catch (err) {
    console.warn('[chorus] publish failed', err);
  }
  render();
}

/** Tells a participant whose grants hold something back what they cannot do. */
function reportGrants() {
  hideBanner('grants');
  const g = client.grants;
  if (!g) return;
  let text = null;
  if (g.hidden) text = 'You are in this room unseen: the others do not see you, and you cannot share your camera, microphone or screen, or chat.';
  else if (!g.canPublish || !g.canPublishSources.length) text = 'Your invitation lets you watch and listen: you cannot share your camera, microphone or screen.';
  if (text) showBanner('grants', text, { level: 'info' });
}

function reportJoinError(err) {
  const code = err instanceof ChorusError ? err.code : 'internal';
  switch (code) {
    case 'unauthorized':
      showBanner('unauthorized', 'This room needs an invitation. Ask whoever runs the call for an invite link.', { level: 'error' });
      break;
    case 'tokenExpired':
      showBanner('token-expired', 'Your invitation has expired. Ask for a new invite link.', { level: 'error' });
      break;
    case 'forbidden':
      showBanner('join-failed', 'Your invitation does not let you join this room.', { level: 'error' });
      break;
    case 'roomFull':
      showBanner('room-full', 'This room is full. Try again later, or pick another room.', { level: 'error' });
      break;
    case 'tooManyRooms':
      showBanner('room-full', 'The server has no room for another call right now. Try an existing room or later.', { level: 'error' });
      break;
    case 'invalidName':
      showBanner('join-failed', `The server refused that name: ${err.message}`, { level: 'error' });
      break;
    case 'clusterUnavailable':
    case 'serverDraining':
      showBanner('join-failed', 'The server is restarting or cannot reach the rest of its cluster. Try again in a moment.', { level: 'error' });
      break;
    case 'unreachable':
    case 'closed':
    case 'timeout':
      showBanner('unreachable', 'Cannot reach the Chorus server. Check your connection and try again.', { level: 'error' });
      break;
    default:
      showBanner('join-failed', `Could not join: ${err.message ?? err}`, { level: 'error' });
  }
}

async function leaveCall() {
  await client.leave();
  app.selfView = null;
  for (const id of ['media', 'reconnecting', 'audio-blocked', 'admin-muted', 'grants']) hideBanner(id);
  $('#grid').replaceChildren();
  $('#stage').replaceChildren();
  $('#audio-sink').replaceChildren();
  for (const tile of tiles.values()) unwatchTile(tile);
  tiles.clear();
  history.replaceState(null, '', location.pathname + keptParams('?'));
  document.title = 'Chorus';
  showView('lobby');
  startRoomList();
  $('#name-input').focus();
}

// ---------------------------------------------------------------------------------------
// Rendering the call
// ---------------------------------------------------------------------------------------

/** key -> tile element. Keys: `p:<participantId>` (camera tile), `s:<participantId>` (screen). */
const tiles = new Map();

function makeTile(key, { participantId, self, source }) {
  const tile = document.createElement('div');
  tile.className = 'tile';
  tile.id = `${source === 'screen' ? 'screen' : 'tile'}-${self ? 'self' : participantId}`;
  tile.dataset.participantId = String(participantId ?? '');
  tile.dataset.self = String(Boolean(self));
  tile.dataset.source = source;
  tile.setAttribute('role', 'group');
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  video.muted = true; // sound comes from the audio elements
  tile.append(video);
  if (source === 'camera') {
    const avatar = document.createElement('div');
    avatar.className = 'avatar';
    avatar.setAttribute('aria-hidden', 'true');
    avatar.innerHTML = '<span class="initials"></span>';
    tile.append(avatar);
  }
  if (!self && source === 'camera') tile.append(adminControls());
  if (!self) {
    // Says why a remote video stopped. A live region: it is announced when text appears.
    const paused = document.createElement('div');
    paused.className = 'tile-paused';
    paused.setAttribute('role', 'status');
    tile.append(paused);
    watchTile(tile);
  }
  const plate = document.createElement('div');
  plate.className = 'nameplate';
  plate.innerHTML = `<span class="mic-state" title="Microphone muted">${icon('micOff')}</span><span class="name"></span>`;
  tile.append(plate);
  tiles.set(key, tile);
  return tile;
}

/** A room admin's Mute and Remove buttons for a remote person's tile (hidden for others). */
function adminControls() {
  const box = document.createElement('div');
  box.className = 'tile-admin';
  box.hidden = true;
  for (const [cls, text] of [['admin-mute', 'Mute'], ['admin-remove', 'Remove']]) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = cls;
    b.textContent = text;
    box.append(b);
  }
  box.querySelector('.admin-mute').addEventListener('click', (ev) => adminMute(ev.currentTarget.closest('.tile')));
  box.querySelector('.admin-remove').addEventListener('click', (ev) => adminRemove(ev.currentTarget.closest('.tile')));
  return box;
}

function adminMute(tile) {
  const p = client.participants.get(Number(tile.dataset.participantId));
  const mic = p && ChorusClient.trackOf(p, 'microphone');
  if (mic && client.muteTrack(p.id, mic.id, true)) toast(`Muted ${p.name}`);
}

function adminRemove(tile) {
  const p = client.participants.get(Number(tile.dataset.participantId));
  if (p && client.removeParticipant(p.id)) toast(`Removed ${p.name} from the room`);
}

/** Shows the admin controls of a remote tile to a room admin, labelled with the person's name. */
function updateAdminControls(tile, name, micTrack) {
  const box = tile.querySelector('.tile-admin');
  if (!box) return;
  box.hidden = !client.grants?.roomAdmin;
  if (box.hidden) return;
  const mute = box.querySelector('.admin-mute');
  const muted = !micTrack || micTrack.muted;
  mute.disabled = muted;
  mute.textContent = muted ? 'Muted' : 'Mute';
  mute.setAttribute('aria-label', muted ? `${name} is muted` : `Mute ${name}`);
  box.querySelector('.admin-remove').setAttribute('aria-label', `Remove ${name} from the room`);
}

function setVideo(tile, stream) {
  const video = tile.querySelector('video');
  if (video.srcObject !== stream) {
    video.srcObject = stream ?? null;
    if (stream) video.play().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------
// Tile reporting: the server forwards each remote video at the smallest layer that fills
// its tile, and nothing for a tile nobody can see. So every remote tile tells the client
// its size in device pixels and whether it is on screen (and the page visible).
// ---------------------------------------------------------------------------------------

/** tile element -> {trackId, width, height, onScreen} */
const tileViews = new Map();

const tileResize = new ResizeObserver((entries) => {
  for (const e of entries) {
    const v = tileViews.get(e.target);
    if (!v) continue;
    // The video covers the tile (object-fit: cover), so the tile's box is what is drawn.
    const dpr = window.devicePixelRatio || 1;
    const box = e.devicePixelContentBoxSize?.[0];
    v.width = Math.round(box ? box.inlineSize : e.contentRect.width * dpr);
    v.height = Math.round(box ? box.blockSize : e.contentRect.height * dpr);
    reportTile(e.target);
  }
});

const tileOnScreen = new IntersectionObserver((entries) => {
  for (const e of entries) {
    const v = tileViews.get(e.target);
    if (!v) continue;
    v.onScreen = e.isIntersecting;
    reportTile(e.target);
  }
});

function watchTile(tile) {
  // On screen until the observer says otherwise: a new tile should not start paused.
  tileViews.set(tile, { trackId: null, width: 0, height: 0, onScreen: true });
  tileResize.observe(tile);
  tileOnScreen.observe(tile);
}

function unwatchTile(tile) {
  if (!tileViews.delete(tile)) return;
  tileResize.unobserve(tile);
  tileOnScreen.unobserve(tile);
}

/** The tile now shows `trackId` (a remote video's id, or null). */
function setTileTrack(tile, trackId) {
  const v = tileViews.get(tile);
  if (!v || v.trackId === trackId) return;
  v.trackId = trackId;
  reportTile(tile);
}

function reportTile(tile) {
  const v = tileViews.get(tile);
  if (!v || v.trackId === null || v.trackId === undefined) return;
  // The client sends only changes, throttled per track.
  client.setTrackView(v.trackId, { visible: v.onScreen && document.visibilityState === 'visible', width: v.width, height: v.height });
}

document.addEventListener('visibilitychange', () => {
  for (const tile of tileViews.keys()) reportTile(tile);
});

const PAUSE_TEXT = { lowBandwidth: 'Video paused: low bandwidth' };

function updateTile(tile, { name, muted, cameraOff, speaking, stream, label, trackId = null, paused = null }) {
  const nameEl = tile.querySelector('.name');
  if (nameEl.textContent !== label) nameEl.textContent = label;
  tile.dataset.name = name;
  tile.dataset.muted = String(Boolean(muted));
  if (tile.dataset.source === 'camera') {
    tile.dataset.cameraOff = String(Boolean(cameraOff));
    const ini = tile.querySelector('.initials');
    ini.textContent = initials(name);
    ini.style.setProperty('--hue', hue(name));
  }
  tile.dataset.speaking = String(Boolean(speaking));
  // Paused for the downlink: say so over the tile instead of showing a frozen frame.
  // (notVisible needs no words: nobody sees that tile.)
  const pauseText = !cameraOff && stream ? PAUSE_TEXT[paused] ?? '' : '';
  if (pauseText) tile.dataset.paused = paused;
  else delete tile.dataset.paused;
  const pausedEl = tile.querySelector('.tile-paused');
  if (pausedEl && pausedEl.textContent !== pauseText) pausedEl.textContent = pauseText;
  setTileTrack(tile, trackId);
  const bits = [label];
  if (tile.dataset.source === 'screen') bits.push('shared screen');
  else {
    if (muted) bits.push('microphone muted');
    if (cameraOff) bits.push('camera off');
    if (speaking) bits.push('speaking');
  }
  if (pauseText) bits.push('video paused, low bandwidth');
  tile.setAttribute('aria-label', bits.join(', '));
  setVideo(tile, stream);
}

function selfStream() {
  const cam = client.local.tracks.camera;
  if (!cam) return null;
  if (!app.selfView || app.selfView.getVideoTracks()[0] !== cam) app.selfView = new MediaStream([cam]);
  return app.selfView;
}

/** One row per person: ourselves first, then everyone else in join order. */
function people() {
  const out = [];
  if (client.participantId !== null || app.view === 'call') {
    const mic = client.local.tracks.microphone;
    out.push({
      key: 'p:self',
      id: client.participantId,
      self: true,
      name: client.name ?? $('#name-input').value.trim(),
      muted: !mic || client.local.muted.microphone,
      cameraOff: !client.local.tracks.camera,
      stream: selfStream(),
      screen: client.local.screenStream,
    });
  }
  for (const p of client.participants.values()) {
    const mic = ChorusClient.trackOf(p, 'microphone');
    const cam = ChorusClient.trackOf(p, 'camera');
    const screen = ChorusClient.trackOf(p, 'screen');
    out.push({
      key: `p:${p.id}`,
      id: p.id,
      self: false,
      name: p.name,
      muted: !mic || mic.muted,
      cameraOff: !cam || cam.muted,
      stream: cam?.stream ?? null,
      screen: screen?.stream ?? null,
      camTrack: cam ?? null,
      micTrack: mic ?? null,
      screenTrack: screen ?? null,
      p,
    });
  }
  return out;
}

function render() {
  if (app.view !== 'call') return;
  const rows = people();
  const grid = $('#grid');
  const stage = $('#stage');
  const want = new Set();
  const speaker = client.activeSpeaker;

  rows.forEach((r) => {
    const label = r.self ? `${r.name} (you)` : r.name;
    const speaking = speaker !== null && speaker === r.id && rows.length > 1;
    let tile = tiles.get(r.key);
    if (!tile) tile = makeTile(r.key, { participantId: r.id, self: r.self, source: 'camera' });
    if (r.self) tile.dataset.participantId = String(r.id ?? '');
    if (tile.parentElement !== grid) grid.append(tile);
    want.add(r.key);
    updateTile(tile, { name: r.name, label, muted: r.muted, cameraOff: r.cameraOff, speaking, stream: r.stream, trackId: r.camTrack?.id ?? null, paused: r.camTrack?.paused });
    if (!r.self) updateAdminControls(tile, r.name, r.micTrack);

    if (r.screen) {
      const skey = `s:${r.self ? 'self' : r.id}`;
      let st = tiles.get(skey);
      if (!st) st = makeTile(skey, { participantId: r.id, self: r.self, source: 'screen' });
      if (r.self) st.dataset.participantId = String(r.id ?? '');
      if (st.parentElement !== stage) stage.append(st);
      want.add(skey);
      updateTile(st, { name: r.name, label: r.self ? 'Your screen' : `${r.name}’s screen`, muted: false, speaking: false, stream: r.screen, trackId: r.screenTrack?.id ?? null, paused: r.screenTrack?.paused });
    }
  });
  // Keep grid order: ourselves first, then join order.
  rows.forEach((r, i) => {
    const t = tiles.get(r.key);
    if (grid.children[i] !== t) grid.insertBefore(t, grid.children[i] ?? null);
  });
  for (const [key, tile] of tiles) {
    if (!want.has(key)) {
      setVideo(tile, null);
      unwatchTile(tile);
      tile.remove();
      tiles.delete(key);
    }
  }
  const hasStage = stage.children.length > 0;
  stage.hidden = !hasStage;
  $('#call-main').classList.toggle('has-stage', hasStage);

  renderAudio();
  renderParticipants(rows, speaker);
  renderControls();
  layoutGrid();
}

function renderAudio() {
  const sink = $('#audio-sink');
  const want = new Map();
  for (const p of client.participants.values()) {
    for (const t of p.tracks.values()) if (t.kind === 'audio' && t.stream) want.set(`${p.id}:${t.id}`, { p, t });
  }
  for (const el of [...sink.children]) {
    const hit = want.get(el.dataset.key);
    if (!hit || el.srcObject !== hit.t.stream) {
      el.srcObject = null;
      el.remove();
    }
  }
  for (const [key, { p, t }] of want) {
    if (sink.querySelector(`audio[data-key="${key}"]`)) continue;
    const a = document.createElement('audio');
    a.autoplay = true;
    a.dataset.key = key;
    a.dataset.participantId = String(p.id);
    a.dataset.trackId = String(t.id);
    a.srcObject = t.stream;
    sink.append(a);
    a.play().then(
      () => {},
      (err) => {
        if (err?.name === 'NotAllowedError') audioBlocked();
      },
    );
  }
}

function audioBlocked() {
  if (app.audioBlocked) return;
  app.audioBlocked = true;
  showBanner('audio-blocked', 'The browser blocked sound until you interact with the page.', {
    level: 'info',
    dismissible: false,
    action: {
      label: 'Turn on sound',
      run: () => {
        app.audioBlocked = false;
        hideBanner('audio-blocked');
        for (const a of $('#audio-sink').children) a.play().catch(() => audioBlocked());
      },
    },
  });
}

function renderParticipants(rows, speaker) {
  const list = $('#participant-list');
  list.replaceChildren(
    ...rows.map((r) => {
      const li = document.createElement('li');
      li.dataset.participantId = String(r.id ?? '');
      li.dataset.speaking = String(speaker !== null && speaker === r.id);
      const dot = document.createElement('span');
      dot.className = 'dot';
      dot.setAttribute('aria-hidden', 'true');
      dot.textContent = initials(r.name);
      dot.style.setProperty('--hue', hue(r.name));
      const name = document.createElement('span');
      name.className = 'pname';
      name.textContent = r.self ? `${r.name} (you)` : r.name;
      const state = document.createElement('span');
      state.className = 'state';
      state.innerHTML =
        `<span class="${r.muted ? 'off' : ''}" role="img" aria-label="${r.muted ? 'microphone muted' : 'microphone on'}">${icon(r.muted ? 'micOff' : 'mic')}</span>` +
        `<span class="${r.cameraOff ? 'off' : ''}" role="img" aria-label="${r.cameraOff ? 'camera off' : 'camera on'}">${icon(r.cameraOff ? 'cameraOff' : 'camera')}</span>` +
        (r.screen ? `<span role="img" aria-label="sharing screen">${icon('screen')}</span>` : '');
      li.append(dot, name, state);
      return li;
    }),
  );
  $('#people-count').textContent = String(rows.length);
}

function renderControls() {
  const mic = $('#btn-mic');
  // Sources the grants do not allow have no button.
  mic.hidden = !client.mayPublish('microphone');
  $('#btn-camera').hidden = !client.mayPublish('camera');
  const micMuted = !client.local.tracks.microphone || client.local.muted.microphone;
  mic.setAttribute('aria-pressed', String(micMuted));
  mic.querySelector('.label').textContent = micMuted ? 'Unmute' : 'Mute';
  mic.setAttribute('aria-label', micMuted ? 'Unmute microphone' : 'Mute microphone');
  setIcon(mic, micMuted ? 'micOff' : 'mic');

  const cam = $('#btn-camera');
  const camOff = !client.local.tracks.camera;
  cam.setAttribute('aria-pressed', String(camOff));
  cam.querySelector('.label').textContent = camOff ? 'Start video' : 'Stop video';
  cam.setAttribute('aria-label', camOff ? 'Turn camera on' : 'Turn camera off');
  setIcon(cam, camOff ? 'cameraOff' : 'camera');

  const screen = $('#btn-screen');
  const sharing = Boolean(client.local.screenStream);
  screen.setAttribute('aria-pressed', String(sharing));
  screen.querySelector('.label').textContent = sharing ? 'Stop sharing' : 'Share screen';
  screen.setAttribute('aria-label', sharing ? 'Stop sharing your screen' : 'Share your screen');
  screen.hidden = !navigator.mediaDevices?.getDisplayMedia || !client.mayPublish('screen');
  setIcon(screen, 'screen');

  for (const [id, name] of [['#btn-settings', 'sliders'], ['#btn-people', 'people'], ['#btn-chat', 'chat'], ['#btn-leave', 'leave'], ['#btn-invite', 'link'], ['#btn-close-sidebar', 'close']]) {
    setIcon($(id), name);
  }
  $('#btn-settings').setAttribute('aria-label', 'Choose microphone and camera');
  $('#btn-settings').hidden = !client.mayPublish('microphone') && !client.mayPublish('camera');
  renderChatAccess();
  $('#btn-leave').setAttribute('aria-label', 'Leave the call');
}

/** Picks the column count that makes tiles largest in the grid's box (16:9 tiles). */
function layoutGrid() {
  const grid = $('#grid');
  const n = grid.children.length;
  if (!n) return;
  const box = grid.getBoundingClientRect();
  const gap = 8;
  const w = Math.max(box.width, 100);
  const h = Math.max(box.height, 60);
  let best = { cols: 1, size: 0 };
  for (let cols = 1; cols <= n; cols++) {
    const rows = Math.ceil(n / cols);
    const byW = (w - gap * (cols - 1)) / cols;
    const byH = ((h - gap * (rows - 1)) / rows) * (16 / 9);
    const size = Math.min(byW, byH);
    if (size > best.size) best = { cols, size };
  }
  // Never smaller than a readable tile: scroll instead.
  const min = Math.min(160, w);
  if (best.size < min) {
    best.cols = Math.max(1, Math.floor((w + gap) / (min + gap)));
    best.size = (w - gap * (best.cols - 1)) / best.cols;
  }
  grid.style.setProperty('--cols', String(best.cols));
  grid.style.setProperty('--tile-w', `${Math.floor(best.size)}px`);
}

// ---------------------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------------------

function renderChat() {
  const log = $('#chat-log');
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  if (!client.chat.length) {
    const li = document.createElement('li');
    li.className = 'empty';
    li.textContent = 'No messages yet. Say hello!';
    log.replaceChildren(li);
    return;
  }
  log.replaceChildren(
    ...client.chat.map((line) => {
      const li = document.createElement('li');
      li.dataset.from = String(line.from);
      li.dataset.self = String(line.from === client.participantId);
      const meta = document.createElement('div');
      meta.className = 'meta';
      const who = document.createElement('span');
      who.className = 'chat-name';
      who.textContent = line.from === client.participantId ? `${line.name} (you)` : line.name;
      const time = document.createElement('time');
      time.dateTime = new Date(line.time).toISOString();
      time.textContent = clockTime(line.time);
      meta.append(who, time);
      const text = document.createElement('div');
      text.className = 'chat-text';
      text.textContent = line.text;
      li.append(meta, text);
      return li;
    }),
  );
  if (atBottom || client.chat.at(-1)?.from === client.participantId) log.scrollTop = log.scrollHeight;
}

/** Without the chat grant, the input is off and says why. */
function renderChatAccess() {
  const may = client.mayChat();
  const input = $('#chat-input');
  if (input.disabled === !may) return;
  input.disabled = !may;
  $('#chat-send').disabled = !may;
  $('#chat-hint').hidden = may;
  input.placeholder = may ? 'Message everyone' : 'Chat is off for you';
}

function setSidebar(open, panel = app.panel) {
  app.sidebarOpen = open;
  app.panel = panel;
  const sb = $('#sidebar');
  sb.classList.toggle('closed', !open);
  sb.dataset.panel = panel;
  $('#people-panel').hidden = panel !== 'people';
  $('#chat-panel').hidden = panel !== 'chat';
  $('#tab-people').setAttribute('aria-selected', String(panel === 'people'));
  $('#tab-chat').setAttribute('aria-selected', String(panel === 'chat'));
  $('#btn-people').setAttribute('aria-expanded', String(open && panel === 'people'));
  $('#btn-chat').setAttribute('aria-expanded', String(open && panel === 'chat'));
  if (open && panel === 'chat') {
    app.unread = 0;
    $('#chat-unread').hidden = true;
  }
  layoutGrid();
}

// ---------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------

async function refreshDevices() {
  let devices = [];
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch {
    return;
  }
  const current = client.devices;
  for (const [kind, sel, currentId] of [['audioinput', '#mic-select', current.audio], ['videoinput', '#camera-select', current.video]]) {
    const select = $(sel);
    const list = devices.filter((d) => d.kind === kind);
    select.replaceChildren(
      ...list.map((d, i) => {
        const o = document.createElement('option');
        o.value = d.deviceId;
        o.textContent = d.label || `${kind === 'audioinput' ? 'Microphone' : 'Camera'} ${i + 1}`;
        o.selected = d.deviceId === currentId;
        return o;
      }),
    );
    select.disabled = list.length === 0;
    if (!list.length) {
      const o = document.createElement('option');
      o.textContent = 'None found';
      select.append(o);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Client events
// ---------------------------------------------------------------------------------------

for (const type of ['participantJoined', 'participantLeft', 'trackAdded', 'trackRemoved', 'trackPublished', 'muteChanged', 'localTracks', 'localMute', 'screenShare', 'activeSpeaker', 'streamState']) {
  client.on(type, () => render());
}

client.on('participantJoined', ({ participant, existing }) => {
  if (!existing && app.view === 'call') toast(`${participant.name} joined`);
});
client.on('participantLeft', ({ participant, reconnecting }) => {
  if (!reconnecting && app.view === 'call' && client.participantId !== null) toast(`${participant.name} left`);
});

client.on('chat', ({ history, self }) => {
  renderChat();
  if (!history && !self && !(app.sidebarOpen && app.panel === 'chat')) {
    app.unread += 1;
    const badge = $('#chat-unread');
    badge.textContent = String(app.unread);
    badge.hidden = false;
  }
});

client.on('roomList', ({ rooms }) => {
  hideBanner('unreachable');
  renderRooms(rooms);
});

client.on('connectionState', ({ state, error, reason }) => {
  const ind = $('#conn-indicator');
  ind.dataset.state = state;
  const text = { joining: 'Joining…', joined: 'Connected', reconnecting: 'Reconnecting…', disconnected: 'Disconnected', connecting: 'Connecting…', connected: 'Connected' }[state] ?? state;
  $('#conn-text').textContent = state === 'joined' && client.mediaState !== 'connected' ? 'Connecting media…' : text;
  if (state === 'reconnecting') {
    const msg = reason === 'serverShutdown' ? 'The server is restarting. Reconnecting…' : 'Connection lost. Reconnecting…';
    showBanner('reconnecting', msg, { level: 'warn', dismissible: false });
  } else if (state === 'joined') {
    hideBanner('reconnecting');
    hideBanner('server-shutdown');
    render();
    renderChat();
  } else if (state === 'disconnected' && app.view === 'lobby' && !client.roomListRefused) {
    showBanner('unreachable', 'Lost the connection to the Chorus server. Retrying…', { level: 'error', dismissible: false });
  } else if (state === 'disconnected' && app.view === 'call' && !app.joining) {
    hideBanner('reconnecting');
    if (error) reportJoinError(error);
    else if (client.lastBye?.reason !== 'removed' && client.lastBye?.reason !== 'roomClosed') showBanner('unreachable', 'Disconnected from the server.', { level: 'error' });
    leaveCall();
  }
});

client.on('mediaState', ({ state }) => {
  if (client.connectionState !== 'joined') return;
  $('#conn-text').textContent = { connected: 'Connected', connecting: 'Connecting media…', failed: 'Media failed', disconnected: 'Media interrupted' }[state] ?? 'Connected';
  $('#conn-indicator').dataset.media = state;
});

client.on('quality', ({ level, rtt, loss }) => {
  const ind = $('#conn-indicator');
  ind.dataset.quality = level;
  const bits = [`Connection ${level}`];
  if (rtt !== null) bits.push(`round trip ${Math.round(rtt * 1000)} ms`);
  if (loss) bits.push(`${(loss * 100).toFixed(1)}% loss`);
  ind.title = bits.join(', ');
});

client.on('bye', ({ reason }) => {
  if (reason === 'removed') {
    showBanner('removed', 'You were removed from the room: by a room admin, or because you joined again from another tab or device.', { level: 'error' });
  } else if (reason === 'roomClosed') {
    showBanner('room-closed', 'The call was ended: the server’s operator closed this room.', { level: 'error' });
  } else if (reason === 'serverShutdown') {
    showBanner('server-shutdown', 'The server is shutting down. Chorus will reconnect when it is back.', { level: 'warn' });
  } else if (reason === 'mediaFailed') {
    showBanner('reconnecting', 'The media connection failed. Reconnecting…', { level: 'warn', dismissible: false });
  }
});

client.on('serverError', ({ code, message }) => {
  if (client.connectionState !== 'joined') return;
  if (code === 'invalidChat') toast('That message could not be sent (empty or too long).');
  else if (code === 'forbidden' && client.local.adminMuted.microphone) toast('A room admin has muted you. You can unmute once they allow it.');
  else if (code === 'forbidden') toast('Your invitation does not allow that.');
  else if (code === 'unknownParticipant') toast('That person has already left.');
  else console.warn('[chorus] server error', code, message);
});

client.on('localMute', ({ source, byAdmin, adminMuted }) => {
  if (!byAdmin) {
    if (!client.local.adminMuted.microphone && !client.local.adminMuted.camera) hideBanner('admin-muted');
    return;
  }
  if (adminMuted) {
    const what = source === 'microphone' ? 'muted your microphone' : source === 'camera' ? 'turned your camera off' : 'stopped your screen share';
    showBanner('admin-muted', `A room admin ${what}. You can turn it back on once they allow it.`, { level: 'warn' });
  }
});

client.on('notice', ({ text }) => showBanner('notice', text, { level: 'info' }));
client.on('draining', ({ seconds }) =>
  showBanner('notice', `The server is restarting: this call ends within ${seconds} s. Rejoin in a minute.`, { level: 'info' }),
);

client.on('warning', ({ error }) => console.warn('[chorus]', error));

// ---------------------------------------------------------------------------------------
// UI wiring
// ---------------------------------------------------------------------------------------

$('#join-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const v = validateLobby();
  if (v) joinCall(v.room, v.name);
});

$('#btn-mic').addEventListener('click', async () => {
  const muted = !client.local.tracks.microphone || client.local.muted.microphone;
  try {
    await client.setMicMuted(!muted);
  } catch (err) {
    showBanner('media', `The microphone could not be started (${describeMediaError(err)}).`, { level: 'warn' });
  }
  render();
});

$('#btn-camera').addEventListener('click', async (ev) => {
  const btn = ev.currentTarget;
  btn.disabled = true;
  try {
    const turnOn = !client.local.tracks.camera;
    await client.setCameraOff(!turnOn);
    if (turnOn && document.querySelector('#banners [data-banner="media"]')?.dataset.microphone === 'ok') hideBanner('media');
  } catch (err) {
    showBanner('media', `The camera could not be started (${describeMediaError(err)}).`, { level: 'warn' });
  } finally {
    btn.disabled = false;
    render();
  }
});

$('#btn-screen').addEventListener('click', async () => {
  try {
    if (client.local.screenStream) await client.stopScreenShare();
    else await client.startScreenShare();
  } catch (err) {
    if (err?.name !== 'NotAllowedError' && err?.name !== 'AbortError') showBanner('screen', `Screen sharing failed: ${err.message ?? err}`, { level: 'warn' });
  }
  render();
});

$('#btn-settings').addEventListener('click', async () => {
  await refreshDevices();
  $('#settings-dialog').showModal();
});
$('#mic-select').addEventListener('change', (ev) => client.switchDevice('audio', ev.target.value).then(render, (err) => showBanner('media', `Could not switch microphone: ${err.message}`)));
$('#camera-select').addEventListener('change', (ev) => client.switchDevice('video', ev.target.value).then(render, (err) => showBanner('media', `Could not switch camera: ${err.message}`)));
navigator.mediaDevices?.addEventListener?.('devicechange', () => refreshDevices());

$('#btn-people').addEventListener('click', () => setSidebar(!(app.sidebarOpen && app.panel === 'people'), 'people'));
$('#btn-chat').addEventListener('click', () => {
  const open = !(app.sidebarOpen && app.panel === 'chat');
  setSidebar(open, 'chat');
  if (open) $('#chat-input').focus();
});
$('#tab-people').addEventListener('click', () => setSidebar(true, 'people'));
$('#tab-chat').addEventListener('click', () => setSidebar(true, 'chat'));
$('#btn-close-sidebar').addEventListener('click', () => setSidebar(false));
// Arrow keys move between the two tabs (the ARIA tabs pattern).
document.querySelector('.tabs').addEventListener('keydown', (ev) => {
  if (ev.key !== 'ArrowLeft' && ev.key !== 'ArrowRight') return;
  const next = app.panel === 'chat' ? 'people' : 'chat';
  setSidebar(true, next);
  $(`#tab-${next}`).focus();
  ev.preventDefault();
});
$('#sidebar').addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape' && window.matchMedia('(max-width: 760px)').matches) setSidebar(false);
});

$('#chat-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('#chat-input');
  if (client.sendChat(input.value)) input.value = '';
});

$('#btn-invite').addEventListener('click', async () => {
  const link = inviteLink(client.room ?? $('#room-title').textContent);
  try {
    await navigator.clipboard.writeText(link);
    toast('Invite link copied');
  } catch {
    window.prompt('Copy this invite link:', link);
  }
});

$('#btn-leave').addEventListener('click', () => leaveCall());

new ResizeObserver(() => layoutGrid()).observe($('#grid'));
// On a phone the side panel is an overlay: close it when the window becomes that narrow.
window.matchMedia('(max-width: 760px)').addEventListener('change', (ev) => {
  if (ev.matches && app.view === 'call') setSidebar(false);
});
window.addEventListener('beforeunload', () => client.close());

// ---------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------

(function start() {
  for (const b of document.querySelectorAll('[data-icon]')) setIcon(b, b.dataset.icon);
  hideTokenFromUrl();
  const room = params.get('room');
  const name = params.get('name') ?? (() => {
    try {
      return localStorage.getItem('chorus.name');
    } catch {
      return null;
    }
  })();
  if (name) $('#name-input').value = name;
  if (room) {
    $('#room-input').value = room;
    $('#join-heading').textContent = `Join “${room}”`;
  }
  showView('lobby');
  if (room && params.get('name') && ROOM_RE.test(room)) {
    joinCall(room, params.get('name').trim());
    return;
  }
  startRoomList();
  (room ? $('#name-input') : name ? $('#room-input') : $('#name-input')).focus();
})();
