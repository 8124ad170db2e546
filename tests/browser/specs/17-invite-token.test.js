// Invitations: a server in token mode admits pages whose URL carries `?token=`, shows the
// others an invitation notice instead of the call, gives a viewer no publishing, and lets a
// room admin remove someone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { scenario, openPage, callUrl, waitJoined, waitMedia, poll, tileState, CHORUS_BIN, COLORS } from '../lib/harness.js';

// The secret needs 32 bytes or more: the server refuses a shorter one.
const CONFIG = `[auth]
mode = "token"
keys = { "KEY" = "chorus-browser-test-secret-0123456789abcdef" }
`;

/** A join token from `chorus token` (the same config, so the same key). */
function mint({ room, identity, name, ttl, canPublish, sources, admin = false }) {
  const dir = mkdtempSync(path.join(tmpdir(), 'chorus-token-'));
  try {
    const cfg = path.join(dir, 'chorus.toml');
    writeFileSync(cfg, CONFIG);
    const args = ['token', '--config', cfg, '--room', room, '--identity', identity];
    if (name) args.push('--name', name);
    if (ttl) args.push('--ttl', ttl);
    if (canPublish !== undefined) args.push('--can-publish', String(canPublish));
    if (sources) args.push('--sources', sources.join(','));
    if (admin) args.push('--admin');
    return execFileSync(CHORUS_BIN, args, { encoding: 'utf8', env: { ...process.env, RUST_BACKTRACE: '0' } }).trim();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** callUrl with a token. */
function inviteUrl(server, room, name, token) {
  const url = new URL(callUrl(server, room, name));
  url.searchParams.set('token', token);
  return url.toString();
}

/** The text of a banner, or null. */
function bannerText(page, id) {
  return page.evaluate((sel) => document.querySelector(sel)?.textContent ?? null, `#banners [data-banner="${id}"] .banner-text`);
}

/** What the page publishes: the sources of its publications, and RTP packets sent. */
function published(page) {
  return page.evaluate(async () => {
    const c = window.chorus.client;
    let packets = 0;
    if (c.peers.publisher) (await c.peers.publisher.getStats()).forEach((s) => { if (s.type === 'outbound-rtp') packets += s.packetsSent ?? 0; });
    return { sources: [...c._publications.keys()], packets, local: Boolean(c.local.stream?.getTracks().length) };
  });
}

// Minted now, expired (1 s, plus the server's 5 s leeway) by the time its test runs.
const expiredAt = Date.now() + 7000;
const EXPIRED = mint({ room: 'late', identity: 'late', ttl: '1s' });

test('a page with a valid ?token= joins and sees and hears another invited page; the token stays out of the URL and the invite link', { timeout: 90000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const a = await openPage(browser, inviteUrl(server, 'inv', 'Ada', mint({ room: 'inv', identity: 'ada' })), { color: COLORS.red, label: 'Ada' });
    const idA = await waitJoined(a);
    const b = await openPage(browser, inviteUrl(server, 'inv', 'Bob', mint({ room: 'inv', identity: 'bob' })), { color: COLORS.blue, label: 'Bob' });
    const idB = await waitJoined(b);
    await waitMedia(a, { video: [idB], audio: [idB] });
    await waitMedia(b, { video: [idA], audio: [idA] });
    assert.equal((await tileState(a, `#tile-${idB}`)).label, 'Bob');
    assert.deepEqual(await a.evaluate(() => window.chorus.client.grants.canPublishSources), ['microphone', 'camera', 'screen']);
    // Not an admin: no admin controls.
    assert.equal(await a.locator(`#tile-${idB} .tile-admin`).isHidden(), true);
    for (const p of [a, b]) {
      assert.doesNotMatch(p.url(), /token=/);
      assert.doesNotMatch(await p.getAttribute('#btn-invite', 'data-invite-link'), /token/);
    }
    // A reload keeps the invitation (this tab's sessionStorage): the lobby (the URL has the
    // room, not the name) joins with it.
    await b.reload();
    await poll(() => b.evaluate(() => document.body.dataset.view === 'lobby' && document.querySelector('#room-input').value === 'inv'), { message: 'Bob in the lobby after a reload' });
    await b.click('#join-button');
    await waitJoined(b);
  }, { config: CONFIG }));

test('a page without a token is told the room needs an invitation, once, and gets no call; the lobby lists no rooms', { timeout: 90000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const a = await openPage(browser, callUrl(server, 'inv', 'Eve'));
    await poll(async () => (await bannerText(a, 'unauthorized')) ?? false, { message: 'the invitation banner' });
    assert.match(await bannerText(a, 'unauthorized'), /This room needs an invitation/);
    assert.equal(await a.getAttribute('#banners [data-banner="unauthorized"]', 'role'), 'alert');
    assert.equal(await a.evaluate(() => document.body.dataset.view), 'lobby');
    assert.equal(await a.evaluate(() => window.chorus.client.participantId), null);
    // The refused room list hides the list, with no error about it; nothing is retried.
    await poll(() => a.locator('#rooms').isHidden(), { message: 'the room list hidden' });
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(await a.locator('#banners [data-banner="unreachable"]').count(), 0);
    assert.equal(await a.locator('#banners .banner').count(), 1);
    assert.equal(await a.evaluate(() => window.chorus.client.connectionState), 'connected');
    const joins = a.logs.filter((l) => /-> join /.test(l)).length;
    assert.equal(joins, 1, 'one join, not a loop');

    // An expired invitation says so.
    while (Date.now() < expiredAt) await new Promise((r) => setTimeout(r, 250));
    const late = await openPage(browser, inviteUrl(server, 'late', 'Lou', EXPIRED));
    await poll(async () => (await bannerText(late, 'token-expired')) ?? false, { message: 'the expired banner' });
    assert.match(await bannerText(late, 'token-expired'), /Your invitation has expired/);
    assert.equal(await late.evaluate(() => document.body.dataset.view), 'lobby');
  }, { config: CONFIG }));

