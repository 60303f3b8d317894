//! The engine's view of a model: one batched step over several sequences, each with its new
//! tokens and its block table into the paged latent cache that the backend owns.
//!
//! The CPU implementation ([`CpuStepModel`]) runs the sequences of a batch one after another
//! through [`CpuModel::forward_tokens`] over a [`HostLatentPool`]. The GPU implementation
//! ([`crate::engine::gpu::GpuStepModel`]) runs a whole batch in one forward over a device page
//! pool.
//!
//! A sampling sequence gets back its logits row, or — when its sampler needs nothing but the
//! argmax of the raw logits ([`SeqStep::greedy`]) and the backend takes that argmax itself — the
//! token ([`StepOutput`]).

use crate::engine::block_manager::PageId;
use crate::engine::kv_cache::HostLatentPool;
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::cpu::CpuModel;
use crate::model::generate::CausalLm;

/// What the engine needs to know about a model to size its cache and check requests.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub num_layers: usize,
    /// Values per cached position per layer (`kv_lora_rank + qk_rope_head_dim`).
    pub latent_width: usize,
    /// Bytes of one cached position of one layer in the backend's pool: `latent_width` × 4 for
    /// the CPU's f32 (× 2 for a bf16 GPU cache), 656 for the GPU's fp8 e4m3 rows.
    pub position_bytes: usize,
    pub vocab_size: usize,
    /// Longest sequence the model accepts (`max_position_embeddings`).
    pub max_positions: usize,
    pub eos_token_ids: Vec<u32>,
    /// Memory the KV pool may take a fraction of (`--mem-fraction-static`), measured after the
    /// weights are loaded: free device memory on a GPU; `None`: the host's `MemAvailable`.
    pub memory_bytes: Option<usize>,
}

impl ModelSpec {
    /// The spec of a model of `cfg` whose cache holds `latent_width` values in `position_bytes`
    /// bytes per position and layer, and that runs sequences of up to `max_positions` (capped by
    /// `max_position_embeddings`).
    pub fn for_config(cfg: &ModelConfig, latent_width: usize, position_bytes: usize, max_positions: usize, memory_bytes: Option<usize>) -> ModelSpec {
        ModelSpec {
            num_layers: cfg.num_hidden_layers,
            latent_width,
            position_bytes,
            vocab_size: cfg.vocab_size,
            max_positions: cfg.max_position_embeddings.min(max_positions),
            eos_token_ids: cfg.eos_token_ids.clone(),
            memory_bytes,
        }
    }

    pub fn bytes_per_page(&self, page_size: usize) -> usize {
        self.num_layers * page_size * self.position_bytes
    }
}

/// One sequence of a batch step.
#[derive(Clone, Copy, Debug)]
pub struct SeqStep<'a> {
    /// Tokens to compute after the cached ones.
    pub tokens: &'a [u32],
    /// Positions already cached (`tokens[0]` sits at position `start`).
    pub start: usize,
    /// Pages covering positions `0..start + tokens.len()`.
    pub block_table: &'a [PageId],
    /// Whether the logits of the last new position are needed (false for the inner chunks of a
    /// chunked prefill).
    pub want_logits: bool,
    /// The attention rank whose pool `block_table` addresses (0 unless the model has several,
    /// [`StepModel::dp_ranks`]).
    pub rank: usize,
    /// Whether the argmax of those logits is all the sequence's sampler needs
    /// ([`crate::engine::sampling::Sampler::takes_argmax`]): the step may return that token
    /// ([`StepOutput::Token`]) instead of the row.
    pub greedy: bool,
}

/// What a step returns for a sequence that wanted logits.
#[derive(Clone, Debug, PartialEq)]
pub enum StepOutput {
    /// The logits [vocab] of its last new position.
    Logits(Vec<f32>),
    /// The argmax of those logits (only for [`SeqStep::greedy`] sequences): the host's
    /// [`crate::ops::sampling::argmax`] of the same row — first index of the largest value, NaN
    /// and -inf never winning.
    Token(u32),
}

/// A model the engine can step.
pub trait StepModel: Send {
    fn spec(&self) -> ModelSpec;
    /// Allocates (or re-allocates) the latent pool: `num_pages` pages of `page_size` positions.
    fn allocate_cache(&mut self, num_pages: usize, page_size: usize) -> Result<()>;
    /// Computes one step: appends every sequence's new latent rows to its pages and returns, per
    /// sequence, what it needs of its last new position when `want_logits`: the logits, or
    /// their argmax for `greedy` sequences (a backend may always return the logits).
    fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Option<StepOutput>>>;
    /// Attention ranks with a page pool each (DP attention): the engine keeps an allocator and a
    /// prefix cache per rank, gives every sequence a rank, and [`StepModel::allocate_cache`]'s
    /// `num_pages` is per rank. 1 (the default): one pool.
    fn dp_ranks(&self) -> usize {
        1
    }
    /// Largest decode batch captured as a CUDA graph (0: none, as on the CPU).
    fn cuda_graph_max_bs(&self) -> usize {
        0
    }
    /// A short name for logs and `/v1/models` (e.g. "cpu").
    fn device(&self) -> String;
}

/// [`CpuModel`] over a host pool.
pub struct CpuStepModel {
    model: CpuModel,
    pool: Option<HostLatentPool>,
}

impl CpuStepModel {
    pub fn new(model: CpuModel) -> CpuStepModel {
        CpuStepModel { model, pool: None }
    }

    pub fn model(&self) -> &CpuModel {
        &self.model
    }
}

impl StepModel for CpuStepModel {
    fn spec(&self) -> ModelSpec {
        let c = self.model.config();
        let width = c.kv_lora_rank + c.qk_rope_head_dim;
        ModelSpec::for_config(c, width, width * std::mem::size_of::<f32>(), c.max_position_embeddings, None)
    }

    fn allocate_cache(&mut self, num_pages: usize, page_size: usize) -> Result<()> {
        let s = self.spec();
        self.pool = None;
        self.pool = Some(HostLatentPool::new(s.num_layers, s.latent_width, num_pages, page_size));
        Ok(())
    }

    fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Option<StepOutput>>> {
        let pool = self
            .pool
            .as_mut()
            .ok_or_else(|| Error::InvalidArgument("step before allocate_cache".into()))?;
        let mut out = Vec::with_capacity(batch.len());
        for s in batch {
            let need = (s.start + s.tokens.len()).div_ceil(pool.page_size());
            if s.block_table.len() < need {
                return Err(Error::InvalidArgument(format!(
                    "block table of {} pages cannot hold {} positions",
                    s.block_table.len(),
                    s.start + s.tokens.len()
                )));
            }
            let mut view = pool.seq(s.block_table, s.start);
            let logits = self.model.forward_tokens(s.tokens, &mut view)?;
            out.push(s.want_logits.then(|| StepOutput::Logits(logits.row(s.tokens.len() - 1).to_vec())));
        }
        Ok(out)
    }

    fn device(&self) -> String {
        "cpu".into()
    }
}
