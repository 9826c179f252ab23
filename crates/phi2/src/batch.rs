//! Continuous batching: many generations advancing together, one forward pass per step.
//!
//! A [`Batch`] holds sequences, each with its own [`KvCache`], [`Sampler`] (its own seed and
//! penalties) and stop rules. [`Batch::step`] runs one [`Phi2::forward_batch`] over the rows of
//! every active sequence, so each weight matrix is read once per step for all of them, which is
//! what makes serving several users cheaper than serving them one after another (decoding reads
//! the whole model per token and is bound by memory bandwidth, not arithmetic). Attention runs
//! per sequence against its own cache.
//!
//! - **Joining.** [`Batch::add`] validates a request and queues it; its prompt is prefilled in
//!   chunks of at most [`BatchConfig::prefill_chunk`] tokens, mixed into the steps of the
//!   sequences already decoding (each step runs at most [`BatchConfig::step_tokens`] rows), so a
//!   long prompt delays the others by a chunk per step, never by its whole length.
//! - **Leaving.** A sequence leaves the batch on EOS, its token budget, a full context, or
//!   [`Batch::cancel`] (taken into account at the next step); the others go on.
//! - **Exactness.** On the engine's own kernels (see [`crate::generate`]) a row's logits do not
//!   depend on the other rows of the pass, and attention runs per sequence with the shapes it
//!   has alone, so each sequence gets the tokens and log-probs it gets alone with
//!   [`crate::Session`] and the same seed, bit for bit (tests/batch.rs, with joins and leaves
//!   mid-run), also when a long prompt is prefilled in chunks: the engine's attention
//!   ([`crate::kernels::attention`]) computes each row the same way in any pass. Matrices that
//!   go through candle's products (F32, Q4_1, Q5_0, Q5_1) round
//!   differently with the batch size too, so there a token can differ where two candidates are
//!   within ~1e-5.
//! - Speculative decoding is not used in a batch (the batch already amortises the weight reads);
//!   [`GenerateOptions::speculative`] is ignored and [`Generation::speculation`] stays zero.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::generate::{FinishReason, GenerateOptions, Generation, SpeculationStats};
use crate::model::{BatchItem, KvCache, Phi2};
use crate::sampler::Sampler;

/// Most alternatives a request may ask for per token (OpenAI's `top_logprobs` bound).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Limits of a [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Sequences in the batch at once (further [`Batch::add`] calls get `E_BUSY`). Default 16.
    pub max_sequences: usize,
    /// Most prompt tokens of one sequence run in one step. Default 256.
    pub prefill_chunk: usize,
    /// Most rows (decode tokens + prompt tokens) in one step's forward pass; a step always runs
    /// every decoding sequence and at least one prompt token of the oldest prefilling one.
    /// Default 512.
    pub step_tokens: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_sequences: 16, prefill_chunk: 256, step_tokens: 512 }
    }
}

impl BatchConfig {
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("max_sequences", self.max_sequences), ("prefill_chunk", self.prefill_chunk), ("step_tokens", self.step_tokens)] {
            if v == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// A sequence's handle in its [`Batch`]; never reused by that batch.
pub type SeqId = u64;

/// Log-probabilities of one produced token, from the model's raw distribution (log-softmax of
/// the logits over the ids the sampler may produce, before penalties, bias and temperature).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// Of the produced token.
    pub logprob: f32,
    /// The most likely ids, most likely first (ties: lower id first), as many as asked for.
    pub top: Vec<(u32, f32)>,
}

/// What a step produced, in sequence order.
#[derive(Debug)]
pub enum BatchEvent {
    /// A new token of `seq` (followed by `Finished` in the same step when it was the last).
    Token { seq: SeqId, token: u32, logprobs: Option<TokenLogprobs> },
    /// `seq` left the batch; `generation` holds all its tokens.
    Finished { seq: SeqId, generation: Generation },
    /// `seq` left the batch with an error (its tokens so far were all reported).
    Failed { seq: SeqId, error: Error },
}

/// One generation in the batch.
struct Seq {
    id: SeqId,
    cache: KvCache,
    sampler: Sampler,
    /// Prompt followed by the tokens produced so far (penalties count over all of it).
    history: Vec<u32>,
    prompt_len: usize,
    /// Tokens of `history` already run through the model (= `cache.len()`).
    fed: usize,
    max_new_tokens: usize,
    stop_on_eos: bool,
    /// Top alternatives to report per token; `None` = no log-probs.
    logprobs: Option<usize>,
    cancelled: bool,
}

impl Seq {
    fn produced(&self) -> usize {
        self.history.len() - self.prompt_len
    }

    fn generation(&self, finish: FinishReason) -> Generation {
        Generation {
            tokens: self.history[self.prompt_len..].to_vec(),
            finish,
            prompt_tokens_evaluated: self.prompt_len,
            speculation: SpeculationStats::default(),
        }
    }
}

