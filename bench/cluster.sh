#!/usr/bin/env bash
# A 3-member etcd 3.4 cluster and a 3-node rota cluster on loopback, in ONE run, same loads:
#   1. v2 PUT of random keys, 64-byte values, wrk c=64 against the leader (RUNS runs of DUR)
#   2. failover: SIGKILL the leader, time until a client's write succeeds on a survivor
#      (bench/ rota-failover), restart the killed member, wait until all are healthy; ROUNDS times
# Prints RESULT lines, medians, and rota's ratios.
# usage: bench/cluster.sh      env: RUNS (3), DUR (10s), ROUNDS (10)
# needs: apt-get install -y etcd-server wrk curl jq
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
source "$SHARED/lib.sh"
ROUNDS=${ROUNDS:-10}
OUT=${OUT:-$(mktemp -d /tmp/rota-cluster-bench.XXXX)}; mkdir -p "$OUT"; echo "results in $OUT"
(cd "$ROOT" && cargo build --release -q -p rota -p rota-bench) || exit 1
ROTA="$ROOT/target/release/rota"; FAILOVER="$ROOT/target/release/rota-failover"
BASE=$(mktemp -d /tmp/rota-cluster-bench-data.XXXX)
declare -A PID

# start SYSTEM NAME CLIENT_PORT PEER_PORT INITIAL_CLUSTER
start() {
  local sys=$1 name=$2 cport=$3 pport=$4 ic=$5
  local flags=(--name "$name" --data-dir "$BASE/$sys-$name" --listen-client-urls "http://127.0.0.1:$cport"
    --advertise-client-urls "http://127.0.0.1:$cport" --listen-peer-urls "http://127.0.0.1:$pport"
    --initial-advertise-peer-urls "http://127.0.0.1:$pport" --initial-cluster "$ic"
    --initial-cluster-state new --initial-cluster-token bench-$sys)
  if [ "$sys" = etcd ]; then
    etcd "${flags[@]}" --enable-v2=true --logger=zap --log-outputs="$BASE/$sys-$name.log" >> "$BASE/$sys-$name.out" 2>&1 &
  else
    "$ROTA" serve "${flags[@]}" >> "$BASE/$sys-$name.out" 2>&1 &
  fi
  PID[$sys-$name]=$!; STARTED_PIDS+=($!)
}

leader_url() { # SYSTEM: the client URL of the member that says it leads
  for p in 40379 40479 40579; do
    if curl -fsS --max-time 1 "http://127.0.0.1:$p/v2/stats/self" 2>/dev/null | grep -q '"StateLeader"'; then echo "http://127.0.0.1:$p"; return 0; fi
  done; return 1; }

# etcd members can take several seconds to exit on SIGTERM (they try to hand leadership
# over); the next system must not start until the ports are free.
wait_ports_free() { for i in $(seq 1 300); do
    ss -ltn | grep -qE ':(40379|40380|40479|40480|40579|40580) ' || return 0; sleep 0.1; done
  echo "ports still busy" >&2; return 1; }

wait_leader() { for i in $(seq 1 100); do leader_url >/dev/null && return 0; sleep 0.1; done; echo "no leader" >&2; return 1; }

for sys in etcd rota; do
  stop_started; wait_ports_free || exit 1; rm -rf "$BASE"/$sys-*
  IC="m1=http://127.0.0.1:40380,m2=http://127.0.0.1:40480,m3=http://127.0.0.1:40580"
  start $sys m1 40379 40380 "$IC"; start $sys m2 40479 40480 "$IC"; start $sys m3 40579 40580 "$IC"
  for p in 40379 40479 40579; do wait_http "http://127.0.0.1:$p/health" || exit 1; done
  wait_leader || exit 1; sleep 1
  L=$(leader_url); echo "$sys leader: $L"
  for r in $(seq 1 "$RUNS"); do stamp "$sys 3 members v2 PUT c=64 at the leader run=$r"
    wrk_run $sys-3-put-leader 64 "$L" "$SHARED/etcd_v2_put.lua"; done | tee -a "$OUT/cluster.txt"
  for round in $(seq 1 "$ROUNDS"); do
    MEMBERS="http://127.0.0.1:40379=${PID[$sys-m1]},http://127.0.0.1:40479=${PID[$sys-m2]},http://127.0.0.1:40579=${PID[$sys-m3]}"
    L=$(leader_url) || { echo "no leader before round $round" >&2; break; }
    stamp "$sys failover round=$round (leader $L)"
    timeout 60 "$FAILOVER" --members "$MEMBERS" --label "$sys-3" | tee -a "$OUT/cluster.txt"
    # restart whichever member died, on its data dir
    for m in m1 m2 m3; do
      if ! kill -0 "${PID[$sys-$m]}" 2>/dev/null; then
        case $m in m1) c=40379 p=40380;; m2) c=40479 p=40480;; m3) c=40579 p=40580;; esac
        start $sys $m $c $p "$IC"; wait_http "http://127.0.0.1:$c/health" || exit 1
      fi
    done
    wait_leader || exit 1; sleep 2
  done
done
stop_started; rm -rf "$BASE"

echo; echo "== medians"; python3 "$SHARED/summarize.py" "$OUT/cluster.txt" | tee "$OUT/summary.txt"
echo; echo "== rota / etcd"
python3 - "$OUT/summary.txt" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+).*\| median (.*)$", line)
    if m: rows[m.group(1)] = {k: float(v) for k, v in (kv.split("=") for kv in m.group(2).split())}
e, r = rows.get("etcd-3-put-leader"), rows.get("rota-3-put-leader")
if e and r:
    print(f"PUT c=64 at the leader: rota {r['rps']:.0f}/s (p99 {r['p99_ms']:.1f} ms) vs etcd {e['rps']:.0f}/s (p99 {e['p99_ms']:.1f} ms): x{r['rps']/e['rps']:.2f}")
e, r = rows.get("etcd-3-failover"), rows.get("rota-3-failover")
if e and r:
    print(f"failover (SIGKILL leader -> first successful write), median: rota {r['failover_ms']:.0f} ms vs etcd {e['failover_ms']:.0f} ms")
PY
