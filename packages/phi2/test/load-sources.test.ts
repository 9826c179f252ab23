// loadModel() sources on the native cpu backend (and 'auto'): paths, and file: URLs as URL objects
// or strings, like the wasm backend takes them.
import { pathToFileURL } from 'node:url'
import { describe, expect, it } from 'vitest'
import { loadModel } from '@x/phi2'
import { fixture } from './helpers.js'

describe('loadModel sources (cpu)', () => {
  it('accepts file: URLs, as URL objects and as strings, on cpu and auto', async () => {
    const path = fixture('tiny-q8_0.gguf')
    const dir = fixture('tiny')
    const expected = await loadModel(path)
    const tokens = (await expected.generate('Hi', { maxNewTokens: 4 })).tokens
    expected.dispose()
    for (const backend of ['cpu', 'auto'] as const) {
      for (const source of [pathToFileURL(path), pathToFileURL(path).href]) {
        const m = await loadModel(source, { backend })
        expect(m.info.source).toBe(path)
        expect(m.info.format).toBe('gguf')
        expect((await m.generate('Hi', { maxNewTokens: 4 })).tokens).toEqual(tokens)
        m.dispose()
      }
    }
    // A directory (safetensors) as a file: URL too.
    const d = await loadModel(pathToFileURL(dir))
    expect(d.info).toMatchObject({ format: 'safetensors', source: dir })
    d.dispose()
  })

  it('a missing file: URL is E_IO naming the path; a remote file: URL or http URL object is a clear option error', async () => {
    const missing = pathToFileURL('/no/such/model.gguf')
    await expect(loadModel(missing)).rejects.toMatchObject({ code: 'E_IO', message: expect.stringContaining('/no/such/model.gguf') })
    await expect(loadModel(missing.href)).rejects.toMatchObject({ code: 'E_IO', message: expect.stringContaining('/no/such/model.gguf') })
    await expect(loadModel('file://example.com/m.gguf')).rejects.toMatchObject({ code: 'E_INVALID_OPTION', path: 'source' })
    await expect(loadModel(new URL('http://127.0.0.1:9/m.gguf'))).rejects.toMatchObject({
      code: 'E_INVALID_OPTION',
      message: expect.stringMatching(/backend 'wasm'/),
    })
  })
})
