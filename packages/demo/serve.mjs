#!/usr/bin/env node
// A small static server for the built demo (packages/demo/dist), with no dependencies.
//
//   node serve.mjs [--isolated] [--port 8080] [--host 127.0.0.1] [--root dist] [--fixtures DIR] [--quiet]
//
// --isolated   adds Cross-Origin-Opener-Policy: same-origin, Cross-Origin-Embedder-Policy: require-corp
//              and Cross-Origin-Resource-Policy: same-origin to every response, which makes the page
//              cross-origin isolated (SharedArrayBuffer, so the SDK runs the multi-threaded wasm build).
// --fixtures   serves DIR under /fixtures/ too (e.g. test/fixtures/gen with the GGUF test models).
//
// Every response has a Content-Length (the SDK checks a model's size before downloading it) and the
// right MIME type (application/wasm lets the browser compile wasm while it downloads). HEAD and
// single byte ranges are supported. Requests are counted per path (`server.stats`), which is what
// the browser tests use to tell whether a model was downloaded again or came from the Cache API.
//
// Also importable: `import { startServer } from './serve.mjs'` (the browser tests do that).
import { createReadStream, statSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

export const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.gguf': 'application/octet-stream',
  '.bin': 'application/octet-stream',
  '.safetensors': 'application/octet-stream',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
};

export const ISOLATION_HEADERS = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin',
};

/** Per-path request counts and body bytes sent. */
export class RequestStats {
  constructor() {
    /** @type {Map<string, { requests: number, get: number, head: number, status: Record<number, number>, bytesSent: number }>} */
    this.paths = new Map();
    this.log = [];
  }
  entry(p) {
    let e = this.paths.get(p);
    if (!e) this.paths.set(p, (e = { requests: 0, get: 0, head: 0, status: {}, bytesSent: 0 }));
    return e;
  }
  /** Counts for one path (zeros if it was never requested). */
  get(p) {
    return this.paths.get(p) ?? { requests: 0, get: 0, head: 0, status: {}, bytesSent: 0 };
  }
  reset() {
    this.paths.clear();
    this.log.length = 0;
  }
}

/** Resolves `urlPath` under `dir`; null when it escapes `dir`. */
function inside(dir, urlPath) {
  const p = path.resolve(dir, '.' + path.posix.normalize('/' + urlPath));
  return p === dir || p.startsWith(dir + path.sep) ? p : null;
}

/**
 * Starts the server. Options: root (directory served at /), fixtures (directory served at
 * /fixtures/), isolated (COOP/COEP/CORP headers), port (0 = any free port), host, quiet, and
 * `handler(req, res, ctx)`: tried first; return true when it answered (tests add routes with it;
 * `ctx.headers` are the common headers, `ctx.stats` the counters, `ctx.count(path, bytes)`).
 * Resolves with { server, url, port, stats, close() }.
 */
