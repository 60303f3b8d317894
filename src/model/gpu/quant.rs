//! INT8 (block / channel) and AWQ weights on their own GEMMs, for the fast options
//! ([`super::GpuOptions::quant_kernels`]): which layers the kernels take, their upload, and the
//! launches behind [`GpuModel::linear`] and the routed experts.
//!
//! - dense INT8: x (f32) quantized per token group of 128 (block) or per token (channel) by
//!   `int8_act_quant`, then `int8_gemm` (bf16 out); K % 16 == 0, block INT8 in 128×128 blocks,
//!   a TP slice on block edges;
//! - dense AWQ: x in bf16, `awq_gemm` on qweight repacked by `awq_repack`; G ∈ {64, 128},
//!   K % G == 0, N % 8 == 0, a TP slice of K on group edges;
//! - routed experts: [`crate::backend::quant_moe`] (the MoE pipeline shared with FP8), every
//!   expert local; the intermediate width is padded with exact zeros to what the kernels need
//!   (128 for block INT8 so gate and up share no scale block, 16 for channel INT8, G for AWQ).
//!
//! Layers the kernels refuse load dequantized to f32 and run the reference GEMM, as under
//! [`super::GpuOptions::reference`].
#![allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.80

use super::quant_host::{AwqHost, Int8Host};
use super::ffn::lock;
use super::weights::Linear;
use super::GpuModel;
use crate::backend::dispatch::ActQuant;
use crate::backend::quant_gemm::{awq_gemm, int8_act_quant, AwqWeight, Int8Scheme};
use crate::backend::quant_moe::{awq_moe, int8_moe, MoeAwqWeights, MoeInt8Weights};
use crate::backend::{DType as DevDType, DeviceTensor, GpuStream};
use crate::error::{Error, Result};
use crate::model::checkpoint::Checkpoint;
use crate::model::shard::TensorSlice;

/// How a [`Linear`] holding a quantized weight is stored.
pub(super) enum QuantLinear {
    /// `Linear::w` is the int8 weight [N, K] (experts: [E, N, K]), `Linear::scale` its scales.
    Int8(Int8Scheme),
    /// `Linear::w` is qweight repacked by `awq_repack` (i32, E·K·N/8 words).
    Awq(Box<AwqParts>),
}

/// The rest of an AWQ layer (or of its stacked experts) on the device.
pub(super) struct AwqParts {
    qzeros: DeviceTensor,
    scales: DeviceTensor,
    k: usize,
    group: usize,
    experts: usize,
}

impl Linear {
    /// The AWQ operand of this weight (`None` unless it is one).
    fn awq(&self) -> Option<AwqWeight<'_>> {
        match &self.quant {
            Some(QuantLinear::Awq(a)) => Some(AwqWeight { qweight: &self.w, qzeros: &a.qzeros, scales: &a.scales, experts: a.experts, n: self.n, k: a.k, group: a.group }),
            _ => None,
        }
    }
}

/// A layer in a kernel's form on the host, before the upload.
enum HostWeight {
    Int8(Int8Host),
    Awq(AwqHost),
}

fn int8_ok(w: &Int8Host) -> bool {
    w.k % 16 == 0 && w.k > 0 && w.n > 0
}

