// The demo agent: a process that Berth runs through a lease. It reads its run and
// its lease back from the API with its own run token (PAPERCLIP_API_KEY).
const { PAPERCLIP_RUN_ID: runId, PAPERCLIP_API_URL: api, PAPERCLIP_API_KEY: token } = process.env;
const get = async (path) => {
  const res = await fetch(`${api}${path}`, { headers: { authorization: `Bearer ${token}` } });
  if (!res.ok) throw new Error(`GET ${path}: ${res.status} ${await res.text()}`);
  return res.json();
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

console.log(`hello from the demo agent (run ${runId}, pid ${process.pid})`);
console.log(`working directory: ${process.cwd()}`);
const run = await get(`/api/heartbeat-runs/${runId}`);
const env = run.contextSnapshot.paperclipEnvironment;
console.log(`environment: ${env.name} (${env.driver}), lease ${env.leaseId}, fence ${env.fence}`);
const lease = await get(`/api/environment-leases/${env.leaseId}`);
console.log(`my lease is ${lease.status} (policy ${lease.leasePolicy}), expires ${lease.expiresAt}`);
for (let step = 1; step <= 3; step++) {
  console.log(`working: step ${step} of 3`);
  await sleep(150);
}
console.log('done');
