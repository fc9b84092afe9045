// Where the http adapter may connect: never to the server's own networks (loopback,
// link-local, cloud metadata, private ranges...) unless the operator allows them.
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP } from 'node:net';

/** The variable naming the networks the operator allows despite the denied ranges below. */
export const ALLOW_NETWORKS_VAR = 'BERTH_HTTP_ALLOW_NETWORKS';

/**
 * Ranges a request from the server must not reach by default, each with the word the
 * refusal uses. The requests leave from the server whatever environment the run
 * holds, so these are the server's networks; the first match names the address.
 */
const DENIED: Array<[string, number, 'ipv4' | 'ipv6', string]> = [
  ['169.254.169.254', 32, 'ipv4', 'cloud metadata'],
  ['fd00:ec2::254', 128, 'ipv6', 'cloud metadata'],
  ['0.0.0.0', 8, 'ipv4', 'unspecified'],
  ['127.0.0.0', 8, 'ipv4', 'loopback'],
  ['169.254.0.0', 16, 'ipv4', 'link-local'],
  ['10.0.0.0', 8, 'ipv4', 'private'],
  ['172.16.0.0', 12, 'ipv4', 'private'],
  ['192.168.0.0', 16, 'ipv4', 'private'],
  ['100.64.0.0', 10, 'ipv4', 'shared address space'],
  ['192.0.0.0', 24, 'ipv4', 'IETF protocol assignments'],
  ['198.18.0.0', 15, 'ipv4', 'benchmarking'],
  ['224.0.0.0', 4, 'ipv4', 'multicast'],
  ['240.0.0.0', 4, 'ipv4', 'reserved'],
  ['::', 128, 'ipv6', 'unspecified'],
  ['::1', 128, 'ipv6', 'loopback'],
  ['::', 96, 'ipv6', 'IPv4-compatible'],
  ['fe80::', 10, 'ipv6', 'link-local'],
  ['fc00::', 7, 'ipv6', 'private (unique local)'],
  ['ff00::', 8, 'ipv6', 'multicast'],
  // IPv4 embedded in IPv6 (NAT64, 6to4) reaches the same IPv4 networks.
  ['64:ff9b::', 96, 'ipv6', 'NAT64'],
  ['2002::', 16, 'ipv6', '6to4'],
];

const deniedLists = DENIED.map(([net, prefix, type, why]) => {
  const list = new BlockList();
  list.addSubnet(net, prefix, type);
  return { list, why };
});

export class EgressDenied extends Error {
  readonly code = 'EGRESS_DENIED';
  constructor(
    readonly address: string,
    readonly why: string,
    host: string,
  ) {
    super(`${host === address ? address : `${host} (${address})`} is a ${why} address; the server does not connect there unless ${ALLOW_NETWORKS_VAR} allows it`);
  }
}

export interface EgressPolicy {
  /** Why the address is refused, or null when it may be reached. */
  refusal(address: string): string | null;
}

const family = (address: string): 'ipv4' | 'ipv6' => (isIP(address) === 4 ? 'ipv4' : 'ipv6');

/**
 * The policy from `BERTH_HTTP_ALLOW_NETWORKS`: a comma-separated list of addresses or
 * CIDR ranges (`127.0.0.1/32,10.1.0.0/16,fd00::/8`) allowed although a denied range
 * covers them. Unset or empty: nothing denied is allowed. Throws a message naming the
 * variable and the bad entry.
 */
export function egressPolicy(raw: string | undefined = process.env[ALLOW_NETWORKS_VAR]): EgressPolicy {
  const allowed = new BlockList();
  for (const entry of (raw ?? '').split(',').map((s) => s.trim()).filter(Boolean)) {
    const [net, prefixText, ...rest] = entry.split('/');
    const version = isIP(net ?? '');
    const max = version === 4 ? 32 : 128;
    const prefix = prefixText === undefined ? max : Number(prefixText);
    if (version === 0 || rest.length > 0 || !/^\d{1,3}$/.test(prefixText ?? String(max)) || prefix > max) {
      throw new Error(`${ALLOW_NETWORKS_VAR}: "${entry.slice(0, 100)}" is not an address or CIDR range (e.g. 127.0.0.1/32, 10.0.0.0/8, fd00::/8)`);
    }
    allowed.addSubnet(net!, prefix, version === 4 ? 'ipv4' : 'ipv6');
  }
  return {
    refusal(address) {
      const type = family(address);
      const hit = deniedLists.find((d) => d.list.check(address, type));
      if (!hit) return null;
      return allowed.check(address, type) ? null : hit.why;
    },
  };
}

/** An IPv6 address written as an IPv4-mapped one (`::ffff:7f00:1`) reads better as IPv4. */
function plain(address: string): string {
  const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(address);
  if (!m) return address;
  const hi = parseInt(m[1]!, 16);
  const lo = parseInt(m[2]!, 16);
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/** Throws EgressDenied when an IP literal host is refused. */
export function checkAddress(policy: EgressPolicy, host: string, address: string): void {
  const why = policy.refusal(address);
  if (why) throw new EgressDenied(plain(address), why, host);
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

/**
 * A `lookup` for net.connect: resolves the name, refuses it when any address it
 * resolves to is refused, and hands the checked addresses to the connection itself,
 * so a second resolution (DNS rebinding) can never swap in another address.
 */
export function checkedLookup(policy: EgressPolicy) {
  return (hostname: string, options: { all?: boolean; family?: number | string }, callback: LookupCallback): void => {
    dnsLookup(hostname, { all: true, ...(options.family ? { family: options.family as number } : {}) }, (err, addresses) => {
      if (err) return callback(err, '');
      try {
        for (const a of addresses) checkAddress(policy, hostname, a.address);
      } catch (denied) {
        return callback(denied as NodeJS.ErrnoException, '');
      }
      if (addresses.length === 0) return callback(Object.assign(new Error(`${hostname} has no address`), { code: 'ENOTFOUND' }), '');
      if (options.all) return callback(null, addresses);
      callback(null, addresses[0]!.address, addresses[0]!.family);
    });
  };
}
