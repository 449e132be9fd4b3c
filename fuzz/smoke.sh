#!/usr/bin/env bash
# CI smoke run of the fuzz targets: installs cargo-fuzz when missing, builds every target with
# the nightly toolchain and runs each for 30 s (FUZZ_SMOKE_SECONDS to change). Fails on a build
# error or a crash.
set -euo pipefail
cd "$(dirname "$0")"

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz smoke: no nightly toolchain (cargo fuzz needs one)" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
FUZZ_SEED="${FUZZ_SEED:-1}" ./run.sh all "${FUZZ_SMOKE_SECONDS:-30}"
