// `npm run build` (and `prepare`, so `npm install` and `npm ci` run it): compiles src/
// to dist/ with tsc (with the declarations of the typed client, src/client) and copies the files the code reads at run time (migrations, the
// dashboard, the driver helper scripts) beside the compiled modules, which find them
// by the same relative paths as in src/. The new dist/ replaces the old in one rename.
// With --if-stale it does nothing when dist/ was built from the sources as they are.
import { spawnSync } from 'node:child_process';
import { cpSync, renameSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { distDir, distState, root, sourceFiles, stampPath } from '../bin/dist-state.mjs';

if (process.argv.includes('--if-stale') && distState().current) process.exit(0);

// Taken before reading any source, so an edit made during the build makes it stale.
const started = new Date();
const files = sourceFiles();

let tsc;
try {
  tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
} catch {
  // An install without devDependencies: bin/berth.mjs then runs the sources through tsx.
  console.error('berth build: typescript is not installed, dist/ not built (berth will run the TypeScript sources through tsx)');
  process.exit(0);
}

const tmp = `${distDir}.tmp-${process.pid}`;
rmSync(tmp, { recursive: true, force: true });
const r = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json'), '--outDir', tmp], { cwd: root, stdio: 'inherit' });
if (r.status !== 0) {
  rmSync(tmp, { recursive: true, force: true });
  console.error('berth build: tsc failed');
  process.exit(r.status ?? 1);
}
// The typed client (`berth/client`) is imported by other programs: its declarations too.
const d = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.client.json'), '--outDir', tmp], { cwd: root, stdio: 'inherit' });
if (d.status !== 0) {
  rmSync(tmp, { recursive: true, force: true });
  console.error('berth build: tsc (client declarations) failed');
  process.exit(d.status ?? 1);
}
cpSync(join(root, 'src'), tmp, { recursive: true, filter: (src) => !/\.[cm]?ts$/.test(src) });
writeFileSync(join(tmp, '.built-from.json'), `${JSON.stringify({ files }, null, 1)}\n`);
const old = `${distDir}.old-${process.pid}`;
try {
  renameSync(distDir, old);
} catch (err) {
  if (err.code !== 'ENOENT') throw err;
}
renameSync(tmp, distDir);
utimesSync(stampPath, started, started);
rmSync(old, { recursive: true, force: true });
