//! Every quantized type against the scalar reference in `phi2::quant`:
//! candle's dequantization must match it bit for bit, quantize → dequantize must stay within the
//! type's precision, and the quantized matmul the model runs must match an f32 matmul on the
//! reference-dequantized weights.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Tensor};
use phi2::quant::dequantize;
use phi2::weights::{Linear, Matrix};
use phi2::DType;

/// Deterministic pseudo-normal data with a few outliers (as real weights have).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            let g = (0..4).map(|_| next()).sum::<f64>() - 2.0; // sum of 4 uniforms, std ≈ 0.58
            (if i % 97 == 0 { g * 6.0 } else { g }) as f32
        })
        .collect()
}

fn rel_rms(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// Upper bounds on relative RMS reconstruction error, by type (bits per weight).
fn precision(d: DType) -> f32 {
    match d {
        DType::Q8_0 => 0.01,
        DType::Q6K => 0.03,
        DType::Q5_0 | DType::Q5_1 | DType::Q5K => 0.08,
        DType::Q4_0 | DType::Q4_1 | DType::Q4K => 0.15,
        _ => unreachable!(),
    }
}

const QUANT_TYPES: [DType; 8] =
    [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4K, DType::Q5K, DType::Q6K];

#[test]
fn candle_dequantize_matches_scalar_reference_bit_for_bit() {
    let (rows, k) = (6, 768);
    let x = data(rows * k, 1);
    let t = Tensor::from_vec(x.clone(), (rows, k), &Device::Cpu).unwrap();
    for d in QUANT_TYPES {
        let q = QTensor::quantize(&t, d.to_ggml()).unwrap();
        let bytes = q.data().unwrap();
        assert_eq!(bytes.len(), d.byte_len(&[rows, k]).unwrap(), "{d}: byte length");
        let mut ours = vec![0f32; rows * k];
        dequantize(d, &bytes, &mut ours).unwrap();
        let theirs = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-6 * x.iter().fold(0f32, |m, v| m.max(v.abs())), "{d}: max |Δ| {worst}");
        let err = rel_rms(&ours, &x);
        assert!(err < precision(d), "{d}: relative RMS error {err} over {}", precision(d));
        assert!(err > 0.0, "{d}: lossless quantization is impossible, the test is broken");
    }
}

#[test]
fn quantized_matmul_matches_f32_matmul_on_reference_weights() {
    // Odd row and token counts on purpose.
    let (out, k, t) = (37, 512, 5);
    let w = data(out * k, 2);
    let x = data(t * k, 3);
    let xt = Tensor::from_vec(x.clone(), (t, k), &Device::Cpu).unwrap();
    let bias = Tensor::from_vec(data(out, 4), out, &Device::Cpu).unwrap();
    for d in QUANT_TYPES {
        let q = QTensor::quantize(&Tensor::from_vec(w.clone(), (out, k), &Device::Cpu).unwrap(), d.to_ggml()).unwrap();
        let mut wref = vec![0f32; out * k];
        dequantize(d, &q.data().unwrap(), &mut wref).unwrap();
        let lin = Linear { weight: Matrix::Quant(QMatMul::from_qtensor(q).unwrap()), bias: bias.clone() };
        let y = lin.forward(&xt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = bias.to_vec1::<f32>().unwrap();
        let yref: Vec<f32> = (0..t)
            .flat_map(|i| {
                let (x, wref, b) = (&x, &wref, &b);
                (0..out).map(move |o| {
                    b[o] + (0..k).map(|j| x[i * k + j] as f64 * wref[o * k + j] as f64).sum::<f64>() as f32
                })
            })
            .collect();
        // The kernels quantize activations to 8 bits per block (Q8_0 / Q8_K, as ggml does), which the outliers in
        // `data` make coarser: allow that much, relative
        // to the output scale.
        let err = rel_rms(&y, &yref);
        assert!(err < 0.02, "{d}: matmul relative RMS error {err}");
    }
}

#[test]
fn reference_rejects_partial_blocks() {
    let mut out = vec![0f32; 32];
    assert!(dequantize(DType::Q4_0, &[0u8; 17], &mut out).is_err());
    assert!(dequantize(DType::Q4_0, &[0u8; 18], &mut out[..31]).is_err());
    dequantize(DType::Q4_0, &[0u8; 18], &mut out).unwrap();
}

#[test]
fn dense_half_precision_matmul_matches_f32() {
    let (out, k, t) = (19, 96, 3);
    let w = data(out * k, 5);
    let x = data(t * k, 6);
    let xt = Tensor::from_vec(x, (t, k), &Device::Cpu).unwrap();
    let wt = Tensor::from_vec(w, (out, k), &Device::Cpu).unwrap();
    let bias = Tensor::zeros(out, candle_core::DType::F32, &Device::Cpu).unwrap();
    let f32_lin = Linear { weight: Matrix::Dense(wt.clone()), bias: bias.clone() };
    let yref = f32_lin.forward(&xt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for dt in [candle_core::DType::F16, candle_core::DType::BF16] {
        let lin = Linear { weight: Matrix::Dense(wt.to_dtype(dt).unwrap()), bias: bias.clone() };
        let y = lin.forward(&xt).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let err = rel_rms(&y, &yref);
        let bound = if dt == candle_core::DType::F16 { 2e-3 } else { 1.5e-2 };
        assert!(err < bound, "{dt:?}: relative RMS error {err}");
    }
}
