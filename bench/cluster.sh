#!/usr/bin/env bash
# A 3-member etcd 3.4 cluster and a 3-node rota cluster on loopback, in ONE run, same loads:
#   1. v2 PUT of random keys, 64-byte values, wrk c=64 against the leader: RUNS runs of DUR
#      per system, interleaved (etcd, rota, etcd, rota, ...) with both clusters up, so that
#      the machine's speed drifting during the run (±30% here over minutes) falls on both
#      alike; before each run the machine must be quiet (see wait_quiet)
#   2. failover: SIGKILL the leader, time until a client's write succeeds on a survivor
#      (bench/ rota-failover), restart the killed member, wait until all are healthy; ROUNDS
#      times per system, one cluster up at a time
# Prints RESULT lines, medians, and rota's ratios.
# usage: bench/cluster.sh      env: RUNS (3), DUR (10s), ROUNDS (10)
# needs: apt-get install -y etcd-server wrk curl jq
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
source "$SHARED/lib.sh"
for tool in etcd wrk curl jq; do
  command -v "$tool" >/dev/null || { echo "needs $tool (see the script's header: apt-get install -y ...)" >&2; exit 1; }
done
ROUNDS=${ROUNDS:-10}
OUT=${OUT:-$(mktemp -d /tmp/rota-cluster-bench.XXXX)}; mkdir -p "$OUT"; echo "results in $OUT"
(cd "$ROOT" && cargo build --release -q -p rota -p rota-bench) || exit 1
ROTA="$ROOT/target/release/rota"; FAILOVER="$ROOT/target/release/rota-failover"
BASE=$(mktemp -d /tmp/rota-cluster-bench-data.XXXX)
declare -A PID
# Each system has its own ports: member i listens for clients on <base>+100*i and for
# peers on the next port (etcd 24379/24380, 24479/..., rota 25379/25380, ...; below the kernel's ephemeral ports, 32768 and up, which an outgoing connection could be holding).
declare -A PORT_BASE=([etcd]=24279 [rota]=25279)
client_port() { echo $(( PORT_BASE[$1] + 100 * ${2#m} )); }   # SYSTEM MEMBER
initial_cluster() { local sys=$1 ic="" m
  for m in m1 m2 m3; do ic+="${ic:+,}$m=http://127.0.0.1:$(( $(client_port "$sys" $m) + 1 ))"; done; echo "$ic"; }

# start SYSTEM MEMBER: starts (or restarts, on its data dir) one member
start() {
  local sys=$1 name=$2 cport; cport=$(client_port "$1" "$2"); local pport=$((cport + 1))
  local flags=(--name "$name" --data-dir "$BASE/$sys-$name" --listen-client-urls "http://127.0.0.1:$cport"
    --advertise-client-urls "http://127.0.0.1:$cport" --listen-peer-urls "http://127.0.0.1:$pport"
    --initial-advertise-peer-urls "http://127.0.0.1:$pport" --initial-cluster "$(initial_cluster "$sys")"
    --initial-cluster-state new --initial-cluster-token bench-$sys)
  if [ "$sys" = etcd ]; then
    etcd "${flags[@]}" --enable-v2=true --logger=zap --log-outputs="$BASE/$sys-$name.log" >> "$BASE/$sys-$name.out" 2>&1 &
  else
    "$ROTA" serve "${flags[@]}" >> "$BASE/$sys-$name.out" 2>&1 &
  fi
  PID[$sys-$name]=$!; STARTED_PIDS+=($!)
}

start_cluster() { local sys=$1 m
  rm -rf "$BASE"/$sys-*
  for m in m1 m2 m3; do start "$sys" $m; done
  for m in m1 m2 m3; do wait_http "http://127.0.0.1:$(client_port "$sys" $m)/health" || return 1; done
  wait_leader "$sys"; }

stop_cluster() { local sys=$1 m p
  for m in m1 m2 m3; do kill "${PID[$sys-$m]}" 2>/dev/null; done
  # etcd members can take several seconds to exit on SIGTERM (they try to hand leadership
  # over); wait, so that their ports are free and their CPU idle before the next phase.
  for m in m1 m2 m3; do p=${PID[$sys-$m]}; for i in $(seq 1 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; done; }

source "$ROOT/bench/quiet.sh"

leader_url() { # SYSTEM: the client URL of the member that says it leads
  local m p; for m in m1 m2 m3; do p=$(client_port "$1" $m)
    if curl -fsS --max-time 1 "http://127.0.0.1:$p/v2/stats/self" 2>/dev/null | grep -q '"StateLeader"'; then echo "http://127.0.0.1:$p"; return 0; fi
  done; return 1; }

wait_leader() { for i in $(seq 1 100); do leader_url "$1" >/dev/null && return 0; sleep 0.1; done; echo "$1: no leader" >&2; return 1; }

ports_busy() { ss -ltn | grep -qE ':(40379|40380|40479|40480|40579|40580|41379|41380|41479|41480|41579|41580) '; }
for i in $(seq 1 300); do ports_busy || break; sleep 0.1; done
ports_busy && { echo "bench ports (40379..., 41379...) are in use: is another cluster running?" >&2; exit 1; }

# 1. throughput, interleaved
start_cluster etcd || exit 1
start_cluster rota || exit 1
sleep 1
for sys in etcd rota; do echo "$sys leader: $(leader_url $sys)"; done
for r in $(seq 1 "$RUNS"); do
  for sys in etcd rota; do
    L=$(leader_url $sys) || { echo "$sys: no leader before run $r" >&2; exit 1; }
    wait_quiet
    stamp "$sys 3 members v2 PUT c=64 at the leader run=$r"
    wrk_run $sys-3-put-leader 64 "$L" "$SHARED/etcd_v2_put.lua"
  done
done | tee -a "$OUT/cluster.txt"
stop_cluster etcd; stop_cluster rota

# 2. failover, one system at a time
for sys in etcd rota; do
  start_cluster $sys || exit 1; sleep 1
  for round in $(seq 1 "$ROUNDS"); do
    MEMBERS=""
    for m in m1 m2 m3; do MEMBERS+="${MEMBERS:+,}http://127.0.0.1:$(client_port $sys $m)=${PID[$sys-$m]}"; done
    L=$(leader_url $sys) || { echo "no leader before round $round" >&2; break; }
    stamp "$sys failover round=$round (leader $L)"
    timeout 60 "$FAILOVER" --members "$MEMBERS" --label "$sys-3" | tee -a "$OUT/cluster.txt"
    # restart whichever member died, on its data dir
    for m in m1 m2 m3; do
      if ! kill -0 "${PID[$sys-$m]}" 2>/dev/null; then
        start $sys $m; wait_http "http://127.0.0.1:$(client_port $sys $m)/health" || exit 1
      fi
    done
    wait_leader $sys || exit 1; sleep 2
  done
  stop_cluster $sys
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
