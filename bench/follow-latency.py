#!/usr/bin/python3
"""FOLLOW delivery latency: the time from sending a write to a waiting
follower receiving its entry, while other load runs (tally-bench).

    bench/follow-latency.py PORT MERCHANT N OUT

One connection writes N EARNs to MERCHANT, one every 10 ms (its own
acknowledgement awaited), and notes when each was sent; another waits in
FOLLOW MERCHANT ... BLOCK and notes when each entry arrives.  Writes one
latency in microseconds a line to OUT, for `tally-bench summarize --file
OUT --column 1 --unit us`.  Needs redis-py (Debian: python3-redis)."""
import sys
import threading
import time

import redis

port, merchant, count, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
w = redis.Redis(host="127.0.0.1", port=port)
f = redis.Redis(host="127.0.0.1", port=port)
nonce = "%x" % int(time.time() * 1000)
sent = {}

# The end of the merchant's feed so far: the follower starts there.
cursor = b"0"
while True:
    cursor, entries = f.execute_command("FOLLOW", merchant, "AFTER", cursor, "COUNT", 1000)
    if not entries:
        break


def writer():
    for i in range(count):
        ident = "lat-%s-%d" % (nonce, i)
        sent[ident] = time.monotonic()
        w.execute_command("EARN", merchant, 1 + i % 10, 1, ident)
        time.sleep(0.01)


t = threading.Thread(target=writer)
t.start()
latencies = []
while len(latencies) < count:
    cursor, entries = f.execute_command("FOLLOW", merchant, "AFTER", cursor, "COUNT", 1000,
                                        "BLOCK", 10000)
    now = time.monotonic()
    for e in entries:
        fields = dict(zip(e[::2], e[1::2]))
        ident = fields[b"id"].decode()
        if ident in sent:
            latencies.append((now - sent[ident]) * 1e6)
t.join()
with open(out, "w") as fp:
    for us in latencies:
        fp.write("%.0f\n" % us)
