#!/usr/bin/env bash
# Installs Debian's prometheus package (prometheus and promtool) when
# promtool is not on PATH. Used by `make rules` and scripts/demo.sh.
set -euo pipefail
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-prometheus: promtool is missing; run as root or: apt-get install -y prometheus" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends prometheus >/dev/null; then
  apt-get update >/dev/null
  apt-get install -y --no-install-recommends prometheus >/dev/null
fi
# The package's service is not wanted: tests and the demo start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi
command -v promtool >/dev/null
