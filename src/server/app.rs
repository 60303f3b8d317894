//! Assembling a server from a checkpoint directory: the CPU model, the engine thread, the
//! tokenizer and the chat template.

use std::path::Path;
use std::sync::Arc;

use crate::engine::detok::Detokenize;
use crate::engine::{CpuStepModel, EngineConfig, EngineHandle};
use crate::error::{Error, Result};
use crate::model::cpu::{CpuModel, CpuOptions};
use crate::model::generate::CausalLm;
use crate::server::chat_template::ChatTemplate;
use crate::server::state::{AppState, ServerConfig, ServerState};
use crate::tokenizer::TextTokenizer;

/// Loads `dir` on the CPU and starts the engine. `chat_template`: a template file that overrides
/// the checkpoint's (`--chat-template`).
pub fn build_cpu_state(
    dir: &Path,
    engine_cfg: &EngineConfig,
    server_cfg: ServerConfig,
    chat_template: Option<&Path>,
) -> Result<AppState> {
    let model = CpuModel::load(dir, CpuOptions::default())?;
    let tokenizer = TextTokenizer::load(dir, model.config().bos_token_id)?.map(Arc::new);
    let template = match (&tokenizer, chat_template) {
        (None, _) => None,
        (Some(_), Some(path)) => {
            let source = std::fs::read_to_string(path)
                .map_err(|e| Error::io(format!("reading --chat-template {}", path.display()), e))?;
            let base = ChatTemplate::from_checkpoint(dir).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            Some(
                ChatTemplate::new(&source, base.bos_token(), crate::server::chat_template::DEEPSEEK_EOS)
                    .map_err(|e| Error::InvalidArgument(format!("--chat-template {}: {e}", path.display())))?,
            )
        }
        (Some(_), None) => Some(ChatTemplate::from_checkpoint(dir).map_err(|e| Error::InvalidArgument(e.to_string()))?),
    };
    if let Some(t) = &template {
        if t.is_fallback {
            tracing::info!("{} has no chat_template: using DeepSeek-V3's", dir.display());
        }
    }
    let detok: Option<Arc<dyn Detokenize>> = tokenizer.clone().map(|t| t as Arc<dyn Detokenize>);
    let engine = EngineHandle::start(Box::new(CpuStepModel::new(model)), engine_cfg, detok)?;
    Ok(ServerState::new(Arc::new(engine), tokenizer, template, server_cfg))
}
