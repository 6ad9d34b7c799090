#!/usr/bin/env bash
# Benchmarks of externalsource-controller against peers run by this script on this machine:
#   size      release binary size per backend feature set
#   serve     artifact serving (filesystem and memory backends) vs nginx, load from wrk
#   memory    RSS idle and with 1,000 x 64 KiB artifacts in the memory backend (peer: nginx idle)
#   package   tar.gz + sha256 packaging vs `tar | gzip -6 | sha256sum` on the same payload
#   connections  RSS and a 1 MiB download time with 10,000 idle connections open (peer: nginx)
#   reconcile 1,000 to 10,000 ExternalSources against a local kube-apiserver, as a fraction of the
#             control plane's own write rate, and 10,000 in steady state (tests/bench/reconcile.sh)
#   fetchmem  peak RSS of `concurrency` max-size fetches vs fetch.memory_budget (tests/bench/fetchmem.sh)
#   archivemem  peak RSS of each hostile archive shape vs its admission reservation (tests/bench/archivemem.sh)
#   startup   `serve` over filesystem stores of 0 to 20,000 artifacts: /healthz, /readyz and background
#             verification times; peer: nginx's first 200 over the same directory (tests/bench/startup.sh)
#
# Usage: bash tests/bench/run.sh           full run (20 s per wrk run, 1/10/100 MiB payloads)
#        SMOKE=1 bash tests/bench/run.sh   tiny sizes and 1 s runs; what CI runs so the harness does not rot
#
# Environment:
#   BENCH_SECTIONS   sections to run (default "size serve memory connections package reconcile fetchmem archivemem startup";
#                    SMOKE drops reconcile, fetchmem and archivemem)
#   STARTUP_STORES   artifact counts of the startup section (default "0 5000 20000", SMOKE "0 500")
#   IDLE_CONNECTIONS / DOWNLOADS   shape of the connections section (default 10000 / 21; SMOKE 300 / 3)
#   BENCH_DURATION   seconds per wrk run (default 20, SMOKE 1)
#   BENCH_WARMUP     seconds of wrk warm-up before each measured run (default 2, SMOKE 0)
#   WRK_THREADS / WRK_CONNECTIONS   load generator shape (default 2 / 64)
#   BENCH_OUT        where logs and results go (default target/bench)
#   BENCH_INSTALL=0  do not apt-get install missing tools (nginx wrk hyperfine)
#   BIN, SERVEBIN    prebuilt `externalsource-controller` (memory + filesystem) and `bench-serve`
#                    to use instead of building them (both must be set)
#
# Exits non-zero when a benchmark fails to run; a missed target is reported, never fatal.
# Servers listen on 127.0.0.1 only and are stopped on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

SMOKE=${SMOKE:-0}
if [[ $SMOKE == 1 ]]; then
  BENCH_SECTIONS=${BENCH_SECTIONS:-size serve memory connections package startup}
  STARTUP_STORES=${STARTUP_STORES:-0 500}
  BENCH_DURATION=${BENCH_DURATION:-1}
  BENCH_WARMUP=${BENCH_WARMUP:-0}
  SERVE_SIZES=${SERVE_SIZES:-16KiB:16384:small 256KiB:262144:small 4MiB:4194304:large}
  PACKAGE_SIZES=${PACKAGE_SIZES:-65536,262144,1048576}
  PACKAGE_RUNS=${PACKAGE_RUNS:-3}
  CRITERION_ARGS=${CRITERION_ARGS:---warm-up-time 0.2 --measurement-time 0.5}
  MEMORY_ARTIFACTS=${MEMORY_ARTIFACTS:-1000}
  IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-300}
  DOWNLOADS=${DOWNLOADS:-3}
