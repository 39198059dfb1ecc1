"""redis-py with default options and a merchant token (tests/clients_test.c):
connect, INFO, write, read, and be refused another merchant.  Prints one
JSON object; exits 1 on error."""
import json
import sys

import redis

port, token = int(sys.argv[1]), sys.argv[2]
r = redis.Redis(host="127.0.0.1", port=port, password=token)
info = r.info()
entry = [x.decode() if isinstance(x, bytes) else x
         for x in r.execute_command("EARN", 1, 8, 10, "py-1")]
balance = r.execute_command("BALANCE", 1, 8)
try:
    r.execute_command("BALANCE", 3, 8)
    noperm = ""
except redis.exceptions.ResponseError as e:
    noperm = str(e)
print(json.dumps({"info": info, "entry": entry, "balance": [
    x.decode() if isinstance(x, bytes) else x for x in balance], "noperm": noperm}))
