# The two commands a newcomer needs: `make demo` and `make test`. Both run setup
# first (idempotent; everything it downloads is cached in ~/.cache/rlvr).
.PHONY: setup build demo test lint fmt bench rlhf

# The cache the scripts and the binaries share (HOME may be unset under CI).
HOME ?= $(shell getent passwd "$$(id -u)" | cut -d: -f6)
export RLVR_CACHE ?= $(HOME)/.cache/rlvr

setup:
	@bash scripts/setup.sh

build: setup
	cargo build --all-targets

demo: setup
	cargo run --quiet -- demo

# cargo-nextest runs each test in its own process and kills one stuck past its time
# limit (.config/nextest.toml), so the suite always ends and names what hung.
test: setup
	@bash scripts/python-env.sh >/dev/null || echo "[test] no Python with transformers: the transformers round-trip test will skip (fail under RLVR_REQUIRE_ALL=1)"
	@bash scripts/chromium.sh
	@NEXTEST=$$(bash scripts/nextest.sh) && "$$NEXTEST" nextest run --all-targets

# The RLHF example: a reward model trained on synthetic preferences, then RL against it
# while a gold reward watches; runs/rlhf/rl/metrics.jsonl flags the over-optimisation.
rlhf: setup
	cargo run --quiet -- pretrain configs/rlhf/pretrain.yaml --overwrite
	cargo run --quiet -- sft configs/rlhf/sft.yaml --overwrite
	cargo run --quiet -- train-rm configs/rlhf/rm.yaml --overwrite
	cargo run --quiet -- rl configs/rlhf/rl.yaml --overwrite

lint: setup
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt

# Benchmarks print ratios against a baseline run in the same invocation; run them on a
# quiet machine (a busy second process slows libtorch 10-50x on 2 cores).
bench: setup
	@RLVR_WITH_TRL=1 bash scripts/python-env.sh >/dev/null || echo "[bench] no Python with transformers/TRL: those baselines will be skipped"
	cargo run --quiet -- bench sample
	cargo run --quiet -- bench rewards
	cargo run --quiet -- bench rl
