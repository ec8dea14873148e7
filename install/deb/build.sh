#!/bin/sh
# Builds the flex-agent and flex-server .deb packages from this workspace, offline.
#
#   install/deb/build.sh [--out DIR] [--no-build] [--skip-missing] [PACKAGE...]
#
# PACKAGE is flex-agent and/or flex-server (default: both). Steps: `cargo build
# --release --offline` of the package's binaries, a staging tree per package under
# target/debian/, then `dpkg-deb --build --root-owner-group`. No network and no
# debhelper: only cargo, dpkg-deb and coreutils.
#   --out DIR       where the .deb files go (default: target/debian)
#   --no-build      use the binaries already in target/release
#   --skip-missing  skip (with a note) a package whose binaries the workspace does
#                   not declare yet, instead of failing
# Environment: FLEX_DEB_MAINTAINER overrides the Maintainer field; CARGO_TARGET_DIR
# is honoured.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
install_dir="$repo/install"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
out="$target_dir/debian"
build=yes
skip_missing=no
packages=

die() { echo "build.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --no-build) build=no; shift ;;
    --skip-missing) skip_missing=yes; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    flex-agent|flex-server) packages="$packages $1"; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ -n "$packages" ] || packages="flex-agent flex-server"

command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found: install the dpkg package"
arch=$(dpkg --print-architecture) || die "dpkg --print-architecture failed"

# Version: [workspace.package] version in the root Cargo.toml.
version=$(awk '
    /^\[/ { in_ws = ($0 == "[workspace.package]") }
    in_ws && /^version[ \t]*=/ { gsub(/.*=[ \t]*"|".*/, ""); print; exit }
' "$repo/Cargo.toml")
[ -n "$version" ] || die "no version in [workspace.package] of $repo/Cargo.toml"
maintainer=${FLEX_DEB_MAINTAINER:-Flex Licensing Team <flex-licensing@example.com>}

# Binaries shipped by each package (cargo package = deb package name).
bins_of() {
    case "$1" in
    flex-agent) echo "flex-agent flexctl" ;;
    flex-server) echo "flex-server flex-admin" ;;
    esac
}

# The binary targets the workspace declares, one per line.
declared_bins() {
    (cd "$repo" && cargo metadata --offline --no-deps --format-version 1) |
        python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    for t in p["targets"]:
        if "bin" in t["kind"]:
            print(t["name"])
'
}

if [ "$skip_missing" = yes ]; then
    declared=$(declared_bins) || die "cargo metadata failed"
    keep=
    for pkg in $packages; do
        missing=
        for b in $(bins_of "$pkg"); do
            printf '%s\n' "$declared" | grep -qx "$b" || missing="$missing $b"
        done
        if [ -n "$missing" ]; then
            echo "build.sh: SKIP $pkg: the workspace declares no binary named$missing yet" >&2
        else
            keep="$keep $pkg"
        fi
    done
    packages=$keep
    [ -n "$packages" ] || { echo "build.sh: nothing to build" >&2; exit 0; }
fi

if [ "$build" = yes ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup) or pass --no-build"
    # One cargo invocation for all packages, so they share one feature resolution
    # (and one set of compiled dependencies).
    set --
    for pkg in $packages; do
        set -- "$@" -p "$pkg"
        for b in $(bins_of "$pkg"); do set -- "$@" --bin "$b"; done
    done
    echo "build.sh: cargo build --release --offline $*" >&2
    (cd "$repo" && cargo build --release --offline "$@") ||
        die "cargo build failed (offline: dependencies must already be in ~/.cargo; run 'cargo fetch' once with network)"
fi

