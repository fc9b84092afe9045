// Module hooks (registered by module-log.mjs): every @opentelemetry module the process
// resolves is written, one URL a line, to the file the test named. Lets a test see whether
// `berth serve` loaded the OpenTelemetry SDK at all.
import { appendFileSync } from 'node:fs';

let file = '';

export function initialize(data) {
  file = data.file;
}

export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  if (file && r.url.includes('/node_modules/@opentelemetry/')) appendFileSync(file, `${r.url}\n`);
  return r;
}
