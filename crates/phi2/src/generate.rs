//! Generation: prefill the prompt in one batch, then decode token by token with the KV cache.
//! Stop rules (EOS, token budget, context end, cancellation) live here; the forward pass and the
//! sampler know nothing of them.
//!
//! # Prompt-lookup speculative decoding
//!
//! With [`GenerateOptions::speculative`] set, each decode step looks for the most recent earlier
//! occurrence of the last `ngram` tokens of prompt + output, takes up to `max_draft` tokens that
//! followed it as a draft (fewer after rejected drafts: `next_draft_len`), and runs the
//! pending token and the draft through the model in one forward pass (all logits). Tokens are
//! then accepted left to right with [`Sampler::sample_draft`], each position sampled with the
//! history up to it: greedy keeps a draft token while it is the argmax, sampling uses
//! speculative sampling for a deterministic draft, so the output has the distribution of plain
//! sampling. A pass always yields at least
//! one token (the one after the last accepted draft token); the cache is then truncated to the
//! accepted positions.
//!
//! Greedy output is identical to plain greedy because the verify pass gives every position the
//! same logits, bit for bit, as a one-token step: the engine's own kernels (Q4_0, Q8_0, Q4_K,
//! Q5_K, Q6_K, F16, BF16 matrices) compute each token's row independently of the batch, and
//! attention, norms and the element-wise work are per row. Matrices of other types (F32, Q4_1,
//! Q5_0, Q5_1, ...) go through candle's products, whose rounding depends on the batch size
//! (measured on the fixtures: rows differ by up to ~1e-5), so for models whose bulk type is one
//! of those speculation is not used (plain decoding; [`Generation::speculation`] shows no
//! passes).
//!
//! Stop rules are those of plain decoding: the step-wise API still returns one token per
//! [`Session::step`] (tokens accepted by a pass are queued and returned by the next steps
//! without a forward pass), EOS and `max_new_tokens` end the generation at exactly the same
//! token, drafts never run past the token budget or the context, and [`Session::end`] leaves
//! the cache as plain decoding would (positions of queued, never-returned tokens are dropped).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::{KvCache, Phi2};
use crate::sampler::{Sampler, SamplingParams};

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop when the model's EOS token (50256 for Phi-2) is produced (it is kept in the output).
    pub stop_on_eos: bool,
    /// Prompt-lookup speculative decoding (module docs); `None` (default) = off.
    pub speculative: Option<Speculative>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_new_tokens: 128, sampling: SamplingParams::default(), stop_on_eos: true, speculative: None }
    }
}

/// Prompt-lookup (n-gram) speculative decoding settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speculative {
    /// Length of the n-gram (the last tokens of prompt + output) looked up earlier in the text,
    /// `1..=16`. Default 3.
    pub ngram: usize,
    /// Most draft tokens verified per forward pass, `1..=64`. Default 8.
    pub max_draft: usize,
}

impl Default for Speculative {
    fn default() -> Self {
        Speculative { ngram: 3, max_draft: 8 }
    }
}

impl Speculative {
    pub const MAX_NGRAM: usize = 16;
    pub const MAX_DRAFT: usize = 64;

    /// Checks both fields; the error names the offending one.
    pub fn validate(&self) -> Result<()> {
        if !(1..=Self::MAX_NGRAM).contains(&self.ngram) {
            return Err(Error::invalid(
                "speculative.ngram",
                format!("must be an integer in 1..={}, got {}", Self::MAX_NGRAM, self.ngram),
            ));
        }
        if !(1..=Self::MAX_DRAFT).contains(&self.max_draft) {
            return Err(Error::invalid(
                "speculative.max_draft",
                format!("must be an integer in 1..={}, got {}", Self::MAX_DRAFT, self.max_draft),
            ));
        }
        Ok(())
    }

