// Files in and out of a workspace on this machine, as tar archives, confined to it: a
// directory the caller names is reached without passing through any symbolic link (an agent
// may have made one pointing anywhere), entries are unpacked by node-tar (which refuses to
// write through a link and replaces a link at an entry's path instead of following it), and
// a path read out must resolve inside the workspace; links in it are stored as links.
import { lstat, mkdir, readdir, realpath } from 'node:fs/promises';
import { basename, dirname, join, sep } from 'node:path';
import { Readable } from 'node:stream';
import * as tar from 'tar';
import { BerthError } from '../../domain/errors.js';

const outside = (rel: string, why: string) =>
  new BerthError('invalid', `path: ${rel} ${why}`, { fields: [{ path: 'path', message: why }] });

/** `workspace/rel` made (each missing directory in turn), refusing any component that is a link or not a directory. */
async function directoryIn(workspace: string, rel: string): Promise<string> {
  let at = await realpath(workspace);
  for (const part of rel === '' ? [] : rel.split('/')) {
    at = join(at, part);
    const st = await lstat(at).catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? null : Promise.reject(err)));
    if (st === null) await mkdir(at);
    else if (st.isSymbolicLink()) throw outside(rel, 'passes through a symbolic link in the workspace');
    else if (!st.isDirectory()) throw outside(rel, 'is not a directory in the workspace');
  }
  return at;
}

/** Unpack a tar archive (checked by the server: relative names, links that stay inside) into `workspace/dir`. */
export async function unpackInto(workspace: string, dir: string, archive: Buffer): Promise<void> {
  const cwd = await directoryIn(workspace, dir);
  const problems: string[] = [];
  await new Promise<void>((resolve, reject) => {
    const x = tar.x({
      cwd,
      strict: true,
      preservePaths: false,
      preserveOwner: false,
      noMtime: false,
      onwarn: (_code: string, message: string) => void problems.push(message),
    });
    // An entry refused as it is written (through a link the workspace holds, say): the caller's archive, not the server, is wrong.
    x.on('error', (err: Error) => reject(new BerthError('invalid', `the archive could not be unpacked in the workspace: ${err.message.slice(0, 300)}`)));
    x.on('close', resolve);
    x.end(archive);
  });
  if (problems.length > 0) throw new BerthError('invalid', `the archive could not be unpacked in the workspace: ${problems.slice(0, 3).join('; ').slice(0, 500)}`);
}

/** A tar archive of `workspace/rel` (a file or a directory under its own name; '' for all of it); links are stored, never followed. */
export async function packFrom(workspace: string, rel: string): Promise<Readable> {
  const base = await realpath(workspace);
  const real = await realpath(join(base, rel)).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') throw new BerthError('not_found', `path ${rel} not found in the workspace`);
    throw err;
  });
  if (real !== base && !real.startsWith(base + sep)) throw outside(rel, 'resolves outside the workspace');
  // A path comes as its last name with what is under it (as `docker cp` gives it); all of the
  // workspace as its entries by name. An empty workspace is an empty archive.
  const [cwd, names] = real === base ? [base, await readdir(base)] : [dirname(real), [basename(real)]];
  if (names.length === 0) return Readable.from([Buffer.alloc(1024)]);
  return Readable.from(tar.c({ cwd, portable: true, follow: false }, names));
}
