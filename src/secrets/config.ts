// Which stored fields are secrets (one list, keyed by environment driver and agent adapter),
// and the one mechanism that seals, opens and redacts them by path.
//
// A path is dotted, into the document a service stores: `{config, envVars}` for an
// environment, `{adapterConfig}` for an agent. A final `*` means every value of that
// object (its keys stay readable: they are what a read shows). Sealed values are
// cipher.ts ciphertexts; a value in clear (written by a Berth older than this list) still
// opens as itself and is sealed in place when a server starts (sealStoredSecrets).
import { DRIVER_DESCRIPTORS } from '../drivers/descriptors.js';
import { decryptSecret, encryptSecret, isEncryptedSecret, type SecretKey } from './cipher.js';

export interface SecretPath {
  /** Dotted path into the stored document; a final `*` stands for every value of that object. */
  path: string;
  /**
   * What reads show instead, a sibling of the secret: for a `*` path the sorted names
   * (the object itself is dropped), for a single field `true` while it is set.
   */
  shownAs: string;
  /** The value may be any JSON, sealed as its JSON text; otherwise it is a string. */
  json?: boolean;
}

type Doc = Record<string, unknown>;

const ENV_VARS: SecretPath = { path: 'envVars.*', shownAs: 'envVarNames' };

/** Secrets of each environment driver: its variables, and the config paths its descriptor names. */
export const ENVIRONMENT_SECRET_PATHS: Readonly<Record<string, readonly SecretPath[]>> = Object.fromEntries(
  Object.values(DRIVER_DESCRIPTORS).map((d) => [d.kind, [ENV_VARS, ...d.secretPaths.map((p) => ({ ...p, path: `config.${p.path}` }))]]),
);

/** Secrets of each agent adapter: values of a process's env, of an http agent's headers. */
export const AGENT_SECRET_PATHS: Readonly<Record<string, readonly SecretPath[]>> = {
  process: [{ path: 'adapterConfig.env.*', shownAs: 'envNames' }],
  http: [{ path: 'adapterConfig.headers.*', shownAs: 'headerNames' }],
};

/** A driver or adapter this version does not know (written by a newer Berth): all its config is treated as secret. */
const UNKNOWN_ENVIRONMENT: readonly SecretPath[] = [ENV_VARS, { path: 'config.*', shownAs: 'configNames', json: true }];
const UNKNOWN_AGENT: readonly SecretPath[] = [{ path: 'adapterConfig.*', shownAs: 'adapterConfigNames', json: true }];

export function environmentSecretPaths(driver: string): readonly SecretPath[] {
  return ENVIRONMENT_SECRET_PATHS[driver] ?? UNKNOWN_ENVIRONMENT;
}

export function agentSecretPaths(adapterType: string): readonly SecretPath[] {
  return AGENT_SECRET_PATHS[adapterType] ?? UNKNOWN_AGENT;
}

export class SecretOpenError extends Error {
  readonly code = 'secret_key';
  constructor(message: string) {
    super(message);
    this.name = 'SecretOpenError';
  }
}

const isObject = (v: unknown): v is Doc => v !== null && typeof v === 'object' && !Array.isArray(v);

/**
 * A copy of `doc` with `f` applied to each value the path names (objects on the way are
 * copied, never changed in place). `f` gets the value and its dotted name.
 */
function mapAt(doc: Doc, segments: string[], f: (value: unknown, name: string) => unknown, prefix = ''): Doc {
  const [head, ...rest] = segments;
  if (head === undefined) return doc;
  if (head === '*') {
    const out: Doc = {};
    for (const [k, v] of Object.entries(doc)) out[k] = f(v, `${prefix}${k}`);
    return out;
  }
  if (!(head in doc)) return doc;
  const value = doc[head];
  if (rest.length === 0) return { ...doc, [head]: f(value, `${prefix}${head}`) };
  if (!isObject(value)) return doc;
  return { ...doc, [head]: mapAt(value, rest, f, `${prefix}${head}.`) };
}

function eachPath(doc: Doc, paths: readonly SecretPath[], f: (value: unknown, name: string, p: SecretPath) => unknown): Doc {
  let out = doc;
  for (const p of paths) out = mapAt(out, p.path.split('.'), (v, name) => (v === undefined || v === null ? v : f(v, name, p)), '');
  return out;
}

