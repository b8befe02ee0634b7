"""python-etcd given every member of a cluster, watching while its member shuts down.
Usage: python_etcd_watch_failover.py http://HOST:PORT,http://HOST:PORT,...

Writes a key, prints `ready INDEX`, then watches the key from the next index at the first
member. The test SIGTERMs that member and writes the key through another one; the
library's own reconnection (`allow_reconnect`) must carry the watch over to a live member
and report the write. No retry loop here."""
import sys
from urllib.parse import urlparse

import etcd

hosts = tuple((u.hostname, u.port) for u in map(urlparse, sys.argv[1].split(",")))
c = etcd.Client(host=hosts, allow_reconnect=True, read_timeout=60)
index = c.write("/watchover/k", "before").modifiedIndex
print("ready", index, flush=True)
r = c.watch("/watchover/k", index=index + 1)
print("watched", r.action, r.value, flush=True)
