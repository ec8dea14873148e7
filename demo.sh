#!/usr/bin/env bash
# The product's main job, end to end, on this machine:
#   flex-server with its SQLite database, an admin buying tokens and putting you on
#   Flex, flex-agent enrolled and running, a notifier showing your events, a
#   product started through `flexctl run` and one detected by the watcher, a
#   short run refunded, and what it all cost.
# Everything runs as you, in a temp directory, and is stopped at the end.
#
#   ./demo.sh --console   then keeps the server running with the demo's data and
#                         prints the web console's URL and admin token; Ctrl-C
#                         stops everything and removes the data.
set -euo pipefail
cd "$(dirname "$0")"

CONSOLE=0
for arg in "$@"; do
    case $arg in
    --console) CONSOLE=1 ;;
    -h | --help)
        sed -n '2,14p' "$0"
        exit 0
        ;;
    *)
        echo "demo.sh: unknown option '$arg' (try --console or --help)" >&2
        exit 2
        ;;
    esac
done

echo "==> building (first time: a few minutes)"
cargo build --quiet --workspace --bins
BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
# Ctrl-C (and a TERM) end the script normally, so the cleanup above runs.
trap 'exit 130' INT TERM

# Waits until FILE contains PATTERN (a readiness line), or fails after 30 s.
wait_for() {
    for _ in $(seq 300); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1:" >&2
    cat "$1" "${3:-/dev/null}" >&2
    exit 1
}

export FLEX_ADMIN_TOKEN=demo-admin-token
# A run shorter than short_use_grace is refunded (R13): 3 s here, 5 min by default.
printf '[policy]\nshort_use_grace = "3s"\n' >"$WORK/server.toml"
echo "==> starting flex-server (database in $WORK/server, short_use_grace 3 s)"
"$BIN/flex-server" --listen 127.0.0.1:0 --data-dir "$WORK/server" --config "$WORK/server.toml" \
    >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER=$!
PIDS+=("$SERVER")
wait_for "$WORK/server.out" "listening on" "$WORK/server.log"
export FLEX_SERVER=$(sed -n 's/^flex-server listening on //p' "$WORK/server.out")
echo "    $FLEX_SERVER"

ME=$(id -un)
EMAIL="$ME@example.com"
echo "==> the admin buys 500 tokens and puts $EMAIL on Flex"
"$BIN/flex-admin" tokens buy 500
"$BIN/flex-admin" users add "$EMAIL" --first Demo --last User
"$BIN/flex-admin" users flex "$EMAIL" --assign

echo "==> IT installs the agent on this workstation and enrolls it"
cat >"$WORK/agent.toml" <<EOF
server_url = "$FLEX_SERVER"
state_dir = "$WORK/agent-state"
socket_path = "$WORK/agent.sock"
credential_store = "file"

[users]
email_template = "{user}@example.com"
EOF
ENROLL=$("$BIN/flex-admin" --json enroll-token | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
"$BIN/flex-agent" enroll --config "$WORK/agent.toml" --server "$FLEX_SERVER" --token "$ENROLL" | sed 's/^/    /'
"$BIN/flex-agent" --config "$WORK/agent.toml" >"$WORK/agent.out" 2>"$WORK/agent.log" &
PIDS+=($!)
wait_for "$WORK/agent.out" "listening on" "$WORK/agent.log"
echo "    $(cat "$WORK/agent.out")"
CTL=("$BIN/flexctl" --socket "$WORK/agent.sock")

echo "==> your desktop session starts the notifier (here it prints instead of popping up)"
"${CTL[@]}" notify --print --no-desktop >"$WORK/notify.out" 2>"$WORK/notify.log" &
PIDS+=($!)
wait_for "$WORK/notify.log" "subscribed" "$WORK/notify.log"

echo "==> you open AutoCAD through its wrapper: flexctl run --product autocad -- ..."
"${CTL[@]}" run --product autocad --version 2026 -- sh -c 'echo "    [AutoCAD 2026 is running]"; sleep 4'
echo "==> and open it again: free inside today's window"
"${CTL[@]}" run --product autocad --version 2025 -- sh -c 'echo "    [AutoCAD 2025 is running]"'

echo "==> Maya is not on Flex here: its wrapper refuses with exit code 77 and never starts it"
"$BIN/flex-admin" defaults set --mode deny maya >/dev/null
"${CTL[@]}" run --product maya -- sh -c 'echo "    [Maya would run here]"' || echo "    (exit code $?)"

echo "==> you start Revit directly; the agent's process watcher sees it"
mkdir -p "$WORK/opt/revit"
# A copy of `tail`, which nothing else here runs: the watcher knows a product by
# its executable, and the `sleep`s below must not count as Revit running.
cp "$(command -v tail)" "$WORK/opt/revit/revit"
"$WORK/opt/revit/revit" -f /dev/null &
REVIT=$!
PIDS+=($REVIT)
for _ in $(seq 100); do
    "${CTL[@]}" status | grep -q '^Revit' && break
    sleep 0.1
done

echo "==> flexctl status"
"${CTL[@]}" status | sed 's/^/    /'
echo "==> you close Revit within short_use_grace: the agent asks, its 10 tokens come back"
kill "$REVIT" 2>/dev/null || true
for _ in $(seq 300); do
    "$BIN/flex-admin" --json charges --product revit | grep -q refunded_at && break
    sleep 0.1
done

echo "==> a desktop launcher for AutoCAD that starts it through the wrapper (flexctl wrap)"
"${CTL[@]}" wrap --product autocad --name AutoCAD -- /opt/autodesk/autocad/acad %F | sed 's/^/    /'

echo "==> your notifications"
wait_for "$WORK/notify.out" "Revit closed" "$WORK/notify.log"
sed 's/^/    /' "$WORK/notify.out"

echo "==> the admin's view: the ledger and the balance"
"$BIN/flex-admin" charges
"$BIN/flex-admin" tokens balance
"$BIN/flex-admin" report --by user --from "$(date -u +%Y-%m-01)" --to "$(date -u +%Y-%m-%d)"

if ((CONSOLE)); then
    echo
    echo "==> the admin console is running with the demo's data"
    echo "    open:   $FLEX_SERVER/admin/"
    echo "    token:  $FLEX_ADMIN_TOKEN"
    echo "    Ctrl-C stops the server and removes the demo's data"
    wait "$SERVER" || true
fi
