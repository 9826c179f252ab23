//! From named tensors in any supported file to the one set of Phi-2 weights.
//!
//! One name table per layout (HF `PhiForCausalLM`, legacy `phi-msft`, GGUF `phi2`) maps the
//! file's names onto [`Phi2Weights`]; shapes are checked against [`Phi2Config`] here, once, so the
//! model code never sees a tensor it cannot use. Matrices of a type our own kernels take
//! ([`crate::kernels`]: Q4_0, Q8_0, Q4_K, Q5_K, Q6_K, F16, BF16) stay in their file layout and are
//! used in place from the memory-mapped file ([`Matrix::Packed`]); other quantized types become
//! candle `QMatMul`s, F32 a candle tensor. Embeddings are read a row at a time from the file.

use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, QMatMul};
use candle_core::{Device, Module, Tensor};

use crate::config::Phi2Config;
use crate::dtype::{DType, TensorData, TensorSource};
use crate::error::{Error, Result};
use crate::kernels::{self, Activations, Family, WeightRef};
use crate::storage::Bytes;

/// Which naming scheme a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// HF transformers `PhiForCausalLM` (`model.layers.N.self_attn.q_proj`, ...).
    Hf,
    /// Early microsoft/phi-2 revisions (`transformer.h.N.mixer.Wqkv`, ...).
    Legacy,
    /// llama.cpp's `phi2` GGUF (`blk.N.attn_qkv` or `blk.N.attn_q/k/v`, ...).
    Gguf,
}

/// Where the q, k and v projections live in a file.
enum QkvNames {
    Fused(String),
    Split([String; 3]),
}

/// A layer's tensor-name prefixes (`.weight` / `.bias` are appended).
struct LayerNames {
    norm: String,
    qkv: QkvNames,
    dense: String,
    fc1: String,
    fc2: String,
}

/// The model-level prefixes: embedding (full tensor name), final norm, lm_head.
struct ModelNames {
    embed: &'static str,
    final_norm: &'static str,
    lm_head: &'static str,
}

impl Layout {
    fn model_names(self) -> ModelNames {
        match self {
            Layout::Hf => ModelNames { embed: "model.embed_tokens.weight", final_norm: "model.final_layernorm", lm_head: "lm_head" },
            Layout::Legacy => ModelNames { embed: "transformer.embd.wte.weight", final_norm: "lm_head.ln", lm_head: "lm_head.linear" },
            Layout::Gguf => ModelNames { embed: "token_embd.weight", final_norm: "output_norm", lm_head: "output" },
        }
    }

    fn layer_names(self, i: usize, src: &dyn TensorSource) -> LayerNames {
        match self {
            Layout::Hf => {
                let p = format!("model.layers.{i}");
                LayerNames {
                    norm: format!("{p}.input_layernorm"),
                    qkv: QkvNames::Split(["q_proj", "k_proj", "v_proj"].map(|n| format!("{p}.self_attn.{n}"))),
                    dense: format!("{p}.self_attn.dense"),
                    fc1: format!("{p}.mlp.fc1"),
                    fc2: format!("{p}.mlp.fc2"),
                }
            }
            Layout::Legacy => {
                let p = format!("transformer.h.{i}");
                LayerNames {
                    norm: format!("{p}.ln"),
                    qkv: QkvNames::Fused(format!("{p}.mixer.Wqkv")),
                    dense: format!("{p}.mixer.out_proj"),
                    fc1: format!("{p}.mlp.fc1"),
                    fc2: format!("{p}.mlp.fc2"),
                }
            }
            Layout::Gguf => {
                let p = format!("blk.{i}");
                let fused = format!("{p}.attn_qkv");
                // Both forms exist in published files: fused attn_qkv (llama.cpp's converter for
                // phi2) and split attn_q/k/v (other converters).
                let qkv = if src.tensor_names().iter().any(|n| *n == format!("{fused}.weight")) {
                    QkvNames::Fused(fused)
                } else {
                    QkvNames::Split(["attn_q", "attn_k", "attn_v"].map(|n| format!("{p}.{n}")))
                };
                LayerNames {
                    norm: format!("{p}.attn_norm"),
                    qkv,
                    dense: format!("{p}.attn_output"),
                    fc1: format!("{p}.ffn_up"),
                    fc2: format!("{p}.ffn_down"),
                }
            }
        }
    }

