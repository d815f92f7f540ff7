#!/usr/bin/env bash
# Smoke test of a running heartbeat, with curl only.
#   scripts/smoke.sh [BASE_URL]      (default http://127.0.0.1:8080)
# Prints one line per check and exits non-zero at the first failure.
set -u
base=${1:-http://127.0.0.1:8080}
base=${base%/}
user="smoke-$$-$RANDOM"
claim="{\"userid\":\"$user\",\"clientid\":\"smoke\"}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() { echo "FAIL $*"; exit 1; }
pass() { echo "ok   $*"; }

ping() { # ping STATUS -> prints the HTTP code
  curl -sS -o "$tmp/body" -w '%{http_code}' --max-time 5 -X POST \
    -H "X-User-Claim: $claim" -H 'Content-Type: application/json' \
    -d "{\"status\":\"$1\"}" "$base/ping"
}

code=$(ping 1) || fail "POST /ping: curl could not reach $base"
[ "$code" = 200 ] || fail "POST /ping: expected 200, got $code: $(cat "$tmp/body")"
[ -s "$tmp/body" ] && fail "POST /ping: expected an empty body, got: $(cat "$tmp/body")"
pass "POST /ping as $user -> 200, empty body"

# Subscribe for 3 s: the cached ping must come first, then the live one sent meanwhile.
curl -sS -N --max-time 3 -D "$tmp/head" "$base/subscribe/$user/client/smoke?token=smoke" \
  >"$tmp/stream" 2>/dev/null &
stream=$!
sleep 1
code=$(ping 2) || fail "second POST /ping: curl failed"
[ "$code" = 200 ] || fail "second POST /ping: expected 200, got $code"
wait "$stream"
grep -qi '^content-type: text/event-stream' "$tmp/head" ||
  fail "GET /subscribe: no text/event-stream content type: $(tr -d '\r' <"$tmp/head")"
pass "GET /subscribe/$user/client/smoke -> text/event-stream"
events=$(grep '^data: ' "$tmp/stream")
shape='^data: \{"time":[0-9]+,"status":"%s"\}$'
first=$(sed -n 1p <<<"$events")
second=$(sed -n 2p <<<"$events")
# shellcheck disable=SC2059
grep -Eq "$(printf "$shape" 1)" <<<"$first" || fail "cached ping: expected status 1 first, got: ${first:-nothing}"
pass "cached ping first: $first"
# shellcheck disable=SC2059
grep -Eq "$(printf "$shape" 2)" <<<"$second" || fail "live ping: expected status 2 next, got: ${second:-nothing}"
pass "live ping next: $second"

code=$(curl -sS -o "$tmp/body" -w '%{http_code}' --max-time 5 -X POST \
  -H 'X-User-Claim: not json' -d '{"status":"1"}' "$base/ping") || fail "bad claim: curl failed"
[ "$code" = 400 ] || fail "bad claim: expected 400, got $code"
pass "bad claim -> 400: $(head -c 200 "$tmp/body")"

code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$base/nowhere") || fail "404: curl failed"
[ "$code" = 404 ] || fail "unknown path: expected 404, got $code"
pass "unknown path -> 404"
echo "smoke test passed against $base"
