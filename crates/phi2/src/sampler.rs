//! Next-token selection: a pure, seeded, allocation-free (per token) sampler with
//! Hugging Face `transformers` semantics.
//!
//! # Order of processing
//!
//! [`Sampler::sample`] applies, in this order:
//!
//! 1. **Repetition penalty** (HF / CTRL): for every *distinct* token id in `history`,
//!    `logit < 0 ? logit * p : logit / p`.
//! 2. **Presence / frequency penalties** (OpenAI): for every token id seen `count > 0` times in
//!    `history`, `logit -= frequency * count`, then `logit -= presence`.
//! 3. **Logit bias**: `logits[id] += bias` for every `(id, bias)` entry, in list order
//!    (a bias of `-inf` bans the token).
//! 4. **Masking**: ids `>= allowed` are set to `-inf` (Phi-2's padding rows are never produced).
//!    NaN logits are treated as `-inf` from here on.
//! 5. **Greedy** when `!do_sample || temperature == 0`: argmax, ties go to the lowest id.
//!    Steps 6–10 and the RNG are skipped.
//! 6. **Temperature**: logits are divided by `temperature` (done in f64 on the candidate list,
//!    not in place).
//! 7. **top_k**: keep the `k` highest logits. Ties are broken by lowest id, so exactly `k`
//!    candidates survive (HF keeps every token tied with the k-th; with this rule `top_k = 1` is
//!    always identical to greedy).
//! 8. **top_p** (HF nucleus): keep the smallest set of highest-probability tokens whose
//!    cumulative probability is `>= top_p` (always at least one). Cumulative mass within `1e-6` of
//!    `top_p` counts as reached, absorbing f32/f64 rounding (probabilities 0.5/0.3/0.2 with
//!    `top_p = 0.5` keep exactly one token, as in HF).
//! 9. **min_p**: keep tokens whose probability is `>= min_p * max_probability`.
//! 10. **Renormalise and draw** one uniform number from the RNG.
//!
//! On return `logits` holds the result of steps 1–4 (penalised, biased, masked).
//!
//! # Determinism
//!
//! The same params, seed, logits and history give the same token sequence on every platform
//! (x86-64, aarch64, wasm32): the RNG is xoshiro256** seeded through SplitMix64 (no `rand`), a
//! uniform f64 in `[0, 1)` is built from 53 random bits, `exp` is computed by this module with
//! plain IEEE-754 arithmetic (not the platform libm), candidates are ordered by
//! `(logit desc, id asc)` and probabilities are accumulated in f64 in that order. Every sampled
//! token consumes exactly one RNG draw; greedy selection consumes none.
//!
//! # Cost
//!
//! `sample` never allocates: the per-id count buffer (length `vocab`) and the candidate buffer
//! (capacity `allowed`) are allocated once by [`Sampler::new`]. Penalty counting is
//! O(history): only the ids touched are reset. With `top_k` set, candidates are partitioned with
//! `select_nth_unstable_by` before sorting the `k` survivors.

use crate::error::{Error, Result};

/// Tolerance on the cumulative probability compared against `top_p`.
const TOP_P_TOLERANCE: f64 = 1e-6;

/// [`exp_nonpositive`] is 0 below this.
const EXP_UNDERFLOW: f64 = -745.2;

