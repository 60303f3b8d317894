//! One linear layer or one FFN of a loaded model (or shard) run on host rows, through the same
//! path the forward takes (FP8 / INT8 / AWQ kernels, the fused MoE, or the f32 fallback of a
//! slice that splits a scale block): what checks of a shard against the whole model compare,
//! sublayer by sublayer, free of the noise that activation quantization adds over a forward.

use super::weights::{Ffn, Layer, Linear, Mlp, QProj};
use super::GpuModel;
use crate::backend::{DType as DevDType, DeviceTensor};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl GpuModel {
    /// y [T, N] = x [T, K] · Wᵀ for layer `layer`'s linear `proj`, named as in the checkpoint
    /// without the layer prefix and `.weight` (`self_attn.q_b_proj`, `self_attn.o_proj`,
    /// `mlp.down_proj`, `mlp.shared_experts.gate_proj`, ...), as this model holds it: a shard's
    /// slice (K and N are the slice's).
    pub fn probe_linear(&self, layer: usize, proj: &str, x: &Tensor) -> Result<Tensor> {
        let w = linear_named(self.layer(layer)?, proj).ok_or_else(|| Error::InvalidArgument(format!("layer {layer} has no linear `{proj}`")))?;
        let y = self.linear(&self.upload_rows(x)?, w)?;
        Tensor::new(vec![x.shape()[0], w.n], y.to_f32(self.s())?)
    }

    /// Layer `layer`'s FFN (dense MLP, or router + routed and shared experts) on `x` [T, hidden]:
    /// a shard's partial sum.
    pub fn probe_ffn(&self, layer: usize, x: &Tensor) -> Result<Tensor> {
        let xd = self.upload_rows(x)?;
        let y = match &self.layer(layer)?.ffn {
            Ffn::Dense(m) => self.mlp(&xd, m)?,
            Ffn::Moe(m) => self.moe(&xd, m)?,
        };
        Tensor::new(x.shape().to_vec(), y.to_f32(self.s())?)
    }

    fn layer(&self, layer: usize) -> Result<&Layer> {
        self.layers.get(layer).ok_or_else(|| Error::InvalidArgument(format!("layer {layer} of {}", self.layers.len())))
    }

    fn upload_rows(&self, x: &Tensor) -> Result<DeviceTensor> {
        if x.shape().len() != 2 {
            return Err(Error::InvalidArgument(format!("probe rows of shape {:?}: expected [T, K]", x.shape())));
        }
        DeviceTensor::from_f32(self.s(), x.shape(), x.data(), DevDType::F32)
    }
}

/// Linear `proj` of `l` (see [`GpuModel::probe_linear`]).
fn linear_named<'a>(l: &'a Layer, proj: &str) -> Option<&'a Linear> {
    let mlp = |m: &'a Mlp, p: &str| match p {
        "gate_proj" => Some(&m.gate),
        "up_proj" => Some(&m.up),
        "down_proj" => Some(&m.down),
        _ => None,
    };
    match (proj, &l.q, &l.ffn) {
        ("self_attn.q_a_proj", QProj::LowRank { q_a, .. }, _) => Some(q_a),
        ("self_attn.q_b_proj", QProj::LowRank { q_b, .. }, _) => Some(q_b),
        ("self_attn.q_proj", QProj::Direct(q), _) => Some(q),
        ("self_attn.kv_a_proj_with_mqa", ..) => Some(&l.kv_a),
        ("self_attn.o_proj", ..) => Some(&l.o),
        (p, _, Ffn::Moe(m)) => m.shared.as_ref().zip(p.strip_prefix("mlp.shared_experts.")).and_then(|(s, p)| mlp(s, p)),
        (p, _, Ffn::Dense(m)) => p.strip_prefix("mlp.").and_then(|p| mlp(m, p)),
    }
}
