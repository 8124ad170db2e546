#!/usr/bin/env bash
# Runs every Chorus test, installing what a fresh machine lacks (as root):
#   formatting and lints, Rust unit tests, end-to-end tests against a real server with
#   simulated browsers, a short run of every fuzz target, then the web app's unit tests
#   and real-browser tests in Chromium.
# Tests run inside a fresh network namespace (only loopback exists there), so no media
# ever leaves this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v turnserver >/dev/null 2>&1 || missing+=(coturn)
command -v nft >/dev/null 2>&1 || missing+=(nftables) # netlab: loss and UDP blocking (16-call-loss)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv) # schemathesis, below
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus) # tests/tests/metrics.rs scrapes /metrics
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server) # tests/tests/cluster.rs, specs/21-cluster: the cluster's Redis
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg) # tests/tests/recording.rs encodes test media and decodes recordings
command -v janus >/dev/null 2>&1 || missing+=(janus) # benches/tests/janus.rs: the peer SFU of chorus-loadtest --target janus
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# schemathesis (PyPI) fuzzes the admin API from its OpenAPI document (tests/tests/admin_api.rs).
SCHEMATHESIS_VERSION=4.32.5
if ! tests/.venv/bin/st --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  step "schemathesis $SCHEMATHESIS_VERSION (PyPI, into tests/.venv)"
  if ! python3 -m venv tests/.venv; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
    python3 -m venv tests/.venv
  fi
  tests/.venv/bin/pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# aiortc (PyPI) is a WHIP publisher (and WHEP viewer) Chorus did not write (tests/whip/,
# tests/tests/whip.rs, tests/browser/specs/19-whip.test.js).
AIORTC_VERSION=1.16.0
if ! tests/.venv/bin/python -c "import aiortc, sys; sys.exit(aiortc.__version__ != '$AIORTC_VERSION')" 2>/dev/null; then
  step "aiortc $AIORTC_VERSION (PyPI, into tests/.venv)"
  tests/.venv/bin/pip install -q --disable-pip-version-check "aiortc==$AIORTC_VERSION"
fi

step "npm packages"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --all-targets --locked

# Everything below runs with loopback as the only network.
in_netns() { unshare --net sh -c 'ip link set lo up && exec "$@"' -- "$@"; }

step "Rust tests (unit + end-to-end)"
# janus is installed above, so the Janus load-test driver's test must run, not skip.
CHORUS_JANUS_REQUIRED=1 in_netns cargo test --workspace --locked --offline

step "fuzz smoke (fuzz/smoke.sh: builds every fuzz target, runs each for 15 s)"
# Needs a nightly toolchain and cargo-fuzz, which it installs; where they cannot be had it
# prints a loud SKIPPED banner (CHORUS_FUZZ_REQUIRED=1 makes that a failure).
fuzz/smoke.sh

step "web app unit tests and real-browser tests"
export CHORUS_BIN="$PWD/target/debug/chorus"
in_netns sh -c 'cd tests/browser && npm test'

step "all tests passed"
