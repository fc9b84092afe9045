// What a `slurm` environment is: a Slurm cluster this server submits to with the cluster's
// own commands (sbatch, squeue, scontrol, scancel), and how each lease's job is asked for
// there: partition, account, time limit, CPUs, memory, and a short allow-list of other sbatch
// options, each checked here (never a raw option string). Pure data; the driver is driver.ts.
import { z } from 'zod';
import type { DriverDescriptor } from '../contract.js';

const absolutePath = z
  .string()
  .trim()
  .max(1000)
  .regex(/^\//, 'must be an absolute path')
  .refine((p) => !p.split('/').includes('..'), 'must not contain ..')
  .refine((p) => !/[\s'"\\$`]/.test(p), 'must not contain spaces, quotes, backslashes, $ or `');

/** A Slurm name (partition, account, QOS, reservation...): what Slurm itself accepts, and nothing a shell or option parser reads twice. */
const slurmName = (what: string) => z.string().trim().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, `must be ${what} (letters, digits, _ . -)`);

/** A node list in Slurm's host-list syntax (`n1,n[2-4]`). */
const nodeList = z.string().trim().regex(/^[A-Za-z0-9][A-Za-z0-9_.,[\]-]{0,999}$/, 'must be a node list (n1,n[2-4])');

/**
 * Other sbatch options Berth passes, each its own field with its own check. Anything
 * else is refused by name (the object is strict): a raw option could change where output
 * goes, which user the job is, or what environment it gets, all of which the driver owns.
 */
export const slurmOptionsSchema = z.strictObject({
  qos: slurmName('a QOS name').optional(),
  reservation: slurmName('a reservation name').optional(),
  /** Node features (`--constraint`): names joined by & | , and brackets. */
  constraint: z.string().trim().regex(/^[A-Za-z0-9_.&|,()[\]*-]{1,500}$/, 'must be a feature expression (letters, digits, & | , ( ) [ ] *)').optional(),
  /** Generic resources (`--gres`): `gpu:1`, `gpu:a100:2,shard:1`. */
  gres: z.string().trim().regex(/^[A-Za-z0-9_]+(:[A-Za-z0-9_.-]+){0,2}(,[A-Za-z0-9_]+(:[A-Za-z0-9_.-]+){0,2})*$/, 'must be gres specs (gpu:1, gpu:a100:2)').optional(),
  nodelist: nodeList.optional(),
  exclude: nodeList.optional(),
  exclusive: z.boolean().optional(),
  /** `--nice`: 0 or more (a lower priority; raising it takes an operator). */
  nice: z.number().int('must be an integer').min(0, 'must be 0 or more').max(2147483645).optional(),
  licenses: z.string().trim().regex(/^[A-Za-z0-9_.-]+(:\d+)?(,[A-Za-z0-9_.-]+(:\d+)?)*$/, 'must be licenses (name or name:count, comma separated)').optional(),
  /** `--wckey`. */
  wckey: slurmName('a wckey').optional(),
});

export const slurmConfigSchema = z.strictObject({
  /** The cluster's slurm.conf for this server's commands (SLURM_CONF); absent: the commands' own default. */
  slurmConf: absolutePath.optional(),
  /** Where sbatch, squeue, scontrol and scancel are; absent: the system's PATH (/usr/bin...). */
  binDir: absolutePath.optional(),
  /**
   * A directory the server and the cluster's nodes both see at this path (a shared file
   * system): each job's files (its output, the run's 0600 environment file) are under
   * `<workDir>/<resource id>`, removed when the resource is.
   */
  workDir: absolutePath.refine((p) => p !== '/', 'must not be /').default('/tmp/berth-slurm'),
  partition: slurmName('a partition name').optional(),
  account: slurmName('an account name').optional(),
  /** The job's time limit (sbatch --time) in minutes; a run's own deadline lowers it once the run starts. */
  timeLimitMinutes: z.number().int('must be an integer').min(1, 'must be at least 1 (minute)').max(525600, 'must be at most 525600 (a year)').default(60),
  /** How long a run's job may wait in the queue before the run fails (prepare_timeout) and the job is cancelled. */
  queueTimeoutSeconds: z.number().int('must be an integer').min(5, 'must be at least 5').max(7 * 24 * 3600, 'must be at most 604800 (a week)').default(3600),
  /** CPUs for the run's one task (--cpus-per-task). */
  cpus: z.number().int('must be an integer').min(1, 'must be at least 1').max(4096).default(1),
  /** Memory for the job, MiB (--mem); absent: the partition's default. */
  memoryMb: z.number().int('must be an integer').min(1, 'must be at least 1 (MiB)').max(1 << 30).optional(),
  options: slurmOptionsSchema.default({}),
});
export type SlurmConfig = z.infer<typeof slurmConfigSchema>;

export const slurmDescriptor: DriverDescriptor = {
  kind: 'slurm',
  title: 'a job on a Slurm cluster',
  adapters: ['process'],
  form: [
    { path: 'slurmConf', label: 'slurm.conf', type: 'text', placeholder: "the commands' default" },
    { path: 'workDir', label: 'Shared job directory', type: 'text', placeholder: '/tmp/berth-slurm' },
    { path: 'partition', label: 'Partition', type: 'text', placeholder: "the cluster's default" },
    { path: 'account', label: 'Account', type: 'text' },
    { path: 'timeLimitMinutes', label: 'Time limit (minutes)', type: 'number', placeholder: '60' },
    { path: 'queueTimeoutSeconds', label: 'Queue timeout (s)', type: 'number', placeholder: '3600' },
    { path: 'cpus', label: 'CPUs', type: 'number', placeholder: '1' },
    { path: 'memoryMb', label: 'Memory (MiB)', type: 'number' },
  ],
  configSchema: slurmConfigSchema,
  secretPaths: [],
  // A job outlives the server that submitted it, and its output is a file on the shared
  // directory: any server with the same commands and directory watches it on from an
  // offset. Jobs carry Berth's ids in their name and comment: squeue lists them.
  capabilities: { reattach: true, pool: false, list: true, streamOutput: true, hostLocal: false },
};
