//! Generation parameters as callers outside Rust send them: every field optional, numbers as
//! f64 (JavaScript numbers, JSON), one set of defaults and one validation for every front end
//! (the Node addon, the wasm binding, `phi2 serve` through the addon's batch engine).
//! [`GenerationParams::resolve`] turns them into the engine's [`GenerateOptions`], or an
//! `E_INVALID_ARGUMENT` error naming the first bad field.

use crate::error::{Error, Result};
use crate::generate::{GenerateOptions, Speculative};
use crate::sampler::SamplingParams;

/// Largest integer every f64 holds exactly (2^53): the bound on seeds.
pub const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Generation options with every field optional; `None` takes the engine default
/// ([`GenerateOptions::default`], i.e. greedy, 128 new tokens, stop on EOS).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationParams {
    /// Integer `>= 0`. Default 128.
    pub max_new_tokens: Option<f64>,
    /// Default `false` (greedy).
    pub do_sample: Option<bool>,
    /// Finite, `>= 0` (0 = greedy). Default 1.
    pub temperature: Option<f64>,
    /// Integer `>= 0`, 0 = off. Default 0.
    pub top_k: Option<f64>,
    /// In `(0, 1]`. Default 1.
    pub top_p: Option<f64>,
    /// In `[0, 1)`. Default 0.
    pub min_p: Option<f64>,
    /// Finite, `> 0`. Default 1.
    pub repetition_penalty: Option<f64>,
    /// Finite. Default 0.
    pub presence_penalty: Option<f64>,
    /// Finite. Default 0.
    pub frequency_penalty: Option<f64>,
    /// `(token id, bias)`; ids integers below the vocabulary size, biases finite or `-inf`.
    pub logit_bias: Vec<(f64, f64)>,
    /// Integer in `0..=2^53`. Default 0.
    pub seed: Option<f64>,
    /// Default `true`.
    pub stop_on_eos: Option<bool>,
    /// `Some` turns prompt-lookup speculative decoding on; `(ngram, max_draft)`, each `None`
    /// for its default.
    pub speculative: Option<(Option<f64>, Option<f64>)>,
}

/// `v` as a count (an integer in `0..=u32::MAX`), or an error naming `name`.
fn count(name: &'static str, v: f64) -> Result<usize> {
    if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
        Ok(v as usize)
    } else {
        Err(Error::invalid(name, format!("must be an integer >= 0, got {v}")))
    }
}