else
  BENCH_SECTIONS=${BENCH_SECTIONS:-size serve memory connections package reconcile fetchmem archivemem startup}
  STARTUP_STORES=${STARTUP_STORES:-0 5000 20000}
  BENCH_DURATION=${BENCH_DURATION:-20}
  BENCH_WARMUP=${BENCH_WARMUP:-2}
  SERVE_SIZES=${SERVE_SIZES:-16KiB:16384:small 1MiB:1048576:small 50MiB:52428800:large}
  PACKAGE_SIZES=${PACKAGE_SIZES:-1048576,10485760,104857600}
  PACKAGE_RUNS=${PACKAGE_RUNS:-10}
  CRITERION_ARGS=${CRITERION_ARGS:---warm-up-time 1 --measurement-time 5}
  MEMORY_ARTIFACTS=${MEMORY_ARTIFACTS:-1000}
  IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
  DOWNLOADS=${DOWNLOADS:-21}
fi
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BENCH_OUT=${BENCH_OUT:-$TARGET_DIR/bench}
RUN=$BENCH_OUT/run
BENCH_RESULTS=$BENCH_OUT/results.tsv
export BENCH_RESULTS WRK_THREADS WRK_CONNECTIONS

# One run at a time per output directory (two runs on one machine would also skew each other).
mkdir -p "$BENCH_OUT"
exec 9>"$BENCH_OUT/.lock"
if ! flock -n 9; then
  log "another benchmark run holds $BENCH_OUT/.lock; waiting for it (at most 60 min)"
  flock -w 3600 9 || die "gave up waiting for $BENCH_OUT/.lock"
fi
rm -rf "$RUN" "$BENCH_RESULTS"
mkdir -p "$RUN" "$BENCH_OUT/bin"
: >"$BENCH_RESULTS"

WARNINGS=()
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
FINISHED=0

render_table() {
  python3 - "$BENCH_RESULTS" <<'EOF'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
head = ["Benchmark", "Case", "Ours", "Peer", "Ours / peer", "Target", "Where we are"]
print("| " + " | ".join(head) + " |")
print("|" + "|".join("---" for _ in head) + "|")
for r in rows:
    r = (r + [""] * len(head))[: len(head)]
    print("| " + " | ".join(c.replace("|", "\\|") if c else "—" for c in r) + " |")
EOF
}

machine() {
  printf '%s, %s cores (nproc), %s, %s MiB RAM, kernel %s\n' \
    "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" \
    "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    "$(awk '/^MemTotal/ { printf "%d", $2 / 1024 }' /proc/meminfo)" "$(uname -r)"
}

