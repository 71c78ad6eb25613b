#!/usr/bin/env bash
# `make test` checks the systemd units with `systemd-analyze verify` (Debian package: systemd).
# Installs it with apt-get when run as root on Debian/Ubuntu; otherwise says so, and the test
# that needs it is skipped with that reason.
set -euo pipefail
command -v systemd-analyze >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing systemd (for systemd-analyze verify of deploy/systemd/*.service)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
  command -v systemd-analyze >/dev/null 2>&1 && exit 0
fi
echo "warning: systemd-analyze is not available; the systemd unit checks will be skipped (install the 'systemd' package)" >&2
