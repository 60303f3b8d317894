//! The forward proper, over the ranks of a tensor-parallel group (one rank: the single-GPU
//! model). Each decoder sublayer produces a per-rank partial sum (its heads' share of o_proj,
//! its slice of the MLP / experts), which `reduce` sums in place on every rank before the
//! residual add; the ranks' kernels are queued phase by phase, so that a collective of all
//! ranks comes after every rank's producer:
//!
//! embed (this rank's vocab slice) → reduce → per layer { attention partial → reduce → add +
//! RMSNorm → FFN partial → reduce →
//! add + RMSNorm } → lm_head over the rank's vocab slice.
//!
//! There is one forward: [`GpuModel::forward_batch`] runs it with one rank and no reduction,
//! the TP model (`tp.rs`) with every local rank and its all-reduce.
//!
//! DP attention ([`AttnPart::Own`]) changes only the attention phase: a rank that holds every
//! head attends for its own tokens (a contiguous row range of the step, over its own pool) and
//! writes the output at those rows of a zeroed [T, hidden] buffer; the same `reduce` then acts as
//! an all-gather (every other row is zero on this rank, and adding zeros is exact). From there
//! the residual stream is the whole step's on every rank, bit-identical as under TP, so the FFN
//! (TP or EP over all ranks, over all tokens), its all-reduce and the vocab-parallel lm_head are
//! unchanged. A reduce-scatter after the FFN + an all-gather of own rows before it would move
//! half the bytes of these two all-reduces (and let each rank keep only its rows' residual);
//! `kernels/allreduce.cuh` has no such kernels yet.

use std::ops::Range;

use super::step::StepTensors;
use super::weights::Ffn;
use super::{GpuModel, PagePool};
use super::norm_quant::QuantAct;
use crate::backend::dispatch::{self, ActQuant, Strided};
use crate::backend::mla::mla_decode_metadata;
use crate::backend::DeviceTensor;
use crate::error::{Error, Result};

/// Which tokens a rank attends for, and with which heads.
#[derive(Clone, Copy)]
pub(super) enum AttnPart<'a> {
    /// Its heads, every token of the step (TP): the output is a partial sum.
    Heads,
    /// DP attention: every head, its own tokens `rows` of the step, indexed by `step` (its
    /// sequences over its own pool); `step` is `None` when it has no sequence this step.
    Own { rows: &'a Range<usize>, step: Option<&'a StepTensors> },
}

/// One rank's part of a step: its model shard, its page pool, its copy of the step's indices
/// (every token: embedding, FFN, logits; and attention under TP), and what it attends for.
pub(super) struct RankStep<'a> {
    pub(super) model: &'a GpuModel,
    pub(super) pool: &'a PagePool,
    pub(super) step: &'a StepTensors,
    pub(super) attn: AttnPart<'a>,
}

impl RankStep<'_> {
    /// The step tensors attention reads, if this rank attends at all.
    fn attn_step(&self) -> Option<&StepTensors> {
        match self.attn {
            AttnPart::Heads => Some(self.step),
            AttnPart::Own { step, .. } => step,
        }
    }

    fn check(&self) -> Result<()> {
        if let AttnPart::Own { rows, step } = self.attn {
            let n = step.map_or(0, |s| s.tokens);
            if rows.len() != n || rows.end > self.step.tokens {
                return Err(Error::InvalidArgument(format!(
                    "DP attention: rows {rows:?} of a step of {} tokens for {n} attention token(s)",
                    self.step.tokens
                )));
            }
        }
        Ok(())
    }

    /// Attention of layer `li` over the normalized rows `normed` [T, hidden]: under TP this
    /// rank's partial sum over every token; under DP attention its own rows' output in place,
    /// zeros elsewhere (the reduction that follows gathers them).
    /// `normed_q`: the quantized rows the input norm wrote for the first projections (TP only).
    fn attention(&self, li: usize, normed: &DeviceTensor, normed_q: Option<&QuantAct>) -> Result<DeviceTensor> {
        let (m, layer) = (self.model, &self.model.layers[li]);
        let AttnPart::Own { rows, step } = self.attn else {
            return m.attention(layer, li, normed, normed_q, self.pool, self.step);
        };
        let (s, h) = (m.s(), m.cfg.hidden_size);
        let out = m.empty(&[self.step.tokens, h])?;
        // SAFETY: `out` is a live allocation of out.bytes().
        unsafe { s.memset_u8(out.raw(), 0, out.bytes())? };
        if let (Some(st), false) = (step, rows.is_empty()) {
            let x = m.empty(&[rows.len(), h])?;
            dispatch::copy_2d(s, Strided::rows(&x), Strided::at(normed, rows.start * h, h), rows.len(), h)?;
            let o = m.attention(layer, li, &x, None, self.pool, st)?;
            dispatch::copy_2d(s, Strided::at(&out, rows.start * h, h), Strided::rows(&o), rows.len(), h)?;
        }
        Ok(out)
    }
}

impl RankStep<'_> {
    /// What the input norm of layer `li` quantizes its output as (`super::norm_quant`): the
    /// operand of the first attention projections under TP; nothing under DP attention (its rows
    /// are copied out of the normalized tensor; the projections quantize their copy).
    fn attn_quant(&self, li: usize) -> Option<ActQuant> {
        let layer = self.model.layers.get(li)?;
        match self.attn {
            AttnPart::Heads => self.model.attn_act_quant(layer),
            AttnPart::Own { .. } => None,
        }
    }

    /// What the post-attention norm of layer `li` quantizes its output as
    /// ([`GpuModel::ffn_act_quant`]; the f32 rows are written as well).
    fn ffn_quant(&self, li: usize) -> Option<ActQuant> {
        self.model.ffn_act_quant(&self.model.layers[li])
    }
}

