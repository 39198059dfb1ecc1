// ioredis multi() against tallyd (tests/clients_test.c): writes and a read
// of one merchant in one EXEC, then a multi() naming two merchants, which
// must not run.  Prints one JSON object; exits 1 on error.
'use strict';
const Redis = require('ioredis');
const [port, token] = process.argv.slice(2);
const r = new Redis({ host: '127.0.0.1', port: Number(port), password: token,
                      retryStrategy: () => null, maxRetriesPerRequest: 0 });
r.on('error', (e) => { console.error('ioredis error: ' + e.message); process.exit(1); });
const field = (flat, name) => flat[flat.indexOf(name) + 1];
r.once('ready', async () => {
  try {
    const res = await r.multi()
      .call('EARN', '1', '22', '100', 'io-m1')
      .call('REDEEM', '1', '22', '30', 'io-m2')
      .call('BALANCE', '1', '22')
      .exec();
    const errors = res.filter(([err]) => err).map(([err]) => err.message);
    const seqs = [field(res[0][1], 'seq'), field(res[1][1], 'seq')];
    const balance = field(res[2][1], 'available');
    let aborted = '';
    try {
      await r.multi().call('EARN', '1', '22', '5', 'io-m3').call('EARN', '3', '22', '5', 'io-m4')
        .exec();
    } catch (e) {
      // EXECABORT, with the errors of the commands refused while queued
      aborted = [e.message, ...(e.previousErrors || []).map((x) => x.message)].join(' | ');
    }
    const left = await r.call('ENTRY', '1', 'io-m3');
    console.log(JSON.stringify({ seqs, balance, errors, aborted, applied: left !== null }));
    r.disconnect();
  } catch (e) {
    console.error('ioredis error: ' + e.message);
    process.exit(1);
  }
});
