//! The few transcendental functions the model needs outside the kernels (rotary angles,
//! log-softmax), written with IEEE-754 additions, multiplications and divisions only, so they
//! give the same bits on every platform: x86-64, aarch64 and wasm32 link different libms
//! (glibc's, with FMA variants picked at run time, or Rust's port of musl's), whose results
//! differ in the last bit. They work in f64 and their callers round to f32, so they are as good
//! as a correctly rounded f32 function in all but rare cases.

use crate::sampler::exp_nonpositive;

/// ln 2 split as fdlibm does: `LN2_HI` has trailing zero bits, so `k · LN2_HI` is exact.
const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);

/// Round to nearest, ties to even, for |v| < 2⁵¹: the addition itself rounds.
#[inline]
fn round_f64(v: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 · 2⁵²
    (v + MAGIC) - MAGIC
}

/// (sin x, cos x): for |x| < 2²⁰ (rotary angles of every model with `rope_theta` ≥ 1: position
/// × frequency ≤ context length) x is reduced by the nearest multiple n of π/2 (Cody–Waite, π/2
/// in two parts; n · PIO2_1 is exact), then Taylor polynomials on |r| ≤ π/4 (truncation error <
/// 1e-22), then the quadrant n mod 4: about 1 ulp of f64, the same bits everywhere. Larger or
/// non-finite x (a config with `rope_theta` < 1) goes to the platform libm: no panic, but no
/// promise of the same bits.
pub fn sin_cos(x: f64) -> (f64, f64) {
    if !(x.abs() < 1_048_576.0) {
        return (x.sin(), x.cos());
    }
    /// The first 33 bits of π/2, and the rest.
    const PIO2_1: f64 = f64::from_bits(0x3FF9_21FB_5440_0000);
    const PIO2_1T: f64 = f64::from_bits(0x3DD0_B461_1A62_6331);
    const INV_PIO2: f64 = f64::from_bits(0x3FE4_5F30_6DC9_C883);
    let n = round_f64(x * INV_PIO2);
    let r = (x - n * PIO2_1) - n * PIO2_1T;
    let r2 = r * r;
    // sin r = r · Σ (−1)^k r^2k / (2k+1)!, cos r = Σ (−1)^k r^2k / (2k)!, Horner in r².
    let (ks, kc) = SIN_COS;
    let (mut s, mut c) = (0f64, 0f64);
    for k in (0..=10).rev() {
        s = s * r2 + ks[k];
        c = c * r2 + kc[k];
    }
    let s = s * r;
    match (n as i64) & 3 {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

/// The Taylor coefficients of [`sin_cos`]: `(−1)^k / (2k+1)!` and `(−1)^k / (2k)!`, k = 0..=10
/// (the factorials exact up to 18!, then rounded, the same on every platform).
const SIN_COS: ([f64; 11], [f64; 11]) = {
    let (mut s, mut c) = ([0f64; 11], [0f64; 11]);
    let mut fact = 1f64;
    let mut i = 0;
    while i <= 21 {
        if i > 0 {
            fact *= i as f64;
        }
        let k = i / 2;
        let v = if k % 2 == 0 { 1.0 / fact } else { -1.0 / fact };
        if i % 2 == 0 {
            c[k] = v;
        } else {
            s[k] = v;
        }
        i += 1;
    }
    (s, c)
};

/// ln x for finite x > 0: x = 2^e · m with m in [√½, √2), `ln m = 2·atanh(f)`, f = (m−1)/(m+1),
/// as a series in f² (|f| ≤ 0.172, truncation error < 1e-20). About 1 ulp of f64.
pub fn ln(x: f64) -> f64 {
    assert!(x > 0.0 && x.is_finite(), "ln: {x} is out of range");
    // Subnormals: scale into the normal range first.
    let (x, mut e) = if x < f64::MIN_POSITIVE { (x * f64::from_bits(0x4350_0000_0000_0000), -54i64) } else { (x, 0) }; // 2^54
    let bits = x.to_bits();
    e += ((bits >> 52) & 0x7FF) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let f = (m - 1.0) / (m + 1.0);
    let s = f * f;
    let mut p = 0f64;
    for k in (0..=12).rev() {
        p = p * s + 1.0 / (2 * k + 1) as f64;
    }
    let ln_m = 2.0 * f * p;
    let e = e as f64;
    e * LN2_HI + (ln_m + e * LN2_LO)
}

/// `ln Σ e^v` over the values of `logits` that are not NaN, in f64: `max + ln Σ e^(v − max)`,
/// summed in order. NaN when every value is NaN, −inf when every one is −inf.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return if logits.iter().all(|v| v.is_nan()) { f64::NAN } else { max };
    }
    let sum: f64 = logits.iter().filter(|v| !v.is_nan()).map(|&v| exp_nonpositive(v as f64 - max)).sum();
    // sum >= 1 (the largest value contributes e^0).
    max + ln(sum)
}