test('a subscribe-only invitation receives the others and publishes nothing', { timeout: 90000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    // Count the page's captures (this script runs before the fake media's, which calls it).
    await browser.context.addInitScript(() => {
      const md = navigator.mediaDevices;
      const real = md.getUserMedia.bind(md);
      window.__captures = 0;
      md.getUserMedia = (c) => {
        window.__captures += 1;
        return real(c);
      };
    });
    const a = await openPage(browser, inviteUrl(server, 'view', 'Ada', mint({ room: 'view', identity: 'ada' })), { color: COLORS.red, label: 'Ada' });
    const idA = await waitJoined(a);
    const v = await openPage(browser, inviteUrl(server, 'view', 'Vic', mint({ room: 'view', identity: 'vic', canPublish: false })), { color: COLORS.green, label: 'Vic' });
    const idV = await waitJoined(v);
    await waitMedia(v, { video: [idA], audio: [idA] });
    assert.deepEqual(await published(v), { sources: [], packets: 0, local: false });
    // No camera or microphone was asked for.
    assert.equal(await v.evaluate(() => window.__captures), 0);
    assert.ok((await a.evaluate(() => window.__captures)) > 0, 'the counter counts (Ada captured)');
    for (const id of ['#btn-mic', '#btn-camera', '#btn-screen']) assert.equal(await v.locator(id).isHidden(), true, id);
    assert.match(await bannerText(v, 'grants'), /watch and listen/);
    // Ada sees Vic, without media.
    await poll(async () => (await tileState(a, `#tile-${idV}`))?.cameraOff === 'true', { message: 'Vic\'s tile at Ada, camera off' });
    assert.equal(await a.evaluate((id) => window.chorus.client.participants.get(id).tracks.size, idV), 0);
  }, { config: CONFIG }));

test('a room admin mutes and removes another page, which is told it was removed; the others see it leave', { timeout: 120000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const adm = await openPage(browser, inviteUrl(server, 'mod', 'Ada', mint({ room: 'mod', identity: 'ada', admin: true })), { color: COLORS.red, label: 'Ada' });
    const idA = await waitJoined(adm);
    const b = await openPage(browser, inviteUrl(server, 'mod', 'Bob', mint({ room: 'mod', identity: 'bob' })), { color: COLORS.blue, label: 'Bob' });
    const idB = await waitJoined(b);
    const c = await openPage(browser, inviteUrl(server, 'mod', 'Cy', mint({ room: 'mod', identity: 'cy', canPublish: false })), { color: COLORS.green, label: 'Cy' });
    await waitJoined(c);
    await waitMedia(adm, { video: [idB], audio: [idB] });
    await poll(() => c.evaluate((id) => window.chorus.client.participants.has(id), idB), { message: 'Cy sees Bob' });

    // Only the admin has the controls, and not on its own tile.
    const controls = adm.locator(`#tile-${idB} .tile-admin`);
    await poll(() => controls.isVisible(), { message: 'admin controls on Bob\'s tile' });
    assert.equal(await adm.locator('#tile-self .tile-admin').count(), 0);
    assert.equal(await b.locator(`#tile-${idA} .tile-admin`).isHidden(), true);

    // Mute: Bob's microphone shows muted on every page, Bob's own included.
    await adm.click(`#tile-${idB} .admin-mute`);
    for (const p of [adm, c]) await poll(async () => (await tileState(p, `#tile-${idB}`))?.muted === 'true', { message: 'Bob muted' });
    await poll(async () => (await tileState(b, '#tile-self'))?.muted === 'true', { message: 'Bob sees himself muted' });
    assert.match(await bannerText(b, 'admin-muted'), /room admin muted your microphone/);
    // Bob's unmute is refused while the admin holds it.
    await b.click('#btn-mic');
    await new Promise((r) => setTimeout(r, 1000));
    await poll(async () => (await tileState(b, '#tile-self'))?.muted === 'true', { message: 'Bob still muted' });
    assert.equal((await tileState(adm, `#tile-${idB}`)).muted, 'true');

    // Remove.
    await adm.click(`#tile-${idB} .admin-remove`);
    await poll(async () => (await bannerText(b, 'removed')) ?? false, { message: 'Bob is told he was removed' });
    assert.match(await bannerText(b, 'removed'), /You were removed/);
    await poll(() => b.evaluate(() => document.body.dataset.view === 'lobby'), { message: 'Bob back in the lobby' });
    for (const p of [adm, c]) {
      await poll(async () => (await p.locator(`#tile-${idB}`).count()) === 0, { message: 'Bob\'s tile gone' });
    }
    // Bob does not come back by himself.
    await new Promise((r) => setTimeout(r, 2000));
    assert.equal(await b.evaluate(() => window.chorus.client.participantId), null);
    assert.equal(await adm.locator('#grid .tile').count(), 2);
  }, { config: CONFIG }));
