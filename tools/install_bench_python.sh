#!/usr/bin/env bash
# The Python the benchmarks' baselines and the fixture scripts run (never the product): a venv
# with the reference libraries at the versions BENCHMARKS.md was measured with — PyTorch,
# torchvision, timm, open_clip, pytorch-metric-learning, ONNX + ONNX Runtime, faiss, pyarrow.
# All from PyPI (the default torch wheel, which also pulls its CUDA libraries: about 3 GB).
# Idempotent: pip leaves what is already installed at these versions alone. Installs only into
# a venv it made (or the project's own cache folder); another existing folder is refused.
#
#   tools/install_bench_python.sh            # → ~/.cache/visual-search/venv
#   VISUAL_SEARCH_VENV=/some/dir tools/install_bench_python.sh
#
# Then pass `--python <venv>/bin/python` to `visual-search bench …` (or set
# VISUAL_SEARCH_PYTHON) and run the tools/make_*_fixtures.py scripts with it.
set -euo pipefail
cache="${XDG_CACHE_HOME:-$HOME/.cache}/visual-search"
venv="${VISUAL_SEARCH_VENV:-$cache/venv}"
marker="$venv/.made-by-visual-search"
if [ -e "$venv" ] && [ ! -e "$marker" ] && [ "$venv" != "$cache/venv" ]; then
  # Pinned installs would up- or downgrade someone else's packages.
  echo "refusing to install into $venv: this script did not make it (no $marker)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -c 'import ensurepip' 2>/dev/null || "$(dirname "$0")/apt_install_missing.sh" python3-venv
  python3 -m venv "$venv"
  touch "$marker"
fi
"$venv/bin/python" -m pip install -q \
  torch==2.9.0 torchvision==0.24.0 timm==1.0.31 open_clip_torch==3.3.0 \
  pytorch-metric-learning==2.9.0 numpy==2.4.6 pillow==13.0.0 pyyaml==6.0.4 safetensors==0.8.0 \
  onnx==1.23.2 onnxruntime==1.32.0 faiss-cpu==1.13.2 pyarrow==22.0.0
"$venv/bin/python" -c 'import torch, timm, open_clip, pytorch_metric_learning, onnxruntime, faiss, pyarrow; print("ready:", torch.__version__)'
echo "$venv/bin/python"
