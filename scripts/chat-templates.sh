#!/usr/bin/env bash
# Real chat templates for the render parity tests: the `trl` wheel ships the templates
# of Qwen2.5/Qwen3, Llama 3.x, Gemma, Phi, DeepSeek-R1 distills and others in
# trl/chat_templates/*.jinja. Fetched once from PyPI (sha256-pinned) into
# $RLVR_CACHE/chat-templates; prints that folder.
set -euo pipefail
HOME=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${RLVR_CACHE:-$HOME/.cache/rlvr}
DIR="$CACHE/chat-templates"
WHEEL=trl-1.16.0-py3-none-any.whl
SHA256=c4726e139dd40e1a41661511c639c8a68416782b2e3e8c0befebd77bb7ba0396
if [ ! -f "$DIR/trl/chat_templates/qwen3.jinja" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: trl==1.16.0 -d "$tmp" >&2
    echo "$SHA256  $tmp/$WHEEL" | sha256sum -c --quiet - >&2
    mkdir -p "$DIR.partial"
    python3 -m zipfile -e "$tmp/$WHEEL" "$DIR.partial" >&2
    rm -rf "$DIR" && mv "$DIR.partial" "$DIR"
fi
echo "$DIR/trl/chat_templates"
