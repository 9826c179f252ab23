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
pub struct Session {
    model: Arc<Phi2>,
    cache: KvCache,
    history: Vec<u32>,
    logits: Vec<f32>,
}

impl Session {
    pub fn new(model: Arc<Phi2>) -> Self {
        let cache = model.new_cache();
        let logits = Vec::with_capacity(model.config.vocab_size);
        Session { model, cache, history: Vec::new(), logits }
    }

    pub fn model(&self) -> &Arc<Phi2> {
        &self.model
    }

    /// Tokens the cache holds.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    pub fn reset(&mut self) {
        self.cache.clear();
        self.history.clear();
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
        let mut sampler = Sampler::new(opts.sampling.clone(), cfg.vocab_size, cfg.tokenizer_size)?;

        // Keep the cached prefix shared with this prompt; at least the last prompt token is re-run
        // so that there are logits to sample from.
        let mut common = self.history.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
        if common < self.history.len() {
            self.reset();
            common = 0;
        }
        let fresh = &prompt[common..];
        let mut out = Vec::with_capacity(opts.max_new_tokens);
        let finish = |tokens: Vec<u32>, finish| Generation { tokens, finish, prompt_tokens_evaluated: fresh.len() };
        if cancel.load(Ordering::Relaxed) {
            return Ok(finish(out, FinishReason::Cancelled));
        }
        if opts.max_new_tokens == 0 {
            return Ok(finish(out, FinishReason::Length));
        }
        self.run(fresh)?;
        loop {
            let next = sampler.sample(&mut self.logits, &self.history)?;
            out.push(next);
            let keep_going = on_token(next);
            if opts.stop_on_eos && Some(next) == cfg.eos_token_id {
                return Ok(finish(out, FinishReason::Eos));
            }
            if out.len() >= opts.max_new_tokens {
                return Ok(finish(out, FinishReason::Length));
            }
            if !keep_going || cancel.load(Ordering::Relaxed) {
                return Ok(finish(out, FinishReason::Cancelled));
            }
            // Prompt + generated never exceed the context: `next` will sit at position
            // history.len(), the last one there is.
            if self.history.len() + 1 >= cfg.context_length {
                return Ok(finish(out, FinishReason::ContextFull));
            }
            self.run(&[next])?;
        }
    }

    /// Feeds tokens through the model, leaving the last position's logits in `self.logits`.
    fn run(&mut self, tokens: &[u32]) -> Result<()> {
        let logits = self.model.forward(tokens, &mut self.cache, false)?;
        self.history.extend_from_slice(tokens);
        self.logits.clear();
        self.logits.extend(logits.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}