/// Uploads `parts`: one layer (`experts` false), or the stacked experts of one MoE layer (all
/// alike; a leading expert dimension).
fn upload(s: &dyn GpuStream, parts: &[HostWeight], experts: bool) -> Result<Linear> {
    let stacked = |shape: &[usize]| -> Vec<usize> {
        if experts { [&[parts.len()][..], shape].concat() } else { shape.to_vec() }
    };
    match parts.first() {
        Some(HostWeight::Int8(first)) => {
            let (mut q, mut sc) = (Vec::new(), Vec::new());
            for p in parts {
                let HostWeight::Int8(w) = p else { return Err(mixed()) };
                q.extend_from_slice(&w.q);
                sc.extend_from_slice(&w.scale);
            }
            Ok(Linear {
                w: DeviceTensor::from_slice(s, &stacked(&[first.n, first.k]), &q)?,
                scale: Some(DeviceTensor::from_slice(s, &[sc.len()], &sc)?),
                n: first.n,
                quant: Some(QuantLinear::Int8(first.scheme)),
            })
        }
        Some(HostWeight::Awq(first)) => {
            let (mut qw, mut qz, mut sc) = (Vec::new(), Vec::new(), Vec::new());
            for p in parts {
                let HostWeight::Awq(w) = p else { return Err(mixed()) };
                let (a, b, c) = w.kernel_layout()?;
                qw.extend(a);
                qz.extend(b);
                sc.extend(c);
            }
            let (e, n, k, g) = (parts.len(), first.n, first.k, first.group);
            Ok(Linear {
                w: DeviceTensor::from_slice(s, &[qw.len()], &qw)?,
                scale: None,
                n,
                quant: Some(QuantLinear::Awq(Box::new(AwqParts {
                    qzeros: DeviceTensor::from_slice(s, &stacked(&[k / g, n / 8]), &qz)?,
                    scales: DeviceTensor::from_slice(s, &stacked(&[k / g, n]), &sc)?,
                    k,
                    group: g,
                    experts: e,
                }))),
            })
        }
        None => Err(Error::InvalidArgument("quantized upload of no weight".into())),
    }
}

fn mixed() -> Error {
    Error::InvalidArgument("quantized upload: weights of one layer in different formats".into())
}

/// The slice `part` of the INT8 / AWQ Linear weight `name` [n, k] in its kernel's form, or
/// `None` (not INT8 / AWQ, or a shape or slice the kernels refuse: the caller dequantizes).
pub(super) fn load_dense(s: &dyn GpuStream, ckpt: &Checkpoint, name: &str, n: usize, k: usize, part: &TensorSlice) -> Result<Option<Linear>> {
    let host = if let Some(w) = Int8Host::read(ckpt, name, n, k)? {
        w.slice(part).filter(int8_ok).map(HostWeight::Int8)
    } else if let Some(w) = AwqHost::read(ckpt, name, n, k)? {
        w.slice(part).filter(AwqHost::kernel_ok).map(HostWeight::Awq)
    } else {
        return Ok(None);
    };
    if host.is_none() {
        tracing::info!("{name}: slice {:?} × {:?} of [{n}, {k}] is not a shape the INT8 / AWQ kernels take; it runs dequantized", part.rows, part.cols);
    }
    host.map(|h| upload(s, &[h], false)).transpose()
}

/// The routed experts `gate[e]`, `up[e]` [inter, h] and `down[e]` [h, inter] of one MoE layer,
/// sliced as `gate_part` / `down_part`, as the quantized MoE's stacked w13 [E, 2I', H] and
/// w2 [E, H, I'] (I' = the slice's intermediate padded with zero weights to the kernels'
/// multiple); `None` when they are not all INT8 of one scheme or all AWQ, or the kernels refuse
/// their shape.
pub(super) fn load_experts(s: &dyn GpuStream, ckpt: &Checkpoint, experts: &[[String; 3]], h: usize, inter: usize, gate_part: &TensorSlice, down_part: &TensorSlice) -> Result<Option<(Linear, Linear)>> {
    let (mut w13, mut w2) = (Vec::new(), Vec::new());
    for [gate, up, down] in experts {
        let pair = match (Int8Host::read(ckpt, gate, inter, h)?, Int8Host::read(ckpt, up, inter, h)?, Int8Host::read(ckpt, down, h, inter)?) {
            (Some(g), Some(u), Some(d)) => int8_expert(&g, &u, &d, gate_part, down_part)?,
            _ => match (AwqHost::read(ckpt, gate, inter, h)?, AwqHost::read(ckpt, up, inter, h)?, AwqHost::read(ckpt, down, h, inter)?) {
                (Some(g), Some(u), Some(d)) => awq_expert(&g, &u, &d, gate_part, down_part)?,
                _ => None,
            },
        };
        let Some((a, b)) = pair else { return Ok(None) };
        w13.push(a);
        w2.push(b);
    }
    let same = |v: &[HostWeight]| match v.first() {
        Some(HostWeight::Int8(f)) => v.iter().all(|x| matches!(x, HostWeight::Int8(w) if (w.scheme, w.n, w.k) == (f.scheme, f.n, f.k))),
        Some(HostWeight::Awq(f)) => v.iter().all(|x| matches!(x, HostWeight::Awq(w) if (w.n, w.k, w.group) == (f.n, f.k, f.group))),
        None => false,
    };
    if !same(&w13) || !same(&w2) {
        return Ok(None);
    }
    Ok(Some((upload(s, &w13, true)?, upload(s, &w2, true)?)))
}

