#!/usr/bin/env bash
# Installs what the Windows build and its Wine tests need, when missing:
# the x86_64-pc-windows-gnu Rust target, mingw (links it and builds the test
# helpers), wine64 (runs it), wixl (builds the MSI) and msitools (msibuild
# edits it). Used by .ci/run and tests/run.sh; needs root for apt-get.
set -euo pipefail
if ! rustup target list --installed | grep -qx x86_64-pc-windows-gnu; then
    echo "install-tools.sh: adding the Rust target x86_64-pc-windows-gnu" >&2
    rustup target add x86_64-pc-windows-gnu
fi
need=()
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
[[ -x /usr/lib/wine/wine64 ]] || command -v wine64 >/dev/null || need+=(wine64)
command -v wixl >/dev/null || need+=(wixl)
command -v msibuild >/dev/null || need+=(msitools)
if ((${#need[@]})); then
    echo "install-tools.sh: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
