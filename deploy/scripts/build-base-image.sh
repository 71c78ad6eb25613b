#!/usr/bin/env bash
# Build a local stand-in for the official slim Python image when no registry can be
# pulled from: a minimal Debian bookworm (Python 3.11, venv, CA certificates) made with
# debootstrap from the Debian mirror apt already uses, imported into podman.
# Cached: does nothing when the image already exists (pass --force to rebuild).
set -euo pipefail
IMAGE="${BASE_IMAGE:-localhost/mcp-p2p-pybase:bookworm}"
SUITE=bookworm
if [ "${1:-}" != "--force" ] && podman image exists "$IMAGE"; then
  echo "base image $IMAGE present (cached)"
  exit 0
fi
mirror_from_apt() {
  # deb822 sources first (Debian 12 default), then the one-line format.
  local uri
  uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 || true)
  if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR="${DEBIAN_MIRROR:-$(mirror_from_apt)}"
ROOTFS=$(mktemp -d /var/tmp/mcp-p2p-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "building base image $IMAGE with debootstrap ($SUITE from $MIRROR)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { tail -n 30 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
# Trim what a container never uses: apt lists and caches, docs, man pages, locales.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/*
tar -C "$ROOTFS" -c . | podman import --quiet \
  --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$IMAGE" >/dev/null
echo "base image $IMAGE built"
