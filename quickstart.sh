#!/usr/bin/env bash
# The main job on registry data: installs what is missing, builds, imports Fashion-MNIST
# (Debian's dataset-fashion-mnist) into the challenge's formats and validates it.
set -euo pipefail
cd "$(dirname "$0")"
./tools/install_system_deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/visual-search/target}"
cargo build --release -p visual-search
vs="$CARGO_TARGET_DIR/release/visual-search"
data="${QUICKSTART_DIR:-data/fashion-mnist}"
"$vs" data import fashion-mnist --out "$data" --max-per-class "${QUICKSTART_PER_CLASS:-300}"
"$vs" data check --dataset-dir "$data"
