#!/usr/bin/env bash
# Runs every check the way CI does: formatting and lints first (so a red lint never lands),
# a CI-sized benchmark run (so the tool cannot rot), then builds the static musl release
# binary (the one that ships) and runs the whole suite against it (HEARTBEAT_BIN), the curl
# smoke script, the Chromium test, the empty-root and image tests and the OpenAPI contract (schemathesis,
# installed pinned into target/schemathesis) included. First installs what it needs and the
# machine lacks (scripts/install-deps.sh: apt-get, rustup, cargo install). Before the suite,
# five seconds of each fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all --check
cargo fmt --manifest-path fuzz/Cargo.toml --check
cargo clippy --locked --workspace --all-targets -- -D warnings
scripts/bench.sh --quick
scripts/install-schemathesis.sh
bin=$(scripts/build-static.sh)
# A few seconds of each fuzz target, so they cannot rot (the long runs are by hand).
scripts/fuzz.sh 5
HEARTBEAT_BIN="$bin" cargo test --locked