# "libc6 (>= 2.34)" from the newest GLIBC_ symbol version the binaries use.
libc_dep() {
    v=
    if command -v objdump >/dev/null 2>&1; then
        v=$(for f in "$@"; do objdump -T "$f" 2>/dev/null; done |
            grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
    fi
    if [ -n "$v" ]; then echo "libc6 (>= $v)"; else echo "libc6"; fi
}

# install_file SRC DEST MODE
install_file() {
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2"
    chmod "$3" "$2"
}

stage_common() { # PKG STAGE
    for b in $(bins_of "$1"); do
        src="$target_dir/release/$b"
        [ -x "$src" ] || die "$src is not built (run without --no-build, or check that the $1 crate has a '$b' binary)"
        install_file "$src" "$2/usr/bin/$b" 0755
    done
    install_file "$install_dir/README.md" "$2/usr/share/doc/$1/README.md" 0644
    install_file "$install_dir/deb/$1/postinst" "$2/DEBIAN/postinst" 0755
    install_file "$install_dir/deb/$1/prerm" "$2/DEBIAN/prerm" 0755
    install_file "$install_dir/deb/$1/postrm" "$2/DEBIAN/postrm" 0755
}

stage_flex_agent() { # STAGE
    s=$1
    install_file "$install_dir/systemd/flex-agent.service" "$s/usr/lib/systemd/system/flex-agent.service" 0644
    install_file "$install_dir/systemd/flexctl-notify.service" "$s/usr/lib/systemd/user/flexctl-notify.service" 0644
    install_file "$install_dir/xdg/flexctl-notify.desktop" "$s/etc/xdg/autostart/flexctl-notify.desktop" 0644
    install_file "$install_dir/config/agent.toml.example" "$s/etc/flex-agent/agent.toml" 0644
    install_file "$install_dir/config/agent.toml.example" "$s/usr/share/doc/flex-agent/agent.toml.example" 0644
    printf '%s\n' /etc/flex-agent/agent.toml /etc/xdg/autostart/flexctl-notify.desktop >"$s/DEBIAN/conffiles"
    depends="$(libc_dep "$s/usr/bin/flex-agent" "$s/usr/bin/flexctl")"
    recommends="systemd"
    description="Flex licensing agent and flexctl
 The per-workstation daemon of the Flex pay-as-you-go licensing system: it
 detects product launches, claims 24-hour charge windows from the entitlement
 server, enforces the offline rule and publishes events to users.
 .
 flexctl is the user CLI: product wrapper (flexctl run), per-result charges,
 status, and the desktop notifier (flexctl notify), started in each graphical
 session by a systemd user unit or XDG autostart."
}

stage_flex_server() { # STAGE
    s=$1
    install_file "$install_dir/systemd/flex-server.service" "$s/usr/lib/systemd/system/flex-server.service" 0644
    install_file "$install_dir/config/server.toml.example" "$s/etc/flex-server/server.toml" 0644
    install_file "$install_dir/config/server.toml.example" "$s/usr/share/doc/flex-server/server.toml.example" 0644
    printf '%s\n' /etc/flex-server/server.toml >"$s/DEBIAN/conffiles"
    depends="$(libc_dep "$s/usr/bin/flex-server" "$s/usr/bin/flex-admin"), adduser | passwd"
    recommends="systemd"
    description="Flex entitlement server and flex-admin
 The server of the Flex pay-as-you-go licensing system: token ledger (lots,
 expiry, spending order), Flex assignments and subscriptions, charge windows
 with signed leases, notices, and the HTTPS API used by agents.
 .
 flex-admin is the admin CLI for that API. The server runs as the flex-server
 system user created by this package."
}

mkdir -p "$out"
for pkg in $packages; do
    stage="$target_dir/debian/stage/$pkg"
    rm -rf "$stage"
    mkdir -p "$stage/DEBIAN"
    stage_common "$pkg" "$stage"
    case "$pkg" in
    flex-agent) stage_flex_agent "$stage" ;;
    flex-server) stage_flex_server "$stage" ;;
    esac
    size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
    cat >"$stage/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: $depends
Recommends: $recommends
Section: admin
Priority: optional
Homepage: https://flex.example.com
Description: $description
CONTROL
    deb="$out/${pkg}_${version}_${arch}.deb"
    dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
    echo "$deb"
done
