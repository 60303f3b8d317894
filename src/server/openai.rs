//! Request bodies of the OpenAI-compatible endpoints and SGLang's native `/generate`, and their
//! translation into the engine's [`SamplingParams`].

use serde::Deserialize;
use serde_json::{Map, Value as Json};

use crate::engine::request::{SamplingParams, MAX_TOP_LOGPROBS};
use crate::server::error::ApiError;

/// Most choices (`n`) or prompts one request may ask for.
pub const MAX_CHOICES: usize = 128;

/// `stop`: one string or a list.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}

/// Sampling fields shared by the OpenAI endpoints (OpenAI's names, plus vLLM/SGLang extensions).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CommonSampling {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub stop: Option<StopSpec>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    pub n: Option<usize>,
}

impl CommonSampling {
    pub fn to_params(&self, max_tokens: Option<u64>) -> Result<SamplingParams, ApiError> {
        let d = SamplingParams::default();
        let max_tokens = match max_tokens.or(self.max_tokens) {
            Some(0) => return Err(ApiError::bad_request("max_tokens must be at least 1").param("max_tokens")),
            Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
            None => None,
        };
        let top_k = match self.top_k {
            Some(k) if k > 0 => k as usize,
            _ => 0,
        };
        let stop = self.stop.clone().map(StopSpec::into_vec).unwrap_or_default();
        if stop.len() > 16 {
            return Err(ApiError::bad_request("at most 16 stop strings are supported").param("stop"));
        }
        Ok(SamplingParams {
            max_tokens,
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k,
            min_p: self.min_p.unwrap_or(d.min_p),
            seed: self.seed.map(|s| s as u64),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            stop,
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            logprobs: false,
            top_logprobs: 0,
            skip_special_tokens: self.skip_special_tokens.unwrap_or(true),
        })
    }

    pub fn choices(&self) -> Result<usize, ApiError> {
        match self.n.unwrap_or(1) {
            0 => Err(ApiError::bad_request("n must be at least 1").param("n")),
            n if n > MAX_CHOICES => Err(ApiError::bad_request(format!("n must be at most {MAX_CHOICES}")).param("n")),
            n => Ok(n),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// A message's `content`: a string, or a list of parts of which only text is supported.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    pub tool_calls: Option<Json>,
    pub tool_call_id: Option<String>,
    pub reasoning_content: Option<String>,
}

impl ChatMessage {
    /// The message as the chat template sees it.
    pub fn to_template_value(&self, index: usize) -> Result<Json, ApiError> {
        let param = || format!("messages[{index}].content");
        let content = match &self.content {
            None => None,
            Some(MessageContent::Text(s)) => Some(s.clone()),
            Some(MessageContent::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::bad_request(format!(
                                "content parts of type `{kind}` are not supported (text only)"
                            ))
                            .param(param()))
                        }
                    }
                }
                Some(s)
            }
        };
        match self.role.as_str() {
            "system" | "user" | "tool" | "developer" if content.is_none() => {
                return Err(ApiError::bad_request(format!("a `{}` message needs content", self.role)).param(param()))
            }
            "assistant" if content.is_none() && self.tool_calls.is_none() => {
                return Err(ApiError::bad_request("an assistant message needs content or tool_calls").param(param()))
            }
            "system" | "user" | "assistant" | "tool" => {}
            // OpenAI's newer name for the system role.
            "developer" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown role `{other}` (expected system, user, assistant or tool)"
                ))
                .param(format!("messages[{index}].role")))
            }
        }
        let mut m = Map::new();
        let role = if self.role == "developer" { "system" } else { self.role.as_str() };
        m.insert("role".into(), Json::String(role.into()));
        m.insert("content".into(), content.map_or(Json::Null, Json::String));
        if let Some(tc) = &self.tool_calls {
            m.insert("tool_calls".into(), tc.clone());
        }
        if let Some(n) = &self.name {
            m.insert("name".into(), Json::String(n.clone()));
        }
        if let Some(id) = &self.tool_call_id {
            m.insert("tool_call_id".into(), Json::String(id.clone()));
        }
        if let Some(r) = &self.reasoning_content {
            m.insert("reasoning_content".into(), Json::String(r.clone()));
        }
        Ok(Json::Object(m))
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    pub sampling: CommonSampling,
    pub max_completion_tokens: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
    pub tools: Option<Json>,
    pub response_format: Option<Json>,
    pub chat_template_kwargs: Option<Map<String, Json>>,
    /// SGLang: put the reasoning in `reasoning_content` (default true with a reasoning parser).
    pub separate_reasoning: Option<bool>,
}

