#!/usr/bin/env bash
# Fill deploy/wheelhouse/ on this host with wheels for every runtime dependency (and the
# setuptools the project builds with), so the image builds with no network at all:
# the Dockerfile installs with `pip install --no-index --find-links`.  Wheels that PyPI only
# ships as source (fastecdsa, for libp2p) are compiled here, which needs gcc and the GMP
# headers on the host (scripts/ensure-build-deps.sh) and a Python of the image's version.
# Cached: skipped while the dependencies, the build requirements and the Python version are
# those of the last fill.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
DIR=deploy/wheelhouse
STAMP="$DIR/.filled-for"
want=$("$PY" -c 'import json, sys, tomllib
meta = tomllib.load(open("pyproject.toml", "rb"))
print(json.dumps([meta["project"]["dependencies"], meta["build-system"]["requires"], sys.version_info[:2]]))' |
  sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "wheelhouse $DIR up to date ($(find "$DIR" -name '*.whl' | wc -l) wheels, cached)"
  exit 0
fi
# pip.conf on some machines names find-links folders that do not exist; pip warns per package.
quiet_pip() { grep -v "is ignored: it is neither a file nor a directory" || true; }
find "$DIR" -name '*.whl' -delete
"$PY" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$DIR" . 2>&1 | quiet_pip
"$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --dest "$DIR" "setuptools>=68" 2>&1 | quiet_pip
# The project itself is built from source inside the image, never taken from here.
rm -f "$DIR"/mcp_p2p-*.whl
echo "$want" >"$STAMP"
echo "wheelhouse $DIR filled ($(find "$DIR" -name '*.whl' | wc -l) wheels)"
