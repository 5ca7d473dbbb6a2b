#!/usr/bin/env bash
# The test suite: installs missing system packages, then runs every crate's tests.
set -euo pipefail
cd "$(dirname "$0")"
./tools/install_system_deps.sh
./tools/fetch_weights.sh
./tools/install_test_deps.sh
./tools/install_postgres.sh
./tools/install_onnxruntime.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/visual-search/target}"
cargo test --workspace --all-targets "$@"
