// Traces, when an operator asks for them: with OTEL_EXPORTER_OTLP_ENDPOINT (or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set, `berth serve` loads the OpenTelemetry SDK and
// sends a span per HTTP request, lease operation and run phase to that endpoint, as
// OTLP/HTTP with JSON bodies, in batches. Without it nothing of the SDK is loaded: the
// helpers here call straight through, and no span object is made.
//
// Spans carry ids as attributes (never in their names), bounded values, and never a
// secret: an error is recorded by its code, not its message.
import { context, diag, DiagLogLevel, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type Context, type Span, type Tracer } from '@opentelemetry/api';

const TRACER_NAME = 'berth';

/** The SDK's handle while tracing is on (one per process; every startTracing shares it). */
let active: { shutdown: () => Promise<void>; users: number } | null = null;
/** Read on every helper call: null until the SDK is registered (and again once it is shut down). */
let tracer: Tracer | null = null;

export interface TracingConfig {
  /** Where spans go: the traces endpoint itself, or the OTLP base endpoint with /v1/traces appended. */
  url: string;
  serviceName: string;
}

/**
 * What the environment asks for: null when tracing is off (no endpoint, OTEL_SDK_DISABLED=true
 * or OTEL_TRACES_EXPORTER=none). Throws one line naming the variable when it is malformed,
 * without its value (an endpoint may carry credentials).
 */