/// Log-softmax of each row of `[rows, n]` f32 logits: `(v − log_sum_exp(row))` rounded to f32.
pub fn log_softmax_rows(logits: &[f32], n: usize) -> Vec<f32> {
    assert!(n > 0 && logits.len().is_multiple_of(n), "log_softmax_rows: {} values in rows of {n}", logits.len());
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(n) {
        let lse = log_sum_exp(row);
        out.extend(row.iter().map(|&v| (v as f64 - lse) as f32));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// |a − b| in units of b's last place.
    fn ulps(a: f64, b: f64) -> f64 {
        let ulp = f64::from_bits(b.abs().to_bits() + 1) - b.abs();
        (a - b).abs() / ulp
    }

    #[test]
    fn sin_cos_is_within_a_few_ulp_of_libm() {
        let mut worst: f64 = 0.0;
        let mut x = -2100.0f64;
        while x < 2100.0 {
            let (s, c) = sin_cos(x);
            // Away from zeros, where libm's own ulp error dominates the comparison.
            if x.sin().abs() > 1e-3 {
                worst = worst.max(ulps(s, x.sin()));
            }
            if x.cos().abs() > 1e-3 {
                worst = worst.max(ulps(c, x.cos()));
            }
            x += 0.0137;
        }
        assert!(worst <= 4.0, "worst {worst} ulp");
        assert_eq!(sin_cos(0.0), (0.0, 1.0));
        // Out of the reduction's range (rope_theta < 1): libm, never a panic.
        assert_eq!(sin_cos(1e7), (1e7f64.sin(), 1e7f64.cos()));
        assert!(sin_cos(f64::NAN).0.is_nan() && sin_cos(f64::INFINITY).1.is_nan());
        // f32 angles near multiples of π/2 (the reduction's hard case) stay accurate.
        let near = std::f32::consts::FRAC_PI_2 * 1001.0;
        assert!((sin_cos(near as f64).1 - (near as f64).cos()).abs() < 1e-15);
    }

    #[test]
    fn ln_is_within_a_few_ulp_of_libm() {
        for &x in &[1.0, 1.5, 2.0, std::f64::consts::E, 10000.0, 51200.0, 1e-300, 5e-324, 1e300, 0.75, 1.4142135623730951] {
            assert!(ulps(ln(x), x.ln()) <= 2.0 || (x == 1.0 && ln(x) == 0.0), "ln({x}) = {} vs {}", ln(x), x.ln());
        }
        let mut x = 1.0f64;
        while x < 1e6 {
            assert!(ulps(ln(x), x.ln()) <= 2.0 || x.ln().abs() < 1e-12, "ln({x})");
            x *= 1.0371;
        }
    }

    #[test]
    fn log_softmax_rows_match_the_definition() {
        let logits = [0.0f32, 2.0, 1.0, 2.0, -f32::INFINITY, f32::NAN];
        let lse = log_sum_exp(&logits);
        let want = (1.0f64 + 2.0 * 2f64.exp() + 1f64.exp()).ln();
        assert!((lse - want).abs() < 1e-14);
        let lp = log_softmax_rows(&logits[..5], 5);
        assert_eq!(lp[4], f32::NEG_INFINITY);
        assert!((lp[1] as f64 - (2.0 - want)).abs() < 1e-6);
        assert!(log_sum_exp(&[f32::NAN]).is_nan());
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY]), f64::NEG_INFINITY);
    }
}
