#!/usr/bin/env bash
# `make test-deploy`: build the image and run the deployment files for real with podman
# (Kubernetes pod via `podman kube play`, the compose file via podman-compose, the systemd
# units as plain processes), then an MCP call through each. See deploy/README.md.
#
# Installs what it needs (podman, runc, debootstrap with apt-get when root; podman-compose
# into .venv). Exits non-zero, saying why, when this machine cannot run containers.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=.venv/bin/python
export CONTAINERS_CONF="$ROOT/deploy/scripts/containers.conf"
export BASE_IMAGE="${BASE_IMAGE:-localhost/mcp-p2p-pybase:bookworm}"
export MCP_P2P_TEST_IMAGE="${MCP_P2P_TEST_IMAGE:-localhost/mcp-p2p:latest}"
START=$(date +%s.%N)
TIMINGS=()
MCP_P2P_FIGURES=$(mktemp)  # figures the tests measure (harness.record), printed at the end
export MCP_P2P_FIGURES
trap 'rm -f "$MCP_P2P_FIGURES"' EXIT

elapsed() { awk -v now="$(date +%s.%N)" -v since="$1" 'BEGIN { printf "%6.1f s", now - since }'; }

phase() {  # phase NAME COMMAND...: run one step, remember how long it took, return its status
  local name=$1 t0 rc=0
  shift
  echo "== test-deploy: $name"
  t0=$(date +%s.%N)
  "$@" || rc=$?
  TIMINGS+=("$(printf '%-30s %s' "$name" "$(elapsed "$t0")")")
  return $rc
}

cannot() {
  echo "test-deploy: this machine cannot run the deployment tests: $*" >&2
  exit 1
}

install_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing ${missing[*]} with apt-get"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      cannot "${missing[*]} missing; install them (Debian: apt-get install podman runc debootstrap)"
    fi
  fi
  if ! "$PY" -c 'import podman_compose' 2>/dev/null; then
    "$PY" -m pip install --quiet --disable-pip-version-check -e '.[deploy]' 2>&1 | grep -v 'is ignored: it is neither' || true
  fi
  "$PY" -c 'import podman_compose' || cannot "podman-compose could not be installed into .venv"
}

check_runtime() {
  local out
  if ! out=$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}' 2>&1); then
    cannot "podman info failed: $out"
  fi
  echo "podman $(podman version --format '{{.Client.Version}}') ($out)"
  if ! out=$(podman run --rm --network=none "$BASE_IMAGE" python3 -c 'print("ok")' 2>&1 | grep -v systemd); then
    cannot "podman cannot start a container: $out"
  fi
}

build_image() {
  # --layers=false: no intermediate images are kept (the sources change on every commit, so
  # the builder's layers would rarely be reused); the image this replaces is removed.
  local log previous
  log=$(mktemp)
  previous=$(podman image inspect --format '{{.Id}}' "$MCP_P2P_TEST_IMAGE" 2>/dev/null || true)
  if ! podman build --format docker --network=none --layers=false --build-arg "BASE_IMAGE=$BASE_IMAGE" \
      -f deploy/Dockerfile -t "$MCP_P2P_TEST_IMAGE" . >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$MCP_P2P_TEST_IMAGE")" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
  echo "image $MCP_P2P_TEST_IMAGE: $(podman image inspect "$MCP_P2P_TEST_IMAGE" --format '{{.Size}}' |
    awk '{printf "%.0f MB", $1 / 1000 / 1000}') (base $BASE_IMAGE: $(podman image inspect "$BASE_IMAGE" \
    --format '{{.Size}}' | awk '{printf "%.0f MB", $1 / 1000 / 1000}'))"
}

phase "tools" install_tools
phase "base image (debootstrap)" deploy/scripts/build-base-image.sh
phase "container runtime check" check_runtime
phase "wheelhouse" deploy/scripts/fill-wheelhouse.sh
phase "image build" build_image
status=0
phase "pod, compose, units (pytest)" "$PY" -m pytest deploy/tests -p no:cacheprovider -o addopts="" -ra -v \
  --durations=8 || status=$?
echo "== test-deploy figures"
cat "$MCP_P2P_FIGURES"
echo "== test-deploy timings"
printf '%s\n' "${TIMINGS[@]}"
printf '%-30s %s\n' "total" "$(elapsed "$START")"
exit $status
