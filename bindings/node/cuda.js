// @x/phi2-native/cuda: the CUDA build of the addon (the same Rust engine with candle's CUDA device,
// built by scripts/build-cuda.sh). It is a separate binary because it links the CUDA libraries by
// name (libcuda.so.1, libcublas.so.13, ...): on a machine without them it cannot even be loaded,
// so nothing loads it unless asked (the SDK tries it for backend 'cuda' / 'auto' only where an
// NVIDIA driver is present). Where it comes from, first found wins:
//   1. $PHI2_CUDA_ADDON, a path to the .node file (a build carried to another machine);
//   2. the platform package @x/phi2-native-linux-x64-gnu-cuda (installed on purpose: it is not an
//      optional dependency of @x/phi2-native, so CPU users never download it).
// Throws what `require` threw (typically "libcuda.so.1: cannot open shared object file").
'use strict'

const { wrapAddon } = require('./wrap.js')

const PACKAGE = `@x/phi2-native-${process.platform}-${process.arch}-gnu-cuda`

function locate() {
  if (process.env.PHI2_CUDA_ADDON) return { path: process.env.PHI2_CUDA_ADDON, from: 'PHI2_CUDA_ADDON' }
  let path
  try {
    path = require.resolve(PACKAGE)
  } catch (err) {
    const e = new Error(`the CUDA addon is not installed (npm install ${PACKAGE}, or set PHI2_CUDA_ADDON to a built phi2 .node file)`)
    e.code = 'E_BACKEND_UNAVAILABLE'
    e.cause = err
    throw e
  }
  return { path, from: PACKAGE }
}

const where = locate()
const native = require(where.path)
if (!native.addonBackends || !native.addonBackends().cuda) {
  const e = new Error(`${where.path} (from ${where.from}) is a phi2 addon built without CUDA (scripts/build-cuda.sh builds the CUDA one)`)
  e.code = 'E_BACKEND_UNAVAILABLE'
  throw e
}

module.exports = { ...wrapAddon(native), addonPath: where.path }
