//! Linear layers, the dense MLP and the routed MoE.

use std::sync::{Mutex, MutexGuard};

use super::norm_quant::QuantAct;
use super::quant::QuantLinear;
use super::weights::{Experts, Linear, Mlp, Moe};
use super::GpuModel;
use crate::backend::dispatch::{self, ActQuant, Strided};
use crate::backend::fp8_gemm::{fp8_gemm_ws, fused_moe, MoeFp8Weights};
use crate::backend::quant_gemm::int8_gemm;
use crate::backend::{DType as DevDType, DeviceTensor};
use crate::error::{Error, Result};
use crate::ops::fp8::ACT_AMAX_EPS;

impl GpuModel {
    /// y [rows, N] f32 = x [rows, K] f32 · Wᵀ. With [`super::GpuOptions::quant_kernels`], float8
    /// weights run the FP8 tensor-core GEMM on x quantized per token and 128-channel group, bf16
    /// weights the vendor BLAS on x in bf16, and INT8 / AWQ weights loaded for their kernels
    /// those (`super::quant`); otherwise the simple GEMM on f32 x.
    pub(super) fn linear(&self, x: &DeviceTensor, w: &Linear) -> Result<DeviceTensor> {
        self.linear_q(x, None, w)
    }

    /// [`GpuModel::linear`] of `x`, whose quantized form `xq` a fused norm may have written
    /// (`super::norm_quant`): read instead of quantizing `x` again when it is the operand `w`'s
    /// GEMM takes (the same codes and scales, so the same result).
    pub(super) fn linear_q(&self, x: &DeviceTensor, xq: Option<&QuantAct>, w: &Linear) -> Result<DeviceTensor> {
        let (rows, k) = (x.numel() / x.shape().last().copied().unwrap_or(1), x.shape().last().copied().unwrap_or(1));
        if let Some(qa) = xq.filter(|qa| self.act_quant_of(w, k) == Some(qa.kind) && qa.q.numel() == rows * k) {
            return self.linear_quantized(qa, w);
        }
        if let Some(y) = self.quant_linear(x, w)? {
            return Ok(y);
        }
        let s = self.s();
        if self.act_quant_of(w, k) == Some(ActQuant::Fp8Group128) {
            let qa = self.quant_act_empty(ActQuant::Fp8Group128, rows, k)?;
            dispatch::fp8_quant_group128(s, &qa.q, &qa.scales, x, ACT_AMAX_EPS)?;
            return self.linear_quantized(&qa, w);
        }
        let y = self.empty(&[rows, w.n])?;
        match (&w.scale, w.w.dtype()) {
            (Some(scale), DevDType::E4m3fn) if self.opts.quant_kernels => {
                // K not a multiple of 16 (rows the FP8 kernels cannot stream): the same activation
                // rounding, then the simple GEMM on the weight's exact values.
                dispatch::linear(s, &y, &self.fp8_fake_quant(x)?, &w.w, Some(scale))?;
            }
            (None, DevDType::Bf16) if self.opts.quant_kernels && s.has_blas() => {
                dispatch::linear(s, &y, &self.cast_to(x, DevDType::Bf16)?, &w.w, None)?;
            }
            _ => dispatch::linear(s, &y, x, &w.w, w.scale.as_ref())?,
        }
        Ok(y)
    }

    /// y [rows, N] f32 from the quantized activation `xq` [rows, K] of `w`'s GEMM (FP8, or
    /// `w`'s INT8 scheme): the GEMM to bf16, then f32.
    pub(super) fn linear_quantized(&self, xq: &QuantAct, w: &Linear) -> Result<DeviceTensor> {
        let s = self.s();
        let rows = xq.q.shape()[0];
        let scale = w.scale.as_ref().ok_or_else(|| Error::InvalidArgument("a quantized linear without its weight scales".into()))?;
        let yb = self.empty_as(DevDType::Bf16, &[rows, w.n])?;
        match (xq.kind, &w.quant) {
            (ActQuant::Fp8Group128, None) => fp8_gemm_ws(s, &mut *lock(&self.fp8_ws)?, &yb, &xq.q, &xq.scales, &w.w, scale)?,
            (ActQuant::Int8Group128 | ActQuant::Int8Token, Some(QuantLinear::Int8(scheme))) => {
                int8_gemm(s, &mut *lock(&self.fp8_ws)?, *scheme, &yb, &xq.q, &xq.scales, &w.w, scale)?
            }
            (kind, _) => return Err(Error::InvalidArgument(format!("a {kind:?} activation for a linear that does not take it"))),
        }
        self.cast_to(&yb, DevDType::F32)
    }

    pub(super) fn mlp(&self, x: &DeviceTensor, m: &Mlp) -> Result<DeviceTensor> {
        self.mlp_q(x, None, m)
    }

    /// The MLP of `x`, whose gate and up read `xq` when it is their operand.
    pub(super) fn mlp_q(&self, x: &DeviceTensor, xq: Option<&QuantAct>, m: &Mlp) -> Result<DeviceTensor> {
        let gate = self.linear_q(x, xq, &m.gate)?;
        let up = self.linear_q(x, xq, &m.up)?;
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
        self.moe_q(x, None, m)
    }

