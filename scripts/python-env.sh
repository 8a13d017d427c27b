#!/usr/bin/env bash
# Makes a Python venv with torch + transformers for reference computations (parity
# fixtures, optional cross-checks) and prints the path of its python on stdout; all
# other output goes to stderr. Idempotent: a second run only checks (about a second).
#
#   PY=$(scripts/python-env.sh) && "$PY" scripts/make_parity_fixtures.py
#
# torch is NOT installed again: the venv reuses the CPU torch wheel that scripts/setup.sh
# put in $RLVR_CACHE/torch-2.13.0-cpu, through a .pth file. That wheel is PyPI's CUDA
# build with only cudart and cupti beside it, so `import torch` would fail on the
# missing cuBLAS/cuDNN/NCCL/... libraries (libtorch_python.so links libtorch_cuda.so).
# Instead of pulling ~3.5 GB of NVIDIA libraries, this script builds tiny stub .so files
# for the missing ones (same SONAMEs and symbol versions, every function aborts with a
# message) and the .pth preloads them. CPU torch works; any CUDA call dies loudly.
#
#   RLVR_CACHE=DIR   cache location (default ~/.cache/rlvr); the venv is DIR/pyenv
#   PYTHON=python3   interpreter for the venv (3.10+)
#   RLVR_WITH_TRL=1  also install TRL 1.16 (for `rlvr bench rl`), about 20 s once
#   RLVR_DEVICE=cuda use the CUDA libtorch of setup.sh instead (scripts/gpu-check.sh)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# HOME may be unset in minimal environments (CI); fall back to the passwd entry.
HOME=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${RLVR_CACHE:-$HOME/.cache/rlvr}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
# RLVR_DEVICE=cuda: the full CUDA wheel of `RLVR_DEVICE=cuda scripts/setup.sh`, whose
# NVIDIA libraries are all there, so no stubs get built and torch sees the GPU.
TORCH_DIR="$CACHE/torch-$TORCH_VERSION-${RLVR_DEVICE:-cpu}"
VENV="$CACHE/pyenv"
STUBS="$VENV/cuda-stubs"

say() { printf '[python-env] %s\n' "$*" >&2; }
die() { printf '[python-env] error: %s\n' "$*" >&2; exit 1; }

# Everything the venv holds besides torch, pinned (transformers and its dependencies,
# plus the packages torch itself needs to import). Change a pin and the next run
# reinstalls.
REQUIREMENTS="
transformers==5.24.0
safetensors==0.8.0
numpy==2.4.6
tokenizers==0.23.3
huggingface_hub==2.4.0
hf-xet==1.8.0
PyYAML==6.0.4
regex==2026.11.19
tqdm==4.70.1
packaging==26.4
typing_extensions==4.16.0
sympy==1.14.0
mpmath==1.3.0
networkx==3.6.1
Jinja2==3.1.6
MarkupSafe==3.0.4
filelock==4.3.1
fsspec==2026.9.0
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
click==8.5.1
h11==0.16.0
httpcore2==2.16.2
httpx2==2.16.2
idna==3.20
markdown-it-py==4.3.0
mdurl==0.1.2
pydantic==2.14.4
pydantic_core==2.50.5
Pygments==2.21.0
rich==15.0.0
shellingham==1.5.4
truststore==0.10.5
typer==0.29.2
typing-inspection==0.4.5
"

# TRL and what it needs beyond the list above, installed with --no-deps so that pip
# does not pull torch's CUDA dependencies.
TRL_REQUIREMENTS="
trl==1.16.0
accelerate==1.15.0
datasets==5.2.0
dill==0.4.1
multiprocess==0.70.19
pandas==3.1.1
psutil==7.2.2
pyarrow==26.0.1
python-dateutil==4.0.0
tzdata==2026.6
xxhash==4.1.0
"

