//! One batched step's inputs: the sequences of a batch ([`BatchSeq`]), their checks against the
//! model and the pool, and the index tensors the kernels read ([`StepTensors`]).

use super::{GpuModel, PagePool};
use crate::backend::mla::{MlaDecodeMeta, MlaDecodePlan};
use crate::backend::{DType as DevDType, DeviceTensor, GpuStream};
use crate::error::{Error, Result};

/// Which logits rows of a sequence a batched forward returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// None (inner chunks of a chunked prefill).
    None,
    /// The last new token's (decode, last prefill chunk).
    Last,
    /// Every new token's (prompt logprobs, the single-sequence `forward`).
    All,
}

impl LogitRows {
    pub(super) fn count(self, tokens: usize) -> usize {
        match self {
            LogitRows::None => 0,
            LogitRows::Last => 1,
            LogitRows::All => tokens,
        }
    }
}

/// One sequence of a batched forward.
#[derive(Clone, Copy, Debug)]
pub struct BatchSeq<'a> {
    /// New tokens, computed after the `start` cached positions.
    pub tokens: &'a [u32],
    /// Positions of this sequence already in the pool.
    pub start: usize,
    /// Pages of the pool holding positions `0..start + tokens.len()` (longer is fine).
    pub block_table: &'a [u32],
    pub logits: LogitRows,
}

/// What a batched forward hands back for the logits rows it computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readout {
    /// The rows themselves, copied to the host.
    Logits,
    /// Each row's argmax, taken on the device (the host's [`crate::ops::sampling::argmax`] of
    /// the same f32 row: lowest index on ties, NaN and -inf never win); only the ids come back.
    Argmax,
}

/// A batched forward's result per sequence of the batch (in its order), as its [`Readout`] asked.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchOutput {
    /// The logits rows each sequence asked for, row-major [rows, vocab] (empty for
    /// [`LogitRows::None`]).
    Logits(Vec<Vec<f32>>),
    /// The argmax of each of those rows.
    Argmax(Vec<Vec<u32>>),
}

impl BatchOutput {
    /// No row for any of `seqs` sequences, as `readout` would have read them.
    pub(super) fn empty(readout: Readout, seqs: usize) -> BatchOutput {
        match readout {
            Readout::Logits => BatchOutput::Logits(vec![Vec::new(); seqs]),
            Readout::Argmax => BatchOutput::Argmax(vec![Vec::new(); seqs]),
        }
    }

    pub fn into_logits(self) -> Result<Vec<Vec<f32>>> {
        match self {
            BatchOutput::Logits(l) => Ok(l),
            BatchOutput::Argmax(_) => Err(Error::InvalidArgument("asked for logits, got token ids".into())),
        }
    }
    /// The entries of sequences `idx`, in that order.
    pub(super) fn select(self, idx: &[usize]) -> BatchOutput {
        fn pick<T: Clone>(v: Vec<T>, idx: &[usize]) -> Vec<T> {
            idx.iter().map(|&i| v[i].clone()).collect()
        }
        match self {
            BatchOutput::Logits(v) => BatchOutput::Logits(pick(v, idx)),
            BatchOutput::Argmax(v) => BatchOutput::Argmax(pick(v, idx)),
        }
    }

    pub fn into_argmax(self) -> Result<Vec<Vec<u32>>> {
        match self {
            BatchOutput::Argmax(ids) => Ok(ids),
            BatchOutput::Logits(_) => Err(Error::InvalidArgument("asked for token ids, got logits".into())),
        }
    }
}

/// Logits rows wanted per sequence of `seqs`.
pub(super) fn row_counts(seqs: &[BatchSeq<'_>]) -> Vec<usize> {
    seqs.iter().map(|q| q.logits.count(q.tokens.len())).collect()
}

/// `host` [rows, width] cut into consecutive groups of `counts[i]` rows (rows past their sum are
/// left out: a graph's padding rows).
pub(super) fn split_rows<T: Copy>(host: &[T], counts: &[usize], width: usize) -> Vec<Vec<T>> {
    let mut out = Vec::with_capacity(counts.len());
    let mut at = 0;
    for &n in counts {
        out.push(host[at * width..(at + n) * width].to_vec());
        at += n;
    }
    out
}

/// Sizes of a step's index tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StepLayout {
    pub(super) tokens: usize,
    pub(super) seqs: usize,
    pub(super) max_pages: usize,
    /// Logits rows wanted.
    pub(super) rows: usize,
    /// Whether those rows are gathered (not every token's).
    pub(super) gather: bool,
}

