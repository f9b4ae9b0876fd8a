#!/usr/bin/env bash
# System (Debian) packages the tests need, installed only when missing: safe to run every time.
# Run as root (CI, these machines) or with sudo; without either it only reports what is missing.
set -euo pipefail

# RTSP camera door tests: GStreamer's RTSP server, driven by the system Python (python3-gi),
# serves an H.264 clip that PyAV (in the venv) decodes.
PACKAGES=(
  # The AMQP door's tests talk to a real RabbitMQ (.ci/run starts it when it is not running).
  rabbitmq-server
  gir1.2-gst-rtsp-server-1.0
  python3-gi
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-ugly
  gstreamer1.0-tools
  # Web pages' browser tests (tests/web): Debian's headless Chromium, driven by Playwright,
  # and a readable font for the screenshots.
  chromium
  fonts-dejavu-core
  # Fault injection (tests/faults/test_clocks.py): a role's clock hours off, by LD_PRELOAD.
  libfaketime
)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing system packages: ${missing[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "not root and no sudo: install these yourself: ${missing[*]}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}" >&2 \
  || { "${SUDO[@]}" apt-get update -q -o DPkg::Lock::Timeout=600 >&2 && \
       "${SUDO[@]}" apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}" >&2; }
