#!/usr/bin/env bash
# What the test suite needs beyond the build (called by test.sh): Chromium and Node.js for the
# web page's browser test, and playwright-core (pinned in tools/browser/package-lock.json) to
# drive it. Idempotent: installs nothing when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
./tools/apt_install_missing.sh ${need[@]+"${need[@]}"}
if [ ! -d tools/browser/node_modules/playwright-core ]; then
  (cd tools/browser && npm ci --no-audit --no-fund)
fi
