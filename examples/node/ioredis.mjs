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
    // After a reconnect ioredis resends by itself the commands a dropped
    // connection left unanswered (autoResendUnfulfilledCommands, on by
    // default).  Resending a write is safe with tally only because it
    // carries its id: the resent EARN replays the original reply.  (Turning
    // it off in ioredis 6.0.0 leaves such a command's promise pending
    // forever, ioredis issue #2193; loyalty.mjs retries what ioredis gives
    // up on, with the same id.)
    retryStrategy: (times) => (times > 10 ? null : 100 * times),
    maxRetriesPerRequest: 5,
  });
  // Connection errors also reject the commands they hit; the event only
  // needs a listener so that ioredis does not print each one.
  redis.on('error', () => {});
  redis.on('reconnecting', () =>
    console.log('  connection lost; ioredis reconnects and resends what was unanswered, with the same id'));
  return {
    send: (args) => redis.call(...args),
    isReply: (e) => e instanceof ReplyError,
    close: () => redis.quit(),
  };
});
