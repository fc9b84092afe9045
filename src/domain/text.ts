// Text from outside (a driver's error, a process's output) made storable: PostgreSQL's
// text refuses NUL, and an unpaired UTF-16 surrogate cannot be encoded as UTF-8.

/** The text with NUL characters and unpaired surrogates replaced by U+FFFD; the rest unchanged. */
export function storableText(text: string): string {
  // Fast path: most text has neither.
  if (!/[\u0000\ud800-\udfff]/.test(text)) return text;
  return text.replace(/\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
}
