/**
 * Model sources other than a file path (platform-neutral): URL strings and `URL`s (fetched by the
 * engine worker), `Blob` / `File` (read with `blob.stream()` in the worker), `ArrayBuffer` /
 * `Uint8Array` (transferred to the worker).
 */
import type { EngineSource } from './engine.js'
import { Phi2ModelLoadError, Phi2OptionsError } from './errors.js'

/** What `loadModel()` accepts: a path (Node) or URL string, a `URL`, a `Blob` / `File`, an `ArrayBuffer` or a `Uint8Array`. */
export type ModelSource = string | URL | Blob | ArrayBuffer | Uint8Array

function lastSegment(s: string): string {
  const clean = s.split(/[?#]/, 1)[0] ?? ''
  const seg = clean.split('/').filter((x) => x.length > 0).pop()
  try {
    return seg ? decodeURIComponent(seg) : 'model.gguf'
  } catch {
    return seg ?? 'model.gguf'
  }
}

/** Rejects what the wasm engine cannot read before anything is downloaded (by name). */
export function checkWasmFormat(name: string, display: string): void {
  if (/\.safetensors$/i.test(name) || /\.json$/i.test(name)) {
    throw new Phi2ModelLoadError(
      'E_UNSUPPORTED_FORMAT',
      display,
      `Could not load model ${JSON.stringify(display)}: the wasm backend reads GGUF files only ("${name}" is a safetensors / ` +
        `JSON file); use a GGUF of the model (e.g. phi-2.Q4_K_M.gguf), or backend 'cpu' in Node`,
    )
  }
}

/**
 * A non-path source → engine source + display name. `base` resolves relative URL strings
 * (a page's `location.href`); without it a string must be an absolute URL.
 */
export function sourceFromValue(value: unknown, base: string | undefined): { source: EngineSource; display: string } {
  let out: { source: EngineSource; display: string }
  if (typeof value === 'string' || value instanceof URL) {
    if (typeof value === 'string' && value.length === 0) {
      throw new Phi2OptionsError('source', 'loadModel: source must not be empty')
    }
    let url: URL
    try {
      url = value instanceof URL ? value : base !== undefined ? new URL(value, base) : new URL(value)
    } catch (err) {
      throw new Phi2OptionsError('source', `loadModel: source ${JSON.stringify(String(value))} is not a valid URL`, { cause: err })
    }
    if (url.protocol === 'data:') {
      // A data: response has no Content-Length, so it could not be streamed into the engine.
      throw new Phi2OptionsError('source', 'loadModel: data: URLs are not supported (their size is unknown before reading them): pass the bytes as a Uint8Array, ArrayBuffer or Blob')
    }
    if (!/^(https?|blob|file):$/.test(url.protocol)) {
      throw new Phi2OptionsError('source', `loadModel: source URL protocol ${url.protocol} is not supported (http, https, blob, file)`)
    }
    out = { source: { kind: 'url', url: url.href, name: lastSegment(url.pathname) }, display: url.href }
  } else if (typeof Blob !== 'undefined' && value instanceof Blob) {
    const name = typeof (value as File).name === 'string' && (value as File).name ? (value as File).name : 'blob'
    out = { source: { kind: 'blob', blob: value, name }, display: name }
  } else if (value instanceof ArrayBuffer) {
    out = { source: { kind: 'bytes', bytes: new Uint8Array(value), name: 'bytes' }, display: 'bytes' }
  } else if (value instanceof Uint8Array) {
    out = { source: { kind: 'bytes', bytes: value, name: 'bytes' }, display: 'bytes' }
  } else {
    throw new Phi2OptionsError(
      'source',
      'loadModel: source must be a URL (string or URL), a Blob / File, an ArrayBuffer or a Uint8Array' +
        (base === undefined ? ' (or a file path)' : ''),
    )
  }
  checkWasmFormat(out.source.name, out.display)
  return out
}
