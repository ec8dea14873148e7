#!/bin/sh
# Installs, enrolls and starts flex-agent on a Linux machine without .deb packages.
#
#   sudo sh install.sh --server URL (--token TOKEN | --token-file FILE)
#                      --email-template '{user}@corp.example' [--ca-file PEM]
#                      [--prefix /usr/local] [--bin-dir DIR] [--reenroll]
#                      [--image] [--root DIR] [--dry-run]
#   sudo sh install.sh --uninstall [--purge] [--prefix DIR] [--root DIR] [--dry-run]
#
#   --server URL          the entitlement server, e.g. https://flex.corp.example:8443
#   --token TOKEN         an enrollment token (an admin runs: flex-admin enroll-token
#                         --uses N); shows in `ps` while this runs: prefer --token-file
#   --token-file FILE     read the enrollment token from FILE
#   --email-template T    [users] email_template, e.g. '{user}@corp.example'. Needed
#                         unless the config already maps users (email_template or
#                         [users.overrides] in agent.toml or agent.d/*.toml)
#   --ca-file PEM         CA certificate of a server with a private CA; copied to
#                         /etc/flex-agent/ca.pem and set as ca_file
#   --prefix DIR          where binaries go: DIR/bin (default /usr/local)
#   --bin-dir DIR         where to find flex-agent and flexctl (default: ./bin next
#                         to this script, else ../target/release of the repository)
#   --reenroll            enroll even if this machine already has a device credential
#   --image               install for a golden image: no enrollment now; the token
#                         goes to /etc/flex-agent/enroll-token (0600) and each clone
#                         enrolls itself, with an identity of its own, at first boot
#   --root DIR            install under DIR instead of / (implies --image; no systemctl)
#   --uninstall           stop and remove the agent; keep config, journal, credential
#   --purge               with or without --uninstall: also delete /etc/flex-agent and
#                         /var/lib/flex-agent (the device must then be enrolled again,
#                         and usage not yet uploaded is lost)
#   --dry-run             print the steps, change nothing (root not needed)
#
# Exit status (install/README.md has the table): 0 done (also: already enrolled,
# or --image); 2 bad arguments; 4 server unreachable; 5 TLS error; 6 token
# refused; 7 token expired; 8 server error; 9 the credential cannot be kept here;
# 77 not root; 78 invalid agent config; 1 anything else. 4-9 and 78 come from
# `flex-agent enroll`: the files are installed, re-run with what the message says.
#
# Safe to run again: files are only rewritten when they change, and an enrolled
# machine is not enrolled twice unless --reenroll is given.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prefix=/usr/local
server=
token=
token_file=
ca_file=
email_template=
bin_dir=
reenroll=no
image=no
uninstall=no
purge=no
dry_run=no
root=
conf_dir=/etc/flex-agent
config=$conf_dir/agent.toml
unit_dir=/etc/systemd/system
user_unit_dir=/etc/systemd/user
autostart_dir=/etc/xdg/autostart

die() { echo "install.sh: $*" >&2; exit 1; }
bad() { echo "install.sh: $*" >&2; exit 2; }
say() { echo "install.sh: $*"; }
usage() { sed -n '2,40p' "$here/install.sh" | sed 's/^# \{0,1\}//'; }

need_value() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then bad "$1 needs a value (see --help)"; fi
}
while [ $# -gt 0 ]; do
    case "$1" in
    --server) need_value "$@"; server=$2; shift 2 ;;
    --token) need_value "$@"; token=$2; shift 2 ;;
    --token-file) need_value "$@"; token_file=$2; shift 2 ;;
    --ca-file) need_value "$@"; ca_file=$2; shift 2 ;;
    --prefix) need_value "$@"; prefix=$2; shift 2 ;;
    --email-template) need_value "$@"; email_template=$2; shift 2 ;;
    --bin-dir) need_value "$@"; bin_dir=$2; shift 2 ;;
    --reenroll) reenroll=yes; shift ;;
    --image) image=yes; shift ;;
    --uninstall) uninstall=yes; shift ;;
    --purge) uninstall=yes; purge=yes; shift ;;
    --dry-run) dry_run=yes; shift ;;
    --root) need_value "$@"; root=${2%/}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) bad "unknown argument '$1' (see --help)" ;;
    esac
done

