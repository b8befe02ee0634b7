#!/usr/bin/env bash
# rota's job queue at depth: lease+complete rate with ~1,000 vs ~1,000,000 jobs queued, memory
# per queued job, and restart time (SIGKILL, then start until the queue answers) with 1M queued.
#   small: prefill  1,000 + DRAIN jobs, then 8 consumers lease+complete DRAIN jobs
#   large: prefill 1,000,000 + DRAIN jobs, the same
# Payloads are 64 bytes plus a timestamp; priorities uniform over 1024 levels.
# usage: bench/jobs_scale.sh      env: DRAIN (20000), LARGE (1000000), RUNS (3)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
source "$SHARED/lib.sh"
DRAIN=${DRAIN:-20000}; LARGE=${LARGE:-1000000}
OUT=${OUT:-$(mktemp -d /tmp/rota-scale-bench.XXXX)}; mkdir -p "$OUT"; echo "results in $OUT"
(cd "$ROOT" && cargo build --release -q -p rota -p rota-bench) || exit 1
ROTA="$ROOT/target/release/rota"; GEN="$ROOT/target/release/rota-bench"
D=$(mktemp -d /tmp/rota-scale-data.XXXX)
URL=http://127.0.0.1:23379
serve() { "$ROTA" serve --name s1 --data-dir "$D/s1" --listen-client-urls $URL --advertise-client-urls $URL >> "$D/rota.log" 2>&1 &
          STARTED_PIDS+=($!); ROTA_PID=$!; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

for r in $(seq 1 "$RUNS"); do
  for depth in 1000 "$LARGE"; do
    stop_started; rm -rf "$D/s1"; serve; wait_http $URL/health || exit 1
    before=$(rss_kib $ROTA_PID)
    stamp "rota depth=$depth drain=$DRAIN run=$r"
    "$GEN" --backend rota --addr 127.0.0.1:23379 --n 8 --mode drain --prefill $((depth + DRAIN)) --jobs "$DRAIN" \
      --max-seconds 120 --label "rota-drain-depth$depth" 2>> "$OUT/prefill.log" | tee -a "$OUT/scale.txt"
    after=$(rss_kib $ROTA_PID); queued=$depth
    echo "RESULT rota-memory-depth$depth bytes_per_queued_job=$(( (after - before) * 1024 / (queued + 1) )) rss_mib=$(( after / 1024 ))" | tee -a "$OUT/scale.txt"
    if [ "$depth" = "$LARGE" ]; then
      kill -9 "$ROTA_PID"; wait "$ROTA_PID" 2>/dev/null
      t0=$(date +%s.%N); serve
      until curl -fsS -o /dev/null "$URL/v1/queues/bench?consistency=local" 2>/dev/null; do sleep 0.02; done
      t1=$(date +%s.%N)
      n=$(curl -fsS "$URL/v1/queues/bench" | jq .counts.queued)
      echo "RESULT rota-restart-depth$depth restart_s=$(echo "$t1 - $t0" | bc) queued_after_restart=$n" | tee -a "$OUT/scale.txt"
    fi
  done
done
stop_started; rm -rf "$D"
echo; echo "== medians"; python3 "$SHARED/summarize.py" "$OUT/scale.txt" | tee "$OUT/summary.txt"
python3 - "$OUT/summary.txt" "$LARGE" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+).*\| median (.*)$", line)
    if m: rows[m.group(1)] = {k: float(v) for k, v in (kv.split("=") for kv in m.group(2).split())}
small, large = rows.get("rota-drain-depth1000"), rows.get(f"rota-drain-depth{sys.argv[2]}")
if small and large:
    print(f"lease+complete: {small['jobs_per_s']:.0f} jobs/s at ~1k queued, {large['jobs_per_s']:.0f} at ~{int(sys.argv[2]):,} queued: ratio {large['jobs_per_s']/small['jobs_per_s']:.2f} (target >= 0.67)")
PY
