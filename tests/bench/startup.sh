#!/usr/bin/env bash
# Start-up time against store size: `serve` over a shared filesystem store holding N artifacts of
# 32 KiB (N in STARTUP_STORES, default "0 5000 20000"), each named by its digest as the controller
# writes them. Reported: when /healthz and /readyz first answer 200, and when the background
# verification of every artifact has finished (its log line), all from process start. Peer: nginx
# started over the same directory, time to its first 200. Page cache warm (the store was just
# written), as after a pod restart on the same node.
#
# Usage: bash tests/bench/startup.sh       (tests/bench/run.sh calls it)
# Environment: BIN (controller binary; built when unset), RUN (log dir), BENCH_RESULTS (TSV rows),
#   STARTUP_STORES.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

STARTUP_STORES=${STARTUP_STORES:-0 5000 20000}
bench_section startup

for t in nginx curl python3; do command -v "$t" >/dev/null || die "start-up benchmark needs $t"; done
cd "$REPO"
[[ -n ${BIN:-} ]] || build_release_controller --features filesystem

# until_200 URL PID: the time (`now`) URL first answers 200.
until_200() {
  local url=$1 pid=$2 i
  for ((i = 0; i < 12000; i++)); do
    if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
      now
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || die "process $pid exited before $url answered"
    sleep 0.005
  done
  die "$url did not answer 200 within a minute"
}

fill_store() { # ROOT COUNT
  python3 - "$1" "$2" <<'PY'
import hashlib, os, sys
root, n = sys.argv[1], int(sys.argv[2])
os.makedirs(os.path.join(root, "artifacts"), exist_ok=True)
for i in range(n):
    body = os.urandom(32768)
    d = os.path.join(root, "artifacts", "bench", f"source-{i:05d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha256(body).hexdigest() + ".tar.gz"), "wb") as f:
        f.write(body)
with open(os.path.join(root, "ping"), "w") as f:
    f.write("ok\n")
PY
}

for n in $STARTUP_STORES; do
  root=$DIR/store-$n
  fill_store "$root" "$n"
  port=$(free_port)
  ops=$(free_port)
  cat >"$DIR/serve-$n.toml" <<EOF
[server]
port = $port
bind_address = "127.0.0.1"
shutdown_delay = "0s"

[ops]
port = $ops
bind_address = "127.0.0.1"

[storage]
backend = "filesystem"

[storage.filesystem]
root = "$root"
shared = true

[log]
format = "json"
level = "info"
EOF
  t0=$(now)
  start_bg "$DIR/serve-$n.log" "$BIN" --config "$DIR/serve-$n.toml" serve
  pid=$BG_PID
  t_health=$(until_200 "http://127.0.0.1:$ops/healthz" "$pid")
  t_ready=$(until_200 "http://127.0.0.1:$ops/readyz" "$pid")
  for ((i = 0; i < 12000; i++)); do
    grep -q 'filesystem store verified' "$DIR/serve-$n.log" && break
    sleep 0.005
  done
  t_verified=$(now)
  grep -q 'filesystem store verified' "$DIR/serve-$n.log" || die "verifying $n artifacts took over a minute"
  stop_pid "$pid"

  nport=$(free_port)
  n0=$(now)
  nginx_start "$DIR/nginx-$n" "$nport" "$root" 2
  npid=$BG_PID
  n_first=$(until_200 "http://127.0.0.1:$nport/ping" "$npid")
  stop_pid "$npid"

  health_ms=$(calc "round(($t_health - $t0) * 1000)")
  ready_ms=$(calc "round(($t_ready - $t0) * 1000)")
  verified_ms=$(calc "round(($t_verified - $t0) * 1000)")
  nginx_ms=$(calc "round(($n_first - $n0) * 1000)")
  log "  $n artifacts: /healthz ${health_ms} ms, /readyz ${ready_ms} ms, verified after ${verified_ms} ms; nginx first 200 ${nginx_ms} ms"
  record "startup" "$n × 32 KiB artifacts: /healthz, /readyz (verification done)" \
    "${health_ms} ms, ${ready_ms} ms (${verified_ms} ms)" "nginx first 200: ${nginx_ms} ms" \
    "$(calc "f'{$ready_ms / max($nginx_ms, 1):.2f}×'")" "/healthz < 1 s" "$(verdict "$health_ms" "<=" 999)"
  rm -rf "$root"
done
