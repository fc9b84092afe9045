// The demo `npm start` brings: a company "Demo" with an agent "demo" whose process
// talks back to Berth with its run token. Its key is saved for the CLI (0600), so
// `npx berth run demo` works in a second terminal with nothing to copy.
import { fileURLToPath } from 'node:url';
import { hashBearerSecret } from '../secrets/bearer.js';
import type { Services } from '../services/index.js';
import { readCredentials, saveCredentials, type SavedCredentials } from './home-files.js';

export const DEMO_AGENT = 'demo';
const demoScript = fileURLToPath(new URL('../../scripts/demo-agent.mjs', import.meta.url));

function demoAdapterConfig() {
  return { command: process.execPath, args: [demoScript], env: {}, timeoutSec: 120, graceSec: 5 };
}

export async function ensureDemo(services: Services, url: string, actor = { type: 'system' as const, id: 'demo' }): Promise<SavedCredentials & { created: boolean }> {
  const saved = readCredentials();
  if (saved) {
    const company = await services.companies.get(saved.companyId).catch(() => null);
    const keyOk = company ? await services.apiKeys.authenticate(hashBearerSecret(saved.apiKey)) : null;
    if (company && keyOk) {
      const [agent] = await services.agents.list(company.id, { name: DEMO_AGENT });
      if (!agent) await services.agents.create(company.id, { name: DEMO_AGENT, adapterType: 'process', adapterConfig: demoAdapterConfig() }, actor);
      else if (JSON.stringify(agent.adapterConfig.args) !== JSON.stringify([demoScript]) || agent.adapterConfig.command !== process.execPath) {
        await services.agents.update(company.id, agent.id, { adapterConfig: demoAdapterConfig() }, actor);
      }
      const creds = { ...saved, url };
      saveCredentials(creds);
      return { ...creds, created: false };
    }
  }
  const company = await services.companies.create({ name: 'Demo' });
  const { key } = await services.apiKeys.create(company.id, { name: 'demo' }, actor);
  await services.environments.ensureLocalEnvironment(company.id, actor);
  await services.agents.create(company.id, { name: DEMO_AGENT, adapterType: 'process', adapterConfig: demoAdapterConfig() }, actor);
  const creds = { url, apiKey: key, companyId: company.id, companyName: company.name };
  saveCredentials(creds);
  return { ...creds, created: true };
}
