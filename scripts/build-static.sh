#!/usr/bin/env bash
# Builds a statically linked release heartbeat on this machine, with no Docker engine, and
# checks that it has no dynamic dependencies. Prints the binary's path on stdout.
#
# This is glibc linked statically (+crt-static), which resolves numeric addresses only; the
# Dockerfile builds with musl, which also resolves host names such as "redis" in a scratch
# image.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release --locked --target "$target" --target-dir target/static >&2
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