/// Sequences advancing together (module docs). Not thread-safe by itself: one owner calls
/// [`Batch::add`], [`Batch::cancel`] and [`Batch::step`] (the Node addon runs it on a worker
/// thread and talks to it through channels).
pub struct Batch {
    model: Arc<Phi2>,
    config: BatchConfig,
    seqs: Vec<Seq>,
    next_id: SeqId,
    /// Reusable logits row.
    row: Vec<f32>,
}

impl Batch {
    pub fn new(model: Arc<Phi2>, config: BatchConfig) -> Result<Self> {
        config.validate()?;
        let row = Vec::with_capacity(model.config.vocab_size);
        Ok(Batch { model, config, seqs: Vec::new(), next_id: 0, row })
    }

    pub fn model(&self) -> &Arc<Phi2> {
        &self.model
    }

    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    /// Sequences in the batch (prefilling or decoding).
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Whether another sequence fits.
    pub fn has_room(&self) -> bool {
        self.seqs.len() < self.config.max_sequences
    }

    /// Adds a generation after `prompt`; it joins the next step. `top_logprobs`: `None` for no
    /// log-probs, `Some(n)` for the produced token's log-prob and the `n` (`<= 20`) most likely
    /// alternatives per token. Validates as [`crate::Session::begin`] does; `E_BUSY` when the
    /// batch is full.
    pub fn add(&mut self, prompt: &[u32], opts: &GenerateOptions, top_logprobs: Option<usize>) -> Result<SeqId> {
        if !self.has_room() {
            return Err(Error::Busy { what: format!("the batch is full ({} sequences)", self.config.max_sequences) });
        }
        let cfg = &self.model.config;
        crate::generate::check_prompt(cfg, prompt)?;
        if let Some(n) = top_logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            return Err(Error::invalid("top_logprobs", format!("must be at most {MAX_TOP_LOGPROBS}, got {n}")));
        }
        let sampler = Sampler::new(opts.sampling.clone(), cfg.vocab_size, cfg.tokenizer_size)?;
        let id = self.next_id;
        self.next_id += 1;
        let mut history = Vec::with_capacity(prompt.len() + opts.max_new_tokens.min(cfg.context_length));
        history.extend_from_slice(prompt);
        self.seqs.push(Seq {
            id,
            cache: self.model.new_cache(),
            sampler,
            history,
            prompt_len: prompt.len(),
            fed: 0,
            max_new_tokens: opts.max_new_tokens,
            stop_on_eos: opts.stop_on_eos,
            logprobs: top_logprobs,
            cancelled: false,
        });
        Ok(id)
    }

    /// Stops `seq` at the next step (its `Finished` event then says `Cancelled`). False when it
    /// is not in the batch (finished already, or never added).
    pub fn cancel(&mut self, seq: SeqId) -> bool {
        match self.seqs.iter_mut().find(|s| s.id == seq) {
            Some(s) => {
                s.cancelled = true;
                true
            }
            None => false,
        }
    }

    /// One step: retires cancelled sequences and those whose context is full, runs one forward
    /// pass over every decoding sequence's pending token and the next prompt chunks, samples a
    /// token for each sequence whose logits are ready, and retires those that are done. Returns
    /// what happened, in sequence order; empty when the batch is empty.
    ///
    /// A failed forward pass fails the sequences that were in it (`Failed` events) and leaves
    /// the others; the batch stays usable.
    pub fn step(&mut self) -> Result<Vec<BatchEvent>> {
        let mut events = Vec::new();
        let ctx = self.model.config.context_length;
        // Leavers: cancelled, budget of 0, or no room for the pending token. A pending token
        // runs at position `fed`, and (as in Session) the last position of the context is
        // never filled, so decoding stops when fed + 1 >= context.
        let mut i = 0;
        while i < self.seqs.len() {
            let s = &self.seqs[i];
            let decoding = s.fed == s.history.len() - 1 && s.produced() > 0;
            let finish = if s.cancelled {
                Some(FinishReason::Cancelled)
            } else if s.max_new_tokens == 0 {
                Some(FinishReason::Length)
            } else if decoding && s.fed + 1 >= ctx {
                Some(FinishReason::ContextFull)
            } else {
                None
            };
            match finish {
                Some(f) => {
                    let s = self.seqs.remove(i);
                    events.push(BatchEvent::Finished { seq: s.id, generation: s.generation(f) });
                    self.model.recycle_cache(s.cache);
                }
                None => i += 1,
            }
        }
        if self.seqs.is_empty() {
            return Ok(events);
        }

        // What each sequence feeds this step: decoders their pending token, prefillers their next
        // chunk when it fits in the remaining row budget (the oldest first). A chunk is never cut
        // to fit, except the oldest prefiller's when no chunk fits at all (progress), so a prompt
        // of at most `prefill_chunk` tokens runs in one pass, as it does alone.
        let decoders = self.seqs.iter().filter(|s| s.produced() > 0).count();
        let mut budget = self.config.step_tokens.saturating_sub(decoders);
        let mut feeds: Vec<(usize, usize)> = Vec::with_capacity(self.seqs.len()); // (index, tokens)
        let mut any_prefill = false;
        for (i, s) in self.seqs.iter().enumerate() {
            if s.produced() > 0 {
                feeds.push((i, 1));
            } else {
                let want = (s.prompt_len - s.fed).min(self.config.prefill_chunk);
                let n = if want <= budget {
                    want
                } else if !any_prefill {
                    want.min(budget.max(1))
                } else {
                    0
                };
                if n > 0 {
                    any_prefill = true;
                    budget -= n.min(budget);
                    feeds.push((i, n));
                }
            }
        }
        if feeds.is_empty() {
            return Ok(events);
        }

        let logits = {
            let mut want = feeds.iter().peekable();
            let mut items = Vec::with_capacity(feeds.len());
            for (i, s) in self.seqs.iter_mut().enumerate() {
                if want.peek().map(|f| f.0) != Some(i) {
                    continue;
                }
                let (_, n) = *want.next().expect("peeked");
                items.push(BatchItem { tokens: &s.history[s.fed..s.fed + n], cache: &mut s.cache, all_logits: false });
            }
            self.model.forward_batch(&mut items)
        };
        let logits = match logits.and_then(|l| l.into_iter().map(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?)).collect::<Result<Vec<_>>>()) {
            Ok(l) => l,
            Err(e) => {
                // Every sequence in the pass has a cache in an unknown state: they all fail.
                let failed: Vec<usize> = feeds.iter().map(|f| f.0).collect();
                let mut k = 0;
                self.seqs.retain(|s| {
                    let keep = !failed.contains(&k);
                    k += 1;
                    if !keep {
                        events.push(BatchEvent::Failed { seq: s.id, error: Error::Backend(candle_core::Error::Msg(e.to_string())) });
                    }
                    keep
                });
                return Ok(events);
            }
        };

        let eos = self.model.config.eos_token_id;
        let allowed = self.model.config.tokenizer_size;
        let mut done: Vec<(usize, Option<FinishReason>, Option<Error>)> = Vec::new();
        for (&(i, n), row) in feeds.iter().zip(logits) {
            let s = &mut self.seqs[i];
            s.fed += n;
            if s.fed < s.history.len() {
                continue; // more prompt to run before the first token
            }
            let logprobs = s.logprobs.map(|k| top_logprobs(&row[..allowed.min(row.len())], k));
            self.row.clear();
            self.row.extend_from_slice(&row);
            let token = match s.sampler.sample(&mut self.row, &s.history) {
                Ok(t) => t,
                Err(e) => {
                    done.push((i, None, Some(e)));
                    continue;
                }
            };
            let logprobs = logprobs.map(|(lse, top)| TokenLogprobs { logprob: (row[token as usize] as f64 - lse) as f32, top });
            s.history.push(token);
            events.push(BatchEvent::Token { seq: s.id, token, logprobs });
            if s.stop_on_eos && Some(token) == eos {
                done.push((i, Some(FinishReason::Eos), None));
            } else if s.produced() >= s.max_new_tokens {
                done.push((i, Some(FinishReason::Length), None));
            }
        }
        for (i, finish, error) in done.into_iter().rev() {
            let s = self.seqs.remove(i);
            events.push(match (finish, error) {
                (_, Some(error)) => BatchEvent::Failed { seq: s.id, error },
                (f, None) => BatchEvent::Finished { seq: s.id, generation: s.generation(f.unwrap_or(FinishReason::Length)) },
            });
            // (The next sequence, in this batch or another session, starts from its memory.)
            self.model.recycle_cache(s.cache);
        }
        Ok(events)
    }
}

