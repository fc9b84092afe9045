// Who a local pid is: enough to tell, later and from another process, that a pid still
// names the same process and not one that reused the number (after a reboot, or in another
// pid namespace such as a container that shares this hostname).
import { readFileSync, readlinkSync } from 'node:fs';

export interface ProcessIdentity {
  /** /proc/sys/kernel/random/boot_id: changes at every boot. */
  bootId: string;
  /** The pid namespace the pid is counted in (this process's own), e.g. `pid:[4026531836]`. */
  pidNamespace: string;
  /** Field 22 of /proc/<pid>/stat: the process's start time in clock ticks since boot. */
  startTime: string;
}

/** This boot of this machine (null where /proc cannot tell). */
export function bootId(): string | null {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return null;
  }
}

function ownPidNamespace(): string | null {
  try {
    return readlinkSync('/proc/self/ns/pid');
  } catch {
    return null;
  }
}

function startTimeOf(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces or ')': count after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19] ?? null; // field 22 overall; fields[0] here is field 3
  } catch {
    return null;
  }
}

/** The identity of a live local pid, or null where /proc cannot tell (not Linux, or the pid is gone). */
export function processIdentity(pid: number): ProcessIdentity | null {
  const b = bootId();
  const ns = ownPidNamespace();
  const st = startTimeOf(pid);
  return b && ns && st ? { bootId: b, pidNamespace: ns, startTime: st } : null;
}

/**
 * True only when `pid` here and now is the process `recorded` describes: same boot, same pid
 * namespace as this process, same start time. Anything unknown is false: never signal a guess.
 */
export function isSameProcess(pid: number, recorded: unknown): boolean {
  if (!recorded || typeof recorded !== 'object') return false;
  const r = recorded as Partial<ProcessIdentity>;
  const now = processIdentity(pid);
  return now !== null && r.bootId === now.bootId && r.pidNamespace === now.pidNamespace && r.startTime === now.startTime;
}
