#!/usr/bin/env node
// Reference log-probabilities from llama.cpp (node-llama-cpp 3.21.1, CPU prebuilt).
//
//   node test/oracle/llama-logprobs.mjs --model X.gguf --tokens 464,2068,7586 \
//        --max-new-tokens N --out FILE [--threads T]
//
// 1. Greedy-decodes N tokens after the prompt (temperature 0 = argmax over the
//    full vocabulary; the fixtures give padding ids a -10 logit bias so the
//    argmax is always a real token).
// 2. Re-evaluates prompt + all N generated tokens in a fresh sequence and, for
//    every position, takes the full-vocabulary next-token distribution.
// 3. Writes FILE: (P + N) rows x n_vocab little-endian f32, row i = log p(. | tokens[0..=i]).
//    node-llama-cpp returns probabilities (softmax of the raw logits in f32,
//    computed by its addon), not logits; we write Math.log(p) rounded to f32.
//    A probability that underflowed to 0 is written as -Infinity (never
//    happens with the fixtures: their logit range is far below 87).
// 4. Prints one JSON line on stdout: {"tokens":[...generated ids...]}.
//
// Contract shared with the engine's example (same flags, same output), so tests
// can diff the two files. Exits non-zero with a message on any error.
//
// Settings: CPU only (gpu: false, build: "never": never compiles or downloads
// llama.cpp), F32 KV cache, no flash attention, batch size >= P + N so the
// whole sequence is one ubatch.

import fs from "node:fs";
import path from "node:path";
import process from "node:process";

function usage(msg) {
    if (msg) console.error(`llama-logprobs: ${msg}`);
    console.error("usage: node test/oracle/llama-logprobs.mjs --model X.gguf --tokens 1,2,3 --max-new-tokens N --out FILE [--threads T]");
    process.exit(2);
}

function parseArgs(argv) {
    const a = {threads: 1};
    for (let i = 0; i < argv.length; i++) {
        const k = argv[i];
        const v = () => {
            if (i + 1 >= argv.length) usage(`${k} needs a value`);
            return argv[++i];
        };
        switch (k) {
            case "--model": a.model = v(); break;
            case "--tokens": a.tokens = v(); break;
            case "--max-new-tokens": a.maxNewTokens = v(); break;
            case "--out": a.out = v(); break;
            case "--threads": a.threads = v(); break;
            case "-h": case "--help": usage();
            default: usage(`unknown argument ${k}`);
        }
    }
    if (!a.model || !a.tokens || a.maxNewTokens == null || !a.out) usage("missing required argument");
    const tokens = a.tokens.split(",").filter((s) => s.trim() !== "").map((s) => {
        const n = Number(s);
        if (!Number.isInteger(n) || n < 0) usage(`bad token id ${JSON.stringify(s)}`);
        return n;
    });
    if (tokens.length === 0) usage("--tokens is empty");
    const n = Number(a.maxNewTokens);
    if (!Number.isInteger(n) || n < 0) usage(`bad --max-new-tokens ${a.maxNewTokens}`);
    const threads = Number(a.threads);
    if (!Number.isInteger(threads) || threads < 0) usage(`bad --threads ${a.threads}`);
    return {model: a.model, tokens, maxNewTokens: n, out: a.out, threads};
}

