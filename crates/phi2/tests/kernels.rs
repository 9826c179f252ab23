//! Kernel parity: every SIMD kernel this CPU runs gives the scalar twin's bits, for every weight
//! type, on odd shapes, any token count and any thread count; and the scalar twin agrees with
//! an f32 product of the dequantized weights within the 8-bit activation rounding.

use phi2::kernels::attention::KvElem;
use phi2::kernels::{self, Activations, Family, Isa, WeightRef};
use phi2::DType;

/// xorshift64*: deterministic, the same on every host.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Random but valid weight bytes of `dtype` for `[rows, cols]`: random quant values, scales of
/// sane size, some of them subnormal or −0 (f16 scales never inf/NaN).
fn weights(dtype: DType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let blocks = rows * cols / dtype.block_size();
    let mut out = Vec::with_capacity(blocks * dtype.type_size());
    for _ in 0..blocks {
        let mut blk: Vec<u8> = (0..dtype.type_size()).map(|_| rng.byte()).collect();
        let mut d = f16_bytes(0.001 + 0.02 * rng.unit().abs());
        let dmin = f16_bytes(0.001 + 0.01 * rng.unit().abs());
        // Every few blocks a scale at an edge of the f16 → f32 conversion: subnormals (the
        // smallest, the largest), −0 and −(smallest subnormal), the smallest normal.
        const EDGES: [u16; 5] = [0x0001, 0x03FF, 0x8000, 0x8001, 0x0400];
        if rng.next() % 7 == 0 {
            d = EDGES[(rng.next() % 5) as usize].to_le_bytes();
        }
        match dtype {
            DType::Q4_0 | DType::Q8_0 | DType::Q4K | DType::Q5K => {
                blk[0..2].copy_from_slice(&d);
                if matches!(dtype, DType::Q4K | DType::Q5K) {
                    blk[2..4].copy_from_slice(&dmin);
                }
            }
            DType::Q6K => blk[208..210].copy_from_slice(&d),
            DType::F16 => blk.copy_from_slice(&f16_bytes(rng.unit() * 0.5)),
            DType::BF16 => blk.copy_from_slice(&half::bf16::from_f32(rng.unit() * 0.5).to_le_bytes()),
            _ => unreachable!(),
        }
        out.extend_from_slice(&blk);
    }
    out
}

const TYPES: [DType; 7] = [DType::Q4_0, DType::Q8_0, DType::Q4K, DType::Q5K, DType::Q6K, DType::F16, DType::BF16];

fn shapes(dtype: DType) -> Vec<(usize, usize)> {
    let bs = Family::of(dtype).unwrap().block().max(8);
    // Odd row counts (tile tails), a few block counts; for floats also cols that are not a
    // multiple of 8.
    let mut v = vec![(1, bs), (7, 2 * bs), (9, 3 * bs), (33, bs), (70, 2 * bs)];
    match Family::of(dtype).unwrap() {
        // 10243 columns: wide enough that the AVX-512 kernel splits 21 and 35 tokens into
        // passes of 32 (its activation blocks), with a tail of columns.
        Family::F16 | Family::BF16 => v.extend([(5, 13), (11, 37), (16, 64), (7, 10243)]),
        // Whole groups of 8 blocks, with and without a tail of blocks.
        // Odd and even numbers of full groups, with and without a tail of blocks.
        // 8192 columns: the AMX Q4_0 / Q8_0 kernel's passes (~1 MB of activation tiles) are 128 tokens.
        Family::Q8_0 => v.extend([(5, 256), (13, 352), (3, 512), (17, 1600), (6, 768), (4, 1824), (3, 8192)]),
        Family::Q8K => v.extend([(3, 2560)]),
    }
    v
}

fn activations(tokens: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
    (0..tokens * cols).map(|_| rng.unit() * 3.0).collect()
}

