#!/usr/bin/env bash
# Builds the Windows installer:
#   bash install/windows/build-msi.sh [--debug] [--version X.Y.Z] [--out FILE]
#
# Cross-builds flex-agent.exe, flexctl.exe and the MSI's custom action DLL for
# x86_64-pc-windows-gnu (release profile; --debug packages the debug build,
# which CI's tests use because it is already built) and runs wixl (Debian
# package wixl) on flex-agent.wxs, then msibuild (msitools) so that an MSI of
# the same version replaces the installed one instead of installing beside it
# (a rebuild; wixl 0.101 cannot say AllowSameVersionUpgrades). --version
# overrides the workspace version (the tests make an "upgrade" this way).
# Output: target/windows/flex-agent-VERSION-x64.msi, or --out FILE.
# Needs: rustup target add x86_64-pc-windows-gnu, gcc-mingw-w64-x86-64, wixl, msitools.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
profile=release
cargo_profile=(--release)
version=""
out=""
while (($#)); do
    case "$1" in
    --debug) profile=debug; cargo_profile=() ;;
    --version) version="${2:?--version needs X.Y.Z}"; shift ;;
    --out) out="${2:?--out needs a file}"; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-msi.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done
for tool in wixl msibuild x86_64-w64-mingw32-gcc; do
    if ! command -v "$tool" >/dev/null; then
        echo "build-msi.sh: $tool is missing: apt-get install wixl msitools gcc-mingw-w64-x86-64" >&2
        exit 1
    fi
done

cd "$repo"
if [[ -z "$version" ]]; then
    version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
fi
cargo build -p flex-agent -p flex-msi-action --bins --lib --target x86_64-pc-windows-gnu "${cargo_profile[@]}"
# wixl resolves Source paths relative to the current directory only.
bin="target/x86_64-pc-windows-gnu/$profile"
if [[ -z "$out" ]]; then
    out="$repo/target/windows/flex-agent-$version-x64.msi"
fi
mkdir -p "$(dirname "$out")"
upgrade_code="$(sed -n 's/.*UpgradeCode="\([^"]*\)".*/\1/p' "$here/flex-agent.wxs")"
wixl -a x64 -D "Version=$version" -D "BinDir=$bin" -o "$out.tmp" "$here/flex-agent.wxs"
# The row that finds older versions to replace also finds this very version
# (msidbUpgradeAttributesVersionMaxInclusive 0x200 | MigrateFeatures 1). Its
# Attributes are part of the key: replace the row.
msibuild "$out.tmp" -q "DELETE FROM \`Upgrade\` WHERE \`ActionProperty\` = 'WIX_UPGRADE_DETECTED'"
msibuild "$out.tmp" -q "INSERT INTO \`Upgrade\` (\`UpgradeCode\`, \`VersionMax\`, \`Attributes\`, \`ActionProperty\`) VALUES ('{$upgrade_code}', '$version', 513, 'WIX_UPGRADE_DETECTED')"
mv "$out.tmp" "$out"
echo "$out"
