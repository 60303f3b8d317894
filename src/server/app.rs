//! Assembling a server from a checkpoint directory: the model (on the CPU or a GPU), the engine
//! thread, the tokenizer and the chat template.

use std::path::Path;
use std::sync::Arc;

use crate::backend::Device;
use crate::engine::detok::Detokenize;
use crate::engine::{CpuStepModel, EngineConfig, EngineHandle, GpuStepModel, StepModel};
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
    build_state(dir, Device::Cpu, engine_cfg, server_cfg, chat_template)
}

/// Loads `dir` on `device` (the CPU reference, or [`GpuStepModel`] on `cuda:N` / `hip:N`) and
/// starts the engine.
pub fn build_state(
    dir: &Path,
    device: Device,
    engine_cfg: &EngineConfig,
    server_cfg: ServerConfig,
    chat_template: Option<&Path>,
) -> Result<AppState> {
    let (model, bos): (Box<dyn StepModel>, Option<u32>) = match device {
        Device::Cpu => {
            let model = CpuModel::load(dir, CpuOptions::default())?;
            let bos = model.config().bos_token_id;
            (Box::new(CpuStepModel::new(model)), bos)
        }
        gpu => {
            let model = GpuStepModel::load_with(dir, gpu, engine_cfg.gpu_options)?.with_cuda_graphs(engine_cfg.cuda_graph_max_bs);
            let bos = model.model().config().bos_token_id;
            (Box::new(model), bos)
        }
    };
    build_state_for(model, bos, dir, engine_cfg, server_cfg, chat_template)
}

/// Starts the engine over an already loaded `model` (e.g. a tensor-parallel group), with the
/// tokenizer and chat template of `dir`. `bos`: the model config's BOS token id.
pub fn build_state_for(
    model: Box<dyn StepModel>,
    bos: Option<u32>,
    dir: &Path,
    engine_cfg: &EngineConfig,
    server_cfg: ServerConfig,
    chat_template: Option<&Path>,
) -> Result<AppState> {
    let tokenizer = TextTokenizer::load(dir, bos)?.map(Arc::new);
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
    let engine = EngineHandle::start(model, engine_cfg, detok)?;
    Ok(ServerState::new(Arc::new(engine), tokenizer, template, server_cfg))
}
