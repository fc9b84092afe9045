// Output for people: aligned tables, relative times, status colours on a terminal
// only (and never with NO_COLOR).
import { styleText } from 'node:util';

export const useColour = () => process.stdout.isTTY === true && !process.env.NO_COLOR;

type Style = Parameters<typeof styleText>[0];
const STATUS_STYLE: Record<string, Style> = {
  active: 'green',
  running: 'cyan',
  succeeded: 'green',
  released: 'green',
  queued: 'yellow',
  pending_cleanup: 'yellow',
  retained: 'yellow',
  archived: 'gray',
  expired: 'gray',
  cancelled: 'gray',
  failed: 'red',
  timed_out: 'red',
};

export function paint(style: Style, text: string): string {
  return useColour() ? styleText(style, text) : text;
}

export function status(s: unknown): string {
  const text = String(s ?? '');
  const style = STATUS_STYLE[text];
  return style ? paint(style, text) : text;
}

// eslint-disable-next-line no-control-regex
const visible = (s: string) => s.replace(/\u001b\[[0-9;]*m/g, '').length;

export function ago(value: unknown): string {
  if (!value) return '-';
  const ms = Date.now() - new Date(String(value)).getTime();
  if (Number.isNaN(ms)) return '-';
  const s = Math.round(Math.abs(ms) / 1000);
  const text = s < 60 ? `${s}s` : s < 3600 ? `${Math.round(s / 60)}m` : s < 86400 ? `${Math.round(s / 3600)}h` : `${Math.round(s / 86400)}d`;
  return ms >= 0 ? `${text} ago` : `in ${text}`;
}

export function table(headers: string[], rows: string[][]): string {
  if (rows.length === 0) return '(none)';
  const clip = (s: string) => (visible(s) > 60 && visible(s) === s.length ? `${s.slice(0, 57)}...` : s);
  const cells = rows.map((r) => r.map((c) => clip(c ?? '')));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => visible(r[i] ?? ''))));
  const line = (r: string[]) => r.map((c, i) => c + ' '.repeat(Math.max(0, widths[i]! - visible(c)))).join('  ').trimEnd();
  return [line(headers.map((h) => paint('bold', h))), ...cells.map(line)].join('\n');
}
