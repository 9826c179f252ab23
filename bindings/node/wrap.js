// The addon's exports as @x/phi2-native hands them out: every error's stable code ("E_IO: …", put in
// front of the message by the Rust side) moved into `error.code`. Shared by the CPU addon (lib.js)
// and the CUDA one (cuda.js), which are the same Rust engine built with different features.
'use strict'

const CODE = /^(E_[A-Z_]+): /

function withCode(err) {
  if (err instanceof Error) {
    const m = CODE.exec(err.message)
    if (m) {
      err.code = m[1]
      err.message = err.message.slice(m[0].length)
    }
  }
  return err
}

function wrapFn(fn) {
  return function (...args) {
    let out
    try {
      out = fn.apply(this, args)
    } catch (e) {
      throw withCode(e)
    }
    return out && typeof out.then === 'function' ? out.catch((e) => { throw withCode(e) }) : out
  }
}

function wrapClass(cls) {
  for (const target of [cls, cls.prototype]) {
    for (const name of Object.getOwnPropertyNames(target)) {
      if (name === 'constructor' || name === 'prototype' || name === 'length' || name === 'name') continue
      const d = Object.getOwnPropertyDescriptor(target, name)
      if (!d.configurable) continue // napi-rs statics: wrapped by the facades below
      if (typeof d.value === 'function') d.value = wrapFn(d.value)
      else if (typeof d.get === 'function') d.get = wrapFn(d.get)
      else continue
      Object.defineProperty(target, name, d)
    }
  }
  return cls
}

/** The public exports for one loaded addon binary (`native`: what napi-rs' loader returned). */
function wrapAddon(native) {
  // napi-rs defines static methods as non-configurable, so `NativeModel.load` is re-exported from a
  // facade class; `instanceof NativeModel` still recognises the addon's instances.
  class NativeModel {
    static load(...args) {
      return wrapFn(native.NativeModel.load).apply(native.NativeModel, args)
    }

    static [Symbol.hasInstance](x) {
      return x instanceof native.NativeModel
    }
  }
  wrapClass(native.NativeModel)

  // Same facade for the batch engine's static factory.
  class NativeBatchEngine {
    static create(model, config) {
      return wrapFn(native.NativeBatchEngine.create).call(native.NativeBatchEngine, model, config)
    }

    static [Symbol.hasInstance](x) {
      return x instanceof native.NativeBatchEngine
    }
  }
  wrapClass(native.NativeBatchEngine)

  return {
    NativeModel,
    NativeBatchEngine,
    NativeSession: wrapClass(native.NativeSession),
    NativeCancelToken: wrapClass(native.NativeCancelToken),
    convertModel: wrapFn(native.convertModel),
    convertFileTypes: wrapFn(native.convertFileTypes),
    readBandwidth: wrapFn(native.readBandwidth),
    addonBackends: wrapFn(native.addonBackends),
    cudaMemory: wrapFn(native.cudaMemory),
    cudaCopyBandwidth: wrapFn(native.cudaCopyBandwidth),
    profileSnapshot: wrapFn(native.profileSnapshot),
    profileReset: wrapFn(native.profileReset),
    profileEnable: wrapFn(native.profileEnable),
  }
}

module.exports = { wrapAddon }
