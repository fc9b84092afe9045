import type net from 'node:net';

/** Join `accepted` (paused on connect) to a new connection to `connectTo`; either end ends both. */
export function splice(accepted: net.Socket, connectTo: net.NetConnectOpts, open: Set<net.Socket>): void;
