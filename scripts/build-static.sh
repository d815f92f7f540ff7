#!/usr/bin/env bash
# Builds the binary that ships: release, static, for x86_64-unknown-linux-musl, the target
# and flags the Dockerfile builds with (its rust:alpine host is that target), and checks it
# has no dynamic dependencies. Prints the binary's path on stdout.
# Needs the target: rustup target add x86_64-unknown-linux-musl (.ci/run adds it), and a C
# compiler for musl, for ring's code (TLS): Debian's musl-gcc (apt-get install -y musl-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
if [ -z "${CC_x86_64_unknown_linux_musl:-}" ]; then
  command -v musl-gcc >/dev/null 2>&1 || {
    echo "build-static: no musl-gcc: apt-get install -y musl-tools" >&2
    exit 1
  }
  export CC_x86_64_unknown_linux_musl=musl-gcc
fi
cargo build --release --locked -p heartbeat --target "$target" --target-dir target/static >&2
bin="target/static/$target/release/heartbeat"

if readelf -l "$bin" | grep -q 'INTERP'; then
  echo "build-static: $bin asks for a program interpreter: it is not static" >&2
  exit 1
fi
if readelf -d "$bin" 2>/dev/null | grep -q 'NEEDED'; then
  echo "build-static: $bin needs shared libraries:" >&2
  readelf -d "$bin" | grep NEEDED >&2
  exit 1
fi
echo "build-static: $bin is static, $(stat -c %s "$bin") bytes" >&2
echo "$bin"
