#!/usr/bin/env bash
# Installs the given Debian packages with apt (via sudo when not root); nothing when none given.
# The callers decide what is missing: install_system_deps.sh, install_test_deps.sh.
set -euo pipefail
[ $# -gt 0 ] || exit 0
echo "installing: $*"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@"
