// The loyalty flow against tallyd with node-redis (loyalty.mjs has the flow).
//   node node-redis.mjs [--host H] [--port N] [--token T]
//   node node-redis.mjs --earn-once ID [--points N] [--merchant M] [--account A]
// node-redis 6 speaks RESP3 (HELLO 3) and hands maps over as objects;
// fields() reads them by name.
import { createClient, ErrorReply } from 'redis';
import { main } from './loyalty.mjs';

await main(async (o) => {
  const client = createClient({
    socket: {
      host: o.host,
      port: o.port,
      connectTimeout: 10000,
      // Reconnect after a dropped connection, not after a refused token.
      reconnectStrategy: (retries, cause) =>
        (cause instanceof ErrorReply || retries > 10 ? false : 100 * retries),
    },
    password: o.token,
  });
  // A dropped connection rejects the commands in flight (they are retried in
  // loyalty.mjs) and is reported here; the client reconnects by itself.
  client.on('error', (e) => console.log(`  node-redis: ${e.message}`));
  await client.connect();
  return {
    send: (args) => client.sendCommand(args),
    isReply: (e) => e instanceof ErrorReply,
    close: () => client.close(),
  };
});
