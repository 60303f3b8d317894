//! The engine's step model over a tensor-parallel group of the local GPUs ([`TpModel`]): the
//! engine sees one model; its block tables address one page pool per rank (same shape, same
//! pages). Like [`crate::engine::GpuStepModel`], one engine step is one batched forward, and
//! decode steps of up to `--cuda-graph-max-bs` sequences replay graphs captured on every rank
//! together (falling back to eager steps if a capture fails). The pool is sized from the GPU
//! with the least free memory after the weights.
//!
//! A [`TpModel`] loaded with DP attention is not served here (its `forward_batch` refuses: each
//! sequence would need a rank, pages from that rank's pool and prefix hits from that rank only;
//! see docs/MULTI_GPU.md, "DP attention").

use crate::engine::gpu::GpuStepModel;
use crate::engine::model::{ModelSpec, SeqStep, StepModel};
use crate::error::{Error, Result};
use crate::model::gpu::{BatchSeq, LogitRows, PagePool, TpDecodeGraph, TpModel};

pub struct TpStepModel {
    /// Captured decode graphs (dropped before the pools and the model).
    graphs: Vec<TpDecodeGraph>,
    pools: Option<Vec<PagePool>>,
    model: TpModel,
    free_after_weights: Option<usize>,
    graph_max_bs: usize,
    pad_page: Option<u32>,
}

impl TpStepModel {
    pub fn new(model: TpModel) -> TpStepModel {
        let free_after_weights = match model.mem_info() {
            Ok((free, total)) => {
                tracing::info!(
                    "{}: {:.2} GiB of {:.2} GiB free after loading the weights (least of the GPUs)",
                    model.describe(),
                    free as f64 / (1u64 << 30) as f64,
                    total as f64 / (1u64 << 30) as f64
                );
                Some(free)
            }
            Err(e) => {
                tracing::warn!("{}: free device memory unknown ({e}); sizing the KV pool from host memory", model.describe());
                None
            }
        };
        TpStepModel { graphs: Vec::new(), pools: None, model, free_after_weights, graph_max_bs: 0, pad_page: None }
    }

    /// Replays decode steps of up to `max_bs` sequences as captured graphs (0: never).
    pub fn with_cuda_graphs(mut self, max_bs: usize) -> TpStepModel {
        self.graph_max_bs = max_bs;
        self
    }

    pub fn model(&self) -> &TpModel {
        &self.model
    }

    fn graph(&mut self, bs: usize) -> Option<usize> {
        if let Some(i) = self.graphs.iter().position(|g| g.batch_size() == bs) {
            return Some(i);
        }
        let (pools, pad) = (self.pools.as_mut()?, self.pad_page?);
        let t0 = std::time::Instant::now();
        match self.model.capture_decode_graph(pools, bs, pad) {
            Ok(g) => {
                tracing::info!("{}: captured the decode graphs of batch size {bs} in {:.1?}", self.model.describe(), t0.elapsed());
                self.graphs.push(g);
                Some(self.graphs.len() - 1)
            }
            Err(e) => {
                tracing::warn!("{}: capturing the decode graphs of batch size {bs} failed ({e}); CUDA graphs off", self.model.describe());
                self.graph_max_bs = 0;
                self.graphs.clear();
                None
            }
        }
    }
}

impl StepModel for TpStepModel {
    fn spec(&self) -> ModelSpec {
        let c = self.model.config();
        ModelSpec {
            num_layers: c.num_hidden_layers,
            latent_width: self.model.latent_width(),
            position_bytes: self.model.latent_width() * std::mem::size_of::<f32>(),
            vocab_size: c.vocab_size,
            max_positions: c.max_position_embeddings.min(self.model.max_positions()),
            eos_token_ids: c.eos_token_ids.clone(),
            memory_bytes: self.free_after_weights,
        }
    }

    fn allocate_cache(&mut self, num_pages: usize, page_size: usize) -> Result<()> {
        self.graphs.clear();
        self.pools = None;
        let extra = usize::from(self.graph_max_bs > 0);
        let pools = self.model.new_page_pools(num_pages + extra, page_size)?;
        self.pad_page = (extra > 0).then_some(num_pages as u32);
        tracing::info!(
            "{}: KV page pool of {num_pages} pages × {page_size} positions per GPU ({:.1} MiB each)",
            self.model.describe(),
            pools[0].bytes() as f64 / (1 << 20) as f64
        );
        self.pools = Some(pools);
        Ok(())
    }

    fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        if self.pools.is_none() {
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
        let graph = if decode { self.graph(GpuStepModel::graph_batch_size(batch.len())) } else { None };
        let pools = self.pools.as_mut().ok_or_else(|| Error::InvalidArgument("step before allocate_cache".into()))?;
        let out = match graph {
            Some(i) => self.model.forward_decode_graph(&self.graphs[i], pools, &seqs)?,
            None => self.model.forward_batch(pools, &seqs)?,
        };
        Ok(out.into_iter().zip(batch).map(|(l, s)| s.want_logits.then_some(l)).collect())
    }

    fn cuda_graph_max_bs(&self) -> usize {
        self.graph_max_bs
    }

    fn device(&self) -> String {
        self.model.describe()
    }
}
