// A real coturn (`turnserver`, Debian package coturn) on 127.0.0.1 for the TURN tests:
// `use-auth-secret` with a known secret (or, with `user`, `lt-cred-mech` with one static
// user), loopback peers allowed, no TLS.
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { poll, scenario } from './harness.js';

export const TURN_SECRET = 'north-wind';
export const TURN_REALM = 'chorus.test';
/** The one user of a static-credential coturn (`startCoturn({ user: TURN_USER })`). */
export const TURN_USER = { username: 'chorus', credential: 'south-wind' };

function bindUdp(port) {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    s.once('error', reject);
    s.bind(port, '127.0.0.1', () => resolve(s));
  });
}

function tcpFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** A port free on 127.0.0.1 for both UDP and TCP right now. */
async function freePort() {
  for (let i = 0; i < 50; i++) {
    const s = await bindUdp(0);
    const { port } = s.address();
    s.close();
    if (await tcpFree(port)) return port;
  }
  throw new Error('no port free for both UDP and TCP');
}

/** Whether a STUN Binding request to 127.0.0.1:port gets an answer within 300 ms. */
async function answersStun(port) {
  const s = await bindUdp(0);
  try {
    const req = Buffer.alloc(20);
    req.writeUInt16BE(0x0001, 0);
    req.writeUInt32BE(0x2112a442, 4);
    randomBytes(12).copy(req, 8);
    return await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), 300);
      s.once('message', (msg) => {
        clearTimeout(timer);
        resolve(msg.length >= 20 && msg.readUInt16BE(0) === 0x0101);
      });
      s.send(req, port, '127.0.0.1');
    });
  } finally {
    s.close();
  }
}

/**
 * Starts coturn; resolves once it answers STUN. Call `stop()` when done. With `user`
 * ({ username, credential }) it knows that one user and no shared secret.
 */
export async function startCoturn({ secret = TURN_SECRET, user = null } = {}) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), 'chorus-coturn-'));
  const args = [
    '-n',
    '--listening-ip=127.0.0.1',
    '--relay-ip=127.0.0.1',
    `--listening-port=${port}`,
    ...(user ? ['--lt-cred-mech', `--user=${user.username}:${user.credential}`] : ['--use-auth-secret', `--static-auth-secret=${secret}`]),
    `--realm=${TURN_REALM}`,
    '--allow-loopback-peers',
    '--no-cli',
    '--no-tls',
    '--no-dtls',
    '--simple-log',
    `--log-file=${path.join(dir, 'turn.log')}`,
    `--pidfile=${path.join(dir, 'turn.pid')}`,
  ];
  let child;
  try {
    child = spawn('turnserver', args, { stdio: 'ignore' });
  } catch (err) {
    throw new Error(`starting turnserver: ${err.message} (install the Debian package coturn)`);
  }
  const spawnError = new Promise((_, reject) => child.once('error', (err) => reject(new Error(`starting turnserver: ${err.message} (install the Debian package coturn)`))));
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const log = () => {
    try {
      return readdirSync(dir).filter((f) => f.startsWith('turn')).map((f) => readFileSync(path.join(dir, f), 'utf8')).join('\n');
    } catch {
      return '';
    }
  };
  try {
    await Promise.race([spawnError, poll(() => answersStun(port), { timeout: 15000, interval: 100, message: 'coturn to answer STUN' })]);
  } catch (err) {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`${err.message}\n${log().slice(-3000)}`);
  }
  return {
    port,
    host: '127.0.0.1',
    log,
    /** The `[[ice.servers]]` TOML for a chorus config pointing at this coturn. */
    iceConfig({ transports = ['udp', 'tcp'], authSecret = secret } = {}) {
      const urls = transports.map((t) => `"turn:127.0.0.1:${port}?transport=${t}"`).join(', ');
      const auth = user ? `username = "${user.username}"\ncredential = "${user.credential}"` : `auth_secret = "${authSecret}"`;
      return `[[ice.servers]]\nurls = [${urls}]\n${auth}\n`;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(t);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Runs a browser `scenario` against a chorus whose `[ice]` section points at a fresh coturn
 * (`ice`: options of `iceConfig`; `iceExtra`: more `[ice]` keys; `user`: static credentials
 * instead of the shared secret), then stops coturn.
 */
export async function coturnScenario(t, body, { ice = {}, iceExtra = '', user = null } = {}) {
  const coturn = await startCoturn({ user });
  try {
    await scenario(t, body, { config: `[ice]\n${iceExtra}${coturn.iceConfig(ice)}` });
  } finally {
    await coturn.stop();
  }
}
