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
#   $DIR/curve.tsv and, with RECONCILE_PLOT=FILE, an SVG plot of it). The curve's sources have a
#   10-minute interval. Each count also gets the API write floor: bench-api-writes makes the
#   controller's five writes for as many sources, on a fresh control plane holding as many, at the
#   same concurrency, and nothing else; the count's point is reported as a fraction of the
#   sources/s that rate allows. Once before the curve, the floor at 4x the concurrency for
#   RECONCILE_FLOOR_SOURCES (default 2,000) sources shows whether concurrency holds it back.
#   Counts up to RECONCILE_REPEAT_MAX (default 10,000) are measured RECONCILE_REPEATS times (default
#   3: a floor, then ours, and again), each side reported as its median: between two runs an hour
#   apart the floor moved by 20 %, and a short run is the most exposed.
#   RECONCILE_STEADY (seconds, default 0) measures the last point's steady state for that long
#   once all are Ready (run.sh: 640, one interval plus its 5 % jitter, in which every source is
#   reconciled once again). RECONCILE_PER_SOURCE_HISTOGRAMS (default true) is the controller's
#   ops.per_source_histograms. Completion is polled ten times a second from /metrics/totals (a few
#   hundred bytes, read by bash itself), then confirmed with one list. RECONCILE_PROFILE=SECONDS
#   takes a CPU profile of kube-apiserver (its /debug/pprof) over the first SECONDS of each floor
#   and curve run, and the API server's request counts by verb and resource: files in $DIR.
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
RECONCILE_FLOOR_SOURCES=${RECONCILE_FLOOR_SOURCES:-2000}
RECONCILE_REPEATS=${RECONCILE_REPEATS:-3}
RECONCILE_REPEAT_MAX=${RECONCILE_REPEAT_MAX:-10000}
RECONCILE_STEADY=${RECONCILE_STEADY:-0}
RECONCILE_PER_SOURCE_HISTOGRAMS=${RECONCILE_PER_SOURCE_HISTOGRAMS:-true}
RECONCILE_PROFILE=${RECONCILE_PROFILE:-0}
bench_section reconcile

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
# The file is kept between calls: a count's floor and its controller run use the same one.
write_sources() { # N
  [[ ${sources_written:-} == "$1 ${SOURCE_INTERVAL:-1h}" ]] && return 0
  sources_written="$1 ${SOURCE_INTERVAL:-1h}"
  python3 - "$DIR/sources.yaml" "$1" "$FIXTURE_PORT" "${SOURCE_INTERVAL:-1h}" <<'EOF'
import sys
out, n, port, interval = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(out, "w") as f:
    for i in range(n):
        f.write(f"""---
apiVersion: source.flux.oddkin.co/v1alpha1
kind: ExternalSource
metadata:
  name: bench-{i:04d}
  namespace: bench
spec:
  interval: {interval}
  destinationPath: data.json
  generator:
    type: http
    http:
      url: http://127.0.0.1:{port}/data.json?source={i}
""")
EOF
}
write_sources "$RECONCILE_SOURCES"

