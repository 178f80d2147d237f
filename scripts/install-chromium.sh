#!/usr/bin/env bash
# Installs Chromium for the browser tests (tests/web.rs) when /usr/bin/chromium is
# missing: apt on Debian (CI runs as root on a clean machine). Quiet and quick when it is
# already there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
command -v apt-get >/dev/null 2>&1 || { echo "install-chromium.sh: error: /usr/bin/chromium is missing and apt-get is not available; install Chromium by hand" >&2; exit 1; }
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-chromium.sh: error: /usr/bin/chromium is missing; run as root (or with sudo) to install it" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium >/dev/null
[ -x /usr/bin/chromium ] || { echo "install-chromium.sh: error: apt-get installed chromium but /usr/bin/chromium is missing" >&2; exit 1; }
