#!/usr/bin/env bash
# Installs schemathesis, pinned, into target/schemathesis (a Python venv) unless it is there
# already; the contract test (tests/contract.rs) runs it from there. Needs python3 with venv.
set -euo pipefail
cd "$(dirname "$0")/.."
version=4.32.5
venv=target/schemathesis
if [ -x "$venv/bin/schemathesis" ] && "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "version $version\$"; then
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
"$venv/bin/schemathesis" --version
