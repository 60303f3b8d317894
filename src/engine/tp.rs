//! The engine's step model over a tensor-parallel group of the local GPUs ([`TpModel`]): the
//! engine sees one model; its block tables address one page pool per rank (same shape, same
//! pages). Like [`crate::engine::GpuStepModel`], one engine step is one batched forward, and
//! decode steps of up to `--cuda-graph-max-bs` sequences replay graphs captured on every rank
//! together (falling back to eager steps if a capture fails). The pool is sized from the GPU
//! with the least free memory after the weights, at the ranks' cache format's bytes per
//! position. Greedy steps take their argmax on the devices, as on one GPU.
//!
//! A [`TpModel`] loaded with DP attention ([`AttnSplit::Data`]) has one pool per rank that holds
//! only that rank's sequences: the engine sees [`StepModel::dp_ranks`] ranks, keeps an allocator
//! and a prefix cache per rank, and tags each sequence of a step with its rank; a step is one
//! [`TpModel::forward_batch_dp`] over every rank's sequences (a rank without sequences joins the
//! FFN only), and a decode step replays a graph captured for the most sequences on one rank
//! (`--cuda-graph-max-bs` counts per rank; each rank's rows are padded to the graph's size). See
//! docs/MULTI_GPU.md, "DP attention".

use crate::engine::gpu::{free_after_weights, GraphModel, GraphSteps};
use crate::engine::model::{ModelSpec, SeqStep, StepModel, StepOutput};
use crate::error::Result;
use crate::model::gpu::{BatchOutput, BatchSeq, PagePool, Readout, TpDecodeGraph, TpModel};
use crate::model::shard::AttnSplit;

impl GraphModel for TpModel {
    type Pool = [PagePool];
    type Graph = TpDecodeGraph;
    fn name(&self) -> String {
        self.describe()
    }
    fn batch_size_of(g: &TpDecodeGraph) -> usize {
        g.batch_size()
    }
    fn decode_rows(&self, ranks: &[usize]) -> usize {
        match self.attn_split() {
            AttnSplit::Heads => ranks.len(),
            AttnSplit::Data => (0..self.communicator().world_size()).map(|r| ranks.iter().filter(|&&x| x == r).count()).max().unwrap_or(0),
        }
    }
    fn capture_decode_graph(&self, pools: &mut [PagePool], bs: usize, pad_page: u32) -> Result<TpDecodeGraph> {
        TpModel::capture_decode_graph(self, pools, bs, pad_page)
    }
    fn decode_graph_as(&self, g: &TpDecodeGraph, pools: &mut [PagePool], seqs: &[BatchSeq<'_>], ranks: &[usize], readout: Readout) -> Result<BatchOutput> {
        match self.attn_split() {
            AttnSplit::Heads => TpModel::decode_graph_as(self, g, pools, seqs, readout),
            AttnSplit::Data => TpModel::decode_graph_dp_as(self, g, pools, seqs, ranks, readout),
        }
    }
    fn forward_batch_as(&self, pools: &mut [PagePool], seqs: &[BatchSeq<'_>], ranks: &[usize], readout: Readout) -> Result<BatchOutput> {
        match self.attn_split() {
            AttnSplit::Heads => TpModel::forward_batch_as(self, pools, seqs, readout),
            AttnSplit::Data => TpModel::forward_batch_dp_as(self, pools, seqs, ranks, readout),
        }
    }
}

pub struct TpStepModel {
    /// Captured decode graphs (dropped before the pools and the model).
    graphs: GraphSteps<TpDecodeGraph>,
    pools: Option<Vec<PagePool>>,
    model: TpModel,
    free_after_weights: Option<usize>,
}

impl TpStepModel {
    pub fn new(model: TpModel) -> TpStepModel {
        let free_after_weights = free_after_weights(&model.describe(), model.mem_info(), " (least of the GPUs)");
        TpStepModel { graphs: GraphSteps::new(), pools: None, model, free_after_weights }
    }

    /// Replays decode steps of up to `max_bs` sequences (per rank under DP attention) as captured
    /// graphs (0: never).
    pub fn with_cuda_graphs(mut self, max_bs: usize) -> TpStepModel {
        self.graphs.set_max_bs(max_bs);
        self
    }

    /// Whether greedy steps take the argmax on the devices (each rank over its vocab slice, the
    /// host merging the ranks' (index, value) pairs); see [`crate::engine::GpuStepModel::with_device_argmax`].
    pub fn with_device_argmax(mut self, on: bool) -> TpStepModel {
        self.graphs.set_device_argmax(on);
        self
    }

    pub fn model(&self) -> &TpModel {
        &self.model
    }
}

impl StepModel for TpStepModel {
    fn spec(&self) -> ModelSpec {
        let m = &self.model;
        ModelSpec::for_config(m.config(), m.latent_width(), m.cache_row_bytes(), m.max_positions(), self.free_after_weights)
    }

    fn allocate_cache(&mut self, num_pages: usize, page_size: usize) -> Result<()> {
        let extra = self.graphs.reset(num_pages);
        self.pools = None;
        let pools = self.model.new_page_pools(num_pages + extra, page_size)?;
        let what = match self.dp_ranks() {
            1 => "the same pages on every GPU".to_string(),
            n => format!("dp attention over {n} ranks: each GPU's pool holds its own sequences, with its own allocator and prefix cache"),
        };
        tracing::info!(
            "{}: KV page pool of {num_pages} pages × {page_size} positions per GPU ({:.1} MiB each; {what})",
            self.model.describe(),
            pools[0].bytes() as f64 / (1 << 20) as f64
        );
        self.pools = Some(pools);
        Ok(())
    }

    fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Option<StepOutput>>> {
        self.graphs.step(&self.model, self.pools.as_deref_mut(), batch)
    }

    fn dp_ranks(&self) -> usize {
        match self.model.attn_split() {
            AttnSplit::Heads => 1,
            AttnSplit::Data => self.model.communicator().world_size(),
        }
    }

    fn cuda_graph_max_bs(&self) -> usize {
        self.graphs.max_bs()
    }

    fn device(&self) -> String {
        self.model.describe()
    }
}
