# LoRA Land. Two commands: `make serve` runs it, `make test` tests it. Both install what is missing first.
SHELL := /bin/bash
export PATH := $(CURDIR)/end2end/node_modules/.bin:$(HOME)/.cargo/bin:$(PATH)
# cargo-leptos builds debug servers with this flag and this compile-time name; tests and lints use them too so they
# share that build instead of compiling a second set of dependencies.
# On x86-64 the CPU level of .cargo/config.toml comes first (cargo-leptos puts the config's flags before its own).
CPU_RUSTFLAGS := $(if $(filter x86_64,$(shell uname -m)),-C target-cpu=x86-64-v3 ,)
LEPTOS_RUSTFLAGS := $(CPU_RUSTFLAGS)--cfg erase_components
export LEPTOS_OUTPUT_NAME := loraland
# Two cores here: keep candle's matmuls to one thread in tests so test binaries running side by side don't fight.
TEST_ENV := RAYON_NUM_THREADS=1 RUSTFLAGS="$(LEPTOS_RUSTFLAGS)"

.PHONY: serve test tools test-deps fmt lint unit clients e2e fetch-model adapters cuda-toolchain cuda-check gpu-bundle clean

## Build the site in release mode and serve it (fetches the default model on first start).
serve: tools test-deps-npm
	@echo "==> LoRA Land will listen on http://$${LORALAND_ADDR:-127.0.0.1:3000} (set LORALAND_ADDR to change)"
	cargo leptos serve --release

## Everything CI runs: formatting, lints, unit and integration tests, browser tests, the CUDA build (compile only).
test: tools test-deps fmt lint fetch-model unit clients e2e cuda-check

tools:
	@scripts/install-tools.sh

test-deps:
	@scripts/install-test-deps.sh

# `make serve` needs only wasm-opt from end2end's npm packages, not Chromium.
test-deps-npm:
	@[ -x end2end/node_modules/.bin/wasm-opt ] || (cd end2end && npm ci --no-fund --no-audit --loglevel=error)

fmt:
	cargo fmt --all -- --check

lint:
	RUSTFLAGS="$(LEPTOS_RUSTFLAGS)" cargo clippy --workspace --exclude frontend --all-targets -- -D warnings
	RUSTFLAGS="--cfg erase_components" cargo clippy -p frontend --target wasm32-unknown-unknown -- -D warnings

unit:
	$(TEST_ENV) cargo test --workspace --exclude frontend

## The real OpenAI and LoRAX Python clients (from PyPI) against a live server.
clients:
	RUSTFLAGS="$(LEPTOS_RUSTFLAGS)" scripts/clients.sh

e2e:
	scripts/e2e.sh

## Fetch the default model into data/models (the engine's SmolLM2 tests need it).
fetch-model:
	RUSTFLAGS="$(LEPTOS_RUSTFLAGS)" cargo run -q -p server --bin loraland -- fetch-model

## Train the embedded model's demo adapters into adapters/ and score them (TASKS="a b" for some; long on a CPU).
adapters:
	RUSTFLAGS="$(LEPTOS_RUSTFLAGS)" scripts/train-adapters.sh $(TASKS)

## nvcc, the CUDA headers and libraries from NVIDIA's PyPI wheels, for building with --features cuda without a GPU.
cuda-toolchain:
	@scripts/cuda-toolchain.sh

# The CUDA build has its own target folder outside the checkout: candle's kernels take ~30 min of nvcc on 2 cores,
# once per machine.
CUDA_TARGET_DIR ?= $(HOME)/.cache/loraland/cuda-target
CUDA_BUILD = eval "$$(scripts/cuda-toolchain.sh --env)" && RUSTFLAGS="$(LEPTOS_RUSTFLAGS)" CARGO_TARGET_DIR=$(CUDA_TARGET_DIR)

## `loraland` with the CUDA engine (the SGMV kernels, candle's CUDA backend) and the engine's GPU tests; compiles
## here, runs on a GPU machine.
cuda-check: cuda-toolchain
	$(CUDA_BUILD) cargo build --release -p server --bin loraland --features cuda
	$(CUDA_BUILD) cargo test --release -p server -p engine --features server/cuda --test gpu --no-run

## What scripts/gpu-check.sh runs on a GPU machine, in target/gpu-check: the CUDA binary, the engine's GPU tests,
## the tiny PEFT fixtures. Then: the device tool runs `bash scripts/gpu-check.sh` carrying target/gpu-check.
gpu-bundle: cuda-check
	RUSTFLAGS="$(LEPTOS_RUSTFLAGS)" scripts/gpu-bundle.sh $(CUDA_TARGET_DIR)

clean:
	cargo clean