on_exit() {
  local rc=$?
  cleanup_pids
  if [[ -s $BENCH_RESULTS ]]; then
    {
      echo "Machine: $(machine)"
      echo "Load average (1/5/15 min) at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
      echo "Mode: $([[ $SMOKE == 1 ]] && echo "SMOKE (tiny sizes, ${BENCH_DURATION}s runs: figures are not meaningful)" || echo "full (${BENCH_DURATION}s wrk runs)")"
      echo
      render_table
    } >"$BENCH_OUT/results.md"
    echo
    cat "$BENCH_OUT/results.md"
  fi
  for w in "${WARNINGS[@]}"; do log "warning: $w"; done
  if [[ $FINISHED != 1 || $rc != 0 ]]; then
    log "FAILED (exit $rc); logs under $RUN"
    exit $((rc == 0 ? 1 : rc))
  fi
  log "done; results in $BENCH_OUT/results.md, logs under $RUN"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

has_section() { [[ " $BENCH_SECTIONS " == *" $1 "* ]]; }

ensure_tools() {
  local missing=() pkgs=() t
  for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
  ((${#missing[@]} == 0)) && return 0
  for t in "${missing[@]}"; do
    case $t in
      nginx | wrk | hyperfine | curl | jq | kubectl) pkgs+=("$t") ;;
      *) die "missing tool $t" ;;
    esac
  done
  [[ ${BENCH_INSTALL:-1} == 1 ]] || die "missing tools: ${missing[*]} (BENCH_INSTALL=0)"
  command -v apt-get >/dev/null || die "missing tools ${missing[*]} and no apt-get"
  log "installing ${pkgs[*]}"
  local sudo=""
  [[ $EUID -eq 0 ]] || sudo=sudo
  $sudo apt-get update -qq >"$RUN/apt.log" 2>&1 || die "apt-get update failed; see $RUN/apt.log"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >>"$RUN/apt.log" 2>&1 \
    || die "apt-get install ${pkgs[*]} failed; see $RUN/apt.log"
}

# build_controller VARIANT BACKENDS CARGO_ARGS...: release build, copied to $BENCH_OUT/bin so other
# builds in the shared target dir cannot swap it; BACKENDS lists what --list-backends must show.
build_controller() {
  local variant=$1 backends=$2; shift 2
  local out="$BENCH_OUT/bin/externalsource-controller-$variant" b
  log "building externalsource-controller ($variant): cargo build --release -p externalsource-controller $*"
  if ! cargo build --release -p externalsource-controller "$@" >"$RUN/build-$variant.log" 2>&1; then
    return 1
  fi
  cp "$TARGET_DIR/release/externalsource-controller" "$out.tmp"
  local listed
  listed=$("$out.tmp" --list-backends)
  for b in $backends; do
    grep -qw "$b" <<<"$listed" || die "binary built for $variant does not list backend $b (another build raced?):\n$listed"
  done
  mv "$out.tmp" "$out"
}

section_size() {
  log "== binary size"
  local variant args backends size
  for spec in "default|memory|" "filesystem|filesystem|--no-default-features --features filesystem" \
    "s3|s3|--no-default-features --features s3"; do
    IFS='|' read -r variant backends args <<<"$spec"
    # shellcheck disable=SC2086
    if build_controller "$variant" "$backends" $args; then
      size=$(stat -c %s "$BENCH_OUT/bin/externalsource-controller-$variant")
      # The AWS SDK is allowed 5 MB more than the rest.
      local v goal=15
      [[ $variant == s3 ]] && goal=20
      v=$(verdict "$(calc "$size / 1e6")" "<=" "$goal")
      record "binary size" "$variant (${args:-default features})" "$(calc "f'{$size / 1e6:.2f} MB'")" "" "" "≤ $goal MB" "$v"
    elif [[ $variant == s3 ]]; then
      WARNINGS+=("the s3-only build failed (backend in progress?); see $RUN/build-s3.log")
      record "binary size" "s3 (${args})" "build failed: $(grep -m1 -E '^error' "$RUN/build-s3.log" | cut -c1-80)" "" "" "≤ 20 MB" "not measured"
    else
      die "release build ($variant) failed; see $RUN/build-$variant.log"
    fi
  done
}

# Our server binary (memory + filesystem) and bench-serve (preloaded memory, private filesystem).
build_servers() {
  if [[ -n ${BIN:-} && -n ${SERVEBIN:-} ]]; then return 0; fi
  build_controller "memory-filesystem" "memory filesystem" --features filesystem \
    || die "release build failed; see $RUN/build-memory-filesystem.log"
  BIN=$BENCH_OUT/bin/externalsource-controller-memory-filesystem
  log "building bench-serve (release)"
  cargo build --release -p externalsource-tests --bin bench-serve >"$RUN/build-bench-serve.log" 2>&1 \
    || die "build of bench-serve failed; see $RUN/build-bench-serve.log"
  cp "$TARGET_DIR/release/bench-serve" "$BENCH_OUT/bin/bench-serve"
  SERVEBIN=$BENCH_OUT/bin/bench-serve
}

# config_toml FILE BACKEND PORT OPS_PORT [FS_ROOT]
config_toml() {
  cat >"$1" <<EOF
[server]
port = $3
bind_address = "127.0.0.1"
advertise_url = "http://127.0.0.1:$3"
${SERVER_TOML_EXTRA:-}

[ops]
port = $4
bind_address = "127.0.0.1"

[storage]
backend = "$2"

[storage.memory]
max_bytes = "4GiB"

[storage.filesystem]
root = "${5:-$RUN/unused-root}"
# serve reads a store other replicas write; these benchmarks pre-fill the directory.
shared = true

[log]
level = "warn"
EOF
}

# start_ours NAME BACKEND [FS_ROOT]: `serve` on loopback; sets OURS_PID, OURS_PORT, OURS_OPS.
start_ours() {
  local name=$1 backend=$2 root=${3:-}
  OURS_PORT=$(free_port)
  OURS_OPS=$(free_port)
  config_toml "$RUN/$name.toml" "$backend" "$OURS_PORT" "$OURS_OPS" "$root"
  start_bg "$RUN/$name.log" "$BIN" --config "$RUN/$name.toml" serve
  OURS_PID=$BG_PID
  wait_http "http://127.0.0.1:$OURS_OPS/healthz" "$OURS_PID" 60
}

# start_benchserve KIND NAME DIR: bench-serve over a preloaded memory store or the directory as a
# private filesystem store; sets BS_PID, BS_PORT.
start_benchserve() {
  local kind=$1 name=$2 dir=$3 i
  BS_PORT=$(free_port)
  start_bg "$RUN/$name.log" "$SERVEBIN" "$kind" "$dir" "$BS_PORT"
  BS_PID=$BG_PID
  for ((i = 0; i < 1200; i++)); do
    grep -q '^ready ' "$RUN/$name.log" && return 0
    kill -0 "$BS_PID" 2>/dev/null || die "bench-serve exited: $(tail -3 "$RUN/$name.log")"
    sleep 0.1
  done
  die "bench-serve not ready in 120 s"
}

fmt_serve() { # RPS BPS P99 -> cell
  python3 -c "import sys; r,b,p=map(float,sys.argv[1:]); print(f'{r:,.0f} req/s · {b/1048576:,.0f} MiB/s · p99 {p:.1f} ms')" "$@"
}

section_serve() {
  log "== artifact serving vs nginx (wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d${BENCH_DURATION}s)"
  build_servers
  local root=$RUN/serve-root dir=$RUN/artifacts/bench/bench
  dir=$root/artifacts/bench/bench
  mkdir -p "$dir"
  local spec label bytes kind hex
  # Named like real artifacts, by their digest: what the filesystem backend's cache admits.
  declare -A SERVE_PATH=()
  for spec in $SERVE_SIZES; do
    IFS=: read -r label bytes kind <<<"$spec"
    head -c "$bytes" /dev/urandom >"$dir/incoming"
    hex=$(sha256sum "$dir/incoming" | cut -d' ' -f1)
    mv "$dir/incoming" "$dir/$hex.tar.gz"
    SERVE_PATH[$label]=/artifacts/bench/bench/$hex.tar.gz
  done
  start_ours serve-fs filesystem "$root"
  local fs_port=$OURS_PORT
  start_benchserve memory serve-memory "$root"
  local mem_port=$BS_PORT
  start_benchserve filesystem serve-fs-private "$root"
  local private_port=$BS_PORT
  local nginx_port
  nginx_port=$(free_port)
  nginx_start "$RUN/nginx-serve" "$nginx_port" "$root" 2
  local nginx_pid=$BG_PID
  local first=${SERVE_SIZES%%:*} sums
  wait_http "http://127.0.0.1:$nginx_port${SERVE_PATH[$first]}" "$nginx_pid" 30
  # Same bytes from all four.
  sums=$(for p in "$nginx_port" "$fs_port" "$private_port" "$mem_port"; do
    curl -fsS "http://127.0.0.1:$p${SERVE_PATH[$first]}" | sha256sum
  done | sort -u | wc -l)
  [[ $sums == 1 ]] || die "the four servers return different bytes"

  for spec in $SERVE_SIZES; do
    IFS=: read -r label bytes kind <<<"$spec"
    local path=${SERVE_PATH[$label]} who port res
    declare -A RPS=() BPS=() P99=()
    for who in nginx fs fs-shared memory; do
      case $who in
        nginx) port=$nginx_port ;; fs) port=$private_port ;; fs-shared) port=$fs_port ;; memory) port=$mem_port ;;
      esac
      if ((BENCH_WARMUP > 0)); then run_wrk "http://127.0.0.1:$port$path" "${BENCH_WARMUP}s" "$RUN/wrk-warmup-$who-$label" >/dev/null; fi
      res=$(run_wrk "http://127.0.0.1:$port$path" "${BENCH_DURATION}s" "$RUN/wrk-$who-$label")
      read -r "RPS[$who]" "BPS[$who]" "P99[$who]" <<<"$res"
      log "  $label $who: $(fmt_serve "${RPS[$who]}" "${BPS[$who]}" "${P99[$who]}")"
    done
    for who in fs fs-shared memory; do
      local rr br pr target v
      rr=$(calc "${RPS[$who]} / ${RPS[nginx]}")
      br=$(calc "${BPS[$who]} / ${BPS[nginx]}")
      pr=$(calc "${P99[$who]} / ${P99[nginx]}")
      if [[ $kind == small ]]; then
        target="≥ 1.0× req/s"
        v=$(verdict "$rr" ">=" 1.0)
      else
        target="≥ 0.9× bytes/s"
        v=$(verdict "$br" ">=" 0.9)
      fi
      local case_name
      case $who in
        fs) case_name="filesystem backend (run: the controller's store)" ;;
        fs-shared) case_name="filesystem backend, shared = true (serve)" ;;
        memory) case_name="memory backend" ;;
      esac
      record "serving" "$label, $case_name" "$(fmt_serve "${RPS[$who]}" "${BPS[$who]}" "${P99[$who]}")" \
        "nginx: $(fmt_serve "${RPS[nginx]}" "${BPS[nginx]}" "${P99[nginx]}")" \
        "$(calc "f'{$rr:.2f}× req/s, {$br:.2f}× bytes/s, p99 {$pr:.2f}×'")" "$target" "$v"
    done
    unset RPS BPS P99
  done
  cleanup_pids
}