# Every source is in one namespace, so the per-namespace cap (three quarters of the slots by
# default, a tenant-fairness limit) is raised to the concurrency: the controller then has as many
# sources in flight as bench-api-writes has in the floor, and the two compare like for like.
start_controller() { # NAME CONCURRENCY: sets ctl_pid and ctl_ops
  local name=$1 conc=$2 port ops
  port=$(free_port)
  ops=$(free_port)
  ctl_ops=$ops
  cat >"$DIR/controller-$name.toml" <<EOF
[server]
port = $port
bind_address = "127.0.0.1"

[controller]
namespace_concurrency = $conc

[ops]
port = $ops
bind_address = "127.0.0.1"
per_source_histograms = $RECONCILE_PER_SOURCE_HISTOGRAMS

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

# Four kubectl processes at once, each creating a quarter: one alone paces a 10,000 backlog at
# minutes (one POST at a time), and none of this is measured.
create_sources() { # NAME
  local part pids=() pid
  rm -f "$DIR"/sources-part-*.yaml
  python3 - "$DIR/sources.yaml" "$DIR/sources-part-" 4 <<'EOF_SPLIT'
import sys
docs = [d for d in open(sys.argv[1]).read().split("---\n") if d.strip()]
parts = int(sys.argv[3])
for p in range(parts):
    with open(f"{sys.argv[2]}{p}.yaml", "w") as f:
        f.write("".join("---\n" + d for d in docs[p::parts]))
EOF_SPLIT
  for part in "$DIR"/sources-part-*.yaml; do
    kubectl create -f "$part" >"$DIR/create-$1-${part##*-}.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || die "kubectl create failed: $(tail -3 "$DIR"/create-"$1"-*.log)"
  done
}

# Successful reconciliations so far, from the controller's /metrics: about 40 series per source
# (per-source histograms, as Flux's controllers have), 3.7 MB per thousand sources. For the
# steady state's count of reconciles, read twice.
successes() {
  curl -fsS --max-time 10 "http://127.0.0.1:$ctl_ops/metrics" 2>/dev/null \
    | grep -F 'externalsource_reconciliation_total{' | grep -F 'result="success"' \
    | awk '{ n += $NF } END { printf "%d", n }'
}

# Sources Ready now, from the controller's /metrics/totals (a few hundred bytes at any count), into
# polled (0 while it does not answer). Bash alone: /dev/tcp and builtins, no process forked, so
# polling ten times a second takes nothing measurable from the run it watches (curl, awk, date and
# sleep per poll cost about 10 ms of CPU: five polls a second took 2.5 % of this 2-core machine
# from our runs, which the floor did not pay).
poll_ready() {
  local fd line
  polled=0
  # (In braces: a redirection on `exec` itself would silence the script's stderr for good.)
  { exec {fd}<>"/dev/tcp/127.0.0.1/$ctl_ops"; } 2>/dev/null || return 0
  printf 'GET /metrics/totals HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&"$fd" 2>/dev/null || true
  while IFS= read -r -t 10 -u "$fd" line; do
    [[ $line == 'externalsource_ready_sources '* ]] && polled=${line#* }
  done
  exec {fd}>&-
  polled=${polled%%.*}
  [[ $polled =~ ^[0-9]+$ ]] || polled=0
}

# A pipe nobody writes to: `read -t` on it is a sleep without a process.
exec {idle_fd}<> <(:)

# Waits until every source is Ready=True: polls the controller, then confirms with the API server.
# Sets ready_at to when the poll saw them all: listing every source to confirm takes seconds at
# 10,000 and is the harness's check, not the controller's work.
wait_all_ready() { # NAME
  local ready=0 deadline=$((SECONDS + RECONCILE_TIMEOUT))
  while :; do
    poll_ready
    ready_at=$EPOCHREALTIME
    if ((polled >= RECONCILE_SOURCES)); then
      ready=$(ready_count || echo 0)
      ((ready >= RECONCILE_SOURCES)) && return 0
    fi
    kill -0 "$ctl_pid" 2>/dev/null || die "controller exited: $(tail -5 "$DIR/controller-$1.log")"
    if ((SECONDS > deadline)); then
      kubectl get externalsources.source.flux.oddkin.co -n bench -o wide 2>&1 | head -5 >&2 || true
      die "only $ready of $RECONCILE_SOURCES Ready after ${RECONCILE_TIMEOUT}s ($1)"
    fi
    read -rt 0.1 -u "$idle_fd" || true
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

# With RECONCILE_PROFILE, a kube-apiserver CPU profile over that many seconds from now, in the
# background (pprof format, for `go tool pprof`), and its request counts so far.
profile_apiserver() { # NAME
  ((RECONCILE_PROFILE > 0)) || return 0
  kubectl get --raw /metrics >"$DIR/apiserver-metrics-before-$1.txt" 2>/dev/null || true
  start_bg "$DIR/profile-$1.log" sh -c \
    "kubectl get --raw '/debug/pprof/profile?seconds=$RECONCILE_PROFILE' >'$DIR/apiserver-$1.pprof'"
}

# Request counts at the end of a profiled run, next to the ones profile_apiserver saved.
requests_after() { # NAME
  ((RECONCILE_PROFILE > 0)) || return 0
  kubectl get --raw /metrics >"$DIR/apiserver-metrics-after-$1.txt" 2>/dev/null || true
}

# The sources exist, then the controller starts: start to all Ready is the controller's own
# throughput. Sets total (s), peak and settled (KiB), cpu and cp_cpu (CPU-s), by_kind (API writes
# per source, "<total>\t<by kind>"); leaves the controller and the control plane running.
backlog_run() { # NAME SOURCES CONCURRENCY
  local name=$1 n=$2 conc=$3 t0 t1 cp0
  RECONCILE_SOURCES=$n
  write_sources "$n"
  start_testenv "$name"
  create_sources "$name"
  api_writes "$DIR/writes-before-$name.tsv"
  cp0=$(cp_cpu_s)
  profile_apiserver "$name"
  t0=$EPOCHREALTIME
  start_controller "$name" "$conc"
  wait_all_ready "$name"
  t1=$ready_at
  requests_after "$name"
  cp_cpu=$(calc "round($(cp_cpu_s) - $cp0, 1)")
  api_writes "$DIR/writes-after-$name.tsv"
  peak=$(rss_kib "$ctl_pid" VmHWM)
  cpu=$(cpu_s "$ctl_pid")
  # Settled: what the controller keeps once the burst is over (every source Ready).
  sleep 10
  settled=$(rss_kib "$ctl_pid" VmRSS)
  log "  /metrics is $(($(curl -fsS --max-time 10 "http://127.0.0.1:$ctl_ops/metrics" | wc -c) / 1024)) KiB with $n sources"
  check_artifact
  by_kind=$(python3 "$HERE/api_writes.py" per-source "$DIR/writes-before-$name.tsv" "$DIR/writes-after-$name.tsv" "$n")
  total=$(calc "$t1 - $t0")
}

# The floor under any controller: the control plane's own write rate on this machine, from a
# client that makes only the writes the controller makes per source (bench-api-writes), on a
# fresh control plane holding SOURCES sources (the API server's cost per write grows with what
# it stores: a floor at 2,000 flatters a controller measured at 10,000). Sets floor (writes/s).
api_floor() { # SOURCES CONCURRENCY [RUN]: RUN ("2 of 3") names a repeated measurement
  local n=$1 c=$2 run=${3:-} line cp0 cp name t0 t1
  name=floor-$n-$c${run:+-${run%% *}}
  write_sources "$n"
  start_testenv "$name"
  create_sources "$name"
  cp0=$(cp_cpu_s)
  profile_apiserver "$name"
  # Timed as the controller is: from the process's start to its end (bench-api-writes' own clock
  # starts once its client is built, after the kubeconfig and the trust roots are read).
  t0=$EPOCHREALTIME
  line=$("$API_WRITES" --namespace bench --prefix bench- --sources "$n" --concurrency "$c") \
    || die "bench-api-writes failed ($n sources, concurrency $c)"
  t1=$EPOCHREALTIME
  requests_after "$name"
  cp=$(calc "round($(cp_cpu_s) - $cp0, 1)")
  floor=$(calc "round($(awk '{ for (i = 1; i < NF; i++) if ($i == "writes") print $(i + 1) }' <<<"$line") / ($t1 - $t0), 1)")
  log "  floor: $line (its own clock); $floor writes/s process start to end; apiserver + etcd $cp CPU-s"
  record "API write floor" "$n sources x 5 writes from bench-api-writes, concurrency $c${run:+ (run $run)}" \
    "$floor writes/s ($(calc "round($floor / 5)") sources/s) · apiserver + etcd $cp CPU-s ($(calc "round(1000 * $cp / $n, 1)") ms per source)" \
    "" "" "" "measured"
  stop_pid "$testenv_pid"
}

# Steady state: what the controller and the control plane spend over RECONCILE_STEADY seconds once
# every source is Ready and nothing upstream changes (each source is reconciled once per interval:
# a conditional fetch that answers 304, no write expected).
steady_state() { # SOURCES
  local n=$1 c0 cp0 r0 c1 cp1 r1 writes
  api_writes "$DIR/writes-steady-before.tsv"
  c0=$(cpu_s "$ctl_pid") cp0=$(cp_cpu_s) r0=$(successes)
  log "  steady state: $n sources, watching for ${RECONCILE_STEADY} s"
  sleep "$RECONCILE_STEADY"
  c1=$(cpu_s "$ctl_pid") cp1=$(cp_cpu_s) r1=$(successes)
  api_writes "$DIR/writes-steady-after.tsv"
  writes=$(python3 "$HERE/api_writes.py" per-source "$DIR/writes-steady-before.tsv" "$DIR/writes-steady-after.tsv" "$n")
  local rss cpu cp
  rss=$(rss_kib "$ctl_pid" VmRSS)
  cpu=$(calc "round($c1 - $c0, 1)")
  cp=$(calc "round($cp1 - $cp0, 1)")
  printf 'sources\t%s\nseconds\t%s\nreconciles\t%s\ncontroller_cpu_s\t%s\ncontrol_plane_cpu_s\t%s\nwrites_per_source\t%s\nrss_mib\t%.1f\n' \
    "$n" "$RECONCILE_STEADY" "$((r1 - r0))" "$cpu" "$cp" "${writes%%$'\t'*}" "$(calc "$rss / 1024")" >"$DIR/steady.tsv"
  log "  steady state: $((r1 - r0)) reconciles, controller $cpu CPU-s, apiserver + etcd $cp CPU-s, API writes/source ${writes%%$'\t'*}"
  record "steady state" "$n Ready sources, 10-minute interval, upstream unchanged, over ${RECONCILE_STEADY} s" \
    "$(calc "f'controller {$cpu} CPU-s ({100 * $cpu / $RECONCILE_STEADY:.2f} % of a core), {$r1 - $r0} reconciles ({1000 * $cpu / max($r1 - $r0, 1):.2f} ms each), RSS {$rss / 1024:.1f} MiB · apiserver + etcd {$cp} CPU-s · API writes per source ${writes%%$'\t'*}'")" \
    "" "" "" "measured"
}

# A backlog run per count: the controller's own cost as the number of sources grows, each against
# the floor; the last count also measures a steady state of RECONCILE_STEADY seconds (one
# 10-minute interval by default in full runs) after all are Ready.
if [[ -n $RECONCILE_CURVE ]]; then
  conc=${RECONCILE_CONCURRENCY%% *}
  SOURCE_INTERVAL=10m
  # Whether the floor is held back by its concurrency: the same count at 4x it, once.
  log "API write floor at $RECONCILE_FLOOR_SOURCES sources, bench-api-writes at concurrency $((conc * 4))"
  api_floor "$RECONCILE_FLOOR_SOURCES" $((conc * 4))
  printf 'sources\tseconds\tsources_per_s\tpeak_rss_mib\tsettled_rss_mib\tcontroller_cpu_s\tcontrol_plane_cpu_s\twrites_per_source\twrites_by_kind\tfloor_writes_per_s\tof_floor\truns\tseconds_each\tfloor_each\n' >"$DIR/curve.tsv"
  last=${RECONCILE_CURVE##* }
  for n in $RECONCILE_CURVE; do
    # Pairs of runs, a floor then ours, so slow and fast spells of the machine fall on both.
    runs=1
    ((n <= RECONCILE_REPEAT_MAX)) && runs=$RECONCILE_REPEATS
    floors=() totals=() peaks=() settleds=() cpus=() cp_cpus=() by_kinds=()
    for ((r = 1; r <= runs; r++)); do
      run=""
      ((runs > 1)) && run="$r of $runs"
      log "curve: the floor at $n sources, concurrency $conc${run:+ (run $run)}"
      api_floor "$n" "$conc" "$run"
      log "curve: $n sources first, then the controller (concurrency $conc)${run:+ (run $run)}"
      backlog_run "curve-$n${run:+-$r}" "$n" "$conc"
      log "  all Ready in $(calc "round($total, 1)") s; the floor allows $(calc "round($n * ${by_kind%%$'\t'*} / $floor, 1)") s"
      floors+=("$floor") totals+=("$total") peaks+=("$peak") settleds+=("$settled") cpus+=("$cpu") cp_cpus+=("$cp_cpu")
      by_kinds+=("$by_kind")
      if ((r < runs)); then
        stop_pid "$ctl_pid"
        stop_pid "$testenv_pid"
      fi
    done
    # The median of each side; the controller's other figures from its run nearest its median.
    medians=$(python3 - "${floors[*]}" "${totals[*]}" <<'EOF_MEDIAN'
import statistics, sys
floors, totals = ([float(v) for v in a.split()] for a in sys.argv[1:3])
m = statistics.median(totals)
nearest = min(range(len(totals)), key=lambda i: abs(totals[i] - m))
print(statistics.median(floors), m, nearest, ",".join(f"{v:.2f}" for v in totals), ",".join(f"{v:.1f}" for v in floors),
      f"; median of {len(totals)} runs: " + ", ".join(f"{v:.1f}" for v in totals) + " s, floors "
      + ", ".join(f"{v:.0f}" for v in floors) + " writes/s" if len(totals) > 1 else "", sep="\t")
EOF_MEDIAN
    )
    IFS=$'\t' read -r floor total i each floor_each medians <<<"$medians"
    peak=${peaks[i]} settled=${settleds[i]} cpu=${cpus[i]} cp_cpu=${cp_cpus[i]} by_kind=${by_kinds[i]}
    per_source=${by_kind%%$'\t'*}
    # Our sources/s against the sources/s the floor allows at our writes per source: same count
    # of sources stored, same number in flight.
    of_floor=$(calc "($n / $total) / ($floor / $per_source)")
    printf '%s\t%.1f\t%.0f\t%.1f\t%.1f\t%s\t%s\t%s\t%s\t%.2f\t%s\t%s\t%s\n' "$n" "$total" "$(calc "$n / $total")" \
      "$(calc "$peak / 1024")" "$(calc "$settled / 1024")" "$cpu" "$cp_cpu" "$by_kind" "$floor" "$of_floor" \
      "$runs" "$each" "$floor_each" >>"$DIR/curve.tsv"
    log "  $n: all Ready in $(calc "round($total, 1)") s ($(calc "round($of_floor, 2)") of the floor$medians); peak RSS $((peak / 1024)) MiB, settled $((settled / 1024)) MiB; API writes/source $per_source"
    record "reconcile curve" "$n existing sources, controller started, concurrency $conc" \
      "$(calc "f'{$total:.1f} s start to all Ready ({$n / $total:.0f} sources/s, {$of_floor:.2f} of the floor$medians) · peak RSS {$peak / 1024:.1f} MiB, settled {$settled / 1024:.1f} MiB · CPU: controller {$cpu} s, apiserver + etcd {$cp_cpu} s'") · API writes per source $per_source (${by_kind#*$'\t'})" \
      "floor at $n sources, concurrency $conc: $floor writes/s ÷ $per_source" "" "10,000: ≤ 120 s, ≤ 256 MiB; ≥ 0.8 of the floor" "measured"
    if [[ $n == "$last" ]] && ((RECONCILE_STEADY > 0)); then steady_state "$n"; fi
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
  t1=$ready_at
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
  backlog_run "backlog-$conc" "$RECONCILE_SOURCES" "$conc"
  log "  all Ready $(calc "round($total, 1)") s after the controller started; peak RSS $((peak / 1024)) MiB"
  record "reconcile" "$RECONCILE_SOURCES existing sources, controller started, concurrency $conc" \
    "$(calc "f'{$total:.1f} s start to all Ready ({$RECONCILE_SOURCES / $total:.0f} sources/s) · peak RSS {$peak / 1024:.1f} MiB · CPU: controller {$cpu} s, apiserver + etcd {$cp_cpu} s'")" \
    "$PEER" "" "" "measured"
  stop_pid "$ctl_pid"
  stop_pid "$testenv_pid"
done