function seal(value: unknown, p: SecretPath, key?: SecretKey): string {
  const text = p.json ? JSON.stringify(value) : String(value);
  return key ? encryptSecret(text, key) : encryptSecret(text);
}

/**
 * Every secret a caller sent, sealed. Whatever a caller sent is sealed, even text that
 * looks like a ciphertext: only Berth's own stored values are ever taken as ciphertexts.
 */
export function sealSecrets(doc: Doc, paths: readonly SecretPath[], key?: SecretKey): Doc {
  return eachPath(doc, paths, (v, _name, p) => seal(v, p, key));
}

/** Stored values sealed where they are still in clear (older rows); sealed ones kept as they are. */
export function sealClearSecrets(doc: Doc, paths: readonly SecretPath[], key?: SecretKey): Doc {
  return eachPath(doc, paths, (v, _name, p) => (isEncryptedSecret(v) ? v : seal(v, p, key)));
}

/** The key ids of every sealed value in a stored document. */
export function sealedKeyIds(doc: Doc, paths: readonly SecretPath[]): Set<string> {
  const ids = new Set<string>();
  eachPath(doc, paths, (v) => {
    if (isEncryptedSecret(v)) ids.add(v.split(':')[2] ?? '');
    return v;
  });
  return ids;
}

/**
 * The stored document with its secrets in clear, for whoever must use them (a driver,
 * the run's process). A value in clear (an older row) is itself. A wrong key or a damaged
 * value is an error naming `what` and the field, never garbage and never the value.
 */
export function openSecrets(doc: Doc, paths: readonly SecretPath[], what: string, key?: SecretKey): Doc {
  return eachPath(doc, paths, (v, name, p) => {
    if (!isEncryptedSecret(v)) return v;
    try {
      const text = key ? decryptSecret(v, key) : decryptSecret(v);
      return p.json ? JSON.parse(text) : text;
    } catch (err) {
      throw new SecretOpenError(`${what}: cannot decrypt ${name}: ${(err as Error).message}`);
    }
  });
}

/** The document as reads show it: each secret replaced by its names (a `*` path) or by `shownAs: true`. */
export function redactSecrets(doc: Doc, paths: readonly SecretPath[]): Doc {
  let out = doc;
  for (const p of paths) {
    const segments = p.path.split('.');
    const leaf = segments.at(-1)!;
    const parentPath = leaf === '*' ? segments.slice(0, -2) : segments.slice(0, -1);
    const field = leaf === '*' ? segments.at(-2)! : leaf;
    const redactIn = (parent: Doc): Doc => {
      if (!(field in parent)) return parent;
      const { [field]: value, ...rest } = parent;
      if (leaf === '*') return { ...rest, [p.shownAs]: isObject(value) ? Object.keys(value).sort() : [] };
      return value === undefined || value === null ? rest : { ...rest, [p.shownAs]: true };
    };
    out = parentPath.length === 0 ? redactIn(out) : mapAt(out, parentPath, (parent) => (isObject(parent) ? redactIn(parent) : parent));
  }
  return out;
}

/**
 * Single secret fields (not `*` maps) that `next` leaves out keep the value stored in
 * `current`: an update need not resend a key it cannot read. The kept value is sealed if
 * it was still in clear.
 */
export function keepUnnamedSecrets(next: Doc, current: Doc, paths: readonly SecretPath[]): Doc {
  let out = next;
  for (const p of paths) {
    const segments = p.path.split('.');
    if (segments.includes('*')) continue;
    let stored: unknown = current;
    for (const s of segments) stored = isObject(stored) ? stored[s] : undefined;
    if (stored === undefined || stored === null) continue;
    let given: unknown = out;
    for (const s of segments) given = isObject(given) ? given[s] : undefined;
    if (given !== undefined) continue;
    const parentSegments = segments.slice(0, -1);
    const leaf = segments.at(-1)!;
    const kept = isEncryptedSecret(stored) ? stored : seal(stored, p);
    out = parentSegments.length === 0 ? { ...out, [leaf]: kept } : mapAt(out, parentSegments, (parent) => (isObject(parent) ? { ...parent, [leaf]: kept } : parent));
  }
  return out;
}