section_memory() {
  log "== memory (RSS)"
  build_servers
  local settle=2 ours nginx_rss empty loaded stored
  [[ $SMOKE == 1 ]] && settle=1
  mkdir -p "$RUN/empty-root"
  # Idle peer: nginx master + 2 workers, no traffic.
  local nport
  nport=$(free_port)
  mkdir -p "$RUN/empty-root/artifacts"
  echo ok >"$RUN/empty-root/ping"
  nginx_start "$RUN/nginx-idle" "$nport" "$RUN/empty-root" 2
  local npid=$BG_PID
  wait_http "http://127.0.0.1:$nport/ping" "$npid" 30
  sleep "$settle"
  nginx_rss=$(rss_tree_kib "$npid")
  stop_pid "$npid"
  # `serve` refuses the memory backend (it would hold nothing); its idle figure is the
  # preloaded server's, empty, below.
  start_ours "idle-filesystem" filesystem "$RUN/empty-root"
  sleep "$settle"
  ours=$(rss_kib "$OURS_PID")
  stop_pid "$OURS_PID"
  record "memory" "idle RSS, serve --storage-backend filesystem" "$(human_bytes $((ours * 1024)))" \
    "nginx idle (master + 2 workers): $(human_bytes $((nginx_rss * 1024)))" "$(calc "f'{$ours / $nginx_rss:.2f}×'")" \
    "≤ 20 MiB" "$(verdict "$(calc "$ours / 1024")" "<=" 20)"
  # The memory backend holding N x 64 KiB: marginal RSS over the bytes stored.
  local adir=$RUN/memory-artifacts
  python3 - "$adir" "$MEMORY_ARTIFACTS" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "artifacts", "bench", f"source-{i:04d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "bench-64k.tar.gz"), "wb") as f:
        f.write(os.urandom(65536))
EOF
  stored=$((MEMORY_ARTIFACTS * 65536))
  start_benchserve memory mem-empty "$RUN/empty-root/none"
  sleep "$settle"
  empty=$(rss_kib "$BS_PID")
  stop_pid "$BS_PID"
  record "memory" "idle RSS, memory backend (bench-serve memory, empty)" "$(human_bytes $((empty * 1024)))" \
    "nginx idle (master + 2 workers): $(human_bytes $((nginx_rss * 1024)))" "$(calc "f'{$empty / $nginx_rss:.2f}×'")" \
    "≤ 20 MiB" "$(verdict "$(calc "$empty / 1024")" "<=" 20)"
  start_benchserve memory mem-loaded "$adir"
  # Touch every artifact once, as consumers would.
  local i
  for ((i = 0; i < MEMORY_ARTIFACTS; i += 1)); do
    printf 'url = "http://127.0.0.1:%s/artifacts/bench/source-%04d/bench-64k.tar.gz"\noutput = "/dev/null"\n' "$BS_PORT" "$i"
  done >"$RUN/mem-urls.curl"
  curl -fsS --no-progress-meter --parallel --parallel-max 8 -K "$RUN/mem-urls.curl" 2>"$RUN/mem-curl.log" \
    || die "fetching the preloaded artifacts failed: $(tail -3 "$RUN/mem-curl.log")"
  sleep "$settle"
  loaded=$(rss_kib "$BS_PID")
  stop_pid "$BS_PID"
  local overhead
  overhead=$(calc "100 * (($loaded - $empty) * 1024 - $stored) / $stored")
  record "memory" "$MEMORY_ARTIFACTS × 64 KiB in the memory backend" \
    "RSS $(human_bytes $((loaded * 1024))) (empty $(human_bytes $((empty * 1024)))) for $(human_bytes "$stored") stored" "" \
    "$(calc "f'overhead {$overhead:+.1f} %'")" "overhead ≤ 10 %" "$(verdict "$overhead" "<=" 10)"
}