with_trl() {
    [ "${RLVR_WITH_TRL:-0}" = 1 ] || return 0
    "$PY" -c 'import trl' >/dev/null 2>&1 && return 0
    say "installing TRL into $VENV"
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps $TRL_REQUIREMENTS >&2
    "$PY" -c 'from trl import GRPOTrainer' >&2 || die "TRL does not import in $VENV"
}

# --- torch (from scripts/setup.sh) ---------------------------------------------------
if [ ! -f "$TORCH_DIR/torch/lib/libtorch_cpu.so" ]; then
    say "no torch in $TORCH_DIR: running scripts/setup.sh"
    "$ROOT/scripts/setup.sh" >&2
fi
[ -f "$TORCH_DIR/torch/lib/libtorch_cpu.so" ] || die "torch $TORCH_VERSION not found in $TORCH_DIR"

# --- venv ------------------------------------------------------------------------------
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
    say "creating venv $VENV"
    "$PYTHON" -m venv "$VENV" >&2
fi
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

want_stamp=$(printf '%s\n%s\n' "$TORCH_DIR" "$REQUIREMENTS" | sha256sum | cut -d' ' -f1)
stamp="$VENV/.rlvr-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] \
    && "$PY" -c 'import torch, transformers' >/dev/null 2>&1; then
    with_trl
    echo "$PY"
    exit 0
fi
rm -f "$stamp"

say "installing pinned packages into $VENV"
# shellcheck disable=SC2086
"$PY" -m pip install --quiet --disable-pip-version-check $REQUIREMENTS >&2

# --- CUDA stubs --------------------------------------------------------------------------
command -v readelf >/dev/null || die "readelf not found (apt-get install binutils)"
command -v cc >/dev/null || die "cc not found (apt-get install gcc)"
say "building CUDA stub libraries in $STUBS"
rm -rf "$STUBS.partial"
mkdir -p "$STUBS.partial"
"$PY" - "$TORCH_DIR/torch/lib" "$STUBS.partial" <<'PY'
# Finds the shared libraries that libtorch_python.so needs but that are not installed,
# the symbols (and symbol versions) torch imports from them, and writes one C file and
# one linker version script per library, plus build.sh.
import os, re, subprocess, sys
from collections import defaultdict

lib_dir, out = sys.argv[1:]
# Unversioned symbols are assigned to a library by prefix. A new torch that imports an
# unversioned symbol not listed here makes this fail, rather than build a stub that
# the loader would then reject.
PREFIXES = {"cuFile": "libcufile.so.0", "cusparseLt": "libcusparseLt.so.0", "nccl": "libnccl.so.2"}

ldd = subprocess.run(["ldd", os.path.join(lib_dir, "libtorch_python.so")],
                     capture_output=True, text=True, check=True).stdout
missing, found = [], []
for line in ldd.splitlines():
    m = re.match(r"\s*(\S+) => (not found|(\S+))", line)
    if m:
        lst = missing if m.group(2) == "not found" else found
        name = m.group(3) or m.group(1)
        if name not in lst:
            lst.append(name)
if not missing:
    sys.exit(0)

def dynsyms(path):
    text = subprocess.run(["readelf", "--dyn-syms", "-W", path],
                          capture_output=True, text=True, check=True).stdout
    for line in text.splitlines():
        p = line.split()
        if len(p) >= 8 and p[0].endswith(":") and p[0][:-1].isdigit():
            yield p[3], p[6], p[7]  # type, section index, name[@version]

defined = set()
ours = [os.path.join(lib_dir, "libtorch_python.so")] + \
    [f for f in found if os.path.dirname(os.path.realpath(f)) == os.path.realpath(lib_dir)]
for f in found:
    for _typ, ndx, name in dynsyms(f):
        if ndx != "UND":
            defined.add(name.split("@")[0])

version_file = {}  # symbol version name -> library that must define it
for f in ours:
    text = subprocess.run(["readelf", "-V", "-W", f], capture_output=True, text=True).stdout
    current = None
    for line in text.splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            current = m.group(1)
        m = re.search(r"Name: (\S+)", line)
        if m and current in missing:
            version_file[m.group(1)] = current