    /// The MoE of `x`; the shared expert's gate and up read `xq` when it is their operand (the
    /// router and the routed experts read `x`: see `super::norm_quant`).
    pub(super) fn moe_q(&self, x: &DeviceTensor, xq: Option<&QuantAct>, m: &Moe) -> Result<DeviceTensor> {
        let s = self.s();
        let t = x.shape()[0];
        let k = m.params.top_k;
        let logits = self.linear(x, &m.router)?;
        let ids = DeviceTensor::empty(s, DevDType::I32, &[t, k])?;
        let weights = self.empty(&[t, k])?;
        dispatch::route_noaux_tc(s, &ids, &weights, &logits, &m.bias, m.params)?;
        if let Some(probe) = lock(&self.routing_probe)?.as_mut() {
            probe.push(ids.to_vec::<i32>(s)?);
        }
        self.mark("moe.router")?;
        let out = match &m.shared {
            Some(shared) => self.mlp_q(x, xq, shared)?,
            None => {
                let z = self.empty(&[t, self.cfg.hidden_size])?;
                unsafe { s.memset_u8(z.raw(), 0, z.bytes())? };
                z
            }
        };
        self.mark("moe.shared")?;
        // The fused and the quantized MoE (loaded with the fast options only) index the stacked
        // experts by id: this rank's ids, the other ranks' experts skipped (expert parallelism).
        let fast = match &m.experts {
            Experts::Quant { w13, down } => Some((w13, down, true)),
            Experts::Fused { w13, down } if self.opts.quant_kernels => Some((w13, down, false)),
            _ => None,
        };
        if let Some((w13, down, quant)) = fast {
            let ids = self.local_expert_ids(m, ids)?;
            let y = if quant { self.quant_moe(x, &out, &ids, &weights, w13, down)? } else { self.fused_moe(x, &out, &ids, &weights, w13, down)? };
            self.mark("moe.experts")?;
            return Ok(y);
        }
        let offsets = DeviceTensor::empty(s, DevDType::I32, &[m.n_experts + 1])?;
        let sorted_pairs = DeviceTensor::empty(s, DevDType::I32, &[t * k])?;
        let pair_to_row = DeviceTensor::empty(s, DevDType::I32, &[t * k])?;
        dispatch::moe_align(s, &offsets, &sorted_pairs, &pair_to_row, &ids, m.n_experts)?;
        let (offsets, ep) = self.local_expert_offsets(m, offsets)?;
        let rows = self.empty(&[t * k, self.cfg.hidden_size])?;
        dispatch::moe_gather(s, &rows, x, &sorted_pairs, &offsets, k)?;
        let grouped = |a: &DeviceTensor, w: &Linear| -> Result<DeviceTensor> {
            let c = self.empty(&[t * k, w.n])?;
            // float8 experts under the fast options round their inputs as the FP8 kernels would.
            let fake;
            let a = if w.w.dtype() == DevDType::E4m3fn && self.opts.quant_kernels {
                fake = self.fp8_fake_quant(a)?;
                &fake
            } else {
                a
            };
            if ep {
                // Rows of other ranks' experts are not computed: they must add nothing.
                unsafe { s.memset_u8(c.raw(), 0, c.bytes())? };
            }
            dispatch::moe_gemm(s, &c, a, &w.w, w.scale.as_ref(), &offsets)?;
            Ok(c)
        };
        let (h, down) = match &m.experts {
            Experts::Split { gate, up, down } => (self.silu_mul(&grouped(&rows, gate)?, &grouped(&rows, up)?)?, down),
            Experts::Quant { .. } => return Err(Error::InvalidArgument("quantized experts reached the reference grouped GEMM".into())),
            Experts::Fused { w13, down } => {
                let gate_up = grouped(&rows, w13)?;
                let h = self.empty(&[t * k, m.inter])?;
                dispatch::silu_mul(s, &h, &gate_up)?;
                (h, down)
            }
        };
        let y = grouped(&h, down)?;
        dispatch::moe_combine(s, &out, &y, &weights, &pair_to_row, k, 1.0)?;
        self.mark("moe.experts")?;
        Ok(out)
    }

    /// `x` with the FP8 GEMMs' activation rounding (per token and 128-channel group).
    fn fp8_fake_quant(&self, x: &DeviceTensor) -> Result<DeviceTensor> {
        let out = self.empty_as(x.dtype(), x.shape())?;
        dispatch::fp8_fake_quant_group128(self.s(), &out, x, ACT_AMAX_EPS)?;
        Ok(out)
    }

    /// The routed experts through the fused FP8 MoE, added to `shared` (the shared experts'
    /// output, or zeros): bf16 in and out around it.
    fn fused_moe(&self, x: &DeviceTensor, shared: &DeviceTensor, ids: &DeviceTensor, weights: &DeviceTensor, w13: &Linear, down: &Linear) -> Result<DeviceTensor> {
        let s = self.s();
        let (Some(w13_scale), Some(w2_scale)) = (&w13.scale, &down.scale) else {
            return Err(Error::InvalidArgument("fused MoE: float8 experts without block scales".into()));
        };
        let w = MoeFp8Weights { w13: &w13.w, w13_scale, w2: &down.w, w2_scale };
        let out = self.cast_to(shared, DevDType::Bf16)?;
        fused_moe(s, &mut *lock(&self.moe_ws)?, &out, &self.cast_to(x, DevDType::Bf16)?, ids, weights, &w, 1.0)?;
        self.cast_to(&out, DevDType::F32)
    }
}

/// A workspace of the model's stream (one forward at a time uses it).
pub(super) fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock().map_err(|_| Error::InvalidArgument("a forward on this model panicked while holding its GEMM workspace".into()))
}
