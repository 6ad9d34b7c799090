#!/usr/bin/env bash
# Reconcile throughput: RECONCILE_SOURCES (default 1,000) ExternalSources against a real local
# kube-apiserver + etcd (the test control plane, `externalsource-testenv`), each fetching a JSON
# document from a loopback nginx. For each concurrency in RECONCILE_CONCURRENCY (default "4 16")
# two measurements, each on a fresh control plane so no run sees another's objects:
#   live     the controller runs while `kubectl create` adds the sources: create to all Ready=True
#            (on a 2-core machine mostly kubectl's own pace);
#   backlog  the sources exist first, then the controller starts: start to all Ready=True, the
#            controller's own throughput.
# Each with the controller's peak RSS (VmHWM) and the CPU time of the controller and of the control
# plane over the run (the machine's cores are shared by all of them).
#
# Usage: bash tests/bench/reconcile.sh       (tests/bench/run.sh calls it in full mode)
# Environment: BIN (controller binary; built when unset), RUN (log dir), BENCH_RESULTS (TSV rows),
#   RECONCILE_SOURCES, RECONCILE_CONCURRENCY, RECONCILE_TIMEOUT (seconds per run, default 900),
#   RECONCILE_CURVE (a list of source counts, e.g. "1000 2000 5000 10000": instead of the runs above,
#   one backlog run per count at the first concurrency, each on a fresh control plane, reported as
#   a curve: time, peak and settled RSS, CPU, API writes per source by kind; writes
#   $DIR/curve.tsv and, with RECONCILE_PLOT=FILE, an SVG plot of it).
# Needs: the testenv cache (tests/testenv.sh builds it with Go on first use), kubectl, jq, nginx.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

RECONCILE_SOURCES=${RECONCILE_SOURCES:-1000}
RECONCILE_CONCURRENCY=${RECONCILE_CONCURRENCY:-4 16}
RECONCILE_TIMEOUT=${RECONCILE_TIMEOUT:-900}
RECONCILE_CURVE=${RECONCILE_CURVE:-}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
# Standalone, it keeps its own directory so it cannot collide with a run.sh in progress.
RUN=${RUN:-$TARGET_DIR/bench/run-reconcile}
DIR=$RUN/reconcile
BENCH_RESULTS=${BENCH_RESULTS:-$DIR/results.tsv}
rm -rf "$DIR"
mkdir -p "$DIR"
trap cleanup_pids EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for t in kubectl jq nginx curl python3; do command -v "$t" >/dev/null || die "reconcile benchmark needs $t"; done
cd "$REPO"

[[ -n ${BIN:-} ]] || build_release_controller
build_testenv

# The upstream API: a 16 KiB JSON document on loopback nginx (1 worker: it is not what is measured).
mkdir -p "$DIR/fixture-root"
python3 - "$DIR/fixture-root/data.json" <<'EOF'
import json, sys
items = [{"id": i, "name": f"item-{i}", "enabled": i % 2 == 0, "tags": ["a", "b", "c"]} for i in range(300)]
open(sys.argv[1], "w").write(json.dumps({"items": items}))
EOF
FIXTURE_PORT=$(free_port)
nginx_start "$DIR/nginx-fixture" "$FIXTURE_PORT" "$DIR/fixture-root" 1
wait_http "http://127.0.0.1:$FIXTURE_PORT/data.json" "$BG_PID" 30

# N ExternalSources in one multi-document file; each asks for its own URL (the query is ignored
# by nginx) so nothing upstream can be shared between them.
write_sources() { # N
  python3 - "$DIR/sources.yaml" "$1" "$FIXTURE_PORT" <<'EOF'
import sys
out, n, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(out, "w") as f:
    for i in range(n):
        f.write(f"""---
apiVersion: source.flux.oddkin.co/v1alpha1
kind: ExternalSource
metadata:
  name: bench-{i:04d}
  namespace: bench
spec:
  interval: 1h
  destinationPath: data.json
  generator:
    type: http
    http:
      url: http://127.0.0.1:{port}/data.json?source={i}
""")
EOF
}
write_sources "$RECONCILE_SOURCES"

