// The connectivity page (/connectivity) against a server with ICE-TCP and a real coturn:
// every path it tests works here, and it says so; with a wrong TURN secret, the TURN rows
// fail with a hint while the direct paths still pass.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { openPage, poll, ARTIFACTS } from '../lib/harness.js';
import { coturnScenario } from '../lib/coturn.js';

async function results(page) {
  return poll(() => page.evaluate(() => (window.connectivity?.done ? window.connectivity.results : null)), {
    timeout: 90000,
    interval: 300,
    message: 'the connectivity checks to finish',
  });
}

async function rows(page) {
  return page.evaluate(() => Object.fromEntries([...document.querySelectorAll('#checks tr')].map((tr) => [tr.dataset.check, tr.dataset.status])));
}

test('the connectivity page finds every path to the server', { timeout: 150000 }, (t) =>
  coturnScenario(
    t,
    async ({ server, browser }) => {
      const page = await openPage(browser, `${server.url}/connectivity`);
      const r = await results(page);
      const detail = JSON.stringify(r, null, 1);
      for (const check of ['websocket', 'udp', 'tcp', 'turn-udp', 'turn-tcp']) assert.equal(r[check]?.status, 'ok', `${check}: ${detail}`);
      assert.equal(r.turns.status, 'skip', detail);
      assert.equal(r.udp.pair.remote.protocol, 'udp', detail);
      assert.equal(r.tcp.pair.remote.protocol, 'tcp', detail);
      assert.equal(r['turn-udp'].pair.local.type, 'relay', detail);
      assert.equal(r['turn-tcp'].pair.local.relayProtocol, 'tcp', detail);
      const shown = await rows(page);
      assert.equal(shown.udp, 'ok');
      assert.equal(shown.turns, 'skip');
      assert.equal(await page.evaluate(() => document.getElementById('verdict').dataset.status), 'ok');
      await page.screenshot({ path: path.join(ARTIFACTS, 'connectivity.png') });
      // Every throwaway participant left again.
      await poll(async () => {
        const res = await fetch(`${server.url}/api/stats`);
        const stats = await res.json();
        return stats.participants === 0;
      }, { timeout: 10000, message: 'the test participants to leave' });
    },
  ));

test('the connectivity page reports a TURN server that refuses the credentials', { timeout: 150000 }, (t) =>
  coturnScenario(
    t,
    async ({ server, browser }) => {
      const page = await openPage(browser, `${server.url}/connectivity`);
      const r = await results(page);
      const detail = JSON.stringify(r, null, 1);
      assert.equal(r.udp.status, 'ok', detail);
      assert.equal(r['turn-udp'].status, 'fail', detail);
      assert.match(r['turn-udp'].detail, /401/, detail);
      assert.match(r['turn-udp'].hint, /static-auth-secret/, detail);
      assert.equal((await rows(page))['turn-udp'], 'fail');
    },
    { ice: { authSecret: 'not-the-secret' } },
  ));