    /// Every tensor name [`Phi2Weights::load`] takes from `src` for `cfg`, in the order it takes
    /// them (so a source can check names and dtypes, or hold only these, before any data).
    pub fn required_tensors(self, cfg: &Phi2Config, src: &dyn TensorSource) -> Vec<String> {
        let m = self.model_names();
        let wb = |p: &str| [format!("{p}.weight"), format!("{p}.bias")];
        let mut names = vec![m.embed.to_string()];
        for i in 0..cfg.num_layers {
            let n = self.layer_names(i, src);
            names.extend(wb(&n.norm));
            match &n.qkv {
                QkvNames::Fused(p) => names.extend(wb(p)),
                QkvNames::Split(parts) => {
                    names.extend(parts.iter().map(|p| format!("{p}.weight")));
                    names.extend(parts.iter().map(|p| format!("{p}.bias")));
                }
            }
            for p in [&n.dense, &n.fc1, &n.fc2] {
                names.extend(wb(p));
            }
        }
        names.extend(wb(m.final_norm));
        names.extend(wb(m.lm_head));
        names
    }

    /// Guesses a safetensors file's layout from the embedding's name.
    pub fn detect(src: &dyn TensorSource) -> Result<Layout> {
        let names = src.tensor_names();
        for layout in [Layout::Hf, Layout::Legacy, Layout::Gguf] {
            if names.contains(&layout.model_names().embed) {
                return Ok(layout);
            }
        }
        Err(Error::MissingTensor {
            path: src.path().to_path_buf(),
            name: "token embedding".into(),
            looked_for: "model.embed_tokens.weight (HF), transformer.embd.wte.weight (phi-msft), token_embd.weight (GGUF)".into(),
        })
    }
}

/// A weight matrix `[out, in]`.
#[derive(Debug, Clone)]
pub enum Matrix {
    /// In its file layout, for our own kernels (Q4_0, Q8_0, Q4_K, Q5_K, Q6_K, F16, BF16).
    Packed(Packed),
    /// A float tensor in its file dtype (F32; F16/BF16 when built by hand); `[out, in]`.
    Dense(Tensor),
    /// Other ggml quantized types (Q4_1, Q5_0, Q5_1) through candle; `[out, in]`, kept quantized.
    Quant(QMatMul),
}

/// Bytes of one tensor: a range of a memory-mapped file (used in place: no copy, and the page
/// cache holds the only copy), or an owned buffer (streamed loads, fused q/k/v).
#[derive(Clone)]
pub enum WeightBytes {
    Mapped { file: Arc<Bytes>, offset: usize, len: usize },
    Owned(Arc<Vec<u8>>),
}

impl WeightBytes {
    /// `data` handed out by `src`: in place when it lies in a mapped file, else moved or copied.
    fn from_source(src: &dyn TensorSource, data: std::borrow::Cow<'_, [u8]>) -> WeightBytes {
        if let Some((file, offset)) = src.backing(&data) {
            return WeightBytes::Mapped { file, offset, len: data.len() };
        }
        WeightBytes::Owned(Arc::new(data.into_owned()))
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            WeightBytes::Mapped { file, offset, len } => &file[*offset..*offset + *len],
            WeightBytes::Owned(v) => v,
        }
    }

    /// Whether the bytes are used in place from a memory-mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self, WeightBytes::Mapped { .. })
    }
}

impl std::fmt::Debug for WeightBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_mapped() { "mapped" } else { "owned" };
        write!(f, "WeightBytes({kind}, {} bytes)", self.as_slice().len())
    }
}

/// A `[rows, cols]` matrix in its file layout, for [`kernels::matmul`].
#[derive(Debug, Clone)]
pub struct Packed {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: WeightBytes,
    /// [`WeightRef::finite_scales`], found at load where a kernel uses it (the wasm builds'
    /// Q4_0 and Q8_0 products).
    finite_scales: bool,
}

impl Packed {
    /// `None` unless the kernels take this dtype and shape (the caller then uses candle).
    fn new(dtype: DType, rows: usize, cols: usize, bytes: WeightBytes) -> Option<Packed> {
        WeightRef::new(dtype, rows, cols, bytes.as_slice())?;
        let finite_scales = cfg!(target_arch = "wasm32") && kernels::scales_finite(dtype, bytes.as_slice());
        Some(Packed { dtype, rows, cols, bytes, finite_scales })
    }

