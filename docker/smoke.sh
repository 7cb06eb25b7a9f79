#!/usr/bin/env bash
# Smoke test of the Docker setup on a real engine (not part of CI): builds the service image,
# brings the compose stack up (service, Prometheus, Grafana), waits for /readyz, forecasts and
# appends, restarts the service container twice (`docker compose restart`, then `docker kill` +
# `docker compose up`) and checks that nothing was lost (series length and forecast identical),
# checks that Prometheus scraped the service and that every dashboard query is valid PromQL, that
# Grafana answers with the dashboard provisioned, and tears everything down.
#
#   docker/smoke.sh [cpu|gpu|auto]        (or RIMER_SMOKE_VARIANT; auto: gpu when nvidia-smi
#                                          sees a GPU and Docker has the nvidia runtime, else cpu)
# Environment:
#   RIMER_SMOKE_BUILD_ARGS  extra `docker build` arguments, e.g. behind a mirror with a local torch
#                           wheel in wheels/: "--network host --build-arg PIP_EXTRA_INDEX_URL="
#   RIMER_SMOKE_NO_BUILD=1  use the rimer-service image already there
#   RIMER_SMOKE_KEEP=1      leave the stack up at the end (default: `down -v`)
#   RIMER_SMOKE_PROJECT     compose project name (default rimer-smoke, apart from a real stack)
#   RIMER_HOST_PORT, PROMETHEUS_HOST_PORT, GRAFANA_HOST_PORT  host ports (default 18000, 19090,
#                           13000, so that a stack on the usual ports is not disturbed)
#   RIMER_SMOKE_READY_TIMEOUT  seconds to wait for /readyz (default 300)
# Needs docker with Compose >= 2.24.4 (the CPU override's `!reset`), curl and python3.
# Prints one PASS/FAIL/SKIP line per check and a summary; exits 1 if any check failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

VARIANT="${1:-${RIMER_SMOKE_VARIANT:-auto}}"
PROJECT="${RIMER_SMOKE_PROJECT:-rimer-smoke}"
export RIMER_HOST_PORT="${RIMER_HOST_PORT:-18000}"
export PROMETHEUS_HOST_PORT="${PROMETHEUS_HOST_PORT:-19090}"
export GRAFANA_HOST_PORT="${GRAFANA_HOST_PORT:-13000}"
export GRAFANA_ADMIN_PASSWORD="${GRAFANA_ADMIN_PASSWORD:-smoke-$$}"
READY_TIMEOUT="${RIMER_SMOKE_READY_TIMEOUT:-300}"
API="http://127.0.0.1:$RIMER_HOST_PORT"
PROM="http://127.0.0.1:$PROMETHEUS_HOST_PORT"
GRAF="http://127.0.0.1:$GRAFANA_HOST_PORT"
PASSES=0 FAILS=0 SKIPS=0
WORK="$(mktemp -d)"

pass() { PASSES=$((PASSES + 1)); echo "PASS: $*"; }
fail() { FAILS=$((FAILS + 1)); echo "FAIL: $*"; }
skip() { SKIPS=$((SKIPS + 1)); echo "SKIP: $*"; }
info() { echo "----- $*"; }
check() {  # check "description" command...: PASS if the command succeeds
  local what="$1"; shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
jget() {  # jget FILE EXPR: a Python expression of the parsed JSON `d`
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print($2)" "$1"
}

summary() {
  echo "===== smoke summary: $PASSES passed, $FAILS failed, $SKIPS skipped (variant $VARIANT)"
  if [ "$FAILS" -eq 0 ]; then echo "RESULT: PASS"; else echo "RESULT: FAIL"; fi
}
die() { fail "$*"; summary; exit 1; }

# ---------------------------------------------------------------- preflight
for tool in docker curl python3; do
  command -v "$tool" >/dev/null || die "preflight: $tool not found"
done
docker info >/dev/null 2>&1 || die "preflight: no Docker engine answers (is dockerd running?)"
compose_version="$(docker compose version --short 2>/dev/null)" \
  || die "preflight: the Docker Compose v2 plugin is missing (docker compose version)"
if ! python3 - "$compose_version" <<'EOF'
import re, sys
v = tuple(int(x) for x in re.findall(r"\d+", sys.argv[1])[:3])
sys.exit(0 if v >= (2, 24, 4) else 1)
EOF
then
  die "preflight: Compose $compose_version is older than 2.24.4 (docker-compose.cpu.yml uses !reset)"
fi
if [ "$VARIANT" = auto ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 \
     && docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then
    VARIANT=gpu
  else
    VARIANT=cpu
  fi
fi
case "$VARIANT" in
  gpu) FILES=(-f docker-compose.yml); DOCKERFILE=docker/Dockerfile.gpu; IMAGE=rimer-service:gpu ;;
  cpu) FILES=(-f docker-compose.yml -f docker-compose.cpu.yml); DOCKERFILE=docker/Dockerfile.cpu
       IMAGE=rimer-service:cpu ;;
  *) echo "usage: $0 [cpu|gpu|auto]" >&2; exit 2 ;;
