#!/usr/bin/env bash
# `make test` opens the sidecar's dashboard in a real browser: Debian's chromium, driven by Playwright for
# Python with executable_path pointing at it (Playwright never downloads a browser here).  Installs the
# package with apt-get when run as root on Debian/Ubuntu (as CI does); otherwise says what to do, and the
# browser test fails with that reason.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing chromium (the dashboard's browser test, tests/test_dashboard_browser.py)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
  command -v chromium >/dev/null 2>&1 && exit 0
fi
echo "warning: Debian's chromium is not installed; the dashboard's browser test needs it ('sudo apt-get install chromium')" >&2
