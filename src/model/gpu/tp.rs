//! [`TpModel`]: one model over the GPUs of a [`Communicator`] (tensor parallelism, optionally
//! expert parallelism for the routed experts), driven from one host thread.
//!
//! Local rank `i` holds global rank `comm.global_rank(i)`'s shard ([`GpuModel::load_shard`]) and
//! runs on that rank's communicator stream ([`RankStream`]); every rank has its own page pool,
//! addressed through the same block tables (the latent cache is replicated: all heads share it).
//! A step queues [`run_ranks`] over the ranks with the [`AllReduce`] as its reduction, in place on
//! the f32 partial activations: the custom kernels sum in rank order on every rank, so all ranks
//! hold bit-identical activations (NCCL, across nodes, broadcasts each reduced chunk).
//!
//! Logits: each rank computes its vocab slice; on one node the host concatenates the local
//! slices. Across nodes a node lacks the other nodes' slices, so each rank writes its slice into
//! a zeroed [R, vocab] buffer and one more all-reduce assembles them (adding zeros is exact).
//!
//! Decode steps can be captured as one CUDA (HIP) graph per rank ([`Communicator::capture`]); under DP
//! attention every rank's own attention rows are padded to the graph's per-rank batch size.
//!
//! DP attention ([`TpModel::load_with`] with [`AttnSplit::Data`]): every rank holds every head and
//! attends only for the sequences assigned to it ([`TpModel::forward_batch_dp`]); those live in
//! its own pool alone (their block tables address that rank's pool; the other pools never see
//! them), so the cache is split instead of replicated. The FFN stays TP / EP over every rank and
//! every token (see `forward.rs` for the gather). lm_head stays vocab-parallel: after the gather
//! every rank already holds every token's final rows, so splitting the vocabulary costs no
//! collective and keeps lm_head at 1/w of its size per rank (a full-vocab head per rank for its
//! own rows would hold 1.85 GB more per rank at DeepSeek-V3's dims for the same FLOPs).
//! Multi-node DP attention: refused (ranks are global, so the layout would carry over; untested).

use std::path::Path;
use std::sync::Arc;

use super::forward::{run_ranks, AttnPart, RankStep};
use super::graph::padded_decode_rows;
use super::step::{pack_step, row_counts, split_rows, StepLayout, StepTensors};
use super::{BatchOutput, BatchSeq, GpuModel, LogitRows, PagePool, Readout, PAGE_SIZE};
use crate::backend::dispatch::{self, Strided};
use crate::backend::memory::RetainedBlocks;
use crate::backend::{DType, DeviceTensor, GpuStream};
use crate::dist::comm::MultiGraph;
use crate::dist::{AllReduce, Communicator, RankStream};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::generate::CausalLm;
use crate::model::dp::DpLayout;
use crate::model::shard::{AttnSplit, MoeSplit, Shard};
use super::random::{calibration_ids, Balancer, RoutingBalance};
use super::GpuOptions;
use crate::ops::sampling::argmax_of_slices;
use crate::tensor::Tensor;

pub struct TpModel {
    models: Vec<GpuModel>,
    ar: Arc<AllReduce>,
    comm: Arc<Communicator>,
    attn: AttnSplit,
}

impl TpModel {
    /// Loads every local rank's shard of `dir` onto its GPU of `ar`'s communicator (the group
    /// may serve several models one after another), attention heads split, with the reference
    /// options (as [`GpuModel::load`]).
    pub fn load(dir: &Path, ar: Arc<AllReduce>, moe: MoeSplit) -> Result<TpModel> {
        Self::load_with(dir, ar, moe, AttnSplit::Heads, GpuOptions::reference())
    }

    /// [`TpModel::load`] with attention split by `attn` (heads: TP; data: DP attention), every
    /// rank computing as `opts` says.
    pub fn load_with(dir: &Path, ar: Arc<AllReduce>, moe: MoeSplit, attn: AttnSplit, opts: GpuOptions) -> Result<TpModel> {
        Self::over_ranks(ar, moe, attn, |stream, shard| GpuModel::load_shard(dir, stream, shard, opts))
    }

    /// [`GpuModel::random`]'s model of `cfg` and `seed` split over `ar`'s GPUs: every rank
    /// draws its shard of the same weights on its own device.
    pub fn random(cfg: &ModelConfig, ar: Arc<AllReduce>, moe: MoeSplit, attn: AttnSplit, opts: GpuOptions, seed: u64) -> Result<TpModel> {
        Self::over_ranks(ar, moe, attn, |stream, shard| GpuModel::random_shard(cfg.clone(), stream, shard, opts, seed))
    }