/// One rank's normalized rows: `out` = RMSNorm(`x`), after `residual` += `x` when given (then
/// RMSNorm of the residual), and their quantized form when `kind` (one fused launch).
fn norm_rows(m: &GpuModel, out: &DeviceTensor, residual: Option<&DeviceTensor>, x: &DeviceTensor, w: &DeviceTensor, kind: Option<ActQuant>) -> Result<Option<QuantAct>> {
    let eps = m.cfg.rms_norm_eps;
    match (kind, residual) {
        (Some(k), _) => m.norm_quant(Some(out), residual, x, w, k).map(Some),
        (None, Some(r)) => dispatch::add_rms_norm(m.s(), out, r, x, w, eps).map(|()| None),
        (None, None) => dispatch::rms_norm(m.s(), out, x, w, eps).map(|()| None),
    }
}

/// Sums the ranks' partial activations in place (every rank ends up with the same sum).
pub(super) type Reduce<'r> = dyn FnMut(&[&DeviceTensor]) -> Result<()> + 'r;

/// Queues the forward of every rank and returns each rank's logits [R, its vocab slice] of the
/// rows asked for (`None` when none is), without synchronizing (graph-capturable).
pub(super) fn run_ranks(ranks: &[RankStep<'_>], reduce: &mut Reduce<'_>) -> Result<Vec<Option<DeviceTensor>>> {
    let first = ranks.first().ok_or_else(|| Error::InvalidArgument("a forward over no rank".into()))?;
    let c = &first.model.cfg;
    // Per rank: the residual stream x, the next sublayer's normalized input and, where the fused
    // norm wrote it, that input quantized for the sublayer's first GEMMs.
    let mut xs = Vec::with_capacity(ranks.len());
    let mut normed = Vec::with_capacity(ranks.len());
    let mut normed_q: Vec<Option<QuantAct>> = Vec::with_capacity(ranks.len());
    for r in ranks {
        r.check()?;
        let (m, s) = (r.model, r.model.s());
        if let Some(st) = r.attn_step() {
            if let Some(meta) = &st.mla_decode {
                mla_decode_metadata(s, meta, &st.seq_lens)?;
            }
            for q in &st.mla_prefill {
                mla_decode_metadata(s, &q.meta, &q.seq_lens)?;
            }
        }
        // Vocab-parallel: each rank looks up the ids of its slice (zeros for the others' ids);
        // the reduction below sums the slices into the lookup.
        let x = m.empty(&[r.step.tokens, c.hidden_size])?;
        dispatch::embedding_slice(s, &x, &m.embed, &r.step.ids, m.vocab_slice().start, c.vocab_size)?;
        xs.push(x);
    }
    reduce(&xs.iter().collect::<Vec<_>>())?;
    for (r, x) in ranks.iter().zip(&xs) {
        let m = r.model;
        let n = m.empty(&[r.step.tokens, c.hidden_size])?;
        normed_q.push(norm_rows(m, &n, None, x, &m.layers[0].input_norm, r.attn_quant(0))?);
        m.mark("embed")?;
        normed.push(n);
    }
    for li in 0..c.num_hidden_layers {
        // TP: sums the heads' partials; DP attention: gathers the ranks' own rows.
        let attn = (0..ranks.len()).map(|i| ranks[i].attention(li, &normed[i], normed_q[i].as_ref())).collect::<Result<Vec<_>>>()?;
        reduce(&attn.iter().collect::<Vec<_>>())?;
        for (i, r) in ranks.iter().enumerate() {
            let m = r.model;
            normed_q[i] = norm_rows(m, &normed[i], Some(&xs[i]), &attn[i], &m.layers[li].post_attn_norm, r.ffn_quant(li))?;
            m.mark("add_norm")?;
        }
        drop(attn);
        let ffn = (0..ranks.len())
            .map(|i| {
                let (m, n, nq) = (ranks[i].model, &normed[i], normed_q[i].as_ref());
                match &m.layers[li].ffn {
                    Ffn::Dense(mlp) => m.mlp_q(n, nq, mlp).and_then(|y| m.mark("dense_mlp").map(|()| y)),
                    Ffn::Moe(moe) => m.moe_q(n, nq, moe),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        reduce(&ffn.iter().collect::<Vec<_>>())?;
        for (i, r) in ranks.iter().enumerate() {
            let m = r.model;
            let next_norm = m.layers.get(li + 1).map_or(&m.norm, |l| &l.input_norm);
            // The final norm feeds lm_head (not quantized): attn_quant(num_hidden_layers) is None.
            normed_q[i] = norm_rows(m, &normed[i], Some(&xs[i]), &ffn[i], next_norm, r.attn_quant(li + 1))?;
            m.mark("add_norm")?;
        }
    }
    ranks
        .iter()
        .zip(&normed)
        .map(|(r, n)| {
            let logits = r.model.logits(n, r.step)?;
            r.model.mark("lm_head")?;
            Ok(logits)
        })
        .collect()
}

impl GpuModel {
    /// lm_head over the final normalized rows `normed` that the step asks logits for.
    fn logits(&self, normed: &DeviceTensor, step: &StepTensors) -> Result<Option<DeviceTensor>> {
        Ok(match (&step.logit_rows, step.rows) {
            (_, 0) => None,
            // Every row: no gather.
            (None, _) => Some(self.linear(normed, &self.lm_head)?),
            (Some(idx), rows) => {
                // The embedding gather doubles as a row gather: out[r] = normed[idx[r]].
                let picked = self.empty(&[rows, self.cfg.hidden_size])?;
                dispatch::embedding(self.s(), &picked, normed, idx)?;
                Some(self.linear(&picked, &self.lm_head)?)
            }
        })
    }
}
