//! Chat templates: the Jinja `chat_template` of a checkpoint's `tokenizer_config.json`, rendered
//! with minijinja the way transformers' `apply_chat_template` renders it (trim_blocks,
//! lstrip_blocks, `raise_exception`, Python string methods through minijinja-contrib's pycompat).
//! A checkpoint without one gets DeepSeek-V3's.

use std::path::Path;

use minijinja::{Environment, ErrorKind, Value};
use serde_json::{Map, Value as Json};

/// DeepSeek-V3's chat template (tokenizer_config.json of deepseek-ai/DeepSeek-V3).
pub const DEEPSEEK_V3_TEMPLATE: &str = include_str!("../../tests/fixtures/chat_templates/deepseek-v3.jinja");
pub const DEEPSEEK_BOS: &str = "<｜begin▁of▁sentence｜>";
pub const DEEPSEEK_EOS: &str = "<｜end▁of▁sentence｜>";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: {msg}")]
    Config { path: String, msg: String },
    #[error("chat template: {0}")]
    Syntax(String),
    /// Rendering failed for these messages (the client's fault: HTTP 400).
    #[error("chat template: {0}")]
    Render(String),
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Whether this is the built-in DeepSeek-V3 fallback.
    pub is_fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("bos_token", &self.bos_token).field("is_fallback", &self.is_fallback).finish()
    }
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string()).map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(ChatTemplate { env, bos_token: bos_token.into(), eos_token: eos_token.into(), is_fallback: false })
    }

    /// DeepSeek-V3's template with its special tokens.
    pub fn deepseek_v3() -> ChatTemplate {
        let mut t = ChatTemplate::new(DEEPSEEK_V3_TEMPLATE, DEEPSEEK_BOS, DEEPSEEK_EOS)
            .expect("the built-in DeepSeek-V3 template parses");
        t.is_fallback = true;
        t
    }

    /// The template of `dir/chat_template.jinja` or `dir/tokenizer_config.json`, or DeepSeek-V3's
    /// when there is none.
    pub fn from_checkpoint(dir: &Path) -> Result<ChatTemplate, TemplateError> {
        let path = dir.join("tokenizer_config.json");
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(ChatTemplate::deepseek_v3()) };
        let cfg_err = |msg: String| TemplateError::Config { path: path.display().to_string(), msg };
        let json: Json = serde_json::from_str(&text).map_err(|e| cfg_err(e.to_string()))?;
        let token = |key: &str, default: &str| -> String {
            match json.get(key) {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Object(o)) => o.get("content").and_then(|c| c.as_str()).unwrap_or(default).to_string(),
                _ => default.to_string(),
            }
        };
        let (bos, eos) = (token("bos_token", DEEPSEEK_BOS), token("eos_token", DEEPSEEK_EOS));
        // transformers >= 4.43 may save the template beside the config as chat_template.jinja.
        let jinja = std::fs::read_to_string(dir.join("chat_template.jinja")).ok();
        let source = match json.get("chat_template") {
            _ if jinja.is_some() => jinja,
            Some(Json::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => None,
        };
        match source {
            Some(s) => ChatTemplate::new(&s, &bos, &eos),
            None => {
                let mut t = ChatTemplate::deepseek_v3();
                t.bos_token = bos;
                t.eos_token = eos;
                Ok(t)
            }
        }
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// Renders `messages` (objects with `role`, `content`, and optionally `tool_calls`, ...).
    /// `extra` adds variables (a request's `chat_template_kwargs`).
    pub fn render(
        &self,
        messages: &[Json],
        tools: Option<&Json>,
        add_generation_prompt: bool,
        extra: &Map<String, Json>,
    ) -> Result<String, TemplateError> {
        let tmpl = self.env.get_template("chat").map_err(|e| TemplateError::Syntax(describe(&e)))?;
        let mut ctx = Map::new();
        for (k, v) in extra {
            ctx.insert(k.clone(), v.clone());
        }
        ctx.insert("messages".into(), Json::Array(messages.to_vec()));
        ctx.insert("add_generation_prompt".into(), Json::Bool(add_generation_prompt));
        ctx.insert("bos_token".into(), Json::String(self.bos_token.clone()));
        ctx.insert("eos_token".into(), Json::String(self.eos_token.clone()));
        if let Some(t) = tools {
            ctx.insert("tools".into(), t.clone());
        }
        tmpl.render(Value::from_serialize(&ctx)).map_err(|e| TemplateError::Render(describe(&e)))
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