    pub fn weight_ref(&self) -> WeightRef<'_> {
        WeightRef { dtype: self.dtype, rows: self.rows, cols: self.cols, data: self.bytes.as_slice(), finite_scales: self.finite_scales }
    }

    /// `x · Wᵀ + bias` (then `gelu_new` when `gelu`) for f32 `x` `[.., cols]` → `[.., rows]`.
    pub fn forward(&self, x: &Tensor, bias: &Tensor, gelu: bool) -> candle_core::Result<Tensor> {
        let mut ys = packed_forward_many(&[(self, bias, gelu)], x).expect("Packed::new checked the dtype")?;
        Ok(ys.pop().expect("one output"))
    }
}

/// `x · Wᵢᵀ + biasᵢ` (then `gelu_new` where asked) for several packed weights of the same input
/// width and activation family: the activations are prepared once, and the products, their
/// biases and GELUs are split over the pool together ([`kernels::matmul_many`]). `None` when the
/// weights do not qualify.
pub fn packed_forward_many(parts: &[(&Packed, &Tensor, bool)], x: &Tensor) -> Option<candle_core::Result<Vec<Tensor>>> {
    let (first, ..) = parts.first()?;
    let family = Family::of(first.dtype)?;
    if parts.len() > 8 || parts.iter().any(|(p, ..)| p.cols != first.cols || Family::of(p.dtype) != Some(family)) {
        return None;
    }
    Some((|| {
        let dims = x.dims().to_vec();
        let cols = *dims.last().unwrap_or(&0);
        if cols != first.cols || x.dtype() != candle_core::DType::F32 {
            candle_core::bail!("packed matmul: input {:?} {:?}, weight columns {}", dims, x.dtype(), first.cols);
        }
        if let Some((p, bias, _)) = parts.iter().find(|(p, bias, _)| bias.elem_count() != p.rows) {
            candle_core::bail!("packed matmul: bias of {} for {} rows", bias.elem_count(), p.rows);
        }
        let tokens = x.elem_count() / cols;
        // Not zeroed: `matmul_many` writes every output (they were ~2% of a 128-token prompt's
        // samples as `memset`, on the calling thread while the others waited).
        let mut outs: Vec<Vec<f32>> = parts.iter().map(|(p, ..)| Vec::with_capacity(tokens * p.rows)).collect();
        let biases: Vec<&Tensor> = parts.iter().map(|(_, b, _)| *b).collect();
        with_f32(x, |xv| {
            with_f32_each(&biases, &mut |bs| {
                SCRATCH.with(|a| {
                    let mut a = a.borrow_mut();
                    a.prepare(family, xv, tokens, cols);
                    let mut products: Vec<kernels::Product> = parts
                        .iter()
                        .zip(outs.iter_mut())
                        .zip(bs)
                        .map(|(((p, _, gelu), o), b)| kernels::Product { w: p.weight_ref(), out: &mut o.spare_capacity_mut()[..tokens * p.rows], bias: Some(b), gelu: *gelu })
                        .collect();
                    kernels::matmul_many(&mut products, &a, kernels::pool::threads());
                    for ((p, ..), o) in parts.iter().zip(outs.iter_mut()) {
                        // SAFETY: `matmul_many` wrote all `tokens · rows` outputs (its contract).
                        unsafe { o.set_len(tokens * p.rows) };
                    }
                })
            })
        })??;
        parts
            .iter()
            .zip(outs)
            .map(|((p, ..), out)| {
                let mut shape = dims.clone();
                *shape.last_mut().expect("checked: x has a last dim") = p.rows;
                Tensor::from_vec(out, shape, x.device())
            })
            .collect()
    })())
}

/// [`with_f32`] for several tensors at once (at most 8): `f` gets their values in order.
fn with_f32_each<R>(ts: &[&Tensor], f: &mut dyn FnMut(&[&[f32]]) -> R) -> candle_core::Result<R> {
    fn go<R>(ts: &[&Tensor], got: &[&[f32]], f: &mut dyn FnMut(&[&[f32]]) -> R) -> candle_core::Result<R> {
        let Some((first, rest)) = ts.split_first() else { return Ok(f(got)) };
        with_f32(first, |v| {
            let mut all: [&[f32]; 8] = [&[]; 8];
            all[..got.len()].copy_from_slice(got);
            all[got.len()] = v;
            go(rest, &all[..=got.len()], f)
        })?
    }
    assert!(ts.len() <= 8, "with_f32_each: {} tensors", ts.len());
    go(ts, &[], f)
}