export function tracingFromEnv(env: NodeJS.ProcessEnv = process.env): TracingConfig | null {
  const specific = (env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? '').trim();
  const base = (env.OTEL_EXPORTER_OTLP_ENDPOINT ?? '').trim();
  if (!specific && !base) return null;
  if ((env.OTEL_SDK_DISABLED ?? '').trim().toLowerCase() === 'true') return null;
  if ((env.OTEL_TRACES_EXPORTER ?? '').trim().toLowerCase() === 'none') return null;
  const exporter = (env.OTEL_TRACES_EXPORTER ?? '').trim().toLowerCase();
  if (exporter !== '' && exporter !== 'otlp') {
    throw new Error(`OTEL_TRACES_EXPORTER must be otlp or none for berth serve, not ${JSON.stringify(exporter.slice(0, 40))}`);
  }
  const name = specific ? 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT' : 'OTEL_EXPORTER_OTLP_ENDPOINT';
  let url: URL;
  try {
    url = new URL(specific || base);
  } catch {
    throw new Error(`${name} is not a URL (give the collector's OTLP/HTTP address, such as http://127.0.0.1:4318); its value is not shown`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new Error(`${name} must be an http(s) URL: berth sends traces as OTLP/HTTP, not ${url.protocol.replace(/:$/, '')}`);
  }
  for (const v of ['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', 'OTEL_EXPORTER_OTLP_PROTOCOL']) {
    const p = (env[v] ?? '').trim();
    if (p && p !== 'http/json') throw new Error(`${v} must be http/json (berth sends OTLP/HTTP with JSON bodies), not ${JSON.stringify(p.slice(0, 40))}`);
    if (p) break;
  }
  const target = specific ? url.toString() : `${url.toString().replace(/\/+$/, '')}/v1/traces`;
  return { url: target, serviceName: (env.OTEL_SERVICE_NAME ?? '').trim() || 'berth' };
}

/** Where spans go, for the server's log: scheme, host and path, never credentials or a query. */
export function tracingTarget(config: TracingConfig): string {
  const u = new URL(config.url);
  return `${u.protocol}//${u.host}${u.pathname}`;
}

export interface Tracing {
  /** The configuration in effect, null when tracing is off. */
  config: TracingConfig | null;
  /** Send what is buffered and stop (at most `ms`); a no-op when off, or while another user shares it. */
  shutdown(ms?: number): Promise<void>;
}

const OFF: Tracing = { config: null, shutdown: async () => {} };

/**
 * Start tracing when the environment asks for it (tracingFromEnv): the SDK is imported only
 * then. `warn` receives the SDK's own complaints (an endpoint that does not answer), at most
 * one a minute, with anything like credentials in a URL removed.
 */
export async function startTracing(opts: { version: string; warn?: (message: string) => void; env?: NodeJS.ProcessEnv }): Promise<Tracing> {
  const env = opts.env ?? process.env;
  const config = tracingFromEnv(env);
  if (!config) return OFF;
  if (!active) {
    const [{ TracerProvider, BatchSpanProcessor }, { OTLPTraceExporter }, { resourceFromAttributes }, { AsyncLocalStorageContextManager }, { W3CTraceContextPropagator, parseKeyPairsIntoRecord }] =
      await Promise.all([
        import('@opentelemetry/sdk-trace'),
        import('@opentelemetry/exporter-trace-otlp-http'),
        import('@opentelemetry/resources'),
        import('@opentelemetry/context-async-hooks'),
        import('@opentelemetry/core'),
      ]);
    if (opts.warn) {
      const warn = opts.warn;
      let last = 0;
      const say = (message: unknown) => {
        if (Date.now() - last < 60_000) return;
        last = Date.now();
        let text = String(message);
        try {
          // An export's failure comes as the error serialized: its message is what matters.
          const e = JSON.parse(text) as { message?: unknown };
          if (typeof e.message === 'string') text = e.message;
        } catch {
          /* a plain message */
        }
        warn(text.replace(/\/\/[^/@\s]*@/g, '//***@').slice(0, 300));
      };
      diag.setLogger({ error: say, warn: say, info: () => {}, debug: () => {}, verbose: () => {} }, { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true });
    }
    const resourceAttributes = parseKeyPairsIntoRecord(env.OTEL_RESOURCE_ATTRIBUTES);
    const delay = Number(env.OTEL_BSP_SCHEDULE_DELAY);
    const provider = new TracerProvider({
      resource: resourceFromAttributes({ ...resourceAttributes, 'service.name': config.serviceName, 'service.version': opts.version }),
      spanLimits: { attributeValueLengthLimit: 1024, attributeCountLimit: 64 },
      spanProcessors: [
        new BatchSpanProcessor({
          exporter: new OTLPTraceExporter({ url: config.url }),
          ...(Number.isFinite(delay) && delay > 0 ? { scheduledDelayMillis: delay } : {}),
        }),
      ],
    });
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    trace.setGlobalTracerProvider(provider);
    active = {
      users: 0,
      shutdown: async () => {
        tracer = null;
        await provider.shutdown();
        trace.disable();
        context.disable();
        propagation.disable();
        diag.disable();
      },
    };
    tracer = trace.getTracer(TRACER_NAME, opts.version);
  }
  const handle = active;
  handle.users++;
  let done = false;
  return {
    config,
    async shutdown(ms = 5_000) {
      if (done) return;
      done = true;
      if (--handle.users > 0) return;
      if (active === handle) active = null;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([handle.shutdown().catch(() => {}), new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
      clearTimeout(timer);
    },
  };
}

/** Whether spans are being made (tracing started and not shut down). */
export function tracingOn(): boolean {
  return tracer !== null;
}

/** The code of an error as Berth names it (a BerthError's, a driver's), for a span's status: never its message. */
function errorCode(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[\w.-]{1,64}$/.test(code) ? code : 'error';
}

/** Mark a span failed by `err`'s code (its message may quote what a user wrote, or a secret). */
export function failSpan(span: Span, err: unknown): void {
  const code = errorCode(err);
  span.setAttribute('error.type', code);
  span.setStatus({ code: SpanStatusCode.ERROR, message: code });
}

export interface SpanOptions {
  kind?: SpanKind;
  /** Start a new trace (the span has no parent, whatever is active). */
  root?: boolean;
  /** The parent, when it is not the active span (an incoming request's traceparent). */
  parent?: Context;
}

/** A span that is never recorded: what `fn` gets when tracing is off. */
const NOT_RECORDED: Span = trace.wrapSpanContext({ traceId: '0'.repeat(32), spanId: '0'.repeat(16), traceFlags: 0 });

/**
 * Run `fn` inside a span named `name` (active for everything `fn` awaits: a lease operation
 * inside a run's phase is its child). The span ends when `fn` settles, failed by a throw's
 * code. When tracing is off, `fn` runs as it is.
 */
export function inSpan<T>(name: string, attributes: Attributes, fn: (span: Span) => Promise<T>, opts: SpanOptions = {}): Promise<T> {
  if (!tracer) return fn(NOT_RECORDED);
  const parent = opts.parent ?? context.active();
  return tracer.startActiveSpan(name, { attributes, ...(opts.kind !== undefined ? { kind: opts.kind } : {}), ...(opts.root ? { root: true } : {}) }, parent, async (span) => {
    try {
      return await fn(span);
    } catch (err) {
      failSpan(span, err);
      throw err;
    } finally {
      span.end();
    }
  });
}

/**
 * A span for work already done (from `startedAt`, a performance.now() reading, to now): for
 * a sweep that is recorded only when it found something, so an idle sweep sends nothing.
 */
export function recordSpan(name: string, startedAt: number, attributes: Attributes, err?: unknown): void {
  if (!tracer) return;
  const start = performance.timeOrigin + startedAt;
  const span = tracer.startSpan(name, { attributes, startTime: start }, context.active());
  if (err !== undefined) failSpan(span, err);
  span.end();
}

/** A span begun now and ended by its holder: work that runs in pieces (a run's phase). */
export interface OpenSpan {
  /** Run `fn` inside the span (what it does are the span's children); a throw fails the span by its code and ends it. */
  within<T>(fn: () => Promise<T>): Promise<T>;
  setAttributes(attributes: Attributes): void;
  /** End it (again: nothing). */
  end(): void;
}

const NO_OPEN_SPAN: OpenSpan = { within: (fn) => fn(), setAttributes: () => {}, end: () => {} };

/** Begin a span, the child of the active one: see OpenSpan. Nothing when tracing is off. */
export function openSpan(name: string, attributes: Attributes): OpenSpan {
  if (!tracer) return NO_OPEN_SPAN;
  const span = tracer.startSpan(name, { attributes }, context.active());
  const inside = trace.setSpan(context.active(), span);
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    span.end();
  };
  return {
    async within(fn) {
      try {
        return await context.with(inside, fn);
      } catch (err) {
        failSpan(span, err);
        end();
        throw err;
      }
    },
    setAttributes: (a) => span.setAttributes(a),
    end,
  };
}

/** An HTTP request's span: a SERVER span, the child of the caller's `traceparent` when it sent one. */
export function inRequestSpan<T>(method: string, header: (name: string) => string | undefined, fn: (span: Span) => Promise<T>): Promise<T> {
  if (!tracer) return fn(NOT_RECORDED);
  const carrier: Record<string, string> = {};
  for (const h of ['traceparent', 'tracestate']) {
    const v = header(h);
    if (v !== undefined) carrier[h] = v;
  }
  const parent = propagation.extract(ROOT_CONTEXT, carrier);
  return inSpan(method, { 'http.request.method': method }, fn, { kind: SpanKind.SERVER, parent });
}

export { SpanKind, SpanStatusCode, type Attributes, type Span };
