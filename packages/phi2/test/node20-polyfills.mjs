// vitest 5 targets Node >= 22 and uses a few ES2024 built-ins in its reporters (Map.groupBy,
// Object.groupBy, Promise.withResolvers); the SDK supports Node 20, so the test runner's main
// process gets these spec-conforming fallbacks. No effect on Node >= 22.
const define = (target, name, value) => {
  if (typeof target[name] !== 'function') Object.defineProperty(target, name, { configurable: true, writable: true, value })
}

define(Map, 'groupBy', (items, key) => {
  const out = new Map()
  let i = 0
  for (const v of items) {
    const k = key(v, i++)
    const list = out.get(k)
    if (list) list.push(v)
    else out.set(k, [v])
  }
  return out
})

define(Object, 'groupBy', (items, key) => {
  const out = Object.create(null)
  let i = 0
  for (const v of items) {
    const k = key(v, i++)
    ;(out[k] ??= []).push(v)
  }
  return out
})

define(Promise, 'withResolvers', function () {
  let resolve
  let reject
  const promise = new this((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
})
