import { defineConfig } from 'vite'

// The SDK starts its engine in a module Web Worker (`new Worker(new URL('./wasm-worker.js',
// import.meta.url), { type: 'module' })`) and loads its .wasm files and the default model with
// `new URL(..., import.meta.url)`: Vite bundles the worker as an ES module and emits those files
// as assets. `@x/phi2` is excluded from dependency pre-bundling so those URLs keep pointing at the
// package's own files in dev mode too.
const isolation = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin',
}

export default defineConfig({
  base: './',
  worker: { format: 'es' },
  optimizeDeps: { exclude: ['@x/phi2'] },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    // A GGUF model or a .wasm engine is never inlined as a data: URL.
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 4096,
  },
  // `vite` / `vite preview` serve the page cross-origin isolated too (threads), like `serve.mjs --isolated`.
  server: { headers: isolation },
  preview: { headers: isolation },
})
