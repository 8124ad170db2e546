// A chat line from one page appears on the two others; a late joiner sees it in history.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { scenario, openPage, callUrl, waitJoined, poll, COLORS } from '../lib/harness.js';

const chatTexts = (page) => page.$$eval('#chat-log li[data-from]', (lis) => lis.map((li) => ({ from: li.dataset.from, name: li.querySelector('.chat-name').textContent, text: li.querySelector('.chat-text').textContent, time: li.querySelector('time').textContent })));

test('chat reaches everyone, and a late joiner gets the history', { timeout: 120000 }, (t) =>
  scenario(t, async ({ server, browser }) => {
    const pages = [];
    const ids = [];
    for (const [name, color] of [['Ada', COLORS.red], ['Bob', COLORS.blue], ['Cy', COLORS.green]]) {
      const p = await openPage(browser, callUrl(server, 'chat', name), { color, label: name });
      ids.push(await waitJoined(p));
      pages.push(p);
    }
    const [a, b, c] = pages;
    await a.fill('#chat-input', 'Hello from Ada <b>not bold</b>');
    await a.press('#chat-input', 'Enter');
    assert.equal(await a.inputValue('#chat-input'), '');
    for (const p of [a, b, c]) {
      const lines = await poll(async () => {
        const l = await chatTexts(p);
        return l.length === 1 && l;
      }, { message: 'the chat line' });
      assert.equal(lines[0].text, 'Hello from Ada <b>not bold</b>');
      assert.equal(lines[0].from, String(ids[0]));
      assert.match(lines[0].name, /^Ada/);
      assert.match(lines[0].time, /\d/);
    }
    await b.fill('#chat-input', 'Hi Ada');
    await b.click('#chat-send');
    await poll(async () => (await chatTexts(c)).length === 2, { message: 'second line' });

    // A fourth page joins later and sees both lines, in order.
    const d = await openPage(browser, callUrl(server, 'chat', 'Dee'), { color: COLORS.yellow, label: 'Dee' });
    await waitJoined(d);
    const history = await poll(async () => {
      const l = await chatTexts(d);
      return l.length === 2 && l;
    }, { message: 'history on the late joiner' });
    assert.deepEqual(history.map((l) => l.text), ['Hello from Ada <b>not bold</b>', 'Hi Ada']);
    assert.deepEqual(history.map((l) => l.from), [String(ids[0]), String(ids[1])]);
  }));
