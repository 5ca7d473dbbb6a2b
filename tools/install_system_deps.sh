#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and run visual-search:
#   cmake, nasm          build libjpeg-turbo (vendored by the turbojpeg crate) with its SIMD code
#   pkg-config           C library discovery for -sys crates
#   dataset-fashion-mnist the quick-start's dataset (/usr/share/datasets/fashion-mnist)
# Idempotent: installs nothing when everything is present.
set -euo pipefail
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v nasm >/dev/null || need+=(nasm)
command -v pkg-config >/dev/null || need+=(pkg-config)
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
"$(dirname "$0")/apt_install_missing.sh" ${need[@]+"${need[@]}"}
