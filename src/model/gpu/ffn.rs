//! Linear layers, the dense MLP and the routed MoE.

use super::weights::{Linear, Mlp, Moe};
use super::GpuModel;
use crate::backend::dispatch::{self, Strided};
use crate::backend::{DType as DevDType, DeviceTensor};
use crate::error::Result;

impl GpuModel {
    pub(super) fn linear(&self, x: &DeviceTensor, w: &Linear) -> Result<DeviceTensor> {
        let rows = x.numel() / x.shape().last().copied().unwrap_or(1);
        let y = self.empty(&[rows, w.n])?;
        dispatch::linear(self.s(), &y, x, &w.w, w.scale.as_ref())?;
        Ok(y)
    }

    pub(super) fn mlp(&self, x: &DeviceTensor, m: &Mlp) -> Result<DeviceTensor> {
        let gate = self.linear(x, &m.gate)?;
        let up = self.linear(x, &m.up)?;
        let h = self.silu_mul(&gate, &up)?;
        self.linear(&h, &m.down)
    }

    /// silu(gate) ⊙ up for two [rows, I] tensors.
    pub(super) fn silu_mul(&self, gate: &DeviceTensor, up: &DeviceTensor) -> Result<DeviceTensor> {
        let (rows, i) = (gate.shape()[0], gate.shape()[1]);
        let gate_up = self.empty(&[rows, 2 * i])?;
        dispatch::copy_2d(self.s(), Strided::at(&gate_up, 0, 2 * i), Strided::rows(gate), rows, i)?;
        dispatch::copy_2d(self.s(), Strided::at(&gate_up, i, 2 * i), Strided::rows(up), rows, i)?;
        let out = self.empty(&[rows, i])?;
        dispatch::silu_mul(self.s(), &out, &gate_up)?;
        Ok(out)
    }

    pub(super) fn moe(&self, x: &DeviceTensor, m: &Moe) -> Result<DeviceTensor> {
        let s = self.s();
        let t = x.shape()[0];
        let k = m.params.top_k;
        let logits = self.linear(x, &m.router)?;
        let ids = DeviceTensor::empty(s, DevDType::I32, &[t, k])?;
        let weights = self.empty(&[t, k])?;
        dispatch::route_noaux_tc(s, &ids, &weights, &logits, &m.bias, m.params)?;
        let offsets = DeviceTensor::empty(s, DevDType::I32, &[m.n_experts + 1])?;
        let sorted_pairs = DeviceTensor::empty(s, DevDType::I32, &[t * k])?;
        let pair_to_row = DeviceTensor::empty(s, DevDType::I32, &[t * k])?;
        dispatch::moe_align(s, &offsets, &sorted_pairs, &pair_to_row, &ids, m.n_experts)?;
        let (offsets, ep) = self.local_expert_offsets(m, offsets)?;
        let rows = self.empty(&[t * k, self.cfg.hidden_size])?;
        dispatch::moe_gather(s, &rows, x, &sorted_pairs, &offsets, k)?;
        let grouped = |a: &DeviceTensor, w: &Linear| -> Result<DeviceTensor> {
            let c = self.empty(&[t * k, w.n])?;
            if ep {
                // Rows of other ranks' experts are not computed: they must add nothing.
                unsafe { s.memset_u8(c.raw(), 0, c.bytes())? };
            }
            dispatch::moe_gemm(s, &c, a, &w.w, w.scale.as_ref(), &offsets)?;
            Ok(c)
        };
        let gate = grouped(&rows, &m.gate)?;
        let up = grouped(&rows, &m.up)?;
        debug_assert_eq!(gate.shape()[1], m.inter);
        let h = self.silu_mul(&gate, &up)?;
        let y = grouped(&h, &m.down)?;
        let out = match &m.shared {
            Some(shared) => self.mlp(x, shared)?,
            None => {
                let z = self.empty(&[t, self.cfg.hidden_size])?;
                unsafe { s.memset_u8(z.raw(), 0, z.bytes())? };
                z
            }
        };
        dispatch::moe_combine(s, &out, &y, &weights, &pair_to_row, k, 1.0)?;
        Ok(out)
    }

}
