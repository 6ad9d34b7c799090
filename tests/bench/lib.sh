# shellcheck shell=bash
# Helpers shared by the benchmark scripts; sourced, not run. Expects `set -euo pipefail`.
# Every server started here listens on 127.0.0.1 only and is registered for clean-up.

BENCH_PIDS=()

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Stops every process started with `start_bg`, newest first (SIGTERM, then SIGKILL after 5 s).
cleanup_pids() {
  local i pid
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${BENCH_PIDS[i]}
    kill -TERM "$pid" 2>/dev/null || continue
  done
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${BENCH_PIDS[i]}
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  BENCH_PIDS=()
}

# start_bg LOGFILE CMD...: runs CMD in the background; its pid is in $BG_PID.
start_bg() {
  local logfile=$1; shift
  : >"$logfile"
  "$@" >>"$logfile" 2>&1 &
  BG_PID=$!
  BENCH_PIDS+=("$BG_PID")
}

# stop_pid PID: stops one process started with start_bg and forgets it.
stop_pid() {
  local pid=$1 keep=() p
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${BENCH_PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  BENCH_PIDS=("${keep[@]}")
}

# A free TCP port on 127.0.0.1 (bound and released; the race is acceptable here).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL PID [SECONDS]: waits until URL answers 200, failing early if PID died.
wait_http() {
  local url=$1 pid=$2 limit=${3:-60} i
  for ((i = 0; i < limit * 10; i++)); do
    if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || die "process $pid exited before $url answered"
    sleep 0.1
  done
  die "$url did not answer 200 within ${limit}s"
}

# Sets up section NAME: TARGET_DIR, RUN (standalone, a directory of the section's own, so it
# cannot collide with a run.sh in progress), DIR (emptied) and BENCH_RESULTS; background
# processes are stopped on exit.
bench_section() {
  TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
  RUN=${RUN:-$TARGET_DIR/bench/run-$1}
  DIR=$RUN/$1
  BENCH_RESULTS=${BENCH_RESULTS:-$DIR/results.tsv}
  rm -rf "$DIR"
  mkdir -p "$DIR"
  trap cleanup_pids EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# Writes controller config FILE for a bench run on loopback (artifact server on PORT, ops on
# OPS, a filesystem store at STORE); the tables read from stdin follow it.
bench_controller_config() {
  local file=$1 port=$2 ops=$3 store=$4
  cat >"$file" <<TOML
[server]
port = $port
bind_address = "127.0.0.1"
advertise_url = "http://127.0.0.1:$port"

[ops]
port = $ops
bind_address = "127.0.0.1"

[storage]
backend = "filesystem"

[storage.filesystem]
root = "$store"

TOML
  cat >>"$file"
}

# RSS of one pid in KiB (VmRSS; VmHWM for the peak with `rss_kib PID VmHWM`).
rss_kib() {
  awk -v f="${2:-VmRSS}:" '$1 == f { print $2 }' "/proc/$1/status"
}

# Sum of VmRSS (KiB) over a process and its children (nginx master + workers).
rss_tree_kib() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do total=$((total + $(rss_kib "$p"))); done
  echo "$total"
}

# Starts nginx as a peer on 127.0.0.1:PORT serving ROOT. nginx_start DIR PORT ROOT [WORKERS]; pid in $BG_PID.
nginx_start() {
  local dir=$1 port=$2 root=$3 workers=${4:-2} user=""
  mkdir -p "$dir/logs" "$dir/tmp"
  [[ $EUID -eq 0 ]] && user="user root;"
  cat >"$dir/nginx.conf" <<EOF
$user
worker_processes $workers;
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
worker_rlimit_nofile $(( ${NGINX_WORKER_CONNECTIONS:-4096} * 2 ));
events { worker_connections ${NGINX_WORKER_CONNECTIONS:-4096}; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  keepalive_timeout 65s;
  default_type application/gzip;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  server {
    listen 127.0.0.1:$port;
    root $root;
    autoindex off;
  }
}
EOF
  start_bg "$dir/logs/stdout.log" nginx -p "$dir" -e "$dir/logs/error.log" -c "$dir/nginx.conf"
}

# run_wrk URL DURATION OUT_PREFIX: runs wrk and writes OUT_PREFIX.txt; prints
# "<req/s> <bytes/s> <p99 ms>". Fails on socket errors or non-2xx answers.
run_wrk() {
  local url=$1 duration=$2 out=$3
  wrk -t "$WRK_THREADS" -c "$WRK_CONNECTIONS" -d "$duration" --timeout 60s --latency "$url" >"$out.txt" 2>&1 \
    || die "wrk failed against $url: $(tail -3 "$out.txt")"
  if grep -q 'Non-2xx or 3xx' "$out.txt"; then die "wrk got non-2xx answers from $url: $(grep 'Non-2xx' "$out.txt")"; fi
  if grep -q 'Socket errors' "$out.txt"; then
    # Errors while wrk closes its connections at the end of the run are normal; anything else is not.
    local errs
    errs=$(awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$out.txt")
    if ((errs > WRK_CONNECTIONS)); then die "wrk socket errors against $url: $(grep 'Socket errors' "$out.txt")"; fi
  fi
  awk '
    function unit(v,   n, u) {
      n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
      if (u == "us") return n / 1000; if (u == "ms") return n; if (u == "s") return n * 1000; if (u == "m") return n * 60000
      if (u == "B") return n; if (u == "KB") return n * 1024; if (u == "MB") return n * 1048576; if (u == "GB") return n * 1073741824
      return n
    }
    $1 == "99%" { p99 = unit($2) }
    $1 == "Requests/sec:" { rps = $2 }
    $1 == "Transfer/sec:" { bps = unit($2) }
    END {
      if (rps == "" || p99 == "") { exit 1 }
      printf "%.1f %.0f %.3f\n", rps, bps, p99
    }' "$out.txt" || die "cannot parse wrk output $out.txt"
}

# Results: one TSV row per measurement, rendered as a markdown table at the end.
#   record SECTION CASE OURS PEER RATIO TARGET VERDICT
record() {
  local IFS=$'\t'
  printf '%s\n' "$*" >>"$BENCH_RESULTS"
}

# Python one-liners for arithmetic (bash has integers only).
calc() { python3 -c "import sys; print($1)"; }

# verdict RATIO OP TARGET: "met" or "missed by N %".
verdict() {
  python3 - "$1" "$2" "$3" <<'EOF'
import sys
value, op, target = float(sys.argv[1]), sys.argv[2], float(sys.argv[3])
if op == ">=":
    print("met" if value >= target else f"missed by {100 * (target - value) / target:.0f} %")
else:
    print("met" if value <= target else f"missed by {100 * (value - target) / target:.0f} %")
EOF
}

human_bytes() {
  python3 - "$1" <<'EOF'
import sys
n = float(sys.argv[1])
for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
        print(f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}")
        break
    n /= 1024
EOF
}

# --- A real control plane (the test crate's externalsource-testenv: etcd + kube-apiserver). ---
# These use the caller's DIR (logs) and TARGET_DIR, and set TESTENV, testenv_pid and KUBECONFIG.

# Builds externalsource-controller (release, with the given cargo feature arguments) into $DIR;
# sets BIN.
build_release_controller() {
  log "building externalsource-controller (release${*:+, $*})"
  cargo build --release -p externalsource-controller "$@" >"$DIR/build-controller.log" 2>&1 \
    || die "build failed; see $DIR/build-controller.log"
  cp "$TARGET_DIR/release/externalsource-controller" "$DIR/externalsource-controller"
  BIN=$DIR/externalsource-controller
}

# Builds externalsource-testenv and bench-api-writes (release) into $DIR; sets TESTENV and API_WRITES.
build_testenv() {
  log "building externalsource-testenv and bench-api-writes (release)"
  cargo build --release -p externalsource-tests --bin externalsource-testenv --bin bench-api-writes \
    >"$DIR/build-testenv.log" 2>&1 || die "build of externalsource-testenv failed; see $DIR/build-testenv.log"
  cp "$TARGET_DIR/release/externalsource-testenv" "$TARGET_DIR/release/bench-api-writes" "$DIR/"
  TESTENV=$DIR/externalsource-testenv
  API_WRITES=$DIR/bench-api-writes
}

now() { date +%s.%N; }

# CPU seconds (user + system) a process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$1/stat"; }

# CPU seconds of the control plane (etcd + kube-apiserver, the testenv's children).
cp_cpu_s() {
  local total=0 p
  for p in $(pgrep -P "$testenv_pid" || true); do total=$(calc "$total + $(cpu_s "$p")"); done
  echo "$total"
}

start_testenv() { # NAME: a fresh control plane with a namespace "bench"; sets testenv_pid and KUBECONFIG
  local name=$1 i p
  start_bg "$DIR/testenv-$name.log" "$TESTENV" "$DIR/kubeconfig-$name"
  testenv_pid=$BG_PID
  for ((i = 0; i < 6000; i++)); do
    grep -q '^ready ' "$DIR/testenv-$name.log" && break
    kill -0 "$testenv_pid" 2>/dev/null || die "testenv exited: $(tail -5 "$DIR/testenv-$name.log")"
    sleep 0.1
  done
  grep -q '^ready ' "$DIR/testenv-$name.log" || die "testenv not ready in 600 s"
  # etcd and kube-apiserver are the testenv's children; registered so they go even if it is killed.
  for p in $(pgrep -P "$testenv_pid" || true); do BENCH_PIDS+=("$p"); done
  export KUBECONFIG=$DIR/kubeconfig-$name
  kubectl create namespace bench >/dev/null
}

# Sources of namespace bench that are Ready=True.
ready_count() {
  kubectl get externalsources.source.flux.oddkin.co -n bench -o json 2>/dev/null \
    | jq '[.items[] | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length'
}
