#!/usr/bin/env bash
# Installs the build tools LoRA Land needs when they are missing: the Rust toolchain that rust-toolchain.toml pins
# (with rustfmt, clippy and the wasm32 target), cargo-leptos and the wasm-bindgen CLI at the exact versions the
# workspace pins. Idempotent: a tool already present at the right version is skipped. Each step says what failed.
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'echo "install-tools.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

CARGO_LEPTOS_VERSION=0.3.10
WASM_BINDGEN_VERSION=0.2.130

command -v rustup >/dev/null || { echo "rustup is needed (https://rustup.rs): it installs the pinned toolchain" >&2; exit 1; }
# rustup >= 1.28 no longer installs a toolchain file's toolchain, components or targets on first use.
TOOLCHAIN=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup target list --installed --toolchain "$TOOLCHAIN" 2>/dev/null | grep -qx wasm32-unknown-unknown \
  || ! rustup component list --installed --toolchain "$TOOLCHAIN" 2>/dev/null | grep -q '^clippy'; then
  echo "==> rustup toolchain install (Rust $TOOLCHAIN with rustfmt, clippy, wasm32-unknown-unknown)"
  rustup toolchain install
fi

if ! cargo leptos --version 2>/dev/null | grep -q "$CARGO_LEPTOS_VERSION"; then
  echo "==> installing cargo-leptos $CARGO_LEPTOS_VERSION (takes ~20 min on 2 cores, once)"
  # Without LTO and with 16 codegen units the install takes 19 instead of 30 minutes on 2 cores.
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo install cargo-leptos --version "$CARGO_LEPTOS_VERSION" --locked --features no_downloads
fi

if ! wasm-bindgen --version 2>/dev/null | grep -q "$WASM_BINDGEN_VERSION"; then
  echo "==> installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (~6 min, once)"
  # Not --locked: its lock file names a crate version the registry no longer has.
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi
