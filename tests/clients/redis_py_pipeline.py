"""redis-py's default pipeline, a transaction (MULTI ... EXEC), against
tallyd (tests/clients_test.c): writes and a read of one merchant in one
EXEC, then a pipeline naming two merchants, which must not run.  Prints
one JSON object; exits 1 on error."""
import json
import sys

import redis

port, token = int(sys.argv[1]), sys.argv[2]
r = redis.Redis(host="127.0.0.1", port=port, password=token)
p = r.pipeline()  # transaction=True: MULTI, the commands, EXEC
p.execute_command("EARN", 1, 21, 100, "pp-1")
p.execute_command("REDEEM", 1, 21, 30, "pp-2")
p.execute_command("BALANCE", 1, 21)
res = p.execute()
fields = [dict(zip(x[::2], x[1::2])) for x in res]
seqs = [fields[0][b"seq"], fields[1][b"seq"]]
balance = fields[2][b"available"]

p = r.pipeline()
p.execute_command("EARN", 1, 21, 5, "pp-3")
p.execute_command("EARN", 3, 21, 5, "pp-4")
try:
    p.execute()
    aborted = ""
except redis.exceptions.RedisError as e:
    aborted = str(e)
left = r.execute_command("ENTRY", 1, "pp-3")
print(json.dumps({"seqs": seqs, "balance": balance, "aborted": aborted,
                  "applied": left is not None}))
