//! Broken models at the model level: every failure is a typed error naming the file and what is
//! wrong, never a panic. (Byte-level GGUF / safetensors corruption is covered by the readers'
//! unit tests, truncation at every byte included.)

mod common;

use std::path::{Path, PathBuf};

use common::fixture;
use phi2::{Error, Phi2};

/// A scratch copy of a fixture file or directory, unique per test.
fn scratch(name: &str, tag: &str) -> PathBuf {
    let dir = common::scratch_dir(&format!("malformed-{tag}"));
    let src = fixture(name);
    let dst = dir.join(name);
    if src.is_dir() {
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    } else {
        std::fs::copy(&src, &dst).unwrap();
    }
    dst
}

fn load_err(path: &Path) -> Error {
    match Phi2::load(path) {
        Ok(_) => panic!("{} loaded but should not have", path.display()),
        Err(e) => e,
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(p, v.to_string()).unwrap();
}

/// Replaces the first occurrence of `from` with `to` (same length) in a file's bytes.
fn patch(path: &Path, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut b = std::fs::read(path).unwrap();
    let at = b.windows(from.len()).position(|w| w == from).expect("pattern not found");
    b[at..at + to.len()].copy_from_slice(to);
    std::fs::write(path, b).unwrap();
}

fn assert_mentions(e: &Error, code: &str, parts: &[&str]) {
    let msg = e.to_string();
    assert_eq!(e.code(), code, "{msg}");
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should mention {p:?}");
    }
}

#[test]
fn config_json_problems_name_the_key() {
    let dir = scratch("tiny", "cfg");
    let cfg = dir.join("config.json");
    let cfg_s = cfg.display().to_string();

    std::fs::remove_file(&cfg).unwrap();
    assert_mentions(&load_err(&dir), "E_IO", &[&cfg_s]);

    std::fs::write(&cfg, "{ not json").unwrap();
    assert_mentions(&load_err(&dir), "E_BAD_CONFIG", &[&cfg_s, "not valid JSON"]);

    std::fs::write(&cfg, "[1, 2]").unwrap();
    assert_mentions(&load_err(&dir), "E_BAD_CONFIG", &["expected a JSON object"]);

    let fresh = scratch("tiny", "cfg2");
    for (key, value, expect) in [
        ("hidden_size", serde_json::Value::Null, "missing"),
        ("hidden_size", serde_json::json!("64"), "non-negative integer"),
        ("num_attention_heads", serde_json::json!(0), "num_attention_heads"),
        ("num_attention_heads", serde_json::json!(5), "does not divide"),
        ("model_type", serde_json::json!("llama"), "model_type"),
        ("hidden_act", serde_json::json!("relu"), "gelu_new"),
        ("layer_norm_eps", serde_json::json!(-1.0), "layer_norm_eps"),
        ("num_hidden_layers", serde_json::json!(1_000_000_000u64), "num_layers"),
        ("partial_rotary_factor", serde_json::json!(2.0), "partial_rotary_factor"),
        ("qk_layernorm", serde_json::json!(true), "qk_layernorm"),
    ] {
        std::fs::copy(fixture("tiny/config.json"), fresh.join("config.json")).unwrap();
        edit_config(&fresh, |o| {
            o.insert(key.into(), value.clone());
        });
        let e = load_err(&fresh);
        assert_mentions(&e, "E_BAD_CONFIG", &[expect, "config.json"]);
    }
}

#[test]
fn shapes_that_disagree_with_the_config_name_the_tensor() {
    let dir = scratch("tiny", "shape");
    edit_config(&dir, |o| {
        o.insert("intermediate_size".into(), serde_json::json!(128));
    });
    let e = load_err(&dir);
    assert_mentions(&e, "E_BAD_TENSOR", &["model.layers.0.mlp.fc1.weight", "expected shape [128, 64]", "[256, 64]"]);

    let dir = scratch("tiny", "vocab");
    edit_config(&dir, |o| {
        o.insert("vocab_size".into(), serde_json::json!(50000));
    });
    assert_mentions(&load_err(&dir), "E_BAD_TENSOR", &["model.embed_tokens.weight", "[50000, 64]"]);
}

#[test]
fn a_missing_tensor_is_named() {
    // The sharded set's index decides which names exist: drop one from it.
    let dir = scratch("tiny-bf16", "missing");
    let idx = dir.join("model.safetensors.index.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&idx).unwrap()).unwrap();
    v["weight_map"].as_object_mut().unwrap().remove("model.layers.1.self_attn.dense.bias");
    std::fs::write(&idx, v.to_string()).unwrap();
    assert_mentions(&load_err(&dir), "E_MISSING_TENSOR", &["model.layers.1.self_attn.dense.bias"]);

    let gguf = scratch("tiny-q4_0.gguf", "missing-gguf");
    patch(&gguf, b"blk.1.ffn_up.weight", b"blk.1.ffn_XX.weight");
    assert_mentions(&load_err(&gguf), "E_MISSING_TENSOR", &["blk.1.ffn_up.weight", "tiny-q4_0.gguf"]);
}

#[test]
fn gguf_metadata_problems_name_the_key() {
    let g = scratch("tiny-f32.gguf", "arch2");
    let mut b = std::fs::read(&g).unwrap();
    let key = b"general.architecture";
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // value type (u32 8 = string), length (u64 4), "phi2"
    b[at + 12..at + 16].copy_from_slice(b"llam");
    std::fs::write(&g, b).unwrap();
    assert_mentions(&load_err(&g), "E_BAD_CONFIG", &["general.architecture", "expected \"phi2\"", "llam"]);

    let g = scratch("tiny-f32.gguf", "width");
    let mut b = std::fs::read(&g).unwrap();
    let key = b"phi2.feed_forward_length";
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let ty = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    assert_eq!(ty, 4, "fixture writes feed_forward_length as u32");
    b[at + 4..at + 8].copy_from_slice(&300u32.to_le_bytes());
    std::fs::write(&g, b).unwrap();
    assert_mentions(&load_err(&g), "E_BAD_TENSOR", &["blk.0.ffn_up.weight", "[300, 64]"]);
}

#[test]
fn truncated_and_garbage_files_are_malformed_errors() {
    for name in ["kq-q4_K.gguf", "tiny-q8_0.gguf", "tiny-f16/model.safetensors"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let dir = scratch("tiny", &format!("trunc-{}", name.replace('/', "_")));
        let target = if name.ends_with(".gguf") { dir.with_file_name("t.gguf") } else { dir.join("model.safetensors") };
        for cut in [0, 3, 16, 100, 4096, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&target, &bytes[..cut]).unwrap();
            let e = load_err(&target);
            assert!(matches!(e.code(), "E_MALFORMED_FILE" | "E_BAD_TENSOR"), "cut {cut}: {e}");
            assert!(e.to_string().contains(&target.display().to_string()), "cut {cut}: {e}");
        }
    }
    let garbage = common::scratch_dir("malformed-garbage").join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model file at all").unwrap();
    assert_mentions(&load_err(&garbage), "E_MALFORMED_FILE", &["magic"]);
    let e = load_err(Path::new("/nonexistent/model.gguf"));
    assert_mentions(&e, "E_IO", &["/nonexistent/model.gguf"]);
}
