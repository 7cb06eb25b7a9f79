#!/usr/bin/env bash
# A Rimer cluster on loopback: N replicas (`python -m service`, each with its own data directory)
# behind nginx, which routes each series to its owner by `hash $series_id consistent`.
#
#   deploy/local.sh up N        replicas 0..N-1 running (missing or dead ones started), the proxy
#                               over exactly them (started, or reloaded); returns once every one
#                               answers /readyz; the proxy's base URL is the last line printed
#   deploy/local.sh replicas N  replicas 0..N-1 running, the proxy left as it is (scaling: start
#                               the new replicas, move the series, then `up N`)
#   deploy/local.sh pause       the proxy refuses changes (503) while series move; reads and
#                               stateless forecasts go on.  `resume` lets them through again
#   deploy/local.sh urls [N]    the replicas' URLs, comma-separated (deploy/rebalance.py's
#                               --from/--to); default: those the proxy routes to
#   deploy/local.sh down        stop the proxy and every replica (their data stays)
#   deploy/local.sh status      what runs
#
# Environment: RIMER_CLUSTER_DIR (default ./.cluster: pid files, logs, data-<i>/, nginx.conf),
# RIMER_CLUSTER_PORT (the proxy's port, default 8100; replica i listens on it + 1 + i),
# PYTHON (default .venv/bin/python, else python3), RIMER_REPLICA_ARGS (more flags for every
# replica, e.g. "--device cpu --fsync interval"). nginx comes from Debian's packages: installed
# with apt-get when missing (as root; otherwise install it yourself). Safe to rerun.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${RIMER_CLUSTER_DIR:-$ROOT/.cluster}"
PORT="${RIMER_CLUSTER_PORT:-8100}"
HOST=127.0.0.1
export PATH="$PATH:/usr/sbin:/sbin"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi

