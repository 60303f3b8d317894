//! What a client hands the engine (a prompt and its sampling parameters) and what it gets back
//! (a stream of [`EngineEvent`]s).

use std::fmt;

use serde::Serialize;

/// Per-request sampling parameters (OpenAI's and SGLang's names).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Tokens to generate at most. `None`: up to the context length.
    pub max_tokens: Option<usize>,
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0 = off). `top_k == 1` is greedy.
    pub top_k: usize,
    /// Drop tokens whose probability is below `min_p` times the largest one (0 = off).
    pub min_p: f32,
    /// Seed of this request's random stream; `None` draws one.
    pub seed: Option<u64>,
    /// Subtracted from a token's logit once per earlier occurrence in the output (OpenAI).
    pub frequency_penalty: f32,
    /// Subtracted from a token's logit if it occurred in the output (OpenAI).
    pub presence_penalty: f32,
    /// Divides positive (multiplies negative) logits of tokens seen in the prompt or the output
    /// (CTRL / transformers; 1 = off).
    pub repetition_penalty: f32,
    /// Stop when the generated text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
    /// Stop after generating one of these token ids (kept in the output ids, not in the text).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating after an end-of-sequence token.
    pub ignore_eos: bool,
    /// Return the log-probability of each sampled token.
    pub logprobs: bool,
    /// How many of the most likely alternatives to return per position (0..=20).
    pub top_logprobs: usize,
    /// Leave special tokens out of the text (default true).
    pub skip_special_tokens: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: None,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repetition_penalty: 1.0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: false,
            top_logprobs: 0,
            skip_special_tokens: true,
        }
    }
}

/// Most alternatives a request may ask for per position.
pub const MAX_TOP_LOGPROBS: usize = 20;

impl SamplingParams {
    /// Greedy decoding with at most `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams { max_tokens: Some(max_tokens), temperature: 0.0, ..Default::default() }
    }

    /// Whether sampling reduces to the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Checks every field's range; the error names the field (OpenAI's `param`).
    pub fn validate(&self) -> Result<(), InvalidParam> {
        let bad = |param: &'static str, message: String| Err(InvalidParam { param, message });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", format!("temperature must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.min_p.is_finite() && (0.0..=1.0).contains(&self.min_p)) {
            return bad("min_p", format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.frequency_penalty.is_finite() && (-2.0..=2.0).contains(&self.frequency_penalty)) {
            return bad(
                "frequency_penalty",
                format!("frequency_penalty must be in [-2, 2], got {}", self.frequency_penalty),
            );
        }
        if !(self.presence_penalty.is_finite() && (-2.0..=2.0).contains(&self.presence_penalty)) {
            return bad(
                "presence_penalty",
                format!("presence_penalty must be in [-2, 2], got {}", self.presence_penalty),
            );
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                format!("repetition_penalty must be > 0, got {}", self.repetition_penalty),
            );
        }
        if self.max_tokens == Some(0) {
            return bad("max_tokens", "max_tokens must be at least 1".into());
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return bad(
                "top_logprobs",
                format!("top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {}", self.top_logprobs),
            );
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return bad("stop", "stop strings must not be empty".into());
        }
        Ok(())
    }
}

/// A sampling parameter out of range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidParam {
    pub param: &'static str,
    pub message: String,
}

/// One generation request: prompt token ids and sampling parameters.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
}

/// Engine-wide request id.
pub type RequestId = u64;

/// Why a request stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum FinishReason {
    /// An end-of-sequence token or one of `stop_token_ids` (the token id).
    StopToken(u32),
    /// One of the `stop` strings.
    StopString(String),
    /// `max_tokens` or the context length.
    Length,
    /// Cancelled by the client (disconnect) or by shutdown.
    Abort,
}

impl FinishReason {
    /// OpenAI's `finish_reason`: "stop", "length" or "abort".
    pub fn openai(&self) -> &'static str {
        match self {
            FinishReason::StopToken(_) | FinishReason::StopString(_) => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.openai())
    }
}

/// Log-probability of one candidate token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
}

/// The sampled token's log-probability and the most likely alternatives (from the model's
/// distribution before temperature, penalties and filters).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SampledLogprobs {
    pub logprob: f32,
    pub top: Vec<TokenLogprob>,
}

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenOutput {
    pub token_id: u32,
    /// Text that this token makes final (may be empty while a multi-byte character or a possible
    /// stop string is pending). Empty when the engine has no detokenizer.
    pub text: String,
    pub logprobs: Option<SampledLogprobs>,
}

/// Counts reported when a request ends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache at first admission.
    pub cached_tokens: usize,
    /// Times this request was preempted (its cache dropped and recomputed).
    pub preemptions: usize,
}

/// What the engine sends a request's stream.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    Token(TokenOutput),
    /// The last event of a successful request; `text` is what was held back until the end.
    Finished { reason: FinishReason, text: String, usage: Usage },
    /// The request failed inside the engine (the model step returned an error).
    Failed(String),
}