    /// The draft for `seq` (prompt + output so far, ending with the token to run next): the
    /// tokens that followed the most recent earlier occurrence of its last `ngram` tokens, at
    /// most `max_draft` and `limit` of them. Empty when there is no such occurrence. When the
    /// continuation reaches the end of `seq` (a repeat that overlaps itself, e.g. a loop of a
    /// few tokens), it goes on copying the draft itself, as an LZ77 copy does: the text is
    /// assumed to keep repeating with the same period.
    pub fn draft(&self, seq: &[u32], limit: usize) -> Vec<u32> {
        let n = self.ngram;
        let len = seq.len();
        let want = limit.min(self.max_draft);
        if want == 0 || len <= n {
            return Vec::new();
        }
        let tail = &seq[len - n..];
        // Start positions i < len - n, most recent first; seq[i + n] exists.
        for i in (0..len - n).rev() {
            if &seq[i..i + n] == tail {
                let mut draft = Vec::with_capacity(want);
                for j in 0..want {
                    let at = i + n + j;
                    draft.push(if at < len { seq[at] } else { draft[at - len] });
                }
                return draft;
            }
        }
        Vec::new()
    }
}

/// The next draft's length limit after a pass that verified `drafted` tokens (at most `limit`)
/// and accepted `accepted` of them: two more after a draft accepted whole (up to `max_draft`),
/// one less after a rejection (at least 1). The schedule of HF transformers' assisted generation
/// ("heuristic"): a verify pass costs more the more tokens it carries (on a 2-core AMX Xeon,
/// Phi-2-shaped Q4_0, `bench/speculative.mjs`: 2 tokens ≈ 1.5 one-token steps, 9 tokens ≈ 3), so while drafts keep
/// failing (output that stopped copying the prompt) they shrink, and a copy that is accepted
/// whole grows them back. Greedy output does not depend on it.
fn next_draft_len(limit: usize, drafted: usize, accepted: usize, max_draft: usize) -> usize {
    if accepted == drafted {
        // A draft cut short by the lookup or the budget says nothing against longer ones.
        (limit.max(drafted) + 2).min(max_draft)
    } else {
        limit.saturating_sub(1).max(1)
    }
}

/// What speculative decoding did in one generation (all zero when it was off or not used).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpeculationStats {
    /// Verify passes run (forward passes over a pending token plus a draft).
    pub passes: usize,
    /// Draft tokens verified.
    pub drafted: usize,
    /// Draft tokens accepted (each saves a forward pass).
    pub accepted: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The EOS token was produced.
    Eos,
    /// `max_new_tokens` were produced.
    Length,
    /// The context window is full.
    ContextFull,
    /// The cancellation flag was set, or the token callback asked to stop.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::ContextFull => "context",
            FinishReason::Cancelled => "abort",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated ids (the prompt excluded).
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    /// Prompt tokens actually run through the model (those not already in the session's cache).
    pub prompt_tokens_evaluated: usize,
    /// Speculative decoding counters.
    pub speculation: SpeculationStats,
}

/// A conversation with one model: its KV cache and the tokens that produced it. Reusing a session
/// whose history is a prefix of the next prompt evaluates only the new tokens (chat turns).
///
/// Two ways to generate: [`Session::generate`] runs a whole generation with a callback, and
/// [`Session::begin`] / [`Session::step`] / [`Session::end`] let the caller pull one token at a
/// time (an event loop can run between tokens). `generate` is built on the step-wise calls.
pub struct Session {
    model: Arc<Phi2>,
    cache: KvCache,
    history: Vec<u32>,
    logits: Vec<f32>,
    run: Option<Run>,
}

/// A generation in progress (between [`Session::begin`] and [`Session::end`]).
struct Run {
    sampler: Sampler,
    max_new_tokens: usize,
    stop_on_eos: bool,
    out: Vec<u32>,
    prompt_tokens_evaluated: usize,
    state: RunState,
    /// Speculative decoding, when asked for and exact for this model.
    speculative: Option<Speculative>,
    /// The next draft's length limit (1..=max_draft), adapted to how the last drafts fared.
    draft_len: usize,
    /// Tokens a verify pass accepted after the one it returned, returned by the next steps.
    /// Invariant: the cache (and `history`) hold exactly `queued.len()` positions more than
    /// plain decoding would at this point.
    queued: VecDeque<u32>,
    stats: SpeculationStats,
}