thread_local! {
    /// Activation buffers reused by every product on this thread (they only grow).
    static SCRATCH: std::cell::RefCell<Activations> = std::cell::RefCell::new(Activations::default());
}

/// Runs `f` on the values of an f32 CPU tensor: in place when they are contiguous (no copy),
/// else on a contiguous copy.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            let data = cpu.as_slice::<f32>()?;
            return Ok(f(&data[start..end]));
        }
    }
    Ok(f(&t.flatten_all()?.to_vec1::<f32>()?))
}

/// `y = x Wᵀ + b`: x `[T, in]` f32 → y `[T, out]` f32.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Matrix,
    /// `[out]` f32.
    pub bias: Tensor,
}

impl Linear {
    /// Several layers of the same input `x` (`gelu` per layer: [`Linear::forward_gelu`] or
    /// [`Linear::forward`]): one product over all of them when they are packed with the same
    /// activation family, else one by one. Same bits either way.
    pub fn forward_many(layers: &[(&Linear, bool)], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let packed: Option<Vec<(&Packed, &Tensor, bool)>> = layers
            .iter()
            .map(|(l, gelu)| match &l.weight {
                Matrix::Packed(p) => Some((p, &l.bias, *gelu)),
                _ => None,
            })
            .collect();
        if let Some(r) = packed.and_then(|p| packed_forward_many(&p, x)) {
            return r;
        }
        layers.iter().map(|(l, gelu)| if *gelu { l.forward_gelu(x) } else { l.forward(x) }).collect()
    }

    /// `gelu_new(x Wᵀ + b)` (the MLP's up projection): fused into the product's output for
    /// packed weights; after candle's product otherwise. Either way [`kernels::gelu_new`], which
    /// gives the same bits on every ISA and build.
    pub fn forward_gelu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Matrix::Packed(p) = &self.weight {
            return p.forward(x, &self.bias, true);
        }
        let y = self.forward(x)?;
        if !y.device().is_cpu() {
            // candle's `gelu` is the same tanh form as `gelu_new`, on the device.
            return y.gelu();
        }
        let shape = y.dims().to_vec();
        let mut v = y.flatten_all()?.to_vec1::<f32>()?;
        let n = *shape.last().unwrap_or(&1);
        kernels::bias_act(&mut v, &vec![0f32; n], true, kernels::pool::threads());
        Tensor::from_vec(v, shape, y.device())
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Matrix::Packed(p) = &self.weight {
            return p.forward(x, &self.bias, false);
        }
        if let Some(y) = crate::par::matmul(x, &self.weight) {
            return y?.broadcast_add(&self.bias);
        }
        let y = match &self.weight {
            Matrix::Dense(w) if w.dtype() == candle_core::DType::F32 => x.matmul(&w.t()?)?,
            // Activations are rounded to the weight dtype, as llama.cpp does for F16/BF16 weights;
            // the product accumulates in f32 inside gemm.
            // On CUDA the same rounding of the activation, but the output kept in f32 as on the CPU
            // (candle's 16-bit product would round it to 16 bits: `cuda_ops`).
            #[cfg(feature = "cuda")]
            Matrix::Dense(w) if x.device().is_cuda() && x.rank() == 2 => {
                crate::cuda_ops::matmul_f32_out(&x.to_dtype(w.dtype())?.contiguous()?, w)?
            }
            // On aarch64 CPUs with half-precision arithmetic (FEAT_FP16: Apple M, Neoverse N1,
            // Cortex-A76+) gemm's f16 product accumulates in f16 (relative RMS error 2.3e-3 in
            // the quant test under qemu, over its 2e-3 bound): the f32 product of the same
            // rounded operands instead.
            #[cfg(target_arch = "aarch64")]
            Matrix::Dense(w) if w.dtype() == candle_core::DType::F16 && x.device().is_cpu() => {
                let f32 = candle_core::DType::F32;
                x.to_dtype(w.dtype())?.to_dtype(f32)?.matmul(&w.to_dtype(f32)?.t()?)?
            }
            Matrix::Dense(w) => x.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(candle_core::DType::F32)?,
            Matrix::Quant(q) => q.forward(x)?,
            Matrix::Packed(_) => unreachable!("handled above"),
        };
        y.broadcast_add(&self.bias)
    }
}

/// The token embedding `[vocab, hidden]` in its file layout (any dtype), read a row at a time.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub dtype: DType,
    pub vocab: usize,
    pub hidden: usize,
    pub bytes: WeightBytes,
}

