#!/usr/bin/env bash
# Installs what the test suite needs and a fresh Debian machine with Rust lacks, and nothing
# that is there already: redis-server, redis-benchmark, wrk, chromium, python3's venv, openssl
# (the TLS tests' certificates), musl-gcc (ring's C code in the static binary), and buildah,
# podman and runc (the image test), as Debian packages; the musl target (rustup) and cargo-fuzz (crates.io). scripts/test.sh
# runs it first; apt-get needs root (or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ -x /usr/bin/chromium ] || missing+=(chromium)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
# The image test builds the Dockerfile's final stage and runs it (tests/image.rs).
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "install-deps: missing ${missing[*]}; run as root or install them: apt-get install -y ${missing[*]}" >&2
      exit 1
    }
    sudo=(sudo)
  fi
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The binary that ships is built for musl (scripts/build-static.sh, as the Dockerfile does).
rustup target list --installed | grep -qx x86_64-unknown-linux-musl ||
  rustup target add x86_64-unknown-linux-musl

# The fuzz targets' runner (scripts/fuzz.sh).
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
