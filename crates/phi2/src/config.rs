//! Model hyper-parameters, read from the model file: HF `config.json` (model_type `phi`),
//! the legacy `phi-msft` config of early microsoft/phi-2 revisions, or GGUF `phi2.*` metadata.
//! Nothing about Phi-2's own sizes is assumed; every value is checked for consistency.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// The CodeGen tokenizer (Phi-1, Phi-1.5, Phi-2) has 50295 ids; embedding rows past it are padding.
pub const CODEGEN_TOKENIZER_SIZE: usize = 50295;
/// `<|endoftext|>`, Phi-2's EOS (and BOS, which is never added to prompts).
pub const PHI2_EOS: u32 = 50256;

#[derive(Debug, Clone, PartialEq)]
pub struct Phi2Config {
    /// Rows of the embedding and lm_head matrices (51200 for Phi-2).
    pub vocab_size: usize,
    /// Ids `>= tokenizer_size` are padding rows and never sampled (50295 for Phi-2).
    pub tokenizer_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Leading dims of each head that get NeoX rotary: `int(partial_rotary_factor * head_dim)`.
    pub rotary_dim: usize,
    pub rope_theta: f32,
    pub layer_norm_eps: f64,
    /// Context length (max_position_embeddings).
    pub context_length: usize,
    pub eos_token_id: Option<u32>,
}

