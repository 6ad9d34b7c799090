#!/usr/bin/env bash
# Archive memory against the admission reservation: every shape tests/bench/archive_shapes.py
# writes (zips of 200,000 and 700,000 empty entries, end records whose count or directory size
# lie, a zip64 end record declaring 4 billion entries, 1 KiB deep names, a 60,000-byte name,
# deflate and gzip bombs, 64 MiB GNU long-name and PAX records, and one honest 10,000-file zip and
# tarball) is served from a loopback nginx to the real controller, on a real kube-apiserver +
# etcd, as one `format: archive` source. The controller is started afresh for each shape, over a
# filesystem store, so its peak RSS (VmHWM) over its RSS just before the source was created is
# that shape's growth. It is compared with what the fetch reserved for it: 2 × the body (nginx
# declares its length) + maxSize for what it unpacks + 2 MiB of unpacking workspace
# (core/src/controller/runtime/memory.rs).
#
# Usage: bash tests/bench/archivemem.sh    (tests/bench/run.sh calls it in full mode)
# Environment: BIN (controller binary; built when unset), RUN (log dir), BENCH_RESULTS (TSV rows),
#   ARCHIVEMEM_SHAPES (a space-separated subset of the file names; all when unset).
# Needs: the testenv cache (tests/testenv.sh), kubectl, jq, nginx, python3.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

bench_section archivemem

for t in kubectl jq nginx curl python3; do command -v "$t" >/dev/null || die "archive memory benchmark needs $t"; done
cd "$REPO"
[[ -n ${BIN:-} ]] || build_release_controller --features filesystem
[[ -n ${TESTENV:-} ]] || build_testenv

log "writing the archive shapes"
mkdir -p "$DIR/fixture-root"
python3 "$HERE/archive_shapes.py" "$DIR/fixture-root" >"$DIR/shapes.txt"
FIXTURE_PORT=$(free_port)
nginx_start "$DIR/nginx-fixture" "$FIXTURE_PORT" "$DIR/fixture-root" 1
wait_http "http://127.0.0.1:$FIXTURE_PORT/$(head -1 "$DIR/shapes.txt" | cut -d' ' -f1)" "$BG_PID" 30
start_testenv archives

# The Ready condition of source NAME once it is settled: "<status>\t<reason>\t<message>".
settled() {
  kubectl get externalsources.source.flux.oddkin.co -n bench "$1" -o json 2>/dev/null | jq -r '
    [.status.conditions[]? | select(.type == "Ready" and (.status == "True"
      or (.status == "False" and (.reason | startswith("Progressing") | not))))][0] // empty
    | [.status, .reason, .message] | @tsv'
}

i=0
while read -r file max_size expected; do
  if [[ -n ${ARCHIVEMEM_SHAPES:-} && " $ARCHIVEMEM_SHAPES " != *" $file "* ]]; then continue; fi
  i=$((i + 1))
  name=shape-$i
  size=$(stat -c %s "$DIR/fixture-root/$file")
  max_bytes=$(python3 -c "import sys; u={'KiB':1<<10,'MiB':1<<20,'GiB':1<<30}; s=sys.argv[1]; print(int(s[:-3]) * u[s[-3:]])" "$max_size")
  reserved=$((2 * (size < max_bytes ? size : max_bytes) + max_bytes + (2 << 20)))
  port=$(free_port)
  ops=$(free_port)
  store=$DIR/store-$i
  mkdir -p "$store"
  bench_controller_config "$DIR/controller-$i.toml" "$port" "$ops" "$store" <<TOML
[controller]
leader_election = false
pod_name = "bench"
memory_check = "warn"

[fetch]
max_size = "64MiB"
memory_budget = "512MiB"

[log]
level = "warn"
TOML
  start_bg "$DIR/controller-$i.log" env POD_NAMESPACE=default "$BIN" --config "$DIR/controller-$i.toml" run
  ctl_pid=$BG_PID
  wait_http "http://127.0.0.1:$ops/healthz" "$ctl_pid" 60
  sleep 1
  base=$(rss_kib "$ctl_pid")
  t0=$(now)
  kubectl create -f - >"$DIR/create-$i.log" 2>&1 <<YAML || die "kubectl create failed: $(cat "$DIR/create-$i.log")"
apiVersion: source.flux.oddkin.co/v1alpha1
kind: ExternalSource
metadata:
  name: $name
  namespace: bench
spec:
  interval: 1h
  format: archive
  maxSize: $max_size
  generator:
    type: http
    http:
      url: http://127.0.0.1:$FIXTURE_PORT/$file
YAML
  outcome=""
  for ((w = 0; w < 1200; w++)); do
    outcome=$(settled "$name" || true)
    [[ -n $outcome ]] && break
    kill -0 "$ctl_pid" 2>/dev/null || die "controller exited on $file: $(tail -5 "$DIR/controller-$i.log")"
    sleep 0.25
  done
  [[ -n $outcome ]] || die "$file: no outcome within 300 s"
  t1=$(now)
  peak=$(rss_kib "$ctl_pid" VmHWM)
  growth=$((peak - base))
  IFS=$'\t' read -r status reason message <<<"$outcome"
  log "  $file ($(human_bytes "$size"), maxSize $max_size): Ready=$status $reason; growth $((growth / 1024)) MiB of $((reserved >> 20)) MiB reserved"
  log "    $message"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$file" "$size" "$max_size" "$expected" "$status $reason" "$growth" "$((reserved >> 10))" "$message" >>"$DIR/shapes.tsv"
  record "archives" "$file ($(human_bytes "$size"), maxSize $max_size): Ready=$status $reason in $(calc "f'{$t1 - $t0:.1f}'") s" \
    "$(calc "f'growth {$growth / 1024:.1f} MiB'")" "reserved $((reserved >> 20)) MiB" \
    "$(calc "f'{$growth / ($reserved / 1024):.2f}× the reservation'")" "growth ≤ reservation" \
    "$(verdict "$(calc "$growth / ($reserved / 1024)")" "<=" 1.0)"
  # Deleted while its controller runs, so no finalizer is left for the next one.
  kubectl delete externalsources.source.flux.oddkin.co -n bench "$name" --timeout=60s >/dev/null 2>&1 || true
  stop_pid "$ctl_pid"
done <"$DIR/shapes.txt"
log "per-shape rows: $DIR/shapes.tsv"
