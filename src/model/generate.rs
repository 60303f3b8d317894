//! Greedy generation through the KV cache, for any backend's model.

use crate::error::Result;
use crate::model::config::ModelConfig;
use crate::ops::sampling::argmax;
use crate::tensor::Tensor;

/// A causal language model with a per-sequence cache: what `generate` and the tests drive.
pub trait CausalLm {
    type Cache;
    fn config(&self) -> &ModelConfig;
    fn new_cache(&self) -> Result<Self::Cache>;
    /// Runs `tokens` after the cached ones, appends them to `cache`, returns [tokens.len(), vocab] logits.
    fn forward(&self, tokens: &[u32], cache: &mut Self::Cache) -> Result<Tensor>;
}

pub struct Generation {
    /// Logits at every prompt position, [prompt_len, vocab].
    pub prompt_logits: Tensor,
    pub output_token_ids: Vec<u32>,
}

/// Prefills `prompt` in one step, then decodes one token at a time, greedily. Stops after
/// `max_new_tokens`, or at an EOS token when `stop_at_eos` (the EOS token is kept in the output).
pub fn greedy_generate<M: CausalLm>(
    model: &M,
    prompt: &[u32],
    max_new_tokens: usize,
    stop_at_eos: bool,
) -> Result<Generation> {
    let mut cache = model.new_cache()?;
    let prompt_logits = model.forward(prompt, &mut cache)?;
    let vocab = model.config().vocab_size;
    let mut next = argmax(prompt_logits.row(prompt.len() - 1)) as u32;
    let mut output = Vec::with_capacity(max_new_tokens);
    while output.len() < max_new_tokens {
        output.push(next);
        if stop_at_eos && model.config().eos_token_ids.contains(&next) {
            break;
        }
        if output.len() == max_new_tokens {
            break;
        }
        let logits = model.forward(&[next], &mut cache)?;
        debug_assert_eq!(logits.shape(), [1, vocab]);
        next = argmax(logits.row(0)) as u32;
    }
    Ok(Generation { prompt_logits, output_token_ids: output })
}