start_controller() { # NAME CONCURRENCY: sets ctl_pid and ctl_ops
  local name=$1 conc=$2 port ops
  port=$(free_port)
  ops=$(free_port)
  ctl_ops=$ops
  cat >"$DIR/controller-$name.toml" <<EOF
[server]
port = $port
bind_address = "127.0.0.1"

[ops]
port = $ops
bind_address = "127.0.0.1"

[storage]
backend = "memory"

[log]
level = "warn"
EOF
  start_bg "$DIR/controller-$name.log" env LEADER_ELECTION=false MIN_INTERVAL=1s CONTROLLER_CONCURRENCY="$conc" \
    POD_NAMESPACE=default POD_NAME="bench-$name" \
    "$BIN" --config "$DIR/controller-$name.toml" run --advertise-url "http://127.0.0.1:$port"
  ctl_pid=$BG_PID
  wait_http "http://127.0.0.1:$ops/healthz" "$ctl_pid" 60
}

create_sources() { # NAME
  kubectl create -f "$DIR/sources.yaml" >"$DIR/create-$1.log" 2>&1 \
    || die "kubectl create failed: $(tail -3 "$DIR/create-$1.log")"
}

# Successful reconciliations so far, from the controller's /metrics (cheap to poll, unlike a list
# of every source from the API server, which shares the cores with what is measured).
successes() {
  curl -fsS --max-time 2 "http://127.0.0.1:$ctl_ops/metrics" 2>/dev/null \
    | awk '/^externalsource_reconciliation_total\{/ && /result="success"/ { n += $NF } END { printf "%d", n }'
}

# Waits until every source is Ready=True: polls the metrics, then confirms with the API server.
wait_all_ready() { # NAME
  local ready=0 deadline=$((SECONDS + RECONCILE_TIMEOUT))
  while :; do
    if (($(successes || echo 0) >= RECONCILE_SOURCES)); then
      ready=$(ready_count || echo 0)
      ((ready >= RECONCILE_SOURCES)) && return 0
    fi
    kill -0 "$ctl_pid" 2>/dev/null || die "controller exited: $(tail -5 "$DIR/controller-$1.log")"
    if ((SECONDS > deadline)); then
      kubectl get externalsources.source.flux.oddkin.co -n bench -o wide 2>&1 | head -5 >&2 || true
      die "only $ready of $RECONCILE_SOURCES Ready after ${RECONCILE_TIMEOUT}s ($1)"
    fi
    sleep 0.2
  done
}

# One artifact must be downloadable from its advertised URL and hold the fixture's document.
check_artifact() {
  local url
  url=$(kubectl get externalsources.source.flux.oddkin.co -n bench bench-0000 -o jsonpath='{.status.artifact.url}')
  curl -fsS "$url" | tar -xzO data.json | cmp -s - "$DIR/fixture-root/data.json" \
    || die "artifact at $url does not hold the fixture's document"
}

# Writes to the API server so far (every create, update, patch and delete, by any client), by
# resource/subresource and verb, from the API server's own metrics.
api_writes() { # FILE
  kubectl get --raw /metrics 2>/dev/null | python3 "$HERE/api_writes.py" count >"$1"
}

# A backlog run per count: the controller's own cost as the number of sources grows.
if [[ -n $RECONCILE_CURVE ]]; then
  conc=${RECONCILE_CONCURRENCY%% *}
  printf 'sources\tseconds\tsources_per_s\tpeak_rss_mib\tsettled_rss_mib\tcontroller_cpu_s\tcontrol_plane_cpu_s\twrites_per_source\twrites_by_kind\n' >"$DIR/curve.tsv"
  for n in $RECONCILE_CURVE; do
    RECONCILE_SOURCES=$n
    write_sources "$n"
    log "curve: $n sources first, then the controller (concurrency $conc)"
    start_testenv "curve-$n"
    create_sources "curve-$n"
    api_writes "$DIR/writes-before-$n.tsv"
    cp0=$(cp_cpu_s)
    t0=$(now)
    start_controller "curve-$n" "$conc"
    wait_all_ready "curve-$n"
    t1=$(now)
    cp_cpu=$(calc "round($(cp_cpu_s) - $cp0, 1)")
    api_writes "$DIR/writes-after-$n.tsv"
    peak=$(rss_kib "$ctl_pid" VmHWM)
    cpu=$(cpu_s "$ctl_pid")
    # Settled: what the controller keeps once the burst is over (every source Ready, 1h interval).
    sleep 10
    settled=$(rss_kib "$ctl_pid" VmRSS)
    check_artifact
    by_kind=$(python3 "$HERE/api_writes.py" per-source "$DIR/writes-before-$n.tsv" "$DIR/writes-after-$n.tsv" "$n")
    total=$(calc "$t1 - $t0")
    printf '%s\t%.1f\t%.0f\t%.1f\t%.1f\t%s\t%s\t%s\n' "$n" "$total" "$(calc "$n / $total")" \
      "$(calc "$peak / 1024")" "$(calc "$settled / 1024")" "$cpu" "$cp_cpu" "$by_kind" >>"$DIR/curve.tsv"
    log "  $n: all Ready in $(calc "round($total, 1)") s; peak RSS $((peak / 1024)) MiB, settled $((settled / 1024)) MiB; API writes/source ${by_kind%%$'\t'*}"
    record "reconcile curve" "$n existing sources, controller started, concurrency $conc" \
      "$(calc "f'{$total:.1f} s start to all Ready ({$n / $total:.0f} sources/s) · peak RSS {$peak / 1024:.1f} MiB, settled {$settled / 1024:.1f} MiB · CPU: controller {$cpu} s, apiserver + etcd {$cp_cpu} s'") · API writes per source ${by_kind%%$'\t'*} (${by_kind#*$'\t'})" \
      "" "" "10,000: ≤ 120 s, ≤ 256 MiB" "measured"
    stop_pid "$ctl_pid"
    stop_pid "$testenv_pid"
  done
  if [[ -n ${RECONCILE_PLOT:-} ]]; then python3 "$HERE/plot_curve.py" "$DIR/curve.tsv" "$RECONCILE_PLOT"; fi
  exit 0
