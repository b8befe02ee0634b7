#!/usr/bin/env bash
# Full job cycle (submit → lease → complete, one job per request, every step durable) in ONE run on
# this machine, one load generator (bench/ rota-bench, Rust) for every system:
#   rota (1 node)                  POST jobs → POST lease → POST complete, each fsynced before its answer
#   rota-lease-next (1 node)       POST jobs → POST complete with lease_next (it leases the
#                                  consumer's next job in the same durable entry)
#   Redis 7, appendfsync always    LPUSH → BLMOVE → LREM (the reliable-queue pattern)
#   beanstalkd 1.12, -f 0          put → reserve → delete, binlog fsync on every write
#   beanstalkd 1.12, -f 50         the same, fsync at most every 50 ms (may lose 50 ms of work)
# Same number of producers and consumers for all. Prints RESULT lines, medians and rota's ratios.
# usage: bench/jobs.sh       env: RUNS (3), N (8 producers + 8 consumers), JOBS (30000), MODES ("split")
# needs: apt-get install -y redis-server beanstalkd
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
source "$SHARED/lib.sh"
for tool in redis-server beanstalkd; do
  command -v "$tool" >/dev/null || { echo "needs $tool (see the script's header: apt-get install -y ...)" >&2; exit 1; }
done
N=${N:-8}; JOBS=${JOBS:-30000}; MODES=${MODES:-split}
OUT=${OUT:-$(mktemp -d /tmp/rota-jobs-bench.XXXX)}; mkdir -p "$OUT"; echo "results in $OUT"
(cd "$ROOT" && cargo build --release -q -p rota -p rota-bench) || exit 1
ROTA="$ROOT/target/release/rota"; GEN="$ROOT/target/release/rota-bench"
gen() { timeout 180 "$GEN" --n "$N" --jobs "$JOBS" --max-seconds 60 "$@"; }

for mode in $MODES; do
  D=$(mktemp -d /tmp/rota-jobs-bench-data.XXXX)
  for r in $(seq 1 "$RUNS"); do
    # rota: a fresh node per run
    rm -rf "$D/rota"; "$ROTA" serve --name b1 --data-dir "$D/rota" --listen-client-urls http://127.0.0.1:23379 \
      --advertise-client-urls http://127.0.0.1:23379 --listen-peer-urls http://127.0.0.1:23380 > "$D/rota.log" 2>&1 &
    STARTED_PIDS+=($!); wait_http http://127.0.0.1:23379/health || exit 1
    stamp "rota mode=$mode n=$N run=$r"; gen --backend rota --addr 127.0.0.1:23379 --mode "$mode" --label rota
    stop_started
    rm -rf "$D/rota"; "$ROTA" serve --name b1 --data-dir "$D/rota" --listen-client-urls http://127.0.0.1:23379 \
      --advertise-client-urls http://127.0.0.1:23379 --listen-peer-urls http://127.0.0.1:23380 > "$D/rota.log" 2>&1 &
    STARTED_PIDS+=($!); wait_http http://127.0.0.1:23379/health || exit 1
    stamp "rota-lease-next mode=$mode n=$N run=$r"
    gen --backend rota --addr 127.0.0.1:23379 --mode "$mode" --label rota-lease-next --lease-next
    stop_started

    redis-server --port 26379 --bind 127.0.0.1 --dir "$D" --save '' --appendonly yes --appendfsync always \
      --daemonize no --logfile "$D/redis.log" & STARTED_PIDS+=($!); wait_tcp 26379 || exit 1
    stamp "redis aof=always mode=$mode n=$N run=$r"; gen --backend redis --addr 127.0.0.1:26379 --mode "$mode" --label redis-aof-always
    stop_started; rm -f "$D"/appendonly* ; rm -rf "$D/appendonlydir"

    for f in 0 50; do
      rm -rf "$D/bs"; mkdir -p "$D/bs"
      beanstalkd -l 127.0.0.1 -p 21300 -b "$D/bs" -f $f > "$D/bs.log" 2>&1 & STARTED_PIDS+=($!); wait_tcp 21300 || exit 1
      stamp "beanstalkd -f $f mode=$mode n=$N run=$r"; gen --backend beanstalk --addr 127.0.0.1:21300 --mode "$mode" --label beanstalkd-f$f
      stop_started
    done
  done 2>&1 | tee -a "$OUT/jobs.txt"
  rm -rf "$D"
done

echo; echo "== medians"; python3 "$SHARED/summarize.py" "$OUT/jobs.txt" | tee "$OUT/summary.txt"
echo; echo "== rota / peers (jobs_per_s)"
python3 - "$OUT/summary.txt" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) mode=(\S+) .*\| median (.*)$", line)
    if m: rows[(m.group(1), m.group(2))] = {k: float(v) for k, v in (kv.split("=") for kv in m.group(3).split())}
for (who, mode), v in rows.items():
    if not who.startswith("rota"): continue
    for (peer, pmode), p in rows.items():
        if peer.startswith("rota") or pmode != mode: continue
        print(f"{mode}: rota {v['jobs_per_s']:.0f} jobs/s (e2e p50 {v['e2e_p50_ms']:.2f} ms, p99 {v['e2e_p99_ms']:.2f} ms) vs "
              f"{peer} {p['jobs_per_s']:.0f} jobs/s (p50 {p['e2e_p50_ms']:.2f}, p99 {p['e2e_p99_ms']:.2f}): x{v['jobs_per_s']/p['jobs_per_s']:.2f}")
PY
