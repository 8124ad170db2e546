// A small network lab for the browser tests: the chorus server in a network namespace of
// its own, and each "host" (one Chromium, with one or more pages) in another, joined to the
// server's by a veth pair whose server→host direction can be rate-capped with `tc tbf`.
//
//   srv ns:  lo + 198.18.0.1/32 (the server: HTTP, media UDP, ICE-TCP, announced)
//            veth <srvIf_i> 198.18.1.(4i+1)/30  ── cap(host_i) shapes its egress ──┐
//   host_i:  lo, veth <cliIf_i> 198.18.1.(4i+2)/30, default route via 198.18.1.(4i+1) ┘
//
// Everything uses 198.18.0.0/15 (RFC 2544 benchmarking), inside namespaces this module made;
// no route leads anywhere else. Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for
// `ip netns add`), which the test run has; it works inside `unshare --net` too (the
// namespace files go under /run/netns of the current mount namespace).
//
// Names are unique per process and lab (`chorus-<pid>-<n>-srv`, veths `ch<pid>-<k>s|c`).
// `lab.destroy()` (or the process exit/signal handlers) kills what still runs inside and
// deletes the namespaces, which removes their veths. The server and the browsers carry a
// parent-death signal, so a SIGKILLed test leaves no process behind; the next lab deletes
// the namespace names of runs whose process is gone.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, chmodSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServer, launchBrowser, CHROMIUM } from './harness.js';

/** The server's address inside the lab. */
export const SERVER_IP = '198.18.0.1';

const NS_PREFIX = 'chorus-';
let labCount = 0;
let linkCount = 0;
/** Every live lab of this process, destroyed by the exit handler if a test did not. */
const live = new Set();

function run(cmd, args, { allowFail = false } = {}) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    if (allowFail) return null;
    throw new Error(`${cmd} ${args.join(' ')} failed: ${err.stderr?.toString().trim() || err.message}`);
  }
}
const ip = (...args) => run('ip', args);

/**
 * `setpriv --pdeathsig KILL` (util-linux) when it exists: the server and the browsers die
 * with this process even when it is killed before its exit handlers run (SIGKILL).
 */
let deathPrefix;
function diesWithUs() {
  deathPrefix ??= /pdeathsig/.test(run('setpriv', ['--help'], { allowFail: true }) ?? '') ? ['setpriv', '--pdeathsig', 'KILL', '--'] : [];
  return deathPrefix;
}

/** Pids of the processes inside namespace `ns` (empty if none or gone). */
function nsPids(ns) {
  const out = run('ip', ['netns', 'pids', ns], { allowFail: true });
  return (out ?? '').split(/\s+/).filter(Boolean).map(Number);
}

/** Kills (SIGKILL, by pid) what still runs inside `ns`, then deletes it. Synchronous. */
function deleteNamespace(ns) {
  for (let round = 0; round < 20; round++) {
    const pids = nsPids(ns);
    if (!pids.length) break;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {}
    }
    // Give the kernel a moment to reap; execFileSync keeps this synchronous.
    run('sleep', ['0.05'], { allowFail: true });
  }
  run('ip', ['netns', 'del', ns], { allowFail: true });
}

const alive = (pid) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
};

/**
 * Deletes the namespaces of earlier runs whose node process is gone (a run killed before
 * its handlers ran). It only deletes their names; it kills nothing.
 */
function sweepStale() {
  let names = [];
  try {
    names = existsSync('/run/netns') ? readdirSync('/run/netns') : [];
  } catch {}
  for (const name of names) {
    const m = /^chorus-(\d+)-\d+-/.exec(name);
    if (m && Number(m[1]) !== process.pid && !alive(Number(m[1]))) run('ip', ['netns', 'del', name], { allowFail: true });
  }
}

let handlersInstalled = false;
function installExitHandlers() {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', () => {
    for (const lab of live) lab.destroySync();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.once(sig, () => {
      for (const lab of live) lab.destroySync();
      process.kill(process.pid, sig);
    });
  }
}

/**
 * Makes a lab: the server's namespace, and nothing else yet. Add hosts with
 * `lab.addHost(label)`, start the server with `lab.startServer()`, a browser in a host with
 * `lab.launchBrowser(host)`. Always `await lab.destroy()` (a test's `t.after`).
 */
