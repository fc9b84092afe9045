// CPU time the PostgreSQL server processes (and this process) spend, read from
// /proc: a measure that does not depend on how busy the rest of the machine is.
import { readFileSync, readdirSync } from 'node:fs';

const TICKS_PER_SECOND = 100;

/** Total user+system CPU seconds of every process named postgres on this machine (Linux only). */
export function postgresCpuSeconds(): number | null {
  let ticks = 0;
  let found = false;
  try {
    for (const pid of readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      let stat: string;
      try {
        stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      } catch {
        continue;
      }
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      if (comm !== 'postgres') continue;
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // fields[11], fields[12] are utime, stime (fields 14 and 15 of the whole line).
      ticks += Number(fields[11]) + Number(fields[12]);
      found = true;
    }
  } catch {
    return null;
  }
  return found ? ticks / TICKS_PER_SECOND : null;
}

export function selfCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** Run f and return its result with the server and client CPU seconds it cost. */
export async function withCpu<T>(f: () => Promise<T>): Promise<{ result: T; serverCpu: number | null; clientCpu: number }> {
  const s0 = postgresCpuSeconds();
  const c0 = selfCpuSeconds();
  const result = await f();
  const s1 = postgresCpuSeconds();
  return { result, serverCpu: s0 === null || s1 === null ? null : s1 - s0, clientCpu: selfCpuSeconds() - c0 };
}
