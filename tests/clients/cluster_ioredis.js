// ioredis Cluster against a tally cluster, unchanged (tests/cluster_clients_test.c):
//   node cluster_ioredis.js HOST:PORT[,HOST:PORT...] MERCHANT...
// For each merchant: an EARN and a BALANCE of account 1, printed as
// "merchant seq available".  ioredis does not know tally's commands, so it
// sends them to any node and follows the -MOVED it gets.
const Redis = require('ioredis');

const [, , nodesArg, ...merchants] = process.argv;
const nodes = nodesArg.split(',').map((a) => {
  const [host, port] = a.split(':');
  return { host, port: Number(port) };
});
const cluster = new Redis.Cluster(nodes, { maxRedirections: 16 });

function field(reply, name) {
  const i = reply.indexOf(name);
  return i < 0 ? undefined : reply[i + 1];
}

(async () => {
  for (const m of merchants) {
    const e = await cluster.call('EARN', m, '1', '10', `io-${m}-${process.pid}`);
    const b = await cluster.call('BALANCE', m, '1');
    console.log(`${m} ${field(e, 'seq')} ${field(b, 'available')}`);
  }
  cluster.disconnect();
})().catch((e) => {
  console.error(`ioredis: ${e.message}`);
  process.exit(1);
});
