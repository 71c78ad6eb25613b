#!/usr/bin/env bash
# Make sure what `pip install libp2p` compiles against is present: libp2p pulls in
# fastecdsa, which builds from source and needs a C compiler and the GMP headers.
# Installs libgmp-dev with apt-get when we are root on Debian/Ubuntu; otherwise says what to do.
set -euo pipefail
have_gmp() { printf '#include <gmp.h>\n' | "${CC:-cc}" -E -x c - >/dev/null 2>&1; }
if ! command -v "${CC:-cc}" >/dev/null 2>&1; then
  echo "error: no C compiler found; libp2p's dependency fastecdsa must be compiled (install gcc)" >&2
  exit 1
fi
have_gmp && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing libgmp-dev (GMP headers, needed to build fastecdsa for libp2p)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgmp-dev >/dev/null
  have_gmp && exit 0
fi
echo "error: the GMP headers (gmp.h) are missing; libp2p's dependency fastecdsa needs them to build." >&2
echo "       install them, e.g. 'sudo apt-get install libgmp-dev' or 'sudo dnf install gmp-devel', then re-run make." >&2
exit 1