async function main() {
    const args = parseArgs(process.argv.slice(2));
    if (!fs.existsSync(args.model)) throw new Error(`model not found: ${args.model}`);

    const {getLlama, LlamaLogLevel} = await import("node-llama-cpp");
    const llama = await getLlama({
        gpu: false,
        build: "never",
        logLevel: LlamaLogLevel.error,
        maxThreads: args.threads,
    });
    const model = await llama.loadModel({modelPath: path.resolve(args.model), gpuLayers: 0, useMmap: true});
    try {
        // node-llama-cpp has no vocabulary-size getter: use the GGUF token list
        // (when the metadata reader kept it) and cross-check against the
        // number of candidates the sampler returns (llama_vocab_n_tokens).
        const ggufTokens = model.fileInfo?.metadata?.tokenizer?.ggml?.tokens;
        const nVocab = Array.isArray(ggufTokens) ? ggufTokens.length : null;
        const total = args.tokens.length + args.maxNewTokens;
        const ctxSize = Math.max(total + 1, 32);
        const makeContext = () => model.createContext({
            contextSize: ctxSize,
            batchSize: ctxSize,
            sequences: 1,
            threads: args.threads,
            flashAttention: false,
            experimentalKvCacheKeyType: "F32",
            experimentalKvCacheValueType: "F32",
        });
        const greedy = {temperature: 0};

        // 1. greedy decode
        const generated = [];
        {
            const context = await makeContext();
            try {
                const seq = context.getSequence();
                let input = args.tokens.map((t, i) => i === args.tokens.length - 1
                    ? [t, {generateNext: {token: true, options: greedy}}]
                    : t);
                for (let step = 0; step < args.maxNewTokens; step++) {
                    const res = await seq.controlledEvaluate(input);
                    const next = res[input.length - 1]?.next?.token;
                    if (next == null) throw new Error(`no token generated at step ${step}`);
                    generated.push(next);
                    input = [[next, {generateNext: {token: true, options: greedy}}]];
                }
            } finally {
                await context.dispose();
            }
        }

        // 2. full distributions for every position of prompt + generated
        const all = [...args.tokens, ...generated];
        const context = await makeContext();
        let rows;
        try {
            const seq = context.getSequence();
            rows = await seq.controlledEvaluate(all.map((t) => [t, {
                generateNext: {token: true, probabilities: true, options: greedy},
            }]));
        } finally {
            await context.dispose();
        }

        const V = rows[0]?.next?.probabilities?.size;
        if (!Number.isInteger(V) || V <= 0) throw new Error("cannot determine vocabulary size");
        if (nVocab != null && nVocab !== V) throw new Error(`sampler returned ${V} candidates but the GGUF has ${nVocab} tokens`);
        const buf = new Float32Array(all.length * V);
        for (let i = 0; i < all.length; i++) {
            const probs = rows[i]?.next?.probabilities;
            if (!(probs instanceof Map)) throw new Error(`no probabilities for position ${i}`);
            if (probs.size !== V) throw new Error(`position ${i}: ${probs.size} probabilities, expected ${V} (sampler truncated the candidates?)`);
            const row = buf.subarray(i * V, (i + 1) * V);
            row.fill(NaN);
            for (const [tok, p] of probs) {
                if (tok < 0 || tok >= V) throw new Error(`position ${i}: token id ${tok} out of range`);
                row[tok] = Math.log(p);
            }
            for (let j = 0; j < V; j++)
                if (Number.isNaN(row[j])) throw new Error(`position ${i}: token ${j} missing from probabilities`);
            // sanity: the greedy pick during decoding equals the argmax here
            if (i >= args.tokens.length - 1 && i < all.length - 1) {
                const want = all[i + 1];
                const got = rows[i].next.token;
                if (got !== want)
                    console.error(`llama-logprobs: warning: position ${i}: batch argmax ${got} != decoded token ${want}`);
            }
        }
        fs.mkdirSync(path.dirname(path.resolve(args.out)), {recursive: true});
        // Float32Array is host-endian; all supported hosts are little-endian.
        if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error("big-endian host not supported");
        fs.writeFileSync(args.out, Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength));
        process.stdout.write(JSON.stringify({tokens: generated}) + "\n");
    } finally {
        await model.dispose();
        await llama.dispose();
    }
}

main().then(() => process.exit(0), (err) => {
    console.error(`llama-logprobs: error: ${process.env.PHI2_ORACLE_DEBUG ? (err?.stack ?? err) : (err?.message ?? err)}`);
    process.exit(1);
});