esac
COMPOSE=(docker compose -p "$PROJECT" "${FILES[@]}")
info "variant $VARIANT, compose $compose_version, engine $(docker version --format '{{.Server.Version}}'), project $PROJECT"
info "ports: api $RIMER_HOST_PORT, prometheus $PROMETHEUS_HOST_PORT, grafana $GRAFANA_HOST_PORT"

teardown() {
  if [ "${RIMER_SMOKE_KEEP:-0}" = 1 ]; then
    info "RIMER_SMOKE_KEEP=1: leaving the stack up (${COMPOSE[*]} down -v)"
  else
    info "teardown"
    "${COMPOSE[@]}" down -v --remove-orphans >"$WORK/down.log" 2>&1 \
      && echo "stack removed (containers, network, volumes)" || cat "$WORK/down.log"
  fi
  rm -rf "$WORK"
}
trap teardown EXIT

# ---------------------------------------------------------------- static files
check "compose config parses (${FILES[*]})" "${COMPOSE[@]}" config -q
check "dashboard JSON parses" python3 -m json.tool docker/grafana/dashboards/rimer.json /dev/null

# ---------------------------------------------------------------- build
if [ "${RIMER_SMOKE_NO_BUILD:-0}" = 1 ]; then
  docker image inspect "$IMAGE" >/dev/null 2>&1 && pass "image $IMAGE present (not rebuilt)" \
    || die "RIMER_SMOKE_NO_BUILD=1 but there is no $IMAGE"
else
  info "docker build -f $DOCKERFILE -t $IMAGE ${RIMER_SMOKE_BUILD_ARGS:-} ."
  t=$(now)
  # shellcheck disable=SC2086  # RIMER_SMOKE_BUILD_ARGS is a list of arguments
  if docker build -f "$DOCKERFILE" -t "$IMAGE" ${RIMER_SMOKE_BUILD_ARGS:-} . >"$WORK/build.log" 2>&1; then
    pass "build $IMAGE ($(since "$t") s)"
  else
    tail -30 "$WORK/build.log"; die "build $IMAGE"
  fi
fi
size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }
info "image $IMAGE: $(size "$IMAGE")"

SERVICES=(rimer prometheus)
for svc in prometheus grafana; do
  img="$("${COMPOSE[@]}" config --format json | python3 -c "import json, sys; print(json.load(sys.stdin)['services']['$svc']['image'])")"
  if docker image inspect "$img" >/dev/null 2>&1 || docker pull -q "$img" >/dev/null 2>&1; then
    info "image $img: $(size "$img")$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.description"}}' "$img" 2>/dev/null | grep -o 'STAND-IN.*' | sed 's/^/ -- /')"
    [ "$svc" = grafana ] && SERVICES+=(grafana)
  elif [ "$svc" = grafana ]; then
    skip "Grafana: image $img is not on this machine and cannot be pulled (no registry reachable?); the Grafana checks are skipped, its provisioning files are still checked statically by tests/integration/test_docker.py"
  else
    die "image $img is not on this machine and cannot be pulled"
  fi
