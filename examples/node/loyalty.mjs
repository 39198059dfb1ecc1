// The loyalty flow both Node examples run (ioredis.mjs, node-redis.mjs):
// options, replies read by field name, the safe retry and the flow itself.
// A client file only supplies
//   send(args)     -> Promise of the reply to one command (strings in args)
//   isReply(err)   -> true if err is the server's error reply (an answer),
//                     false if the outcome is unknown (connection trouble)
//   close()        -> Promise, lets the process exit
import { parseArgs } from 'node:util';
import { randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

export function options() {
  const { values: o } = parseArgs({
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      token: { type: 'string' },
      merchant: { type: 'string' },
      account: { type: 'string' },
      'earn-once': { type: 'string' },
      points: { type: 'string', default: '250' },
    },
  });
  const env = process.env;
  return {
    host: o.host ?? env.TALLY_HOST ?? '127.0.0.1',
    port: Number(o.port ?? env.TALLY_PORT ?? 7379),
    token: o.token ?? env.TALLY_TOKEN,
    // Random per run, below 2^48: JavaScript numbers hold them exactly.
    merchant: o.merchant ?? String(randomInt(1, 2 ** 48)),
    account: o.account ?? String(randomInt(1, 2 ** 48)),
    earnOnce: o['earn-once'],
    points: o.points,
  };
}

// An entry or a balance as an object, read by name: a flat
// [field, value, ...] array in RESP2 (and ioredis' legacy mapping of RESP3),
// an object or a Map for a RESP3 map.
export function fields(reply) {
  if (reply instanceof Map) return Object.fromEntries(reply);
  if (!Array.isArray(reply)) return reply;
  const o = {};
  for (let i = 0; i + 1 < reply.length; i += 2) o[reply[i]] = reply[i + 1];
  return o;
}

// Sends a command; after a dropped connection, sends it again as it was.
// A write whose connection dropped may or may not have been applied; tally
// remembers every write by its id, and the same id with the same arguments
// replays the original reply without applying anything twice.  Error
// replies are answers: they are thrown, not retried.
async function send(client, args, attempts = 5) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await client.send(args.map(String));
    } catch (e) {
      if (client.isReply(e) || attempt === attempts) throw e;
      console.log(`  connection lost during ${args[0]} (${e.message}); retrying with the same id`);
      await sleep(100 * attempt);
    }
  }
}

function show(what, e) {
  console.log(`${what.padEnd(8)} ${e.id.padEnd(20)} points ${sign(e.points).padStart(6)}  ` +
    `available ${String(e.balance).padStart(5)}  held ${String(e.held).padStart(4)}  seq ${e.seq}`);
}

const sign = (n) => (n >= 0 ? `+${n}` : String(n));

// The account's entries, newest first, a page of `limit` at a time.
async function* history(client, m, a, limit) {
  let before = [];
  for (let page = 1; ; page++) {
    const rows = (await send(client, ['HISTORY', m, a, ...before, 'LIMIT', limit])).map(fields);
    const list = rows.map((e) => `seq ${e.seq} ${e.kind} ${sign(e.points)}`).join(', ');
    console.log(`history page ${page}: ${list || '(empty: the end)'}`);
    yield* rows;
    if (rows.length < limit) return;
    before = ['BEFORE', rows[rows.length - 1].seq];
  }
}

async function flow(client, m, a) {
  const year = Math.floor(Date.now() / 1000) + 365 * 86400;
  const write = async (...args) => fields(await send(client, args));

  // Three purchases earn points at the till; they expire in a year.
  for (const [n, points] of [500, 120, 80].entries()) {
    show('earn', await write('EARN', m, a, points, `order-${n + 1}`,
      'EXPIRES', year, 'MEMO', `till 3, order ${n + 1}`));
  }

  // Checkout: hold 300 points for the basket, capture the 250 it came to
  // (the other 50 go back to the member).
  show('hold', await write('HOLD', m, a, 300, 'basket-7', 'TIMEOUT', 300, 'MEMO', 'basket 7'));
  show('capture', await write('CAPTURE', m, 'basket-7', 'basket-7-paid', 'POINTS', 250));

  // An item worth 100 points comes back: refund them to the original lots.
  show('refund', await write('REVERSE', m, 'basket-7-paid', 'basket-7-return-1', 'POINTS', 100));

  // A redemption larger than the balance is refused; the flow goes on.
  try {
    await write('REDEEM', m, a, 1_000_000, 'gift-card-1');
    throw new Error('unexpected: a REDEEM larger than the balance went through');
  } catch (e) {
    if (!client.isReply(e) || !e.message.startsWith('INSUFFICIENT')) throw e;
    console.log(`insufficient: ${e.message}`);
  }

  const b = fields(await send(client, ['BALANCE', m, a]));
  let count = 0;
  let total = 0;
  for await (const e of history(client, m, a, 2)) {
    count++;
    total += e.points;
  }
  console.log(`history: ${count} entries, points add up to ${total}`);
  if (total !== b.available) {
    throw new Error(`unexpected: history adds up to ${total}, available is ${b.available}`);
  }
  console.log(`final balance: available=${b.available} held=${b.held} pending=${b.pending}`);
}

// Runs the flow (or the single EARN of --earn-once) with the client that
// connect(options) makes; the process exits non-zero on anything unexpected.
export async function main(connect) {
  const o = options();
  const client = await connect(o);
  try {
    console.log(`merchant=${o.merchant} account=${o.account}`);
    if (o.earnOnce) {
      const e = fields(await send(client, ['EARN', o.merchant, o.account, o.points, o.earnOnce]));
      console.log(`reply: ${Object.entries(e).map(([k, v]) => `${k}=${v}`).join(' ')}`);
    } else {
      await flow(client, o.merchant, o.account);
    }
  } finally {
    await client.close();
  }
}