export async function startServer(options = {}) {
  const root = path.resolve(options.root ?? path.join(here, 'dist'));
  const fixtures = options.fixtures ? path.resolve(options.fixtures) : null;
  const isolated = !!options.isolated;
  const stats = new RequestStats();
  const quiet = options.quiet ?? false;
  const common = { 'Cache-Control': 'no-cache', 'X-Content-Type-Options': 'nosniff', ...(isolated ? ISOLATION_HEADERS : {}) };

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    let pathname;
    try {
      pathname = decodeURIComponent(url.pathname);
    } catch {
      pathname = url.pathname;
    }
    const entry = stats.entry(pathname);
    entry.requests++;
    if (req.method === 'GET') entry.get++;
    if (req.method === 'HEAD') entry.head++;
    const started = Date.now();
    res.on('finish', () => {
      entry.status[res.statusCode] = (entry.status[res.statusCode] ?? 0) + 1;
      stats.log.push({ method: req.method, path: pathname, status: res.statusCode, range: req.headers.range ?? null });
      if (!quiet) console.log(`${req.method} ${pathname} ${res.statusCode} ${Date.now() - started}ms`);
    });
    const count = (n) => {
      entry.bytesSent += n;
    };
    try {
      if (options.handler && (await options.handler(req, res, { headers: common, stats, entry, count, pathname }))) return;
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { ...common, Allow: 'GET, HEAD', 'Content-Length': 0 }).end();
        return;
      }
      let file = null;
      if (fixtures && pathname.startsWith('/fixtures/')) file = inside(fixtures, pathname.slice('/fixtures'.length));
      else file = inside(root, pathname);
      let st = file ? statOrNull(file) : null;
      if (st?.isDirectory()) {
        file = path.join(file, 'index.html');
        st = statOrNull(file);
      }
      if (!st || !st.isFile()) {
        const body = `Not found: ${pathname}\n`;
        res.writeHead(404, { ...common, 'Content-Type': MIME['.txt'], 'Content-Length': Buffer.byteLength(body) });
        res.end(req.method === 'HEAD' ? undefined : body);
        return;
      }
      const type = MIME[path.extname(file).toLowerCase()] ?? 'application/octet-stream';
      const headers = { ...common, 'Content-Type': type, 'Accept-Ranges': 'bytes', 'Last-Modified': st.mtime.toUTCString() };
      let start = 0;
      let end = st.size - 1;
      let status = 200;
      const range = req.headers.range && /^bytes=(\d*)-(\d*)$/.exec(req.headers.range);
      if (range && (range[1] !== '' || range[2] !== '')) {
        if (range[1] === '') start = Math.max(0, st.size - Number(range[2]));
        else {
          start = Number(range[1]);
          if (range[2] !== '') end = Math.min(end, Number(range[2]));
        }
        if (start > end || start >= st.size) {
          res.writeHead(416, { ...common, 'Content-Range': `bytes */${st.size}`, 'Content-Length': 0 }).end();
          return;
        }
        status = 206;
        headers['Content-Range'] = `bytes ${start}-${end}/${st.size}`;
      }
      headers['Content-Length'] = end - start + 1;
      res.writeHead(status, headers);
      if (req.method === 'HEAD' || st.size === 0) {
        res.end();
        return;
      }
      const stream = createReadStream(file, { start, end });
      stream.on('data', (chunk) => count(chunk.length));
      stream.on('error', () => res.destroy());
      res.on('close', () => stream.destroy());
      stream.pipe(res);
    } catch (err) {
      if (!res.headersSent) res.writeHead(500, { ...common, 'Content-Type': MIME['.txt'] });
      res.end(String(err?.stack ?? err));
    }
  });
  // Keep-alive sockets would hold close() up.
  server.keepAliveTimeout = 1000;
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', resolve);
  });
  const { port } = server.address();
  const url = `http://${options.host ?? '127.0.0.1'}:${port}/`;
  return {
    server,
    url,
    port,
    stats,
    isolated,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections?.();
      }),
  };
}

function statOrNull(p) {
  try {
    return statSync(p);
  } catch {
    return null;
  }
}

function parseArgs(argv) {
  const o = { isolated: false, port: 8080, host: '127.0.0.1', root: undefined, fixtures: undefined, quiet: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--isolated') o.isolated = true;
    else if (a === '--port') o.port = Number(value());
    else if (a === '--host') o.host = value();
    else if (a === '--root') o.root = value();
    else if (a === '--fixtures') o.fixtures = value();
    else if (a === '--quiet') o.quiet = true;
    else if (a === '--help' || a === '-h') {
      console.log('usage: node serve.mjs [--isolated] [--port 8080] [--host 127.0.0.1] [--root dist] [--fixtures DIR] [--quiet]');
      process.exit(0);
    } else throw new Error(`unknown argument ${a} (see --help)`);
  }
  return o;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(err.message);
    process.exit(2);
  }
  const s = await startServer(args);
  const root = path.resolve(args.root ?? path.join(here, 'dist'));
  if (!statOrNull(path.join(root, 'index.html'))) {
    console.error(`warning: ${root}/index.html is missing: build the demo first (npm run build -w @x/phi2-demo)`);
  }
  console.log(
    `@x/phi2 demo on ${s.url} (${args.isolated ? 'cross-origin isolated: COOP/COEP, threads' : 'not isolated: single-threaded wasm'})` +
      (args.fixtures ? `, fixtures from ${path.resolve(args.fixtures)} at /fixtures/` : ''),
  );
  const stop = () => s.close().then(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