case "$prefix" in /*) ;; *) bad "--prefix '$prefix' must be an absolute path" ;; esac
if [ -n "$root" ]; then
    case "$root" in /*) ;; *) bad "--root '$root' must be an absolute path" ;; esac
    # Never enroll on a build host: clones of its image would share one identity.
    image=yes
fi
if [ "$dry_run" = no ] && [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: must run as root: it installs a system service and a root-only credential. Try: sudo sh $0 ... (or --dry-run to see the steps)" >&2
    exit 77
fi

have_systemd=no
if [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    have_systemd=yes
fi

# run CMD...: execute, or print it under --dry-run.
run() {
    if [ "$dry_run" = yes ]; then
        echo "+ $*"
    else
        say "$*"
        "$@"
    fi
}

# ---------------------------------------------------------------- uninstall
if [ "$uninstall" = yes ]; then
    if [ "$have_systemd" = yes ]; then
        run systemctl disable --now flex-agent.service flex-agent.socket || true
    elif [ -z "$root" ] && command -v systemctl >/dev/null 2>&1; then
        run systemctl disable flex-agent.service flex-agent.socket || true
    fi
    if [ -z "$root" ] && command -v systemctl >/dev/null 2>&1; then
        run systemctl --global disable flexctl-notify.service || true
    fi
    for f in "$prefix/bin/flex-agent" "$prefix/bin/flexctl" "$unit_dir/flex-agent.service" \
        "$unit_dir/flex-agent.socket" "$user_unit_dir/flexctl-notify.service" \
        "$autostart_dir/flexctl-notify.desktop"; do
        if [ -e "$root$f" ] || [ -L "$root$f" ]; then run rm -f "$root$f"; fi
    done
    if [ -d "$root$prefix/share/doc/flex-agent" ]; then run rm -rf "$root$prefix/share/doc/flex-agent"; fi
    if [ "$have_systemd" = yes ]; then run systemctl daemon-reload; fi
    if [ "$purge" = yes ]; then
        state_dir=/var/lib/flex-agent
        if [ -f "$root$config" ]; then
            s=$(sed -n 's/^state_dir *= *"\(.*\)".*/\1/p' "$root$config" | head -n 1)
            [ -z "$s" ] || state_dir=$s
        fi
        for d in "$conf_dir" "$state_dir" /run/flex-agent; do
            if [ -e "$root$d" ]; then run rm -rf "$root$d"; fi
        done
        say "purged: configuration, journal and device credential are gone; enroll again after reinstalling"
    else
        say "removed; kept $conf_dir (configuration) and /var/lib/flex-agent (journal, credential): --purge deletes them"
    fi
    exit 0
fi

# ---------------------------------------------------------------- install: arguments
[ -n "$server" ] || bad "--server URL is required, e.g. --server https://flex.corp.example:8443"
case "$server" in
http://*|https://*) ;;
*) bad "--server '$server' is not an http:// or https:// URL" ;;
esac
if [ -n "$token" ] && [ -n "$token_file" ]; then bad "give --token or --token-file, not both"; fi
if [ -n "$token_file" ]; then
    [ -r "$token_file" ] || bad "--token-file '$token_file' cannot be read"
    token=$(tr -d ' \t\r\n' <"$token_file")
    [ -n "$token" ] || bad "--token-file '$token_file' is empty"
fi
if [ -z "$token" ] && [ "$image" = no ]; then
    bad "--token ENROLL_TOKEN or --token-file FILE is required (an admin creates one with: flex-admin enroll-token --uses N); --image installs without one"
fi
# Values go into TOML strings and sed expressions: refuse characters that would
# need escaping rather than escape them.
for v in "$server" "$ca_file" "$email_template" "$prefix"; do
    case "$v" in
    *[\"\\\|\ ]*|*"$(printf '\t')"*) bad "'$v' contains a quote, backslash, '|' or blank, which install.sh does not accept" ;;
    esac
done
if [ -n "$email_template" ]; then
    case "$email_template" in *'{user}'*@*) ;; *) bad "--email-template '$email_template' must look like '{user}@corp.example'" ;; esac
fi
if [ -n "$ca_file" ] && [ ! -r "$ca_file" ]; then
    [ "$dry_run" = yes ] || bad "--ca-file '$ca_file' cannot be read"
fi

