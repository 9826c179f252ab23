#!/usr/bin/env node
// llama.cpp's perplexity (node-llama-cpp 3.21.1, CPU prebuilt) of a token sequence, with the
// windows of llama.cpp's perplexity tool (tools/perplexity/perplexity.cpp, default mode):
//
//   node test/oracle/llama-perplexity.mjs --model X.gguf --ids FILE.json --context N [--threads T]
//
// FILE.json: a JSON array of token ids (tokenized by the caller: the same ids go to both engines;
// no BOS, as for Phi-2). Windows [i*N, (i+1)*N) for i < floor(len / N), each evaluated in a fresh
// sequence; the tokens at window positions floor(N/2)+1 .. N-1 are scored with llama.cpp's
// next-token probabilities (node-llama-cpp's full-vocabulary `probabilities`, softmax of the raw
// logits) at the position before. Prints one JSON line:
//   {"nll","perplexity","tokens","windows","logprobs":[per scored token, in order]}
// Settings as llama-logprobs.mjs: CPU only (never builds or downloads llama.cpp), F32 KV cache,
// no flash attention, one ubatch per window.
import fs from "node:fs";
import path from "node:path";
import process from "node:process";

function usage(msg) {
    if (msg) console.error(`llama-perplexity: ${msg}`);
    console.error("usage: node test/oracle/llama-perplexity.mjs --model X.gguf --ids FILE.json --context N [--threads T]");
    process.exit(2);
}

const a = {threads: 1};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
    const v = () => (i + 1 < argv.length ? argv[++i] : usage(`${argv[i]} needs a value`));
    switch (argv[i]) {
        case "--model": a.model = v(); break;
        case "--ids": a.ids = v(); break;
        case "--context": a.context = Number(v()); break;
        case "--threads": a.threads = Number(v()); break;
        default: usage(`unknown argument ${argv[i]}`);
    }
}
if (!a.model || !a.ids || !Number.isInteger(a.context) || a.context < 2) usage("missing or bad argument");
const ids = JSON.parse(fs.readFileSync(a.ids, "utf8"));
if (!Array.isArray(ids) || !ids.every((t) => Number.isInteger(t) && t >= 0)) usage(`${a.ids}: not an array of token ids`);
const N = a.context;
const nWindows = Math.floor(ids.length / N);
if (nWindows === 0) usage(`${ids.length} tokens: fewer than one window of ${N}`);

const {getLlama, LlamaLogLevel} = await import("node-llama-cpp");
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error, maxThreads: a.threads});
const model = await llama.loadModel({modelPath: path.resolve(a.model), gpuLayers: 0, useMmap: true});
try {
    const context = await model.createContext({
        contextSize: N + 1, batchSize: N + 1, sequences: 1, threads: a.threads, flashAttention: false,
        experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
    });
    const first = Math.floor(N / 2) + 1;
    const logprobs = [];
    const seq = context.getSequence();
    try {
        for (let w = 0; w < nWindows; w++) {
            const win = ids.slice(w * N, (w + 1) * N);
            await seq.clearHistory(); // each window from an empty context
            {
                const rows = await seq.controlledEvaluate(win.map((t, k) => k >= first - 1 && k < N - 1
                    ? [t, {generateNext: {probabilities: true, options: {temperature: 0}}}]
                    : t));
                for (let k = first; k < N; k++) {
                    const p = rows[k - 1]?.next?.probabilities?.get(win[k]);
                    if (typeof p !== "number") throw new Error(`window ${w}: no probability for position ${k}`);
                    logprobs.push(Math.log(p));
                }
            }
        }
    } finally {
        await context.dispose();
    }
    const nll = -logprobs.reduce((s, v) => s + v, 0) / logprobs.length;
    process.stdout.write(JSON.stringify({nll, perplexity: Math.exp(nll), tokens: logprobs.length, windows: nWindows, logprobs}) + "\n");
} finally {
    await model.dispose();
    await llama.dispose();
}
process.exit(0);
