//! `convertModel`: the engine's HF safetensors → GGUF converter (`phi2::convert`) for the SDK's
//! `convertModel()` and `phi2 convert`. It runs on its own native thread (a conversion takes
//! minutes on a real model; libuv's small pool stays free), reports progress through a
//! threadsafe function and stops at the next chunk when its `NativeCancelToken` is cancelled
//! (`E_CANCELLED`; nothing is left at `out`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use phi2::convert::{convert, ConvertOptions, ConvertProgress, FileType};

use super::{coded, engine_err, flag_of, guarded, NativeCancelToken};

#[napi(object)]
pub struct NativeConvertOptions {
    /// F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K_M Q5_K_M Q6_K (case-insensitive).
    pub file_type: String,
    /// Quantization threads; 0 / absent = one per core.
    pub threads: Option<u32>,
    /// Tokenizer used when there is no tokenizer.json beside the weights (a tokenizer.json, or a
    /// directory with one or with GPT-2's encoder.json + vocab.bpe).
    pub tokenizer: Option<String>,
    /// `general.name` (default: the source directory's name).
    pub name: Option<String>,
}

/// Where a conversion stands (sent at most once per percent of the output written).
#[napi(object)]
pub struct NativeConvertProgress {
    pub tensor: String,
    pub tensor_index: u32,
    pub tensor_count: u32,
    pub bytes_written: f64,
    pub bytes_total: f64,
}

#[napi(object)]
pub struct NativeConvertedTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u32>,
    pub fallback: bool,
}

#[napi(object)]
pub struct NativeConvertReport {
    pub out: String,
    pub file_type: String,
    pub bytes: f64,
    pub tensors: Vec<NativeConvertedTensor>,
    pub fallbacks: u32,
    pub tokenizer: String,
}

/// The file types `convertModel` writes, as llama-quantize spells them.
#[napi]
pub fn convert_file_types() -> Vec<String> {
    FileType::ALL.iter().map(|t| t.name().to_string()).collect()
}

/// Converts the HF safetensors model at `src` (a directory with config.json, a .safetensors file or
/// a `*.index.json`) into a GGUF file at `out`. `onProgress(err, p)` is called as chunks are written.
#[napi(ts_return_type = "Promise<NativeConvertReport>")]
pub fn convert_model<'env>(
    env: &'env Env,
    src: String,
    out: String,
    options: NativeConvertOptions,
    on_progress: Option<ThreadsafeFunction<NativeConvertProgress>>,
    cancel: Option<&NativeCancelToken>,
) -> Result<Object<'env>> {
    let names: Vec<&str> = FileType::ALL.iter().map(|t| t.name()).collect();
    let ftype = FileType::from_name(&options.file_type).ok_or_else(|| {
        coded("E_INVALID_ARGUMENT", format!("unknown file type {:?}: expected one of {}", options.file_type, names.join(", ")))
    })?;
    let on_progress = on_progress.map(Arc::new);
    let last = Arc::new(AtomicU64::new(u64::MAX));
    let progress: Option<Box<phi2::convert::ProgressFn>> = on_progress.map(|f| {
        Box::new(move |p: &ConvertProgress| {
            let pct = p.bytes_written * 100 / p.bytes_total.max(1);
            if last.swap(pct, Ordering::Relaxed) == pct {
                return;
            }
            let v = NativeConvertProgress {
                tensor: p.tensor.clone(),
                tensor_index: p.tensor_index as u32,
                tensor_count: p.tensor_count as u32,
                bytes_written: p.bytes_written as f64,
                bytes_total: p.bytes_total as f64,
            };
            f.call(Ok(v), ThreadsafeFunctionCallMode::NonBlocking);
        }) as Box<phi2::convert::ProgressFn>
    });
    let opts = ConvertOptions {
        ftype,
        threads: options.threads.unwrap_or(0) as usize,
        tokenizer: options.tokenizer.map(PathBuf::from),
        name: options.name,
        progress,
        cancel: Some(flag_of(cancel)),
    };
    let (src, out) = (PathBuf::from(src), PathBuf::from(out));
    let (deferred, promise) = env.create_deferred::<NativeConvertReport, _>()?;
    std::thread::Builder::new()
        .name("phi2-convert".into())
        .spawn(move || {
            let r = guarded("converting the model", || {
                let r = convert(&src, &out, &opts).map_err(engine_err)?;
                Ok(NativeConvertReport {
                    out: r.out.to_string_lossy().into_owned(),
                    file_type: r.ftype.name().into(),
                    bytes: r.bytes as f64,
                    fallbacks: r.fallbacks as u32,
                    tokenizer: r.tokenizer.to_string_lossy().into_owned(),
                    tensors: r
                        .tensors
                        .into_iter()
                        .map(|t| NativeConvertedTensor {
                            name: t.name,
                            dtype: t.dtype.name().into(),
                            shape: t.shape.into_iter().map(|d| d as u32).collect(),
                            fallback: t.fallback,
                        })
                        .collect(),
                })
            });
            // Drop the progress callback (and its threadsafe function) before settling.
            drop(opts);
            match r {
                Ok(v) => deferred.resolve(move |_| Ok(v)),
                Err(e) => deferred.reject(e),
            }
        })
        .map_err(|e| coded("E_INTERNAL", format!("cannot start a conversion thread: {e}")))?;
    Ok(promise)
}
