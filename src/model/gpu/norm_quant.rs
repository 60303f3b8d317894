//! RMSNorm fused with the next linear layers' activation quantization (issue 5): where a
//! normalized row feeds FP8 or INT8 GEMMs only through their quantized operand, the norm kernel
//! (`rms_norm_quant_*` / `add_rms_norm_quant_*`, kernels/norm.cuh) writes the codes and scales
//! itself — bit-identical to `rms_norm` + `fp8_quant_group128` / `int8_act_quant` — and every
//! consumer's GEMM reads them ([`GpuModel::linear_q`]), instead of each consumer quantizing the
//! row again. Sites (src/model/gpu/forward.rs, attention.rs):
//!
//! - input_layernorm (after the embedding, and the add + norm closing each layer) → q_a (or the
//!   direct q) and kv_a_with_mqa: one quantization instead of two, when both take the same one
//!   (TP heads; DP attention copies its rows out of the normalized tensor and keeps the old path);
//! - q_a_layernorm → q_b: the norm writes only the codes (its f32 row has no other reader);
//! - post_attention_layernorm → the dense MLP's gate and up, or the shared expert's gate and up
//!   (the router and the routed experts read the f32 row: it is still written).
//!
//! Not fused: kv_a_layernorm (its output goes to RoPE and the latent cache, not to a linear); the
//! final norm (lm_head is not quantized); the routed FP8 experts (`fused_moe` takes the row in
//! bf16 and quantizes bf16(x) inside its pipeline: other codes than the f32 row's, so one fused
//! output cannot serve both it and the shared expert bit-exactly); the routed INT8 experts
//! (`int8_moe` quantizes the f32 row itself, the same codes, but the MoE driver has no entry for
//! a pre-quantized operand yet); AWQ (bf16 activations, no quantization).
#![allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.80

use super::quant::QuantLinear;
use super::weights::{Ffn, Layer, Linear, Mlp, QProj};
use super::GpuModel;
use crate::backend::dispatch::{self, ActQuant};
use crate::backend::quant_gemm::Int8Scheme;
use crate::backend::{DType as DevDType, DeviceTensor};
use crate::error::Result;
use crate::ops::fp8::ACT_AMAX_EPS;
use crate::ops::int8::INT8_AMAX_EPS;
use std::sync::atomic::Ordering;

/// A [rows, K] activation quantized for the GEMMs of its consumers.
pub(super) struct QuantAct {
    pub(super) kind: ActQuant,
    /// Codes [rows, K]: e4m3fn or i8.
    pub(super) q: DeviceTensor,
    /// [rows, ⌈K/128⌉] (per 128-group) or [rows] (per token).
    pub(super) scales: DeviceTensor,
}

/// The amax epsilon of `kind`'s standalone quantization.
fn qeps(kind: ActQuant) -> f32 {
    match kind {
        ActQuant::Fp8Group128 => ACT_AMAX_EPS,
        ActQuant::Int8Group128 | ActQuant::Int8Token => INT8_AMAX_EPS,
    }
}

impl GpuModel {
    /// The quantized operand [`GpuModel::linear`] makes of a K-wide input for `w` (`None`: `w`'s
    /// GEMM reads the input itself).
    pub(super) fn act_quant_of(&self, w: &Linear, k: usize) -> Option<ActQuant> {
        match (&w.quant, &w.scale) {
            (Some(QuantLinear::Int8(Int8Scheme::Block)), Some(_)) => Some(ActQuant::Int8Group128),
            (Some(QuantLinear::Int8(Int8Scheme::Channel)), Some(_)) => Some(ActQuant::Int8Token),
            (None, Some(_)) if w.w.dtype() == DevDType::E4m3fn && self.opts.quant_kernels && k % 16 == 0 => Some(ActQuant::Fp8Group128),
            _ => None,
        }
    }

