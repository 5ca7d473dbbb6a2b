#!/usr/bin/env bash
# Where a train step spends its instructions, per function: one `bench train` step under
# valgrind's callgrind (instruction counts are repeatable on this machine, whatever else runs;
# `perf` is not available here), then the top functions by self cost.
#
#   tools/profile_train_step.sh [MODEL] [BATCH]      # default efficientnet_lite0, 4
#
# Needs valgrind (Debian's package) and a release build. Takes ~3 min for Lite0 at batch 4.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-efficientnet_lite0}"
batch="${2:-4}"
bin="${CARGO_TARGET_DIR:-$HOME/.cache/visual-search/target}/release/visual-search"
command -v valgrind >/dev/null || ./tools/apt_install_missing.sh valgrind
[ -x "$bin" ] || cargo build --release -p visual-search
out="$(mktemp -d)/callgrind.out"
valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" bench train \
  --models "$model" --devices flex --no-baseline --batch "$batch" --steps 1 --warmup 0 \
  >/dev/null 2>&1
callgrind_annotate --inclusive=no "$out" | sed -n '/file:function/,$p' | head -25
echo "full profile: $out (callgrind_annotate --tree=caller $out)"
