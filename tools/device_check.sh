#!/usr/bin/env bash
# The one prepared check for a lent device machine: it measures, on that machine's CPU, the two
# goals this repository's machines could not — bf16 training at >= 1.5x our f32 step for
# EfficientNet-Lite0 and ConvNeXt-tiny (issue 16; needs AMX) and flex's ViT-B/32 forward against
# PyTorch folded + channels-last (issue 14; measured at 0.87x on an AVX-512 VM) — on 2 cores, as
# the issues' figures were taken, with PyTorch's baselines in the same run. Why the GPU itself is
# not exercised: tools/device_kit.sh.
#
# Here:   tools/device_kit.sh
# There:  device tool `run`, carry [".device-kit"], timeout_s 540, command
#         `bash tools/device_check.sh .device-kit`
# Output: $OUT/device_check.log (also printed). Each part has its own time limit, so a part that
# hangs or fails leaves the others their time; the whole run takes under 9 minutes, which leaves
# a 15-minute lease room for the machine's start and the transfers. A last part runs our
# `--device ort-cuda:0` if that machine's onnxruntime has the CUDA provider.
set -uo pipefail
kit="${1:-.device-kit}"
out="${OUT:-/tmp/device-check}"
mkdir -p "$out"
exec > >(tee "$out/device_check.log") 2>&1
part() { echo; echo "== $1 ($(date -u +%H:%M:%S))"; }

part "machine"
[ -f "$kit/KIT" ] || { echo "no kit at $kit: run tools/device_kit.sh here and carry .device-kit"; exit 1; }
echo "kit built from $(cat "$kit/KIT")"
lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket)' || true
flags=$(grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "CPU flags of interest: ${flags:-none}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python3 -c 'import torch; print("python3:", torch.__version__, "cuda available:", torch.cuda.is_available())'

part "setup"
vs=/tmp/visual-search
python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
  "$kit/visual-search.xz" "$vs" && chmod +x "$vs" || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$kit"/wheels/*.whl \
  && export PYTHONPATH=/tmp/site
export VISUAL_SEARCH_PYTHON=python3
# ONNX Runtime from that machine's own wheel, for bench embed's `ort` column.
ORT_DYLIB_PATH=$(python3 -c 'import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[0])' 2>/dev/null) \
  && export ORT_DYLIB_PATH && echo "onnxruntime: $ORT_DYLIB_PATH"
# Two cores for both sides, as in the issues' figures.
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
pin=""
command -v taskset > /dev/null && pin="taskset -c 0,1"
echo "pinned with: ${pin:-nothing (no taskset): threads limited to 2 only}"
"$vs" --version

part "issue 16: bf16 train steps against f32 on flex, with PyTorch eager f32 and bf16 autocast"
# Without AMX, flex refuses bf16 and PyTorch's bf16 is emulated (slower than f32): f32 only.
case " $flags " in
  *" amx_bf16 "*) precisions=f32,bf16; echo "AMX-BF16: flex's bf16 products run on AMX tiles" ;;
  *) precisions=f32; echo "no AMX-BF16 on this CPU: f32 only" ;;
esac
timeout 240 $pin "$vs" bench train --models efficientnet_lite0,convnext_tiny \
  --lite0-weights "$kit/lite0.pth" --devices flex --precisions "$precisions" \
  --dataset-dir "$kit/photos" --steps 3 --python python3
echo "exit status: $?"

part "issue 14: ViT-B/32 forward on flex against PyTorch folded + channels-last and ONNX Runtime"
timeout 150 $pin "$vs" bench embed --model vit_b32_clip --devices flex,ort --dtypes "$precisions" \
  --iters 4 --rounds 2 --dataset-dir "$kit/photos" --python python3
echo "exit status: $?"

part "issue 14: ONNX Runtime's CUDA execution provider (--device ort-cuda:0)"
# Runs only if that machine's onnxruntime is the GPU build; otherwise it shows the clean refusal.
providers=$(python3 -c 'import onnxruntime as o; print(" ".join(o.get_available_providers()))' 2>/dev/null)
echo "onnxruntime providers: ${providers:-none}"
if [[ " $providers " == *" CUDAExecutionProvider "* ]]; then
  timeout 60 "$vs" bench embed --model efficientnet_lite0 --weights "$kit/lite0.pth" \
    --devices ort-cuda:0 --batch 64 --iters 20 --no-baseline --dataset-dir "$kit/photos"
  echo "exit status: $?"
  # The same exported model.onnx from Python with the CUDA provider, batch 64: the baseline.
  timeout 45 python3 - <<'PY'
import glob, json, os, time
import numpy as np, onnxruntime as ort
def lite0_224(path):
    info = json.load(open(os.path.join(os.path.dirname(path), "export.json")))
    return info["model"] == "efficientnet_lite0" and info["preprocessing"]["size"] == 224
files = sorted((f for f in glob.glob(os.path.expanduser("~/.cache/visual-search/onnx/*/model.onnx"))
                if lite0_224(f)), key=os.path.getmtime)
sess = ort.InferenceSession(files[-1], providers=["CUDAExecutionProvider"])
name = sess.get_inputs()[0].name
x = np.random.rand(64, 3, 224, 224).astype(np.float32)
for _ in range(3):
    sess.run(None, {name: x})
t = time.perf_counter()
for _ in range(20):
    sess.run(None, {name: x})
print(f"Python ONNX Runtime, CUDA provider, {files[-1]}: {64 * 20 / (time.perf_counter() - t):.1f} img/s")
PY
else
  timeout 30 "$vs" embed --model efficientnet_lite0 --weights "$kit/lite0.pth" \
    --csv "$kit/photos/train.csv" --out /tmp/ort-cuda.npy --device ort-cuda:0
  echo "exit status: $? (expected non-zero with a message naming onnxruntime-gpu)"
fi

part "done"