/// One INT8 expert: (concat(gate, up) [2I', H], down [H, I']).
fn int8_expert(g: &Int8Host, u: &Int8Host, d: &Int8Host, gate_part: &TensorSlice, down_part: &TensorSlice) -> Result<Option<(HostWeight, HostWeight)>> {
    let (Some(g), Some(u), Some(d)) = (g.slice(gate_part), u.slice(gate_part), d.slice(down_part)) else { return Ok(None) };
    if g.scheme != u.scheme || g.scheme != d.scheme || g.k % 16 != 0 || g.n == 0 {
        return Ok(None);
    }
    let pad_to = match g.scheme {
        Int8Scheme::Block => 128,
        Int8Scheme::Channel => 16,
    };
    let ip = g.n.next_multiple_of(pad_to);
    let w13 = g.pad(ip, g.k)?.concat_rows(&u.pad(ip, u.k)?)?;
    Ok(Some((HostWeight::Int8(w13), HostWeight::Int8(d.pad(d.n, ip)?))))
}

/// One AWQ expert: (concat(gate, up) [2I', H], down [H, I']).
fn awq_expert(g: &AwqHost, u: &AwqHost, d: &AwqHost, gate_part: &TensorSlice, down_part: &TensorSlice) -> Result<Option<(HostWeight, HostWeight)>> {
    let (Some(g), Some(u), Some(d)) = (g.slice(gate_part), u.slice(gate_part), d.slice(down_part)) else { return Ok(None) };
    if !matches!(d.group, 64 | 128) || g.n == 0 {
        return Ok(None);
    }
    let ip = g.n.next_multiple_of(d.group);
    let w13 = g.pad(ip, g.k)?.concat_n(&u.pad(ip, u.k)?)?;
    let w2 = d.pad(d.n, ip)?;
    if !w13.kernel_ok() || !w2.kernel_ok() {
        return Ok(None);
    }
    Ok(Some((HostWeight::Awq(w13), HostWeight::Awq(w2))))
}

impl GpuModel {
    /// y [rows, N] f32 = x [rows, K] f32 · Wᵀ on the INT8 / AWQ GEMMs (`None`: `w` is not
    /// quantized for them).
    pub(super) fn quant_linear(&self, x: &DeviceTensor, w: &Linear) -> Result<Option<DeviceTensor>> {
        if w.quant.is_none() {
            return Ok(None);
        }
        let s = self.s();
        let k = x.shape().last().copied().unwrap_or(1);
        let rows = x.numel().checked_div(k).unwrap_or(0);
        match (&w.quant, &w.scale) {
            (Some(QuantLinear::Int8(scheme)), Some(_)) => {
                let kind = match scheme {
                    Int8Scheme::Block => ActQuant::Int8Group128,
                    Int8Scheme::Channel => ActQuant::Int8Token,
                };
                let qa = self.quant_act_empty(kind, rows, k)?;
                int8_act_quant(s, *scheme, &qa.q, &qa.scales, x)?;
                self.linear_quantized(&qa, w).map(Some)
            }
            (Some(QuantLinear::Awq(_)), _) => {
                let aw = w.awq().ok_or_else(|| Error::InvalidArgument("AWQ linear without its operand".into()))?;
                let yb = self.empty_as(DevDType::Bf16, &[rows, w.n])?;
                awq_gemm(s, &mut *lock(&self.fp8_ws)?, &yb, &self.cast_to(x, DevDType::Bf16)?, &aw)?;
                Ok(Some(self.cast_to(&yb, DevDType::F32)?))
            }
            (Some(QuantLinear::Int8(_)), None) => Err(Error::InvalidArgument("INT8 linear without its weight scales".into())),
            (None, _) => Ok(None),
        }
    }