# Users must map to emails the server knows, or nobody can be licensed: refuse
# to finish without a mapping (no placeholder domain is ever filled in).
maps_users() { # FILE...: an active email_template, or an override under [users.overrides]
    awk '
        /^[ \t]*#/ { next }
        /^[ \t]*\[/ { t = $0; gsub(/[ \t]/, "", t); in_ovr = (t == "[users.overrides]"); in_users = (t == "[users]"); next }
        in_users && /^[ \t]*email_template[ \t]*=/ { found = 1 }
        in_ovr && /^[ \t]*[A-Za-z0-9_.-]+[ \t]*=/ { found = 1 }
        END { exit(found ? 0 : 1) }
    ' "$@" 2>/dev/null
}
if [ -z "$email_template" ]; then
    set -- "$root$config"
    for f in "$root$conf_dir"/agent.d/*.toml; do [ -f "$f" ] && set -- "$@" "$f"; done
    maps_users "$@" ||
        bad "--email-template is required, e.g. --email-template '{user}@corp.example' (how local accounts map to the emails the server knows); or set [users] email_template or [users.overrides] in $config or $conf_dir/agent.d/*.toml"
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
for f in README.md config/agent.toml systemd/flex-agent.service systemd/flex-agent.socket \
    systemd/flexctl-notify.service xdg/flexctl-notify.desktop; do
    [ -r "$here/$f" ] || die "$here/$f is missing: run install.sh from the complete install/ folder"
done

# put SRC DEST MODE: install SRC as DEST (atomically) unless DEST is identical.
put() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        [ "$dry_run" = yes ] && echo "+ # $2 unchanged"
        [ "$dry_run" = yes ] || say "$2 unchanged"
        [ "$dry_run" = yes ] || chmod "$3" "$2" 2>/dev/null || true
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
if [ -r "$here/config/agent.toml.example" ]; then
    put "$here/config/agent.toml.example" "$root$prefix/share/doc/flex-agent/agent.toml.example" 0644
fi

# 2. Configuration: the existing file if there is one (IT's edits survive), else
#    the small template; then server_url, ca_file and email_template set.
run mkdir -p "$root$conf_dir/agent.d"
[ "$dry_run" = yes ] || chmod 0755 "$root$conf_dir"
if [ -n "$ca_file" ]; then
    if [ -r "$ca_file" ]; then
        put "$ca_file" "$root$conf_dir/ca.pem" 0644
    else
        echo "+ install -m 0644 $ca_file $conf_dir/ca.pem"
    fi
fi
if [ -f "$root$config" ]; then base=$root$config; else base=$here/config/agent.toml; fi
sed_script="s|^#* *server_url *=.*|server_url = \"$server\"|"
if [ -n "$ca_file" ]; then
    sed_script="$sed_script;s|^#* *ca_file *=.*|ca_file = \"$conf_dir/ca.pem\"|"
fi
if [ -n "$email_template" ]; then
    sed_script="$sed_script;s|^#* *email_template *=.*|email_template = \"$email_template\"|"
fi
sed "$sed_script" "$base" >"$work/agent.toml"
if ! grep -q "^server_url = \"$server\"\$" "$work/agent.toml"; then
    # A hand-written file without the key: it goes first, before any [table].
    { echo "server_url = \"$server\""; cat "$work/agent.toml"; } >"$work/agent.toml.new"
    mv "$work/agent.toml.new" "$work/agent.toml"
fi
if [ -n "$email_template" ] && ! grep -q "^email_template = \"$email_template\"\$" "$work/agent.toml"; then
    if grep -q '^\[users\]' "$work/agent.toml"; then
        sed "/^\[users\]/a email_template = \"$email_template\"" "$work/agent.toml" >"$work/agent.toml.new"
        mv "$work/agent.toml.new" "$work/agent.toml"
    else
        printf '\n[users]\nemail_template = "%s"\n' "$email_template" >>"$work/agent.toml"
    fi
fi
put "$work/agent.toml" "$root$config" 0644
if [ "$dry_run" = yes ]; then
    grep -E '^(server_url|ca_file|email_template) ' "$work/agent.toml" | sed 's/^/+ #   /'
fi

# 3. Units and the autostart entry, pointing at PREFIX/bin.
subst="s|/usr/bin/|$prefix/bin/|g;s|/usr/share/doc/|$prefix/share/doc/|g"
for u in flex-agent.service flex-agent.socket; do
    sed "$subst" "$here/systemd/$u" >"$work/$u"
    put "$work/$u" "$root$unit_dir/$u" 0644
done
sed "$subst" "$here/systemd/flexctl-notify.service" >"$work/flexctl-notify.service"
sed "s|^Exec=flexctl |Exec=$prefix/bin/flexctl |" "$here/xdg/flexctl-notify.desktop" >"$work/flexctl-notify.desktop"
put "$work/flexctl-notify.service" "$root$user_unit_dir/flexctl-notify.service" 0644
put "$work/flexctl-notify.desktop" "$root$autostart_dir/flexctl-notify.desktop" 0644

# 4. Enrollment (once). The state directory must exist, root-only, before the
#    credential is written into it.
state_dir=$(sed -n 's/^state_dir *= *"\(.*\)".*/\1/p' "$work/agent.toml" | head -n 1)
[ -n "$state_dir" ] || state_dir=/var/lib/flex-agent
run mkdir -p "$root$state_dir"
run chmod 0700 "$root$state_dir"
enrolled=no
# The agent keeps the device credential in this file on Linux (0600).
if [ -e "$root$state_dir/device-token" ] && [ "$reenroll" = no ]; then enrolled=yes; fi
if [ "$image" = yes ]; then
    if [ -e "$root$state_dir/device-token" ] || [ -e "$root$state_dir/journal.sqlite3" ]; then
        die "--image: $root$state_dir already holds a device identity, which every clone of the image would share: delete $root$state_dir first"
    fi
    if [ -n "$token" ]; then
        printf '%s\n' "$token" >"$work/enroll-token"
        put "$work/enroll-token" "$root$conf_dir/enroll-token" 0600
        say "--image: the token is in $conf_dir/enroll-token; each machine enrolls itself at its first start and deletes it"
    else
        say "--image: no token given; put one in $conf_dir/enroll-token (0600) on each machine before its first start"
    fi
elif [ "$enrolled" = yes ]; then
    say "already enrolled ($state_dir/device-token exists): not using the token; pass --reenroll to enroll again (needed after changing --server)"
else
    # The token goes to the agent in a private file, never on its command line.
    (umask 077 && printf '%s\n' "$token" >"$work/token")
    force=
    [ "$reenroll" = yes ] && force=--force
    if [ "$dry_run" = yes ]; then
        echo "+ $root$prefix/bin/flex-agent enroll --config $root$config --server $server --token-file (the token) $force"
    else
        say "$prefix/bin/flex-agent enroll --config $config --server $server $force"
        rc=0
        # shellcheck disable=SC2086  # $force is empty or one word
        "$root$prefix/bin/flex-agent" enroll --config "$root$config" --server "$server" \
            --token-file "$work/token" $force || rc=$?
        case $rc in
        0) ;;
        3) say "already enrolled: the token was not used" ;;
        *) echo "install.sh: enrollment failed (exit status $rc, see above); everything else is installed: run install.sh again once fixed" >&2
           exit "$rc" ;;
        esac
    fi
