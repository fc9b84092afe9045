// The typed client's types are generated, never edited: src/client/schema.gen.ts must be
// exactly what scripts/gen-client.mjs makes of the OpenAPI document the routes describe
// now, and the document a running server serves is that same document.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { buildOpenApi } from '../../src/http/openapi.js';
import { allRoutes } from '../../src/http/routes/index.js';
// @ts-expect-error: a plain .mjs script without type declarations
import { generateSchema, schemaPath } from '../../scripts/gen-client.mjs';

describe('the generated client types', () => {
  it('src/client/schema.gen.ts is what the routes generate now (else: node scripts/gen-client.mjs)', async () => {
    const fresh: string = await generateSchema(buildOpenApi(allRoutes(), '0.0.0'));
    const onDisk = readFileSync(schemaPath as string, 'utf8');
    expect(onDisk === fresh, 'src/client/schema.gen.ts is stale: run `node scripts/gen-client.mjs` and commit it').toBe(true);
  });

  it('types every route of the document', async () => {
    const doc = buildOpenApi(allRoutes(), '0.0.0') as { paths: Record<string, Record<string, unknown>> };
    const text = readFileSync(schemaPath as string, 'utf8');
    const routes = Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${p}`));
    expect(routes.length).toBeGreaterThan(20);
    for (const [p] of Object.entries(doc.paths)) expect(text, p).toContain(`"${p}": {`);
  });
});
