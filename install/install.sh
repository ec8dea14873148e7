#!/bin/sh
# Installs, enrolls and starts flex-agent on a Linux machine without .deb packages.
#
#   sudo sh install.sh --server URL --token ENROLL_TOKEN [--ca-file PEM]
#                      [--prefix /usr/local] [--email-template '{user}@corp.com']
#                      [--bin-dir DIR] [--reenroll] [--dry-run]
#
#   --server URL          the entitlement server, e.g. https://flex.corp.example:8443
#   --token TOKEN         a one-time enrollment token (an admin runs: flex-admin enroll-token)
#   --ca-file PEM         CA certificate of a server with a private CA; copied to
#                         /etc/flex-agent/ca.pem and set as ca_file
#   --prefix DIR          where binaries go: DIR/bin (default /usr/local)
#   --email-template T    [users] email_template, e.g. '{user}@corp.example'
#   --bin-dir DIR         where to find flex-agent and flexctl (default: ./bin next
#                         to this script, else ../target/release of the repository)
#   --reenroll            enroll even if this machine already has a device credential
#   --dry-run             print the steps, change nothing (root not needed)
#   --root DIR            install under DIR instead of / and skip systemctl (for
#                         staging and tests: the enroll step runs DIR/PREFIX/bin/flex-agent)
#
# Steps: copy flex-agent and flexctl to PREFIX/bin; write /etc/flex-agent/agent.toml
# from agent.toml.example (keeping an existing file's other settings); install the
# systemd units (system agent, per-user notifier) and the XDG autostart entry;
# `flex-agent enroll`; `systemctl enable` and (re)start flex-agent. Safe to run
# again: files are only rewritten when they change, and an enrolled machine is not
# enrolled twice (the token is one-time) unless --reenroll is given.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prefix=/usr/local
server=
token=
ca_file=
email_template=
bin_dir=
reenroll=no
dry_run=no
root=
conf_dir=/etc/flex-agent
config=$conf_dir/agent.toml
unit_dir=/etc/systemd/system
user_unit_dir=/etc/systemd/user
autostart_dir=/etc/xdg/autostart

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }
usage() { sed -n '2,27p' "$here/install.sh" | sed 's/^# \{0,1\}//'; }

need_value() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi
}
while [ $# -gt 0 ]; do
    case "$1" in
    --server) need_value "$@"; server=$2; shift 2 ;;
    --token) need_value "$@"; token=$2; shift 2 ;;
    --ca-file) need_value "$@"; ca_file=$2; shift 2 ;;
    --prefix) need_value "$@"; prefix=$2; shift 2 ;;
    --email-template) need_value "$@"; email_template=$2; shift 2 ;;
    --bin-dir) need_value "$@"; bin_dir=$2; shift 2 ;;
    --reenroll) reenroll=yes; shift ;;
    --dry-run) dry_run=yes; shift ;;
    --root) need_value "$@"; root=${2%/}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[ -n "$server" ] || die "--server URL is required, e.g. --server https://flex.corp.example:8443"
