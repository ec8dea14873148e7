#!/bin/sh
# Builds the flex-agent and flex-server .deb packages from this workspace, offline.
#
#   install/deb/build.sh [--out DIR] [--no-build] [--bin-dir DIR] [--version V]
#                        [--skip-missing] [PACKAGE...]
#
# PACKAGE is flex-agent and/or flex-server (default: both). Steps: `cargo build
# --release --offline` of the package's binaries and of flex-manpages, a staging
# tree per package under target/debian/, then `dpkg-deb --build --root-owner-group`.
# No network and no debhelper: cargo, dpkg-deb, binutils (strip), gzip, python3.
# What debhelper would add is done here: stripped binaries, man pages (generated
# from the binaries' clap definitions), copyright, changelog, md5sums.
#   --out DIR       where the .deb files go (default: target/debian)
#   --no-build      use binaries already built (in --bin-dir, else target/release)
#   --bin-dir DIR   where the built binaries are (default: target/release)
#   --version V     package version (default: [workspace.package] version)
#   --skip-missing  skip (with a note) a package whose binaries the workspace does
#                   not declare yet, instead of failing
# Environment: FLEX_DEB_MAINTAINER overrides the Maintainer field; CARGO_TARGET_DIR
# is honoured; SOURCE_DATE_EPOCH dates the changelog (default: the last commit);
# FLEX_DEB_COMPRESS picks dpkg-deb's compressor (default xz; gzip is quicker).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
install_dir="$repo/install"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
out="$target_dir/debian"
bin_dir=
build=yes
skip_missing=no
version=
packages=

die() { echo "build.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --no-build) build=no; shift ;;
    --bin-dir) [ $# -ge 2 ] || die "--bin-dir needs a directory"; bin_dir=$2; shift 2 ;;
    --version) [ $# -ge 2 ] || die "--version needs a value"; version=$2; shift 2 ;;
    --skip-missing) skip_missing=yes; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    flex-agent|flex-server) packages="$packages $1"; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ -n "$packages" ] || packages="flex-agent flex-server"
[ -n "$bin_dir" ] || bin_dir="$target_dir/release"
case "$bin_dir" in /*) ;; *) bin_dir="$(pwd)/$bin_dir" ;; esac

command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found: install the dpkg package"
command -v strip >/dev/null 2>&1 || die "strip not found: install the binutils package"
arch=$(dpkg --print-architecture) || die "dpkg --print-architecture failed"

# Version: [workspace.package] version in the root Cargo.toml.
if [ -z "$version" ]; then
    version=$(awk '
        /^\[/ { in_ws = ($0 == "[workspace.package]") }
        in_ws && /^version[ \t]*=/ { gsub(/.*=[ \t]*"|".*/, ""); print; exit }
    ' "$repo/Cargo.toml")
fi
[ -n "$version" ] || die "no version in [workspace.package] of $repo/Cargo.toml"
case "$version" in
[0-9]*) ;;
*) die "--version '$version' must start with a digit (a Debian version)" ;;
esac
maintainer=${FLEX_DEB_MAINTAINER:-Flex Licensing Team <flex-licensing@corp.example>}

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
    set -- -p flex-manpages --bin flex-manpages
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

# Debian's changelog format, one entry for this version, dated by the last commit.
changelog() { # PKG
    when=${SOURCE_DATE_EPOCH:-}
    [ -n "$when" ] || when=$(cd "$repo" && git log -1 --format=%ct 2>/dev/null) || true
    [ -n "$when" ] || when=$(date +%s)
    printf '%s (%s) unstable; urgency=medium\n\n  * Release %s of the Flex licensing %s.\n\n -- %s  %s\n' \
        "$1" "$version" "$version" "$( [ "$1" = flex-agent ] && echo agent || echo server )" \
        "$maintainer" "$(LC_ALL=C date -u -d "@$when" '+%a, %d %b %Y %H:%M:%S +0000')"
}

# Machine-readable copyright (DEP-5), with the Rust crates linked into the binaries.
copyright() { # PKG
    cat <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: flex-licensing
Upstream-Contact: $maintainer
Comment: The binaries are statically linked Rust programs. Besides the Flex code
 they contain these crates from crates.io, each under the license named:
$(cd "$repo" && cargo tree --offline -p "$1" -e normal --prefix none --format '{p}: {l}' 2>/dev/null |
    grep -v ' (/' | LC_ALL=C sort -u | sed 's/^/ /')

Files: *
Copyright: 2026 Flex Licensing Team
License: Apache-2.0

License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License"); you may not
 use this file except in compliance with the License. You may obtain a copy of
 the License at http://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
 WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
 License for the specific language governing permissions and limitations under
 the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0 can be
 found in "/usr/share/common-licenses/Apache-2.0".
COPYRIGHT
}

# The man pages, from the clap definitions: once for both packages.
man_dir="$target_dir/debian/man"
rm -rf "$man_dir"
if [ -x "$bin_dir/flex-manpages" ]; then
    "$bin_dir/flex-manpages" "$man_dir" || die "flex-manpages failed"