/// Sampling options. [`Default`] is greedy decoding with every processor off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// `false` => greedy argmax whatever `temperature` says (HF semantics). Default `false`.
    pub do_sample: bool,
    /// Softmax temperature, a finite number `> 0`; `0` also means greedy. Default `1.0`.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` = off.
    pub top_k: usize,
    /// Nucleus sampling mass in `(0, 1]`; `1` = off.
    pub top_p: f32,
    /// Minimum probability relative to the most likely token, in `[0, 1)`; `0` = off.
    pub min_p: f32,
    /// HF/CTRL repetition penalty, finite and `> 0`; `1` = off.
    pub repetition_penalty: f32,
    /// OpenAI presence penalty (finite, typically `[-2, 2]`); `0` = off.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty (finite); `0` = off.
    pub frequency_penalty: f32,
    /// `(token id, bias)` added to the logits; `-inf` bans a token. Ids must be `< vocab`.
    pub logit_bias: Vec<(u32, f32)>,
    /// RNG seed. Default `0`.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            do_sample: false,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Whether these params select greedy argmax decoding (`!do_sample || temperature == 0`).
    pub fn is_greedy(&self) -> bool {
        !self.do_sample || self.temperature == 0.0
    }

    /// Checks every field; `vocab` is the logits length (bounds `logit_bias` ids).
    /// The error names the offending field.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(Error::invalid(
                "temperature",
                format!("must be a finite number > 0 (or 0 for greedy), got {t}"),
            ));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(Error::invalid("top_p", format!("must be a number in (0, 1], got {p}")));
        }
        let m = self.min_p;
        if !(0.0..1.0).contains(&m) {
            return Err(Error::invalid("min_p", format!("must be a number in [0, 1), got {m}")));
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0) {
            return Err(Error::invalid(
                "repetition_penalty",
                format!("must be a finite number > 0, got {r}"),
            ));
        }
        if !self.presence_penalty.is_finite() {
            return Err(Error::invalid(
                "presence_penalty",
                format!("must be a finite number, got {}", self.presence_penalty),
            ));
        }
        if !self.frequency_penalty.is_finite() {
            return Err(Error::invalid(
                "frequency_penalty",
                format!("must be a finite number, got {}", self.frequency_penalty),
            ));
        }
        for &(id, bias) in &self.logit_bias {
            if id as usize >= vocab {
                return Err(Error::invalid(
                    "logit_bias",
                    format!("token id {id} is out of range for a vocabulary of {vocab} tokens"),
                ));
            }
            if !(bias.is_finite() || bias == f32::NEG_INFINITY) {
                return Err(Error::invalid(
                    "logit_bias",
                    format!(
                        "bias for token id {id} must be a finite number or -inf (ban), got {bias}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A surviving candidate: its sort key and unnormalised weight `exp((logit - max) / temperature)`.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// [`sort_key`]: ascending order is `(logit desc, id asc)`.
    key: u64,
    w: f64,
}

impl Candidate {
    fn id(&self) -> u32 {
        self.key as u32
    }
}

/// A `u64` whose ascending order is `(logit desc, id asc)`, so candidates sort on plain integer
/// keys (unique, hence the same order from any correct sort). `logit` is never NaN; `-0.0` is
/// folded into `+0.0` so that they tie, as in greedy argmax.
fn sort_key(logit: f32, id: u32) -> u64 {
    let bits = (logit + 0.0).to_bits(); // -0.0 + 0.0 == +0.0
                                        // Monotone map of f32 onto u32 (negatives flipped), then inverted for descending order.
    let ordered = if bits & 0x8000_0000 != 0 { !bits } else { bits | 0x8000_0000 };
    (u64::from(!ordered) << 32) | u64::from(id)
}

/// Seeded next-token sampler. Owns its params, RNG state and scratch buffers.
#[derive(Clone)]
pub struct Sampler {
    params: SamplingParams,
    vocab: usize,
    allowed: usize,
    rng: Xoshiro256StarStar,
    /// Occurrences per id in the current history; all zero between calls.
    counts: Vec<u32>,
    /// Candidate scratch, capacity `allowed`.
    cands: Vec<Candidate>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("params", &self.params)
            .field("vocab", &self.vocab)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// `allowed`: ids `>= allowed` are never produced (Phi-2: vocab rows 50295..51200 are
    /// padding; `allowed = 50295` while logits have 51200 entries). `vocab` = logits length.
    pub fn new(params: SamplingParams, vocab: usize, allowed: usize) -> Result<Self> {
        if vocab == 0 || vocab > u32::MAX as usize {
            return Err(Error::invalid(
                "vocab",
                format!("must be between 1 and {} tokens, got {vocab}", u32::MAX),
            ));
        }
        if allowed == 0 || allowed > vocab {
            return Err(Error::invalid(
                "allowed",
                format!("must be between 1 and vocab ({vocab}), got {allowed}"),
            ));
        }
        params.validate(vocab)?;
        let rng = Xoshiro256StarStar::seed_from_u64(params.seed);
        Ok(Sampler {
            params,
            vocab,
            allowed,
            rng,
            counts: vec![0; vocab],
            cands: Vec::with_capacity(allowed),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Logits length this sampler expects.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Ids `>= allowed` are never produced.
    pub fn allowed(&self) -> usize {
        self.allowed
    }

    /// Picks the next token (see the module docs for the order of processing). `logits` has
    /// `vocab` entries and is modified in place. `history` = prompt + generated so far
    /// (penalties count over all of it, as HF does); ids `>= vocab` in it are ignored.
    ///
    /// Errors only if `logits.len() != vocab`, or if every candidate is `-inf`/NaN.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32> {
        if logits.len() != self.vocab {
            return Err(Error::invalid(
                "logits",
                format!(
                    "expected {} entries (the vocabulary size), got {}",
                    self.vocab,
                    logits.len()
                ),
            ));
        }
        self.apply_penalties(logits, history);
        for &(id, bias) in &self.params.logit_bias {
            logits[id as usize] += bias; // ids < vocab: checked by validate()
        }
        for l in &mut logits[self.allowed..] {
            *l = f32::NEG_INFINITY;
        }
        if self.params.is_greedy() {
            self.argmax(logits)
        } else {
            self.draw(logits)
        }
    }

    /// Steps 1–2. Counts every id in `history`, applies the penalties once per distinct id on
    /// the second pass and zeroes its count there, leaving `counts` all zero again.
    fn apply_penalties(&mut self, logits: &mut [f32], history: &[u32]) {
        let rep = self.params.repetition_penalty;
        let presence = self.params.presence_penalty;
        let frequency = self.params.frequency_penalty;
        if history.is_empty() || (rep == 1.0 && presence == 0.0 && frequency == 0.0) {
            return;
        }
        for &t in history {
            if let Some(c) = self.counts.get_mut(t as usize) {
                *c = c.saturating_add(1);
            }
        }
        for &t in history {
            let i = t as usize;
            let Some(c) = self.counts.get_mut(i) else { continue };
            let count = *c;
            if count == 0 {
                continue; // already handled (duplicate id)
            }
            *c = 0;
            let mut l = logits[i];
            if rep != 1.0 {
                l = if l < 0.0 { l * rep } else { l / rep };
            }
            if frequency != 0.0 {
                l -= frequency * count as f32;
            }
            if presence != 0.0 {
                l -= presence;
            }
            logits[i] = l;
        }
    }

    fn all_masked(&self) -> Error {
        Error::invalid(
            "logits",
            format!(
                "every candidate logit (ids < {}) is -inf or NaN after penalties, logit_bias and \
                 masking; nothing can be sampled",
                self.allowed
            ),
        )
    }

    /// Greedy: highest logit among ids `< allowed`, ties to the lowest id, NaN skipped.
    fn argmax(&self, logits: &[f32]) -> Result<u32> {
        let mut best: Option<(usize, f32)> = None;
        for (i, &l) in logits[..self.allowed].iter().enumerate() {
            if l.is_nan() || l == f32::NEG_INFINITY {
                continue;
            }
            match best {
                Some((_, b)) if l <= b => {}
                _ => best = Some((i, l)),
            }
        }
        best.map(|(i, _)| i as u32).ok_or_else(|| self.all_masked())
    }

    /// Steps 6–10.
    fn draw(&mut self, logits: &[f32]) -> Result<u32> {
        let total = self.candidates(logits)?;
        let u = self.rng.next_f64() * total;
        let mut cum = 0.0;
        for c in self.cands.iter() {
            cum += c.w;
            if u < cum {
                return Ok(c.id());
            }
        }
        // Only reachable through rounding when u lands on the very end of the last interval.
        Ok(self.cands.last().map(|c| c.id()).expect("the maximum logit is always a candidate"))
    }

    /// Steps 6–9: fills `self.cands` with the surviving candidates, ordered `(logit desc, id
    /// asc)`, each with its unnormalised weight; returns the sum of the weights (their
    /// probabilities are `w / total`).
    fn candidates(&mut self, logits: &[f32]) -> Result<f64> {
        let logits = &logits[..self.allowed];
        let mut max = f32::NEG_INFINITY;
        for &l in logits {
            if l > max {
                max = l; // NaN never compares greater
            }
        }
        if max == f32::NEG_INFINITY {
            return Err(self.all_masked());
        }

        // Candidates, first holding the scaled logit `(l - max) / temperature <= 0` in `w`.
        // Those whose weight would underflow to zero are dropped: they can never be drawn nor
        // move a cumulative sum. The maximum always ends up with weight exactly 1.
        let temperature = self.params.temperature as f64;
        let cands = &mut self.cands;
        cands.clear();
        for (i, &l) in logits.iter().enumerate() {
            if l.is_nan() || l == f32::NEG_INFINITY {
                continue;
            }
            let scaled = if max == f32::INFINITY {
                if l == f32::INFINITY {
                    0.0
                } else {
                    continue;
                }
            } else {
                (l as f64 - max as f64) / temperature
            };
            if scaled >= EXP_UNDERFLOW {
                cands.push(Candidate { key: sort_key(l, i as u32), w: scaled });
            }
        }

        let k = self.params.top_k;
        if k > 0 && k < cands.len() {
            cands.select_nth_unstable_by_key(k - 1, |c| c.key);
            cands.truncate(k);
        }
        cands.sort_unstable_by_key(|c| c.key);
        for c in cands.iter_mut() {
            c.w = exp_nonpositive(c.w);
        }

        let top_p = self.params.top_p;
        if top_p < 1.0 {
            let total: f64 = cands.iter().map(|c| c.w).sum();
            let target = (top_p as f64 - TOP_P_TOLERANCE) * total;
            let mut cum = 0.0;
            let mut keep = cands.len();
            for (i, c) in cands.iter().enumerate() {
                cum += c.w;
                if cum >= target {
                    keep = i + 1;
                    break;
                }
            }
            cands.truncate(keep.max(1));
        }

        let min_p = self.params.min_p;
        if min_p > 0.0 {
            let threshold = min_p as f64 * cands[0].w;
            let keep = cands.iter().position(|c| c.w < threshold).unwrap_or(cands.len());
            cands.truncate(keep.max(1));
        }

        Ok(cands.iter().map(|c| c.w).sum())
    }

    /// Speculative verification of one drafted token: the token to emit at this position and
    /// whether it is `draft`. `logits` and `history` are as for [`Sampler::sample`] (the history
    /// up to this position), and the same steps 1–4 are applied.
    ///
    /// - Greedy: the argmax (exactly what [`Sampler::sample`] returns); accepted iff it is `draft`.
    ///   No RNG draw.
    /// - Sampling: speculative sampling for a deterministic draft (q = δ_draft). With `p` the
    ///   distribution `sample` would draw from (after temperature, top_k, top_p, min_p), `draft`
    ///   is accepted with probability `p(draft)`; otherwise a token is drawn from `p` with
    ///   `draft` removed and renormalised. The emitted token is therefore distributed exactly as
    ///   `p`: `P(draft) = p(draft)`, `P(y) = (1 − p(draft)) · p(y) / (1 − p(draft)) = p(y)`.
    ///   One RNG draw when accepted, two when rejected (so the token sequence for a seed differs
    ///   from plain sampling; its distribution does not).
    pub fn sample_draft(&mut self, logits: &mut [f32], history: &[u32], draft: u32) -> Result<(u32, bool)> {
        if self.params.is_greedy() {
            let t = self.sample(logits, history)?;
            return Ok((t, t == draft));
        }
        if logits.len() != self.vocab {
            return Err(Error::invalid(
                "logits",
                format!("expected {} entries (the vocabulary size), got {}", self.vocab, logits.len()),
            ));
        }
        self.apply_penalties(logits, history);
        for &(id, bias) in &self.params.logit_bias {
            logits[id as usize] += bias;
        }
        for l in &mut logits[self.allowed..] {
            *l = f32::NEG_INFINITY;
        }
        let total = self.candidates(logits)?;
        let w_draft = self.cands.iter().find(|c| c.id() == draft).map_or(0.0, |c| c.w);
        if self.rng.next_f64() * total < w_draft {
            return Ok((draft, true));
        }
        // Residual distribution: p without the draft token, renormalised (summed in the order
        // it is walked, so the last interval ends exactly at `rest`).
        let rest: f64 = self.cands.iter().filter(|c| c.id() != draft).map(|c| c.w).sum();
        let u = self.rng.next_f64() * rest;
        let mut cum = 0.0;
        let mut last = None;
        for c in self.cands.iter().filter(|c| c.id() != draft) {
            cum += c.w;
            last = Some(c.id());
            if u < cum {
                return Ok((c.id(), false));
            }
        }
        // Rounding at the very end of the last interval; or the draft was the only candidate
        // (p(draft) = 1, so it was accepted above unless its weight underflowed).
        Ok((last.unwrap_or(draft), last.is_none()))
    }
}

/// `e^x` for `x <= 0` (or -inf) using only IEEE-754 add/mul/div, so the result is bit-identical
/// on every platform (the platform libm's `exp` may differ in the last bit). Error < 2 ulp.
pub(crate) fn exp_nonpositive(x: f64) -> f64 {
    debug_assert!(x.is_nan() || x <= 0.0);
    if x.is_nan() || x < EXP_UNDERFLOW {
        return 0.0; // below half the smallest subnormal, or -inf / NaN
    }
    // fdlibm's split of ln 2: LN2_HI has trailing zero bits, so k * LN2_HI is exact.
    const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000); // 6.93147180369123816490e-01
    const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76); // 1.90821492927058770002e-10
    const INV_LN2: f64 = f64::from_bits(0x3FF7_1547_652B_82FE); // 1.44269504088896338700e+00
                                                                // k = round(x / ln 2) (x <= 0, so truncating x/ln2 - 0.5 rounds), |r| <= ~0.35.
    let k = (x * INV_LN2 - 0.5) as i32;
    let kf = k as f64;
    let r = (x - kf * LN2_HI) - kf * LN2_LO;
    // Taylor series to degree 13: truncation error < 1e-17 on |r| <= 0.35.
    let mut p = 1.0 / 6_227_020_800.0; // 1/13!
    for &c in &[
        1.0 / 479_001_600.0, // 1/12!
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        1.0 / 2.0,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    // Scale by 2^k, k in [-1075, 0]; in two steps when 2^k itself is subnormal.
    if k >= -1022 {
        p * f64::from_bits(((k + 1023) as u64) << 52)
    } else {
        p * f64::from_bits(1u64 << 52) * f64::from_bits(((k + 1022 + 1023) as u64) << 52)
    }
}

/// SplitMix64 (Vigna), used only to expand a 64-bit seed into xoshiro's state.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** 1.0 (Blackman & Vigna).
#[derive(Debug, Clone)]
struct Xoshiro256StarStar {
    s: [u64; 4],
}

impl Xoshiro256StarStar {
    fn seed_from_u64(seed: u64) -> Self {
        let mut sm = seed;
        // Four consecutive SplitMix64 outputs are never all zero (it is a bijection).
        let s =
            [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)];
        Xoshiro256StarStar { s }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` from the top 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG_INF: f32 = f32::NEG_INFINITY;

    fn sampling(temperature: f32, seed: u64) -> SamplingParams {
        SamplingParams { do_sample: true, temperature, seed, ..SamplingParams::default() }
    }

    /// Draws `n` tokens from a fresh copy of `logits` each time; returns per-id counts.
    fn histogram(params: SamplingParams, logits: &[f32], allowed: usize, n: usize) -> Vec<usize> {
        let mut s = Sampler::new(params, logits.len(), allowed).unwrap();
        let mut hist = vec![0usize; logits.len()];
        let mut buf = logits.to_vec();
        for _ in 0..n {
            buf.copy_from_slice(logits);
            hist[s.sample(&mut buf, &[]).unwrap() as usize] += 1;
        }
        hist
    }

    /// Reproducible pseudo-random logits for tests (independent LCG, not the sampler's RNG).
    fn test_logits(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 20.0 - 10.0
            })
            .collect()
    }

    fn naive_argmax(logits: &[f32]) -> u32 {
        let mut best = 0;
        for i in 1..logits.len() {
            if logits[i] > logits[best] {
                best = i;
            }
        }
        best as u32
    }

    fn invalid_name(e: &Error) -> &'static str {
        match e {
            Error::InvalidArgument { name, .. } => name,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn default_is_greedy_and_valid() {
        let p = SamplingParams::default();
        assert!(!p.do_sample);
        assert_eq!(p.temperature, 1.0);
        assert_eq!((p.top_k, p.top_p, p.min_p), (0, 1.0, 0.0));
        assert_eq!(
            (p.repetition_penalty, p.presence_penalty, p.frequency_penalty),
            (1.0, 0.0, 0.0)
        );
        assert!(p.logit_bias.is_empty());
        assert_eq!(p.seed, 0);
        assert!(p.is_greedy());
        p.validate(10).unwrap();
    }

    #[test]
    fn greedy_picks_argmax_below_allowed() {
        // Padding id 7 has the largest logit but is never allowed.
        let logits = [0.5, 3.0, -1.0, 2.9, 3.5, 1.0, 0.0, 100.0];
        let mut s = Sampler::new(SamplingParams::default(), 8, 6).unwrap();
        let mut buf = logits;
        assert_eq!(s.sample(&mut buf, &[]).unwrap(), 4);
        assert_eq!(&buf[6..], &[NEG_INF, NEG_INF]);
        assert_eq!(&buf[..6], &logits[..6]);

        for seed in 0..5 {
            let l = test_logits(1000, seed);
            let mut s = Sampler::new(SamplingParams::default(), 1000, 900).unwrap();
            let mut buf = l.clone();
            assert_eq!(s.sample(&mut buf, &[]).unwrap(), naive_argmax(&l[..900]));
        }
    }

    #[test]
    fn greedy_ties_go_to_lowest_id_and_nan_is_skipped() {
        let mut s = Sampler::new(SamplingParams::default(), 5, 5).unwrap();
        assert_eq!(s.sample(&mut [1.0, 2.0, 0.0, 2.0, 2.0], &[]).unwrap(), 1);
        assert_eq!(s.sample(&mut [-0.0, 0.0, -1.0, 0.0, -0.0], &[]).unwrap(), 0);
        assert_eq!(s.sample(&mut [f32::NAN, 1.0, 0.0, 1.0, f32::NAN], &[]).unwrap(), 1);
    }

    #[test]
    fn do_sample_false_ignores_temperature_and_filters() {
        let logits = test_logits(64, 3);
        let want = naive_argmax(&logits);
        for seed in 0..20 {
            let p = SamplingParams {
                do_sample: false,
                temperature: 50.0,
                top_k: 10,
                top_p: 0.5,
                min_p: 0.1,
                seed,
                ..SamplingParams::default()
            };
            let mut s = Sampler::new(p, 64, 64).unwrap();
            for _ in 0..5 {
                assert_eq!(s.sample(&mut logits.clone(), &[]).unwrap(), want);
            }
        }
    }

    #[test]
    fn temperature_zero_is_greedy() {
        let logits = test_logits(64, 4);
        let want = naive_argmax(&logits);
        for seed in 0..20 {
            let mut s = Sampler::new(sampling(0.0, seed), 64, 64).unwrap();
            assert!(s.params().is_greedy());
            for _ in 0..5 {
                assert_eq!(s.sample(&mut logits.clone(), &[]).unwrap(), want);
            }
        }
    }

    #[test]
    fn repetition_penalty_matches_hf_both_signs() {
        let p = SamplingParams { repetition_penalty: 2.0, ..SamplingParams::default() };
        let mut s = Sampler::new(p, 3, 3).unwrap();
        let mut l = [2.0, -2.0, 1.0];
        // 2/2 = 1 and 1 tie; lowest id wins.
        assert_eq!(s.sample(&mut l, &[0, 1]).unwrap(), 0);
        assert_eq!(l, [1.0, -4.0, 1.0]);
        // Duplicates in history are penalised once (distinct tokens, like HF's gather/scatter).
        let mut l = [2.0, -2.0, 1.0];
        s.sample(&mut l, &[0, 1, 0, 0, 1]).unwrap();
        assert_eq!(l, [1.0, -4.0, 1.0]);

        // p < 1 boosts.
        let p = SamplingParams { repetition_penalty: 0.5, ..SamplingParams::default() };
        let mut s = Sampler::new(p, 3, 3).unwrap();
        let mut l = [2.0, -2.0, 1.0];
        assert_eq!(s.sample(&mut l, &[1, 0]).unwrap(), 0);
        assert_eq!(l, [4.0, -1.0, 1.0]);
    }

    #[test]
    fn presence_and_frequency_penalties() {
        let p = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(p, 4, 4).unwrap();
        let mut l = [1.0, 1.0, 1.0, 1.0];
        // id 0 seen 3x: 1 - 0.75 - 0.5; id 1 seen once: 1 - 0.25 - 0.5.
        assert_eq!(s.sample(&mut l, &[0, 0, 1, 0]).unwrap(), 2);
        assert_eq!(l, [-0.25, 0.25, 1.0, 1.0]);

        // Negative presence penalty encourages a seen token.
        let p = SamplingParams { presence_penalty: -1.0, ..SamplingParams::default() };
        let mut s = Sampler::new(p, 3, 3).unwrap();
        assert_eq!(s.sample(&mut [0.8, 0.5, 0.0], &[2]).unwrap(), 2);
    }

    #[test]
    fn repetition_penalty_applies_before_presence() {
        // rep first: 4/2 - 1 = 1; the other order would give (4-1)/2 = 1.5.
        let p = SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 1.0,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(p, 2, 2).unwrap();
        let mut l = [4.0, 0.0];
        s.sample(&mut l, &[0]).unwrap();
        assert_eq!(l, [1.0, 0.0]);
    }

    #[test]
    fn penalty_counts_do_not_leak_between_calls() {
        let p = SamplingParams { frequency_penalty: 1.0, ..SamplingParams::default() };
        let mut s = Sampler::new(p, 4, 4).unwrap();
        let mut l = [0.0; 4];
        s.sample(&mut l, &[3, 3, 3, 9999]).unwrap(); // out-of-range id ignored
        assert_eq!(l, [0.0, 0.0, 0.0, -3.0]);
        let mut l = [0.0; 4];
        s.sample(&mut l, &[]).unwrap();
        assert_eq!(l, [0.0; 4]);
        let mut l = [0.0; 4];
        s.sample(&mut l, &[1]).unwrap();
        assert_eq!(l, [0.0, -1.0, 0.0, 0.0]);
    }

    #[test]
    fn logit_bias_shifts_and_bans() {
        let p = SamplingParams { logit_bias: vec![(2, 5.0)], ..SamplingParams::default() };
        let mut s = Sampler::new(p, 3, 3).unwrap();
        let mut l = [3.0, 1.0, -1.0];
        assert_eq!(s.sample(&mut l, &[]).unwrap(), 2);
        assert_eq!(l, [3.0, 1.0, 4.0]);

        // -inf bans the argmax in greedy mode...
        let p = SamplingParams { logit_bias: vec![(0, NEG_INF)], ..SamplingParams::default() };
        let mut s = Sampler::new(p, 3, 3).unwrap();
        assert_eq!(s.sample(&mut [3.0, 1.0, 2.0], &[]).unwrap(), 2);
        // ...and in sampling mode, over many draws.
        let p = SamplingParams { logit_bias: vec![(1, NEG_INF)], ..sampling(1.0, 9) };
        let h = histogram(p, &[0.0, 5.0, 0.0], 3, 2000);
        assert_eq!(h[1], 0);
        assert!(h[0] > 0 && h[2] > 0);

        // Banning everything is an error.
        let p = SamplingParams {
            logit_bias: vec![(0, NEG_INF), (1, NEG_INF)],
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(p, 3, 2).unwrap();
        let e = s.sample(&mut [1.0, 2.0, 3.0], &[]).unwrap_err();
        assert!(e.to_string().contains("-inf"), "{e}");
    }

    #[test]
    fn top_k_one_equals_greedy() {
        for seed in 0..30 {
            let logits = test_logits(500, 100 + seed);
            let want = naive_argmax(&logits[..450]);
            let p = SamplingParams { top_k: 1, ..sampling(1.5, seed) };
            let mut s = Sampler::new(p, 500, 450).unwrap();
            for _ in 0..3 {
                assert_eq!(s.sample(&mut logits.clone(), &[]).unwrap(), want);
            }
        }
        // Ties: lowest id, like greedy.
        let p = SamplingParams { top_k: 1, ..sampling(1.0, 1) };
        let h = histogram(p, &[0.0, 2.0, 2.0, 2.0], 4, 200);
        assert_eq!(h, vec![0, 200, 0, 0]);
    }

    #[test]
    fn top_k_keeps_the_k_best() {
        let p = SamplingParams { top_k: 2, ..sampling(1.0, 5) };
        let h = histogram(p, &[0.0, 1.0, 2.0, 3.0, 4.0], 5, 2000);
        assert_eq!(h[..3], [0, 0, 0]);
        assert!(h[3] > 0 && h[4] > 0);
        // Exactly k survive ties, lowest ids first.
        let p = SamplingParams { top_k: 2, ..sampling(1.0, 5) };
        let h = histogram(p, &[1.0; 4], 4, 2000);
        assert_eq!(h[2..], [0, 0]);
        assert!(h[0] > 0 && h[1] > 0);
        // k larger than the candidate set is a no-op.
        let p = SamplingParams { top_k: 100, ..sampling(1.0, 5) };
        let h = histogram(p, &[0.0; 4], 4, 2000);
        assert!(h.iter().all(|&c| c > 0));
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let h = histogram(SamplingParams { top_p: 0.6, ..sampling(1.0, 11) }, &logits, 3, 2000);
        assert_eq!(h[2], 0, "{h:?}");
        assert!(h[0] > 0 && h[1] > 0, "{h:?}");
        // Renormalised over {0, 1}: 0.5/0.8 = 0.625.
        assert!((h[0] as f64 / 2000.0 - 0.625).abs() < 0.05, "{h:?}");

        let h = histogram(SamplingParams { top_p: 0.5, ..sampling(1.0, 11) }, &logits, 3, 2000);
        assert_eq!(h, vec![2000, 0, 0]);

        let h = histogram(SamplingParams { top_p: 0.85, ..sampling(1.0, 11) }, &logits, 3, 2000);
        assert!(h.iter().all(|&c| c > 0), "{h:?}");

        // A tiny top_p still keeps one token.
        let h = histogram(SamplingParams { top_p: 1e-9, ..sampling(1.0, 11) }, &logits, 3, 100);
        assert_eq!(h, vec![100, 0, 0]);
    }

    #[test]
    fn top_p_applies_after_top_k_renormalisation() {
        // probs 0.4, 0.35, 0.25. top_k = 2 renormalises to 0.533, 0.467: top_p 0.5 then keeps
        // only id 0; without top_k, top_p 0.5 keeps {0, 1}.
        let logits = [0.4f32.ln(), 0.35f32.ln(), 0.25f32.ln()];
        let h = histogram(SamplingParams { top_p: 0.5, ..sampling(1.0, 2) }, &logits, 3, 1000);
        assert!(h[0] > 0 && h[1] > 0 && h[2] == 0, "{h:?}");
        let p = SamplingParams { top_k: 2, top_p: 0.5, ..sampling(1.0, 2) };
        assert_eq!(histogram(p, &logits, 3, 1000), vec![1000, 0, 0]);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // probs 0.5, 0.3, 0.15, 0.05; min_p 0.5 keeps prob >= 0.25.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];
        let h = histogram(SamplingParams { min_p: 0.5, ..sampling(1.0, 3) }, &logits, 4, 2000);
        assert_eq!(h[2..], [0, 0], "{h:?}");
        assert!(h[0] > 0 && h[1] > 0, "{h:?}");
        // min_p 0.2 keeps prob >= 0.1: {0, 1, 2}.
        let h = histogram(SamplingParams { min_p: 0.2, ..sampling(1.0, 3) }, &logits, 4, 4000);
        assert_eq!(h[3], 0, "{h:?}");
        assert!(h[..3].iter().all(|&c| c > 0), "{h:?}");
    }

    #[test]
    fn same_seed_same_sequence_different_seed_differs() {
        let logits = [0.0f32; 100];
        let run = |seed| {
            let mut s = Sampler::new(sampling(1.0, seed), 100, 100).unwrap();
            (0..50).map(|_| s.sample(&mut logits.clone(), &[]).unwrap()).collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        // Not degenerate: flat logits give many distinct tokens.
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 20, "{a:?}");
    }

    #[test]
    fn empirical_distribution_matches_softmax() {
        let logits = [0.0, 2f32.ln(), 3f32.ln()];
        let n = 20000;
        let h = histogram(sampling(1.0, 12345), &logits, 3, n);
        for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
            let got = h[i] as f64 / n as f64;
            assert!((got - want).abs() < 0.02, "id {i}: {got} vs {want} ({h:?})");
        }
    }

    #[test]
    fn draw_is_the_documented_inverse_cdf() {
        // Candidates in (logit desc, id asc) order: id 2 (1/2), id 1 (1/3), id 0 (1/6); one
        // uniform per token from xoshiro256** seeded with `seed`.
        let logits = [0.0, 2f32.ln(), 3f32.ln()];
        let seed = 2024;
        let mut rng = Xoshiro256StarStar::seed_from_u64(seed);
        let mut s = Sampler::new(sampling(1.0, seed), 3, 3).unwrap();
        for _ in 0..2000 {
            let u = rng.next_f64();
            let want = if u < 0.5 {
                2
            } else if u < 5.0 / 6.0 {
                1
            } else {
                0
            };
            if (u - 0.5).abs() < 1e-6 || (u - 5.0 / 6.0).abs() < 1e-6 {
                s.sample(&mut logits.clone(), &[]).unwrap(); // too close to call
                continue;
            }
            assert_eq!(s.sample(&mut logits.clone(), &[]).unwrap(), want, "u = {u}");
        }
    }

    #[test]
    fn temperature_scales_logits() {
        // softmax([0, ln 4] / 2) = softmax([0, ln 2]) = [1/3, 2/3].
        let n = 20000;
        let h = histogram(sampling(2.0, 77), &[0.0, 4f32.ln()], 2, n);
        let got = h[0] as f64 / n as f64;
        assert!((got - 1.0 / 3.0).abs() < 0.02, "{h:?}");
        // Very low temperature concentrates on the argmax.
        let h = histogram(sampling(1e-3, 77), &[0.0, 0.5, 0.1], 3, 500);
        assert_eq!(h, vec![0, 500, 0]);
    }

    #[test]
    fn sampling_respects_allowed_and_nan() {
        let mut logits = vec![0.0f32; 51200];
        logits[51000] = 50.0; // huge padding logit
        logits[3] = f32::NAN;
        let p = SamplingParams { top_k: 40, top_p: 0.9, ..sampling(1.0, 1) };
        let mut s = Sampler::new(p, 51200, 50295).unwrap();
        for _ in 0..200 {
            let t = s.sample(&mut logits.clone(), &[]).unwrap();
            assert!(t < 50295 && t != 3, "{t}");
        }
        let h = histogram(sampling(1.0, 4), &[f32::NAN, 0.0, 0.0], 3, 500);
        assert_eq!(h[0], 0);
    }

    #[test]
    fn positive_infinity_logits_share_all_mass() {
        let h = histogram(sampling(1.0, 6), &[f32::INFINITY, 1e30, f32::INFINITY], 3, 1000);
        assert_eq!(h[1], 0);
        assert!(h[0] > 0 && h[2] > 0);
    }

    #[test]
    fn validate_rejects_each_bad_field_by_name() {
        let d = SamplingParams::default;
        let cases: Vec<(SamplingParams, &str)> = vec![
            (SamplingParams { temperature: f32::NAN, ..d() }, "temperature"),
            (SamplingParams { temperature: -0.5, ..d() }, "temperature"),
            (SamplingParams { temperature: f32::INFINITY, ..d() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..d() }, "top_p"),
            (SamplingParams { top_p: 1.01, ..d() }, "top_p"),
            (SamplingParams { top_p: f32::NAN, ..d() }, "top_p"),
            (SamplingParams { min_p: 1.0, ..d() }, "min_p"),
            (SamplingParams { min_p: -0.1, ..d() }, "min_p"),
            (SamplingParams { min_p: f32::NAN, ..d() }, "min_p"),
            (SamplingParams { repetition_penalty: 0.0, ..d() }, "repetition_penalty"),
            (SamplingParams { repetition_penalty: -1.0, ..d() }, "repetition_penalty"),
            (SamplingParams { repetition_penalty: f32::NAN, ..d() }, "repetition_penalty"),
            (SamplingParams { repetition_penalty: f32::INFINITY, ..d() }, "repetition_penalty"),
            (SamplingParams { presence_penalty: f32::NAN, ..d() }, "presence_penalty"),
            (SamplingParams { presence_penalty: f32::NEG_INFINITY, ..d() }, "presence_penalty"),
            (SamplingParams { frequency_penalty: f32::NAN, ..d() }, "frequency_penalty"),
            (SamplingParams { frequency_penalty: f32::INFINITY, ..d() }, "frequency_penalty"),
            (SamplingParams { logit_bias: vec![(1, 1.0), (10, 1.0)], ..d() }, "logit_bias"),
            (SamplingParams { logit_bias: vec![(1, f32::NAN)], ..d() }, "logit_bias"),
            (SamplingParams { logit_bias: vec![(1, f32::INFINITY)], ..d() }, "logit_bias"),
        ];
        for (p, field) in cases {
            let e = p.validate(10).unwrap_err();
            assert_eq!(invalid_name(&e), field, "{p:?}");
            assert!(e.to_string().contains(field), "{e}");
            assert_eq!(e.code(), "E_INVALID_ARGUMENT");
            // Sampler::new validates too.
            assert_eq!(invalid_name(&Sampler::new(p, 10, 10).unwrap_err()), field);
        }
        let e = SamplingParams { logit_bias: vec![(10, 1.0)], ..d() }.validate(10).unwrap_err();
        assert!(e.to_string().contains("10"), "{e}");
        let e = SamplingParams { temperature: f32::NAN, ..d() }.validate(10).unwrap_err();
        assert!(e.to_string().contains("NaN"), "{e}");

        // Boundary values that are valid.
        let ok = SamplingParams {
            do_sample: true,
            temperature: 0.0,
            top_k: usize::MAX,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1e-3,
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            logit_bias: vec![(9, NEG_INF), (0, -100.0)],
            seed: u64::MAX,
        };
        ok.validate(10).unwrap();
    }

    #[test]
    fn new_rejects_bad_sizes() {
        let d = SamplingParams::default;
        assert_eq!(invalid_name(&Sampler::new(d(), 0, 0).unwrap_err()), "vocab");
        assert_eq!(invalid_name(&Sampler::new(d(), 10, 0).unwrap_err()), "allowed");
        assert_eq!(invalid_name(&Sampler::new(d(), 10, 11).unwrap_err()), "allowed");
        let s = Sampler::new(d(), 10, 7).unwrap();
        assert_eq!((s.vocab(), s.allowed()), (10, 7));
    }

    #[test]
    fn sample_errors_on_wrong_length_and_all_masked() {
        for p in [SamplingParams::default(), sampling(1.0, 0)] {
            let mut s = Sampler::new(p, 4, 3).unwrap();
            let e = s.sample(&mut [0.0; 3], &[]).unwrap_err();
            assert_eq!(invalid_name(&e), "logits");
            assert!(e.to_string().contains('4') && e.to_string().contains('3'), "{e}");
            assert!(s.sample(&mut [0.0; 5], &[]).is_err());

            // Only the padding id is finite: still nothing to pick.
            let e = s.sample(&mut [NEG_INF, NEG_INF, NEG_INF, 1.0], &[]).unwrap_err();
            assert!(e.to_string().contains("-inf"), "{e}");
            let e = s.sample(&mut [f32::NAN, NEG_INF, f32::NAN, 0.0], &[]).unwrap_err();
            assert!(e.to_string().contains("NaN"), "{e}");
            // The sampler stays usable.
            assert_eq!(s.sample(&mut [NEG_INF, 0.0, NEG_INF, 9.0], &[]).unwrap(), 1);
        }
    }

    #[test]
    fn sort_key_orders_by_logit_desc_then_id() {
        let vals = [
            1.0,
            f32::INFINITY,
            3.5,
            -0.0,
            1e-30,
            0.0,
            -1e-30,
            -1.0,
            f32::MAX,
            -3.5,
            f32::MIN,
            1.0,
            -0.0,
            f32::from_bits(1), // smallest subnormal
        ];
        let mut want: Vec<(f32, u32)> = vals.iter().zip(0..).map(|(&v, i)| (v, i)).collect();
        let mut got = want.clone();
        want.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
        got.sort_by_key(|&(v, i)| sort_key(v, i));
        let ids = |v: &[(f32, u32)]| v.iter().map(|p| p.1).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&want));
        assert_eq!(Candidate { key: sort_key(-2.0, 12345), w: 0.0 }.id(), 12345);
    }

    #[test]
    fn rng_matches_reference_vectors() {
        // SplitMix64, seed 1234567: Vigna's published reference outputs.
        let mut st = 1234567u64;
        assert_eq!(splitmix64(&mut st), 6457827717110365317);
        assert_eq!(splitmix64(&mut st), 3203168211198807973);
        assert_eq!(splitmix64(&mut st), 9817491932198370423);
        // xoshiro256** seeded from SplitMix64, computed with an independent (Python, arbitrary
        // precision) transcription of the reference C code.
        let mut r = Xoshiro256StarStar::seed_from_u64(0);
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [11091344671253066420, 13793997310169335082, 1900383378846508768, 7684712102626143532]
        );
        let mut r = Xoshiro256StarStar::seed_from_u64(42);
        assert_eq!(r.next_u64(), 1546998764402558742);
        assert_eq!(r.next_u64(), 6990951692964543102);
        // Uniform f64s lie in [0, 1) and use the top 53 bits.
        let mut r = Xoshiro256StarStar::seed_from_u64(0);
        let u = r.next_f64();
        assert_eq!(u, (11091344671253066420u64 >> 11) as f64 / 9007199254740992.0);
        for _ in 0..10000 {
            let u = r.next_f64();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn portable_exp_is_accurate() {
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-800.0), 0.0);
        let mut x = 0.0f64;
        while x > -708.0 {
            let want = x.exp();
            let got = exp_nonpositive(x);
            let rel = ((got - want) / want).abs();
            assert!(rel < 1e-15, "exp({x}): {got} vs {want}");
            x -= 0.0123;
        }
        // Subnormal range: still close in absolute terms.
        for x in [-709.0, -720.0, -744.0, -745.0] {
            assert!((exp_nonpositive(x) - x.exp()).abs() <= 2.0 * f64::from_bits(1), "{x}");
        }
    }
}
