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

# One stream for two users: the pinged one's cached ping with its user and an id, then a live
# ping of the other user, who had none.
other="$user-other"
other_claim="{\"userid\":\"$other\",\"clientid\":\"smoke\"}"
curl -sS -N --max-time 3 -D "$tmp/multi-head" "$base/subscribe?user=$user&user=$other&token=smoke" \
  >"$tmp/multi" 2>/dev/null &
stream=$!
sleep 1
code=$(curl -sS -o "$tmp/body" -w '%{http_code}' --max-time 5 -X POST \
  -H "X-User-Claim: $other_claim" -d '{"status":"0"}' "$base/ping") || fail "POST /ping as $other: curl failed"
[ "$code" = 200 ] || fail "POST /ping as $other: expected 200, got $code"
wait "$stream"
grep -qi '^content-type: text/event-stream' "$tmp/multi-head" ||
  fail "GET /subscribe?user=...: no text/event-stream content type: $(tr -d '\r' <"$tmp/multi-head")"
ids=$(grep -c '^id: [0-9][0-9]*$' "$tmp/multi")
events=$(grep '^data: ' "$tmp/multi")
first=$(sed -n 1p <<<"$events")
second=$(sed -n 2p <<<"$events")
grep -Eq "^data: \{\"user\":\"$user\",\"time\":[0-9]+,\"status\":\"2\"\}$" <<<"$first" ||
  fail "multi-user stream: expected $user's cached ping first, got: ${first:-nothing}"
grep -Eq "^data: \{\"user\":\"$other\",\"time\":[0-9]+,\"status\":\"0\"\}$" <<<"$second" ||
  fail "multi-user stream: expected $other's live ping next, got: ${second:-nothing}"
[ "$ids" = 2 ] || fail "multi-user stream: expected an id: line per event, got $ids"
pass "GET /subscribe?user=$user&user=$other -> $first, then $second, each with an id"

code=$(curl -sS -o "$tmp/body" -w '%{http_code}' --max-time 5 "$base/status?user=$user&user=$user-never") ||
  fail "GET /status: curl failed"
[ "$code" = 200 ] || fail "GET /status: expected 200, got $code: $(cat "$tmp/body")"
grep -Eq "\"$user\":\{\"online\":true,\"status\":\"2\",\"time\":[0-9]+\}" "$tmp/body" ||
  fail "GET /status: expected $user's last ping, online, got: $(cat "$tmp/body")"
grep -q "\"$user-never\":null" "$tmp/body" ||
  fail "GET /status: expected null for a user who never pinged, got: $(cat "$tmp/body")"
pass "GET /status -> $(cat "$tmp/body")"

code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -X POST -H "X-User-Claim: $claim" \
  "$base/leave") || fail "POST /leave: curl failed"
[ "$code" = 200 ] || fail "POST /leave: expected 200, got $code"
curl -sS -o "$tmp/body" --max-time 5 "$base/status?user=$user" || fail "GET /status: curl failed"
grep -Eq "\"$user\":\{\"online\":false,\"status\":\"2\",\"time\":[0-9]+\}" "$tmp/body" ||
  fail "POST /leave: expected $user offline with the last visible ping, got: $(cat "$tmp/body")"
pass "POST /leave -> 200, then GET /status -> $(cat "$tmp/body")"

code=$(curl -sS -o "$tmp/body" -w '%{http_code}' --max-time 5 -X POST \
  -H 'X-User-Claim: not json' -d '{"status":"1"}' "$base/ping") || fail "bad claim: curl failed"
[ "$code" = 400 ] || fail "bad claim: expected 400, got $code"
pass "bad claim -> 400: $(head -c 200 "$tmp/body")"

code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$base/nowhere") || fail "404: curl failed"
[ "$code" = 404 ] || fail "unknown path: expected 404, got $code"
pass "unknown path -> 404"
echo "smoke test passed against $base"