impl GenerationParams {
    /// Applies the defaults and validates every field; `vocab` (the model's logits length)
    /// bounds logit-bias ids. The error names the offending field.
    pub fn resolve(&self, vocab: usize) -> Result<GenerateOptions> {
        let d = GenerateOptions::default();
        let ds = SamplingParams::default();
        let f = |v: Option<f64>, default: f32| v.map_or(default, |v| v as f32);
        let seed = self.seed.unwrap_or(0.0);
        if !(seed.is_finite() && seed >= 0.0 && seed.fract() == 0.0 && seed <= MAX_SAFE_INTEGER) {
            return Err(Error::invalid("seed", format!("must be an integer in 0..=2^53, got {seed}")));
        }
        let mut logit_bias = Vec::with_capacity(self.logit_bias.len());
        for &(id, bias) in &self.logit_bias {
            let id = count("logit_bias", id)?;
            logit_bias.push((id as u32, bias as f32));
        }
        let speculative = match self.speculative {
            None => None,
            Some((ngram, max_draft)) => {
                let ds = Speculative::default();
                let s = Speculative {
                    ngram: ngram.map(|v| count("speculative.ngram", v)).transpose()?.unwrap_or(ds.ngram),
                    max_draft: max_draft.map(|v| count("speculative.max_draft", v)).transpose()?.unwrap_or(ds.max_draft),
                };
                s.validate()?;
                Some(s)
            }
        };
        let sampling = SamplingParams {
            do_sample: self.do_sample.unwrap_or(ds.do_sample),
            temperature: f(self.temperature, ds.temperature),
            top_k: self.top_k.map(|v| count("top_k", v)).transpose()?.unwrap_or(ds.top_k),
            top_p: f(self.top_p, ds.top_p),
            min_p: f(self.min_p, ds.min_p),
            repetition_penalty: f(self.repetition_penalty, ds.repetition_penalty),
            presence_penalty: f(self.presence_penalty, ds.presence_penalty),
            frequency_penalty: f(self.frequency_penalty, ds.frequency_penalty),
            logit_bias,
            seed: seed as u64,
        };
        sampling.validate(vocab)?;
        Ok(GenerateOptions {
            max_new_tokens: self.max_new_tokens.map(|v| count("max_new_tokens", v)).transpose()?.unwrap_or(d.max_new_tokens),
            sampling,
            stop_on_eos: self.stop_on_eos.unwrap_or(d.stop_on_eos),
            speculative,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Phi-2's logits length.
    const VOCAB: usize = 51200;

    #[test]
    fn empty_params_are_the_engine_defaults() {
        assert_eq!(GenerationParams::default().resolve(VOCAB).unwrap(), GenerateOptions::default());
    }

    #[test]
    fn every_bad_field_is_named() {
        let bad = |p: GenerationParams, name: &str| {
            let e = p.resolve(VOCAB).unwrap_err();
            assert_eq!(e.code(), "E_INVALID_ARGUMENT");
            assert!(e.to_string().contains(&format!("`{name}`")), "{e} should name {name}");
        };
        bad(GenerationParams { max_new_tokens: Some(1.5), ..Default::default() }, "max_new_tokens");
        bad(GenerationParams { max_new_tokens: Some(-1.0), ..Default::default() }, "max_new_tokens");
        bad(GenerationParams { top_k: Some(f64::NAN), ..Default::default() }, "top_k");
        bad(GenerationParams { top_p: Some(0.0), ..Default::default() }, "top_p");
        bad(GenerationParams { min_p: Some(1.0), ..Default::default() }, "min_p");
        bad(GenerationParams { temperature: Some(-1.0), ..Default::default() }, "temperature");
        bad(GenerationParams { repetition_penalty: Some(0.0), ..Default::default() }, "repetition_penalty");
        bad(GenerationParams { presence_penalty: Some(f64::INFINITY), ..Default::default() }, "presence_penalty");
        bad(GenerationParams { frequency_penalty: Some(f64::NAN), ..Default::default() }, "frequency_penalty");
        bad(GenerationParams { seed: Some(MAX_SAFE_INTEGER * 2.0), ..Default::default() }, "seed");
        bad(GenerationParams { logit_bias: vec![(1e9, 0.0)], ..Default::default() }, "logit_bias");
        bad(GenerationParams { logit_bias: vec![(0.5, 0.0)], ..Default::default() }, "logit_bias");
        bad(GenerationParams { speculative: Some((Some(0.0), None)), ..Default::default() }, "speculative.ngram");
        bad(GenerationParams { speculative: Some((None, Some(65.0))), ..Default::default() }, "speculative.max_draft");
    }

    #[test]
    fn given_fields_reach_the_options() {
        let p = GenerationParams {
            max_new_tokens: Some(7.0),
            do_sample: Some(true),
            temperature: Some(0.5),
            top_k: Some(40.0),
            top_p: Some(0.9),
            seed: Some(42.0),
            stop_on_eos: Some(false),
            logit_bias: vec![(5.0, f64::NEG_INFINITY)],
            speculative: Some((None, Some(4.0))),
            ..Default::default()
        };
        let o = p.resolve(VOCAB).unwrap();
        assert_eq!((o.max_new_tokens, o.stop_on_eos), (7, false));
        assert!(o.sampling.do_sample);
        assert_eq!((o.sampling.temperature, o.sampling.top_k, o.sampling.top_p, o.sampling.seed), (0.5, 40, 0.9, 42));
        assert_eq!(o.sampling.logit_bias, vec![(5, f32::NEG_INFINITY)]);
        assert_eq!(o.speculative, Some(Speculative { ngram: 3, max_draft: 4 }));
    }
}