impl Phi2Config {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Reads an HF `config.json` (model_type `phi` or legacy `phi-msft`).
    pub fn from_hf_json(path: &Path, text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::config(path, "<root>", format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::config(path, "<root>", "expected a JSON object"))?;
        let get = |key: &str| obj.get(key).filter(|v| !v.is_null());
        let uint = |key: &str| -> Result<Option<usize>> {
            match get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|u| usize::try_from(u).ok())
                    .map(Some)
                    .ok_or_else(|| Error::config(path, key, format!("expected a non-negative integer, found {v}"))),
            }
        };
        let float = |key: &str| -> Result<Option<f64>> {
            match get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .map(Some)
                    .ok_or_else(|| Error::config(path, key, format!("expected a finite number, found {v}"))),
            }
        };
        let need = |key: &str, v: Option<usize>| v.ok_or_else(|| Error::config(path, key, "missing"));
        let model_type = get("model_type").and_then(Value::as_str).unwrap_or("");
        let legacy = model_type == "phi-msft" || get("n_embd").is_some();
        if !legacy && !model_type.is_empty() && model_type != "phi" {
            return Err(Error::config(path, "model_type", format!("expected \"phi\" or \"phi-msft\", found {model_type:?}")));
        }
        let act_key = if legacy { "activation_function" } else { "hidden_act" };
        if let Some(act) = get(act_key) {
            if act.as_str() != Some("gelu_new") {
                return Err(Error::config(path, act_key, format!("only \"gelu_new\" is supported, found {act}")));
            }
        }
        let cfg = if legacy {
            let hidden = need("n_embd", uint("n_embd")?)?;
            let heads = need("n_head", uint("n_head")?)?;
            Phi2Config {
                vocab_size: need("vocab_size", uint("vocab_size")?)?,
                tokenizer_size: CODEGEN_TOKENIZER_SIZE,
                hidden_size: hidden,
                intermediate_size: uint("n_inner")?.unwrap_or(4 * hidden),
                num_layers: need("n_layer", uint("n_layer")?)?,
                num_heads: heads,
                num_kv_heads: heads,
                rotary_dim: need("rotary_dim", uint("rotary_dim")?)?,
                // phi-msft configs have no key for the rotary base (always 10000 there); honour
                // `rope_theta` when a converter adds one.
                rope_theta: float("rope_theta")?.unwrap_or(10000.0) as f32,
                layer_norm_eps: float("layer_norm_epsilon")?.unwrap_or(1e-5),
                context_length: uint("n_positions")?.unwrap_or(2048),
                eos_token_id: Some(PHI2_EOS),
            }
        } else {
            let hidden = need("hidden_size", uint("hidden_size")?)?;
            let heads = need("num_attention_heads", uint("num_attention_heads")?)?;
            if heads == 0 || hidden % heads != 0 {
                return Err(Error::config(path, "num_attention_heads", format!("{heads} does not divide hidden_size {hidden}")));
            }
            let factor = float("partial_rotary_factor")?.unwrap_or(0.5);
            if !(0.0..=1.0).contains(&factor) {
                return Err(Error::config(path, "partial_rotary_factor", format!("expected a value in [0, 1], found {factor}")));
            }
            if get("qk_layernorm").and_then(Value::as_bool) == Some(true) {
                return Err(Error::config(path, "qk_layernorm", "qk_layernorm = true is not supported"));
            }
            if get("rope_scaling").is_some() {
                return Err(Error::config(path, "rope_scaling", "rope scaling is not supported"));
            }
            // HF: rotary_ndims = int(partial_rotary_factor * head_dim)
            let rotary_dim = (factor * (hidden / heads) as f64) as usize;
            Phi2Config {
                vocab_size: need("vocab_size", uint("vocab_size")?)?,
                tokenizer_size: CODEGEN_TOKENIZER_SIZE,
                hidden_size: hidden,
                intermediate_size: need("intermediate_size", uint("intermediate_size")?)?,
                num_layers: need("num_hidden_layers", uint("num_hidden_layers")?)?,
                num_heads: heads,
                num_kv_heads: uint("num_key_value_heads")?.unwrap_or(heads),
                rotary_dim,
                rope_theta: float("rope_theta")?.unwrap_or(10000.0) as f32,
                layer_norm_eps: float("layer_norm_eps")?.unwrap_or(1e-5),
                context_length: uint("max_position_embeddings")?.unwrap_or(2048),
                eos_token_id: match uint("eos_token_id")? {
                    Some(id) => Some(u32::try_from(id).map_err(|_| Error::config(path, "eos_token_id", "out of range"))?),
                    None => Some(PHI2_EOS),
                },
            }
        };
        let cfg = Phi2Config { tokenizer_size: cfg.tokenizer_size.min(cfg.vocab_size), ..cfg };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reads GGUF metadata written for llama.cpp's `phi2` architecture.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let path = g.path();
        match g.get_str("general.architecture")? {
            Some("phi2") => {}
            Some(other) => {
                return Err(Error::config(path, "general.architecture", format!("expected \"phi2\", found {other:?}")))
            }
            None => return Err(Error::config(path, "general.architecture", "missing")),
        }
        let uint = |key: &str| -> Result<usize> {
            let v = g.get_uint(key)?.ok_or_else(|| Error::config(path, key, "missing"))?;
            usize::try_from(v).map_err(|_| Error::config(path, key, format!("{v} is out of range")))
        };
        let hidden = uint("phi2.embedding_length")?;
        let heads = uint("phi2.attention.head_count")?;
        let kv_heads = match g.get_uint("phi2.attention.head_count_kv")? {
            Some(v) => usize::try_from(v).map_err(|_| Error::config(path, "phi2.attention.head_count_kv", "out of range"))?,
            None => heads,
        };
        let eps = g
            .get_f32("phi2.attention.layer_norm_epsilon")?
            .ok_or_else(|| Error::config(path, "phi2.attention.layer_norm_epsilon", "missing"))?;
        let theta = g.get_f32("phi2.rope.freq_base")?.unwrap_or(10000.0);
        // n_vocab is the row count of token_embd (llama.cpp requires it to equal the token list).
        let vocab_size = g
            .tensor_infos()
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .and_then(|t| t.shape.first().copied())
            .ok_or_else(|| Error::MissingTensor {
                path: path.to_path_buf(),
                name: "token_embd.weight".into(),
                looked_for: "token_embd.weight".into(),
            })?;
        // Padding rows are typed UNUSED (5) by llama.cpp's converter: the usable vocabulary ends
        // after the last token of another type.
        let tokenizer_size = match g.get_int_array("tokenizer.ggml.token_type")? {
            Some(types) => types.iter().rposition(|&t| t != 5).map_or(vocab_size, |i| i + 1),
            None => vocab_size.min(CODEGEN_TOKENIZER_SIZE),
        };
        let eos = g.get_uint("tokenizer.ggml.eos_token_id")?.map(|v| v as u32).or(Some(PHI2_EOS));
        let cfg = Phi2Config {
            vocab_size,
            tokenizer_size: tokenizer_size.min(vocab_size),
            hidden_size: hidden,
            intermediate_size: uint("phi2.feed_forward_length")?,
            num_layers: uint("phi2.block_count")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            rotary_dim: uint("phi2.rope.dimension_count")?,
            rope_theta: theta,
            layer_norm_eps: eps as f64,
            context_length: uint("phi2.context_length")?,
            eos_token_id: eos,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Rejects configs the engine cannot run, naming the offending key.
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, what: String| Err(Error::config(path, key, what));
        // Limits far above any Phi model; they keep a crafted config from asking for absurd memory.
        const MAX_DIM: usize = 1 << 20;
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("context_length", self.context_length),
        ] {
            if v == 0 || v > MAX_DIM {
                return bad(key, format!("expected 1..={MAX_DIM}, found {v}"));
            }
        }
        if self.num_layers > 4096 {
            return bad("num_layers", format!("{} layers is beyond any supported model", self.num_layers));
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return bad("num_heads", format!("{} does not divide hidden size {}", self.num_heads, self.hidden_size));
        }
        if self.num_kv_heads != self.num_heads {
            return bad(
                "num_kv_heads",
                format!("Phi-2 uses full multi-head attention; {} kv heads for {} heads is not supported", self.num_kv_heads, self.num_heads),
            );
        }
        if self.rotary_dim > self.head_dim() || !self.rotary_dim.is_multiple_of(2) {
            return bad("rotary_dim", format!("expected an even number <= head_dim {}, found {}", self.head_dim(), self.rotary_dim));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad("rope_theta", format!("expected a positive number, found {}", self.rope_theta));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return bad("layer_norm_eps", format!("expected a positive number, found {}", self.layer_norm_eps));
        }
        Ok(())
    }
}
