#!/usr/bin/env python3
"""A loyalty flow against tallyd with redis-py (Debian: python3-redis).

    python3 loyalty.py [--host H] [--port N] [--token T]
    python3 loyalty.py --earn-once ID [--points N] [--merchant M] [--account A]

Host, port and token default to $TALLY_HOST, $TALLY_PORT, $TALLY_TOKEN
(else 127.0.0.1, 7379, none).  Each run uses a fresh random merchant and
account unless told.  --earn-once sends one EARN (retried on a dropped
connection) and prints the reply.  Exits non-zero on anything unexpected.
"""
import argparse
import os
import secrets
import sys
import time

import redis


def fields(reply):
    """An entry or a balance as a dict, read by name: a flat
    [field, value, ...] list in RESP2 (like HGETALL), a dict in RESP3."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[0::2], reply[1::2]))


def send(r, *args, attempts=5):
    """Sends a command; after a dropped connection, sends it again as it was.

    A write whose connection dropped may or may not have been applied.
    tally remembers every write by its id: the same id with the same
    arguments replays the original reply and applies nothing twice, so the
    retry is safe.  Error replies (redis.ResponseError) are answers and are
    not retried."""
    for attempt in range(1, attempts + 1):
        try:
            return r.execute_command(*args)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            if attempt == attempts:
                raise
            print(f"  connection lost during {args[0]} ({e}); retrying with the same id")
            time.sleep(0.1 * attempt)


def show(what, e):
    print(f"{what:<8} {e['id']:<20} points {e['points']:+6}  "
          f"available {e['balance']:>5}  held {e['held']:>4}  seq {e['seq']}")


def history(r, m, a, limit):
    """The account's entries, newest first, a page of `limit` at a time."""
    page, before = 1, []
    while True:
        rows = [fields(row) for row in send(r, "HISTORY", m, a, *before, "LIMIT", limit)]
        print(f"history page {page}: " + (", ".join(f"seq {e['seq']} {e['kind']} {e['points']:+}"
                                                  for e in rows) or "(empty: the end)"))
        yield from rows
        if len(rows) < limit:
            return
        page, before = page + 1, ["BEFORE", rows[-1]["seq"]]


def flow(r, m, a):
    year = int(time.time()) + 365 * 86400

    # Three purchases earn points at the till; they expire in a year.
    for n, points in enumerate((500, 120, 80), 1):
        show("earn", fields(send(r, "EARN", m, a, points, f"order-{n}",
                                 "EXPIRES", year, "MEMO", f"till 3, order {n}")))

    # Checkout: hold 300 points for the basket, capture the 250 it came to
    # (the other 50 go back to the member).
    show("hold", fields(send(r, "HOLD", m, a, 300, "basket-7", "TIMEOUT", 300, "MEMO", "basket 7")))
    show("capture", fields(send(r, "CAPTURE", m, "basket-7", "basket-7-paid", "POINTS", 250)))

    # An item worth 100 points comes back: refund them to the original lots.
    show("refund", fields(send(r, "REVERSE", m, "basket-7-paid", "basket-7-return-1", "POINTS", 100)))

    # A redemption larger than the balance is refused; the flow goes on.
    try:
        send(r, "REDEEM", m, a, 1_000_000, "gift-card-1")
        sys.exit("unexpected: a REDEEM larger than the balance went through")
    except redis.ResponseError as e:
        if not str(e).startswith("INSUFFICIENT"):
            raise
        print(f"insufficient: {e}")

    b = fields(send(r, "BALANCE", m, a))
    entries = list(history(r, m, a, limit=2))
    total = sum(e["points"] for e in entries)
    print(f"history: {len(entries)} entries, points add up to {total}")
    if total != b["available"]:
        sys.exit(f"unexpected: history adds up to {total}, available is {b['available']}")
    print(f"final balance: available={b['available']} held={b['held']} pending={b['pending']}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default=os.environ.get("TALLY_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("TALLY_PORT", "7379")))
    p.add_argument("--token", default=os.environ.get("TALLY_TOKEN"))
    p.add_argument("--merchant", type=int, default=1 + secrets.randbelow(2**48))
    p.add_argument("--account", type=int, default=1 + secrets.randbelow(2**48))
    p.add_argument("--earn-once", metavar="ID")
    p.add_argument("--points", type=int, default=250)
    o = p.parse_args()

    r = redis.Redis(host=o.host, port=o.port, password=o.token, decode_responses=True,
                    socket_timeout=10, socket_connect_timeout=10)
    try:
        print(f"merchant={o.merchant} account={o.account}")
        if o.earn_once:
            e = fields(send(r, "EARN", o.merchant, o.account, o.points, o.earn_once))
            print("reply: " + " ".join(f"{k}={v}" for k, v in e.items()))
        else:
            flow(r, o.merchant, o.account)
    finally:
        r.close()


if __name__ == "__main__":
    main()