    /// The routed experts on the quantized MoE (INT8 or AWQ), added to `shared` (the shared
    /// experts' output, or zeros): `x` f32, bf16 around the experts.
    pub(super) fn quant_moe(&self, x: &DeviceTensor, shared: &DeviceTensor, ids: &DeviceTensor, weights: &DeviceTensor, w13: &Linear, down: &Linear) -> Result<DeviceTensor> {
        let s = self.s();
        let out = self.cast_to(shared, DevDType::Bf16)?;
        let mut ws = lock(&self.moe_ws)?;
        match (&w13.quant, &w13.scale, &down.scale, w13.awq(), down.awq()) {
            (Some(QuantLinear::Int8(scheme)), Some(w13_scale), Some(w2_scale), _, _) => {
                // INT8 activations are quantized from the f32 x, as the dense INT8 GEMMs do.
                let w = MoeInt8Weights { scheme: *scheme, w13: &w13.w, w13_scale, w2: &down.w, w2_scale };
                int8_moe(s, &mut ws, &out, x, ids, weights, &w, 1.0)?;
            }
            (Some(QuantLinear::Awq(_)), _, _, Some(a13), Some(a2)) => {
                awq_moe(s, &mut ws, &out, &self.cast_to(x, DevDType::Bf16)?, ids, weights, &MoeAwqWeights { w13: a13, w2: a2 }, 1.0)?;
            }
            _ => return Err(Error::InvalidArgument("quantized MoE: experts without INT8 scales or AWQ operands".into())),
        }
        self.cast_to(&out, DevDType::F32)
    }
}

/// Where a model's INT8 / AWQ layers run ([`GpuModel::quant_kernel_layers`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuantKernelLayers {
    /// Dense linear layers (attention projections, dense and shared-expert MLPs) on the INT8 /
    /// AWQ GEMMs.
    pub dense: usize,
    /// MoE layers whose routed experts run the quantized MoE.
    pub moe: usize,
}

impl GpuModel {
    /// How many of this model's layers run the INT8 / AWQ kernels (zero with the reference
    /// options, and for layers the kernels refuse).
    pub fn quant_kernel_layers(&self) -> QuantKernelLayers {
        use super::weights::{Experts, Ffn, QProj};
        let mut n = QuantKernelLayers::default();
        let mut count = |l: &Linear| n.dense += usize::from(l.quant.is_some());
        for layer in &self.layers {
            match &layer.q {
                QProj::LowRank { q_a, q_b, .. } => {
                    count(q_a);
                    count(q_b);
                }
                QProj::Direct(q) => count(q),
            }
            count(&layer.kv_a);
            count(&layer.o);
            let mlp = match &layer.ffn {
                Ffn::Dense(m) => Some(m),
                Ffn::Moe(m) => m.shared.as_ref(),
            };
            if let Some(m) = mlp {
                count(&m.gate);
                count(&m.up);
                count(&m.down);
            }
        }
        n.moe = self.layers.iter().filter(|l| matches!(&l.ffn, Ffn::Moe(m) if matches!(m.experts, Experts::Quant { .. }))).count();
        n
    }
}
