"""Drives a tally cluster with redis-py's RedisCluster (tests/cluster_failover_test.c).

  cluster_load.py load HOST:PORT[,HOST:PORT...] OUT_DIR [--merchants N] [--accounts N]
      points-v1 (80 % EARN 1..500, 20 % REDEEM 1..200, each a fresh id) from one
      thread per shard group, each on merchants whose slots its group owns, until
      OUT_DIR/stop exists.  Every acknowledged write is appended to
      OUT_DIR/acked-G.txt as "unix_ms merchant id seq" (flushed at once); a write
      that failed (-TRYAGAIN, a connection lost, a node down) is retried with the
      same id until it is acknowledged, so retries meet the idempotency rules.
      OUT_DIR/errors.txt counts what failed, by kind.
  cluster_load.py check HOST:PORT OUT_DIR
      Every acknowledged write is there, with the same seq (ENTRY on its
      group's leader); prints "ok N" or the first difference, exit 1.
  cluster_load.py balances HOST:PORT OUT_DIR
      Every account's BALANCE on each replica (READONLY) equals its leader's.
"""
import logging
import os
import random
import sys
import threading
import time

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot


# redis-py logs every error it raises; the load counts them instead.
logging.getLogger("redis").setLevel(logging.CRITICAL)


def cluster(addrs):
    """addrs: "host:port[,host:port...]", every node, so that one down is no matter."""
    nodes = [ClusterNode(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in addrs.split(",")]
    # Short timeouts: a node killed -9 must not stall the load for long;
    # retries are this script's own.
    return RedisCluster(
        startup_nodes=nodes,
        socket_timeout=2,
        socket_connect_timeout=1,
        cluster_error_retry_attempts=1,
        decode_responses=True,
    )


def groups_of(addrs):
    """[slot ranges] per group, in CLUSTER SHARDS order (a shard is a group)."""
    host, port = addrs.split(",")[0].rsplit(":", 1)
    r = redis.Redis(host=host, port=int(port), decode_responses=True)
    shards = r.execute_command("CLUSTER SHARDS")
    r.close()
    out = []
    for sh in shards:
        d = dict(zip(sh[0::2], sh[1::2])) if isinstance(sh, list) else sh
        slots = d["slots"]
        out.append([(int(slots[i]), int(slots[i + 1])) for i in range(0, len(slots), 2)])
    return out


def merchants_by_group(ranges, count):
    by = [[] for _ in ranges]
    m = 1
    while min(len(x) for x in by) < count:
        s = key_slot(str(m).encode())
        for g, rs in enumerate(ranges):
            if any(a <= s <= b for a, b in rs) and len(by[g]) < count:
                by[g].append(m)
        m += 1
    return by


def field(reply, name):
    if isinstance(reply, dict):
        return reply.get(name)
    for i in range(0, len(reply), 2):
        if reply[i] == name:
            return reply[i + 1]
    return None


class Errors:
    def __init__(self, path):
        self.path = path
        self.counts = {}
        self.lock = threading.Lock()

    def add(self, kind):
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            with open(self.path, "w") as f:
                for k, v in sorted(self.counts.items()):
                    f.write(f"{k} {v}\n")


def worker(addr, out, g, merchants, accounts, errors, tag):
    rng = random.Random(g * 7919 + os.getpid())
    rc = None
    n = 0
    with open(os.path.join(out, f"acked-{g}.txt"), "a", buffering=1) as acked:
        while not os.path.exists(os.path.join(out, "stop")):
            m = rng.choice(merchants)
            a = rng.randrange(1, accounts + 1)
            n += 1
            wid = f"{tag}-{g}-{n}"
            if rng.random() < 0.8:
                cmd = ("EARN", m, a, rng.randrange(1, 501), wid)
            else:
                cmd = ("REDEEM", m, a, rng.randrange(1, 201), wid)
            while not os.path.exists(os.path.join(out, "stop")):
                try:
                    if rc is None:
                        rc = cluster(addr)
                    r = rc.execute_command(*cmd)
                    acked.write(f"{int(time.time() * 1000)} {m} {wid} {field(r, 'seq')}\n")
                    break
                except redis.exceptions.ResponseError as e:
                    if str(e).startswith("INSUFFICIENT"):
                        # A refusal is remembered under its id: acknowledged too.
                        acked.write(f"{int(time.time() * 1000)} {m} {wid} refused\n")
                        break
                    errors.add(str(e).split(" ")[0])
                    time.sleep(0.05)
                except Exception as e:  # connection errors, cluster down, timeouts
                    errors.add(type(e).__name__)
                    try:
                        if rc is not None:
                            rc.close()
                    except Exception:
                        pass
                    rc = None
                    time.sleep(0.1)


def load(addr, out, merchants_per_group, accounts):
    ranges = groups_of(addr)
    by = merchants_by_group(ranges, merchants_per_group)
    with open(os.path.join(out, "merchants.txt"), "w") as f:
        for g, ms in enumerate(by):
            f.write(f"{g} {' '.join(map(str, ms))}\n")
    errors = Errors(os.path.join(out, "errors.txt"))
    tag = f"w{int(time.time() * 1000) % 100000000}"
    threads = [
        threading.Thread(target=worker, args=(addr, out, g, ms, accounts, errors, tag))
        for g, ms in enumerate(by)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def acked_lines(out):
    for name in sorted(os.listdir(out)):
        if name.startswith("acked-"):
            with open(os.path.join(out, name)) as f:
                for line in f:
                    p = line.split()
                    if len(p) == 4:
                        yield int(p[1]), p[2], p[3]


def check(addr, out):
    rc = cluster(addr)
    items = list(acked_lines(out))
    bad = 0
    for i in range(0, len(items), 500):
        part = items[i:i + 500]
        got = answered(rc, [("ENTRY", m, wid) for m, wid, _ in part])
        for (m, wid, seq), e in zip(part, got):
            if seq == "refused":
                continue  # a remembered refusal is not an entry
            if isinstance(e, Exception) and f"(seq {seq}) lies before the retained log" in str(e):
                continue  # retention dropped its record; the seq it names is the one acknowledged
            if e is None or isinstance(e, Exception) or str(field(e, "seq")) != seq:
                print(f"merchant {m} id {wid}: acknowledged with seq {seq}, now {e!r}")
                bad += 1
                if bad > 10:
                    return 1
    if bad:
        return 1
    print(f"ok {len(items)}")
    return 0


def answered(r, cmds):
    """The answers to cmds sent in one pipeline to r (a node or the
    cluster; errors as exception objects), sent again while any answer is
    -TRYAGAIN (a leader's lease in doubt while ZooKeeper is slow to answer:
    retryable, as for any client), for 30 s."""
    deadline = time.monotonic() + 30
    while True:
        pipe = r.pipeline(transaction=False)
        for c in cmds:
            pipe.execute_command(*c)
        got = pipe.execute(raise_on_error=False)
        if time.monotonic() > deadline or not any(
                isinstance(e, Exception) and "TRYAGAIN" in str(e) for e in got):
            return got
        time.sleep(0.1)


def balances_of(r, m, accounts):
    """Every account's BALANCE of merchant m on one node (answered); an
    error other than -TRYAGAIN is raised."""
    got = answered(r, [("BALANCE", m, a) for a in range(1, accounts + 1)])
    for e in got:
        if isinstance(e, Exception):
            raise e
    return got


def balances(addr, out):
    rc = cluster(addr)
    accounts = int(os.environ.get("ACCOUNTS", "200"))
    merchants = []
    with open(os.path.join(out, "merchants.txt")) as f:
        for line in f:
            merchants += [int(x) for x in line.split()[1:]]
    diff = 0
    for m in merchants:
        slot = key_slot(str(m).encode())
        nodes = rc.nodes_manager.slots_cache[slot]
        leader = nodes[0]
        want = []
        lr = redis.Redis(host=leader.host, port=leader.port, decode_responses=True)
        want = balances_of(lr, m, accounts)
        for rep in nodes[1:]:
            r = redis.Redis(host=rep.host, port=rep.port, decode_responses=True)
            r.execute_command("READONLY")
            got = balances_of(r, m, accounts)
            for a, (x, y) in enumerate(zip(want, got), 1):
                if x != y:
                    print(f"merchant {m} account {a}: leader {x} replica {rep.port} {y}")
                    diff += 1
    if diff:
        return 1
    print(f"ok {len(merchants)} merchants")
    return 0


def main():
    mode, addr, out = sys.argv[1], sys.argv[2], sys.argv[3]
    opts = dict(zip(sys.argv[4::2], sys.argv[5::2]))
    if mode == "load":
        load(addr, out, int(opts.get("--merchants", "8")), int(opts.get("--accounts", "200")))
        return 0
    if mode == "check":
        return check(addr, out)
    if mode == "balances":
        return balances(addr, out)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
