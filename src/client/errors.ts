// The errors of `berth/client`, in a module of their own that loads nothing else (the CLI
// checks them before it needs the client itself).

/** One entry of the error body's `fields`: which input was refused, and why. */
export interface BerthFieldIssue {
  path: string;
  message: string;
}

/** A Berth server answered with an error: its status and its {error: {code, message, fields}}. */
export class BerthApiError extends Error {
  override readonly name = 'BerthApiError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly fields?: BerthFieldIssue[],
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
  }
}

/** No answer at all: nothing listens at the address, or the connection failed. */
export class BerthConnectionError extends Error {
  override readonly name: string = 'BerthConnectionError';
  constructor(
    message: string,
    readonly code?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