else
    die "$bin_dir/flex-manpages is not built (run without --no-build, or cargo build -p flex-manpages)"
fi

stage_common() { # PKG STAGE
    doc="$2/usr/share/doc/$1"
    for b in $(bins_of "$1"); do
        src="$bin_dir/$b"
        [ -x "$src" ] || die "$src is not built (run without --no-build, or check that the $1 crate has a '$b' binary)"
        install_file "$src" "$2/usr/bin/$b" 0755
        # As dh_strip: no symbols, no .comment/.note sections in what ships.
        strip --strip-unneeded --remove-section=.comment --remove-section=.note "$2/usr/bin/$b"
        mkdir -p "$2/usr/share/man/man1"
        gzip -9n <"$man_dir/$b.1" >"$2/usr/share/man/man1/$b.1.gz"
    done
    install_file "$install_dir/README.md" "$doc/README.md" 0644
    copyright "$1" >"$doc/copyright"
    changelog "$1" | gzip -9n >"$doc/changelog.gz"
    chmod 0644 "$doc/copyright" "$doc/changelog.gz" "$2"/usr/share/man/man1/*.gz
    install_file "$install_dir/deb/$1/postinst" "$2/DEBIAN/postinst" 0755
    install_file "$install_dir/deb/$1/prerm" "$2/DEBIAN/prerm" 0755
    install_file "$install_dir/deb/$1/postrm" "$2/DEBIAN/postrm" 0755
}

stage_flex_agent() { # STAGE
    s=$1
    install_file "$install_dir/systemd/flex-agent.service" "$s/usr/lib/systemd/system/flex-agent.service" 0644
    install_file "$install_dir/systemd/flex-agent.socket" "$s/usr/lib/systemd/system/flex-agent.socket" 0644
    install_file "$install_dir/systemd/flexctl-notify.service" "$s/usr/lib/systemd/user/flexctl-notify.service" 0644
    install_file "$install_dir/xdg/flexctl-notify.desktop" "$s/etc/xdg/autostart/flexctl-notify.desktop" 0644
    # /etc/flex-agent/agent.toml is created from this template by postinst and
    # then belongs to the admin (no conffile: an upgrade never asks about it).
    install_file "$install_dir/config/agent.toml" "$s/usr/share/flex-agent/agent.toml" 0644
    install_file "$install_dir/config/agent.toml.example" "$s/usr/share/doc/flex-agent/agent.toml.example" 0644
    printf '%s\n' /etc/xdg/autostart/flexctl-notify.desktop >"$s/DEBIAN/conffiles"
    depends="$(libc_dep "$s/usr/bin/flex-agent" "$s/usr/bin/flexctl")"
    recommends="systemd"
    description="Flex licensing agent and flexctl
 The per-workstation daemon of the Flex pay-as-you-go licensing system: it
 detects product launches, claims 24-hour charge windows from the entitlement
 server, enforces the offline rule and publishes events to users.
 .
 flexctl is the user CLI: product wrapper (flexctl run), per-result charges,
 status, diagnostics (flexctl doctor) and the desktop notifier (flexctl
 notify), started in each graphical session by a systemd user unit or XDG
 autostart."
}

stage_flex_server() { # STAGE
    s=$1
    install_file "$install_dir/systemd/flex-server.service" "$s/usr/lib/systemd/system/flex-server.service" 0644
    install_file "$install_dir/config/server.toml" "$s/usr/share/flex-server/server.toml" 0644
    install_file "$install_dir/config/server.toml.example" "$s/usr/share/doc/flex-server/server.toml.example" 0644
    install_file "$install_dir/config/database.env.example" "$s/usr/share/doc/flex-server/database.env.example" 0644
    depends="$(libc_dep "$s/usr/bin/flex-server" "$s/usr/bin/flex-admin"), adduser"
    recommends="systemd"
    description="Flex entitlement server and flex-admin
 The server of the Flex pay-as-you-go licensing system: token ledger (lots,
 expiry, spending order), Flex assignments and subscriptions, charge windows
 with signed leases, enrollment keys and the device inventory, notices, and
 the HTTPS API used by agents.
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
    # Directories 0755 and nothing writable by group or others, whatever the umask.
    find "$stage" -type d -exec chmod 0755 {} +
    find "$stage" -type f ! -path "$stage/DEBIAN/*" -exec chmod go-w {} +
    (cd "$stage" && find . -type f ! -path './DEBIAN/*' | sed 's|^\./||' | LC_ALL=C sort |
        xargs md5sum) >"$stage/DEBIAN/md5sums"
    chmod 0644 "$stage/DEBIAN/md5sums"
    [ -f "$stage/DEBIAN/conffiles" ] && chmod 0644 "$stage/DEBIAN/conffiles"
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
Description: $description
CONTROL
    deb="$out/${pkg}_${version}_${arch}.deb"
    dpkg-deb --root-owner-group "-Z${FLEX_DEB_COMPRESS:-xz}" --build "$stage" "$deb" >/dev/null
    echo "$deb"
done
