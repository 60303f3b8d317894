//! The engine's step model on a GPU (CUDA or HIP): [`GpuModel`] over a device page pool that the
//! engine sizes and addresses through its block tables.
//!
//! One engine step is one batched forward ([`GpuModel::forward_batch_as`]): the new tokens of
//! every scheduled sequence (decodes and prefill chunks alike) concatenated, logits only for the
//! sequences that sample. The logits of those rows are copied to the host, where the engine's
//! sampler runs (penalties, top-k/top-p/min-p, seeds and logprobs stay exactly those of the CPU
//! engine); that copy is the step's only synchronization apart from the index upload at its
//! start, when the stream is already idle.
//!
//! Greedy steps: when every sequence that samples only needs the argmax of its raw logits
//! ([`SeqStep::greedy`]), the argmax is taken on the device ([`Readout::Argmax`]: the same f32
//! rows, the host's tie and NaN rules) and only the token ids come back, B·4 bytes instead of
//! B·vocab·4. A step with any other sequence (sampling, penalties, logprobs) reads the logits for
//! all. `DSV3_HOST_SAMPLING=1` (or [`GpuStepModel::with_device_argmax`]`(false)`) always reads
//! the logits.
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
use crate::engine::model::{ModelSpec, SeqStep, StepModel, StepOutput};
use crate::error::{Error, Result};
use crate::model::gpu::{BatchOutput, BatchSeq, DecodeGraph, GpuModel, GpuOptions, LogitRows, PagePool, Readout};

