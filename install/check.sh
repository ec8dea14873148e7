#!/usr/bin/env bash
# shellcheck disable=SC2015  # pass/fail/skip always succeed: `c && pass || fail` is an if/else
# Validates install/ offline:   bash install/check.sh [--with-deb] [--no-install-tools]
#
#   * shell scripts: `sh -n`, POSIX `set -e` maintainer scripts, shellcheck (it and
#     desktop-file-utils are apt-get installed when missing and we are root,
#     unless --no-install-tools)
#   * systemd units: `systemd-analyze verify` (system and --user) with stand-in
#     binaries, any warning is a failure; the directives the design relies on;
#     `systemd-analyze security --offline` exposure printed for information
#   * launchd plists: well-formed (python3 plistlib) with the keys launchd needs
#   * the XDG autostart entry: its keys (desktop-file-validate too if present)
#   * example configs: valid TOML with every key uncommented, the same key set as
#     the Rust config structs, and the server example accepted by a built flex-server
#   * install.sh: --dry-run, a real run under --root with stand-in binaries, run
#     twice (idempotent, enrolls once), refusal without root, bad arguments
#   * --with-deb: install/deb/build.sh (cargo build --release, dpkg-deb), then
#     dpkg-deb --info/--contents of each package
# Exits non-zero if anything failed; every skipped step says why.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
with_deb=no
install_tools=yes
for a in "$@"; do
    case "$a" in
    --with-deb) with_deb=yes ;;
    --no-install-tools) install_tools=no ;;
    -h|--help) sed -n '3,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "check.sh: unknown argument '$a'" >&2; exit 2 ;;
    esac
done

failures=0
pass() { echo "ok    $*"; }
fail() { echo "FAIL  $*"; failures=$((failures + 1)); }
skip() { echo "skip  $*"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------- shell scripts
scripts=(install.sh check.sh deb/build.sh windows/build-msi.sh
         deb/flex-agent/postinst deb/flex-agent/prerm deb/flex-agent/postrm
         deb/flex-server/postinst deb/flex-server/prerm deb/flex-server/postrm)
for s in "${scripts[@]}"; do
    f=$here/$s
    if [ ! -f "$f" ]; then fail "$s is missing"; continue; fi
    case "$(head -n 1 "$f")" in
    '#!/usr/bin/env bash') if bash -n "$f"; then pass "bash -n $s"; else fail "bash -n $s"; fi ;;
    *) if sh -n "$f"; then pass "sh -n $s"; else fail "sh -n $s"; fi ;;
    esac
done
for s in deb/flex-agent/postinst deb/flex-agent/prerm deb/flex-agent/postrm \
    deb/flex-server/postinst deb/flex-server/prerm deb/flex-server/postrm; do
    f=$here/$s
    if [ "$(head -n 1 "$f")" = "#!/bin/sh" ] && grep -qx 'set -e' "$f" && [ -x "$f" ]; then
        pass "$s is an executable '#!/bin/sh' script with 'set -e'"
    else
        fail "$s must be executable, start with #!/bin/sh and contain 'set -e'"
    fi
done

