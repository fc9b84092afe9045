// A process that opens a netns relay and then waits to be killed: the test SIGKILLs it and
// checks the relay's inside end dies with it. Prints `relay <pid>` once the relay listens.
import { startNetnsRelay } from '../../src/drivers/isolation/netns-relay.js';

const [pid, port, targetPort] = process.argv.slice(2, 5).map(Number) as [number, number, number];
const relay = await startNetnsRelay({ pid, port, target: { host: '127.0.0.1', port: targetPort } });
process.stdout.write(`relay ${relay.pid}\n`);
setInterval(() => {}, 60_000);
