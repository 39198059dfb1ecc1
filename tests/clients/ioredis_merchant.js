// ioredis with default options and a merchant token (tests/clients_test.c):
// connect (AUTH, then the ready check, which calls INFO), write, read, and
// be refused another merchant.  Prints one JSON object; exits 1 on error.
'use strict';
const Redis = require('ioredis');
const [port, token] = process.argv.slice(2);
const r = new Redis({ host: '127.0.0.1', port: Number(port), password: token,
                      retryStrategy: () => null, maxRetriesPerRequest: 0 });
r.on('error', (e) => { console.error('ioredis error: ' + e.message); process.exit(1); });
r.once('ready', async () => {
  try {
    const info = await r.info();
    const entry = await r.call('EARN', '1', '7', '10', 'io-1');
    const balance = await r.call('BALANCE', '1', '7');
    let noperm = '';
    try { await r.call('BALANCE', '3', '7'); } catch (e) { noperm = e.message; }
    console.log(JSON.stringify({ info, entry, balance, noperm }));
    r.disconnect();
  } catch (e) {
    console.error('ioredis error: ' + e.message);
    process.exit(1);
  }
});
