// The loyalty flow against tallyd with ioredis (loyalty.mjs has the flow).
//   node ioredis.mjs [--host H] [--port N] [--token T]
//   node ioredis.mjs --earn-once ID [--points N] [--merchant M] [--account A]
// ioredis 6 speaks RESP3 (HELLO 3) and by default hands maps over as flat
// [field, value, ...] arrays; fields() reads either by name.
import Redis, { ReplyError } from 'ioredis';
import { main } from './loyalty.mjs';

await main(async (o) => {
  const redis = new Redis({
    host: o.host,
    port: o.port,
    password: o.token,
    // ioredis resends the commands a dropped connection left unanswered by
    // itself; with tally that is safe (every write carries its id), but the
    // retry is made explicit here, in loyalty.mjs, to show it.
    autoResendUnfulfilledCommands: false,
    retryStrategy: (times) => (times > 10 ? null : 100 * times),
    maxRetriesPerRequest: 5,
  });
  // Connection errors also reject the commands they hit; the event only
  // needs a listener so that ioredis does not print each one.
  redis.on('error', () => {});
  return {
    send: (args) => redis.call(...args),
    isReply: (e) => e instanceof ReplyError,
    close: () => redis.quit(),
  };
});