/// A model whose decode steps can replay captured graphs: what [`GraphSteps::step`] runs, for
/// [`GpuStepModel`] (one GPU, one pool) and the tensor-parallel step model (a pool per rank).
/// `ranks[i]`: the attention rank of sequence `i` ([`SeqStep::rank`]; all 0 without DP attention).
pub(crate) trait GraphModel {
    type Pool: ?Sized;
    type Graph;
    /// The model's devices, for logs.
    fn name(&self) -> String;
    /// The batch size a graph was captured for.
    fn batch_size_of(g: &Self::Graph) -> usize;
    /// The graph batch size a decode step of sequences on `ranks` needs: the sequences, or under
    /// DP attention (graphs padded per rank) the most on one rank.
    fn decode_rows(&self, ranks: &[usize]) -> usize {
        ranks.len()
    }
    fn capture_decode_graph(&self, pool: &mut Self::Pool, bs: usize, pad_page: u32) -> Result<Self::Graph>;
    fn decode_graph_as(&self, g: &Self::Graph, pool: &mut Self::Pool, seqs: &[BatchSeq<'_>], ranks: &[usize], readout: Readout) -> Result<BatchOutput>;
    fn forward_batch_as(&self, pool: &mut Self::Pool, seqs: &[BatchSeq<'_>], ranks: &[usize], readout: Readout) -> Result<BatchOutput>;
}

impl GraphModel for GpuModel {
    type Pool = PagePool;
    type Graph = DecodeGraph;
    fn name(&self) -> String {
        self.device().to_string()
    }
    fn batch_size_of(g: &DecodeGraph) -> usize {
        g.batch_size()
    }
    fn capture_decode_graph(&self, pool: &mut PagePool, bs: usize, pad_page: u32) -> Result<DecodeGraph> {
        GpuModel::capture_decode_graph(self, pool, bs, pad_page)
    }
    fn decode_graph_as(&self, g: &DecodeGraph, pool: &mut PagePool, seqs: &[BatchSeq<'_>], _ranks: &[usize], readout: Readout) -> Result<BatchOutput> {
        GpuModel::decode_graph_as(self, g, pool, seqs, readout)
    }
    fn forward_batch_as(&self, pool: &mut PagePool, seqs: &[BatchSeq<'_>], _ranks: &[usize], readout: Readout) -> Result<BatchOutput> {
        GpuModel::forward_batch_as(self, pool, seqs, readout)
    }
}

/// The free device memory after the weights (logged), `None` when the driver did not report it.
pub(crate) fn free_after_weights(name: &str, mem_info: Result<(usize, usize)>, least: &str) -> Option<usize> {
    match mem_info {
        Ok((free, total)) => {
            tracing::info!(
                "{name}: {:.2} GiB of {:.2} GiB free after loading the weights{least}",
                free as f64 / (1u64 << 30) as f64,
                total as f64 / (1u64 << 30) as f64
            );
            Some(free)
        }
        Err(e) => {
            tracing::warn!("{name}: free device memory unknown ({e}); sizing the KV pool from host memory");
            None
        }
    }
}

/// Whether `DSV3_HOST_SAMPLING` asks for every step's logits on the host (set, not empty or 0).
fn host_sampling_forced() -> bool {
    std::env::var("DSV3_HOST_SAMPLING").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The decode graphs of a step model, by batch size, and the steps that replay them.
pub(crate) struct GraphSteps<G> {
    graphs: Vec<G>,
    /// Largest decode batch replayed as a graph (0: none).
    max_bs: usize,
    /// The page reserved for padding rows of graphs (the pool's last).
    pad_page: Option<u32>,
    /// Whether greedy steps take their argmax on the device.
    device_argmax: bool,
}

impl<G> GraphSteps<G> {
    pub(crate) fn new() -> Self {
        GraphSteps { graphs: Vec::new(), max_bs: 0, pad_page: None, device_argmax: !host_sampling_forced() }
    }

    pub(crate) fn set_device_argmax(&mut self, on: bool) {
        self.device_argmax = on;
    }

    pub(crate) fn max_bs(&self) -> usize {
        self.max_bs
    }

    pub(crate) fn set_max_bs(&mut self, max_bs: usize) {
        self.max_bs = max_bs;
    }

    pub(crate) fn graphs(&self) -> &[G] {
        &self.graphs
    }

    /// Drops the graphs (before their pool is freed); the pages the next pool needs beyond the
    /// engine's `num_pages`, whose first (page `num_pages`) becomes the padding page.
    pub(crate) fn reset(&mut self, num_pages: usize) -> usize {
        self.graphs.clear();
        let extra = usize::from(self.max_bs > 0);
        self.pad_page = (extra > 0).then_some(num_pages as u32);
        extra
    }

    /// The graph for `bs`, captured now if needed; `None` (and graphs off) when capture fails.
    fn graph<M: GraphModel<Graph = G>>(&mut self, model: &M, pool: &mut M::Pool, bs: usize) -> Option<usize> {
        if let Some(i) = self.graphs.iter().position(|g| M::batch_size_of(g) == bs) {
            return Some(i);
        }
        let pad = self.pad_page?;
        let t0 = std::time::Instant::now();
        match model.capture_decode_graph(pool, bs, pad) {
            Ok(g) => {
                tracing::info!("{}: captured the decode graph of batch size {bs} in {:.1?}", model.name(), t0.elapsed());
                self.graphs.push(g);
                Some(self.graphs.len() - 1)
            }
            Err(e) => {
                tracing::warn!("{}: capturing the decode graph of batch size {bs} failed ({e}); CUDA graphs off, decode steps run eagerly", model.name());
                self.max_bs = 0;
                self.graphs.clear();
                None
            }
        }
    }

    /// One engine step of `batch` on `model` over `pool` (`None`: not allocated yet): a graph
    /// replay when every sequence decodes one token and there are at most `max_bs` (per rank
    /// under DP attention), else eager; tokens from the device's argmax when every sequence that
    /// samples is greedy, else logits.
    pub(crate) fn step<M: GraphModel<Graph = G>>(&mut self, model: &M, pool: Option<&mut M::Pool>, batch: &[SeqStep<'_>]) -> Result<Vec<Option<StepOutput>>> {
        let pool = pool.ok_or_else(|| Error::InvalidArgument("step before allocate_cache".into()))?;
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
        let ranks: Vec<usize> = batch.iter().map(|s| s.rank).collect();
        let rows = model.decode_rows(&ranks);
        let decode = rows <= self.max_bs && batch.iter().all(|s| s.tokens.len() == 1 && s.want_logits);
        let graph = if decode { self.graph(model, pool, GpuStepModel::graph_batch_size(rows)) } else { None };
        let greedy = self.device_argmax && batch.iter().all(|s| s.greedy || !s.want_logits);
        let readout = if greedy { Readout::Argmax } else { Readout::Logits };
        let out = match graph {
            Some(i) => model.decode_graph_as(&self.graphs[i], pool, &seqs, &ranks, readout)?,
            None => model.forward_batch_as(pool, &seqs, &ranks, readout)?,
        };
        Ok(step_outputs(out, batch))
    }
}

/// Per sequence of `batch`, what it asked for of a forward's result: its logits row, or the
/// token its row's argmax gave.
fn step_outputs(out: BatchOutput, batch: &[SeqStep<'_>]) -> Vec<Option<StepOutput>> {
    match out {
        BatchOutput::Logits(rows) => rows.into_iter().zip(batch).map(|(l, s)| s.want_logits.then_some(StepOutput::Logits(l))).collect(),
        BatchOutput::Argmax(ids) => ids.iter().zip(batch).map(|(ids, s)| ids.first().filter(|_| s.want_logits).map(|&t| StepOutput::Token(t))).collect(),
    }
}

pub struct GpuStepModel {
    /// Captured decode graphs, by batch size (dropped before the pool and the model).
    graphs: GraphSteps<DecodeGraph>,
    pool: Option<PagePool>,
    model: GpuModel,
    /// Free device memory after the weights, when the driver reported it.
    free_after_weights: Option<usize>,
}

impl GpuStepModel {
    /// Wraps a loaded model; reads the free device memory now (after the weights).
    pub fn new(model: GpuModel) -> GpuStepModel {
        let free_after_weights = free_after_weights(&model.name(), model.mem_info(), "");
        GpuStepModel { graphs: GraphSteps::new(), pool: None, model, free_after_weights }
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
        self.graphs.set_max_bs(max_bs);
        self
    }

    /// Whether greedy steps take the argmax on the device (default: yes, unless
    /// `DSV3_HOST_SAMPLING=1`); `false` reads every step's logits on the host.
    pub fn with_device_argmax(mut self, on: bool) -> GpuStepModel {
        self.graphs.set_device_argmax(on);
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
        self.graphs.graphs().iter().map(|g| g.batch_size()).collect()
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
        let m = &self.model;
        ModelSpec::for_config(m.config(), m.latent_width(), m.cache_row_bytes(), m.max_positions(), self.free_after_weights)
    }

    fn allocate_cache(&mut self, num_pages: usize, page_size: usize) -> Result<()> {
        // Free the old pool (and the graphs that address it) first: the new one may need its memory.
        // Graphs get one more page, beyond the engine's, for their padding rows.
        let extra = self.graphs.reset(num_pages);
        self.pool = None;
        let pool = self.model.new_page_pool(num_pages + extra, page_size)?;
        self.model.stream().synchronize()?;
        tracing::info!(
            "{}: KV page pool of {num_pages} pages × {page_size} positions ({:.1} MiB){}",
            self.model.device(),
            pool.bytes() as f64 / (1 << 20) as f64,
            if extra > 0 { format!(", CUDA graphs for decode batches up to {}", self.graphs.max_bs()) } else { String::new() }
        );
        self.pool = Some(pool);
        Ok(())
    }

    fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Option<StepOutput>>> {
        self.graphs.step(&self.model, self.pool.as_mut(), batch)
    }

    fn cuda_graph_max_bs(&self) -> usize {
        self.graphs.max_bs()
    }

    fn device(&self) -> String {
        self.model.device().to_string()
    }
}
