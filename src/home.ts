// Where Berth keeps its files (BERTH_HOME, else ~/.berth): a module of its own so the CLI can find it without loading the database.
import { homedir } from 'node:os';
import { join } from 'node:path';

export function berthHome(): string {
  return process.env.BERTH_HOME || join(homedir(), '.berth');
}