impl Embedding {
    /// Rows for `ids` as f32 `[T, hidden]`. Ids must already be checked against the vocabulary.
    pub fn forward(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        let row_bytes = self.hidden / self.dtype.block_size() * self.dtype.type_size();
        let data = self.bytes.as_slice();
        let mut out = vec![0f32; ids.len() * self.hidden];
        for (&id, y) in ids.iter().zip(out.chunks_exact_mut(self.hidden)) {
            let id = id as usize;
            if id >= self.vocab {
                candle_core::bail!("token id {id} is out of range for {} embedding rows", self.vocab);
            }
            crate::quant::dequantize(self.dtype, &data[id * row_bytes..(id + 1) * row_bytes], y)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        }
        Tensor::from_vec(out, (ids.len(), self.hidden), device)
    }
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// `[hidden]` f32.
    pub weight: Tensor,
    /// `[hidden]` f32.
    pub bias: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// The residual update of a Phi-2 block, `x' = (x + attn) + mlp` (`[T, H]` each), and when
/// `norm` is given the next block's LayerNorm of it. On the CPU in one pass per row over f32
/// buffers instead of three candle ops, each allocating and reading its inputs again; the
/// operations are candle's (two element-wise adds, then [`layer_norm_row`]), so the bits are
/// the same. Rows are split over the kernels' pool, and the outputs start uninitialized (each
/// value is written once): on one thread, with zeroed outputs, this was ~2% of a 128-token
/// prompt's samples while the other threads waited.
pub fn residual(x: &Tensor, attn: &Tensor, mlp: &Tensor, norm: Option<&LayerNorm>) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    use std::mem::MaybeUninit;
    let cpu = x.device().is_cpu() && x.dtype() == candle_core::DType::F32;
    if !cpu || x.dims() != attn.dims() || x.dims() != mlp.dims() || x.rank() == 0 {
        let y = ((x + attn)? + mlp)?;
        let h = norm.map(|n| n.forward(&y)).transpose()?;
        return Ok((y, h));
    }
    let dims = x.dims().to_vec();
    let n = *dims.last().expect("rank checked");
    if let Some(norm) = norm {
        if norm.weight.elem_count() != n || norm.bias.elem_count() != n {
            candle_core::bail!("layer norm of {} / {} values for rows of {n}", norm.weight.elem_count(), norm.bias.elem_count());
        }
    }
    let rows = if n == 0 { 0 } else { x.elem_count() / n };
    let mut y: Vec<f32> = Vec::with_capacity(rows * n);
    let mut h: Option<Vec<f32>> = norm.map(|_| Vec::with_capacity(rows * n));
    let yp = kernels::Shared(y.spare_capacity_mut().as_mut_ptr());
    let hp = h.as_mut().map(|h| kernels::Shared(h.spare_capacity_mut().as_mut_ptr()));
    let all = norm.map(|n| [x, attn, mlp, &n.weight, &n.bias]);
    let ts: &[&Tensor] = match &all {
        Some(all) => all,
        None => &[x, attn, mlp],
    };
    with_f32_each(ts, &mut |v| {
        let (xs, a, m) = (v[0], v[1], v[2]);
        kernels::par_tokens(rows, n, &|i| {
            let r = i * n..(i + 1) * n;
            // SAFETY: row i of each output (capacity `rows · n`) is this item's alone.
            let yr = unsafe { yp.slice(i * n, n) };
            for (((yv, &xv), &av), &mv) in yr.iter_mut().zip(&xs[r.clone()]).zip(&a[r.clone()]).zip(&m[r]) {
                yv.write((xv + av) + mv);
            }
            if let (Some(hp), Some(norm)) = (hp, norm) {
                // SAFETY: every value of the row was written just above; as above for h.
                let (yr, hr) = unsafe { (&*(yr as *const [MaybeUninit<f32>] as *const [f32]), hp.slice(i * n, n)) };
                layer_norm_row(yr, v[3], v[4], norm.eps, hr);
            }
        });
    })?;
    // SAFETY: every row of each output was written above (a panicking item would have
    // re-raised before this point).
    unsafe {
        y.set_len(rows * n);
        if let Some(h) = h.as_mut() {
            h.set_len(rows * n);
        }
    }
    let y_t = Tensor::from_vec(y, dims.clone(), x.device())?;
    let h_t = h.map(|h| Tensor::from_vec(h, dims, x.device())).transpose()?;
    Ok((y_t, h_t))
}