[ -n "$token" ] || die "--token ENROLL_TOKEN is required (an admin creates one with: flex-admin enroll-token)"
case "$server" in
http://*|https://*) ;;
*) die "--server '$server' is not an http:// or https:// URL" ;;
esac
# Values go into TOML strings and sed expressions: refuse characters that would
# need escaping rather than escape them.
for v in "$server" "$ca_file" "$email_template" "$prefix"; do
    case "$v" in
    *[\"\\\|\ ]*|*"$(printf '\t')"*) die "'$v' contains a quote, backslash, '|' or blank, which install.sh does not accept" ;;
    esac
done
case "$prefix" in /*) ;; *) die "--prefix '$prefix' must be an absolute path" ;; esac
if [ -n "$email_template" ]; then
    case "$email_template" in *'{user}'*@*) ;; *) die "--email-template '$email_template' must look like '{user}@corp.example'" ;; esac
fi
if [ -n "$ca_file" ] && [ ! -r "$ca_file" ]; then
    [ "$dry_run" = yes ] || die "--ca-file '$ca_file' cannot be read"
fi

if [ -n "$root" ]; then
    case "$root" in /*) ;; *) die "--root '$root' must be an absolute path" ;; esac
fi
if [ "$dry_run" = no ] && [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    die "must run as root: it installs a system service and a root-only credential. Try: sudo sh $0 ... (or --dry-run to see the steps)"
fi

# Where the binaries come from.
if [ -z "$bin_dir" ]; then
    if [ -x "$here/bin/flex-agent" ]; then
        bin_dir=$here/bin
    else
        bin_dir=$here/../target/release
    fi
fi
for b in flex-agent flexctl; do
    if [ ! -x "$bin_dir/$b" ]; then
        [ "$dry_run" = yes ] || die "$bin_dir/$b not found: pass --bin-dir DIR, or build with 'cargo build --release' in the repository"
        say "note: $bin_dir/$b not found (a real run would stop here)"
    fi
done
for f in README.md config/agent.toml.example systemd/flex-agent.service systemd/flexctl-notify.service xdg/flexctl-notify.desktop; do
    [ -r "$here/$f" ] || die "$here/$f is missing: run install.sh from the complete install/ folder"
done

have_systemd=no
if [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    have_systemd=yes
fi

# run CMD...: execute, or print it under --dry-run. The token is never printed.
run() {
    shown=
    for a in "$@"; do
        [ "$a" = "$token" ] && a='********'
        shown="${shown:+$shown }$a"
    done
    if [ "$dry_run" = yes ]; then
        echo "+ $shown"
    else
        say "$shown"
        "$@"
    fi
}

# put SRC DEST MODE: install SRC as DEST (atomically) unless DEST is identical.
put() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        [ "$dry_run" = yes ] && echo "+ # $2 unchanged"
        [ "$dry_run" = yes ] || say "$2 unchanged"
        chmod "$3" "$2" 2>/dev/null || true
        return 0
    fi
    if [ "$dry_run" = yes ]; then
        echo "+ install -m $3 $1 $2"
        return 0
    fi
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2.new.$$"
    chmod "$3" "$2.new.$$"
    mv -f "$2.new.$$" "$2"
    say "wrote $2"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

# 1. Binaries.
run mkdir -p "$root$prefix/bin"
for b in flex-agent flexctl; do
    if [ -x "$bin_dir/$b" ]; then
        put "$bin_dir/$b" "$root$prefix/bin/$b" 0755
    else
        echo "+ install -m 0755 $bin_dir/$b $root$prefix/bin/$b"
    fi
done
put "$here/README.md" "$root$prefix/share/doc/flex-agent/README.md" 0644

# 2. Configuration: the existing file if there is one (IT's edits survive),
#    else the example; then server_url, ca_file and email_template set.
run mkdir -p "$root$conf_dir"
[ "$dry_run" = yes ] || chmod 0755 "$root$conf_dir"
if [ -n "$ca_file" ]; then
    if [ -r "$ca_file" ]; then
        put "$ca_file" "$root$conf_dir/ca.pem" 0644
    else
        echo "+ install -m 0644 $ca_file $conf_dir/ca.pem"
    fi
fi
if [ -f "$root$config" ]; then base=$root$config; else base=$here/config/agent.toml.example; fi
sed_script="s|^server_url *=.*|server_url = \"$server\"|"
if [ -n "$ca_file" ]; then
    sed_script="$sed_script;s|^#* *ca_file *=.*|ca_file = \"$conf_dir/ca.pem\"|"
fi
if [ -n "$email_template" ]; then
    sed_script="$sed_script;s|^#* *email_template *=.*|email_template = \"$email_template\"|"
fi
sed "$sed_script" "$base" >"$work/agent.toml"
grep -q "^server_url = \"$server\"\$" "$work/agent.toml" || die "$base has no server_url line to set; fix it or move it away and run again"
put "$work/agent.toml" "$root$config" 0644
if [ "$dry_run" = yes ]; then
    grep -E '^(server_url|ca_file|email_template) ' "$work/agent.toml" | sed 's/^/+ #   /'
fi

# 3. Units and the autostart entry, pointing at PREFIX/bin.
subst="s|/usr/bin/|$prefix/bin/|g;s|/usr/share/doc/|$prefix/share/doc/|g"
sed "$subst" "$here/systemd/flex-agent.service" >"$work/flex-agent.service"
sed "$subst" "$here/systemd/flexctl-notify.service" >"$work/flexctl-notify.service"
sed "s|^Exec=flexctl |Exec=$prefix/bin/flexctl |" "$here/xdg/flexctl-notify.desktop" >"$work/flexctl-notify.desktop"
put "$work/flex-agent.service" "$root$unit_dir/flex-agent.service" 0644
put "$work/flexctl-notify.service" "$root$user_unit_dir/flexctl-notify.service" 0644
put "$work/flexctl-notify.desktop" "$root$autostart_dir/flexctl-notify.desktop" 0644

# 4. Enrollment (once). The state directory must exist, root-only, before the
#    credential is written into it.
state_dir=$(sed -n 's/^state_dir *= *"\(.*\)".*/\1/p' "$work/agent.toml" | head -n 1)
[ -n "$state_dir" ] || state_dir=/var/lib/flex-agent
run mkdir -p "$root$state_dir"
run chmod 0700 "$root$state_dir"
# The agent keeps the device credential in this file on Linux (0600).
if [ "$reenroll" = no ] && [ -e "$root$state_dir/device-token" ]; then
    say "already enrolled ($state_dir/device-token exists): not using the token; pass --reenroll to enroll again (needed after changing --server)"
else
    run "$root$prefix/bin/flex-agent" enroll --config "$root$config" --server "$server" --token "$token"
fi

# 5. The services.
if [ -n "$root" ]; then
    say "--root given: not calling systemctl; enable flex-agent.service (system) and flexctl-notify.service (--global) in the image"
elif command -v systemctl >/dev/null 2>&1; then
    if [ "$have_systemd" = yes ]; then run systemctl daemon-reload; fi
    run systemctl enable flex-agent.service
    run systemctl --global enable flexctl-notify.service
    if [ "$have_systemd" = yes ]; then
        run systemctl restart flex-agent.service
    else
        say "systemd is not running here: start flex-agent with your init system: $prefix/bin/flex-agent --config $config"
    fi
else
    say "no systemctl: start flex-agent with your init system: $prefix/bin/flex-agent --config $config"
fi

cat <<MSG

flex-agent is installed$( [ "$dry_run" = yes ] && echo " (dry run: nothing was changed)" ).
Check it:
  systemctl status flex-agent        the service
  journalctl -u flex-agent           its log
  flexctl status                     enrollment, server contact, sessions (any user)
Users get desktop notifications from 'flexctl notify', started at their next
graphical login (systemd user unit flexctl-notify.service or XDG autostart).
MSG
