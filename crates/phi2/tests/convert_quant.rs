//! The engine's reference quantizers (`phi2::quantize`) against llama.cpp's own: byte for byte on
//! the goldens that `scripts/golden-quant/run.sh` wrote by calling ggml's `quantize_row_*_ref`
//! (and its f32 → f16 / bf16 row converters) from the libggml-base that node-llama-cpp ships.
//! The test rows cover zero, constant, tiny, subnormal, huge, one-signed, tie-heavy and spiky
//! blocks besides pseudo-normal weights with outliers.

mod common;

use phi2::quantize::quantize_rows;
use phi2::DType;

const N_PER_ROW: usize = 512;

fn golden(name: &str) -> Vec<u8> {
    let p = common::repo_root().join("test/golden/quant").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (scripts/golden-quant/run.sh writes it)", p.display()))
}

fn input() -> Vec<f32> {
    golden("input.f32").chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn every_type_matches_ggml_reference_quantizers_byte_for_byte() {
    let x = input();
    assert_eq!(x.len() % N_PER_ROW, 0);
    let rows = x.len() / N_PER_ROW;
    for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4K, DType::Q5K, DType::Q6K, DType::F16, DType::BF16] {
        let expected = golden(&format!("{}.bin", dtype.name()));
        let mut ours = vec![0u8; dtype.byte_len(&[rows, N_PER_ROW]).unwrap()];
        quantize_rows(dtype, &x, N_PER_ROW, &mut ours).unwrap();
        assert_eq!(ours.len(), expected.len(), "{dtype}: byte length");
        let row_bytes = ours.len() / rows;
        let bad: Vec<usize> = (0..rows).filter(|r| ours[r * row_bytes..(r + 1) * row_bytes] != expected[r * row_bytes..(r + 1) * row_bytes]).collect();
        if let Some(&r) = bad.first() {
            let (a, b) = (&ours[r * row_bytes..(r + 1) * row_bytes], &expected[r * row_bytes..(r + 1) * row_bytes]);
            let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap();
            panic!("{dtype}: rows {bad:?} differ from ggml; row {r} first at byte {at}: ours {:02x?} ggml {:02x?}", &a[at..(at + 8).min(a.len())], &b[at..(at + 8).min(b.len())]);
        }
        // Quantizing row ranges separately (as the threaded converter does) gives the same bytes.
        let mut split = vec![0u8; ours.len()];
        let cut = rows / 3;
        let (s1, s2) = split.split_at_mut(cut * row_bytes);
        quantize_rows(dtype, &x[..cut * N_PER_ROW], N_PER_ROW, s1).unwrap();
        quantize_rows(dtype, &x[cut * N_PER_ROW..], N_PER_ROW, s2).unwrap();
        assert_eq!(split, ours, "{dtype}: split rows");
    }
}

#[test]
fn quantized_blocks_decode_close_to_the_input() {
    // A sanity check independent of the goldens: dequantize(quantize(x)) tracks x.
    let x = input();
    let normal = &x[20 * N_PER_ROW..40 * N_PER_ROW];
    for (dtype, bound) in [(DType::Q8_0, 0.01f32), (DType::Q6K, 0.03), (DType::Q5K, 0.08), (DType::Q4K, 0.15), (DType::Q4_0, 0.15), (DType::Q5_1, 0.08)] {
        let mut q = vec![0u8; dtype.byte_len(&[20, N_PER_ROW]).unwrap()];
        quantize_rows(dtype, normal, N_PER_ROW, &mut q).unwrap();
        let mut back = vec![0f32; normal.len()];
        phi2::quant::dequantize(dtype, &q, &mut back).unwrap();
        let num: f32 = normal.iter().zip(&back).map(|(a, b)| (a - b) * (a - b)).sum();
        let den: f32 = normal.iter().map(|a| a * a).sum();
        assert!((num / den).sqrt() < bound, "{dtype}: relative RMS error {}", (num / den).sqrt());
    }
}

#[test]
fn bad_lengths_are_typed_errors() {
    let x = vec![0f32; 100];
    let e = quantize_rows(DType::Q8_0, &x, 50, &mut [0u8; 10]).unwrap_err();
    assert_eq!(e.code(), "E_INVALID_ARGUMENT");
    assert!(e.to_string().contains("multiple of 32"), "{e}");
    let e = quantize_rows(DType::Q8_0, &x[..64], 32, &mut [0u8; 10]).unwrap_err();
    assert!(e.to_string().contains("68 bytes"), "{e}");
}
