//! Generation: prefill the prompt in one batch, then decode token by token with the KV cache.
//! Stop rules (EOS, token budget, context end, cancellation) live here; the forward pass and the
//! sampler know nothing of them.

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
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_new_tokens: 128, sampling: SamplingParams::default(), stop_on_eos: true }
    }
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
}

enum RunState {
    /// The next step runs these prompt tokens (those not already cached) and samples.
    Prefill(Vec<u32>),
    /// `step` returned this token and the generation may go on: the next step runs it.
    Next(u32),
    /// Finished (the last token returned was the final one, or a later step returned `None`).
    Done(FinishReason),
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

    /// Forgets the KV cache (and drops a step-wise generation in progress).
    pub fn reset(&mut self) {
        self.cache.clear();
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
        let sampler = Sampler::new(opts.sampling.clone(), cfg.vocab_size, cfg.tokenizer_size)?;

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
        });
        Ok(())
    }

    /// One forward pass (the first step runs the prompt) and the next token, or `None` when the
    /// generation is over (EOS or `max_new_tokens` reached by the previous token, or the context
    /// is full). An error ends the generation and resets the session.
    pub fn step(&mut self) -> Result<Option<u32>> {
        let Some(run) = self.run.as_mut() else {
            return Err(Error::invalid("session", "step() without begin(): no generation in progress"));
        };
        let feed = match &mut run.state {
            RunState::Done(_) => return Ok(None),
            RunState::Prefill(fresh) => std::mem::take(fresh),
            RunState::Next(next) => {
                // Prompt + generated never exceed the context: `next` will sit at position
                // history.len(), the last one there is.
                if self.history.len() + 1 >= self.model.config.context_length {
                    run.state = RunState::Done(FinishReason::ContextFull);
                    return Ok(None);
                }
                vec![*next]
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
        let eos = self.model.config.eos_token_id;
        let Some(run) = self.run.as_mut() else {
            return Err(Error::invalid("session", "no generation in progress"));
        };
        let next = run.sampler.sample(&mut self.logits, &self.history)?;
        run.out.push(next);
        run.state = if run.stop_on_eos && Some(next) == eos {
            RunState::Done(FinishReason::Eos)
        } else if run.out.len() >= run.max_new_tokens {
            RunState::Done(FinishReason::Length)
        } else {
            RunState::Next(next)
        };
        Ok(next)
    }

    /// Ends the step-wise generation and returns it. Its finish reason is `Cancelled` ("abort")
    /// when the generation could have gone on, i.e. unless the last token returned by
    /// [`Session::step`] was final (EOS, `max_new_tokens`) or `step` returned `None`. The cache
    /// keeps what was evaluated, so the next `begin` can reuse it.
    pub fn end(&mut self) -> Result<Generation> {
        let Some(run) = self.run.take() else {
            return Err(Error::invalid("session", "end() without begin(): no generation in progress"));
        };
        let finish = match run.state {
            RunState::Done(reason) => reason,
            RunState::Prefill(_) | RunState::Next(_) => FinishReason::Cancelled,
        };
        Ok(Generation { tokens: run.out, finish, prompt_tokens_evaluated: run.prompt_tokens_evaluated })
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