fi

# 5. The services.
if [ -n "$root" ]; then
    say "--root given: not calling systemctl; enable flex-agent.socket and flex-agent.service (system) and flexctl-notify.service (--global) in the image"
elif command -v systemctl >/dev/null 2>&1; then
    if [ "$have_systemd" = yes ]; then run systemctl daemon-reload; fi
    run systemctl enable flex-agent.socket flex-agent.service
    run systemctl --global enable flexctl-notify.service
    if [ "$have_systemd" = yes ] && [ "$image" = no ]; then
        run systemctl start flex-agent.socket
        run systemctl restart flex-agent.service
    elif [ "$image" = no ]; then
        say "systemd is not running here: start flex-agent with your init system: $prefix/bin/flex-agent --config $config"
    fi
else
    say "no systemctl: start flex-agent with your init system: $prefix/bin/flex-agent --config $config"
fi

cat <<MSG

flex-agent is installed$( [ "$dry_run" = yes ] && echo " (dry run: nothing was changed)" )$( [ "$image" = yes ] && echo " for an image: each machine enrolls itself at first start" ).
Check it:
  flexctl doctor                     every check, with the fix for what fails
  systemctl status flex-agent        the service
  journalctl -u flex-agent           its log
  flexctl status                     enrollment, server contact, sessions (any user)
Users get desktop notifications from 'flexctl notify', started at their next
graphical login (systemd user unit flexctl-notify.service or XDG autostart).
MSG
