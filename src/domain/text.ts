// Text from outside Berth (a driver's error, a remote's stderr) made safe to store:
// PostgreSQL refuses NUL in text and jsonb, and an unpaired UTF-16 surrogate cannot be
// encoded as UTF-8, so either one would make the statement that stores it fail.

const UNSTORABLE = /\0|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** `text` without NUL characters and unpaired surrogates (each replaced by U+FFFD, so a reader sees something was there). */
export function storableText(text: string): string {
  return text.replace(UNSTORABLE, '\uFFFD');
}
