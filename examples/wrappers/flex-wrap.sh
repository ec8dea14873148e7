#!/bin/sh
# A product wrapper for the Flex licensing agent, in POSIX shell with socat.
#
#   flex-wrap.sh --product autocad [--version 2026] [--socket PATH] -- /opt/autocad/acad FILE...
#
# Asks flex-agent for a license, starts the product only when granted, tells the
# agent its pid, stays connected while it runs, reports its exit, and closes it
# when the agent says so. Exit code: the product's (128 + N if signal N ended
# it), or 77 when the license was refused and the product never started.
#
# The protocol is described in docs/local-api.md. socat carries the connection
# through two FIFOs; the JSON is read with sed, which is enough for what the
# agent sends (one compact object per line). Needs: sh, socat, sed, mkfifo.
set -u

# macOS has no /run: its agent listens under /var/run (docs/local-api.md).
default_sock=/run/flex-agent/agent.sock
[ "$(uname -s)" = Darwin ] && default_sock=/var/run/flex-agent/agent.sock
sock=${FLEX_AGENT_SOCKET:-$default_sock}
product=
version=
me=flex-wrap.sh
REFUSED=77

usage() {
    echo "usage: $me --product ID [--version V] [--socket PATH] -- COMMAND [ARG...]" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
    --product) [ $# -ge 2 ] || usage; product=$2; shift 2 ;;
    --version) [ $# -ge 2 ] || usage; version=$2; shift 2 ;;
    --socket) [ $# -ge 2 ] || usage; sock=$2; shift 2 ;;
    --) shift; break ;;
    *) usage ;;
    esac
done
if [ -z "$product" ] || [ $# -eq 0 ]; then usage; fi
# Ids are letters, digits, '-', '_', '.' and ':': nothing to escape in JSON.
case $product$version in
*[!A-Za-z0-9_.:-]*) echo "$me: '$product' / '$version' is not a valid product id or version" >&2; exit 2 ;;
esac
command -v socat >/dev/null 2>&1 || {
    echo "$me: $product not started: socat is not installed" >&2
    exit $REFUSED
}

# A write to a connection the agent closed must fail, not kill the wrapper;
# the product is started with the default SIGPIPE again.
trap '' PIPE

dir=$(mktemp -d) || exit $REFUSED
socat_pid=
reader=
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    [ -n "$reader" ] && kill "$reader" 2>/dev/null
    [ -n "$socat_pid" ] && kill "$socat_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
mkfifo "$dir/to-agent" "$dir/from-agent" || exit $REFUSED
socat -t 1 - "UNIX-CONNECT:$sock" <"$dir/to-agent" >"$dir/from-agent" 2>"$dir/socat.log" &
socat_pid=$!
exec 3>"$dir/to-agent" 4<"$dir/from-agent"

send() {
    printf '%s\n' "$1" >&3
}

# A line from the agent with escaped quotes made plain, so that [^"]* below
# never stops inside a string.
plain() {
    printf '%s\n' "$1" | sed "s/\\\\\"/'/g"
}

# The next line from the agent (plain); fails when the agent hung up.
next_line() {
    IFS= read -r line <&4 || return 1
    plain "$line"
}

# The next reply line, skipping events.
next_reply() {
    while l=$(next_line); do
        case $l in
        *'"event":"'*) continue ;;
        *) printf '%s\n' "$l"; return 0 ;;
        esac
    done
    return 1
}

# json_str FIELD LINE: the value of string field FIELD.
json_str() {
    printf '%s\n' "$2" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"
}

unreachable() {
    echo "$me: $product not started: cannot ask flex-agent at $sock: $(cat "$dir/socat.log" 2>/dev/null)" >&2
    exit $REFUSED
}

send '{"op":"hello","protocol":1,"client":"flex-wrap.sh"}' || unreachable
hello=$(next_reply) || unreachable
case $hello in
*'"ok":true'*) ;;
*) echo "$me: $product not started: flex-agent refused: $(json_str message "$hello")" >&2; exit $REFUSED ;;
esac

if [ -n "$version" ]; then
    send "{\"op\":\"launch\",\"product\":\"$product\",\"version\":\"$version\"}" || unreachable
else
    send "{\"op\":\"launch\",\"product\":\"$product\"}" || unreachable
fi
grant=$(next_reply) || unreachable
name=$(json_str product_name "$grant")
[ -n "$name" ] || name=$product
case $grant in
*'"ok":true'*) ;;
*)
    echo "$me: $name not started: $(json_str message "$grant") ($(json_str code "$grant"))" >&2
    exit $REFUSED
    ;;
esac
session=$(json_str session "$grant")

# Granted: start the product, then hand its pid to the agent.
(trap - PIPE; exec "$@" 3>&- 4<&-) &
pid=$!
send "{\"op\":\"attach\",\"session\":\"$session\",\"pid\":$pid}"
attached=$(next_reply) || attached=
case $attached in
*'"ok":true'*) ;;
*) echo "$me: flex-agent did not take pid $pid: $(json_str message "$attached")" >&2 ;;
esac

# USR1 is the reader below telling us that the agent closed the session: the
# product gets SIGTERM. Only this shell signals the product, and only until it
# has reaped it, so a reused pid is never signalled. The agent forces the
# close itself after close_grace_secs if the product ignores SIGTERM.
reaped=
# shellcheck disable=SC2317  # called by the traps below
forward() {
    [ -z "$reaped" ] && kill "-$1" "$pid" 2>/dev/null
}
trap 'forward TERM' USR1

# Events from the agent, while the product runs.
# It reads in this subshell itself (not in a command substitution), so that
# killing it ends the read; it must not hold the connection's write end, or
# socat would never see the wrapper finish.
(
    trap - USR1
    exec 3>&-
    while IFS= read -r raw <&4; do
        l=$(plain "$raw")
        case $(json_str event "$l") in
        product_closed)
            echo "$me: flex-agent closed $name: $(json_str message "$l")" >&2
            kill -USR1 $$
            ;;
        esac
    done
) &
reader=$!
# Signals to the wrapper go to the product (set after the reader started, so
# that the reader still ends on the TERM it gets below).
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP

# Wait for the product; a trapped signal interrupts wait, so wait again.
rc=0
while kill -0 "$pid" 2>/dev/null; do
    wait "$pid"
    rc=$?
done
wait "$pid" 2>/dev/null
last=$?
[ "$last" -ne 127 ] && rc=$last
reaped=1

kill "$reader" 2>/dev/null
wait "$reader" 2>/dev/null
reader=

if send "{\"op\":\"exit\",\"session\":\"$session\",\"code\":$rc}" 2>/dev/null; then
    next_reply >/dev/null || true
fi
exec 3>&-
wait "$socat_pid" 2>/dev/null
socat_pid=
exit "$rc"
