//! The forward proper, over the ranks of a tensor-parallel group (one rank: the single-GPU
//! model). Each decoder sublayer produces a per-rank partial sum (its heads' share of o_proj,
//! its slice of the MLP / experts), which `reduce` sums in place on every rank before the
//! residual add; the ranks' kernels are queued phase by phase, so that a collective of all
//! ranks comes after every rank's producer:
//!
//! embed → per layer { attention partial → reduce → add + RMSNorm → FFN partial → reduce →
//! add + RMSNorm } → lm_head over the rank's vocab slice.
//!
//! There is one forward: [`GpuModel::forward_batch`] runs it with one rank and no reduction,
//! the TP model (`tp.rs`) with every local rank and its all-reduce.

use super::step::StepTensors;
use super::weights::Ffn;
use super::{GpuModel, PagePool};
use crate::backend::dispatch;
use crate::backend::mla::mla_decode_metadata;
use crate::backend::DeviceTensor;
use crate::error::{Error, Result};

/// One rank's part of a step: its model shard, its page pool, its copy of the step's indices.
pub(super) struct RankStep<'a> {
    pub(super) model: &'a GpuModel,
    pub(super) pool: &'a PagePool,
    pub(super) step: &'a StepTensors,
}

/// Sums the ranks' partial activations in place (every rank ends up with the same sum).
pub(super) type Reduce<'r> = dyn FnMut(&[&DeviceTensor]) -> Result<()> + 'r;

/// Queues the forward of every rank and returns each rank's logits [R, its vocab slice] of the
/// rows asked for (`None` when none is), without synchronizing (graph-capturable).
pub(super) fn run_ranks(ranks: &[RankStep<'_>], reduce: &mut Reduce<'_>) -> Result<Vec<Option<DeviceTensor>>> {
    let first = ranks.first().ok_or_else(|| Error::InvalidArgument("a forward over no rank".into()))?;
    let c = &first.model.cfg;
    let eps = c.rms_norm_eps;
    // Per rank: the residual stream x and the next sublayer's normalized input.
    let mut xs = Vec::with_capacity(ranks.len());
    let mut normed = Vec::with_capacity(ranks.len());
    for r in ranks {
        let (m, s) = (r.model, r.model.s());
        if let Some(meta) = &r.step.mla_decode {
            mla_decode_metadata(s, meta, &r.step.seq_lens)?;
        }
        let x = m.empty(&[r.step.tokens, c.hidden_size])?;
        dispatch::embedding(s, &x, &m.embed, &r.step.ids)?;
        let n = m.empty(&[r.step.tokens, c.hidden_size])?;
        dispatch::rms_norm(s, &n, &x, &m.layers[0].input_norm, eps)?;
        m.mark("embed")?;
        xs.push(x);
        normed.push(n);
    }
    for li in 0..c.num_hidden_layers {
        let attn = ranks
            .iter()
            .zip(&normed)
            .map(|(r, n)| r.model.attention(&r.model.layers[li], li, n, r.pool, r.step))
            .collect::<Result<Vec<_>>>()?;
        reduce(&attn.iter().collect::<Vec<_>>())?;
        for (i, r) in ranks.iter().enumerate() {
            dispatch::add_rms_norm(r.model.s(), &normed[i], &xs[i], &attn[i], &r.model.layers[li].post_attn_norm, eps)?;
            r.model.mark("add_norm")?;
        }
        drop(attn);
        let ffn = ranks
            .iter()
            .zip(&normed)
            .map(|(r, n)| match &r.model.layers[li].ffn {
                Ffn::Dense(m) => r.model.mlp(n, m).and_then(|y| r.model.mark("dense_mlp").map(|()| y)),
                Ffn::Moe(m) => r.model.moe(n, m),
            })
            .collect::<Result<Vec<_>>>()?;
        reduce(&ffn.iter().collect::<Vec<_>>())?;
        for (i, r) in ranks.iter().enumerate() {
            let m = r.model;
            let next_norm = m.layers.get(li + 1).map_or(&m.norm, |l| &l.input_norm);
            dispatch::add_rms_norm(m.s(), &normed[i], &xs[i], &ffn[i], next_norm, eps)?;
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