done

# ---------------------------------------------------------------- up
"${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1  # a clean start: no volumes left over
info "${COMPOSE[*]} up -d ${SERVICES[*]}"
t_up=$(now)
"${COMPOSE[@]}" up -d --no-build "${SERVICES[@]}" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; die "compose up"; }
pass "compose up (${SERVICES[*]})"

wait_ready() {  # wait_ready LABEL: poll /readyz; prints the seconds taken
  local t0; t0=$(now)
  while true; do
    if curl -sf -o /dev/null "$API/readyz"; then
      pass "$1: /readyz 200 after $(since "$t0") s"; return 0
    fi
    if python3 -c "import sys; sys.exit(float(sys.argv[1]) < $READY_TIMEOUT)" "$(since "$t0")"; then
      "${COMPOSE[@]}" logs --tail 40 rimer; fail "$1: /readyz not 200 within $READY_TIMEOUT s"; return 1
    fi
    sleep 0.5
  done
}
wait_ready "first start" || die "the service never became ready"
echo "time to ready from compose up: $(since "$t_up") s"
curl -s "$API/readyz"; echo

wait_healthy() {  # the container's own health status (compose healthcheck on /readyz)
  local cid status
  cid="$("${COMPOSE[@]}" ps -q "$1")"
  for _ in $(seq 1 60); do
    status="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$cid")"
    [ "$status" = healthy ] && { pass "container $1 healthy"; return 0; }
    sleep 2
  done
  fail "container $1 health: $status after 120 s"
}
wait_healthy rimer

# ---------------------------------------------------------------- forecast and append
post() { curl -s -o "$2" -w '%{http_code}' -H 'content-type: application/json' -d "$3" "$API$1"; }
values() { python3 -c "import math, sys; a, n = int(sys.argv[1]), int(sys.argv[2]); print(','.join(f'{10 + 3 * math.sin((a + i) / 5) + 0.01 * (a + i):.4f}' for i in range(n)))" "$1" "$2"; }

code=$(post /forecast "$WORK/f.json" "{\"series\": [{\"id\": \"x\", \"values\": [$(values 0 96)]}], \"horizon\": 12}")
[ "$code" = 200 ] && [ "$(jget "$WORK/f.json" "len(d['forecasts'][0]['mean'])")" = 12 ] \
  && pass "POST /forecast: 200, 12 values" || fail "POST /forecast: HTTP $code $(head -c 300 "$WORK/f.json")"

code=$(post /series/smoke-a/append "$WORK/a.json" "{\"values\": [$(values 0 80)]}")
[ "$code" = 200 ] && [ "$(jget "$WORK/a.json" "d['length']")" = 80 ] \
  && pass "POST /series/smoke-a/append: 200, length 80" || fail "append: HTTP $code $(head -c 300 "$WORK/a.json")"
code=$(post /series/append "$WORK/b.json" "{\"series\": [{\"id\": \"smoke-a\", \"values\": [$(values 80 7)]}, {\"id\": \"smoke-b\", \"values\": [$(values 3 50)]}]}")
[ "$code" = 200 ] && pass "POST /series/append (bulk): 200 $(cat "$WORK/b.json")" || fail "bulk append: HTTP $code $(head -c 300 "$WORK/b.json")"

