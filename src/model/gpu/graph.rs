//! Decode steps captured as CUDA graphs over fixed input, output and pool addresses.

use super::step::{pack_step, StepTensors};
use super::{BatchOutput, BatchSeq, GpuModel, LogitRows, PagePool, Readout};
use crate::backend::memory::RetainedBlocks;
use crate::backend::stream::StreamGraph;
use crate::backend::DeviceTensor;
use crate::error::{Error, Result};

impl GpuModel {
    /// Captures the decode step of `bs` sequences (one token each, every logits row) as a graph
    /// over fixed input, output and pool addresses. `pad_page`: a page of `pool` that no
    /// sequence uses, written and read by the padding rows of batches smaller than `bs`.
    /// Runs the step once eagerly first (loads every kernel, warms the allocator), then captures.
    pub fn capture_decode_graph(&self, pool: &mut PagePool, bs: usize, pad_page: u32) -> Result<DecodeGraph> {
        let s = self.s();
        if bs == 0 || pad_page as usize >= pool.num_pages {
            return Err(Error::InvalidArgument(format!("decode graph of {bs} sequences, pad page {pad_page} of {}", pool.num_pages)));
        }
        let max_pages = self.max_positions.div_ceil(pool.page_size);
        let pad = [0u32];
        let pad_table = [pad_page];
        let seqs = vec![BatchSeq { tokens: &pad, start: 0, block_table: &pad_table, logits: LogitRows::Last }; bs];
        let (packed, layout) = pack_step(self, pool, &seqs, Some(max_pages))?;
        let inputs = self.step_tensors(pool, &seqs, &packed, &layout)?;
        drop(self.run(pool, &inputs)?);
        s.synchronize()?;
        // The graph owns every block its temporaries use: none is handed out again while it lives.
        let alloc = s.allocator();
        alloc.begin_retain();
        if let Err(e) = s.begin_capture() {
            drop(alloc.end_retain());
            return Err(e);
        }
        let run = self.run(pool, &inputs);
        // End the capture whatever happened, so that the stream is usable again.
        let graph = s.end_capture();
        let memory = alloc.end_retain();
        let logits = run?.ok_or_else(|| Error::InvalidArgument("decode graph without logits".into()))?;
        let graph = graph?;
        Ok(DecodeGraph { graph, _memory: memory, bs, max_pages, pad_page, inputs, logits })
    }

    /// A decode step of `seqs` (at most `g.bs`, one token each) through a captured graph: uploads
    /// the inputs (padded with rows on the pad page), replays, copies back the real rows' logits.
    pub fn forward_decode_graph(&self, g: &DecodeGraph, pool: &mut PagePool, seqs: &[BatchSeq<'_>]) -> Result<Vec<Vec<f32>>> {
        self.decode_graph_as(g, pool, seqs, Readout::Logits)?.into_logits()
    }

    /// [`GpuModel::forward_decode_graph`] for greedy sequences: the argmax of each real row is
    /// taken on the device and only the token ids come back (B·4 bytes instead of B·vocab·4).
    pub fn greedy_decode_graph(&self, g: &DecodeGraph, pool: &mut PagePool, seqs: &[BatchSeq<'_>]) -> Result<Vec<u32>> {
        Ok(self.decode_graph_as(g, pool, seqs, Readout::Argmax)?.into_argmax()?.concat())
    }

    /// A decode step through `g`, one row per sequence of `seqs`, read out as `readout` says.
    pub fn decode_graph_as(&self, g: &DecodeGraph, pool: &mut PagePool, seqs: &[BatchSeq<'_>], readout: Readout) -> Result<BatchOutput> {
        self.replay_decode_graph(g, pool, seqs)?;
        // Every real row (the padding rows after them are not read); all are decode rows.
        self.read_rows(Some(&g.logits), &vec![1; seqs.len()], readout)
    }

    /// Uploads a decode step's inputs (padded to the graph's batch) and replays the graph.
    fn replay_decode_graph(&self, g: &DecodeGraph, pool: &mut PagePool, seqs: &[BatchSeq<'_>]) -> Result<()> {
        let pad_table = [g.pad_page];
        let all = padded_decode_rows(seqs, g.bs, &pad_table)?;
        let (packed, layout) = pack_step(self, pool, &all, Some(g.max_pages))?;
        if layout != g.inputs.layout() {
            return Err(Error::InvalidArgument(format!("decode graph inputs {:?} for a step of {layout:?}", g.inputs.layout())));
        }
        g.inputs.upload(self.s(), &packed)?;
        g.graph.replay()
    }
}


/// A captured decode step of `bs` sequences: its graph and the fixed-address buffers it reads
/// (inputs), writes (logits) and uses in between (its temporaries' blocks, which the stream's
/// allocator does not hand out again while the graph lives). The graph is declared first so
/// that it is dropped first.
pub struct DecodeGraph {
    pub(super) graph: Box<dyn StreamGraph>,
    /// The blocks of the temporaries it captured (freed during capture, kept out of the cache).
    pub(super) _memory: RetainedBlocks,
    pub(super) bs: usize,
    pub(super) max_pages: usize,
    pub(super) pad_page: u32,
    pub(super) inputs: StepTensors,
    pub(super) logits: DeviceTensor,
}

impl DecodeGraph {
    /// The batch size it was captured for (smaller batches are padded).
    pub fn batch_size(&self) -> usize {
        self.bs
    }
}

/// The rows of a decode graph captured for `bs` sequences: `seqs` (at most `bs`, one token each),
/// all with logits, then padding rows of token 0 on the page of `pad_table`.
pub(super) fn padded_decode_rows<'a>(seqs: &[BatchSeq<'a>], bs: usize, pad_table: &'a [u32]) -> Result<Vec<BatchSeq<'a>>> {
    if seqs.len() > bs || seqs.iter().any(|q| q.tokens.len() != 1) {
        return Err(Error::InvalidArgument(format!("decode graph of {bs} sequences for a batch of {}", seqs.len())));
    }
    let mut all: Vec<BatchSeq<'a>> = seqs.iter().map(|q| BatchSeq { logits: LogitRows::Last, ..*q }).collect();
    all.resize(bs, BatchSeq { tokens: &[0], start: 0, block_table: pad_table, logits: LogitRows::Last });
    Ok(all)
}
