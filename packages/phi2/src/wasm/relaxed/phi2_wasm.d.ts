// Types for the wasm-bindgen glue copied into dist/wasm/relaxed/ at build time: the same exports as st.
export * from '../st/phi2_wasm.js'
