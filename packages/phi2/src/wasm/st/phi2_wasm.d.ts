// Types for the wasm-bindgen glue copied into dist/wasm/{st,mt}/ at build time (mt re-exports these) (the worker imports
// it relatively; the bundle keeps the import external). Only what the worker uses.
import type { Glue } from '../worker-core.js'

export declare const initSync: Glue['initSync']
export declare const WasmModelLoader: Glue['WasmModelLoader']
export declare const threadsSupported: Glue['threadsSupported']
export declare const threadWorkerRun: Glue['threadWorkerRun']
export declare const threadPoolBuild: Glue['threadPoolBuild']
export declare const threadPoolSize: Glue['threadPoolSize']
export declare const __phi2_missing: Glue['__phi2_missing']
