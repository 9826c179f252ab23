//! Three malformed-file classes, at the model level (files derived from the fixtures): GGUF tensors
//! whose data ranges overlap, safetensors entries whose `data_offsets` overlap, and a GGUF whose
//! token list is shorter than the embedding (the model could produce ids the tokenizer cannot
//! decode). Each is refused with a typed error naming the tensors or keys, by `Phi2::load` and by
//! the streamed loader.

mod common;

use std::path::{Path, PathBuf};

use common::fixture;
use phi2::gguf::{GgufFile, MetaValue};
use phi2::gguf_write::{GgufWriter, TensorPlan};
use phi2::{Phi2, TensorSource};

fn scratch(tag: &str) -> PathBuf {
    common::scratch_dir(&format!("malformed-overlap-{tag}"))
}

fn assert_refused(path: &Path, needles: &[&str]) {
    let e = Phi2::load(path).expect_err("loaded a malformed file");
    assert_eq!(e.code(), "E_MALFORMED_FILE", "{e}");
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "expected `{n}` in: {msg}");
    }
    if path.extension().is_some_and(|e| e == "gguf") {
        let e = Phi2::load_gguf_bytes("streamed.gguf", std::fs::read(path).unwrap()).expect_err("streamed load accepted it");
        assert_eq!(e.code(), "E_MALFORMED_FILE", "{e}");
        for n in needles.iter().filter(|n| !n.ends_with(".gguf")) {
            assert!(e.to_string().contains(n), "streamed: expected `{n}` in: {e}");
        }
    }
}

/// Byte position of the u64 data offset in tensor `name`'s info.
fn offset_field(bytes: &[u8], name: &str, n_dims: usize) -> usize {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    let at = bytes.windows(pat.len()).position(|w| w == pat.as_slice()).expect("tensor info not found");
    at + pat.len() + 4 + 8 * n_dims + 4
}

#[test]
fn gguf_tensors_with_overlapping_data_are_refused() {
    let dir = scratch("gguf");
    let src = fixture("tiny-f32.gguf");
    let g = GgufFile::open(&src).unwrap();
    let rel = |n: &str| (g.tensor_info(n).unwrap().offset - g.data_offset()) as u64;
    let (w, b) = (rel("blk.0.attn_norm.weight"), rel("blk.0.attn_norm.bias"));
    let mut bytes = std::fs::read(&src).unwrap();
    drop(g);
    // The norm bias re-uses the norm weight's bytes (same size, both in range, aligned).
    let at = offset_field(&bytes, "blk.0.attn_norm.bias", 1);
    assert_eq!(u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()), b);
    bytes[at..at + 8].copy_from_slice(&w.to_le_bytes());
    let bad = dir.join("overlap.gguf");
    std::fs::write(&bad, &bytes).unwrap();
    assert_refused(&bad, &["overlap.gguf", "`blk.0.attn_norm.weight`", "`blk.0.attn_norm.bias`", "overlap"]);
    // Starting half-way into another tensor's data is refused too.
    bytes[at..at + 8].copy_from_slice(&(w + 32).to_le_bytes());
    std::fs::write(&bad, &bytes).unwrap();
    assert_refused(&bad, &["`blk.0.attn_norm.weight`", "`blk.0.attn_norm.bias`", "overlap"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn safetensors_entries_with_overlapping_data_offsets_are_refused() {
    let dir = scratch("st");
    let model = dir.join("tiny");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(fixture("tiny/config.json"), model.join("config.json")).unwrap();
    let bytes = std::fs::read(fixture("tiny/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let weight = header["model.layers.1.input_layernorm.weight"]["data_offsets"].clone();
    header["model.layers.1.input_layernorm.bias"]["data_offsets"] = weight;
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(model.join("model.safetensors"), &out).unwrap();
    assert_refused(&model, &["model.safetensors", "`model.layers.1.input_layernorm.bias`", "`model.layers.1.input_layernorm.weight`", "overlap"]);
    // convert refuses the same source (it reads through the same validating reader).
    let o = phi2::convert::ConvertOptions { tokenizer: phi2_fixtures::default_encoder_dir(), ..Default::default() };
    let e = phi2::convert::convert(&model, &dir.join("x.gguf"), &o).unwrap_err();
    assert!(e.to_string().contains("overlap"), "{e}");
    assert!(!dir.join("x.gguf").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rewrites a GGUF with `edit` applied to its metadata (tensors unchanged).
fn rewrite(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<(String, MetaValue)>)) {
    let g = GgufFile::open(src).unwrap();
    let mut meta: Vec<(String, MetaValue)> = g.metadata().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    edit(&mut meta);
    let plans: Vec<TensorPlan> = g
        .tensor_infos()
        .iter()
        .map(|t| TensorPlan { name: t.name.clone(), dtype: t.dtype.unwrap(), shape: t.shape.clone() })
        .collect();
    let mut w = GgufWriter::new(Vec::new(), dst, &meta, &plans).unwrap();
    for p in &plans {
        w.write(g.tensor(&p.name).unwrap().unwrap().data).unwrap();
    }
    std::fs::write(dst, w.finish().unwrap()).unwrap();
}

#[test]
fn gguf_with_fewer_tokens_than_embedding_rows_is_refused() {
    let dir = scratch("vocab");
    let src = fixture("tiny-q8_0.gguf");
    // Unchanged, the rewrite loads (the writer is not what is being refused).
    let same = dir.join("same.gguf");
    rewrite(&src, &same, |_| {});
    Phi2::load(&same).unwrap();

    // Tokens and types cut to the 50295 real tokens: embedding rows 50295..51200 have no token.
    let cut = dir.join("cut.gguf");
    rewrite(&src, &cut, |meta| {
        for (k, v) in meta.iter_mut() {
            if k == "tokenizer.ggml.tokens" || k == "tokenizer.ggml.token_type" {
                if let MetaValue::Array(a) = v {
                    a.truncate(50295);
                }
            }
        }
    });
    assert_refused(&cut, &["`token_embd.weight`", "51200 vocabulary rows", "`tokenizer.ggml.tokens`", "only 50295 tokens"]);

    // The token types disagree with the tokens (the usable vocabulary is derived from the types).
    let types = dir.join("types.gguf");
    rewrite(&src, &types, |meta| {
        for (k, v) in meta.iter_mut() {
            if k == "tokenizer.ggml.token_type" {
                if let MetaValue::Array(a) = v {
                    a.truncate(100);
                }
            }
        }
    });
    assert_refused(&types, &["`tokenizer.ggml.token_type` has 100 entries", "`tokenizer.ggml.tokens` has 51200"]);
    let _ = std::fs::remove_dir_all(&dir);
}
