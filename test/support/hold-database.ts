// A child process for tests: opens the embedded database at argv[2], prints
// "ready", and holds it until killed or its stdin closes.
import { openDatabase } from '../../src/db/client.js';

const database = await openDatabase({ databaseUrl: '', dataDir: process.argv[2]! });
process.stdout.write('ready\n');
process.stdin.resume();
process.stdin.on('end', async () => {
  await database.close();
  process.exit(0);
});
