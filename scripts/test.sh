#!/usr/bin/env bash
# Runs every check the way CI does: formatting and lints first (so a red lint never lands),
# a CI-sized benchmark run (so the tool cannot rot), then builds the static musl release
# binary (the one that ships) and runs the whole suite against it (HEARTBEAT_BIN), the curl
# smoke script, the Chromium test and the empty-root test included. Needs redis-server,
# redis-benchmark, wrk, chromium and the musl target (`.ci/run` installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
scripts/bench.sh --quick
bin=$(scripts/build-static.sh)
HEARTBEAT_BIN="$bin" cargo test --locked
