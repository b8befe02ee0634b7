#!/usr/bin/env bash
# usage: bench/ab_follower_put.sh OLD_ROTA NEW_ROTA   env: RUNS (3), DUR (8s); needs wrk, curl, ../shared/bench
# Each run starts a fresh cluster of the binary; the order alternates between runs, as the
# machine drifts.
# A/B: v2 PUT c=64 through a FOLLOWER of a fresh 3-node cluster, old vs new binary, interleaved.
set -u
OLD=$1; NEW=$2; RUNS=${RUNS:-3}; DUR=${DUR:-8s}
LUA=$(cd "$(dirname "$0")/../../shared/bench" && pwd)/etcd_v2_put.lua
run() { local bin=$1 base=$2 dir; dir=$(mktemp -d /tmp/abfwd.XXXX); local pids=() ic=""
  for i in 1 2 3; do ic+="${ic:+,}m$i=http://127.0.0.1:$((base+100*i+1))"; done
  for i in 1 2 3; do c=$((base+100*i)); "$bin" serve --name m$i --data-dir $dir/m$i \
    --listen-client-urls http://127.0.0.1:$c --advertise-client-urls http://127.0.0.1:$c \
    --listen-peer-urls http://127.0.0.1:$((c+1)) --initial-advertise-peer-urls http://127.0.0.1:$((c+1)) \
    --initial-cluster "$ic" --initial-cluster-state new > $dir/m$i.log 2>&1 & pids+=($!); done
  local follower=""
  for t in $(seq 1 100); do
    for i in 1 2 3; do s=$(curl -s http://127.0.0.1:$((base+100*i))/v2/stats/self | grep -o '"state":"[A-Za-z]*"'); [ "$s" = '"state":"StateFollower"' ] && follower=$((base+100*i)); done
    leaders=0; for i in 1 2 3; do curl -s http://127.0.0.1:$((base+100*i))/v2/stats/self | grep -q StateLeader && leaders=1; done
    [ -n "$follower" ] && [ $leaders = 1 ] && break; sleep 0.1; done
  curl -s -XPUT http://127.0.0.1:$follower/v2/keys/warm -d value=1 >/dev/null
  wrk -t2 -c64 -d$DUR -s $LUA http://127.0.0.1:$follower | grep SUMMARY
  kill ${pids[@]}; wait ${pids[@]} 2>/dev/null; rm -rf $dir; }
for r in $(seq 1 $RUNS); do if [ $((r % 2)) = 0 ]; then echo -n "new run $r: "; run "$NEW" 27279; echo -n "old run $r: "; run "$OLD" 26279; continue; fi
  echo -n "old run $r: "; run "$OLD" 26279
  echo -n "new run $r: "; run "$NEW" 27279
done