symbols = defaultdict(set)    # library -> names
versions = defaultdict(set)   # library -> version names
for f in ours:
    for typ, ndx, name in dynsyms(f):
        if ndx != "UND":
            continue
        base, _, ver = name.partition("@")
        ver = ver.split(" ")[0].lstrip("@")
        if ver in version_file:
            lib = version_file[ver]
            versions[lib].add(ver)
        elif ver or base in defined or typ == "NOTYPE":
            continue  # glibc/libstdc++ versions, other torch libs, the Python C API, weak refs
        else:
            lib = next((l for p, l in PREFIXES.items() if base.startswith(p)), None)
            if lib is None:
                sys.exit(f"don't know which library defines {base} ({typ}, used by {f})")
        if typ not in ("FUNC", "NOTYPE"):
            sys.exit(f"{base} is a {typ}; only functions can be stubbed")
        symbols[lib].add((base, ver))

script = ["set -e"]
for lib in missing:
    # a library needed but with no symbol imported from it (libcurand) gets an empty stub
    stem = lib.split(".so")[0]
    c = ['#include <stdio.h>', '#include <stdlib.h>',
         'static void die(const char *n) {',
         f'    fprintf(stderr, "rlvr CUDA stub: %s (from {lib}) called, but this Python env '
         f'has no CUDA libraries (CPU only; see scripts/python-env.sh)\\n", n);',
         '    abort();', '}']
    for base, _ in sorted(symbols[lib]):
        c.append(f'void {base}(void) {{ die("{base}"); }}')
    with open(os.path.join(out, stem + ".c"), "w") as fh:
        fh.write("\n".join(c) + "\n")
    flags = ""
    if versions[lib]:
        # one version node per name; every symbol goes in the node it is imported with
        nodes = []
        for i, v in enumerate(sorted(versions[lib])):
            names = sorted(b for b, sv in symbols[lib] if sv == v)
            nodes.append(v + " {\n  global:\n" + "".join(f"    {n};\n" for n in names)
                         + ("  local: *;\n" if i == 0 else "") + "};")
        with open(os.path.join(out, stem + ".map"), "w") as fh:
            fh.write("\n".join(nodes) + "\n")
        flags = f" -Wl,--version-script={stem}.map"
    script.append(f"cc -shared -fPIC -O0 -o {lib} -Wl,-soname,{lib}{flags} {stem}.c")
with open(os.path.join(out, "build.sh"), "w") as fh:
    fh.write("\n".join(script) + "\n")
print(" ".join(missing), file=sys.stderr)
PY
if [ -f "$STUBS.partial/build.sh" ]; then
    (cd "$STUBS.partial" && bash build.sh) >&2
fi
rm -rf "$STUBS"
mv "$STUBS.partial" "$STUBS"

# --- .pth: torch on sys.path, stubs preloaded (by SONAME, before torch asks for them) ---
cat >"$SITE/rlvr_cuda_stubs.py" <<EOF
"""Written by rlvr's scripts/python-env.sh: loads the CUDA stub libraries, so that the
dynamic loader finds them by SONAME when torch's libtorch_cuda.so asks for them."""
import ctypes, glob
for _path in sorted(glob.glob("$STUBS/*.so*")):
    ctypes.CDLL(_path, mode=ctypes.RTLD_GLOBAL)
EOF
printf '%s\n%s\n' "$TORCH_DIR" "import rlvr_cuda_stubs" >"$SITE/rlvr-torch.pth"

"$PY" -c 'import torch, transformers; torch.ones(2) @ torch.ones(2)' >&2 \
    || die "import torch, transformers fails in $VENV"
echo "$want_stamp" >"$stamp"
say "ready: torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null), transformers $("$PY" -c 'import transformers; print(transformers.__version__)' 2>/dev/null)"
with_trl
echo "$PY"
