#!/usr/bin/env bash
# Runs every test the way CI does: a CI-sized benchmark run (so the tool cannot rot), then
# builds the static release binary (the one that ships) and runs the whole suite against it
# (HEARTBEAT_BIN), the curl smoke script and the Chromium test included. Needs redis-server,
# redis-benchmark and wrk; the browser test installs chromium when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bench.sh --quick
bin=$(scripts/build-static.sh)
HEARTBEAT_BIN="$bin" cargo test --locked