/// candle's CPU LayerNorm of one row, operation for operation: `sum` and `sum2` accumulated in
/// order, `mean = sum / n`, `var = sum2 / n − mean²`, `1 / √(var + eps)`, then
/// `(x − mean) · inv_std · w + b` left to right (no fused multiply-add); `y` is written, never
/// read.
pub fn layer_norm_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [std::mem::MaybeUninit<f32>]) {
    let (mut sum, mut sum2) = (0f32, 0f32);
    for &v in x {
        sum += v;
        sum2 += v * v;
    }
    let n = x.len() as f32;
    let mean = sum / n;
    let var = sum2 / n - mean * mean;
    let inv_std = (var + eps).sqrt().recip();
    for (((d, &s), &a), &bb) in y.iter_mut().zip(x).zip(w).zip(b) {
        d.write((s - mean) * inv_std * a + bb);
    }
}

/// q, k and v projections: fused into one `[3·hidden, hidden]` matmul whenever the file's three
/// parts share a dtype, three matmuls otherwise (mixed-precision K-quant files).
#[derive(Debug, Clone)]
pub enum Qkv {
    Fused(Linear),
    Split([Linear; 3]),
}

#[derive(Debug, Clone)]
pub struct Phi2Layer {
    pub norm: LayerNorm,
    pub qkv: Qkv,
    /// Attention output projection `[hidden, hidden]`.
    pub dense: Linear,
    /// MLP up projection `[intermediate, hidden]`.
    pub fc1: Linear,
    /// MLP down projection `[hidden, intermediate]`.
    pub fc2: Linear,
}

/// Every weight of a Phi model, validated against its config.
#[derive(Debug, Clone)]
pub struct Phi2Weights {
    /// `[vocab, hidden]`.
    pub embed: Embedding,
    pub layers: Vec<Phi2Layer>,
    pub final_norm: LayerNorm,
    /// `[vocab, hidden]` + bias `[vocab]`.
    pub lm_head: Linear,
    /// The most common matrix dtype, for `info`.
    pub dtype: DType,
}

/// Loads tensors by name from one source, checking each against the shape the config implies.
struct Loader<'a> {
    src: &'a dyn TensorSource,
    device: &'a Device,
    /// Matrices of the types our kernels take stay in their file layout for them (the CPU);
    /// otherwise every matrix goes to candle (a GPU, or [`crate::Backend::CpuReference`]).
    own_kernels: bool,
}

