//! The engine against HF transformers `PhiForCausalLM` (f32) goldens, and every file format of
//! the same weights against each other.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::*;
use phi2::{GenerateOptions, Phi2, Session};

const MODELS: [&str; 3] = ["tiny", "odd", "kq"];

fn logprobs_after(model: &Phi2, g: &Golden) -> Vec<f32> {
    let all: Vec<u32> = g.prompt.iter().chain(&g.tokens).copied().collect();
    model.logprobs(&all).unwrap()
}

fn greedy(model: &Arc<Phi2>, prompt: &[u32], n: usize) -> Vec<u32> {
    let opts = GenerateOptions { max_new_tokens: n, ..Default::default() };
    Session::new(model.clone()).generate(prompt, &opts, &AtomicBool::new(false), |_| true).unwrap().tokens
}

#[test]
fn golden_fixture_bytes_are_the_ones_hf_saw() {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap()).unwrap();
    for m in MODELS {
        let g = hf_golden(m);
        let file = g.json["fixture"].as_str().unwrap();
        let entry = &manifest["files"][file];
        let sha = entry["sha256"].as_str().or(entry.as_str()).unwrap_or_else(|| panic!("{file} not in manifest"));
        assert_eq!(sha, g.json["fixture_sha256"].as_str().unwrap(), "{file}: regenerate goldens (scripts/golden_hf.py)");
    }
}

#[test]
fn f32_safetensors_matches_hf_transformers_within_1e4() {
    for m in MODELS {
        let g = hf_golden(m);
        let model = Arc::new(Phi2::load(&fixture(m)).unwrap());
        let d = max_abs_diff(&logprobs_after(&model, &g), &g.logprobs);
        eprintln!("{m}: f32 safetensors vs HF max |Δ logprob| = {d:.2e}");
        assert!(d <= 1e-4, "{m}: max |Δ logprob| {d} > 1e-4");
        assert_greedy_agrees(&greedy(&model, &g.prompt, g.tokens.len()), &g.tokens, &g.margins, 0.01, m);
    }
}

#[test]
fn legacy_phi_msft_layout_matches_hf_transformers() {
    for m in MODELS {
        let g = hf_golden(m);
        let model = Phi2::load(&fixture(&format!("{m}-legacy"))).unwrap();
        let d = max_abs_diff(&logprobs_after(&model, &g), &g.logprobs);
        assert!(d <= 1e-4, "{m}-legacy: max |Δ logprob| {d} > 1e-4");
    }
}

#[test]
fn f32_gguf_fused_and_split_match_safetensors_within_1e5() {
    for m in MODELS {
        let g = hf_golden(m);
        let reference = logprobs_after(&Phi2::load(&fixture(m)).unwrap(), &g);
        let mut files = vec![format!("{m}-f32.gguf")];
        if fixture(&format!("{m}-f32-split.gguf")).exists() {
            files.push(format!("{m}-f32-split.gguf"));
        }
        for f in files {
            let d = max_abs_diff(&logprobs_after(&Phi2::load(&fixture(&f)).unwrap(), &g), &reference);
            assert!(d <= 1e-5, "{f}: max |Δ logprob| vs safetensors {d} > 1e-5");
        }
    }
}

#[test]
fn half_precision_files_track_hf_transformers() {
    // The fixtures' weights are exactly representable in bf16 and f16, so these files hold the
    // same values as the f32 ones; the only difference is that activations are rounded to the
    // weight dtype before each matmul (as llama.cpp does). Bounds: f16 keeps 11 bits, bf16 8.
    for m in MODELS {
        let g = hf_golden(m);
        for (file, bound) in [
            (format!("{m}-f16"), 0.02f32),
            (format!("{m}-f16.gguf"), 0.02),
            (format!("{m}-bf16"), 0.15),
            (format!("{m}-bf16.gguf"), 0.15),
        ] {
            let model = Phi2::load(&fixture(&file)).unwrap();
            let d = max_abs_diff(&logprobs_after(&model, &g), &g.logprobs);
            eprintln!("{file}: vs HF f32 max |Δ logprob| = {d:.2e}");
            assert!(d <= bound, "{file}: max |Δ logprob| {d} > {bound}");
            assert!(d > 0.0, "{file}: identical to f32 means the half-precision path did not run");
        }
        // The sharded bf16 set and the bf16 GGUF hold the same weights: same numbers.
        let a = logprobs_after(&Phi2::load(&fixture(&format!("{m}-bf16"))).unwrap(), &g);
        let b = logprobs_after(&Phi2::load(&fixture(&format!("{m}-bf16.gguf"))).unwrap(), &g);
        assert!(max_abs_diff(&a, &b) <= 1e-5, "{m}: bf16 safetensors vs bf16 gguf");
    }
}

#[test]
fn a_single_safetensors_file_path_loads_with_its_config_beside_it() {
    let g = hf_golden("tiny");
    let model = Phi2::load(&fixture("tiny/model.safetensors")).unwrap();
    assert!(max_abs_diff(&logprobs_after(&model, &g), &g.logprobs) <= 1e-4);
}