/// Checks a batch against the pool and the model and packs its index data:
/// ids [T] | seq [T] | pos [T] | seq_lens [B] | block_table [B·max_pages] | rows [R] (when gathered).
/// `fixed_pages`: the block-table width (graphs); otherwise the widest sequence's page count.
pub(super) fn pack_step(m: &GpuModel, pool: &PagePool, seqs: &[BatchSeq<'_>], fixed_pages: Option<usize>) -> Result<(Vec<u32>, StepLayout)> {
    let c = &m.cfg;
    if seqs.is_empty() {
        return Err(Error::InvalidArgument("forward needs at least one sequence".into()));
    }
    let ps = pool.page_size;
    let t: usize = seqs.iter().map(|q| q.tokens.len()).sum();
    let b = seqs.len();
    let mut max_pages = 1;
    for (i, q) in seqs.iter().enumerate() {
        let end = q.start + q.tokens.len();
        if q.tokens.is_empty() {
            return Err(Error::InvalidArgument(format!("sequence {i} of the batch has no token to compute")));
        }
        if let Some(&bad) = q.tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocabulary (size {})", c.vocab_size)));
        }
        if end > m.max_positions {
            return Err(Error::InvalidArgument(format!("sequence of {end} tokens exceeds the GPU model's {} positions", m.max_positions)));
        }
        let need = end.div_ceil(ps);
        if q.block_table.len() < need {
            return Err(Error::InvalidArgument(format!(
                "block table of {} pages cannot hold {end} positions (pages of {ps})",
                q.block_table.len()
            )));
        }
        if let Some(&p) = q.block_table[..need].iter().find(|&&p| p as usize >= pool.num_pages) {
            return Err(Error::InvalidArgument(format!("page {p} is outside the pool of {} pages", pool.num_pages)));
        }
        max_pages = max_pages.max(need);
    }
    if let Some(f) = fixed_pages {
        if max_pages > f {
            return Err(Error::InvalidArgument(format!("a sequence needs {max_pages} pages, more than the {f} of the step's block table")));
        }
        max_pages = f;
    }
    let counts = seqs.iter().map(|q| q.logits.count(q.tokens.len()));
    let rows: usize = counts.clone().sum();
    let all_rows = seqs.iter().zip(counts).all(|(q, n)| n == q.tokens.len());
    let gather = !all_rows && rows > 0;
    let mut packed: Vec<u32> = Vec::with_capacity(3 * t + b * (1 + max_pages) + rows);
    for q in seqs {
        packed.extend_from_slice(q.tokens);
    }
    for (i, q) in seqs.iter().enumerate() {
        packed.extend(std::iter::repeat_n(i as u32, q.tokens.len()));
    }
    for q in seqs {
        packed.extend((q.start..q.start + q.tokens.len()).map(|p| p as u32));
    }
    packed.extend(seqs.iter().map(|q| (q.start + q.tokens.len()) as u32));
    for q in seqs {
        let need = (q.start + q.tokens.len()).div_ceil(ps);
        packed.extend_from_slice(&q.block_table[..need]);
        packed.extend(std::iter::repeat_n(q.block_table[0], max_pages - need));
    }
    if gather {
        let mut at = 0u32;
        for q in seqs {
            let n = q.tokens.len() as u32;
            match q.logits {
                LogitRows::None => {}
                LogitRows::Last => packed.push(at + n - 1),
                LogitRows::All => packed.extend(at..at + n),
            }
            at += n;
        }
    }
    Ok((packed, StepLayout { tokens: t, seqs: b, max_pages, rows, gather }))
}

/// Per-step index tensors of a batch (see [`pack_step`]).
pub(super) struct StepTensors {
    pub(super) tokens: usize,
    pub(super) rows: usize,
    /// [T] u32 token ids.
    pub(super) ids: DeviceTensor,
    /// [T] i32: the sequence of each token.
    pub(super) seq: DeviceTensor,
    /// [T] i32: the position of each token.
    pub(super) pos: DeviceTensor,
    /// [B] i32: positions of each sequence after the step.
    pub(super) seq_lens: DeviceTensor,
    /// [B, max_pages] i32.
    pub(super) block_table: DeviceTensor,
    /// [R] u32 token rows whose logits are wanted; `None` when all are.
    pub(super) logit_rows: Option<DeviceTensor>,
    /// Split-KV schedule of the MLA decode kernel, when the step runs it (every sequence decodes
    /// one token over a bf16 or fp8 cache; the plan carries which): computed on the device once
    /// per step, read by every layer.
    pub(super) mla_decode: Option<MlaDecodeMeta>,
    /// Otherwise, where the cache allows the split-KV kernel: one launch of it per sequence, its
    /// new tokens as the query block (causal inside it) — the absorbed-MLA prefill.
    pub(super) mla_prefill: Vec<MlaSeqAttention>,
}

