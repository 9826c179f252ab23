// Type expectations of @x/phi2's public declarations (the built dist/index.d.ts, resolved through
// the package's name as a user's project resolves it). Each `@ts-expect-error` must be an error
// and everything else must type-check: `tsc --noEmit -p test/types` (run by test/types.test.ts).
import {
  loadModel,
  type GenerateResult,
  type LoadProgress,
  type ModelInfo,
  type Phi2Chat,
  type Phi2Model,
} from '@x/phi2'

/** true when X and Y are the same type. */
type Equal<X, Y> = (<T>() => T extends X ? 1 : 2) extends <T>() => T extends Y ? 1 : 2 ? true : false
const expectType = <T extends true>(_: T): void => {}

export async function disposal(): Promise<void> {
  // Both `using` and `await using` work for a model and a chat.
  using model = await loadModel('model.gguf')
  await using model2 = await loadModel('model.gguf')
  await using chat = model.createChat()
  using chat2 = model2.createChat()
  expectType<Equal<typeof model, Phi2Model>>(true)
  expectType<Equal<typeof chat, Phi2Chat>>(true)
  const d: Disposable = model
  const ad: AsyncDisposable = model
  const cd: Disposable = chat2
  const cad: AsyncDisposable = chat
  void [d, ad, cd, cad]
}

export function info(i: ModelInfo): void {
  expectType<Equal<ModelInfo['format'], 'gguf' | 'safetensors'>>(true)
  // @ts-expect-error -- not any string
  const f: 'gguf' = i.format
  void f
  if (i.format === 'gguf') expectType<Equal<typeof i.format, 'gguf'>>(true)
  // @ts-expect-error -- no such format
  if (i.format === 'onnx') return
}

export function results(r: GenerateResult): string {
  if (r.finishReason === 'stop') {
    // Narrowed: the stop string is there.
    expectType<Equal<typeof r.stopString, string>>(true)
    return r.stopString
  }
  expectType<Equal<typeof r.finishReason, 'length' | 'eos' | 'abort'>>(true)
  expectType<Equal<typeof r.stopString, undefined>>(true)
  // @ts-expect-error -- no stop string unless finishReason is 'stop'
  const s: string = r.stopString
  return s
}

export function stopStringNeedsStop(r: GenerateResult): string {
  // @ts-expect-error -- optional before narrowing
  const s: string = r.stopString
  return s
}

export function progress(p: LoadProgress): number {
  if (p.phase === 'download') {
    expectType<Equal<typeof p.loadedBytes, number>>(true)
    expectType<Equal<typeof p.totalBytes, number>>(true)
    expectType<Equal<typeof p.fromCache, boolean>>(true)
    return p.loadedBytes / p.totalBytes
  }
  if (p.phase === 'cache-invalid') return p.totalBytes
  expectType<Equal<typeof p.phase, 'loading' | 'tokenizer' | 'ready'>>(true)
  // @ts-expect-error -- no byte counts outside 'download' / 'cache-invalid'
  const n: number = p.loadedBytes
  return n + p.progress
}

export function loadedBytesNeedsDownload(p: LoadProgress): number {
  // @ts-expect-error -- possibly undefined before narrowing on phase
  const n: number = p.loadedBytes
  return n
}

export async function onProgressCallback(): Promise<void> {
  await loadModel('m.gguf', {
    onProgress: (p) => {
      if (p.phase === 'download') {
        const fraction: number = p.loadedBytes / p.totalBytes
        void fraction
      }
    },
  })
}
