#!/usr/bin/env bash
# The whole test suite, as a newcomer or CI runs it:  bash tests/run.sh
#
# Installs what the tests need and this machine lacks (Debian packages: D-Bus for
# the notification tests, gnome-keyring for the Secret Service credential tests),
# builds every binary the end-to-end tests start, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v dbus-daemon >/dev/null || need+=(dbus)
command -v gnome-keyring-daemon >/dev/null || need+=(gnome-keyring)
if ((${#need[@]})); then
    echo "tests/run.sh: installing ${need[*]}" >&2
    if [[ $(id -u) -ne 0 ]]; then sudo=sudo; else sudo=; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --workspace --bins
cargo test --workspace "$@"
