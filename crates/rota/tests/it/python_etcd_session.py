"""One session of the python-etcd client library (the etcd v2 client most Python code
uses), printed line by line. `etcd_clients.rs` runs it against etcd 3.4 and against rota and
compares the output. Usage: python_etcd_session.py http://127.0.0.1:PORT

Deterministic: values are words, and indices are printed as `Index: n` (only indices differ
between servers, and the test rewrites those), and the one blocking watch waits on an explicit future index, so it sees the write
however the two threads are scheduled."""
import sys
import threading
from urllib.parse import urlparse

import etcd

url = urlparse(sys.argv[1])
c = etcd.Client(host=url.hostname, port=url.port, protocol=url.scheme, allow_reconnect=True)


def show(*parts):
    print(*parts, flush=True)


def error_name(call):
    try:
        call()
    except etcd.EtcdException as e:
        return type(e).__name__
    return "no error"


show("machines", c.machines)
show("leader fields", sorted(c.leader))
show("members", [(m["name"], m["clientURLs"]) for m in c.members.values()])
show("stats/self fields", sorted(c.stats))
show("stats/leader fields", sorted(c.leader_stats))
show("stats/store fields", sorted(c.store_stats))

r = c.write("/py/a", "one")
show("write", r.key, r.value, r.action, f"created Index: {r.createdIndex}", f"modified Index: {r.modifiedIndex}")
r = c.read("/py/a")
show("read", r.key, r.value, f"modified Index: {r.modifiedIndex}")
r = c.write("/py/a", "two", prevValue="one")
show("compare-and-swap", r.value, r.action, r._prev_node.value)
show("compare-and-swap, wrong value", error_name(lambda: c.write("/py/a", "three", prevValue="nine")))
show("create over an existing key", error_name(lambda: c.write("/py/a", "three", prevExist=False)))
r = c.test_and_set("/py/a", "four", "two")
show("test_and_set", r.value)
r = c.write("/py/q", "job", append=True)
show("append", r.key, r.value)
r = c.read("/py", recursive=True, sorted=True)
show("recursive read", [(n.key, n.value) for n in r.leaves])
show("missing key", error_name(lambda: c.read("/py/zz")))
r = c.write("/py/ttl", "t", ttl=20)
show("ttl", r.ttl)
r = c.refresh("/py/ttl", ttl=30)
show("refresh", r.ttl, r.value)

r = c.write("/py/w", "first")
show("watch from history", c.watch("/py/w", index=r.modifiedIndex).value)
future = r.modifiedIndex + 1
seen = {}
watcher = threading.Thread(target=lambda: seen.update(r=c.watch("/py/w", index=future, timeout=20)))
watcher.start()
c.write("/py/w", "second")
watcher.join()
show("watch of a future index", seen["r"].value, seen["r"].action, f"modified Index: {seen['r'].modifiedIndex}")

r = c.delete("/py/a")
show("delete", r.action, r.key)
r = c.write("/py/dir", None, dir=True)
show("mkdir", r.dir, r.key)
r = c.delete("/py/dir", dir=True)
show("rmdir", r.action)
show("rmdir of a non-empty dir", error_name(lambda: c.delete("/py", dir=True)))
show("delete a dir without dir=true", error_name(lambda: c.delete("/py")))
r = c.delete("/py", recursive=True)
show("recursive delete", r.action, r.key)

lock = etcd.Lock(c, "job-lock")
lock.acquire(blocking=True, lock_ttl=20)
show("lock acquired", lock.is_acquired)
lock.release()
show("lock released", not lock.is_acquired)
