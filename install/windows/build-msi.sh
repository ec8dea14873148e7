#!/usr/bin/env bash
# Builds the Windows installer:  bash install/windows/build-msi.sh [--debug]
#
# Cross-builds flex-agent.exe and flexctl.exe for x86_64-pc-windows-gnu (release
# profile; --debug packages the debug build, which CI's tests use because it is
# already built) and runs wixl (Debian package wixl) on flex-agent.wxs. Output:
#   target/windows/flex-agent-VERSION-x64.msi
# Needs: rustup target add x86_64-pc-windows-gnu, gcc-mingw-w64-x86-64, wixl.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
profile=release
cargo_profile=(--release)
for a in "$@"; do
    case "$a" in
    --debug) profile=debug; cargo_profile=() ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-msi.sh: unknown argument '$a' (try --help)" >&2; exit 2 ;;
    esac
done
for tool in wixl x86_64-w64-mingw32-gcc; do
    if ! command -v "$tool" >/dev/null; then
        echo "build-msi.sh: $tool is missing: apt-get install wixl gcc-mingw-w64-x86-64" >&2
        exit 1
    fi
done

cd "$repo"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
cargo build -p flex-agent --bins --target x86_64-pc-windows-gnu "${cargo_profile[@]}"
# wixl resolves Source paths relative to the current directory only.
bin="target/x86_64-pc-windows-gnu/$profile"
out="$repo/target/windows"
mkdir -p "$out"
msi="$out/flex-agent-$version-x64.msi"
wixl -a x64 -D "Version=$version" -D "BinDir=$bin" -o "$msi.tmp" "$here/flex-agent.wxs"
mv "$msi.tmp" "$msi"
echo "$msi"
