#!/usr/bin/env bash
# The whole test suite, as a newcomer or CI runs it:  bash tests/run.sh
#
# Installs what the tests need and this machine lacks (Debian packages: D-Bus for
# the notification tests, gnome-keyring for the Secret Service credential tests,
# Xvfb and xdotool for the notifier's X11 tests;
# mingw, wine64 and wixl for the Windows agent), builds every binary the
# end-to-end tests start (and the Windows MSI), then runs every test: the Linux
# suite, and the Windows agent's unit tests under Wine.
set -euo pipefail
cd "$(dirname "$0")/.."

# The agent is a root service: its end-to-end tests start it as root, let it see
# and close processes, and connect as another uid to prove identity checks. Say
# so up front instead of failing halfway.
if [[ $(id -u) -ne 0 ]]; then
    echo "tests/run.sh: the agent tests must run as root (they start the agent as the" >&2
    echo "system service runs and connect as another uid). Run, with your toolchain:" >&2
    echo "  sudo env \"PATH=\$PATH\" CARGO_HOME=\"\${CARGO_HOME:-\$HOME/.cargo}\" RUSTUP_HOME=\"\${RUSTUP_HOME:-\$HOME/.rustup}\" bash tests/run.sh" >&2
    exit 1
fi

# dbus: the private session bus of the notification and keyring tests;
# gnome-keyring: a real Secret Service; chromium + chromium-driver: the admin
# console's browser test (tests/tests/console.rs); python3-aiosmtpd: the SMTP
# server the mail tests send to (tests/support/smtp_sink.py, run by Debian's
# /usr/bin/python3); python3 and socat run the example wrappers
# (tests/tests/example_wrappers.rs); the rest are what install/check.sh (run by
# tests/tests/install.rs) and tests/tests/flexctl_wrap.rs validate units, plists,
# scripts and desktop files with.
need=()
command -v dbus-daemon >/dev/null || need+=(dbus)
command -v gnome-keyring-daemon >/dev/null || need+=(gnome-keyring)
command -v python3 >/dev/null || need+=(python3)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v desktop-file-validate >/dev/null || need+=(desktop-file-utils)
# The package tests: lintian judges the .deb files; they are installed with dpkg
# into a throwaway overlay root (unshare/nsenter from util-linux); strip is binutils.
command -v lintian >/dev/null || need+=(lintian)
command -v nsenter >/dev/null || need+=(util-linux)
command -v strip >/dev/null || need+=(binutils)
command -v systemd-socket-activate >/dev/null || need+=(systemd)
[[ -x /usr/bin/chromium ]] || need+=(chromium)
[[ -x /usr/bin/chromedriver ]] || need+=(chromium-driver)
[[ -x /usr/bin/python3 ]] || need+=(python3)
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || need+=(python3-aiosmtpd)
# socat: the example shell wrapper (examples/wrappers/flex-wrap.sh) talks through it.
command -v socat >/dev/null || need+=(socat)
# postgresql: the second storage engine; every store test, the ledger property
# tests and the replica tests run against a throwaway cluster started below.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# python3-venv: schemathesis (the OpenAPI fuzzer, from PyPI) runs in a venv.
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# valgrind: a product run inside valgrind must still be recognised
# (agent/src/watcher/tests.rs, tests/tests/agent_enforcement.rs).
command -v valgrind >/dev/null || need+=(valgrind)
# gcc: a product that ends its main thread while another runs on is built
# from C by the tests (agent/src/testsupport/leaderless.c); Rust links with cc too.
command -v cc >/dev/null || need+=(gcc)
# xvfb and xdotool: the notifier's X11 idle time and window closing run
# against a private X server that the tests start (agent/src/testsupport/x11.rs,
# tests/tests/notifier_x11.rs).
command -v Xvfb >/dev/null || need+=(xvfb)
command -v xdotool >/dev/null || need+=(xdotool)
if ((${#need[@]})); then
    echo "tests/run.sh: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

bash tests/wine/install-tools.sh

# A throwaway PostgreSQL cluster on a Unix socket in a temporary directory: the
# tests never assume a running database. FLEX_REQUIRE_POSTGRES makes a test
# that cannot reach it fail instead of running SQLite only.
pg_dir=$(mktemp -d /tmp/flex-pg.XXXXXX)
trap 'bash tests/support/pg-cluster.sh stop "$pg_dir"' EXIT
FLEX_TEST_DATABASE_URL=$(bash tests/support/pg-cluster.sh start "$pg_dir")
export FLEX_TEST_DATABASE_URL FLEX_REQUIRE_POSTGRES=1

cargo build --workspace --bins
# The Windows agent and its MSI (with its custom action DLL), for
# tests/tests/windows_agent.rs (under Wine).
bash install/windows/build-msi.sh --debug >/dev/null
# Every failure in one run, not just the first test binary's.
failed=0
cargo test --workspace --no-fail-fast "$@" || failed=1
# The Windows modules' unit tests, each test executable run by Wine
# (.cargo/config.toml: tests/wine/runner.sh).
if (($# == 0)); then
    cargo test -p flex-agent -p flex-protocol --target x86_64-pc-windows-gnu --no-fail-fast || failed=1
fi
# The OpenAPI fuzzer against a real server (tests/support/schemathesis.sh).
if (($# == 0)); then
    bash tests/support/schemathesis.sh || failed=1
fi
# The runner's Wine prefix keeps its processes for the next run; end them.
WINEPREFIX="$PWD/target/wine/prefix" /usr/lib/wine/wineserver -k 2>/dev/null || true
exit "$failed"
