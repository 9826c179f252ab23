// Types of @x/phi2-native: generated from the Rust signatures by napi-rs (napi.d.ts), so they
// cannot drift from the addon. The TypeScript SDK (@x/phi2) is the only intended consumer.
//
// Every thrown error / rejected promise is an Error with a string `code`:
//   E_IO, E_MALFORMED_FILE, E_BAD_TENSOR, E_MISSING_TENSOR, E_BAD_CONFIG, E_INVALID_ARGUMENT,
//   E_BACKEND, E_BACKEND_UNAVAILABLE (backend "cuda" where the build or the machine has none), E_ABORTED (cancelled before it started), E_CANCELLED (convertModel cancelled), E_DISPOSED (model or session used after
//   dispose), E_INTERNAL (a Rust panic, caught: none ever unwinds into Node).
export * from './napi'
