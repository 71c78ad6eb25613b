#!/usr/bin/env bash
# Node.js 22 for the tests that drive real JavaScript peers and clients (the MCP conformance suite, the
# TypeScript SDK, js-libp2p). The machine's Node may be older (20 here), so the binary comes from the npm
# registry's node-linux-<arch> package, installed into the project's own folder (.tools/node); nothing is
# installed system-wide. Prints the bin directory to put first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
NODE_VERSION=${NODE_VERSION:-22.23.5}
dest=.tools/node
bin="$dest/node_modules/node-linux-$(uname -m | sed 's/x86_64/x64/;s/aarch64/arm64/')/bin"
if [ -x "$bin/node" ] && [ "$("$bin/node" --version)" = "v$NODE_VERSION" ]; then
  realpath "$bin"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing npm (to fetch Node $NODE_VERSION from the npm registry)" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  else
    echo "error: npm is needed to fetch Node $NODE_VERSION from the npm registry (install npm)" >&2
    exit 1
  fi
fi
arch=$(uname -m | sed 's/x86_64/x64/;s/aarch64/arm64/')
mkdir -p "$dest"
echo "setup: installing Node $NODE_VERSION into $dest (npm package node-linux-$arch)" >&2
npm install --silent --no-audit --no-fund --prefix "$dest" "node-linux-$arch@$NODE_VERSION" >&2
"$bin/node" --version >/dev/null
realpath "$bin"
