#!/usr/bin/env bash
# A Docker engine on a Debian bookworm machine whose only sources are Debian's and PyPI's mirrors
# (the development machines): Debian's docker.io (engine 20.10), debootstrap for build.sh, and the
# Compose v2 and buildx CLI plugins taken from Debian trixie's docker-compose and docker-buildx
# packages (bookworm has only Compose v1, which cannot read docker-compose.cpu.yml's `!reset`).
# The trixie packages are downloaded with a private apt configuration under $WORKDIR (the
# machine's own sources are not changed) and only their plugin binaries are installed, in
# /usr/local/libexec/docker/cli-plugins. Then dockerd is started in the background if none runs.
# Run as root:  docker/standins/engine.sh
set -euo pipefail
WORKDIR="${WORKDIR:-/var/tmp/trixie-apt}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PLUGINS=/usr/local/libexec/docker/cli-plugins

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
  docker.io debootstrap iptables ca-certificates curl python3

if ! docker compose version 2>/dev/null | grep -q 'v\?2\.'; then
  mkdir -p "$WORKDIR/lists/partial" "$WORKDIR/cache" "$WORKDIR/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main" \
    > "$WORKDIR/sources.list"
  O=(-o "Dir::Etc::SourceList=$WORKDIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$WORKDIR/lists" -o "Dir::Cache=$WORKDIR/cache")
  apt-get "${O[@]}" update -qq
  (cd "$WORKDIR/debs" && apt-get "${O[@]}" download docker-compose docker-buildx)
  mkdir -p "$PLUGINS" "$WORKDIR/x"
  for deb in "$WORKDIR"/debs/*.deb; do dpkg-deb -x "$deb" "$WORKDIR/x"; done
  install -m 0755 "$WORKDIR"/x/usr/libexec/docker/cli-plugins/docker-* "$PLUGINS/"
fi
docker compose version
docker buildx version || true

if ! docker info >/dev/null 2>&1; then
  mkdir -p /var/tmp/dockerlog
  nohup dockerd >/var/tmp/dockerlog/dockerd.log 2>&1 &
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker version --format 'client {{.Client.Version}}, engine {{.Server.Version}}'
