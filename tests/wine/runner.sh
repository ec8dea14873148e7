#!/usr/bin/env bash
# Runs a cross-built Windows executable under Wine: cargo's runner for the
# x86_64-pc-windows-gnu target (.cargo/config.toml), so
#   cargo test -p flex-agent --target x86_64-pc-windows-gnu
# runs the agent's unit tests under Wine. Also used by the end-to-end tests.
#
# The first run prepares the Wine side once (see prepare.sh): a prefix in
# target/wine/prefix (FLEX_WINEPREFIX overrides it) and the ProcessPrng shim,
# which it places beside the executable.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/wine/prepare.sh
source "$here/prepare.sh"
wine_prepare
exe="$1"
shift
wine_shim_beside "$exe"
# Tests that need a GUI program with a version resource start this one.
fake="$FLEX_WINE_DIR/fake-product.exe"
FLEX_TEST_FAKE_PRODUCT="Z:${fake//\//\\}"
export FLEX_TEST_FAKE_PRODUCT
exec "$WINE" "$exe" "$@"