section_package() {
  log "== packaging vs tar | gzip -6 | sha256sum"
  local out=$RUN/package
  mkdir -p "$out"
  log "cargo bench -p externalsource-core --no-default-features --bench package (sizes $PACKAGE_SIZES)"
  # shellcheck disable=SC2086
  PACKAGE_BENCH_SIZES=$PACKAGE_SIZES PACKAGE_BENCH_OUT=$out CRITERION_HOME=$out/criterion \
    cargo bench -p externalsource-core --no-default-features --bench package -- $CRITERION_ARGS \
    >"$RUN/package-criterion.log" 2>&1 || die "cargo bench failed; see $RUN/package-criterion.log"
  local d label size ours_ns ours_size cli_s cli_size
  # Smallest payload first.
  for d in $(for f in "$out"/*/data; do echo "$(stat -c %s "$f") ${f%/data}"; done | sort -n | cut -d' ' -f2-); do
    label=$(basename "$d")
    size=$(stat -c %s "$d/data")
    ours_size=$(cat "$d/ours.size")
    ours_ns=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' \
      "$out/criterion/package/$label/new/estimates.json")
    local pipeline="tar --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - -C '$d' data | gzip -6 | sha256sum >/dev/null"
    hyperfine --shell=bash --style basic --warmup 1 --runs "$PACKAGE_RUNS" --export-json "$out/$label-cli.json" \
      "$pipeline" >"$RUN/package-hyperfine-$label.log" 2>&1 || die "hyperfine failed; see $RUN/package-hyperfine-$label.log"
    cli_s=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["median"])' "$out/$label-cli.json")
    cli_size=$(tar --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - -C "$d" data | gzip -6 | wc -c)
    local tr sr v
    tr=$(calc "($size / ($ours_ns / 1e9)) / ($size / $cli_s)")
    sr=$(calc "$ours_size / $cli_size")
    v=$(verdict "$tr" ">=" 1.0)
    if [[ $v == met ]] && python3 -c "import sys; sys.exit(0 if $sr > 1.0 else 1)"; then
      v="throughput met; output $(calc "f'{100 * ($sr - 1):.1f}'") % larger"
    fi
    record "packaging" "$label JSON payload" \
      "$(calc "f'{$size / ($ours_ns / 1e9) / 1048576:.1f} MiB/s · {$ours_size:,} B ({$size / $ours_size:.1f}:1)'")" \
      "tar | gzip -6 | sha256sum: $(calc "f'{$size / $cli_s / 1048576:.1f} MiB/s · {$cli_size:,} B'")" \
      "$(calc "f'{$tr:.2f}× throughput, {$sr:.3f}× size'")" "≥ 1.0× throughput, ≤ 1.0× size" "$v"
    log "  $label: ours $(calc "round($ours_ns / 1e6, 1)") ms, CLI $(calc "round($cli_s * 1e3, 1)") ms"
  done
}

# Opens N idle connections to 127.0.0.1:PORT in the background and holds them until killed;
# sets FLOOD_PID once all are open. flood_start NAME PORT N.
flood_start() {
  local name=$1 port=$2 n=$3 i
  start_bg "$RUN/$name.log" python3 -c '
import resource, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
conns = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    conns.append(s)
print("open", len(conns), flush=True)
time.sleep(3600)
' "$port" "$n"
  FLOOD_PID=$BG_PID
  for ((i = 0; i < 1200; i++)); do
    grep -q '^open ' "$RUN/$name.log" && return 0
    kill -0 "$FLOOD_PID" 2>/dev/null || die "connection flood exited: $(tail -3 "$RUN/$name.log")"
    sleep 0.1
  done
  die "connection flood did not open $n connections in 120 s"
}

# Median seconds of DOWNLOADS sequential GETs of URL, each on a new connection.
median_download_s() {
  local url=$1 i
  for ((i = 0; i < DOWNLOADS; i++)); do
    curl -fsS -o /dev/null --max-time 30 -w '%{time_total}\n' "$url" || die "download of $url failed beside the flood"
  done | sort -n | awk '{ t[NR] = $1 } END { print t[int((NR + 1) / 2)] }'
}

section_connections() {
  log "== $IDLE_CONNECTIONS idle connections: RSS and a 1 MiB download beside them, vs nginx"
  build_servers
  local root=$RUN/conn-root dir path=/artifacts/bench/bench/bench-1MiB.tar.gz
  dir=$root/artifacts/bench/bench
  mkdir -p "$dir"
  head -c 1048576 /dev/urandom >"$dir/bench-1MiB.tar.gz"
  # Room for the flood plus the download; timeouts beyond the measurement so the flood stays.
  SERVER_TOML_EXTRA="max_connections = $((IDLE_CONNECTIONS + 100))
header_read_timeout = \"10m\"
idle_timeout = \"10m\"" start_ours conn-fs filesystem "$root"
  local before during t_ours nginx_port nginx_before nginx_during t_nginx
  t_ours=$(median_download_s "http://127.0.0.1:$OURS_PORT$path")
  before=$(rss_kib "$OURS_PID")
  flood_start flood-ours "$OURS_PORT" "$IDLE_CONNECTIONS"
  sleep 1
  during=$(rss_kib "$OURS_PID")
  local t_flood
  t_flood=$(median_download_s "http://127.0.0.1:$OURS_PORT$path")
  stop_pid "$FLOOD_PID"
  stop_pid "$OURS_PID"
  nginx_port=$(free_port)
  NGINX_WORKER_CONNECTIONS=$((IDLE_CONNECTIONS + 100)) nginx_start "$RUN/nginx-conn" "$nginx_port" "$root" 2
  local npid=$BG_PID
  wait_http "http://127.0.0.1:$nginx_port$path" "$npid" 30
  nginx_before=$(rss_tree_kib "$npid")
  flood_start flood-nginx "$nginx_port" "$IDLE_CONNECTIONS"
  sleep 1
  nginx_during=$(rss_tree_kib "$npid")
  t_nginx=$(median_download_s "http://127.0.0.1:$nginx_port$path")
  stop_pid "$FLOOD_PID"
  stop_pid "$npid"
  log "  ours: RSS $((before / 1024)) -> $((during / 1024)) MiB, download ${t_ours}s -> ${t_flood}s; nginx: RSS $((nginx_before / 1024)) -> $((nginx_during / 1024)) MiB, download ${t_nginx}s"
  record "isolation" "RSS with $IDLE_CONNECTIONS idle connections open (serve, filesystem)" \
    "$(human_bytes $((during * 1024))) (idle $(human_bytes $((before * 1024))))" \
    "nginx (2 workers): $(human_bytes $((nginx_during * 1024))) (idle $(human_bytes $((nginx_before * 1024))))" \
    "$(calc "f'{$during / $nginx_during:.2f}×'")" "< 128 MiB" "$(verdict "$(calc "$during / 1024")" "<=" 128)"
  record "isolation" "1 MiB download beside $IDLE_CONNECTIONS idle connections (median of $DOWNLOADS, new connection each)" \
    "$(calc "f'{$t_flood * 1000:.1f} ms (without the flood {$t_ours * 1000:.1f} ms)'")" \
    "$(calc "f'nginx: {$t_nginx * 1000:.1f} ms'")" "$(calc "f'{$t_flood / $t_nginx:.2f}×'")" "< 100 ms" \
    "$(verdict "$(calc "$t_flood * 1000")" "<=" 100)"
}

section_reconcile() {
  log "== reconcile throughput (tests/bench/reconcile.sh)"
  build_servers
  # Full runs: the 1k-10k curve against the API write floor, then one 10-minute interval of steady
  # state at 10k; a smoke run is never given this section (it takes 30 minutes).
  BIN=$BIN RUN=$RUN RECONCILE_CURVE=${RECONCILE_CURVE:-1000 2000 5000 10000} RECONCILE_STEADY=${RECONCILE_STEADY:-640} \
    RECONCILE_CONCURRENCY=${RECONCILE_CONCURRENCY:-16} \
    RECONCILE_PLOT=${RECONCILE_PLOT:-$BENCH_OUT/reconcile-curve.svg} bash "$HERE/reconcile.sh" \
    || die "reconcile benchmark failed; see $RUN/reconcile"
  cp "$RUN/reconcile/curve.tsv" "$BENCH_OUT/reconcile-curve.tsv"
}

section_fetchmem() {
  log "== peak RSS of concurrent max-size fetches vs fetch.memory_budget (tests/bench/fetchmem.sh)"
  build_servers
  BIN=$BIN RUN=$RUN bash "$HERE/fetchmem.sh" || die "fetch memory benchmark failed; see $RUN/fetchmem"
}

section_archivemem() {
  log "== peak RSS of hostile archive shapes vs their admission reservation (tests/bench/archivemem.sh)"
  build_servers
  BIN=$BIN RUN=$RUN bash "$HERE/archivemem.sh" || die "archive memory benchmark failed; see $RUN/archivemem"
}

section_startup() {
  log "== start-up time vs store size (tests/bench/startup.sh)"
  build_servers
  BIN=$BIN RUN=$RUN STARTUP_STORES=$STARTUP_STORES bash "$HERE/startup.sh" || die "start-up benchmark failed; see $RUN/startup"
}

ensure_tools curl python3 nginx wrk hyperfine
cd "$REPO"
log "mode: $([[ $SMOKE == 1 ]] && echo smoke || echo full); sections: $BENCH_SECTIONS; output: $BENCH_OUT"
for s in size serve memory connections package reconcile fetchmem archivemem startup; do
  if has_section "$s"; then "section_$s"; fi
done
FINISHED=1
