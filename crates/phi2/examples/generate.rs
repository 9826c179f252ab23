//! The engine's command-line contract, used by tests and external checks:
//!
//! ```text
//! generate --model PATH --tokens 464,2068,7586 --max-new-tokens N [--temperature T] [--top-k K]
//!          [--top-p P] [--min-p P] [--repetition-penalty R] [--seed S] [--logprobs-out FILE]
//!          [--speculative] [--speculative-ngram N] [--speculative-max-draft N] [--kv-cache f32|f16]
//!          [--stats]
//! ```
//! Prints `{"tokens":[…]}` on stdout (with `--stats`, also decode time and the speculative
//! decoding counters: `"decode_ms"`, `"passes"`, `"drafted"`, `"accepted"`). `--logprobs-out` writes little-endian f32 log-softmax rows
//! (vocab floats each) for every position of prompt + generated tokens. Greedy unless a
//! temperature > 0 is given. Errors: a message on stderr and exit code 1 (2 for bad usage).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use phi2::generate::Speculative;
use phi2::{GenerateOptions, KvType, Phi2, SamplingParams, Session};

struct Args {
    model: PathBuf,
    tokens: Vec<u32>,
    max_new_tokens: usize,
    sampling: SamplingParams,
    logprobs_out: Option<PathBuf>,
    speculative: Option<Speculative>,
    kv: KvType,
    stats: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut model = None;
    let mut tokens = None;
    let mut max_new_tokens = None;
    let mut sampling = SamplingParams::default();
    let mut logprobs_out = None;
    let mut speculative: Option<Speculative> = None;
    let mut stats = false;
    let mut kv = KvType::F32;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{flag}: cannot parse {v:?}"))
        }
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--tokens" => {
                let v = value()?;
                tokens = Some(
                    v.split(',').map(|s| num::<u32>("--tokens", s.trim().to_string())).collect::<Result<Vec<_>, _>>()?,
                )
            }
            "--max-new-tokens" => max_new_tokens = Some(num("--max-new-tokens", value()?)?),
            "--temperature" => {
                sampling.temperature = num("--temperature", value()?)?;
                sampling.do_sample = sampling.temperature > 0.0;
            }
            "--top-k" => sampling.top_k = num("--top-k", value()?)?,
            "--top-p" => sampling.top_p = num("--top-p", value()?)?,
            "--min-p" => sampling.min_p = num("--min-p", value()?)?,
            "--repetition-penalty" => sampling.repetition_penalty = num("--repetition-penalty", value()?)?,
            "--seed" => sampling.seed = num("--seed", value()?)?,
            "--logprobs-out" => logprobs_out = Some(PathBuf::from(value()?)),
            "--speculative" => {
                speculative.get_or_insert_with(Speculative::default);
            }
            "--speculative-ngram" => {
                let n = num("--speculative-ngram", value()?)?;
                speculative.get_or_insert_with(Speculative::default).ngram = n;
            }
            "--speculative-max-draft" => {
                let n = num("--speculative-max-draft", value()?)?;
                speculative.get_or_insert_with(Speculative::default).max_draft = n;
            }
            "--kv-cache" => kv = KvType::parse(&value()?).map_err(|e| e.to_string())?,
            "--stats" => stats = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        model: model.ok_or("--model is required")?,
        tokens: tokens.ok_or("--tokens is required")?,
        max_new_tokens: max_new_tokens.ok_or("--max-new-tokens is required")?,
        sampling,
        logprobs_out,
        speculative,
        kv,
        stats,
    })
}

const USAGE: &str = "usage: generate --model PATH --tokens ID,ID,... --max-new-tokens N [--temperature T] \
[--top-k K] [--top-p P] [--min-p P] [--repetition-penalty R] [--seed S] [--logprobs-out FILE] \
[--speculative] [--speculative-ngram N] [--speculative-max-draft N] [--kv-cache f32|f16] [--stats]";

fn run(args: Args) -> Result<(), String> {
    let model = std::sync::Arc::new(Phi2::load(&args.model).map_err(|e| e.to_string())?.with_kv_type(args.kv));
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: args.sampling,
        stop_on_eos: true,
        speculative: args.speculative,
    };
    let mut session = Session::new(model.clone());
    let cancel = AtomicBool::new(false);
    // Decode time: from the first token (the prompt's forward pass) to the last.
    let mut first: Option<std::time::Instant> = None;
    let out = session
        .generate(&args.tokens, &opts, &cancel, |_| {
            first.get_or_insert_with(std::time::Instant::now);
            true
        })
        .map_err(|e| e.to_string())?;
    let decode_ms = first.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
    if let Some(path) = &args.logprobs_out {
        let all: Vec<u32> = args.tokens.iter().chain(&out.tokens).copied().collect();
        let rows = model.logprobs(&all).map_err(|e| e.to_string())?;
        let bytes: Vec<u8> = rows.iter().flat_map(|f| f.to_le_bytes()).collect();
        std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let ids: Vec<String> = out.tokens.iter().map(u32::to_string).collect();
    let mut stdout = std::io::stdout().lock();
    let extra = if args.stats {
        let s = out.speculation;
        format!(
            ",\"decode_ms\":{decode_ms:.1},\"passes\":{},\"drafted\":{},\"accepted\":{}",
            s.passes, s.drafted, s.accepted
        )
    } else {
        String::new()
    };
    writeln!(stdout, "{{\"tokens\":[{}]{extra}}}", ids.join(",")).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // No input may end in a panic message: report any internal panic as an error instead.
    std::panic::set_hook(Box::new(|info| eprintln!("error: internal error: {info}")));
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match std::panic::catch_unwind(|| run(args)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(_) => ExitCode::from(1),
    }
}