fi

PEER="Go predecessor: not run (the module proxy refused its download)"
for conc in $RECONCILE_CONCURRENCY; do
  # live: the controller runs while the sources are created; create to all Ready.
  log "concurrency $conc, live: controller running, then $RECONCILE_SOURCES sources created"
  start_testenv "live-$conc"
  start_controller "live-$conc" "$conc"
  cp0=$(cp_cpu_s)
  t0=$(now)
  create_sources "live-$conc"
  t_created=$(now)
  wait_all_ready "live-$conc"
  t1=$(now)
  peak=$(rss_kib "$ctl_pid" VmHWM)
  cpu=$(cpu_s "$ctl_pid")
  cp_cpu=$(calc "round($(cp_cpu_s) - $cp0, 1)")
  check_artifact
  total=$(calc "$t1 - $t0")
  create=$(calc "$t_created - $t0")
  log "  all Ready $(calc "round($total, 1)") s after the create began (the create took $(calc "round($create, 1)") s); peak RSS $((peak / 1024)) MiB"
  record "reconcile" "$RECONCILE_SOURCES sources created while running, concurrency $conc" \
    "$(calc "f'{$total:.1f} s create to all Ready (the create alone {$create:.1f} s) · peak RSS {$peak / 1024:.1f} MiB · CPU: controller {$cpu} s, apiserver + etcd {$cp_cpu} s'")" \
    "$PEER" "" "" "measured"
  stop_pid "$ctl_pid"
  stop_pid "$testenv_pid"

  # backlog: the sources exist before the controller starts; start to all Ready is the
  # controller's own throughput, without kubectl's pace in the way.
  log "concurrency $conc, backlog: $RECONCILE_SOURCES sources first, then the controller"
  start_testenv "backlog-$conc"
  create_sources "backlog-$conc"
  cp0=$(cp_cpu_s)
  t0=$(now)
  start_controller "backlog-$conc" "$conc"
  wait_all_ready "backlog-$conc"
  t1=$(now)
  peak=$(rss_kib "$ctl_pid" VmHWM)
  cpu=$(cpu_s "$ctl_pid")
  cp_cpu=$(calc "round($(cp_cpu_s) - $cp0, 1)")
  check_artifact
  total=$(calc "$t1 - $t0")
  log "  all Ready $(calc "round($total, 1)") s after the controller started; peak RSS $((peak / 1024)) MiB"
  record "reconcile" "$RECONCILE_SOURCES existing sources, controller started, concurrency $conc" \
    "$(calc "f'{$total:.1f} s start to all Ready ({$RECONCILE_SOURCES / $total:.0f} sources/s) · peak RSS {$peak / 1024:.1f} MiB · CPU: controller {$cpu} s, apiserver + etcd {$cp_cpu} s'")" \
    "$PEER" "" "" "measured"
  stop_pid "$ctl_pid"
  stop_pid "$testenv_pid"
done
