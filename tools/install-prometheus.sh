#!/usr/bin/env bash
# Install Debian's `prometheus` package (brings `prometheus` and `promtool`)
# and `prometheus-alertmanager` (brings the Alertmanager and `amtool`, used to
# check and exercise alertmanager.yml) when any of those binaries is missing.
# Needs root or passwordless sudo; otherwise says what to do and fails,
# because the test suite needs a real Prometheus and Alertmanager.
set -euo pipefail
have_alertmanager() {
    command -v amtool >/dev/null 2>&1 &&
        { command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1; }
}
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && have_alertmanager; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "prometheus/promtool/amtool not found and no root to install them." >&2
    echo "Install Debian's 'prometheus' and 'prometheus-alertmanager' packages" >&2
    echo "(apt-get install prometheus prometheus-alertmanager) and retry." >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "prometheus/promtool/amtool not found and apt-get is unavailable; install Prometheus >= 2.37" >&2
    echo "and Alertmanager >= 0.25 (with amtool) by hand." >&2
    exit 1
fi
echo "installing Debian's prometheus (prometheus, promtool) and prometheus-alertmanager (alertmanager, amtool)..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null
# The packages may start system services on :9090 and :9093; tests use their
# own servers on random loopback ports, so stop them where a service manager is present.
if command -v systemctl >/dev/null 2>&1; then
    for service in prometheus prometheus-alertmanager; do
        if systemctl is-active --quiet "$service" 2>/dev/null; then
            $SUDO systemctl stop "$service" || true
        fi
    done
fi
prometheus --version | head -1 >&2
amtool --version 2>&1 | head -1 >&2
