// Serves the dashboard (src/web): an HTML page, one script and one stylesheet, read
// once at start. They hold no data, so they answer without a key; everything the
// page shows comes from the API with the key the user signs in with.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Hono } from 'hono';

const FILES: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/assets/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/assets/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
};

// The page runs only its own script: no inline script, nothing from elsewhere.
const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

export function mountDashboard<E extends object>(app: Hono<E & { Variables: { requestId: string } }>): void {
  for (const [path, { file, type }] of Object.entries(FILES)) {
    const body = readFileSync(new URL(`../web/${file}`, import.meta.url));
    const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 16)}"`;
    app.get(path, (c) => {
      if (c.req.header('if-none-match') === etag) return c.body(null, 304, { etag });
      return c.body(body, 200, { 'content-type': type, etag, 'cache-control': 'no-cache', ...SECURITY_HEADERS });
    });
  }
}
