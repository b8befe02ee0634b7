"""python-etcd given every member of a cluster, through a SIGKILL of the leader.
Usage: python_etcd_failover.py http://HOST:PORT,http://HOST:PORT,...

Writes and reads a key, prints `ready` and waits for a line on stdin (the test kills the
leader in between), then writes again, reads with quorum, and prints what it saw. The
client's own reconnection (`allow_reconnect`) is what is tested: no retry loop here."""
import sys
from urllib.parse import urlparse

import etcd

hosts = tuple((u.hostname, u.port) for u in map(urlparse, sys.argv[1].split(",")))
c = etcd.Client(host=hosts, allow_reconnect=True, read_timeout=30)
c.write("/failover/k", "one")
print("before", c.read("/failover/k", quorum=True).value, flush=True)
print("ready", flush=True)
sys.stdin.readline()
c.write("/failover/k", "two")
print("after", c.read("/failover/k", quorum=True).value, flush=True)
