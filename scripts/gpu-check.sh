#!/usr/bin/env bash
# The GPU check of the real-sizes work, for a machine with one NVIDIA GPU, the CUDA
# driver and the package registries (about 4.7 GB of CUDA libtorch the first time):
#   1. installs the full CUDA libtorch and builds with --features cuda;
#   2. the logits parity test on the GPU (f32 and bf16 against transformers' fixtures);
#   3. sampling at the Qwen2.5-0.5B shape in bf16 against transformers' generate();
#   4. the GRPO step at that shape in bf16 against TRL, both on the GPU.
# About ten minutes once libtorch is installed. Prints each benchmark's table; copy
# them into the README's performance section with the date and the GPU's name.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export RLVR_DEVICE=cuda
bash scripts/setup.sh
# transformers and TRL need a CUDA torch in the venv: the pip one, with its libraries.
PY=$(RLVR_WITH_TRL=1 bash scripts/python-env.sh)
"$PY" -c 'import torch; assert torch.cuda.is_available(), "the venv torch sees no GPU"; print(torch.cuda.get_device_name())'
cargo build --features cuda
RLVR_REQUIRE_CUDA=1 cargo test --features cuda --test parity logits_match_transformers_on_cuda
RLVR=target/debug/rlvr
"$RLVR" bench sample --shape qwen2.5-0.5b --dtype bf16 --device cuda --rows 16 --prompt-tokens 32 --new-tokens 64 --repeats 3
"$RLVR" bench rl --shape qwen2.5-0.5b --dtype bf16 --device cuda --prompts 4 --generations 4 --new-tokens 64 --steps 4 --warmup 1
"$RLVR" bench rl --shape qwen2.5-0.5b --dtype bf16 --device cuda --prompts 4 --generations 4 --new-tokens 1024 --steps 2 --warmup 1 --gradient-checkpointing
