//! Gated MLPs and the routed mixture of experts, CPU reference. The expert path mirrors the device
//! one: route every token, gather the tokens of each expert, run the expert's MLP on them, and
//! scatter-add the outputs weighted by the routing weights.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::ops::activation::silu_mul;
use crate::ops::fp8::fake_quant_act_per_token_group;
use crate::ops::int8::{dequant_act_int8, quantize_act_int8_per_token, quantize_act_int8_per_token_group};
use crate::ops::linear::linear_into;
use crate::ops::routing::{route_noaux_tc, RoutingParams};
use crate::tensor::Tensor;

/// FP8 activation group size (per token, per 128 channels), as DeepSeek-V3's GEMMs quantize.
pub const ACT_QUANT_GROUP: usize = 128;

/// How a linear layer's GPU kernel quantizes its input activations, emulated on the CPU so that
/// comparisons with the kernels can be tight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ActQuant {
    /// f32 activations, untouched.
    #[default]
    None,
    /// float8 e4m3 per token and 128-channel group (the FP8 block GEMMs).
    Fp8Group128,
    /// int8 per token and 128-channel group (block INT8 GEMMs).
    Int8Group128,
    /// int8 per token (channel INT8 GEMMs, `w8a8_int8`).
    Int8Token,
}

/// `true`: FP8 emulation (the meaning of the former `emulate_fp8: bool` argument).
impl From<bool> for ActQuant {
    fn from(emulate_fp8: bool) -> Self {
        if emulate_fp8 {
            ActQuant::Fp8Group128
        } else {
            ActQuant::None
        }
    }
}

/// `x` [rows, k] as a linear layer's kernel would see it: quantized and dequantized as `act`
/// says (codes and scales as the GPU kernels make them), untouched for [`ActQuant::None`].
pub fn act_input(x: &[f32], k: usize, act: impl Into<ActQuant>) -> Cow<'_, [f32]> {
    let rows = x.len() / k.max(1);
    match act.into() {
        ActQuant::None => Cow::Borrowed(x),
        ActQuant::Fp8Group128 => {
            let mut q = x.to_vec();
            fake_quant_act_per_token_group(&mut q, rows, k, ACT_QUANT_GROUP);
            Cow::Owned(q)
        }
        ActQuant::Int8Group128 => {
            let (q, s) = quantize_act_int8_per_token_group(x, rows, k, ACT_QUANT_GROUP);
            Cow::Owned(dequant_act_int8(&q, &s, rows, k, ACT_QUANT_GROUP))
        }
        ActQuant::Int8Token => {
            let (q, s) = quantize_act_int8_per_token(x, rows, k);
            Cow::Owned(dequant_act_int8(&q, &s, rows, k, k.max(1)))
        }
    }
}

/// `y = x · wᵀ` with optional activation emulation ([`ActQuant`]; `true` / `false`: FP8 or
/// none); `x` [rows, in], `w` [out, in].
pub fn linear_act(x: &[f32], w: &Tensor, act: impl Into<ActQuant>) -> Vec<f32> {
    let k = w.shape()[1];
    let rows = x.len() / k;
    let mut out = vec![0f32; rows * w.shape()[0]];
    linear_into(&act_input(x, k, act), w.data(), k, &mut out);
    out
}

/// A gated MLP: `down(silu(gate·x) ⊙ up·x)`.
#[derive(Clone, Debug)]
pub struct MlpWeights {
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

impl MlpWeights {
    pub fn intermediate(&self) -> usize {
        self.gate.shape()[0]
    }

    /// `x` [rows, hidden] → [rows, hidden].
    pub fn forward(&self, x: &[f32], act: impl Into<ActQuant>) -> Vec<f32> {
        let act = act.into();
        let hidden = self.gate.shape()[1];
        let xin = act_input(x, hidden, act);
        let g = linear_act(&xin, &self.gate, ActQuant::None);
        let u = linear_act(&xin, &self.up, ActQuant::None);
        let mut h = vec![0f32; g.len()];
        silu_mul(&g, &u, &mut h);
        linear_act(&h, &self.down, act)
    }
}

/// A DeepSeek-V3 MoE block: router, routed experts, shared experts.
#[derive(Clone, Debug)]
pub struct MoeWeights {
    /// Router weight [n_experts, hidden] (kept in full precision: never FP8-quantized).
    pub router: Tensor,
    /// `e_score_correction_bias` [n_experts].
    pub bias: Vec<f32>,
    pub experts: Vec<MlpWeights>,
    /// The shared experts fused into one MLP (intermediate = n_shared · moe_intermediate).
    pub shared: Option<MlpWeights>,
    pub routing: RoutingParams,
}

/// Routing of a batch: for each token, its experts and weights.
pub fn route_tokens(x: &[f32], moe: &MoeWeights) -> Vec<(Vec<usize>, Vec<f32>)> {
    let hidden = moe.router.shape()[1];
    let mut logits = vec![0f32; x.len() / hidden * moe.router.shape()[0]];
    linear_into(x, moe.router.data(), hidden, &mut logits);
    logits
        .chunks_exact(moe.router.shape()[0])
        .map(|l| route_noaux_tc(l, &moe.bias, &moe.routing))
        .collect()
}

impl MoeWeights {
    /// `x` [rows, hidden] → [rows, hidden].
    pub fn forward(&self, x: &[f32], act: impl Into<ActQuant>) -> Vec<f32> {
        let act = act.into();
        let hidden = self.router.shape()[1];
        let rows = x.len() / hidden;
        let routes = route_tokens(x, self);
        // Tokens (and their weights) per expert.
        let mut assigned: Vec<Vec<(usize, f32)>> = vec![Vec::new(); self.experts.len()];
        for (t, (experts, weights)) in routes.iter().enumerate() {
            for (&e, &w) in experts.iter().zip(weights) {
                assigned[e].push((t, w));
            }
        }
        let partials: Vec<(usize, Vec<f32>)> = assigned
            .par_iter()
            .enumerate()
            .filter(|(_, toks)| !toks.is_empty())
            .map(|(e, toks)| {
                let gathered: Vec<f32> =
                    toks.iter().flat_map(|&(t, _)| x[t * hidden..(t + 1) * hidden].iter().copied()).collect();
                (e, self.experts[e].forward(&gathered, act))
            })
            .collect();
        let mut out = match &self.shared {
            Some(shared) => shared.forward(x, act),
            None => vec![0f32; rows * hidden],
        };
        for (e, y) in partials {
            for (&(t, w), yr) in assigned[e].iter().zip(y.chunks_exact(hidden)) {
                for (o, &v) in out[t * hidden..(t + 1) * hidden].iter_mut().zip(yr) {
                    *o += w * v;
                }
            }
        }
        out
    }
}