enum RunState {
    /// The next step runs these prompt tokens (those not already cached) and samples.
    Prefill(Vec<u32>),
    /// `step` returned this token and the generation may go on: the next step runs it.
    Next(u32),
    /// Finished (the last token returned was the final one, or a later step returned `None`).
    Done(FinishReason),
}

/// The cache goes back to the model for the next session ([`Phi2::recycle_cache`]).
impl Drop for Session {
    fn drop(&mut self) {
        let cache = std::mem::take(&mut self.cache);
        self.model.recycle_cache(cache);
    }
}

impl Session {
    pub fn new(model: Arc<Phi2>) -> Self {
        let cache = model.new_cache();
        let logits = Vec::with_capacity(model.config.vocab_size);
        Session { model, cache, history: Vec::new(), logits, run: None }
    }

    pub fn model(&self) -> &Arc<Phi2> {
        &self.model
    }

    /// Tokens the cache holds.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Forgets the KV cache, keeping its memory for the next prompt (and drops a step-wise
    /// generation in progress).
    pub fn reset(&mut self) {
        self.cache.rewind();
        self.history.clear();
        self.run = None;
    }

    /// Whether a step-wise generation was begun and not yet ended.
    pub fn is_running(&self) -> bool {
        self.run.is_some()
    }

    /// Starts a step-wise generation after `prompt` (the whole conversation so far). Validates
    /// the prompt and options, and keeps the cached prefix this prompt shares with the session's
    /// history (the rest of the cache is dropped). No forward pass runs until [`Session::step`].
    /// `E_BUSY` when a generation is already in progress.
    pub fn begin(&mut self, prompt: &[u32], opts: &GenerateOptions) -> Result<()> {
        if self.run.is_some() {
            return Err(Error::Busy { what: "a generation is in progress in this session; end() it first".into() });
        }
        let model = self.model.clone();
        let cfg = &model.config;
        check_prompt(cfg, prompt)?;
        let sampler = Sampler::new(opts.sampling.clone(), cfg.vocab_size, cfg.tokenizer_size)?;
        if let Some(spec) = &opts.speculative {
            spec.validate()?;
        }
        let speculative = opts.speculative.filter(|_| Self::batch_exact(&model));

        // Keep the cached prefix shared with this prompt; at least the last prompt token is re-run
        // so that there are logits to sample from.
        let mut common = self.history.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
        if common < self.history.len() {
            self.reset();
            common = 0;
        }
        let fresh = prompt[common..].to_vec();
        let state = if opts.max_new_tokens == 0 { RunState::Done(FinishReason::Length) } else { RunState::Prefill(fresh.clone()) };
        self.run = Some(Run {
            sampler,
            max_new_tokens: opts.max_new_tokens,
            stop_on_eos: opts.stop_on_eos,
            out: Vec::with_capacity(opts.max_new_tokens.min(cfg.context_length)),
            prompt_tokens_evaluated: fresh.len(),
            state,
            draft_len: speculative.map_or(0, |s| s.max_draft),
            speculative,
            queued: VecDeque::new(),
            stats: SpeculationStats::default(),
        });
        Ok(())
    }

    /// Whether a forward pass over several tokens gives each of them the logits of a one-token
    /// step bit for bit, which exact speculative decoding needs: true when the model's matrices
    /// run on the engine's own kernels (see the module docs).
    pub fn batch_exact(model: &Phi2) -> bool {
        crate::kernels::Family::of(model.info.dtype).is_some()
    }

