// The inside end of a network-namespace relay (netns-relay.ts): started by the server with
// nsenter into an isolated run's network namespace, it listens on 127.0.0.1:<port> there and
// carries each connection to the server's unix socket <path>, which lives outside any
// network namespace. It prints `ready <port>` once it listens, and ends when its stdin
// closes (the server let go of it or died) or on SIGTERM.
//
//   node relay-main.mjs <port> <unix socket path>
import net from 'node:net';
import { splice } from './splice.mjs';

const port = Number(process.argv[2]);
const socketPath = process.argv[3];
if (!Number.isInteger(port) || port < 1 || port > 65535 || !socketPath) {
  process.stderr.write('usage: relay-main.mjs <port 1-65535> <unix socket path>\n');
  process.exit(2);
}

const open = new Set();
const server = net.createServer({ pauseOnConnect: true }, (inside) => splice(inside, { path: socketPath }, open));

server.on('error', (err) => {
  // EADDRNOTAVAIL: the namespace's loopback is down; EADDRINUSE: the port is taken inside.
  process.stderr.write(`relay: cannot listen on 127.0.0.1:${port} in this network namespace: ${err.code ?? ''} ${err.message}\n`);
  process.exit(3);
});

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${server.address().port}\n`);
});

const stop = () => {
  server.close();
  for (const c of open) c.destroy();
  process.exit(0);
};
process.stdin.on('end', stop).on('close', stop).on('error', stop);
process.stdin.resume();
process.on('SIGTERM', stop);
