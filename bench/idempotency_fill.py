#!/usr/bin/env python3
# Fills a node's idempotency table with N keyed counter increments over 4 keep-alive connections
# (for measuring what a full table costs, e.g. the "snapshot: state taken clone_ms" log line).
# usage: bench/idempotency_fill.py PORT N
import http.client, sys, threading
port, n, threads = int(sys.argv[1]), int(sys.argv[2]), 4
def work(t):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(t, n, threads):
        c.request("POST", "/v1/counters/c%d" % (i % 50), body='{"by":1}', headers={"Idempotency-Key": "key-%08d-%s" % (i, "x" * 40), "Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        if r.status != 200: print("status", r.status); return
ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
