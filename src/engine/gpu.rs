//! The engine's step model on a GPU (CUDA or HIP): [`GpuModel`] over a device page pool that the
//! engine sizes and addresses through its block tables.
//!
//! One engine step is one batched forward ([`GpuModel::forward_batch`]): the new tokens of every
//! scheduled sequence (decodes and prefill chunks alike) concatenated, logits only for the
//! sequences that sample. The logits of those rows are copied to the host, where the engine's
//! sampler runs (penalties, top-k/top-p/min-p, seeds and logprobs stay exactly those of the CPU
//! engine); that copy is the step's only synchronization apart from the index upload at its
//! start, when the stream is already idle.
//!
//! The pool is sized by the engine from [`ModelSpec::memory_bytes`] = free device memory after the
//! weights (`cuMemGetInfo`), times `--mem-fraction-static`.
//!
//! CUDA graphs (`--cuda-graph-max-bs`) are not captured yet: decode steps run eagerly
//! ([`StepModel::cuda_graph_max_bs`] reports 0).

use std::path::Path;

use crate::backend::Device;
use crate::engine::model::{ModelSpec, SeqStep, StepModel};
use crate::error::{Error, Result};
use crate::model::gpu::{BatchSeq, GpuModel, LogitRows, PagePool};

pub struct GpuStepModel {
    model: GpuModel,
    pool: Option<PagePool>,
    /// Free device memory after the weights, when the driver reported it.
    free_after_weights: Option<usize>,
}

impl GpuStepModel {
    /// Wraps a loaded model; reads the free device memory now (after the weights).
    pub fn new(model: GpuModel) -> GpuStepModel {
        let free_after_weights = match model.mem_info() {
            Ok((free, total)) => {
                tracing::info!(
                    "{}: {:.2} GiB of {:.2} GiB free after loading the weights",
                    model.device(),
                    free as f64 / (1u64 << 30) as f64,
                    total as f64 / (1u64 << 30) as f64
                );
                Some(free)
            }
            Err(e) => {
                tracing::warn!("{}: free device memory unknown ({e}); sizing the KV pool from host memory", model.device());
                None
            }
        };
        GpuStepModel { model, pool: None, free_after_weights }
    }

    /// Loads `dir` onto `device` (`cuda:N` or `hip:N`).
    pub fn load(dir: &Path, device: Device) -> Result<GpuStepModel> {
        Ok(GpuStepModel::new(GpuModel::load(dir, device)?))
    }

    pub fn model(&self) -> &GpuModel {
        &self.model
    }

    pub fn pool(&self) -> Option<&PagePool> {
        self.pool.as_ref()
    }
}

impl StepModel for GpuStepModel {
    fn spec(&self) -> ModelSpec {
        let c = self.model.config();
        ModelSpec {
            num_layers: c.num_hidden_layers,
            latent_width: self.model.latent_width(),
            bytes_per_value: std::mem::size_of::<f32>(),
            vocab_size: c.vocab_size,
            max_positions: c.max_position_embeddings.min(self.model.max_positions()),
            eos_token_ids: c.eos_token_ids.clone(),
            memory_bytes: self.free_after_weights,
        }
    }

    fn allocate_cache(&mut self, num_pages: usize, page_size: usize) -> Result<()> {
        // Free the old pool first: the new one may need its memory.
        self.pool = None;
        let pool = self.model.new_page_pool(num_pages, page_size)?;
        self.model.stream().synchronize()?;
        tracing::info!(
            "{}: KV page pool of {num_pages} pages × {page_size} positions ({:.1} MiB)",
            self.model.device(),
            pool.bytes() as f64 / (1 << 20) as f64
        );
        self.pool = Some(pool);
        Ok(())
    }

    fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        let pool = self.pool.as_mut().ok_or_else(|| Error::InvalidArgument("step before allocate_cache".into()))?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let seqs: Vec<BatchSeq<'_>> = batch
            .iter()
            .map(|s| BatchSeq {
                tokens: s.tokens,
                start: s.start,
                block_table: s.block_table,
                logits: if s.want_logits { LogitRows::Last } else { LogitRows::None },
            })
            .collect();
        let out = self.model.forward_batch(pool, &seqs)?;
        Ok(out.into_iter().zip(batch).map(|(l, s)| s.want_logits.then_some(l)).collect())
    }

    fn device(&self) -> String {
        self.model.device().to_string()
    }
}
