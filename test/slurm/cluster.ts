// The single-node Slurm cluster the test command started (scripts/engines/slurm.sh): its
// slurm.conf, node and a directory for the driver's job files. A test that needs it and
// finds it missing or down fails: it never skips.
import { execFileSync } from 'node:child_process';

export interface TestCluster {
  slurmConf: string;
  workDir: string;
  cluster: string;
  node: string;
  partition: string;
  jobcomp: string;
  /** One of the cluster's commands on this cluster, its output. */
  cmd(command: string, args: string[]): string;
}

export function testCluster(): TestCluster {
  const slurmConf = process.env.BERTH_SLURM_CONF;
  const workDir = process.env.BERTH_SLURM_WORKDIR;
  const node = process.env.BERTH_SLURM_NODE;
  if (!slurmConf || !workDir || !node) {
    throw new Error('the slurm tests need BERTH_SLURM_CONF, BERTH_SLURM_WORKDIR and BERTH_SLURM_NODE: run them through `npm test`, which starts slurmctld, slurmd and munged (scripts/engines/slurm.sh)');
  }
  const cmd = (command: string, args: string[]) => execFileSync(command, args, { env: { ...process.env, SLURM_CONF: slurmConf }, encoding: 'utf8', timeout: 30_000 });
  let state = '';
  try {
    state = cmd('sinfo', ['-h', '-n', node, '-o', '%T']).trim();
  } catch (err) {
    throw new Error(`the test Slurm cluster (${slurmConf}) does not answer: ${(err as Error).message}`);
  }
  if (!/^(idle|mixed|allocated|completing)/.test(state)) throw new Error(`the test Slurm node ${node} is ${JSON.stringify(state)}, not up`);
  return { slurmConf, workDir, node, cluster: process.env.BERTH_SLURM_CLUSTER ?? 'berth', partition: process.env.BERTH_SLURM_PARTITION ?? 'debug', jobcomp: process.env.BERTH_SLURM_JOBCOMP ?? '', cmd };
}

/** The job's record as `scontrol show job -o` prints it ('' once Slurm has forgotten it). */
export function jobRecord(c: TestCluster, jobId: string): string {
  try {
    return c.cmd('scontrol', ['show', 'job', '-o', jobId]);
  } catch {
    return '';
  }
}

export function jobState(c: TestCluster, jobId: string): string {
  return /JobState=(\S+)/.exec(jobRecord(c, jobId))?.[1] ?? '';
}
