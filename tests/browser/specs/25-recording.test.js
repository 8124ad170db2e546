// Recording (issue 16) with real browsers: two Chromium pages (VP8 simulcast cameras, Opus
// in RED as chorus.js negotiates it) in a room the config records from its first join.
// The admin API stops the recording; the sidecar lists a finished file per track, every
// file starts on a keyframe and Debian's ffmpeg decodes it with no error, and the files
// last about as long as the recording ran. Needs ffmpeg (tests/run-all.sh installs it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { scenario, openPage, callUrl, waitJoined, waitMedia, COLORS } from '../lib/harness.js';

const SECRET = 'a-browser-recording-secret-of-32-bytes';
const AUTH = `Basic ${Buffer.from(`KEY:${SECRET}`).toString('base64')}`;
const RECORD_S = 8;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function tool(name, args) {
  const out = spawnSync(name, args, { encoding: 'utf8' });
  if (out.error) throw new Error(`${name} is not installed (apt-get install ffmpeg; tests/run-all.sh does): ${out.error.message}`);
  return out;
}

test('a recorded call of two browsers gives a file per track that ffmpeg decodes', { timeout: 120000 }, async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'chorus-recordings-'));
  const config = `[auth]\nkeys = { KEY = "${SECRET}" }\n[recording]\ndir = "${dir}"\nrooms = ["rec"]\n`;
  try {
    await scenario(t, async ({ server, browser }) => {
      const api = (method, p) => fetch(`${server.url}/api/v1/rooms/rec${p}`, { method, headers: { Authorization: AUTH } });
      const a = await openPage(browser, callUrl(server, 'rec', 'Ada'), { color: COLORS.red, label: 'Ada' });
      const idA = await waitJoined(a);
      const b = await openPage(browser, callUrl(server, 'rec', 'Bob'), { color: COLORS.blue, label: 'Bob' });
      const idB = await waitJoined(b);
      await waitMedia(a, { video: [idB], audio: [idB] });
      await waitMedia(b, { video: [idA], audio: [idA] });

      const room = await (await api('GET', '')).json();
      assert.ok(room.recording, `the room records: ${JSON.stringify(room)}`);
      const started = Date.now();
      await sleep(RECORD_S * 1000);
      const stop = await api('DELETE', '/recording');
      assert.equal(stop.status, 204);
      const ranS = (Date.now() - room.recording.startedAtUnixMs) / 1000;
      assert.ok(Date.now() - started >= RECORD_S * 1000);

      const sidecar = JSON.parse(readFileSync(path.join(room.recording.directory, 'recording.json'), 'utf8'));
      assert.equal(sidecar.state, 'finished', JSON.stringify(sidecar));
      assert.equal(sidecar.error, undefined, JSON.stringify(sidecar));
      for (const [name, source, codec] of [['Ada', 'microphone', 'opus'], ['Ada', 'camera', 'vp8'], ['Bob', 'microphone', 'opus'], ['Bob', 'camera', 'vp8']]) {
        const f = sidecar.files.find((x) => x.participant === name && x.source === source);
        assert.ok(f?.file && f.finished, `${name}'s ${source}: ${JSON.stringify(f)}`);
        assert.equal(f.codec, codec);
        const file = path.join(room.recording.directory, f.file);
        // The files are variable-rate, as captured: `-fps_mode vfr` keeps ffmpeg from
        // re-timing frames at a guessed constant rate, where two frames that Chromium
        // captured less than half a frame apart (a busy machine) land on one time and the
        // null muxer complains about the timestamps, not the decoding.
        const decoded = tool('ffmpeg', ['-nostdin', '-v', 'error', '-i', file, '-fps_mode', 'vfr', '-f', 'null', '-']);
        assert.equal(decoded.status, 0, `ffmpeg ${f.file}: ${decoded.stderr}`);
        assert.equal(decoded.stderr.trim(), '', `ffmpeg reports errors decoding ${f.file}`);
        const probe = JSON.parse(tool('ffprobe', ['-v', 'error', '-of', 'json', '-show_entries', 'format=duration', file]).stdout);
        const seconds = Number(probe.format.duration);
        // The files start within a second of the recording (the cameras' first keyframe,
        // asked for) and run to its end.
        assert.ok(seconds > ranS - 1.5 && seconds < ranS + 0.5, `${f.file} lasts ${seconds} s of the ${ranS} s recorded`);
        if (source === 'camera') {
          // the first frame of the IVF file is a VP8 keyframe (frame tag bit 0 clear)
          const bytes = readFileSync(file);
          assert.equal(bytes[32 + 12] & 1, 0, `${f.file} starts on a keyframe`);
          assert.ok(f.width > 0 && f.height > 0, JSON.stringify(f));
        }
      }
    }, { config });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
