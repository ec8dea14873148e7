#!/usr/bin/env bash
# The product's main job, end to end, on this machine:
#   a server with its SQLite database, tokens bought, a workstation enrolled,
#   a product launch claimed, and what it cost.
set -euo pipefail
cd "$(dirname "$0")"

echo "==> building"
cargo build --quiet --workspace --bins
BIN=$PWD/target/debug
WORK=$(mktemp -d)
cleanup() { kill "${SERVER_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

export FLEX_ADMIN_TOKEN=demo-admin-token
echo "==> starting flex-server (database: $WORK/server/flex.db)"
"$BIN/flex-server" --listen 127.0.0.1:0 --data-dir "$WORK/server" >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
until grep -q "listening on" "$WORK/server.out" 2>/dev/null; do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
    sleep 0.1
done
export FLEX_SERVER=$(sed -n 's/^flex-server listening on //p' "$WORK/server.out")
echo "    $FLEX_SERVER"

echo "==> the admin buys 500 tokens and puts Ada on Flex"
"$BIN/flex-admin" tokens buy 500
"$BIN/flex-admin" users add ada@example.com --first Ada --last Lovelace
"$BIN/flex-admin" users flex ada@example.com --assign

echo "==> a workstation enrolls and claims AutoCAD for Ada"
ENROLL=$("$BIN/flex-admin" --json enroll-token | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
DEVICE=$(curl -sf "$FLEX_SERVER/v1/agent/enroll" -H 'content-type: application/json' \
    -d "{\"enrollment_token\":\"$ENROLL\",\"hostname\":\"$(hostname)\"}")
TOKEN=$(echo "$DEVICE" | sed -n 's/.*"device_token":"\([^"]*\)".*/\1/p')
curl -sf "$FLEX_SERVER/v1/agent/claims" -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' \
    -d '{"claim_id":"demo-1","user":"ada@example.com","product":"autocad","version":"2026"}' | head -c 200
echo
echo "==> the ledger and the balance"
"$BIN/flex-admin" charges
"$BIN/flex-admin" tokens balance
