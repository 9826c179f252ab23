// @x/phi2-native entry point: the napi-rs loader (index.js) picks the prebuilt addon for this
// platform; this file moves the stable error code that the addon puts in front of every error
// message ("E_IO: …") into `error.code`, so callers can branch on it (see native.d.ts).
'use strict'

const native = require('./index.js')

module.exports = require('./wrap.js').wrapAddon(native)
