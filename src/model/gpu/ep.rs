//! Expert parallelism in the MoE: a rank that holds only experts `[e0, e1)` runs the grouped
//! GEMMs over their rows alone. `moe_align` sorts every (token, k) pair by expert over all
//! experts (routing is replicated); the offsets of the local experts are the slice
//! `offsets[e0..=e1]` of its output, so the GEMMs (weights stacked for the local experts only)
//! read exactly those rows. Rows of other experts are never computed: their outputs are zeroed,
//! so the combine adds nothing for them on this rank (their owner adds their share).
//!
//! The fused FP8 MoE and the INT8 / AWQ MoE (the fast options) index the rank's stacked experts
//! by id themselves and skip ids outside `[0, local experts)`: they get the routing's ids made
//! local (`moe_local_ids`: id − e0, −1 for the other ranks' experts).

use super::weights::Moe;
use super::GpuModel;
use crate::backend::{dispatch, DType as DevDType, DeviceTensor};
use crate::error::Result;

impl GpuModel {
    /// This rank's expert offsets [local + 1] from the offsets [E + 1] over every expert, and
    /// whether they are a strict subset (then grouped outputs must start zeroed).
    pub(super) fn local_expert_offsets(&self, m: &Moe, offsets: DeviceTensor) -> Result<(DeviceTensor, bool)> {
        let r = &m.local_experts;
        if r.start == 0 && r.end == m.n_experts {
            return Ok((offsets, false));
        }
        let s = self.s();
        let local = DeviceTensor::empty(s, DevDType::I32, &[r.len() + 1])?;
        // SAFETY: both ranges lie inside the two i32 allocations (r.end <= n_experts).
        unsafe { s.copy_dtod(local.raw(), offsets.raw() + (r.start * 4) as u64, (r.len() + 1) * 4)? };
        Ok((local, true))
    }

    /// The routing's expert ids [T, top_k] as ids into this rank's stacked experts: unchanged
    /// when every expert is local, else id − e0 and −1 for other ranks' experts.
    pub(super) fn local_expert_ids(&self, m: &Moe, ids: DeviceTensor) -> Result<DeviceTensor> {
        if m.local_experts.len() == m.n_experts {
            return Ok(ids);
        }
        let local = DeviceTensor::empty(self.s(), DevDType::I32, ids.shape())?;
        dispatch::moe_local_ids(self.s(), &local, &ids, m.local_experts.clone())?;
        Ok(local)
    }
}
