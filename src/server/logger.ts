// Structured logs (pino): JSON lines, or readable lines on a terminal.
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';

export function createLogger(opts: { level?: string; pretty?: boolean } = {}): Logger {
  const level = opts.level ?? process.env.BERTH_LOG_LEVEL ?? 'info';
  const usePretty = opts.pretty ?? (process.env.BERTH_LOG_FORMAT ? process.env.BERTH_LOG_FORMAT === 'pretty' : process.stdout.isTTY === true);
  const redact = { paths: ['apiKey', '*.apiKey', 'key', 'token', 'privateKey', '*.privateKey', 'headers.authorization'], censor: '[redacted]' };
  if (usePretty) {
    return pino({ level, redact, base: null }, pretty({ sync: true, singleLine: true, colorize: process.stdout.isTTY === true, ignore: 'pid,hostname', translateTime: 'SYS:HH:MM:ss.l' }));
  }
  return pino({ level, redact, base: { pid: process.pid } });
}
