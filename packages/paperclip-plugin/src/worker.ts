// The worker Paperclip starts (`node dist/worker.js`): the Berth driver's hooks as the
// plugin's environment hooks. Renewal timers stop when the worker shuts down; the Berth
// leases they kept alive then expire after their TTL.
import { definePlugin, runWorker } from '@paperclipai/plugin-sdk';
import { createBerthDriver, type DriverLogger } from './driver.js';

let logger: DriverLogger = { info: () => {}, warn: () => {} };
const driver = createBerthDriver({
  logger: {
    info: (message, meta) => logger.info(message, meta),
    warn: (message, meta) => logger.warn(message, meta),
  },
});

const plugin = definePlugin({
  async setup(ctx) {
    logger = { info: (m, meta) => ctx.logger.info(m, meta), warn: (m, meta) => ctx.logger.warn(m, meta) };
  },
  async onHealth() {
    return { status: 'ok', message: `renewing ${driver.renewing().length} Berth lease(s)` };
  },
  async onShutdown() {
    driver.stopAll();
  },
  onEnvironmentValidateConfig: (p) => driver.onValidateConfig(p),
  onEnvironmentProbe: (p) => driver.onProbe(p),
  onEnvironmentAcquireLease: (p) => driver.onAcquireLease(p),
  onEnvironmentResumeLease: (p) => driver.onResumeLease(p),
  onEnvironmentReleaseLease: (p) => driver.onReleaseLease(p),
  onEnvironmentDestroyLease: (p) => driver.onDestroyLease(p),
  onEnvironmentRealizeWorkspace: (p) => driver.onRealizeWorkspace(p),
  onEnvironmentExecute: (p) => driver.onExecute(p),
});

export default plugin;
export { createBerthDriver } from './driver.js';
/** This worker's driver: the hooks above, and the leases it is renewing. */
export const berthDriver = driver;
runWorker(plugin, import.meta.url);