/// One sequence of a step that runs the MLA kernel alone: its token rows `first .. first +
/// tokens` of the step, and its own schedule, length and block-table row on the device.
pub(super) struct MlaSeqAttention {
    pub(super) first: usize,
    pub(super) tokens: usize,
    pub(super) meta: MlaDecodeMeta,
    /// [1] i32: the sequence's length after the step.
    pub(super) seq_lens: DeviceTensor,
    /// [1, max_pages] i32.
    pub(super) block_table: DeviceTensor,
}

impl StepTensors {
    pub(super) fn alloc(s: &dyn GpuStream, l: &StepLayout, mla_decode: Option<MlaDecodePlan>) -> Result<Self> {
        let e = |dtype: DevDType, shape: &[usize]| DeviceTensor::empty(s, dtype, shape);
        Ok(StepTensors {
            tokens: l.tokens,
            rows: l.rows,
            ids: e(DevDType::U32, &[l.tokens])?,
            seq: e(DevDType::I32, &[l.tokens])?,
            pos: e(DevDType::I32, &[l.tokens])?,
            seq_lens: e(DevDType::I32, &[l.seqs])?,
            block_table: e(DevDType::I32, &[l.seqs, l.max_pages])?,
            logit_rows: if l.gather { Some(e(DevDType::U32, &[l.rows])?) } else { None },
            mla_decode: mla_decode.map(|plan| MlaDecodeMeta::new(s, plan)).transpose()?,
            mla_prefill: Vec::new(),
        })
    }

    /// [`StepTensors::alloc`], then [`StepTensors::upload`] of `packed`.
    pub(super) fn uploaded(s: &dyn GpuStream, l: &StepLayout, mla_decode: Option<MlaDecodePlan>, packed: &[u32]) -> Result<Self> {
        let st = Self::alloc(s, l, mla_decode)?;
        st.upload(s, packed)?;
        Ok(st)
    }

    pub(super) fn layout(&self) -> StepLayout {
        let bt = self.block_table.shape();
        StepLayout { tokens: self.tokens, seqs: bt[0], max_pages: bt[1], rows: self.rows, gather: self.logit_rows.is_some() }
    }

    /// Adds the per-sequence MLA launches `plans` (sequence index, first token row, tokens, plan),
    /// their length and block-table row copied out of the uploaded step tensors (call after
    /// [`StepTensors::upload`]).
    pub(super) fn with_mla_prefill(mut self, s: &dyn GpuStream, plans: Vec<(usize, usize, usize, MlaDecodePlan)>) -> Result<Self> {
        let max_pages = self.block_table.shape()[1];
        for (i, first, tokens, plan) in plans {
            let seq_lens = DeviceTensor::empty(s, DevDType::I32, &[1])?;
            let block_table = DeviceTensor::empty(s, DevDType::I32, &[1, max_pages])?;
            // SAFETY: sequence i's entries lie inside the step's [B] and [B, max_pages] tensors.
            unsafe {
                s.copy_dtod(seq_lens.raw(), self.seq_lens.raw() + (i * 4) as u64, 4)?;
                s.copy_dtod(block_table.raw(), self.block_table.raw() + (i * max_pages * 4) as u64, max_pages * 4)?;
            }
            self.mla_prefill.push(MlaSeqAttention { first, tokens, meta: MlaDecodeMeta::new(s, plan)?, seq_lens, block_table });
        }
        Ok(self)
    }

    /// One host-to-device copy of `packed`, then device copies into each tensor (stream-ordered).
    pub(super) fn upload(&self, s: &dyn GpuStream, packed: &[u32]) -> Result<()> {
        let parts = [Some(&self.ids), Some(&self.seq), Some(&self.pos), Some(&self.seq_lens), Some(&self.block_table), self.logit_rows.as_ref()];
        let total: usize = parts.iter().flatten().map(|t| t.numel()).sum();
        if total != packed.len() {
            return Err(Error::InvalidArgument(format!("step upload of {} values for tensors of {total}", packed.len())));
        }
        let all = DeviceTensor::from_slice(s, &[packed.len()], packed)?;
        let mut off = 0;
        for t in parts.into_iter().flatten() {
            let n = t.numel();
            if n > 0 {
                // SAFETY: both ranges lie inside live allocations (`all` holds `packed`).
                unsafe { s.copy_dtod(t.raw(), all.raw() + (off * 4) as u64, n * 4)? };
            }
            off += n;
        }
        Ok(())
    }
}