/// Log-sum-exp of `logits` (f64, so the log-probs are those of an exact log-softmax rounded to
/// f32; [`crate::detmath`]'s, the same bits on every platform) and the `k` most likely ids with their log-probs, most likely first, ties to the lower id.
fn top_logprobs(logits: &[f32], k: usize) -> (f64, Vec<(u32, f32)>) {
    let lse = crate::detmath::log_sum_exp(logits);
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (id, &v) in logits.iter().enumerate() {
        if k == 0 || v.is_nan() || (top.len() == k && v <= top[k - 1].1) {
            continue;
        }
        let at = top.partition_point(|&(_, w)| w >= v);
        top.insert(at, (id as u32, v));
        top.truncate(k);
    }
    let top = top.into_iter().map(|(id, v)| (id, (v as f64 - lse) as f32)).collect();
    (lse, top)
}

#[cfg(test)]
mod tests {
    use super::top_logprobs;

    #[test]
    fn top_logprobs_are_sorted_and_normalised() {
        let (lse, top) = top_logprobs(&[0.0, 2.0, 1.0, 2.0, f32::NAN], 3);
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        let total: f64 = [0.0f64, 2.0, 1.0, 2.0].iter().map(|v| v.exp()).sum();
        assert!((lse - total.ln()).abs() < 1e-9);
        assert!((top[0].1 as f64 - (2.0 - total.ln())).abs() < 1e-6);
        assert!(top_logprobs(&[1.0, 2.0], 0).1.is_empty());
    }
}
