# Sourced by fuzz/run.sh and fuzz/smoke.sh: makes sure a nightly toolchain and cargo-fuzz
# are there, installing what is missing. Where they cannot be had, `fuzz_unavailable` says
# so loudly; the caller decides whether that fails the run.

# The nightly toolchain cargo fuzz builds with (libFuzzer needs -Zsanitizer). Override with
# a dated one (nightly-2026-05-19) to pin it.
FUZZ_TOOLCHAIN="${CHORUS_FUZZ_TOOLCHAIN:-nightly}"
# cargo-fuzz, pinned.
CARGO_FUZZ_VERSION=0.13.2

fuzz_unavailable() {
  {
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!! FUZZING SKIPPED: $*"
    echo "!!! No fuzz target was built or run. Install a nightly Rust toolchain"
    echo "!!! (rustup toolchain install nightly --profile minimal) and cargo-fuzz"
    echo "!!! $CARGO_FUZZ_VERSION (cargo install cargo-fuzz --locked --version $CARGO_FUZZ_VERSION)."
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo
  } >&2
}

# Returns 0 when `cargo +$FUZZ_TOOLCHAIN fuzz` works, installing what it can first.
ensure_fuzz_tools() {
  if ! command -v rustup >/dev/null 2>&1; then
    fuzz_unavailable "rustup is not installed, so no nightly toolchain can be had"
    return 1
  fi
  if ! rustup run "$FUZZ_TOOLCHAIN" rustc --version >/dev/null 2>&1; then
    echo "==> installing the $FUZZ_TOOLCHAIN toolchain (rustup, minimal profile)" >&2
    if ! rustup toolchain install "$FUZZ_TOOLCHAIN" --profile minimal; then
      fuzz_unavailable "could not install the $FUZZ_TOOLCHAIN toolchain"
      return 1
    fi
  fi
  if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    if ! cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"; then
      fuzz_unavailable "could not install cargo-fuzz $CARGO_FUZZ_VERSION"
      return 1
    fi
  fi
}

# Every fuzz target, in the order the smoke runs them.
fuzz_targets() {
  cargo +"$FUZZ_TOOLCHAIN" fuzz list --fuzz-dir "$FUZZ_DIR"
}

# The seed directories of a target (read-only inputs besides its corpus).
fuzz_seeds() {
  local root
  root="$(dirname "$FUZZ_DIR")"
  case "$1" in
    signal_parse) echo "$FUZZ_DIR/seeds/signal_parse $root/crates/protocol/fixtures/client" ;;
    stun_ufrag) echo "$FUZZ_DIR/seeds/stun_ufrag" ;;
    ice_tcp_frames) echo "$FUZZ_DIR/seeds/ice_tcp_frames" ;;
    simulcast_sdp | sdp_offer) echo "$FUZZ_DIR/seeds/sdp" ;;
    config) echo "$root/config" ;;
    red) echo "$FUZZ_DIR/seeds/red" ;;
    subscriber_answer) echo "$FUZZ_DIR/seeds/subscriber_answer" ;;
    whep_offer) echo "$FUZZ_DIR/seeds/whep" ;;
    node_link) echo "$FUZZ_DIR/seeds/node_link" ;;
    *) echo "" ;;
  esac
}

# The build: release with debug assertions and overflow checks, AddressSanitizer.
fuzz_build() {
  cargo +"$FUZZ_TOOLCHAIN" fuzz build --fuzz-dir "$FUZZ_DIR" -O -a "$@"
}
