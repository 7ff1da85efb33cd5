# LoRA Land. Two commands: `make serve` runs it, `make test` tests it. Both install what is missing first.
SHELL := /bin/bash
export PATH := $(CURDIR)/end2end/node_modules/.bin:$(HOME)/.cargo/bin:$(PATH)
# cargo-leptos builds debug servers with this flag and this compile-time name; tests and lints use them too so they
# share that build instead of compiling a second set of dependencies.
# On x86-64 the CPU level of .cargo/config.toml comes first (cargo-leptos puts the config's flags before its own).
CPU_RUSTFLAGS := $(if $(filter x86_64,$(shell uname -m)),-C target-cpu=x86-64-v3 ,)
LEPTOS_RUSTFLAGS := $(CPU_RUSTFLAGS)--cfg erase_components
export LEPTOS_OUTPUT_NAME := loraland
# CI builds once from clean: incremental caches would only fill its disk.
ifdef CI
export CARGO_INCREMENTAL := 0
endif
# Two cores here: keep candle's matmuls to one thread in tests so test binaries running side by side don't fight.
TEST_ENV := RAYON_NUM_THREADS=1 RUSTFLAGS="$(LEPTOS_RUSTFLAGS)"

.PHONY: serve site test tools test-deps fmt lint unit clients e2e scale-out k8s-check fetch-model spm-fixture adapters \
	cuda-toolchain cuda-check gpu-bundle peft-check bench-7b clean

## Build the site in release mode and serve it (fetches the default model on first start).
serve: tools test-deps-npm
	@echo "==> LoRA Land will listen on http://$${LORALAND_ADDR:-127.0.0.1:3000} (set LORALAND_ADDR to change)"
	cargo leptos serve --release

## The release site exactly as `make serve` builds it (target/release/loraland, target/site); the API clients and
## the browser tests run against it.
site: tools test-deps-npm
	cargo leptos build --release

## Everything CI runs: formatting, lints, unit and integration tests, the release site with the Python API
## clients, PEFT on a trained adapter's download and the browser tests against it, the nginx deployment of three replicas, the Kubernetes manifests'
## schemas, the CUDA compile check.
test: tools test-deps fmt lint site fetch-model spm-fixture unit clients peft-check e2e scale-out k8s-check cuda-check

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
	python3 scripts/check-cycles.py
	RUSTFLAGS="$(LEPTOS_RUSTFLAGS)" cargo clippy --workspace --exclude frontend --all-targets -- -D warnings
	RUSTFLAGS="--cfg erase_components" cargo clippy -p frontend --target wasm32-unknown-unknown -- -D warnings

## Unit and integration tests; the database tests run on SQLite and on a throw-away PostgreSQL (Debian's, installed
## if missing) that scripts/with-postgres.sh starts on a free loopback port.
unit: spm-fixture
	$(TEST_ENV) scripts/with-postgres.sh cargo test --workspace --exclude frontend

## The real OpenAI and LoRAX Python clients (from PyPI) against the release server.
clients: site
	scripts/clients.sh

## The browser tests (Playwright, Debian's Chromium) against the release server.
e2e: site
	scripts/e2e.sh

## deploy/nginx on this machine: three release replicas, one PostgreSQL and Debian's nginx on free loopback ports;
## checks routing around loading and killed replicas, runs followed across replicas, and prints the throughput at
## three replicas against one (SCALE_OUT_ARGS="--duration 60" for the README's figures).
scale-out: site fetch-model
	scripts/scale-out.sh $(SCALE_OUT_ARGS)

## deploy/k8s validated offline against the Kubernetes and InferencePool schemas.
k8s-check:
	scripts/check-k8s.sh

## Fetch the default model into data/models (the engine's SmolLM2 tests need it).
fetch-model: site
	target/release/loraland fetch-model

## The 7B CPU benchmark against llama.cpp on Mistral-7B-shaped Q4_K_M and Q8_0 files (not part of `make test`:
## about 35 minutes the first time, 27 GB of free disk; see scripts/bench-7b/run.sh).
bench-7b: site
	@scripts/bench-7b/run.sh

## Mistral-7B-v0.1's SentencePiece tokenizer in a tiny GGUF, with transformers' token ids, in data/fixtures/mistral-spm
## (from PyPI: mistral-common, gguf, sentencepiece, transformers; the engine's SentencePiece tests need it).
spm-fixture:
	@scripts/spm-fixture/make.sh

## Train the embedded model's demo adapters into adapters/ and score them (TASKS="a b" for some; long on a CPU).
adapters:
	RUSTFLAGS="$(LEPTOS_RUSTFLAGS)" scripts/train-adapters.sh $(TASKS)

## nvcc, the CUDA headers and libraries from NVIDIA's PyPI wheels, for building with --features cuda without a GPU.
cuda-toolchain:
	@scripts/cuda-toolchain.sh

CUDA_ENV = eval "$$(scripts/cuda-toolchain.sh --env)" && RUSTFLAGS="$(LEPTOS_RUSTFLAGS)"

## The CUDA compile check: our SGMV kernels through the real nvcc, and clippy over the engine and the server with
## `--features cuda` (the engine's GPU tests included). candle's own kernels get empty stand-ins here
## (scripts/nvcc-check.sh): they are candle's, and would take ~30 min of nvcc on 2 cores. Its own target folder,
## so that no real build ever reuses those stand-ins.
cuda-check: cuda-toolchain
	$(CUDA_ENV) NVCC=$(CURDIR)/scripts/nvcc-check.sh CARGO_TARGET_DIR=$(CURDIR)/target/cuda-check \
	  cargo clippy -p engine -p server -p lab -p loraland --features loraland/cuda --all-targets -- -D warnings

# The real CUDA build has its own target folder outside the checkout: candle's kernels take ~30 min of nvcc on
# 2 cores, once per machine.
CUDA_TARGET_DIR ?= $(HOME)/.cache/loraland/cuda-target

## What scripts/gpu-check.sh runs on a GPU machine, in target/gpu-check: the CUDA binary (every kernel compiled
## for real), the engine's GPU tests, the tiny PEFT fixtures. Then: the device tool runs `bash scripts/gpu-check.sh`
## carrying target/gpu-check.
gpu-bundle: cuda-toolchain
	$(CUDA_ENV) CARGO_TARGET_DIR=$(CUDA_TARGET_DIR) cargo build --release -p loraland --features cuda
	RUSTFLAGS="$(LEPTOS_RUSTFLAGS)" scripts/gpu-bundle.sh $(CUDA_TARGET_DIR)

## The web app's trained-adapter download loaded by PEFT itself: a training job on the tiny fixture model through the
## Train API, then PeftModel.from_pretrained on the zip, its greedy tokens and log-probabilities against the
## server's (torch, PEFT and transformers from PyPI into target/peft-venv: 5.6 GB, a few minutes once).
peft-check: site
	scripts/peft-check.sh

clean:
	cargo clean
