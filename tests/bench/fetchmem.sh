#!/usr/bin/env bash
# Memory admission under load: FETCHMEM_SOURCES (default 4, the controller's concurrency)
# ExternalSources each fetch a FETCHMEM_SIZE (default 32 MiB, = fetch.max_size) incompressible
# body from a loopback nginx at the same moment, on a real kube-apiserver + etcd. The controller
# runs once per budget in FETCHMEM_BUDGETS (default "256MiB 128MiB": all four bodies at once, then
# two at a time), over a filesystem store so stored artifacts are not in its memory. Reported:
# the controller's peak RSS (VmHWM) over its RSS just before the sources were created, against the
# budget, and the time until all are Ready.
#
# Usage: bash tests/bench/fetchmem.sh       (tests/bench/run.sh calls it in full mode)
# Environment: BIN (controller binary; built when unset), RUN (log dir), BENCH_RESULTS (TSV rows),
#   FETCHMEM_SOURCES, FETCHMEM_SIZE (MiB), FETCHMEM_BUDGETS.
# Needs: the testenv cache (tests/testenv.sh), kubectl, jq, nginx.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

FETCHMEM_SOURCES=${FETCHMEM_SOURCES:-4}
FETCHMEM_SIZE=${FETCHMEM_SIZE:-32}
FETCHMEM_BUDGETS=${FETCHMEM_BUDGETS:-256MiB 128MiB}
bench_section fetchmem

for t in kubectl jq nginx curl python3; do command -v "$t" >/dev/null || die "fetch memory benchmark needs $t"; done
cd "$REPO"
[[ -n ${BIN:-} ]] || build_release_controller --features filesystem
build_testenv

mkdir -p "$DIR/fixture-root"
head -c $((FETCHMEM_SIZE << 20)) /dev/urandom >"$DIR/fixture-root/body.bin"
FIXTURE_PORT=$(free_port)
nginx_start "$DIR/nginx-fixture" "$FIXTURE_PORT" "$DIR/fixture-root" 1
wait_http "http://127.0.0.1:$FIXTURE_PORT/body.bin" "$BG_PID" 30

python3 - "$DIR/sources.yaml" "$FETCHMEM_SOURCES" "$FIXTURE_PORT" <<'PY'
import sys
out, n, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(out, "w") as f:
    for i in range(n):
        f.write(f"""---
apiVersion: source.flux.oddkin.co/v1alpha1
kind: ExternalSource
metadata:
  name: big-{i}
  namespace: bench
spec:
  interval: 1h
  destinationPath: body.bin
  generator:
    type: http
    http:
      url: http://127.0.0.1:{port}/body.bin?source={i}
""")
PY

for budget in $FETCHMEM_BUDGETS; do
  log "budget $budget: $FETCHMEM_SOURCES sources fetching ${FETCHMEM_SIZE} MiB each at once"
  start_testenv "$budget"
  port=$(free_port)
  ops=$(free_port)
  store=$DIR/store-$budget
  mkdir -p "$store"
  bench_controller_config "$DIR/controller-$budget.toml" "$port" "$ops" "$store" <<TOML
[controller]
concurrency = $FETCHMEM_SOURCES
namespace_concurrency = $FETCHMEM_SOURCES
leader_election = false
pod_name = "bench"

[fetch]
max_size = "${FETCHMEM_SIZE}MiB"
memory_budget = "$budget"

[log]
level = "warn"
TOML
  start_bg "$DIR/controller-$budget.log" env POD_NAMESPACE=default "$BIN" --config "$DIR/controller-$budget.toml" run
  ctl_pid=$BG_PID
  wait_http "http://127.0.0.1:$ops/healthz" "$ctl_pid" 60
  sleep 1
  base=$(rss_kib "$ctl_pid")
  t0=$(now)
  kubectl create -f "$DIR/sources.yaml" >"$DIR/create-$budget.log" 2>&1 || die "kubectl create failed"
  for ((i = 0; i < 1200; i++)); do
    (($(ready_count || echo 0) >= FETCHMEM_SOURCES)) && break
    kill -0 "$ctl_pid" 2>/dev/null || die "controller exited: $(tail -5 "$DIR/controller-$budget.log")"
    sleep 0.25
  done
  (($(ready_count || echo 0) >= FETCHMEM_SOURCES)) || die "not all Ready within 300 s (budget $budget)"
  t1=$(now)
  peak=$(rss_kib "$ctl_pid" VmHWM)
  budget_kib=$(python3 -c "import sys; u={'KiB':1,'MiB':1024,'GiB':1048576}; s=sys.argv[1]; print(int(s[:-3]) * u[s[-3:]])" "$budget")
  growth=$((peak - base))
  log "  RSS before $((base / 1024)) MiB, peak $((peak / 1024)) MiB (growth $((growth / 1024)) MiB) for a budget of $budget"
  record "isolation" "$FETCHMEM_SOURCES × ${FETCHMEM_SIZE} MiB fetched at once, fetch.memory_budget $budget" \
    "$(calc "f'peak RSS {$peak / 1024:.0f} MiB = {$base / 1024:.0f} MiB before + {$growth / 1024:.0f} MiB; all Ready in {$t1 - $t0:.1f} s'")" \
    "budget $budget" "$(calc "f'growth {$growth / $budget_kib:.2f}× the budget'")" "growth ≤ budget" \
    "$(verdict "$(calc "$growth / $budget_kib")" "<=" 1.0)"
  stop_pid "$ctl_pid"
  stop_pid "$testenv_pid"
done
