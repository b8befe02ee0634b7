# Sourced by the benchmark scripts.
# wait_quiet: waits (up to 30 s) until the machine is quiet (under 10% of its CPU busy over
# half a second), so that what one server does after its run (snapshots, compaction,
# garbage collection) does not fall into the next server's run. It first syncs: the dirty
# pages one server left (etcd writes its snapshots and WAL through the page cache) would
# otherwise be written back during the next run, on the disk the next server fsyncs to.
wait_quiet() { local i a b
  sync
  for i in $(seq 1 60); do
    a=$(head -1 /proc/stat); sleep 0.5; b=$(head -1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN{n=split(a,x," "); split(b,y," "); for(i=2;i<=n;i++){d=y[i]-x[i]; t+=d; if(i!=5&&i!=6) busy+=d}
      exit !(t > 0 && busy/t < 0.10)}' && return 0
  done; echo "# machine not quiet after 30 s; running anyway" >&2; }
