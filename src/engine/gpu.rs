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
//! CUDA graphs ([`GpuStepModel::with_cuda_graphs`], `--cuda-graph-max-bs N`): a step in which
//! every sequence decodes one token, with at most N sequences, replays a graph captured for the
//! next batch size of 1, 2, 4, 8, then multiples of 8 (padding rows compute on a page reserved
//! for them, one page beyond those the engine hands out). Graphs are captured on first use of
//! their size; if capture fails, graphs are turned off (logged) and steps run eagerly. Prefill
//! and mixed steps always run eagerly.

use std::path::Path;

use crate::backend::Device;
use crate::engine::model::{ModelSpec, SeqStep, StepModel};
use crate::error::{Error, Result};
use crate::model::gpu::{BatchSeq, DecodeGraph, GpuModel, GpuOptions, LogitRows, PagePool};

pub struct GpuStepModel {
    /// Captured decode graphs, by batch size (dropped before the pool and the model).
    graphs: Vec<DecodeGraph>,
    pool: Option<PagePool>,
    model: GpuModel,
    /// Free device memory after the weights, when the driver reported it.
    free_after_weights: Option<usize>,
    /// Largest decode batch replayed as a graph (0: none).
    graph_max_bs: usize,
    /// The page reserved for padding rows of graphs (the pool's last).
    pad_page: Option<u32>,
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
        GpuStepModel { graphs: Vec::new(), pool: None, model, free_after_weights, graph_max_bs: 0, pad_page: None }
    }

    /// Loads `dir` onto `device` (`cuda:N` or `hip:N`) with the reference options.
    pub fn load(dir: &Path, device: Device) -> Result<GpuStepModel> {
        Self::load_with(dir, device, GpuOptions::reference())
    }

    /// Loads `dir` onto `device` to compute as `opts` says.
    pub fn load_with(dir: &Path, device: Device, opts: GpuOptions) -> Result<GpuStepModel> {
        Ok(GpuStepModel::new(GpuModel::load_with(dir, device, opts)?))
    }

    /// Replays decode steps of up to `max_bs` sequences as captured graphs (0: never). Call
    /// before the engine allocates the pool (it reserves the padding page).
    pub fn with_cuda_graphs(mut self, max_bs: usize) -> GpuStepModel {
        self.graph_max_bs = max_bs;
        self
    }

    /// The graph batch size a decode batch of `b` sequences runs with.
    pub fn graph_batch_size(b: usize) -> usize {
        match b {
            0..=1 => 1,
            2 => 2,
            3..=4 => 4,
            _ => b.div_ceil(8) * 8,
        }
    }

    /// Batch sizes of the graphs captured so far.
    pub fn captured_graphs(&self) -> Vec<usize> {
        self.graphs.iter().map(|g| g.batch_size()).collect()
    }

    /// The graph for `bs`, captured now if needed; `None` (and graphs off) when capture fails.
    fn graph(&mut self, bs: usize) -> Option<usize> {
        if let Some(i) = self.graphs.iter().position(|g| g.batch_size() == bs) {
            return Some(i);
        }
        let (pool, pad) = (self.pool.as_mut()?, self.pad_page?);
        let t0 = std::time::Instant::now();
        match self.model.capture_decode_graph(pool, bs, pad) {
            Ok(g) => {
                tracing::info!("{}: captured the decode graph of batch size {bs} in {:.1?}", self.model.device(), t0.elapsed());
                self.graphs.push(g);
                Some(self.graphs.len() - 1)
            }
            Err(e) => {
                tracing::warn!("{}: capturing the decode graph of batch size {bs} failed ({e}); CUDA graphs off, decode steps run eagerly", self.model.device());
                self.graph_max_bs = 0;
                self.graphs.clear();
                None
            }
        }
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
            position_bytes: self.model.cache_row_bytes(),
            vocab_size: c.vocab_size,
            max_positions: c.max_position_embeddings.min(self.model.max_positions()),
            eos_token_ids: c.eos_token_ids.clone(),
            memory_bytes: self.free_after_weights,
        }
    }

    fn allocate_cache(&mut self, num_pages: usize, page_size: usize) -> Result<()> {
        // Free the old pool (and the graphs that address it) first: the new one may need its memory.
        self.graphs.clear();
        self.pool = None;
        // Graphs get one more page, beyond the engine's, for their padding rows.
        let extra = usize::from(self.graph_max_bs > 0);
        let pool = self.model.new_page_pool(num_pages + extra, page_size)?;
        self.model.stream().synchronize()?;
        self.pad_page = (extra > 0).then_some(num_pages as u32);
        tracing::info!(
            "{}: KV page pool of {num_pages} pages × {page_size} positions ({:.1} MiB){}",
            self.model.device(),
            pool.bytes() as f64 / (1 << 20) as f64,
            if extra > 0 { format!(", CUDA graphs for decode batches up to {}", self.graph_max_bs) } else { String::new() }
        );
        self.pool = Some(pool);
        Ok(())
    }

    fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        if self.pool.is_none() {
            return Err(Error::InvalidArgument("step before allocate_cache".into()));
        }
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
        let decode = batch.len() <= self.graph_max_bs && batch.iter().all(|s| s.tokens.len() == 1 && s.want_logits);
        let graph = if decode { self.graph(Self::graph_batch_size(batch.len())) } else { None };
        let pool = self.pool.as_mut().ok_or_else(|| Error::InvalidArgument("step before allocate_cache".into()))?;
        let out = match graph {
            Some(i) => self.model.forward_decode_graph(&self.graphs[i], pool, &seqs)?,
            None => self.model.forward_batch(pool, &seqs)?,
        };
        Ok(out.into_iter().zip(batch).map(|(l, s)| s.want_logits.then_some(l)).collect())
    }

    fn cuda_graph_max_bs(&self) -> usize {
        self.graph_max_bs
    }

    fn device(&self) -> String {
        self.model.device().to_string()
    }
}