    /// One model per local rank of `ar`'s group, made by `make` from the rank's stream and shard.
    fn over_ranks(ar: Arc<AllReduce>, moe: MoeSplit, attn: AttnSplit, make: impl Fn(Box<dyn GpuStream>, Shard) -> Result<GpuModel>) -> Result<TpModel> {
        let comm = ar.communicator().clone();
        let world = comm.world_size();
        if attn == AttnSplit::Data && comm.nnodes() > 1 {
            return Err(Error::InvalidArgument(format!("DP attention over {} nodes is not implemented (one node only)", comm.nnodes())));
        }
        let models = (0..comm.local_size())
            .map(|i| make(Box::new(RankStream::new(comm.clone(), i)?), Shard::with_attn(comm.global_rank(i), world, moe, attn)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(TpModel { models, ar, comm, attn })
    }

    /// [`GpuModel::balance_routing`] over the group: the calibration prefills run on every rank
    /// (all on rank 0 under DP attention), the expert ids come from the first rank's probe (the
    /// router is replicated, so every rank routes alike) and every rank gets the same biases.
    pub fn balance_routing(&mut self, tokens: usize, iterations: usize, seed: u64) -> Result<RoutingBalance> {
        let tokens = tokens.clamp(1, self.max_positions());
        let pages = tokens.div_ceil(PAGE_SIZE);
        let mut pools = self.new_page_pools(pages, PAGE_SIZE)?;
        let table: Vec<u32> = (0..pages as u32).collect();
        let mut balancer = Balancer::default();
        for it in 0..=iterations {
            let ids = calibration_ids(seed, it, tokens, self.config().vocab_size);
            let seq = [BatchSeq { tokens: &ids, start: 0, block_table: &table, logits: LogitRows::None }];
            let probes = self.models[0].with_routing_probe(|| match self.attn {
                AttnSplit::Data => self.forward_batch_dp(&mut pools, &seq, &[self.comm.rank_offset()]),
                AttnSplit::Heads => self.forward_batch(&mut pools, &seq),
            })?;
            balancer.step(&probes, &mut self.models.iter_mut().collect::<Vec<_>>(), it < iterations)?;
        }
        Ok(balancer.report)
    }

    /// How attention is split over the ranks.
    pub fn attn_split(&self) -> AttnSplit {
        self.attn
    }

    /// The local ranks' shards.
    pub fn shards(&self) -> &[GpuModel] {
        &self.models
    }
    pub fn config(&self) -> &ModelConfig {
        self.models[0].config()
    }
    pub fn communicator(&self) -> &Arc<Communicator> {
        &self.comm
    }
    pub fn max_positions(&self) -> usize {
        self.models[0].max_positions()
    }
    pub fn latent_width(&self) -> usize {
        self.models[0].latent_width()
    }
    /// How every rank computes.
    pub fn options(&self) -> GpuOptions {
        self.models[0].options()
    }
    /// Bytes of one cached position per layer in each rank's pool ([`GpuModel::cache_row_bytes`]).
    pub fn cache_row_bytes(&self) -> usize {
        self.models[0].cache_row_bytes()
    }
    /// The smallest free device memory of the local GPUs (bytes), and their total.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        let all = self.models.iter().map(|m| m.mem_info()).collect::<Result<Vec<_>>>()?;
        Ok((all.iter().map(|m| m.0).min().unwrap_or(0), all.iter().map(|m| m.1).min().unwrap_or(0)))
    }
    /// "cuda:0+cuda:1 (tp 2)", for logs.
    pub fn describe(&self) -> String {
        let devs: Vec<String> = self.models.iter().map(|m| m.device().to_string()).collect();
        let dp = if self.attn == AttnSplit::Data { ", dp attention" } else { "" };
        format!("{} (tp {}{dp}, node ranks {}..{})", devs.join("+"), self.comm.world_size(), self.comm.rank_offset(), self.comm.rank_offset() + self.models.len())
    }

    /// One page pool per local rank (same shape on every rank).
    pub fn new_page_pools(&self, num_pages: usize, page_size: usize) -> Result<Vec<PagePool>> {
        let pools = self.models.iter().map(|m| m.new_page_pool(num_pages, page_size)).collect::<Result<Vec<_>>>()?;
        self.comm.synchronize()?;
        Ok(pools)
    }

    fn check_pools(&self, pools: &[PagePool]) -> Result<()> {
        let ok = pools.len() == self.models.len() && pools.iter().all(|p| p.num_pages == pools[0].num_pages && p.page_size == pools[0].page_size);
        if !ok {
            return Err(Error::InvalidArgument(format!("{} page pool(s) of differing shapes for {} rank(s)", pools.len(), self.models.len())));
        }
        Ok(())
    }

    /// In-place f32 all-reduce of one tensor per local rank.
    fn reduce(&self, parts: &[&DeviceTensor]) -> Result<()> {
        let ptrs: Vec<u64> = parts.iter().map(|t| t.raw()).collect();
        let count = parts.first().map_or(0, |t| t.numel());
        if parts.iter().any(|t| t.dtype() != DType::F32 || t.numel() != count) {
            return Err(Error::InvalidArgument("all-reduce of differing partial activations".into()));
        }
        // SAFETY: each pointer is a live f32 tensor of `count` elements on its rank's GPU, kept
        // alive by the caller until the rank's stream has run the kernels.
        unsafe { self.ar.all_reduce(DType::F32, count, &ptrs, &ptrs)? };
        Ok(())
    }

    /// Queues a step on every rank; per rank: its logits slice (one node) or the whole
    /// assembled logits (several nodes). Graph-capturable.
    /// `attn[i]`: what local rank i attends for (empty: its heads, every token).
    fn run(&self, pools: &[PagePool], steps: &[StepTensors], attn: &[AttnPart<'_>]) -> Result<Vec<Option<DeviceTensor>>> {
        let ranks: Vec<RankStep<'_>> = self
            .models
            .iter()
            .zip(pools)
            .zip(steps)
            .enumerate()
            .map(|(i, ((model, pool), step))| RankStep { model, pool, step, attn: attn.get(i).copied().unwrap_or(AttnPart::Heads) })
            .collect();
        let logits = run_ranks(&ranks, &mut |parts| self.reduce(parts))?;
        if self.comm.nnodes() == 1 || logits.iter().any(|l| l.is_none()) {
            return Ok(logits);
        }
        // Several nodes: assemble [R, vocab] on every rank (its slice at its columns, zeros
        // elsewhere, summed over the world).
        let vocab = self.config().vocab_size;
        let mut full = Vec::with_capacity(self.models.len());
        for (m, l) in self.models.iter().zip(&logits) {
            let Some(l) = l else { continue };
            let rows = l.shape()[0];
            let f = DeviceTensor::empty(m.stream(), DType::F32, &[rows, vocab])?;
            // SAFETY: `f` is a live allocation of f.bytes().
            unsafe { m.stream().memset_u8(f.raw(), 0, f.bytes())? };
            let cols = m.vocab_slice();
            dispatch::copy_2d(m.stream(), Strided::at(&f, cols.start, vocab), Strided::rows(l), rows, cols.len())?;
            full.push(f);
        }
        self.reduce(&full.iter().collect::<Vec<_>>())?;
        Ok(full.into_iter().map(Some).collect())
    }

    /// The logits tensors to read, with the vocab column of each one's first column: every
    /// rank's slice on one node; rank 0's assembled rows across nodes (every rank holds them).
    fn logit_parts<'a>(&'a self, logits: &'a [Option<DeviceTensor>]) -> Result<Vec<(&'a GpuModel, &'a DeviceTensor, usize)>> {
        let parts = self.models.iter().zip(logits).map(|(m, l)| {
            let l = l.as_ref().ok_or_else(|| Error::InvalidArgument("a rank computed no logits".into()))?;
            Ok((m, l, m.vocab_slice().start))
        });
        if self.comm.nnodes() > 1 {
            return parts.take(1).map(|p| p.map(|(m, l, _)| (m, l, 0))).collect();
        }
        parts.collect()
    }

    /// Per sequence, its `counts[i]` consecutive rows of what [`TpModel::run`] returned, as
    /// `readout` says: the host concatenates the ranks' slices, or merges their device argmaxes.
    fn read_rows(&self, logits: &[Option<DeviceTensor>], counts: &[usize], readout: Readout) -> Result<BatchOutput> {
        let rows: usize = counts.iter().sum();
        let vocab = self.config().vocab_size;
        if rows == 0 {
            return Ok(BatchOutput::empty(readout, counts.len()));
        }
        let parts = self.logit_parts(logits)?;
        match readout {
            Readout::Logits => {
                // Each rank's slice goes through its stream's pinned staging straight into the
                // sequences' rows (a decode batch's logits are hundreds of MB).
                let mut out: Vec<Vec<f32>> = counts.iter().map(|&n| vec![0f32; n * vocab]).collect();
                for (m, l, start) in parts {
                    let width = l.shape()[1];
                    if l.dtype() != DType::F32 || l.numel() < rows * width {
                        return Err(Error::InvalidArgument(format!("logits {:?} {} for {rows} rows", l.shape(), l.dtype())));
                    }
                    let mut fill = |staged: &[u8]| -> Result<()> {
                        let rows_in = staged.chunks_exact(width * 4);
                        let rows_out = out.iter_mut().flat_map(|v| v.chunks_exact_mut(vocab));
                        for (src, dst) in rows_in.zip(rows_out) {
                            for (d, b) in dst[start..start + width].iter_mut().zip(src.chunks_exact(4)) {
                                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                            }
                        }
                        Ok(())
                    };
                    // SAFETY: the first rows·width values lie inside this rank's logits tensor.
                    unsafe { m.stream().with_host_copy(l.raw(), rows * width * 4, &mut fill)? };
                }
                Ok(BatchOutput::Logits(out))
            }
            Readout::Argmax => {
                let per_rank = parts.iter().map(|(m, l, start)| Ok((*start, m.argmax_rows(l, true)?))).collect::<Result<Vec<_>>>()?;
                let ids: Vec<u32> = (0..rows)
                    .map(|r| argmax_of_slices(per_rank.iter().map(|(start, (ids, maxima))| (*start, ids[r] as usize, maxima[r]))) as u32)
                    .collect();
                Ok(BatchOutput::Argmax(split_rows(&ids, counts, 1)))
            }
        }
    }

    /// Step tensors of `seqs` (packed as `packed`, `layout`) on every rank, with the MLA
    /// kernel's schedules where each rank's pool allows them.
    fn upload(&self, pools: &[PagePool], seqs: &[BatchSeq<'_>], packed: &[u32], layout: &StepLayout) -> Result<Vec<StepTensors>> {
        self.models.iter().zip(pools).map(|(m, pool)| m.step_tensors(pool, seqs, packed, layout)).collect()
    }

    /// DP attention's whole step on every rank (embedding, FFN, logits rows): no attention
    /// schedules, its block tables are never read.
    fn upload_whole(&self, packed: &[u32], layout: &StepLayout) -> Result<Vec<StepTensors>> {
        self.models.iter().map(|m| StepTensors::uploaded(m.stream(), layout, None, packed)).collect()
    }

    /// [`GpuModel::forward_batch`] over the group: `pools[i]` is local rank i's pool; the block
    /// tables address every pool alike.
    pub fn forward_batch(&self, pools: &mut [PagePool], seqs: &[BatchSeq<'_>]) -> Result<Vec<Vec<f32>>> {
        self.forward_batch_as(pools, seqs, Readout::Logits)?.into_logits()
    }

    /// [`TpModel::forward_batch`] read out as `readout` says ([`GpuModel::forward_batch_as`]).
    pub fn forward_batch_as(&self, pools: &mut [PagePool], seqs: &[BatchSeq<'_>], readout: Readout) -> Result<BatchOutput> {
        if self.attn == AttnSplit::Data {
            return Err(Error::InvalidArgument("DP attention: every sequence needs its rank (forward_batch_dp)".into()));
        }
        self.check_pools(pools)?;
        let (packed, layout) = pack_step(&self.models[0], &pools[0], seqs, None)?;
        let steps = self.upload(pools, seqs, &packed, &layout)?;
        let logits = self.run(pools, &steps, &[])?;
        self.read_rows(&logits, &row_counts(seqs), readout)
    }

    /// [`TpModel::forward_batch`] under DP attention: sequence `i` lives on global rank
    /// `ranks[i]` (the same rank for its whole life: its block table addresses that rank's pool,
    /// `pools[rank]`, and only that rank attends for it). Logits come back in batch order.
    pub fn forward_batch_dp(&self, pools: &mut [PagePool], seqs: &[BatchSeq<'_>], ranks: &[usize]) -> Result<Vec<Vec<f32>>> {
        self.forward_batch_dp_as(pools, seqs, ranks, Readout::Logits)?.into_logits()
    }

    /// [`TpModel::forward_batch_dp`] read out as `readout` says.
    pub fn forward_batch_dp_as(&self, pools: &mut [PagePool], seqs: &[BatchSeq<'_>], ranks: &[usize], readout: Readout) -> Result<BatchOutput> {
        if self.attn != AttnSplit::Data {
            return Err(Error::InvalidArgument("forward_batch_dp on a model loaded without DP attention".into()));
        }
        self.check_pools(pools)?;
        let lens: Vec<usize> = seqs.iter().map(|q| q.tokens.len()).collect();
        let dp = DpLayout::new(&lens, ranks, self.comm.world_size())?;
        let ordered: Vec<BatchSeq<'_>> = dp.order.iter().map(|&i| seqs[i]).collect();
        // The whole step (every rank alike): embedding, FFN, logits rows. Its block tables are
        // checked against pool 0's shape, which every pool shares, and never read.
        let (packed, layout) = pack_step(&self.models[0], &pools[0], &ordered, None)?;
        let steps = self.upload_whole(&packed, &layout)?;
        let mine: Vec<&[BatchSeq<'_>]> = (0..self.models.len()).map(|i| &ordered[dp.seqs[self.comm.global_rank(i)].clone()]).collect();
        let own = self.own_steps(pools, &mine, None)?;
        let rows: Vec<&std::ops::Range<usize>> = (0..self.models.len()).map(|i| &dp.tokens[self.comm.global_rank(i)]).collect();
        let logits = self.run(pools, &steps, &own_parts(&own, &rows))?;
        in_batch_order(&dp, self.read_rows(&logits, &row_counts(&ordered), readout)?)
    }

    /// DP attention: each local rank's own sequences (`mine[i]`) as the step tensors its attention
    /// reads, over its own pool, with no logits rows (the whole step's give them); `None` for a
    /// rank without sequences. `fixed_pages`: the block-table width (graphs).
    fn own_steps(&self, pools: &[PagePool], mine: &[&[BatchSeq<'_>]], fixed_pages: Option<usize>) -> Result<Vec<Option<StepTensors>>> {
        self.models
            .iter()
            .zip(pools)
            .zip(mine)
            .map(|((m, pool), mine)| {
                if mine.is_empty() {
                    return Ok(None);
                }
                let mine = without_logits(mine);
                let (p, l) = pack_step(m, pool, &mine, fixed_pages)?;
                Ok(Some(m.step_tensors(pool, &mine, &p, &l)?))
            })
            .collect()
    }

    /// [`GpuModel::capture_decode_graph`] over the group: one graph per rank, captured together.
    /// Under DP attention `bs` is per rank: every rank attends for `bs` rows of its own (its
    /// sequences, then padding rows on `pad_page` of its pool), so the step has world·`bs` rows.
    pub fn capture_decode_graph(&self, pools: &mut [PagePool], bs: usize, pad_page: u32) -> Result<TpDecodeGraph> {
        self.check_pools(pools)?;
        if bs == 0 || pad_page as usize >= pools[0].num_pages {
            return Err(Error::InvalidArgument(format!("decode graph of {bs} sequences, pad page {pad_page} of {}", pools[0].num_pages)));
        }
        let max_pages = self.max_positions().div_ceil(pools[0].page_size);
        let pad = [0u32];
        let pad_table = [pad_page];
        let pad_seq = BatchSeq { tokens: &pad, start: 0, block_table: &pad_table, logits: LogitRows::Last };
        let dp = self.attn == AttnSplit::Data;
        let rows_per_rank: Vec<std::ops::Range<usize>> = if dp { (0..self.models.len()).map(|i| i * bs..(i + 1) * bs).collect() } else { Vec::new() };
        let seqs = vec![pad_seq; bs * rows_per_rank.len().max(1)];
        let (packed, layout) = pack_step(&self.models[0], &pools[0], &seqs, Some(max_pages))?;
        let inputs = if dp { self.upload_whole(&packed, &layout)? } else { self.upload(pools, &seqs, &packed, &layout)? };
        let own = self.own_steps(pools, &vec![&seqs[..bs]; rows_per_rank.len()], Some(max_pages))?;
        let attn = own_parts(&own, &rows_per_rank.iter().collect::<Vec<_>>());
        // Eagerly once: loads every kernel, warms the allocators.
        drop(self.run(pools, &inputs, &attn)?);
        self.comm.synchronize()?;
        let allocs: Vec<_> = self.models.iter().map(|m| m.stream().allocator().clone()).collect();
        for a in &allocs {
            a.begin_retain();
        }
        let mut out = None;
        let graph = self.comm.capture(|| {
            out = Some(self.run(pools, &inputs, &attn)?);
            Ok(())
        });
        let memory: Vec<RetainedBlocks> = allocs.iter().map(|a| a.end_retain()).collect();
        let graph = graph?;
        let logits = out.ok_or_else(|| Error::InvalidArgument("decode graph without logits".into()))?;
        drop(attn);
        let own = own.into_iter().flatten().collect();
        Ok(TpDecodeGraph { graph, _memory: memory, bs, max_pages, pad_page, inputs, own, logits })
    }

    /// [`GpuModel::forward_decode_graph`] over the group (a graph captured without DP attention).
    pub fn forward_decode_graph(&self, g: &TpDecodeGraph, pools: &mut [PagePool], seqs: &[BatchSeq<'_>]) -> Result<Vec<Vec<f32>>> {
        self.decode_graph_as(g, pools, seqs, Readout::Logits)?.into_logits()
    }

    /// [`GpuModel::decode_graph_as`] over the group: one row per sequence of `seqs`.
    pub fn decode_graph_as(&self, g: &TpDecodeGraph, pools: &mut [PagePool], seqs: &[BatchSeq<'_>], readout: Readout) -> Result<BatchOutput> {
        self.check_pools(pools)?;
        if !g.own.is_empty() {
            return Err(Error::InvalidArgument("a DP attention decode graph needs each sequence's rank (forward_decode_graph_dp)".into()));
        }
        let pad_table = [g.pad_page];
        let all = padded_decode_rows(seqs, g.bs, &pad_table)?;
        self.replay(g, pools, &all)?;
        // Every real row (the padding rows after them are not read).
        self.read_rows(&g.logits, &vec![1; seqs.len()], readout)
    }

    /// [`TpModel::forward_decode_graph`] under DP attention: sequence `i` decodes on global rank
    /// `ranks[i]` (at most the graph's batch size per rank); logits in batch order.
    pub fn forward_decode_graph_dp(&self, g: &TpDecodeGraph, pools: &mut [PagePool], seqs: &[BatchSeq<'_>], ranks: &[usize]) -> Result<Vec<Vec<f32>>> {
        self.decode_graph_dp_as(g, pools, seqs, ranks, Readout::Logits)?.into_logits()
    }

    /// [`TpModel::forward_decode_graph_dp`] read out as `readout` says.
    pub fn decode_graph_dp_as(&self, g: &TpDecodeGraph, pools: &mut [PagePool], seqs: &[BatchSeq<'_>], ranks: &[usize], readout: Readout) -> Result<BatchOutput> {
        self.check_pools(pools)?;
        if g.own.len() != self.models.len() {
            return Err(Error::InvalidArgument("forward_decode_graph_dp on a decode graph captured without DP attention".into()));
        }
        let dp = DpLayout::new(&vec![1; seqs.len()], ranks, self.comm.world_size())?;
        let pad_table = [g.pad_page];
        // Every rank's rows: its sequences, then padding up to the graph's batch size.
        let mut all = Vec::with_capacity(g.bs * self.models.len());
        for (i, ((m, pool), own)) in self.models.iter().zip(pools.iter()).zip(&g.own).enumerate() {
            let mine: Vec<BatchSeq<'_>> = dp.order[dp.seqs[self.comm.global_rank(i)].clone()].iter().map(|&j| seqs[j]).collect();
            let rows = padded_decode_rows(&mine, g.bs, &pad_table)?;
            let (packed, layout) = pack_step(m, pool, &without_logits(&rows), Some(g.max_pages))?;
            if layout != own.layout() {
                return Err(Error::InvalidArgument(format!("decode graph inputs {:?} of rank {i} for a step of {layout:?}", own.layout())));
            }
            own.upload(m.stream(), &packed)?;
            all.extend(rows);
        }
        self.replay(g, pools, &all)?;
        // Every row, padding included; local rank i's k-th sequence (in step order) is row
        // i·bs + k of the step.
        let per_row = self.read_rows(&g.logits, &vec![1; all.len()], readout)?;
        let step_rows: Vec<usize> =
            (0..self.models.len()).flat_map(|i| (0..dp.seqs[self.comm.global_rank(i)].len()).map(move |k| i * g.bs + k)).collect();
        in_batch_order(&dp, per_row.select(&step_rows))
    }

    /// Uploads the whole step's rows `all` (padded) to every rank's graph inputs and replays.
    fn replay(&self, g: &TpDecodeGraph, pools: &[PagePool], all: &[BatchSeq<'_>]) -> Result<()> {
        let (packed, layout) = pack_step(&self.models[0], &pools[0], all, Some(g.max_pages))?;
        if layout != g.inputs[0].layout() {
            return Err(Error::InvalidArgument(format!("decode graph inputs {:?} for a step of {layout:?}", g.inputs[0].layout())));
        }
        for (m, inp) in self.models.iter().zip(&g.inputs) {
            inp.upload(m.stream(), &packed)?;
        }
        g.graph.launch()
    }
}

/// DP attention: what each local rank attends for, its `own` step over its `rows` of the step.
fn own_parts<'a>(own: &'a [Option<StepTensors>], rows: &[&'a std::ops::Range<usize>]) -> Vec<AttnPart<'a>> {
    own.iter().zip(rows).map(|(st, &rows)| AttnPart::Own { rows, step: st.as_ref() }).collect()
}

/// `seqs` without logits rows (a rank's own attention step computes none).
fn without_logits<'a>(seqs: &[BatchSeq<'a>]) -> Vec<BatchSeq<'a>> {
    seqs.iter().map(|q| BatchSeq { logits: LogitRows::None, ..*q }).collect()
}

/// DP attention: `out`, in the step's order of `dp`, in the batch's order.
fn in_batch_order(dp: &DpLayout, out: BatchOutput) -> Result<BatchOutput> {
    Ok(match out {
        BatchOutput::Logits(v) => BatchOutput::Logits(dp.to_batch_order(v)?),
        BatchOutput::Argmax(v) => BatchOutput::Argmax(dp.to_batch_order(v)?),
    })
}

/// A decode step of `bs` sequences captured on every rank: the graphs and the fixed-address
/// buffers they read and write (declared first: dropped first).
pub struct TpDecodeGraph {
    graph: MultiGraph,
    _memory: Vec<RetainedBlocks>,
    /// Sequences (per rank under DP attention).
    bs: usize,
    max_pages: usize,
    pad_page: u32,
    inputs: Vec<StepTensors>,
    /// DP attention: per rank, the step tensors of its own rows (empty without DP attention).
    own: Vec<StepTensors>,
    /// Per rank (all `Some`: every row asks for logits).
    logits: Vec<Option<DeviceTensor>>,
}

impl TpDecodeGraph {
    /// The batch size it was captured for (per rank under DP attention).
    pub fn batch_size(&self) -> usize {
        self.bs
    }
}

/// The single-sequence cache of [`TpModel`]'s [`CausalLm`] path: a pool per rank, one table.
pub struct TpCache {
    pools: Vec<PagePool>,
    table: Vec<u32>,
    len: usize,
}

impl CausalLm for TpModel {
    type Cache = TpCache;

    fn config(&self) -> &ModelConfig {
        self.models[0].config()
    }

    fn new_cache(&self) -> Result<TpCache> {
        let pages = self.max_positions() / PAGE_SIZE;
        let pools = self.new_page_pools(pages, PAGE_SIZE)?;
        Ok(TpCache { pools, table: (0..pages as u32).rev().collect(), len: 0 })
    }

    fn forward(&self, tokens: &[u32], cache: &mut TpCache) -> Result<Tensor> {
        let seq = BatchSeq { tokens, start: cache.len, block_table: &cache.table, logits: LogitRows::All };
        let mut out = match self.attn {
            AttnSplit::Heads => self.forward_batch(&mut cache.pools, &[seq])?,
            // One sequence: rank 0 attends for it, the others only join the FFN.
            AttnSplit::Data => self.forward_batch_dp(&mut cache.pools, &[seq], &[0])?,
        };
        cache.len += tokens.len();
        Tensor::new(vec![tokens.len(), self.config().vocab_size], out.pop().unwrap_or_default())
    }
}
