// The lobby's room list follows people joining and leaving.
import { test } from 'node:test';
import { scenario, openPage, callUrl, waitJoined, poll, RES } from '../lib/harness.js';

const roomCounts = (page) => page.$$eval('#room-list li', (lis) => Object.fromEntries(lis.map((li) => [li.dataset.room, Number(li.dataset.count)])));
const same = (a, b) => JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());

test('the lobby room list shows live counts', { timeout: 90000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const lobby = await openPage(browser, `${server.url}/?res=${RES}`);
    await poll(() => lobby.isVisible('#room-list-empty'), { message: 'empty room list' });

    const expect = async (want, message) => {
      await poll(async () => same(await roomCounts(lobby), want), { timeout: 10000, message: `${message}: ${JSON.stringify(want)}` });
    };
    const a = await openPage(browser, callUrl(server, 'alpha', 'Ada'));
    await waitJoined(a);
    await expect({ alpha: 1 }, 'one in alpha');
    const b = await openPage(browser, callUrl(server, 'alpha', 'Bob'));
    await waitJoined(b);
    await expect({ alpha: 2 }, 'two in alpha');
    const c = await openPage(browser, callUrl(server, 'beta', 'Cy'));
    await waitJoined(c);
    await expect({ alpha: 2, beta: 1 }, 'beta appears');
    await b.click('#btn-leave');
    await expect({ alpha: 1, beta: 1 }, 'Bob left alpha');
    await c.close();
    await expect({ alpha: 1 }, 'beta emptied');
    // Clicking a room fills the form and joins with the remembered name.
    await lobby.fill('#name-input', 'Lou');
    await lobby.click('#room-list li[data-room="alpha"] button');
    await waitJoined(lobby);
    await poll(async () => (await a.locator('#grid .tile').count()) === 2, { message: 'Lou in alpha' });
  }));