    /// The quantized operand all of `ws` take of a K-wide input, for a fused norm to write
    /// (`None`: none, they differ, or the fusion is off).
    pub(super) fn shared_act_quant(&self, ws: &[&Linear], k: usize) -> Option<ActQuant> {
        if !self.norm_quant_fusion.load(Ordering::Relaxed) {
            return None;
        }
        let first = self.act_quant_of(ws.first()?, k)?;
        ws.iter().all(|w| self.act_quant_of(w, k) == Some(first)).then_some(first)
    }

    /// Turns the RMSNorm → quantization fusion on (the default) or off (each FP8 / INT8 GEMM
    /// quantizes its input with the standalone kernel, as before issue 5): for A/B comparisons
    /// and benchmarks. Applies to forwards queued afterwards (a captured decode graph keeps the
    /// kernels it captured).
    pub fn set_norm_quant_fusion(&self, on: bool) {
        self.norm_quant_fusion.store(on, Ordering::Relaxed);
    }

    /// How many norms of one single-GPU forward (TP heads) run fused with the quantization:
    /// per layer the input norm (q_a / q and kv_a), q_a_layernorm (q_b) and the post-attention
    /// norm (dense MLP or shared expert). Zero with the fusion off or without FP8 / INT8 GEMMs.
    pub fn norm_quant_sites(&self) -> usize {
        let q_lora = self.cfg.q_lora_rank.unwrap_or(0);
        self.layers
            .iter()
            .map(|l| {
                let q_b = match &l.q {
                    QProj::LowRank { q_b, .. } => self.shared_act_quant(&[q_b], q_lora).is_some(),
                    QProj::Direct(_) => false,
                };
                usize::from(self.attn_act_quant(l).is_some()) + usize::from(q_b) + usize::from(self.ffn_act_quant(l).is_some())
            })
            .sum()
    }

    /// The operand the gate and up projections of `m` share, if any.
    pub(super) fn mlp_act_quant(&self, m: &Mlp) -> Option<ActQuant> {
        self.shared_act_quant(&[&m.gate, &m.up], self.cfg.hidden_size)
    }

    /// The operand the post-attention norm of `layer` may write: the dense MLP's, or the shared
    /// expert's, gate and up operand (the router and the routed experts read the f32 rows).
    pub(super) fn ffn_act_quant(&self, layer: &Layer) -> Option<ActQuant> {
        match &layer.ffn {
            Ffn::Dense(m) => self.mlp_act_quant(m),
            Ffn::Moe(m) => m.shared.as_ref().and_then(|sh| self.mlp_act_quant(sh)),
        }
    }

    /// Empty codes and scales of `kind` for `rows` rows of `k`.
    pub(super) fn quant_act_empty(&self, kind: ActQuant, rows: usize, k: usize) -> Result<QuantAct> {
        let (dt, sc): (DevDType, Vec<usize>) = match kind {
            ActQuant::Fp8Group128 => (DevDType::E4m3fn, vec![rows, k.div_ceil(128)]),
            ActQuant::Int8Group128 => (DevDType::I8, vec![rows, k.div_ceil(128)]),
            ActQuant::Int8Token => (DevDType::I8, vec![rows]),
        };
        Ok(QuantAct { kind, q: self.empty_as(dt, &[rows, k])?, scales: self.empty(&sc)? })
    }

    /// One launch: `residual` += x first when given (add + RMSNorm), out = RMSNorm (written when
    /// `out` is given), and that output quantized as `kind`.
    pub(super) fn norm_quant(&self, out: Option<&DeviceTensor>, residual: Option<&DeviceTensor>, x: &DeviceTensor, w: &DeviceTensor, kind: ActQuant) -> Result<QuantAct> {
        let (s, eps) = (self.s(), self.cfg.rms_norm_eps);
        let k = x.shape().last().copied().unwrap_or(1);
        let qa = self.quant_act_empty(kind, x.numel().checked_div(k).unwrap_or(0), k)?;
        match residual {
            Some(r) => dispatch::add_rms_norm_quant(s, out, r, x, w, eps, kind, &qa.q, &qa.scales, qeps(kind))?,
            None => dispatch::rms_norm_quant(s, out, x, w, eps, kind, &qa.q, &qa.scales, qeps(kind))?,
        }
        Ok(qa)
    }
}
