#!/usr/bin/env bash
# ONNX Runtime's shared library for `--device ort`, from the onnxruntime PyPI wheel (MIT; the
# wheel ships libonnxruntime.so): downloaded with pip (no install, no Python needed at run time)
# and unpacked into ~/.cache/visual-search/onnxruntime, where visual-search looks for it.
# ORT_DYLIB_PATH overrides the location at run time. Idempotent.
set -euo pipefail
version="${ONNXRUNTIME_VERSION:-1.32.0}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/visual-search"
dest="$cache/onnxruntime"
if [ -f "$dest/libonnxruntime.so.$version" ]; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps -q -d "$tmp" "onnxruntime==$version"
mkdir -p "$dest"
python3 - "$tmp" "$dest" "$version" <<'PY'
import glob, os, sys, zipfile
tmp, dest, version = sys.argv[1:]
wheel = glob.glob(os.path.join(tmp, "onnxruntime-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if base.startswith("libonnxruntime.so") or base == "libonnxruntime_providers_shared.so":
            out = os.path.join(dest, base)
            with z.open(name) as src, open(out + ".part", "wb") as dst:
                dst.write(src.read())
            os.replace(out + ".part", out)
PY
test -f "$dest/libonnxruntime.so.$version" && echo "onnxruntime: $dest/libonnxruntime.so.$version"
