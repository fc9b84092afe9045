// Types for dist-state.mjs (used from the TypeScript tests and benchmarks).
export declare const root: string;
export declare const distDir: string;
export declare const stampPath: string;
export declare function sourceFiles(): string[];
export declare function distState(): { current: true } | { current: false; reason: string };
