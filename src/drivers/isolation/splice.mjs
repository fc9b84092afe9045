// One relayed connection, for both ends of the netns relay (netns-relay.ts, relay-main.mjs):
// the accepted socket (paused on connect) is joined to a fresh connection to `connectTo`
// once that connects; either side's end or error ends both. `open` holds the accepted
// sockets still carried, so a stopping relay can end them.
import net from 'node:net';

export function splice(accepted, connectTo, open) {
  const to = net.connect(connectTo);
  open.add(accepted);
  const done = () => {
    open.delete(accepted);
    accepted.destroy();
    to.destroy();
  };
  accepted.on('error', done).on('close', done);
  to.on('error', done).on('close', done);
  to.on('connect', () => {
    accepted.pipe(to);
    to.pipe(accepted);
    accepted.resume();
  });
}
