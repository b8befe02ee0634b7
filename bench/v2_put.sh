#!/usr/bin/env bash
# etcd 3.4 (1 member, --enable-v2, default durability) and rota (1 node) in ONE run on this
# machine, the same wrk load for both: v2 PUT of random keys with a 64-byte value at
# concurrency 1, 16 and 64; then the ratio rota/etcd per concurrency.
# For each concurrency both get a fresh server (etcd started exactly as ../shared/bench's
# bench_etcd.sh starts it), both stay up, and their runs interleave (etcd, rota, etcd, ...),
# so that the machine's speed drifting during the run (±30% here over minutes) falls on both
# alike; before each run the machine must be quiet (see wait_quiet).
# Every rota write is fsynced before its answer, as etcd's are.
# Workloads: put (../shared/bench/etcd_v2_put.lua), putlight (bench/v2_put_light.lua: the
# same requests for less of wrk's CPU, which shares the two cores with the server), post,
# v2load (the same PUTs from bench/src/bin/rota-v2load.rs instead of wrk: a closed loop,
# one request in flight per connection, at about half of wrk's CPU per request).
# usage: bench/v2_put.sh            env: RUNS (3), DUR (10s), CONCS ("1 16 64"),
#                                        WORKLOADS ("put"; "put putlight" for both)
# needs: apt-get install -y etcd-server wrk jq curl
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
[ -f "$SHARED/lib.sh" ] || { echo "peer scripts not found at $SHARED (set SHARED=.../shared/bench)" >&2; exit 1; }
source "$SHARED/lib.sh"
for tool in etcd wrk curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (see the script's header: apt-get install -y ...)" >&2; exit 1; }
done
export RUNS DUR
OUT=${OUT:-$(mktemp -d /tmp/rota-bench.XXXX)}; mkdir -p "$OUT"
echo "results in $OUT"
(cd "$ROOT" && cargo build --release -q -p rota -p rota-bench) || exit 1
ROTA="$ROOT/target/release/rota"
V2LOAD="$ROOT/target/release/rota-v2load"
# The same RESULT line as wrk_run, from rota-v2load.
v2load_run() { local label=$1 c=$2 url=$3
  local out; out=$(timeout 60 "$V2LOAD" --addr "${url#http://}" -c "$c" -d "${DUR%s}" | grep SUMMARY)
  echo "RESULT $label c=$c $out"; }
DATA=$(mktemp -d /tmp/rota-bench-data.XXXX)

source "$ROOT/bench/quiet.sh"

start_etcd() { rm -rf "$DATA/etcd"
  etcd --name s1 --data-dir "$DATA/etcd" --enable-v2=true \
    --listen-client-urls http://127.0.0.1:22379 --advertise-client-urls http://127.0.0.1:22379 \
    --listen-peer-urls http://127.0.0.1:22380 --initial-advertise-peer-urls http://127.0.0.1:22380 \
    --initial-cluster s1=http://127.0.0.1:22380 --initial-cluster-state new --initial-cluster-token bench \
    --logger=zap --log-outputs="$DATA/etcd.log" > "$DATA/etcd.out" 2>&1 &
  STARTED_PIDS+=($!); wait_http http://127.0.0.1:22379/health; }
start_rota() { rm -rf "$DATA/n1"
  "$ROTA" serve --name n1 --data-dir "$DATA/n1" --listen-client-urls http://127.0.0.1:23379 \
    --advertise-client-urls http://127.0.0.1:23379 --listen-peer-urls http://127.0.0.1:23380 \
    > "$OUT/rota.log" 2>&1 &
  STARTED_PIDS+=($!); wait_http http://127.0.0.1:23379/health; }

for wl in ${WORKLOADS:-put}; do
  case $wl in put) LUA=$SHARED/etcd_v2_put.lua;; post) LUA=$SHARED/etcd_v2_post.lua;;
    putlight) LUA=$ROOT/bench/v2_put_light.lua;; v2load) LUA=;; *) echo "unknown workload $wl"; exit 1;; esac
  run() { if [ "$wl" = v2load ]; then v2load_run "$@"; else wrk_run "$@" "$LUA"; fi; }
  for c in ${CONCS:-1 16 64}; do
    stop_started   # a fresh server of each per concurrency
    start_etcd || exit 1; start_rota || exit 1; sleep 1
    for r in $(seq 1 "$RUNS"); do
      wait_quiet; stamp "etcd $wl c=$c run=$r"; run etcd1-$wl "$c" http://127.0.0.1:22379 | tee -a "$OUT/etcd.txt"
      wait_quiet; stamp "rota $wl c=$c run=$r"; run rota1-$wl "$c" http://127.0.0.1:23379 | tee -a "$OUT/rota.txt"
    done
  done
done
stop_started; rm -rf "$DATA"

echo; echo "== medians"; python3 "$SHARED/summarize.py" "$OUT/etcd.txt" "$OUT/rota.txt" | tee "$OUT/summary.txt"
echo; echo "== rota / etcd"
python3 - "$OUT/summary.txt" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"RESULT (\S+)-(put|post|putlight|v2load) c=(\d+).*\| median (.*)$", line) or \
        re.match(r"(\S+)-(put|post|putlight|v2load) c=(\d+).*\| median (.*)$", line)
    if not m: continue
    who, wl, c, fields = m.groups()
    vals = dict(kv.split("=") for kv in fields.split())
    rows[(who.replace("etcd1", "etcd").replace("rota1", "rota"), wl, int(c))] = {k: float(v) for k, v in vals.items()}
for (who, wl, c), v in sorted(rows.items()):
    if who != "rota": continue
    e = rows.get(("etcd", wl, c))
    if not e: continue
    print(f"{wl} c={c}: rota {v['rps']:.0f}/s p50 {v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms | "
          f"etcd {e['rps']:.0f}/s p50 {e['p50_ms']:.2f} ms p99 {e['p99_ms']:.2f} ms | "
          f"throughput x{v['rps']/e['rps']:.2f}, p50 x{v['p50_ms']/e['p50_ms']:.2f}, p99 x{v['p99_ms']/e['p99_ms']:.2f}")
PY
