//! What every handler shares: the engine, the tokenizer, the chat template and the settings.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::EngineHandle;
use crate::server::chat_template::ChatTemplate;
use crate::server::error::ApiError;
use crate::server::reasoning::ReasoningParserKind;
use crate::tokenizer::TextTokenizer;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Name clients pass as `model` (`--served-model-name`; default: the model path).
    pub served_model_name: String,
    pub model_path: String,
    pub reasoning_parser: Option<ReasoningParserKind>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            served_model_name: "default".into(),
            model_path: String::new(),
            reasoning_parser: None,
            max_body_bytes: 8 << 20,
        }
    }
}

pub struct ServerState {
    pub engine: Arc<EngineHandle>,
    pub tokenizer: Option<Arc<TextTokenizer>>,
    pub template: Option<ChatTemplate>,
    pub cfg: ServerConfig,
    /// Unix time the server started (`created` of `/v1/models`).
    pub created: u64,
}

pub type AppState = Arc<ServerState>;

impl ServerState {
    pub fn new(
        engine: Arc<EngineHandle>,
        tokenizer: Option<Arc<TextTokenizer>>,
        template: Option<ChatTemplate>,
        cfg: ServerConfig,
    ) -> AppState {
        Arc::new(ServerState { engine, tokenizer, template, cfg, created: unix_now() })
    }

    /// 404 unless `model` is absent, empty, the served name or the model path.
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            None | Some("") => Ok(()),
            Some(m) if m == self.cfg.served_model_name || m == self.cfg.model_path => Ok(()),
            Some(m) => Err(ApiError::model_not_found(m)),
        }
    }

    pub fn tokenizer(&self) -> Result<&TextTokenizer, ApiError> {
        self.tokenizer.as_deref().ok_or_else(|| {
            ApiError::bad_request("this model has no tokenizer.json: send token ids instead of text").param("prompt")
        })
    }

    /// Text → ids with the checkpoint's BOS rule.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        self.tokenizer()?.encode(text).map_err(|e| ApiError::bad_request(e.to_string()).param("prompt"))
    }

    /// Text that already carries its special tokens (a rendered chat template) → ids.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        let enc = self
            .tokenizer()?
            .inner()
            .encode(text, false)
            .map_err(|e| ApiError::bad_request(format!("tokenizer: {e}")).param("messages"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        match &self.tokenizer {
            Some(t) => t.inner().decode(ids, skip_special).unwrap_or_default(),
            None => String::new(),
        }
    }

    /// One token's text, for logprobs.
    pub fn token_text(&self, id: u32) -> String {
        match &self.tokenizer {
            Some(t) => t.inner().decode(&[id], false).unwrap_or_default(),
            None => format!("<{id}>"),
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