state() {  # state FILE: lengths and forecasts of both series, as the API returns them
  { for s in smoke-a smoke-b; do
      curl -s "$API/series/$s"; echo
      curl -s "$API/series/$s/forecast?horizon=16"; echo
    done; } >"$1"
}
lengths() {  # "smoke-a 87, smoke-b 50" from a state file
  python3 -c "
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(', '.join(f\"{r['id']} {r['length']}\" for r in rows if 'model' in r))" "$1"
}
compare() {  # compare LABEL BEFORE AFTER
  if cmp -s "$2" "$3"; then
    pass "$1: series lengths and forecasts identical ($(lengths "$3"))"
  else
    fail "$1: state differs"; diff <(cut -c1-200 "$2") <(cut -c1-200 "$3") | head -10
  fi
}
state "$WORK/s0"
grep -q '"mean"' "$WORK/s0" && pass "GET /series/{id}/forecast answers" || fail "series forecast: $(head -c 300 "$WORK/s0")"

# ---------------------------------------------------------------- restart (clean) and kill -9
info "docker compose restart rimer"
"${COMPOSE[@]}" restart rimer >/dev/null 2>&1 && pass "compose restart rimer" || fail "compose restart rimer"
wait_ready "after compose restart"
state "$WORK/s1"
compare "after compose restart" "$WORK/s0" "$WORK/s1"

code=$(post /series/smoke-a/append "$WORK/c.json" "{\"values\": [$(values 87 5)]}")
[ "$code" = 200 ] && pass "append after restart: $(cat "$WORK/c.json")" || fail "append after restart: HTTP $code"
state "$WORK/s2"  # this append is only in the write-ahead log (no snapshot since the restart)

info "docker kill (SIGKILL) rimer, then docker compose up -d rimer"
cid="$("${COMPOSE[@]}" ps -q rimer)"
docker kill "$cid" >/dev/null && pass "docker kill $(echo "$cid" | head -c 12)" || fail "docker kill"
"${COMPOSE[@]}" up -d --no-build rimer >/dev/null 2>&1 && pass "compose up -d rimer after kill" || fail "compose up after kill"
wait_ready "after kill + up"
state "$WORK/s3"
compare "after docker kill + up (WAL replay)" "$WORK/s2" "$WORK/s3"
curl -s "$API/metrics" | grep -E '^rimer_recovery_(seconds|records_replayed) ' | sed 's/^/  /'
wait_healthy rimer

# ---------------------------------------------------------------- Prometheus
promq() {  # promq QUERY OUT: instant query through the HTTP API
  curl -s -G -o "$2" --data-urlencode "query=$1" "$PROM/api/v1/query"
}
info "Prometheus at $PROM (scrape interval 15 s)"
ok=0
for _ in $(seq 1 40); do
  promq 'up{job="rimer"}' "$WORK/up.json"
  if [ "$(jget "$WORK/up.json" "[r['value'][1] for r in d['data']['result']]" 2>/dev/null)" = "['1']" ]; then ok=1; break; fi
  sleep 3
done
[ $ok = 1 ] && pass "Prometheus: up{job=\"rimer\"} == 1" || fail "Prometheus: up{job=\"rimer\"}: $(head -c 300 "$WORK/up.json")"
# Counters restart at zero with the process: send some traffic to the restarted one (a third
# series, bounded: at most 40 appends and forecasts over ~2 minutes, at least 12 over ~36 s, so
# that the dashboard's rates see two scrapes), until Prometheus has scraped appended points.
ok=0 k=0 bad=0
code=$(post /series/smoke-c/append "$WORK/t.json" "{\"values\": [$(values 0 40)]}")
[ "$code" = 200 ] || bad=$((bad + 1))
for k in $(seq 1 40); do
  code=$(post /series/smoke-c/append "$WORK/t.json" "{\"values\": [$(values "$((36 + k * 4))" 4)], \"horizon\": 4}")
  [ "$code" = 200 ] || { bad=$((bad + 1)); echo "  append: HTTP $code $(head -c 200 "$WORK/t.json")"; }
  code=$(post /forecast "$WORK/t.json" "{\"series\": [{\"id\": \"y\", \"values\": [$(values "$k" 40)]}], \"horizon\": 6}")
  [ "$code" = 200 ] || { bad=$((bad + 1)); echo "  forecast: HTTP $code $(head -c 200 "$WORK/t.json")"; }
  promq 'rimer_points_appended_total' "$WORK/pts.json"
  v="$(jget "$WORK/pts.json" "max([float(r['value'][1]) for r in d['data']['result']] or [0])" 2>/dev/null)"
  if [ "$k" -ge 12 ] && python3 -c "import sys; sys.exit(not float(sys.argv[1]) > 0)" "${v:-0}"; then ok=1; break; fi
  sleep 3
done
[ "$bad" = 0 ] && pass "traffic to the restarted service: $((k + 1)) appends (with forecasts) and $k forecasts, all 200" \
  || fail "traffic to the restarted service: $bad requests not 200"
[ $ok = 1 ] && pass "Prometheus: rimer_points_appended_total scraped ($v)" || fail "Prometheus: no rimer_points_appended_total > 0: $(head -c 300 "$WORK/pts.json")"
promq 'rimer_ready' "$WORK/ready.json"
[ "$(jget "$WORK/ready.json" "[r['value'][1] for r in d['data']['result']]" 2>/dev/null)" = "['1']" ] \
  && pass "Prometheus: rimer_ready == 1" || fail "Prometheus: rimer_ready: $(head -c 300 "$WORK/ready.json")"

# every query of the dashboard is valid PromQL on this Prometheus; report which have data now
python3 -c "
import json
for p in json.load(open('docker/grafana/dashboards/rimer.json'))['panels']:
    for t in p['targets']:
        print(p['title'] + '\t' + t['expr'])" >"$WORK/exprs.tsv"
bad=0 n=0 with_data=0
while IFS=$'\t' read -r title expr; do
  n=$((n + 1))
  promq "$expr" "$WORK/q.json"
  st="$(jget "$WORK/q.json" "d['status'] + ' ' + str(len(d['data']['result']))" 2>/dev/null || echo error)"
  case "$st" in
    success\ 0) echo "  [no data yet] $title: $expr" ;;
    success\ *) with_data=$((with_data + 1)) ;;
    *) bad=$((bad + 1)); echo "  [ERROR] $title: $expr -> $(head -c 200 "$WORK/q.json")" ;;
  esac
