// One process competing for a data-dir lock (lock.test.ts starts many at once). It
// loads the lock code (argv[2], a module URL), says `ready`, and calls lockDataDir(argv[3])
// when its stdin says go. The winner says `locked` and holds the lock until its stdin
// closes; a loser prints the error and exits 2.
const { lockDataDir } = await import(process.argv[2]);
const dataDir = process.argv[3];
process.stdout.write('ready\n');
process.stdin.once('data', () => {
  let lock;
  try {
    lock = lockDataDir(dataDir);
  } catch (err) {
    process.stderr.write(`${err.message}\n`);
    process.exit(2);
  }
  process.stdout.write('locked\n');
  process.stdin.on('end', () => {
    lock.release();
    process.exit(0);
  });
  process.stdin.resume();
});
