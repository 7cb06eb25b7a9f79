#!/usr/bin/env bash
# Stand-in base images for a machine whose Docker engine reaches no image registry (the
# development machines reach Debian's and PyPI's mirrors only). Each is built from Debian's
# packages and tagged exactly as the Dockerfiles and docker-compose.yml name the official images,
# so `docker build` and `docker compose up` run unchanged. They are NOT the official images:
#
#   python:3.11-slim                       Debian bookworm (minbase) + Debian's python3 (3.11),
#                                          pip and venv; python/pip linked in /usr/local/bin as
#                                          in the official image; the host's CA bundle.
#   prom/prometheus:v3.5.0                 Debian bookworm's prometheus package (2.42), laid out
#                                          like the official image (ENTRYPOINT /bin/prometheus,
#                                          USER nobody, WORKDIR /prometheus, /etc/prometheus).
#   nvidia/cuda:12.8.1-runtime-ubuntu24.04 Debian bookworm (minbase) with apt usable: NO CUDA and
#                                          not Ubuntu (Ubuntu's archive is not reachable). Only
#                                          lets the GPU Dockerfile's steps be run; never deploy it.
#   grafana/grafana:*                      none: Grafana is not in Debian's repositories and no
#                                          reachable registry ships it (docker/smoke.sh skips it).
#
# Usage (as root, dockerd running):  docker/standins/build.sh [python|prometheus|cuda|all]
# Needs debootstrap (apt-get install debootstrap). The root filesystems and tarballs go under
# $STANDIN_CACHE (default /var/tmp/rimer-standins), never into the repository.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${STANDIN_CACHE:-/var/tmp/rimer-standins}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
BASE_TAG=rimer-standin/debian:bookworm
NICE="nice -n 10"
what="${1:-all}"
mkdir -p "$CACHE"

log() { echo "[standins] $*"; }

base() {  # a minimal Debian bookworm, imported once as $BASE_TAG
  if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then log "$BASE_TAG exists"; return; fi
  local root="$CACHE/rootfs-$SUITE"
  if [ ! -x "$root/usr/bin/python3.11" ]; then
    rm -rf "$root"
    log "debootstrap $SUITE (minbase + python3) into $root"
    $NICE debootstrap --variant=minbase \
      --include=ca-certificates,python3,python3-pip,python3-venv \
      "$SUITE" "$root" "$MIRROR"
  fi
  # The host's CA bundle: pip and apt inside builds reach the registries through the same
  # TLS-terminating mirror/proxy as the host does.
  cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
  # Keep apt usable in derived images, small otherwise.
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
  log "docker import -> $BASE_TAG"
  tar -C "$root" -c . | $NICE docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' - "$BASE_TAG"
}

build() {  # build <tag> <dockerfile in standins/>
  log "docker build $1 (docker/standins/$2)"
  $NICE docker build --network host -f "$HERE/$2" -t "$1" "$HERE"
}

case "$what" in
  python) base; build python:3.11-slim Dockerfile.python ;;
  prometheus) base; build prom/prometheus:v3.5.0 Dockerfile.prometheus ;;
  cuda) base; build nvidia/cuda:12.8.1-runtime-ubuntu24.04 Dockerfile.cuda ;;
  base) base ;;
  all)
    base
    build python:3.11-slim Dockerfile.python
    build prom/prometheus:v3.5.0 Dockerfile.prometheus
    build nvidia/cuda:12.8.1-runtime-ubuntu24.04 Dockerfile.cuda
    ;;
  *) echo "usage: $0 [python|prometheus|cuda|base|all]" >&2; exit 2 ;;
esac
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' \
  | grep -E '^(python:3.11-slim|prom/prometheus|nvidia/cuda|rimer-standin)' || true