# Small Debian packages this check uses when present: shellcheck, desktop-file-utils.
tools=()
command -v shellcheck >/dev/null 2>&1 || tools+=(shellcheck)
command -v desktop-file-validate >/dev/null 2>&1 || tools+=(desktop-file-utils)
if [ ${#tools[@]} -gt 0 ] && [ "$install_tools" = yes ] &&
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "check.sh: installing ${tools[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${tools[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${tools[@]}" >/dev/null 2>&1; } || true
fi
if command -v shellcheck >/dev/null 2>&1; then
    for s in "${scripts[@]}"; do
        if (cd "$here" && shellcheck "$s"); then pass "shellcheck $s"; else fail "shellcheck $s"; fi
    done
else
    skip "shellcheck: not installed (apt-get install shellcheck)"
fi

# ---------------------------------------------------------------- systemd units
units="$here/systemd"
need_line() { # FILE LINE: the exact line must be present
    if grep -qxF -- "$2" "$1"; then pass "$(basename "$1"): $2"; else fail "$(basename "$1") lacks '$2'"; fi
}
for l in 'Type=notify' 'User=root' 'ExecStart=/usr/bin/flex-agent --config /etc/flex-agent/agent.toml' \
    'StateDirectory=flex-agent' 'StateDirectoryMode=0700' 'RuntimeDirectory=flex-agent' \
    'RuntimeDirectoryMode=0755' 'RuntimeDirectoryPreserve=yes' 'Restart=on-failure' \
    'RestartPreventExitStatus=78' 'WatchdogSec=60s' 'ProtectSystem=strict' \
    'ReadWritePaths=/var/lib/flex-agent /run/flex-agent -/etc/flex-agent' 'ProtectHome=read-only' 'PrivateTmp=yes' \
    'NoNewPrivileges=yes' 'CapabilityBoundingSet=CAP_KILL CAP_NET_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH' \
    'Wants=flex-agent.socket' 'After=flex-agent.socket' 'WantedBy=multi-user.target' 'Also=flex-agent.socket'; do
    need_line "$units/flex-agent.service" "$l"
done
for l in 'ListenStream=/run/flex-agent/agent.sock' 'SocketMode=0666' 'DirectoryMode=0755' 'Accept=no' \
    'WantedBy=sockets.target'; do
    need_line "$units/flex-agent.socket" "$l"
done
for u in flex-agent.service flex-server.service; do
    if grep -Eq '^(Wants|After|Requires|BindsTo)=.*network-online' "$units/$u"; then
        fail "$u waits for network-online.target, though it works without a network at start"
    else
        pass "$u does not wait for network-online.target"
    fi
done
for bad in '^PrivateNetwork=yes' '^ProtectProc=invisible' '^ProcSubset=pid' '^PrivateUsers=yes' '^DynamicUser=yes'; do
    if grep -q "$bad" "$units/flex-agent.service"; then
        fail "flex-agent.service has ${bad#^}, which breaks process detection or signalling"
    fi
done
for l in 'User=flex-server' 'Group=flex-server' 'DynamicUser=no' 'StateDirectory=flex-server' \
    'StateDirectoryMode=0700' 'Restart=on-failure' 'CapabilityBoundingSet=' 'NoNewPrivileges=yes' \
    'LimitNOFILE=65536' 'ProtectSystem=strict' 'ExecStart=/usr/bin/flex-server --listen 0.0.0.0:8443 --data-dir /var/lib/flex-server --config /etc/flex-server/server.toml --tls-cert /etc/flex-server/tls/cert.pem --tls-key /etc/flex-server/tls/key.pem'; do
    need_line "$units/flex-server.service" "$l"
done
for l in 'ExecStart=/usr/bin/flexctl notify' 'PartOf=graphical-session.target' 'WantedBy=graphical-session.target'; do
    need_line "$units/flexctl-notify.service" "$l"
done

if command -v systemd-analyze >/dev/null 2>&1; then
    # verify insists that ExecStart= binaries exist: point the units at stand-ins.
    mkdir -p "$work/units/bin" "$work/units/run"
    chmod 0700 "$work/units/run"
    for b in flex-agent flex-server flexctl; do
        printf '#!/bin/sh\nexit 0\n' >"$work/units/bin/$b"
        chmod 0755 "$work/units/bin/$b"
    done
    for u in flex-agent flex-server flexctl-notify; do
        sed "s#/usr/bin/#$work/units/bin/#g" "$units/$u.service" >"$work/units/$u.service"
    done
    cp "$units/flex-agent.socket" "$work/units/flex-agent.socket"
    # --man=no: the man pages are generated into the packages, not installed here.
    for u in flex-agent.service flex-agent.socket flex-server.service; do
        out=$(systemd-analyze verify --man=no "$work/units/$u" 2>&1)
        rc=$?
        if [ $rc -eq 0 ] && [ -z "$out" ]; then pass "systemd-analyze verify $u"
        else fail "systemd-analyze verify $u (rc $rc): $out"; fi
    done
    out=$(XDG_RUNTIME_DIR="$work/units/run" systemd-analyze --user verify --man=no "$work/units/flexctl-notify.service" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] && [ -z "$out" ]; then pass "systemd-analyze --user verify flexctl-notify.service"
    else fail "systemd-analyze --user verify flexctl-notify.service (rc $rc): $out"; fi
    for u in flex-agent flex-server; do
        level=$(systemd-analyze security --offline=yes "$work/units/$u.service" 2>/dev/null |
            sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
        if [ -n "$level" ]; then echo "info  systemd-analyze security: $u.service exposure $level (0 safest, 10 unsafe)"
        else skip "systemd-analyze security --offline: not supported by this systemd"; fi
    done
else
    skip "systemd-analyze: not installed (Debian package systemd); units checked by the directives above only"
fi

# ---------------------------------------------------------------- plists, desktop entry
if command -v python3 >/dev/null 2>&1; then
    if python3 - "$here/macos" <<'PY'
import plistlib, sys, pathlib
d = pathlib.Path(sys.argv[1])
ok = True
def need(cond, msg):
    global ok
    if not cond:
        print(f"FAIL  {msg}"); ok = False
for name, daemon in [("com.example.flex-agent.plist", True), ("com.example.flexctl-notify.plist", False)]:
    try:
        p = plistlib.loads((d / name).read_bytes())
    except Exception as e:
        need(False, f"{name} is not a well-formed plist: {e}"); continue
    need(p.get("Label") == name[:-len(".plist")], f"{name}: Label must equal the file name")
    args = p.get("ProgramArguments", [])
    need(isinstance(args, list) and args and args[0].startswith("/"), f"{name}: ProgramArguments[0] must be an absolute path")
    need(p.get("RunAtLoad") is True, f"{name}: RunAtLoad must be true")
    need("KeepAlive" in p, f"{name}: KeepAlive missing")
    if daemon:
        need(args[1:3] == ["--config", args[2]] and args[2].endswith("agent.toml"), f"{name}: expected --config .../agent.toml")
        need(p.get("UserName") == "root", f"{name}: UserName must be root")
        need(p.get("StandardErrorPath", "").startswith("/") and p.get("StandardOutPath", "").startswith("/"), f"{name}: log paths missing")
        env = p.get("EnvironmentVariables", {})
        need("RUST_LOG" not in env, f"{name}: flex-agent reads FLEX_AGENT_LOG, not RUST_LOG")
    else:
        need(args[1:] == ["--socket", "/var/run/flex-agent/agent.sock", "notify"], f"{name}: expected 'flexctl --socket /var/run/flex-agent/agent.sock notify'")
        need("UserName" not in p, f"{name}: a LaunchAgent runs as the logged-in user, no UserName")
        need(p.get("LimitLoadToSessionType") == "Aqua", f"{name}: LimitLoadToSessionType must be Aqua")
    if ok: print(f"ok    plist {name}")
sys.exit(0 if ok else 1)
PY
    then :; else fail "launchd plists"; fi

    if python3 - "$here/xdg/flexctl-notify.desktop" <<'PY'
import sys
path = sys.argv[1]
lines = [l.rstrip("\n") for l in open(path, encoding="utf-8")]
body = [l for l in lines if l and not l.startswith("#")]
ok = True
def need(cond, msg):
    global ok
    if not cond:
        print(f"FAIL  {msg}"); ok = False
need(body and body[0] == "[Desktop Entry]", "desktop file must start with [Desktop Entry]")
keys = {}
for l in body[1:]:
    need("=" in l and not l.startswith("["), f"desktop file: bad line {l!r}")
    k, _, v = l.partition("=")
    need(k not in keys, f"desktop file: duplicate key {k}")
    keys[k] = v
need(keys.get("Type") == "Application", "desktop file: Type=Application")
need(bool(keys.get("Name")), "desktop file: Name missing")
need(keys.get("Exec", "").split()[-1:] == ["notify"] and keys.get("Exec", "").split()[0].endswith("flexctl"), "desktop file: Exec must be 'flexctl notify'")
need(keys.get("Terminal") == "false", "desktop file: Terminal=false")
need(keys.get("X-systemd-skip") == "true", "desktop file: X-systemd-skip=true (the user unit runs it where systemd manages the session)")
if ok: print("ok    desktop entry keys")
sys.exit(0 if ok else 1)
PY
    then :; else fail "XDG autostart entry"; fi
    if command -v desktop-file-validate >/dev/null 2>&1; then
        if desktop-file-validate "$here/xdg/flexctl-notify.desktop"; then pass "desktop-file-validate"; else fail "desktop-file-validate"; fi
    else
        skip "desktop-file-validate: not installed (Debian package desktop-file-utils)"
    fi

    # ------------------------------------------------------------ example configs
    # Uncommenting every '#key = value' line must give valid TOML whose keys are
    # exactly the fields of the Rust config structs (so the examples cannot drift).
    if python3 - "$here/config" "$repo" "$work" <<'PY'
import re, sys, tomllib, pathlib
cfg, repo, work = map(pathlib.Path, sys.argv[1:])
ok = True
def need(cond, msg):
    global ok
    if not cond:
        print(f"FAIL  {msg}"); ok = False
def struct_fields(src, name):
    m = re.search(r"pub struct " + name + r" \{(.*?)\n\}", src, re.S)
    return None if not m else set(re.findall(r"^\s*pub (\w+):", m.group(1), re.M))
def keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k != "overrides":
            out |= keys(v, prefix + k + ".")
    return out
for example, src, structs in [
    ("agent.toml.example", "agent/src/config.rs", [("Config", ""), ("Users", "users.")]),
    ("server.toml.example", "server-stub/src/config.rs", [("Config", ""), ("PolicyConfig", "policy."), ("LimitsConfig", "limits."), ("SmtpConfig", "smtp.")]),
]:
    text = (cfg / example).read_text()
    try:
        tomllib.loads(text)
    except Exception as e:
        need(False, f"{example} is not valid TOML: {e}"); continue
    # An optional section is shown as '#[name]': uncommented with its keys.
    full = re.sub(r"^#(\w+ = |\[\w+\]$)", r"\1", text, flags=re.M)
    try:
        doc = tomllib.loads(full)
    except Exception as e:
        need(False, f"{example} with every key uncommented is not valid TOML: {e}"); continue
    # The server reads these files at start; the check has none, so it starts
    # without them (their keys are still compared below).
    runnable = re.sub(r"^(username|password_file|ca_file) = .*$", "", full, flags=re.M)
    (work / ("full-" + example)).write_text(runnable)
    have = keys(doc)
    path = repo / src
    if not path.exists():
        print(f"skip  {example}: {src} not found, key set not compared"); continue
    rust = path.read_text()
    want = set()
    for struct, prefix in structs:
        f = struct_fields(rust, struct)
        if f is None:
            need(False, f"{src}: struct {struct} not found"); continue
        want |= {prefix + k for k in f}
    need(have == want, f"{example} keys differ from {src}: only in example {sorted(have - want)}, undocumented {sorted(want - have)}")
    if ok: print(f"ok    {example}: valid TOML, documents exactly the keys of {src}")
sys.exit(0 if ok else 1)
PY
    then :; else fail "example configs"; fi

    # The server example, every key uncommented, must be accepted by the real server.
    # The most recently built one: a stale release build must not judge new code.
    server_bin=
    for b in "${CARGO_TARGET_DIR:-$repo/target}"/{debug,release}/flex-server; do
        if [ -x "$b" ] && { [ -z "$server_bin" ] || [ "$b" -nt "$server_bin" ]; }; then
            server_bin=$b
        fi
    done
    if [ -n "$server_bin" ] && [ -f "$work/full-server.toml.example" ]; then
        if python3 - "$server_bin" "$work/full-server.toml.example" "$work/server-data" <<'PY'
import subprocess, sys, os, select
binary, config, data = sys.argv[1:]
os.makedirs(data, mode=0o700)
env = dict(os.environ, FLEX_ADMIN_TOKEN="check-sh-token-of-32-characters")
p = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--data-dir", data, "--config", config],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
try:
    ready, _, _ = select.select([p.stdout], [], [], 30)
    line = p.stdout.readline() if ready else ""
    if "listening on" in line:
        print(f"ok    {os.path.basename(binary)} starts with server.toml.example (every key set): {line.strip()}")
        sys.exit(0)
    p.kill()
    print(f"FAIL  flex-server refused server.toml.example: {line.strip()} {p.stderr.read()[-2000:]}")
    sys.exit(1)
finally:
    if p.poll() is None:
        p.terminate()
    p.wait(10)
PY
        then :; else fail "server.toml.example with flex-server"; fi
    else
        skip "server.toml.example not started: no target/{debug,release}/flex-server built"
    fi
else
    skip "plists, desktop entry and configs: python3 not found"
fi

# ---------------------------------------------------------------- shipped small configs
# What the package writes to /etc once: valid TOML, and no live placeholder (every
# setting commented out except production = true for the server).
if command -v python3 >/dev/null 2>&1; then
    if python3 - "$here/config/agent.toml" "$here/config/server.toml" <<'PY'
import sys, tomllib
agent = tomllib.loads(open(sys.argv[1]).read())
server = tomllib.loads(open(sys.argv[2]).read())
ok = agent in ({}, {"users": {}}) and server.get("production") is True
print("ok    shipped agent.toml/server.toml: valid TOML, no active placeholder" if ok else f"FAIL  shipped configs set values: {agent} {server}")
sys.exit(0 if ok else 1)
PY
    then :; else fail "shipped small configs"; fi
fi

# ---------------------------------------------------------------- install.sh
stub=$work/stub
mkdir -p "$stub/bin"
cat >"$stub/bin/flex-agent" <<STUB
#!/bin/sh
# stand-in: records the call, and an enroll leaves a credential behind
echo "\$*" >>"$stub/calls"
mkdir -p "$stub/root/var/lib/flex-agent" && : >"$stub/root/var/lib/flex-agent/device-token"
STUB
cp "$stub/bin/flex-agent" "$stub/bin/flexctl"
chmod 0755 "$stub/bin/flex-agent" "$stub/bin/flexctl"
echo "-----BEGIN CERTIFICATE-----" >"$stub/ca.pem"
args=(--server https://flex.test.example:8443 --token SECRET-TOKEN --ca-file "$stub/ca.pem"
      --bin-dir "$stub/bin" --email-template '{user}@corp.example')

if out=$(sh "$here/install.sh" "${args[@]}" --dry-run 2>&1) && grep -q 'flex-agent enroll --config' <<<"$out" && ! grep -q SECRET-TOKEN <<<"$out" &&
    [ ! -e "$stub/calls" ]; then
    pass "install.sh --dry-run prints the steps, hides the token, changes nothing"
else
    fail "install.sh --dry-run: $out"
fi

# --root is for images: it never enrolls (clones would share one identity); the
# token waits in /etc/flex-agent/enroll-token for each machine's first start.
out1=$(sh "$here/install.sh" "${args[@]}" --root "$stub/root" 2>&1); rc1=$?
out2=$(sh "$here/install.sh" "${args[@]}" --root "$stub/root" 2>&1); rc2=$?
r=$stub/root
if [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ]; then pass "install.sh --root runs twice"; else fail "install.sh --root: $out1 $out2"; fi
[ ! -e "$stub/calls" ] && [ "$(cat "$r/etc/flex-agent/enroll-token" 2>/dev/null)" = SECRET-TOKEN ] &&
    [ "$(stat -c %a "$r/etc/flex-agent/enroll-token")" = 600 ] && [ ! -e "$r/var/lib/flex-agent/device-token" ] &&
    pass "install.sh --root does not enroll; the token is in etc/flex-agent/enroll-token (0600)" ||
    fail "install.sh --root enrollment: calls $(cat "$stub/calls" 2>&1), token file $(ls -l "$r/etc/flex-agent/" 2>&1)"
grep -q 'unchanged' <<<"$out2" && ! grep -q '^install.sh: wrote' <<<"$out2" &&
    pass "install.sh second run rewrites nothing" || fail "install.sh second run: $out2"
grep -qx 'server_url = "https://flex.test.example:8443"' "$r/etc/flex-agent/agent.toml" &&
    grep -qx 'ca_file = "/etc/flex-agent/ca.pem"' "$r/etc/flex-agent/agent.toml" &&
    grep -qx 'email_template = "{user}@corp.example"' "$r/etc/flex-agent/agent.toml" &&
    [ -d "$r/etc/flex-agent/agent.d" ] &&
    pass "install.sh writes server_url, ca_file, email_template into the small agent.toml" || fail "install.sh agent.toml: $(cat "$r/etc/flex-agent/agent.toml")"
grep -qx 'ExecStart=/usr/local/bin/flex-agent --config /etc/flex-agent/agent.toml' "$r/etc/systemd/system/flex-agent.service" &&
    [ -f "$r/etc/systemd/system/flex-agent.socket" ] &&
    grep -qx 'ExecStart=/usr/local/bin/flexctl notify' "$r/etc/systemd/user/flexctl-notify.service" &&
    grep -qx 'Exec=/usr/local/bin/flexctl notify' "$r/etc/xdg/autostart/flexctl-notify.desktop" &&
    [ -x "$r/usr/local/bin/flex-agent" ] && [ -x "$r/usr/local/bin/flexctl" ] &&
    pass "install.sh installs binaries and units (socket too) under the prefix" || fail "install.sh units/binaries under --prefix"
[ "$(stat -c %a "$r/var/lib/flex-agent")" = 700 ] &&
    pass "install.sh state dir is 0700" || fail "install.sh state dir mode $(stat -c %a "$r/var/lib/flex-agent")"
: >"$r/var/lib/flex-agent/device-token"
out=$(sh "$here/install.sh" "${args[@]}" --root "$stub/root" 2>&1) && fail "install.sh --image over an enrolled root succeeded" ||
    { grep -q 'identity' <<<"$out" && pass "install.sh --image refuses a root that already has a device identity" || fail "install.sh --image over identity: $out"; }
sh "$here/install.sh" --uninstall --root "$stub/root" >/dev/null 2>&1 &&
    [ ! -e "$r/usr/local/bin/flex-agent" ] && [ ! -e "$r/etc/systemd/system/flex-agent.socket" ] &&
    [ -f "$r/etc/flex-agent/agent.toml" ] && [ -e "$r/var/lib/flex-agent/device-token" ] &&
    pass "install.sh --uninstall removes the agent, keeps config and state" || fail "install.sh --uninstall"
sh "$here/install.sh" --purge --root "$stub/root" >/dev/null 2>&1 &&
    [ ! -e "$r/etc/flex-agent" ] && [ ! -e "$r/var/lib/flex-agent" ] &&
    pass "install.sh --purge removes config and state" || fail "install.sh --purge: $(find "$r" | head)"
rc=0; out=$(sh "$here/install.sh" --server https://x.example --dry-run --bin-dir "$stub/bin" --token t 2>&1) || rc=$?
[ "$rc" = 2 ] && grep -q -- '--email-template' <<<"$out" &&
    pass "install.sh without --email-template (exit 2): $out" || fail "install.sh without --email-template (rc $rc): $out"
rc=0; out=$(sh "$here/install.sh" --server https://x.example --email-template '{user}@x.example' 2>&1) || rc=$?
[ "$rc" = 2 ] && grep -q -- '--token' <<<"$out" &&
    pass "install.sh without --token (exit 2): $out" || fail "install.sh without --token (rc $rc): $out"
rc=0; out=$(sh "$here/install.sh" --server ftp://x --token t 2>&1) || rc=$?
[ "$rc" = 2 ] && pass "install.sh rejects a non-http URL (exit 2): $out" || fail "install.sh ftp:// (rc $rc): $out"
if [ "$(id -u)" -eq 0 ]; then
    if command -v setpriv >/dev/null 2>&1; then
        out=$(setpriv --reuid=65534 --regid=65534 --clear-groups sh "$here/install.sh" --server https://x.example --token t 2>&1)
        rc=$?
    else
        skip "install.sh refusal without root: setpriv not found"; rc=skip
    fi
else
    out=$(sh "$here/install.sh" --server https://x.example --token t 2>&1); rc=$?
fi
if [ "$rc" != skip ]; then
    if [ "$rc" -eq 77 ] && grep -q 'must run as root' <<<"$out"; then pass "install.sh refuses without root (exit 77): $out"
    else fail "install.sh without root (rc $rc): $out"; fi
fi

# ---------------------------------------------------------------- .deb packages
if [ "$with_deb" = yes ]; then
    if ! command -v cargo >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
        skip ".deb build: cargo or dpkg-deb not found"
    else
        debs=$(sh "$here/deb/build.sh" --skip-missing --out "$work/debs")
        rc=$?
        if [ $rc -ne 0 ]; then
            fail "install/deb/build.sh (rc $rc)"
        elif [ -z "$debs" ]; then
            fail "install/deb/build.sh built nothing"
        fi
        version=$(awk '/^\[/{w=($0=="[workspace.package]")} w&&/^version/{gsub(/.*= *"|".*/,"");print;exit}' "$repo/Cargo.toml")
        arch=$(dpkg --print-architecture)
        for deb in $debs; do
            pkg=$(dpkg-deb --field "$deb" Package)
            info=$(dpkg-deb --info "$deb")
            contents=$(dpkg-deb --contents "$deb")
            [ "$(dpkg-deb --field "$deb" Version)" = "$version" ] &&
                [ "$(dpkg-deb --field "$deb" Architecture)" = "$arch" ] &&
                dpkg-deb --field "$deb" Maintainer Depends Description >/dev/null &&
                pass "$pkg: control Version $version, Architecture $arch, Depends: $(dpkg-deb --field "$deb" Depends)" ||
                fail "$pkg control: $info"
            if grep -vq '^[-dlrwx]* root/root ' <<<"$contents"; then
                fail "$pkg: files not owned by root/root: $(grep -v ' root/root ' <<<"$contents" | head -3)"
            fi
            case "$pkg" in
            flex-agent) expect="./usr/bin/flex-agent ./usr/bin/flexctl ./usr/lib/systemd/system/flex-agent.service
                ./usr/lib/systemd/system/flex-agent.socket ./usr/lib/systemd/user/flexctl-notify.service
                ./etc/xdg/autostart/flexctl-notify.desktop ./usr/share/flex-agent/agent.toml
                ./usr/share/doc/flex-agent/README.md ./usr/share/doc/flex-agent/agent.toml.example
                ./usr/share/doc/flex-agent/copyright ./usr/share/doc/flex-agent/changelog.gz
                ./usr/share/man/man1/flex-agent.1.gz ./usr/share/man/man1/flexctl.1.gz" ;;
            flex-server) expect="./usr/bin/flex-server ./usr/bin/flex-admin ./usr/lib/systemd/system/flex-server.service
                ./usr/share/flex-server/server.toml ./usr/share/doc/flex-server/README.md
                ./usr/share/doc/flex-server/copyright ./usr/share/doc/flex-server/changelog.gz
                ./usr/share/man/man1/flex-server.1.gz ./usr/share/man/man1/flex-admin.1.gz" ;;
            esac
            missing=
            for p in $expect; do
                grep -q " $p\$" <<<"$contents" || missing="$missing $p"
            done
            if [ -z "$missing" ]; then pass "$pkg: contents ($(wc -l <<<"$contents") entries, root/root)"
            else fail "$pkg: missing from the package:$missing"; fi
            mkdir -p "$work/ctl-$pkg"
            dpkg-deb --control "$deb" "$work/ctl-$pkg"
            for s in control postinst prerm postrm md5sums; do
                [ -f "$work/ctl-$pkg/$s" ] || fail "$pkg: no $s in the control archive"
            done
            exec_mode=$(stat -c %a "$work/ctl-$pkg/postinst" 2>/dev/null)
            # Configs are written once by postinst, never conffiles: upgrades never prompt.
            ! grep -qs '^/etc/flex-' "$work/ctl-$pkg/conffiles" && [ "$exec_mode" = 755 ] &&
                pass "$pkg: maintainer scripts 0755, no config conffile, md5sums" ||
                fail "$pkg: maintainer scripts or conffiles"
        done
    fi
else
    skip ".deb build (pass --with-deb to build and inspect the packages)"
fi

echo
if [ "$failures" -eq 0 ]; then
    echo "check.sh: all checks passed"
else
    echo "check.sh: $failures check(s) failed"
    exit 1
fi
