#!/usr/bin/env bash
# Installs the Debian packages named (the Makefile's RUN_PACKAGES for `make run` and `make setup`,
# SYSTEM_PACKAGES for `make test`: python3-venv, and what the tests start for real on loopback):
# only what is missing, so a machine that has them is not touched.
set -euo pipefail
need=()
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
