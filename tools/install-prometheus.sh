#!/usr/bin/env bash
# Install Debian's `prometheus` package (brings `prometheus` and `promtool`)
# when either binary is missing. Needs root or passwordless sudo; otherwise
# says what to do and fails, because the test suite needs a real Prometheus.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "prometheus/promtool not found and no root to install them." >&2
    echo "Install Debian's 'prometheus' package (apt-get install prometheus) and retry." >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "prometheus/promtool not found and apt-get is unavailable; install Prometheus >= 2.37 by hand." >&2
    exit 1
fi
echo "installing Debian's prometheus package (prometheus, promtool)..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package may start a system service on :9090; tests use their own servers on
# random loopback ports, so stop it where a service manager is present.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl stop prometheus || true
fi
prometheus --version | head -1 >&2
