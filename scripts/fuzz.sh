#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz and libFuzzer) for SECONDS each (default 10) and
# prints the executions of each; exits non-zero at the first crash, whose input libFuzzer
# saves under fuzz/artifacts/. Needs cargo-fuzz (cargo install cargo-fuzz --locked) and a C++
# compiler; cargo-fuzz's nightly flags are enabled on stable with RUSTC_BOOTSTRAP=1.
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz not found (cargo install cargo-fuzz --locked)"; exit 1; }
for target in $(cargo fuzz list); do
  mkdir -p "fuzz/corpus/$target"
  log=$(mktemp)
  if ! cargo fuzz run "$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $target crashed (input saved under fuzz/artifacts/$target/)"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  echo "fuzz: $target: ${runs:-?} executions in ${seconds} s, no crash"
  rm -f "$log"
done