done <"$WORK/exprs.tsv"
[ $bad = 0 ] && pass "dashboard: all $n queries valid on Prometheus ($with_data with data now)" \
  || fail "dashboard: $bad of $n queries rejected by Prometheus"

# ---------------------------------------------------------------- Grafana
if [[ " ${SERVICES[*]} " == *" grafana "* ]]; then
  info "Grafana at $GRAF"
  ok=0
  for _ in $(seq 1 60); do
    curl -sf -o "$WORK/gh.json" "$GRAF/api/health" && { ok=1; break; }
    sleep 2
  done
  [ $ok = 1 ] && pass "Grafana: /api/health $(tr -d '\n ' <"$WORK/gh.json")" || fail "Grafana: /api/health does not answer"
  curl -s -u "admin:$GRAFANA_ADMIN_PASSWORD" -o "$WORK/gs.json" "$GRAF/api/search?query=Rimer"
  [ "$(jget "$WORK/gs.json" "[x['uid'] for x in d if x.get('type') == 'dash-db']" 2>/dev/null)" = "['rimer-service']" ] \
    && pass "Grafana: dashboard rimer-service provisioned" || fail "Grafana: dashboard not found: $(head -c 300 "$WORK/gs.json")"
  curl -s -u "admin:$GRAFANA_ADMIN_PASSWORD" -o "$WORK/gd.json" "$GRAF/api/datasources/uid/rimer-prometheus"
  [ "$(jget "$WORK/gd.json" "d['url']" 2>/dev/null)" = "http://prometheus:9090" ] \
    && pass "Grafana: datasource rimer-prometheus provisioned" || fail "Grafana: datasource: $(head -c 300 "$WORK/gd.json")"
  curl -s -u "admin:$GRAFANA_ADMIN_PASSWORD" -o "$WORK/gq.json" -G \
    --data-urlencode 'query=up{job="rimer"}' "$GRAF/api/datasources/proxy/uid/rimer-prometheus/api/v1/query"
  [ "$(jget "$WORK/gq.json" "d['status']" 2>/dev/null)" = success ] \
    && pass "Grafana: queries Prometheus through the datasource" || fail "Grafana: datasource query: $(head -c 300 "$WORK/gq.json")"
fi

summary
[ "$FAILS" -eq 0 ]
