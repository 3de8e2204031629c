#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver, which the playground test drives with Selenium.
# Does nothing when both are present; needs root (apt-get). Safe to run by hand.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "[browser] chromium or chromedriver is missing; install them as root:" \
       "apt-get install -y chromium chromium-driver" >&2
  exit 1
fi
echo "[browser] installing chromium and chromium-driver (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }
