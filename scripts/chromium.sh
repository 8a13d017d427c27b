#!/usr/bin/env bash
# Installs Debian's headless-capable `chromium` for the report test (tests/compare.rs),
# once. Needs root and apt; without them it says so and the test reports SKIPPED.
set -uo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[chromium] not installed and cannot install (needs root and apt-get): the report test will be skipped" >&2
    exit 0
fi
echo "[chromium] installing Debian's chromium (about 35 s)" >&2
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq >/dev/null 2>&1 \
    && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; then
    echo "[chromium] $(chromium --version 2>/dev/null)" >&2
else
    echo "[chromium] apt-get install chromium failed: the report test will be skipped" >&2
fi
exit 0