impl<'a> Loader<'a> {
    /// Takes `name` from the source (each tensor is taken once: a streamed source hands over and
    /// forgets its buffer, which is freed when the returned value is dropped after conversion).
    fn get(&self, name: &str) -> Result<TensorData<'a>> {
        self.src.take(name)?.ok_or_else(|| Error::MissingTensor {
            path: self.src.path().to_path_buf(),
            name: name.to_string(),
            looked_for: name.to_string(),
        })
    }

    fn check_shape(&self, name: &str, shape: &[usize], expected: &[usize]) -> Result<()> {
        if shape != expected {
            return Err(Error::tensor(self.src.path(), name, format!("expected shape {expected:?}, found {shape:?}")));
        }
        Ok(())
    }

    fn float_tensor(&self, name: &str, dtype: DType, shape: &[usize], data: &[u8]) -> Result<Tensor> {
        let dtype = match dtype {
            DType::F32 => candle_core::DType::F32,
            DType::F16 => candle_core::DType::F16,
            DType::BF16 => candle_core::DType::BF16,
            q => return Err(Error::tensor(self.src.path(), name, format!("expected a float dtype (f32, f16, bf16), found {q}"))),
        };
        Ok(Tensor::from_raw_buffer(data, dtype, shape, self.device)?)
    }

    /// A 1-D float vector of `len` elements, as f32.
    fn vector(&self, name: &str, len: usize) -> Result<Tensor> {
        let t = self.get(name)?;
        self.check_shape(name, t.shape, &[len])?;
        Ok(self.float_tensor(name, t.dtype, t.shape, &t.data)?.to_dtype(candle_core::DType::F32)?)
    }

    fn matrix_from_bytes(&self, name: &str, dtype: DType, data: std::borrow::Cow<'_, [u8]>, shape: [usize; 2]) -> Result<Matrix> {
        // Our kernels run on the CPU; on a GPU every matrix goes to candle's device kernels.
        let ours = self.own_kernels && kernels::supports(dtype);
        if ours && WeightRef::new(dtype, shape[0], shape[1], &data).is_some() {
            let bytes = WeightBytes::from_source(self.src, data);
            if let Some(p) = Packed::new(dtype, shape[0], shape[1], bytes) {
                return Ok(Matrix::Packed(p));
            }
            return Err(Error::tensor(self.src.path(), name, format!("{dtype} data does not fit shape {shape:?}")));
        }
        if dtype.is_quantized() {
            let q = qtensor_from_ggml(dtype.to_ggml(), &data, shape.to_vec(), self.device)
                .map_err(|e| Error::tensor(self.src.path(), name, format!("cannot load {dtype} data: {e}")))?;
            // candle 0.11's aarch64 dot products for Q4_0, Q8_0 and the K-quants use `sdot`
            // without checking for the dotprod extension: on a CPU without it (Armv8.0, e.g.
            // Cortex-A53 / A72) they die with SIGILL. There candle gets the dequantized matrix (the
            // CPU reference backend only: the engine's own kernels take these types otherwise;
            // candle's Q4_1 / Q5_0 / Q5_1 products use no `sdot`).
            #[cfg(target_arch = "aarch64")]
            if self.device.is_cpu()
                && matches!(dtype, DType::Q4_0 | DType::Q8_0 | DType::Q4K | DType::Q5K | DType::Q6K)
                && !std::arch::is_aarch64_feature_detected!("dotprod")
            {
                return Ok(Matrix::Quant(QMatMul::Tensor(q.dequantize(self.device)?)));
            }
            Ok(Matrix::Quant(QMatMul::from_qtensor(q)?))
        } else {
            Ok(Matrix::Dense(self.float_tensor(name, dtype, &shape, &data)?))
        }
    }

    /// `prefix.weight` (already taken: `w`) and `prefix.bias`; `w` is freed once converted.
    fn linear_from(&self, prefix: &str, w: TensorData<'a>, out: usize, inp: usize) -> Result<Linear> {
        let wname = format!("{prefix}.weight");
        self.check_shape(&wname, w.shape, &[out, inp])?;
        let weight = self.matrix_from_bytes(&wname, w.dtype, w.data, [out, inp])?;
        Ok(Linear { weight, bias: self.vector(&format!("{prefix}.bias"), out)? })
    }

    fn linear(&self, prefix: &str, out: usize, inp: usize) -> Result<Linear> {
        let w = self.get(&format!("{prefix}.weight"))?;
        self.linear_from(prefix, w, out, inp)
    }

    fn layer_norm(&self, prefix: &str, hidden: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.vector(&format!("{prefix}.weight"), hidden)?,
            bias: self.vector(&format!("{prefix}.bias"), hidden)?,
            eps: eps as f32,
        })
    }

    fn qkv(&self, names: &QkvNames, hidden: usize) -> Result<Qkv> {
        match names {
            QkvNames::Fused(p) => Ok(Qkv::Fused(self.linear(p, 3 * hidden, hidden)?)),
            QkvNames::Split(parts) => {
                let views = parts
                    .iter()
                    .map(|p| {
                        let name = format!("{p}.weight");
                        let t = self.get(&name)?;
                        self.check_shape(&name, t.shape, &[hidden, hidden])?;
                        Ok(t)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let dtype = views[0].dtype;
                // Types our kernels take stay three matrices used in place (no fused copy).
                if views.iter().all(|v| v.dtype == dtype) && !(self.own_kernels && kernels::supports(dtype)) {
                    // Row-major [out, in] matrices (quantized rows included) stack along `out` by
                    // concatenating their bytes: one matmul instead of three.
                    let mut data: Vec<u8> = Vec::with_capacity(views.iter().map(|v| v.data.len()).sum());
                    for v in views {
                        data.extend_from_slice(&v.data);
                    }
                    let fused_name = format!("{}.weight (fused q, k, v)", parts[0]);
                    let weight = self.matrix_from_bytes(&fused_name, dtype, std::borrow::Cow::Owned(data), [3 * hidden, hidden])?;
                    let biases =
                        parts.iter().map(|p| self.vector(&format!("{p}.bias"), hidden)).collect::<Result<Vec<_>>>()?;
                    Ok(Qkv::Fused(Linear { weight, bias: Tensor::cat(&biases, 0)? }))
                } else {
                    let mut linears = Vec::with_capacity(3);
                    for (p, w) in parts.iter().zip(views) {
                        linears.push(self.linear_from(p, w, hidden, hidden)?);
                    }
                    let [q, k, v]: [Linear; 3] =
                        linears.try_into().map_err(|_| Error::tensor(self.src.path(), &parts[0], "expected q, k and v"))?;
                    Ok(Qkv::Split([q, k, v]))
                }
            }
        }
    }
}

impl Phi2Weights {
    pub fn load(src: &dyn TensorSource, layout: Layout, cfg: &Phi2Config, device: &Device) -> Result<Self> {
        Self::load_for(src, layout, cfg, device, device.is_cpu())
    }

    /// [`Phi2Weights::load`] with the choice of our kernels made by the caller: `false` on the
    /// CPU loads every matrix for candle's ops, as on a GPU ([`crate::Backend::CpuReference`]).
    pub fn load_for(src: &dyn TensorSource, layout: Layout, cfg: &Phi2Config, device: &Device, own_kernels: bool) -> Result<Self> {
        let ld = Loader { src, device, own_kernels: own_kernels && device.is_cpu() };
        let (h, v, ff) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let names = layout.model_names();

        let e = ld.get(names.embed)?;
        ld.check_shape(names.embed, e.shape, &[v, h])?;
        let embed_dtype = e.dtype;
        if e.dtype.byte_len(&[v, h]) != Some(e.data.len()) {
            return Err(Error::tensor(src.path(), names.embed, format!("{} data does not fit shape [{v}, {h}]", e.dtype)));
        }
        let embed = Embedding { dtype: e.dtype, vocab: v, hidden: h, bytes: WeightBytes::from_source(src, e.data) };

        // The dtype most of the weights use (that of the first layer's fc1), for `info`.
        let mut dtype = embed_dtype;
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let n = layout.layer_names(i, src);
                let norm = ld.layer_norm(&n.norm, h, cfg.layer_norm_eps)?;
                let qkv = ld.qkv(&n.qkv, h)?;
                let dense = ld.linear(&n.dense, h, h)?;
                let fc1_weight = ld.get(&format!("{}.weight", n.fc1))?;
                if i == 0 {
                    dtype = fc1_weight.dtype;
                }
                let fc1 = ld.linear_from(&n.fc1, fc1_weight, ff, h)?;
                Ok(Phi2Layer { norm, qkv, dense, fc1, fc2: ld.linear(&n.fc2, h, ff)? })
            })
            .collect::<Result<Vec<_>>>()?;

        Ok(Phi2Weights {
            embed,
            layers,
            final_norm: ld.layer_norm(names.final_norm, h, cfg.layer_norm_eps)?,
            lm_head: ld.linear(names.lm_head, v, h)?,
            dtype,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{residual, LayerNorm};

    /// Deterministic values of every sign and a wide range of sizes.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32).map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 20_011) as f32 / 997.0 - 10.0).collect()
    }

    #[test]
    fn fused_residual_and_norm_give_candles_bits() {
        let dev = Device::Cpu;
        for (t, n) in [(1, 2560), (3, 37), (2, 8)] {
            let t3 = |s| Tensor::from_vec(values(t * n, s), (t, n), &dev).unwrap();
            let (x, a, m) = (t3(1), t3(2), t3(3));
            let norm = LayerNorm {
                weight: Tensor::from_vec(values(n, 4), n, &dev).unwrap(),
                bias: Tensor::from_vec(values(n, 5), n, &dev).unwrap(),
                eps: 1e-5,
            };
            let want_x = ((&x + &a).unwrap() + &m).unwrap();
            let want_h = norm.forward(&want_x).unwrap();
            let (got_x, got_h) = residual(&x, &a, &m, Some(&norm)).unwrap();
            let bits = |v: &Tensor| v.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&want_x), bits(&got_x), "x' for [{t}, {n}]");
            assert_eq!(bits(&want_h), bits(&got_h.unwrap()), "norm for [{t}, {n}]");
            // Rows taken from a wider matrix (not contiguous) give the same result.
            let wide = Tensor::cat(&[&x, &a], 1).unwrap().narrow(1, 0, n).unwrap();
            let (x2, _) = residual(&wide, &a, &m, None).unwrap();
            assert_eq!(bits(&want_x), bits(&x2), "strided x for [{t}, {n}]");
        }
    }
}
