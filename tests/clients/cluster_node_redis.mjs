// node-redis createCluster against a tally cluster, unchanged
// (tests/cluster_clients_test.c):
//   node cluster_node_redis.mjs HOST:PORT[,HOST:PORT...] MERCHANT...
// For each merchant: an EARN and a BALANCE of account 1, printed as
// "merchant seq available".  sendCommand names the merchant as the key, so
// node-redis routes by its slot itself.
import { createCluster } from 'redis';

const [, , nodesArg, ...merchants] = process.argv;
const cluster = createCluster({
  rootNodes: nodesArg.split(',').map((a) => ({ url: `redis://${a}` })),
});
cluster.on('error', (e) => console.error(`node-redis: ${e.message}`));

function field(reply, name) {
  if (!Array.isArray(reply)) return reply[name];
  const i = reply.indexOf(name);
  return i < 0 ? undefined : reply[i + 1];
}

try {
  await cluster.connect();
  for (const m of merchants) {
    const e = await cluster.sendCommand(m, false, ['EARN', m, '1', '10', `nr-${m}-${process.pid}`]);
    const b = await cluster.sendCommand(m, true, ['BALANCE', m, '1']);
    console.log(`${m} ${field(e, 'seq')} ${field(b, 'available')}`);
  }
  await cluster.close();
} catch (e) {
  console.error(`node-redis: ${e.message}`);
  process.exit(1);
}