export function createLab() {
  installExitHandlers();
  sweepStale();
  const n = ++labCount;
  const prefix = `${NS_PREFIX}${process.pid}-${n}`;
  const srvNs = `${prefix}-srv`;
  const dir = mkdtempSync(path.join(tmpdir(), 'chorus-netlab-'));
  const namespaces = [];
  const hosts = [];
  const servers = [];
  const browsers = [];
  let destroyed = false;

  const addNs = (ns) => {
    ip('netns', 'add', ns);
    namespaces.push(ns);
    ip('-n', ns, 'link', 'set', 'lo', 'up');
  };

  const lab = {
    srvNs,
    hosts,
    serverIp: SERVER_IP,

    /**
     * A namespace for one browser, joined to the server by its own veth pair. Returns
     * `{ label, ns, srvIf, cliIf, srvAddr, cliAddr }`.
     */
    addHost(label) {
      if (!/^[a-z0-9]{1,8}$/.test(label)) throw new Error(`host label ${label}: 1-8 of [a-z0-9]`);
      const i = hosts.length;
      if (i >= 60) throw new Error('at most 60 hosts');
      const ns = `${prefix}-${label}`;
      addNs(ns);
      const k = ++linkCount;
      const srvIf = `ch${process.pid}-${k}s`.slice(0, 15);
      const cliIf = `ch${process.pid}-${k}c`.slice(0, 15);
      const srvAddr = `198.18.1.${4 * i + 1}`;
      const cliAddr = `198.18.1.${4 * i + 2}`;
      // Made in the namespace of this process, then both ends moved away at once.
      ip('link', 'add', srvIf, 'netns', srvNs, 'type', 'veth', 'peer', 'name', cliIf, 'netns', ns);
      ip('-n', srvNs, 'addr', 'add', `${srvAddr}/30`, 'dev', srvIf);
      ip('-n', ns, 'addr', 'add', `${cliAddr}/30`, 'dev', cliIf);
      ip('-n', srvNs, 'link', 'set', srvIf, 'up');
      ip('-n', ns, 'link', 'set', cliIf, 'up');
      ip('-n', ns, 'route', 'add', 'default', 'via', srvAddr, 'dev', cliIf);
      const host = { label, ns, srvIf, cliIf, srvAddr, cliAddr, rate: null, loss: null, udpBlocked: false };
      hosts.push(host);
      return host;
    },

    /** Starts chorus inside the server namespace, on SERVER_IP (see harness.startServer). */
    async startServer(options = {}) {
      const server = await startServer({ ...options, ip: SERVER_IP, wrap: ['ip', 'netns', 'exec', srvNs, ...diesWithUs()] });
      servers.push(server);
      return server;
    },

    /**
     * One Chromium inside `host`'s namespace (through a wrapper executable), treating
     * `server`'s http origin as secure so that its pages get the fake camera and mic.
     * Pages opened with harness.openPage(browser, ...) are tagged with the host, so
     * `cap(page, ...)` finds their link.
     */
    async launchBrowser(host, server, options = {}) {
      const wrapper = path.join(dir, `chromium-${host.label}`);
      const cmd = ['ip', 'netns', 'exec', host.ns, ...diesWithUs(), options.executablePath ?? CHROMIUM].join(' ');
      writeFileSync(wrapper, `#!/bin/sh\nexec ${cmd} "$@"\n`);
      chmodSync(wrapper, 0o755);
      const browser = await launchBrowser({
        ...options,
        executablePath: wrapper,
        args: [`--unsafely-treat-insecure-origin-as-secure=${server.url}`, ...(options.args ?? [])],
      });
      browser.host = host;
      browser.context.on('page', (page) => {
        page.netHost = host;
      });
      browsers.push(browser);
      return browser;
    },

    /**
     * Caps the server→host direction of `target`'s link (a host, a page or a browser of
     * this lab) to `rate` (tc units: '300kbit', '2mbit').
     */
    cap(target, rate, { burst = '16kbit', latency = '300ms' } = {}) {
      const host = hostOf(target);
      ip('netns', 'exec', srvNs, 'tc', 'qdisc', 'replace', 'dev', host.srvIf, 'root', 'tbf', 'rate', rate, 'burst', burst, 'latency', latency);
      host.rate = rate;
    },

    /** Lifts the cap of `target`'s link (no-op when uncapped). */
    uncap(target) {
      const host = hostOf(target);
      if (host.rate === null) return;
      ip('netns', 'exec', srvNs, 'tc', 'qdisc', 'del', 'dev', host.srvIf, 'root');
      host.rate = null;
    },

    /**
     * Drops every `every`-th UDP packet (deterministic: 20 -> 5 %) arriving at `target`'s
     * host from the server (the server→page direction), with an nftables `netdev` ingress
     * chain on the host's end of its veth, inside the host's namespace. The kernel here has
     * no netem; nf_tables `numgen` is built in. Needs `nft` (Debian package nftables, which
     * tests/run-all.sh installs): without it this throws, it never skips silently.
     * `random: true` drops each packet with probability 1/`every` instead (`numgen random`),
     * so that losses sometimes come in a row, as on a real link.
     */
    loss(target, { every = 20, random = false } = {}) {
      const host = hostOf(target);
      if (!Number.isInteger(every) || every < 2) throw new Error(`loss every ${every}: an integer >= 2`);
      if (run('nft', ['--version'], { allowFail: true }) === null) {
        throw new Error('netlab.loss needs nft (apt-get install nftables; tests/run-all.sh installs it)');
      }
      const nft = (...args) => run('ip', ['netns', 'exec', host.ns, 'nft', ...args]);
      if (host.loss) nft('delete', 'table', 'netdev', 'chorus_loss');
      nft('add', 'table', 'netdev', 'chorus_loss');
      nft('add', 'chain', 'netdev', 'chorus_loss', 'in', `{ type filter hook ingress device "${host.cliIf}" priority 0; policy accept; }`);
      nft('add', 'rule', 'netdev', 'chorus_loss', 'in', 'ip', 'protocol', 'udp', 'counter', 'numgen', random ? 'random' : 'inc', 'mod', String(every), '0', 'counter', 'drop');
      host.loss = every;
    },

    /**
     * Drops every UDP packet from `target`'s host to the server (netdev ingress on the
     * server's end of its veth, inside the server's namespace) until `unblockUdp`: its ICE
     * can then only connect over TCP. Needs `nft`, like `loss`.
     */
    blockUdp(target) {
      const host = hostOf(target);
      if (run('nft', ['--version'], { allowFail: true }) === null) {
        throw new Error('netlab.blockUdp needs nft (apt-get install nftables; tests/run-all.sh installs it)');
      }
      if (host.udpBlocked) return;
      const nft = (...args) => run('ip', ['netns', 'exec', srvNs, 'nft', ...args]);
      const table = `chorus_block_${host.label}`;
      nft('add', 'table', 'netdev', table);
      nft('add', 'chain', 'netdev', table, 'in', `{ type filter hook ingress device "${host.srvIf}" priority 0; policy accept; }`);
      nft('add', 'rule', 'netdev', table, 'in', 'ip', 'protocol', 'udp', 'counter', 'drop');
      host.udpBlocked = true;
    },

    /** Lets `target`'s host's UDP reach the server again (no-op when not blocked). */
    unblockUdp(target) {
      const host = hostOf(target);
      if (!host.udpBlocked) return;
      run('ip', ['netns', 'exec', srvNs, 'nft', 'delete', 'table', 'netdev', `chorus_block_${host.label}`]);
      host.udpBlocked = false;
    },

    /** Stops the loss of `target`'s link (no-op without). */
    unloss(target) {
      const host = hostOf(target);
      if (!host.loss) return;
      run('ip', ['netns', 'exec', host.ns, 'nft', 'delete', 'table', 'netdev', 'chorus_loss']);
      host.loss = null;
    },

    /** UDP packets that reached `target`'s host from the server, and those the loss dropped. */
    lossStats(target) {
      const host = hostOf(target);
      const out = run('ip', ['netns', 'exec', host.ns, 'nft', 'list', 'table', 'netdev', 'chorus_loss'], { allowFail: true }) ?? '';
      const counts = [...out.matchAll(/counter packets (\d+) bytes (\d+)/g)].map((m) => Number(m[1]));
      return counts.length === 2 ? { udp: counts[0], dropped: counts[1] } : { text: out.trim() };
    },

    /** `tc -s qdisc` of `target`'s server-side veth: sent bytes, drops, overlimits. */
    qdiscStats(target) {
      const host = hostOf(target);
      const out = run('ip', ['netns', 'exec', srvNs, 'tc', '-s', 'qdisc', 'show', 'dev', host.srvIf]);
      const m = /Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)/.exec(out);
      return m ? { bytes: Number(m[1]), packets: Number(m[2]), dropped: Number(m[3]), overlimits: Number(m[4]), text: out.trim() } : { text: out.trim() };
    },

    /** Closes the browsers, stops the servers, then deletes the namespaces. */
    async destroy() {
      if (destroyed) return;
      for (const b of browsers) await b.close().catch(() => {});
      for (const s of servers) await s.stop().catch(() => {});
      lab.destroySync();
    },

    /** The synchronous part of destroy (also run by the exit handler). */
    destroySync() {
      if (destroyed) return;
      destroyed = true;
      live.delete(lab);
      for (const ns of [...namespaces].reverse()) deleteNamespace(ns);
      rmSync(dir, { recursive: true, force: true });
    },
  };

  function hostOf(target) {
    const host = target?.netHost ?? target?.host ?? target;
    if (!hosts.includes(host)) throw new Error('not a host, page or browser of this lab');
    return host;
  }

  live.add(lab);
  try {
    addNs(srvNs);
    ip('-n', srvNs, 'addr', 'add', `${SERVER_IP}/32`, 'dev', 'lo');
  } catch (err) {
    lab.destroySync();
    throw new Error(`netlab needs root and \`ip netns\` (iproute2): ${err.message}`);
  }
  return lab;
}