impl ChatCompletionRequest {
    pub fn params(&self) -> Result<SamplingParams, ApiError> {
        let mut p = self.sampling.to_params(self.max_completion_tokens)?;
        p.logprobs = self.logprobs.unwrap_or(false);
        p.top_logprobs = self.top_logprobs.unwrap_or(0);
        if p.top_logprobs > 0 && !p.logprobs {
            return Err(ApiError::bad_request("top_logprobs needs logprobs: true").param("top_logprobs"));
        }
        if p.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(ApiError::bad_request(format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}"))
                .param("top_logprobs"));
        }
        if let Some(rf) = &self.response_format {
            if rf.get("type").and_then(|t| t.as_str()).is_some_and(|t| t != "text") {
                return Err(ApiError::bad_request("response_format other than `text` is not supported yet")
                    .param("response_format"));
            }
        }
        Ok(p)
    }
}

/// `prompt` of `/v1/completions`: text, texts, token ids, or lists of token ids.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: PromptSpec,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    pub sampling: CommonSampling,
    /// Number of top alternatives per token (0..=20); the sampled token's log-probability is
    /// returned whenever this is present.
    pub logprobs: Option<usize>,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
    pub best_of: Option<usize>,
}

impl CompletionRequest {
    pub fn params(&self) -> Result<SamplingParams, ApiError> {
        let mut p = self.sampling.to_params(None)?;
        if let Some(n) = self.logprobs {
            if n > MAX_TOP_LOGPROBS {
                return Err(ApiError::bad_request(format!("logprobs must be at most {MAX_TOP_LOGPROBS}")).param("logprobs"));
            }
            p.logprobs = true;
            p.top_logprobs = n;
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad_request("suffix is not supported").param("suffix"));
        }
        if self.best_of.is_some_and(|b| b > 1) {
            return Err(ApiError::bad_request("best_of > 1 is not supported").param("best_of"));
        }
        Ok(p)
    }
}

/// SGLang's `/generate` body.
#[derive(Clone, Debug, Deserialize)]
pub struct GenerateBody {
    pub text: Option<TextOrTexts>,
    pub input_ids: Option<IdsOrIdLists>,
    #[serde(default)]
    pub sampling_params: NativeSampling,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub return_logprob: bool,
    pub top_logprobs_num: Option<usize>,
    pub rid: Option<Json>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum TextOrTexts {
    One(String),
    Many(Vec<String>),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum IdsOrIdLists {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

/// SGLang's `sampling_params` (its names; `max_new_tokens` defaults to 128 as in SGLang).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct NativeSampling {
    pub max_new_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub stop: Option<StopSpec>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    pub seed: Option<i64>,
    pub sampling_seed: Option<i64>,
    pub n: Option<usize>,
}

pub const NATIVE_DEFAULT_MAX_NEW_TOKENS: u64 = 128;

impl NativeSampling {
    pub fn to_params(&self) -> Result<SamplingParams, ApiError> {
        let common = CommonSampling {
            max_tokens: Some(self.max_new_tokens.unwrap_or(NATIVE_DEFAULT_MAX_NEW_TOKENS)),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            seed: self.seed.or(self.sampling_seed),
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            repetition_penalty: self.repetition_penalty,
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
            ignore_eos: self.ignore_eos,
            skip_special_tokens: self.skip_special_tokens,
            n: self.n,
        };
        common.to_params(None).map_err(|mut e| {
            if e.param.as_deref() == Some("max_tokens") {
                e.param = Some("sampling_params.max_new_tokens".into());
                e.message = e.message.replace("max_tokens", "max_new_tokens");
            }
            e
        })
    }
}
