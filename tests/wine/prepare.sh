#!/usr/bin/env bash
# Shared by runner.sh and the end-to-end tests (sourced, not run): finds Wine,
# builds the test-only helpers with mingw and creates the Wine prefix.
#
#   WINE              the wine64 loader (Debian installs it off PATH)
#   WINEPREFIX        FLEX_WINEPREFIX, else target/wine/prefix
#   FLEX_WINE_DIR     target/wine: helpers built here
#
# Test setup only. Wine 8's bcryptprimitives.dll lacks ProcessPrng, which Rust's
# std calls since 1.78: prng-shim.c, built as bcryptprimitives.dll and placed
# beside a test .exe, provides it. Real Windows has it and needs no shim.

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
FLEX_WINE_DIR="${FLEX_WINE_DIR:-$repo/target/wine}"
export WINEPREFIX="${FLEX_WINEPREFIX:-$FLEX_WINE_DIR/prefix}"
export WINEDEBUG="${WINEDEBUG:--all}"
# No Mono or Gecko install prompts in a headless prefix.
export WINEDLLOVERRIDES="${WINEDLLOVERRIDES:-mscoree,mshtml=}"

wine_find() {
    if [[ -n "${WINE:-}" ]]; then
        return
    fi
    local c
    for c in /usr/lib/wine/wine64 "$(command -v wine64 || true)" "$(command -v wine || true)"; do
        if [[ -n "$c" && -x "$c" ]]; then
            WINE="$c"
            export WINE
            return
        fi
    done
    echo "wine64 is not installed: apt-get install wine64 (tests/run.sh does this)" >&2
    exit 1
}

# Builds $2 from the C source $1 (and resource script $3, if any) when stale.
wine_cc() {
    local src="$1" out="$2" rc="${3:-}" objs=()
    if [[ -f "$out" && "$out" -nt "$src" && ( -z "$rc" || "$out" -nt "$rc" ) ]]; then
        return
    fi
    if ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
        echo "mingw is not installed: apt-get install gcc-mingw-w64-x86-64 (tests/run.sh does this)" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$out")"
    if [[ -n "$rc" ]]; then
        x86_64-w64-mingw32-windres "$rc" -O coff -o "$out.res.o"
        objs+=("$out.res.o")
    fi
    case "$out" in
        *.dll) x86_64-w64-mingw32-gcc -O2 -shared -o "$out.tmp" "$src" "${objs[@]}" -ladvapi32 ;;
        *) x86_64-w64-mingw32-gcc -O2 -mwindows -o "$out.tmp" "$src" "${objs[@]}" ;;
    esac
    mv "$out.tmp" "$out"
}

wine_prepare() {
    wine_find
    mkdir -p "$FLEX_WINE_DIR"
    # One preparation at a time: test binaries may start together.
    exec {lock}>"$FLEX_WINE_DIR/.lock"
    flock "$lock"
    local w="$repo/tests/wine"
    wine_cc "$w/prng-shim.c" "$FLEX_WINE_DIR/bcryptprimitives.dll"
    wine_cc "$w/fake-product.c" "$FLEX_WINE_DIR/fake-product.exe" "$w/fake-product.rc"
    if [[ ! -f "$WINEPREFIX/system.reg" ]]; then
        "$WINE" wineboot -i >/dev/null 2>&1
        # Windows without a display: the null graphics driver still gives
        # processes real top-level windows and message queues (WM_CLOSE).
        "$WINE" reg add 'HKCU\Software\Wine\Drivers' /v Graphics /d null /f >/dev/null 2>&1
        # The desktop process wineboot started has no driver (no DISPLAY), and
        # windows created while it runs fail: start Wine again with the setting.
        local server
        server="$(dirname "$WINE")/wineserver"
        [[ -x "$server" ]] || server=wineserver
        "$server" -k 2>/dev/null || true
        "$server" -w 2>/dev/null || true
    fi
    wine_keepalive
    flock -u "$lock"
}

# Wine starts its system processes (services.exe, explorer, ...) from the first
# process of a prefix, with that process's open files, and ends them when the
# last ordinary process exits. A background process with no output of ours
# keeps them alive between test executables (no 10 s restart each time) and
# keeps them from holding a caller's pipe open. It ends by itself after
# FLEX_WINE_KEEPALIVE seconds (default 900); `wineserver -k` ends it sooner.
wine_keepalive() {
    local pidfile="$WINEPREFIX/.flex-keepalive.pid"
    if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        return
    fi
    setsid "$WINE" cmd /c ping -n "${FLEX_WINE_KEEPALIVE:-900}" 127.0.0.1 \
        </dev/null >/dev/null 2>&1 &
    echo $! >"$pidfile"
    # The first process of a prefix takes a while to bring Wine up: wait for it.
    "$WINE" cmd /c exit </dev/null >/dev/null 2>&1
}

# Copies the ProcessPrng shim beside executable $1 (if not there yet).
wine_shim_beside() {
    local dir
    dir="$(dirname "$1")"
    if [[ ! -f "$dir/bcryptprimitives.dll" ]]; then
        cp "$FLEX_WINE_DIR/bcryptprimitives.dll" "$dir/bcryptprimitives.dll"
    fi
}