fn run(isa: Isa, w: &WeightRef, x: &[f32], tokens: usize) -> Option<Vec<f32>> {
    let mut a = Activations::default();
    // For this set's layouts, whichever set `PHI2_KERNELS` chose for the engine.
    a.prepare_for(isa, Family::of(w.dtype).unwrap(), x, tokens, w.cols);
    // NaN to start with: a kernel that left an output unwritten would differ from the scalar.
    let mut out = vec![f32::NAN; tokens * w.rows];
    kernels::matmul_with(isa, w, &a, &mut out)?;
    Some(out)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn simd_kernels_give_the_scalar_bits() {
    let sets = kernels::runnable();
    eprintln!("kernel sets on this machine: {:?}; in use: {}", sets.iter().map(|i| i.name()).collect::<Vec<_>>(), kernels::isa().name());
    let mut rng = Rng(0x5EED);
    for dtype in TYPES {
        for (rows, cols) in shapes(dtype) {
            let data = weights(dtype, rows, cols, &mut rng);
            let w = WeightRef::new(dtype, rows, cols, &data).unwrap();
            // 150: more than one of the AMX Q4_0 / Q8_0 kernel's passes of 128 tokens (8192 columns).
            for tokens in [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 21, 35, 150] {
                let x = activations(tokens, cols, &mut rng);
                let s = run(Isa::Scalar, &w, &x, tokens).unwrap();
                for &isa in &sets[1..] {
                    let f = run(isa, &w, &x, tokens).unwrap();
                    assert_eq!(bits(&s), bits(&f), "{dtype} {rows}x{cols} tokens {tokens}: {} differs from scalar", isa.name());
                }
            }
        }
    }
}

#[test]
fn reused_activations_give_the_bits_of_fresh_ones() {
    // The activation buffers keep their allocations and old contents between products (only
    // what a product reads is written): a wider, longer batch first, then shorter ones whose
    // last tile of tokens is partly padding, on the buffers it left behind.
    let sets = kernels::runnable();
    let mut rng = Rng(0xAC7);
    for dtype in TYPES {
        let bs = Family::of(dtype).unwrap().block().max(32);
        let (rows, cols) = (19, 8 * bs);
        let data = weights(dtype, rows, cols, &mut rng);
        let w = WeightRef::new(dtype, rows, cols, &data).unwrap();
        for &isa in &sets {
            let mut a = Activations::default();
            let wide = activations(40, 2 * cols, &mut rng).iter().map(|v| v * 1e3).collect::<Vec<_>>();
            a.prepare_for(isa, Family::of(dtype).unwrap(), &wide, 40, 2 * cols);
            for tokens in [35, 21, 17, 2, 33] {
                let x = activations(tokens, cols, &mut rng);
                a.prepare_for(isa, Family::of(dtype).unwrap(), &x, tokens, cols);
                let mut out = vec![f32::NAN; tokens * rows];
                kernels::matmul_with(isa, &w, &a, &mut out).unwrap();
                let fresh = run(isa, &w, &x, tokens).unwrap();
                assert_eq!(bits(&fresh), bits(&out), "{dtype} {tokens} tokens after others: {}", isa.name());
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_batch_or_threads() {
    let mut rng = Rng(0xBA7C);
    // 6 tokens: the short-batch kernels (token pairs for Q4_0 / Q8_0, rows for K-quants); 50:
    // the batch kernels (tiles), on 300 rows, whose split over several threads ends in finer
    // items.
    for (dtype, rows, tokens) in TYPES.iter().flat_map(|&d| [(d, 97, 6), (d, 300, 50)]) {
        let cols = 11 * Family::of(dtype).unwrap().block().max(32);
        let data = weights(dtype, rows, cols, &mut rng);
        let w = WeightRef::new(dtype, rows, cols, &data).unwrap();
        let x = activations(tokens, cols, &mut rng);
        let mut a = Activations::default();
        a.prepare(Family::of(dtype).unwrap(), &x, tokens, cols);
        let mut batch = vec![0f32; tokens * rows];
        kernels::matmul(&w, &a, &mut batch, 1);
        for threads in [2, 3, 5] {
            let mut y = vec![0f32; tokens * rows];
            kernels::matmul(&w, &a, &mut y, threads);
            assert_eq!(bits(&batch), bits(&y), "{dtype}: {threads} threads");
        }
        for t in 0..tokens {
            let one = run(kernels::isa(), &w, &x[t * cols..(t + 1) * cols], 1).unwrap();
            assert_eq!(bits(&one), bits(&batch[t * rows..(t + 1) * rows]), "{dtype}: token {t} alone vs in a batch");
        }
    }
}

#[test]
fn fused_products_give_the_bits_of_a_product_then_bias_act() {
    // matmul_many finishes each work item's rows (bias, GELU) where they were computed: the
    // same bits as matmul and then bias_act over the whole output, for widths whose items are
    // narrower than the default (wide rows) and row counts that end in a partial item.
    let mut rng = Rng(0xF05E);
    for dtype in TYPES {
        let block = Family::of(dtype).unwrap().block().max(32);
        for (rows, cols, tokens) in [(300, 8 * block, 1), (75, 12800, 1), (37, 3 * block, 3)] {
            let cols = if matches!(dtype, DType::F16 | DType::BF16) { cols + 3 } else { cols };
            let parts: Vec<(Vec<u8>, Vec<f32>, bool)> = [(rows, false), (rows / 2 + 1, true)]
                .iter()
                .map(|&(r, gelu)| (weights(dtype, r, cols, &mut rng), (0..r).map(|_| rng.unit()).collect(), gelu))
                .collect();
            let x = activations(tokens, cols, &mut rng);
            let mut a = Activations::default();
            a.prepare(Family::of(dtype).unwrap(), &x, tokens, cols);
            let ws: Vec<WeightRef> = parts.iter().map(|(d, b, _)| WeightRef::new(dtype, b.len(), cols, d).unwrap()).collect();
            let want: Vec<Vec<f32>> = ws
                .iter()
                .zip(&parts)
                .map(|(w, (_, bias, gelu))| {
                    let mut y = vec![0f32; tokens * w.rows];
                    kernels::matmul(w, &a, &mut y, 1);
                    kernels::bias_act(&mut y, bias, *gelu, 1);
                    y
                })
                .collect();
            for threads in [1, 2, 3] {
                // Outputs that start as NaN: every one must be written.
                let mut outs: Vec<Vec<std::mem::MaybeUninit<f32>>> = ws.iter().map(|w| vec![std::mem::MaybeUninit::new(f32::NAN); tokens * w.rows]).collect();
                let mut products: Vec<kernels::Product> = ws
                    .iter()
                    .zip(&parts)
                    .zip(outs.iter_mut())
                    .map(|((w, (_, bias, gelu)), out)| kernels::Product { w: *w, out, bias: Some(bias), gelu: *gelu })
                    .collect();
                kernels::matmul_many(&mut products, &a, threads);
                // SAFETY: initialized above (and overwritten).
                let outs: Vec<Vec<f32>> = outs.iter().map(|o| o.iter().map(|v| unsafe { v.assume_init() }).collect()).collect();
                for (i, (got, want)) in outs.iter().zip(&want).enumerate() {
                    assert_eq!(bits(want), bits(got), "{dtype} {rows}x{cols} tokens {tokens} part {i} threads {threads}");
                }
            }
        }
    }
}

#[test]
fn scalar_twin_matches_an_f32_product_of_the_dequantized_weights() {
    let mut rng = Rng(0xF32);
    for dtype in TYPES {
        let (rows, cols) = (13, 2 * Family::of(dtype).unwrap().block().max(32));
        let data = weights(dtype, rows, cols, &mut rng);
        let w = WeightRef::new(dtype, rows, cols, &data).unwrap();
        let mut deq = vec![0f32; rows * cols];
        phi2::quant::dequantize(dtype, &data, &mut deq).unwrap();
        let tokens = 3;
        let x = activations(tokens, cols, &mut rng);
        let y = run(Isa::Scalar, &w, &x, tokens).unwrap();
        for t in 0..tokens {
            for r in 0..rows {
                let (mut exact, mut mag) = (0f64, 0f64);
                for i in 0..cols {
                    exact += deq[r * cols + i] as f64 * x[t * cols + i] as f64;
                    mag += (deq[r * cols + i] as f64 * x[t * cols + i] as f64).abs();
                }
                let got = y[t * rows + r] as f64;
                // 8-bit activations: |error| ≲ Σ|w|·|x|/127; 16-bit: far less.
                let tol = if dtype.is_quantized() { mag / 100.0 } else { mag / 200.0 } + 1e-6;
                assert!((got - exact).abs() <= tol, "{dtype} [{t},{r}]: {got} vs {exact} (tol {tol})");
            }
        }
    }
}

#[test]
fn q8_activation_blocks_follow_ggml() {
    // amax 127 → d = 1, id = 1: q = round_ties_even(x).
    let mut x = [0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -3.5;
    let mut q = [0i8; 32];
    let (d, s) = kernels::quantize_block_q8_0(&x, &mut q);
    assert_eq!(d, 1.0);
    assert_eq!((q[0], q[1], q[2]), (127, 2, -4)); // ties go to even
    assert_eq!(s, 127 + 2 - 4);
    let (d0, s0) = kernels::quantize_block_q8_0(&[0.0; 32], &mut q);
    assert_eq!((d0, s0), (0.0, 0));
    assert!(q.iter().all(|&v| v == 0));
}

/// HF's gelu_new in f64 (the reference the f32 evaluation approximates).
#[test]
fn q8_0_row_quantizer_matches_the_block_quantizer() {
    // Random blocks of several magnitudes plus the edge cases: zeros, -0.0, exact halves
    // (ties), tiny and subnormal values, NaN and infinities.
    let mut rng = Rng(0x0A80);
    let mut x: Vec<f32> = Vec::new();
    for scale in [1e-3f32, 0.5, 3.0, 200.0, 1e30] {
        for _ in 0..32 * 7 {
            x.push(rng.unit() * scale);
        }
    }
    x.extend([0.0f32; 32]);
    x.extend([-0.0f32; 32]);
    x.extend((0..32).map(|i| (i as f32 - 16.0) + 0.5));
    x.extend((0..32).map(|i| if i == 5 { 127.0 } else { (i as f32) * 0.5 - 8.0 })); // id = 1: halves tie
    x.extend((0..32).map(|i| f32::from_bits(1 + i as u32))); // subnormals only
    x.extend((0..32).map(|i| if i == 3 { f32::NAN } else { i as f32 - 10.0 }));
    x.extend((0..32).map(|i| if i == 7 { f32::INFINITY } else { i as f32 }));
    x.extend((0..32).map(|i| if i % 2 == 0 { f32::NEG_INFINITY } else { f32::NAN }));
    let nb = x.len() / 32;
    let (mut q, mut d, mut s) = (vec![0i8; x.len()], vec![0f32; nb], vec![0i32; nb]);
    kernels::quantize_row_q8_0(&x, &mut q, &mut d, &mut s);
    for b in 0..nb {
        let mut qb = [0i8; 32];
        let (db, sb) = kernels::quantize_block_q8_0(&x[32 * b..32 * b + 32], &mut qb);
        assert_eq!((d[b].to_bits(), s[b], &q[32 * b..32 * b + 32]), (db.to_bits(), sb, &qb[..]), "block {b}: {:?}", &x[32 * b..32 * b + 32]);
    }
}

#[test]
fn q8_k_block_quantizer_gives_the_scalar_bits() {
    // Random blocks of several magnitudes, and the edge cases: zeros, the largest magnitude
    // first negative then positive (the first one gives the scale), ties, NaN, infinities.
    let mut rng = Rng(0x08C8);
    let mut blocks: Vec<Vec<f32>> = Vec::new();
    for scale in [1e-3f32, 0.5, 3.0, 200.0, 1e30] {
        for _ in 0..4 {
            blocks.push((0..256).map(|_| rng.unit() * scale).collect());
        }
    }
    blocks.push(vec![0.0; 256]);
    blocks.push(vec![-0.0; 256]);
    blocks.push((0..256).map(|i| if i == 40 { -5.0 } else if i == 200 { 5.0 } else { (i % 13) as f32 * 0.25 - 1.5 }).collect());
    blocks.push((0..256).map(|i| if i == 9 { 127.0 } else { (i % 32) as f32 * 0.5 - 8.0 }).collect());
    blocks.push((0..256).map(|i| if i == 3 { f32::NAN } else { i as f32 - 100.0 }).collect());
    blocks.push((0..256).map(|i| if i == 77 { f32::INFINITY } else { i as f32 }).collect());
    blocks.push((0..256).map(|i| if i % 2 == 0 { f32::NEG_INFINITY } else { f32::NAN }).collect());
    blocks.push(vec![f32::NAN; 256]);
    for (n, x) in blocks.iter().enumerate() {
        let (mut q, mut bs, mut q0, mut bs0) = ([0i8; 256], [0i32; 16], [0i8; 256], [0i32; 16]);
        let d = kernels::quantize_block_q8_k(x, &mut q, &mut bs);
        let d0 = kernels::quantize_block_q8_k_scalar(x, &mut q0, &mut bs0);
        assert_eq!((d.to_bits(), &q[..], bs), (d0.to_bits(), &q0[..], bs0), "block {n}");
    }
}

fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * x * (1.0 + 0.044715 * x * x)).tanh())
}

#[test]
fn gelu_is_close_to_the_exact_formula_and_the_same_bits_on_every_isa() {
    let mut rng = Rng(0x6E1);
    // Dense near 0 and over the range activations take, plus the far tails.
    let mut x: Vec<f32> = (0..8192).map(|_| rng.unit() * 12.0).collect();
    x.extend((0..2000).map(|i| (i as f32 - 1000.0) * 1e-3));
    x.extend([0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 1e6, -1e6, f32::MIN_POSITIVE]);
    let mut worst = 0f64;
    for &v in &x {
        let got = kernels::gelu_new(v) as f64;
        let want = gelu_f64(v as f64);
        // Relative to |x|: gelu ~ x for x > 0 and goes to 0 (absolutely) for x << 0.
        let err = (got - want).abs() / (v as f64).abs().max(1e-30);
        worst = worst.max(err);
        assert!(err < 2e-6, "gelu({v}) = {got}, exact {want}");
    }
    eprintln!("gelu: worst error relative to |x|: {worst:.2e}");
    // The fused bias + gelu (SIMD on this CPU, tails scalar) gives the scalar bits.
    let bias: Vec<f32> = (0..x.len()).map(|i| if i % 3 == 0 { 0.0 } else { rng.unit() * 0.5 }).collect();
    let want: Vec<f32> = x.iter().zip(&bias).map(|(&v, &b)| kernels::gelu_new(v + b)).collect();
    for threads in [1, 3] {
        let mut got = x.clone();
        kernels::bias_act(&mut got, &bias, true, threads);
        assert_eq!(bits(&want), bits(&got), "threads {threads}");
    }
    // Rows of odd length (SIMD body plus scalar tail), several tokens.
    let mut got = x[..7 * 13].to_vec();
    kernels::bias_act(&mut got, &bias[..13], true, 2);
    let want: Vec<f32> = x[..7 * 13].iter().enumerate().map(|(i, &v)| kernels::gelu_new(v + bias[i % 13])).collect();
    assert_eq!(bits(&want), bits(&got));
}

#[test]
fn round_ties_even_matches_std_in_range() {
    let mut rng = Rng(0x71E);
    for i in 0..200_000 {
        let v = if i < 1000 { (i as f32 - 500.0) * 0.25 } else { rng.unit() * 130.0 };
        // Equal values (the sign of a zero may differ, which no integer conversion sees).
        assert_eq!(kernels::round_ties_even(v), v.round_ties_even(), "{v}");
    }
}

#[test]
fn exp_is_within_two_ulp_of_the_exact_value() {
    let mut rng = Rng(0xE4B);
    let mut worst = 0f64;
    for i in 0..200_000 {
        let x = if i < 1000 { -(i as f32) * 0.087 } else { -rng.unit().abs() * 87.0 };
        let got = kernels::attention::exp(x) as f64;
        let want = (x as f64).exp();
        let rel = (got - want).abs() / want;
        worst = worst.max(rel);
        assert!(rel < 2.5e-7, "exp({x}) = {got}, exact {want}");
    }
    eprintln!("exp: worst relative error {worst:.2e}");
}

/// Attention of every query row against a cache, in f64 (the reference).
fn attention_f64<T: KvElem>(q: &[f32], k: &[T], v: &[T], s: kernels::attention::AttnShape, scale: f32) -> Vec<f64> {
    let (h_n, hd) = (s.heads, s.head_dim);
    let mut out = vec![0f64; s.tokens * h_n * hd];
    for h in 0..h_n {
        for i in 0..s.tokens {
            let n = s.pos + i + 1;
            let qr = &q[(h * s.tokens + i) * hd..][..hd];
            let sc: Vec<f64> = (0..n)
                .map(|j| qr.iter().zip(&k[(h * s.cap + j) * hd..][..hd]).map(|(&a, &b)| a as f64 * b.load() as f64).sum::<f64>() * scale as f64)
                .collect();
            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                out[(i * h_n + h) * hd + d] = (0..n).map(|j| e[j] / sum * v[(h * s.cap + j) * hd + d].load() as f64).sum();
            }
        }
    }
    out
}

#[test]
fn attention_matches_f64_and_gives_the_same_bits_for_any_split() {
    let mut rng = Rng(0xA77);
    // head_dim: Phi-2's 80, tails past the vectors (13, 6, 4: none), the most vectors the SIMD
    // kernels keep (120, 128) and past them (136).
    for (heads, hd, pos, tokens) in [(2, 80, 0, 1), (3, 80, 5, 7), (2, 13, 9, 3), (4, 32, 0, 19), (1, 8, 40, 1), (2, 24, 3, 33), (2, 4, 6, 1), (1, 6, 10, 2), (2, 120, 9, 1), (1, 128, 17, 3), (1, 136, 5, 2)] {
        let cap = pos + tokens + 5;
        let q: Vec<f32> = (0..heads * tokens * hd).map(|_| rng.unit() * 2.0).collect();
        let k: Vec<f32> = (0..heads * cap * hd).map(|_| rng.unit() * 2.0).collect();
        let v: Vec<f32> = (0..heads * cap * hd).map(|_| rng.unit()).collect();
        let s = kernels::attention::AttnShape { heads, head_dim: hd, cap, pos, tokens };
        attention_case(&q, &k, &v, s, "f32 cache");
        // An f16 cache: the same values rounded as the model stores them.
        let half = |x: &[f32]| x.iter().map(|&x| <half::f16 as KvElem>::store(x)).collect::<Vec<_>>();
        attention_case(&q, &half(&k), &half(&v), s, "f16 cache");
    }
}

/// [`attention_matches_f64_and_gives_the_same_bits_for_any_split`] for one cache.
fn attention_case<T: KvElem>(q: &[f32], k: &[T], v: &[T], s: kernels::attention::AttnShape, what: &str) {
    use kernels::attention::{attention, AttnShape};
    let AttnShape { heads, head_dim: hd, cap, pos, tokens } = s;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; tokens * heads * hd];
    attention(q, k, v, s, scale, &mut out, 2);
    let want = attention_f64(q, k, v, s, scale);
    for (g, w) in out.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-5, "{what}, heads {heads} hd {hd} pos {pos} tokens {tokens}: {g} vs {w}");
    }
    // The scalar twin: same bits.
    for h in 0..heads {
        for i in 0..tokens {
            let n = pos + i + 1;
            let mut y = vec![0f32; hd];
            kernels::attention::row_scalar(&q[(h * tokens + i) * hd..][..hd], &k[h * cap * hd..(h * cap + n) * hd], &v[h * cap * hd..(h * cap + n) * hd], scale, &mut y);
            assert_eq!(bits(&y), bits(&out[(i * heads + h) * hd..][..hd]), "{what}: scalar twin, head {h} row {i}");
        }
    }
    // Each row alone (a one-token step at its position): same bits as inside the batch.
    for i in 0..tokens {
        let qi: Vec<f32> = (0..heads).flat_map(|h| q[(h * tokens + i) * hd..][..hd].to_vec()).collect();
        let mut y = vec![0f32; heads * hd];
        attention(&qi, k, v, AttnShape { tokens: 1, pos: pos + i, ..s }, scale, &mut y, 1);
        assert_eq!(bits(&y), bits(&out[i * heads * hd..(i + 1) * heads * hd]), "{what}: row {i} alone vs in a batch of {tokens}");
    }
}