    /// One forward pass (the first step runs the prompt) and the next token, or `None` when the
    /// generation is over (EOS or `max_new_tokens` reached by the previous token, or the context
    /// is full). An error ends the generation and resets the session.
    pub fn step(&mut self) -> Result<Option<u32>> {
        let Some(run) = self.run.as_mut() else {
            return Err(Error::invalid("session", "step() without begin(): no generation in progress"));
        };
        let ctx = self.model.config.context_length;
        let feed = match &mut run.state {
            RunState::Done(_) => return Ok(None),
            RunState::Prefill(fresh) => std::mem::take(fresh),
            RunState::Next(next) => {
                let next = *next;
                // Prompt + generated never exceed the context: `next` will sit at position
                // history.len() (less the queued tokens' positions), the last one there is.
                let plain_len = self.history.len() - run.queued.len();
                if plain_len + 1 >= ctx {
                    run.state = RunState::Done(FinishReason::ContextFull);
                    self.drop_queued();
                    return Ok(None);
                }
                if let Some(t) = run.queued.pop_front() {
                    self.record(t);
                    return Ok(Some(t));
                }
                if let Some(spec) = run.speculative {
                    // Every draft token runs at a position plain decoding would run it at
                    // (<= ctx - 2), and the pass yields at most what the budget has left.
                    let h = self.history.len();
                    let limit = (run.max_new_tokens - run.out.len() - 1).min(ctx - 2 - h).min(run.draft_len);
                    self.history.push(next);
                    let draft = spec.draft(&self.history, limit);
                    self.history.pop();
                    if !draft.is_empty() {
                        return match self.speculate(next, &draft) {
                            Ok(t) => Ok(Some(t)),
                            Err(e) => {
                                self.reset();
                                Err(e)
                            }
                        };
                    }
                }
                vec![next]
            }
        };
        match self.advance(&feed) {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }

    /// Runs `feed`, samples, records the token and whether it ends the generation.
    fn advance(&mut self, feed: &[u32]) -> Result<u32> {
        self.run_tokens(feed)?;
        let Some(run) = self.run.as_mut() else {
            return Err(Error::invalid("session", "no generation in progress"));
        };
        let next = run.sampler.sample(&mut self.logits, &self.history)?;
        self.record(next);
        Ok(next)
    }

    /// Appends a returned token to the output and decides whether it ends the generation (then
    /// queued tokens are dropped).
    fn record(&mut self, token: u32) {
        let eos = self.model.config.eos_token_id;
        let Some(run) = self.run.as_mut() else { return };
        run.out.push(token);
        run.state = if run.stop_on_eos && Some(token) == eos {
            RunState::Done(FinishReason::Eos)
        } else if run.out.len() >= run.max_new_tokens {
            RunState::Done(FinishReason::Length)
        } else {
            RunState::Next(token)
        };
        if matches!(run.state, RunState::Done(_)) {
            self.drop_queued();
        }
    }

    /// Forgets queued tokens and their cached positions, leaving the cache as plain decoding
    /// would have it.
    fn drop_queued(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        if !run.queued.is_empty() {
            let keep = self.history.len() - run.queued.len();
            run.queued.clear();
            self.cache.truncate(keep);
            self.history.truncate(keep);
        }
    }

    /// One verify pass: runs `next` and `draft`, accepts draft tokens left to right, queues
    /// what follows the first token, truncates the cache to the accepted positions, and
    /// returns (and records) the first token.
    fn speculate(&mut self, next: u32, draft: &[u32]) -> Result<u32> {
        let h0 = self.history.len();
        let mut feed = Vec::with_capacity(draft.len() + 1);
        feed.push(next);
        feed.extend_from_slice(draft);
        let logits = self.model.forward(&feed, &mut self.cache, true)?;
        let all = logits.flatten_all()?.to_vec1::<f32>()?;
        self.history.extend_from_slice(&feed);
        let v = self.model.config.vocab_size;
        let Some(run) = self.run.as_mut() else {
            return Err(Error::invalid("session", "no generation in progress"));
        };
        let mut emitted = Vec::with_capacity(feed.len());
        for (i, row) in all.chunks_exact(v).enumerate() {
            self.logits.clear();
            self.logits.extend_from_slice(row);
            // Row i scores the token after feed[i]: the history is everything up to feed[i].
            let history = &self.history[..h0 + 1 + i];
            match draft.get(i) {
                Some(&d) => {
                    let (t, accepted) = run.sampler.sample_draft(&mut self.logits, history, d)?;
                    emitted.push(t);
                    if !accepted {
                        break;
                    }
                }
                None => emitted.push(run.sampler.sample(&mut self.logits, history)?),
            }
        }
        let accepted = emitted.len() - 1;
        run.draft_len = next_draft_len(run.draft_len, draft.len(), accepted, run.speculative.map_or(1, |s| s.max_draft));
        run.stats.passes += 1;
        run.stats.drafted += draft.len();
        run.stats.accepted += accepted;
        // The cache keeps `next` and the accepted draft tokens; the last emitted token is not run.
        self.cache.truncate(h0 + 1 + accepted);
        self.history.truncate(h0 + 1 + accepted);
        let first = emitted[0];
        run.queued.extend(&emitted[1..]);
        self.record(first);
        Ok(first)
    }

    /// Ends the step-wise generation and returns it. Its finish reason is `Cancelled` ("abort")
    /// when the generation could have gone on, i.e. unless the last token returned by
    /// [`Session::step`] was final (EOS, `max_new_tokens`) or `step` returned `None`. The cache
    /// keeps what was evaluated, so the next `begin` can reuse it.
    pub fn end(&mut self) -> Result<Generation> {
        if self.run.is_none() {
            return Err(Error::invalid("session", "end() without begin(): no generation in progress"));
        }
        self.drop_queued();
        let run = self.run.take().expect("checked above");
        let finish = match run.state {
            RunState::Done(reason) => reason,
            RunState::Prefill(_) | RunState::Next(_) => FinishReason::Cancelled,
        };
        Ok(Generation {
            tokens: run.out,
            finish,
            prompt_tokens_evaluated: run.prompt_tokens_evaluated,
            speculation: run.stats,
        })
    }

    /// Generates after `prompt`. Calls `on_token(id)` for each new token; returning `false` stops
    /// (finish reason `Cancelled`). `cancel` is polled before every forward pass, so setting it
    /// from another thread stops the work within one token.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        cancel: &AtomicBool,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Generation> {
        self.begin(prompt, opts)?;
        if cancel.load(Ordering::Relaxed) {
            let g = self.end()?;
            return Ok(Generation { finish: FinishReason::Cancelled, ..g });
        }
        {
            while let Some(next) = self.step()? {
                let keep_going = on_token(next);
                if matches!(self.run.as_ref().map(|r| &r.state), Some(RunState::Done(_))) {
                    break;
                }
                if !keep_going || cancel.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
        self.end()
    }

    /// Feeds tokens through the model, leaving the last position's logits in `self.logits`.
    fn run_tokens(&mut self, tokens: &[u32]) -> Result<()> {
        let logits = self.model.forward(tokens, &mut self.cache, false)?;
        self.history.extend_from_slice(tokens);
        self.logits.clear();
        self.logits.extend(logits.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}

/// A prompt a generation can start from: not empty, every id in the vocabulary, and at least one
/// position left in the context (shared by [`crate::Session`] and [`crate::batch::Batch`]).
pub(crate) fn check_prompt(cfg: &crate::config::Phi2Config, prompt: &[u32]) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::invalid("prompt", "at least one prompt token is needed"));
    }
    if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= cfg.vocab_size) {
        return Err(Error::invalid("prompt", format!("token id {bad} is out of range for vocabulary size {}", cfg.vocab_size)));
    }
    if prompt.len() >= cfg.context_length {
        return Err(Error::invalid(
            "prompt",
            format!(
                "{} tokens leave no room to generate in the context length {}",
                prompt.len(),
                cfg.context_length
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::next_draft_len;

    #[test]
    fn drafts_shrink_on_rejection_and_grow_back_when_accepted_whole() {
        // Rejections shrink the limit by one, never below 1.
        assert_eq!(next_draft_len(8, 8, 3, 8), 7);
        assert_eq!(next_draft_len(2, 2, 0, 8), 1);
        assert_eq!(next_draft_len(1, 1, 0, 8), 1);
        // A draft accepted whole grows it by two, up to max_draft.
        assert_eq!(next_draft_len(1, 1, 1, 8), 3);
        assert_eq!(next_draft_len(7, 7, 7, 8), 8);
        assert_eq!(next_draft_len(8, 8, 8, 8), 8);
        // A draft the token budget cut short and accepted whole does not shrink the limit.
        assert_eq!(next_draft_len(6, 2, 2, 8), 8);
        assert_eq!(next_draft_len(3, 3, 3, 3), 3);
    }
}