die() { echo "local.sh: $*" >&2; exit 1; }
replica_port() { echo $((PORT + 1 + $1)); }
alive() {  # $1: pid file; its process runs (a zombie, killed but not reaped yet, does not)
  local pid
  [ -f "$1" ] && pid=$(cat "$1") && kill -0 "$pid" 2>/dev/null || return 1
  [ ! -r "/proc/$pid/stat" ] || [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

# GET a URL; 0 if it answered 200 (python, so curl is not needed)
ok() {
  "$PY" - "$1" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
}

ensure_nginx() {
  command -v nginx >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    die "nginx is not installed; install Debian's package (apt-get install nginx-light) as root"
  fi
  echo "installing nginx (Debian's nginx-light)..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >&2 \
    || die "apt-get install nginx-light failed"
  command -v nginx >/dev/null 2>&1 || die "nginx is still not on PATH after installing it"
}

start_replica() {  # $1: index
  local i=$1 port
  port=$(replica_port "$i")
  if alive "$DIR/replica-$i.pid"; then return 0; fi
  mkdir -p "$DIR/data-$i"
  # shellcheck disable=SC2086  # RIMER_REPLICA_ARGS is a list of flags
  (cd "$ROOT" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec nohup "$PY" -m service \
     --host "$HOST" --port "$port" --data-dir "$DIR/data-$i" --replica-name "$HOST:$port" \
     ${RIMER_REPLICA_ARGS:-} >>"$DIR/replica-$i.log" 2>&1 </dev/null) &
  echo $! >"$DIR/replica-$i.pid"
  echo "replica $i: started on $HOST:$port (pid $!, log $DIR/replica-$i.log)" >&2
}

wait_ready() {  # $1: index; up to 180 s (weights load, the log is replayed)
  local i=$1 port deadline
  port=$(replica_port "$i")
  deadline=$((SECONDS + 180))
  until ok "http://$HOST:$port/readyz"; do
    alive "$DIR/replica-$i.pid" || die "replica $i exited; its log ($DIR/replica-$i.log) ends:
$(tail -n 20 "$DIR/replica-$i.log" 2>/dev/null)"
    [ $SECONDS -lt $deadline ] || die "replica $i not ready after 180 s ($DIR/replica-$i.log)"
    sleep 0.3
  done
}

replicas() {  # $1: N
  local n=$1 i
  mkdir -p "$DIR"
  for ((i = 0; i < n; i++)); do start_replica "$i"; done
  for ((i = 0; i < n; i++)); do wait_ready "$i"; done
}

write_conf() {  # $1: N; pause state from $DIR/paused
  local n=$1 i servers="" ring="" user="" write_gate=""
  for ((i = 0; i < n; i++)); do
    servers+="        server $HOST:$(replica_port "$i") max_fails=0;"$'\n'
    ring+="${ring:+,}\\\"$HOST:$(replica_port "$i")\\\""
  done
  [ "$(id -u)" -eq 0 ] && user="user root;"  # workers as the caller (as without root)
  if [ -f "$DIR/paused" ]; then
    write_gate='if ($rimer_change) { return 503 '"'"'{"detail": "the cluster is paused while series move between replicas; retry later", "field": null}'"'"'; }'
  fi
  mkdir -p "$DIR/nginx-tmp"
  cat >"$DIR/nginx.conf.new" <<EOF
# generated by deploy/local.sh for $n replica(s): do not edit (rerun \`deploy/local.sh up $n\`)
$user
worker_processes 1;
pid $DIR/nginx.pid;
error_log $DIR/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $DIR/nginx-tmp/body;
    proxy_temp_path $DIR/nginx-tmp/proxy;
    fastcgi_temp_path $DIR/nginx-tmp/fastcgi;
    uwsgi_temp_path $DIR/nginx-tmp/uwsgi;
    scgi_temp_path $DIR/nginx-tmp/scgi;

    # The key a request is routed on: the series id in its path (nginx has decoded %XX in
    # \$uri); for a bulk POST /series/append, the X-Rimer-Series header (rimer_client splits a
    # bulk by owner and names one of its series there); empty (POST /forecast, /models): round
    # robin. Exact strings match before regular expressions.
    map \$uri \$series_id {
        /series/append                                                 \$http_x_rimer_series;
        ~^/series/(?<sid>[^/]+)(/append|/forecast|/plot|/export|/import)?\$  \$sid;
        default                                                        "";
    }
    map \$request_method \$rimer_change { GET 0; HEAD 0; default 1; }

    upstream rimer {
        hash \$series_id consistent;  # ketama: rimer_client.Ring computes the same owner
        # max_fails=0: a replica that is down is never taken out of the ring (which would send
        # its series to another replica): its series get 502 until it is back
$servers        keepalive 64;
    }

    server {
        listen $HOST:$PORT;
        client_max_body_size 64m;  # the service's --max-body-bytes
        proxy_read_timeout 120s;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_next_upstream off;  # never retry a series' request on another replica
        default_type application/json;

        location = /series/append {
            if (\$http_x_rimer_series = "") {
                return 400 '{"detail": "a bulk append through the cluster proxy must hold the series of one replica and name one of them in the X-Rimer-Series header: split it by owner (rimer_client: Client(url, ring=proxy)), or use POST /series/{id}/append", "field": "series"}';
            }
            $write_gate
            proxy_pass http://rimer;
        }
        location = /series {
            return 501 '{"detail": "each replica lists its own series: ask the replicas (deploy/local.sh urls)", "field": "series"}';
        }
        location = /cluster/ring {
            return 200 '{"hash": "nginx-consistent", "servers": [$ring]}';
        }
        location = /proxy-healthz {
            default_type text/plain;
            return 200 "ok\n";
        }
        location = /forecast {
            proxy_pass http://rimer;  # stateless: round robin
        }
        location / {
            $write_gate
            proxy_pass http://rimer;
        }
    }
}
EOF
  mv "$DIR/nginx.conf.new" "$DIR/nginx.conf"
  echo "$n" >"$DIR/replicas"
}

proxy() {  # start nginx, or reload it with the new configuration
  nginx -t -q -p "$DIR" -e "$DIR/nginx-error.log" -c "$DIR/nginx.conf" \
    || die "nginx refused $DIR/nginx.conf (see above)"
  if alive "$DIR/nginx.pid"; then
    nginx -p "$DIR" -e "$DIR/nginx-error.log" -c "$DIR/nginx.conf" -s reload
    sleep 0.5  # (the old workers finish their requests; new ones take the new ring)
  else
    nginx -p "$DIR" -e "$DIR/nginx-error.log" -c "$DIR/nginx.conf"
  fi
  local deadline=$((SECONDS + 20))
  until ok "http://$HOST:$PORT/proxy-healthz"; do
    [ $SECONDS -lt $deadline ] || die "the proxy did not answer on $HOST:$PORT ($DIR/nginx-error.log)"
    sleep 0.2
  done
}

stop_pid() {  # $1: pid file; TERM (a clean shutdown writes a snapshot), KILL after 30 s
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
}

urls() {  # $1: N (default: the proxy's)
  local n=${1:-$(cat "$DIR/replicas" 2>/dev/null || echo 0)} i out=""
  [ "$n" -ge 1 ] || die "no cluster in $DIR (run deploy/local.sh up N)"
  for ((i = 0; i < n; i++)); do out+="${out:+,}http://$HOST:$(replica_port "$i")"; done
  echo "$out"
}

cmd=${1:-}
case "$cmd" in
  up)
    n=${2:-}
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "usage: deploy/local.sh up N (N >= 1)"
    ensure_nginx
    replicas "$n"
    for f in "$DIR"/replica-*.pid; do  # replicas beyond N keep running: their series must move first
      [ -e "$f" ] || continue
      i=${f##*/replica-}; i=${i%.pid}
      if [ "$i" -ge "$n" ] && alive "$f"; then
        echo "local.sh: replica $i still runs outside the proxy's ring: move its series " \
             "(python -m deploy.rebalance), then stop it (kill \$(cat $f))" >&2
      fi
    done
    write_conf "$n"
    proxy
    for ((i = 0; i < n; i++)); do wait_ready "$i"; done
    ok "http://$HOST:$PORT/readyz" || die "the proxy does not reach the replicas"
    echo "cluster: $n replica(s) ($(urls "$n")) behind the proxy$([ -f "$DIR/paused" ] && echo ', changes paused')" >&2
    echo "http://$HOST:$PORT"
    ;;
  replicas)
    n=${2:-}
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "usage: deploy/local.sh replicas N"
    replicas "$n"
    urls "$n"
    ;;
  pause | resume)
    [ -f "$DIR/replicas" ] || die "no cluster in $DIR (run deploy/local.sh up N)"
    if [ "$cmd" = pause ]; then touch "$DIR/paused"; else rm -f "$DIR/paused"; fi
    write_conf "$(cat "$DIR/replicas")"
    proxy
    echo "the proxy $([ "$cmd" = pause ] && echo refuses || echo accepts) changes" >&2
    ;;
  urls)
    urls "${2:-}"
    ;;
  down)
    if alive "$DIR/nginx.pid"; then
      nginx -p "$DIR" -e "$DIR/nginx-error.log" -c "$DIR/nginx.conf" -s quit || true
      for _ in $(seq 100); do alive "$DIR/nginx.pid" || break; sleep 0.1; done
    fi
    for f in "$DIR"/replica-*.pid; do [ -e "$f" ] && stop_pid "$f"; done
    rm -f "$DIR/replicas" "$DIR/paused"
    echo "cluster in $DIR stopped (data kept in $DIR/data-*)" >&2
    ;;
  status)
    alive "$DIR/nginx.pid" && echo "proxy: http://$HOST:$PORT ($(cat "$DIR/replicas" 2>/dev/null) replicas)" \
      || echo "proxy: not running"
    for f in "$DIR"/replica-*.pid; do
      [ -e "$f" ] || continue
      i=${f##*/replica-}; i=${i%.pid}
      echo "replica $i: http://$HOST:$(replica_port "$i") $(alive "$f" && echo running || echo dead)"
    done
    ;;
  *)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
