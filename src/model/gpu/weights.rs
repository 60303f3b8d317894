//! The model's weights on the device, in the form the kernels read them, and their loading from
//! a checkpoint.
#![allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.80

use super::quant::{load_dense, load_experts, QuantLinear};
use super::GpuOptions;
use crate::backend::dispatch::RouteParams;
use crate::backend::{DType as DevDType, DeviceTensor, Fp8E4m3fn, GpuStream};
use crate::error::{Error, Result};
use crate::model::checkpoint::{Checkpoint, DType};
use crate::model::config::ModelConfig;
use crate::model::shard::{ShardPlan, TensorSlice};
use crate::tensor::Tensor;
use std::ops::Range;

/// A linear weight [N, K] as the GEMM kernels read it.
pub(super) struct Linear {
    pub(super) w: DeviceTensor,
    /// Block scales [ceil(N/128), ceil(K/128)] (or [E, ..] for stacked experts) of float8 weights;
    /// the weight scales of INT8 ones.
    pub(super) scale: Option<DeviceTensor>,
    pub(super) n: usize,
    /// INT8 / AWQ in their kernels' form (then `w` holds the int8 codes or the repacked qweight).
    pub(super) quant: Option<QuantLinear>,
}

pub(super) struct Mlp {
    pub(super) gate: Linear,
    pub(super) up: Linear,
    pub(super) down: Linear,
}

pub(super) struct Moe {
    pub(super) router: Linear,
    pub(super) bias: DeviceTensor,
    pub(super) experts: Experts,
    pub(super) shared: Option<Mlp>,
    pub(super) params: RouteParams,
    /// Routed experts in all (routing and `moe_align` run over all of them).
    pub(super) n_experts: usize,
    /// The experts whose weights this rank holds (all, but under EP); `experts` stacks these.
    pub(super) local_experts: Range<usize>,
    /// This rank's slice of each expert's intermediate dim.
    pub(super) inter: usize,
}

/// Routed expert weights, stacked along a leading expert dimension.
pub(super) enum Experts {
    /// gate, up [E, I, H] and down [E, H, I]: the reference grouped GEMM.
    Split { gate: Linear, up: Linear, down: Linear },
    /// float8 concat(gate, up) of each expert [E, 2I, H] and down [E, H, I], I a multiple of 128
    /// (gate and up then share no scale block): the fused FP8 MoE, or one reference grouped
    /// GEMM for gate and up.
    Fused { w13: Linear, down: Linear },
    /// INT8 (one scheme) or AWQ experts for the quantized MoE (`super::quant`): concat(gate, up)
    /// of each local expert [E, 2I', H] and down [E, H, I'], I' the intermediate (slice) padded
    /// with zero weights to the kernels' multiple.
    Quant { w13: Linear, down: Linear },
}

// One per layer, built once: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

impl Ffn {
    pub(super) fn moe(&self) -> Option<&Moe> {
        match self {
            Ffn::Moe(m) => Some(m),
            Ffn::Dense(_) => None,
        }
    }
    pub(super) fn moe_mut(&mut self) -> Option<&mut Moe> {
        match self {
            Ffn::Moe(m) => Some(m),
            Ffn::Dense(_) => None,
        }
    }
}

// One per layer, built once: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum QProj {
    LowRank { q_a: Linear, q_a_norm: DeviceTensor, q_b: Linear },
    Direct(Linear),
}

pub(super) struct Layer {
    pub(super) input_norm: DeviceTensor,
    pub(super) post_attn_norm: DeviceTensor,
    pub(super) q: QProj,
    pub(super) kv_a: Linear,
    pub(super) kv_a_norm: DeviceTensor,
    /// W_ukᵀ of every head of this rank [H, kv_lora, nope]: q_lat = q_nope · W_uk per head.
    pub(super) w_uk_t: DeviceTensor,
    /// W_uv of every head of this rank [H, v, kv_lora].
    pub(super) w_uv: DeviceTensor,
    pub(super) o: Linear,
    pub(super) ffn: Ffn,
}

/// Every weight of a model, on its device.
pub(super) struct Weights {
    pub(super) embed: DeviceTensor,
    pub(super) layers: Vec<Layer>,
    pub(super) norm: DeviceTensor,
    pub(super) lm_head: Linear,
}

pub(super) fn upload_f32(s: &dyn GpuStream, t: &Tensor) -> Result<DeviceTensor> {
    DeviceTensor::from_f32(s, t.shape(), t.data(), DevDType::F32)
}

/// Rows `part.rows`, columns `part.cols` of `t` [.., k] (row-major).
fn cut<'a, T: Copy>(t: &'a [T], k: usize, part: &TensorSlice) -> impl Iterator<Item = T> + 'a {
    let cols = part.cols.clone();
    part.rows.clone().flat_map(move |r| t[r * k + cols.start..r * k + cols.end].iter().copied())
}

/// Whether a split `r` of `0..len` keeps whole 128-wide scale blocks.
#[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.80
fn block_aligned(r: &Range<usize>, len: usize) -> bool {
    r.start % 128 == 0 && (r.end % 128 == 0 || r.end == len)
}

/// Loads the slice `part` of every [n, k] tensor `names` (a rank's shard) in the form the GEMM
/// reads: one tensor, or several stacked along a leading expert dimension. float8 weights keep
/// their bits and block scales; bf16 keeps its bits; anything else (int8 block / channel, AWQ) is
/// dequantized to f32 by `Checkpoint::load_f32` (the reference options; the fast ones load INT8 /
/// AWQ for their kernels: [`load_part_for`]). float8
/// slices that keep whole 128×128 scale blocks stay float8 with the matching scale blocks; a
/// split inside a block is dequantized to f32 (exact, 4× the bytes; warned), since no block
/// scale describes half a block. DeepSeek-V3's dims at TP 2/4/8 always split on block edges.
pub(super) fn load_linear_part(s: &dyn GpuStream, ckpt: &Checkpoint, names: &[String], n: usize, k: usize, part: &TensorSlice) -> Result<Linear> {
    let dtypes: Vec<DType> = names
        .iter()
        .map(|name| {
            // An AWQ layer has `{base}.qweight` instead of `{base}.weight`: it goes through
            // `load_f32` (dequantized) like int8 and the other non-bf16 / non-fp8 dtypes.
            let awq = || name.strip_suffix(".weight").filter(|b| ckpt.contains(&format!("{b}.qweight"))).map(|_| DType::I32);
            ckpt.info(name).map(|i| i.dtype).or_else(awq).ok_or_else(|| missing(name))
        })
        .collect::<Result<_>>()?;
    let [pn, pk] = part.shape();
    let stacked = |shape: &[usize]| -> Vec<usize> {
        if names.len() == 1 { shape.to_vec() } else { [&[names.len()][..], shape].concat() }
    };
    let fp8_128 = ckpt.fp8_block().is_none_or(|b| b == (128, 128));
    let all_fp8 = dtypes.iter().all(|&d| d == DType::F8E4M3) && fp8_128;
    let aligned = block_aligned(&part.rows, n) && block_aligned(&part.cols, k);
    if all_fp8 && !aligned {
        warn_unaligned(&names[0], part, n, k);
    }
    if all_fp8 && aligned {
        let (mut bits, mut scales) = (Vec::new(), Vec::new());
        let scale_shape = [n.div_ceil(128), k.div_ceil(128)];
        let blocks = TensorSlice { rows: part.rows.start / 128..part.rows.end.div_ceil(128), cols: part.cols.start / 128..part.cols.end.div_ceil(128) };
        for name in names {
            let raw = ckpt.raw(name)?;
            check_shape(name, &raw.shape, &[n, k])?;
            bits.extend(cut(raw.bytes, k, part).map(Fp8E4m3fn));
            let sc = ckpt.load_f32(&format!("{name}_scale_inv"), &scale_shape)?;
            scales.extend(cut(sc.data(), scale_shape[1], &blocks));
        }
        let part_scale = [pn.div_ceil(128), pk.div_ceil(128)];
        return Ok(Linear {
            w: DeviceTensor::from_slice(s, &stacked(&[pn, pk]), &bits)?,
            scale: Some(DeviceTensor::from_slice(s, &stacked(&part_scale), &scales)?),
            n: pn,
            quant: None,
        });
    }
    if dtypes.iter().all(|&d| d == DType::BF16) {
        let mut bits = Vec::new();
        for name in names {
            let raw = ckpt.raw(name)?;
            check_shape(name, &raw.shape, &[n, k])?;
            let all: Vec<half::bf16> = raw.bytes.chunks_exact(2).map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]]))).collect();
            bits.extend(cut(&all, k, part));
        }
        return Ok(Linear { w: DeviceTensor::from_slice(s, &stacked(&[pn, pk]), &bits)?, scale: None, n: pn, quant: None });
    }
    let mut values = Vec::new();
    for name in names {
        values.extend(cut(ckpt.load_f32(name, &[n, k])?.data(), k, part));
    }
    Ok(Linear { w: DeviceTensor::from_f32(s, &stacked(&[pn, pk]), &values, DevDType::F32)?, scale: None, n: pn, quant: None })
}

/// Says why a float8 slice is held in f32 (its linear then runs the f32 GEMM on unquantized
/// activations, whatever the options): a warning the first time in the process, then debug lines.
fn warn_unaligned(name: &str, part: &TensorSlice, n: usize, k: usize) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut first = false;
    ONCE.call_once(|| first = true);
    let what = format!("{name}: rows {:?} / columns {:?} of [{n}, {k}] split a 128×128 float8 scale block", part.rows, part.cols);
    if first {
        tracing::warn!("{what}: no block scale describes part of a block, so this rank holds the slice dequantized to f32 and runs that linear on the f32 GEMM (exact, 4× the bytes); further such slices are logged at debug level");
    } else {
        tracing::debug!("{what}: held in f32");
    }
}

pub(super) fn missing(name: &str) -> Error {
    Error::CheckpointTensor { name: name.to_string(), msg: "not found in the checkpoint".into() }
}

pub(super) fn check_shape(name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found != expected {
        return Err(Error::CheckpointTensor {
            name: name.to_string(),
            msg: format!("expected shape {expected:?}, found {found:?}"),
        });
    }
    Ok(())
}

/// The router settings of `cfg`'s MoE layers.
pub(super) fn route_params(cfg: &ModelConfig) -> RouteParams {
    RouteParams {
        n_group: cfg.n_group,
        topk_group: cfg.topk_group,
        top_k: cfg.num_experts_per_tok,
        scaling: cfg.routed_scaling_factor,
        renormalize: cfg.norm_topk_prob,
    }
}

/// Layer `i`, or `plan`'s shard of it (its heads, its slice of the MLPs, its experts).
#[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.80
pub(super) fn load_layer(s: &dyn GpuStream, ckpt: &Checkpoint, cfg: &ModelConfig, opts: &GpuOptions, i: usize, plan: &ShardPlan) -> Result<Layer> {
    let p = format!("model.layers.{i}");
    let h = cfg.hidden_size;
    let heads = cfg.num_attention_heads;
    let (nope, rope, v, lora) = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank);
    let lin = |name: &str, n: usize, k: usize| load_part_for(s, ckpt, plan, opts, &format!("{p}.{name}"), n, k);
    let vec = |name: &str, n: usize| -> Result<DeviceTensor> { upload_f32(s, &ckpt.load_f32(&format!("{p}.{name}"), &[n])?) };
    let q = match cfg.q_lora_rank {
        Some(r) => QProj::LowRank {
            q_a: lin("self_attn.q_a_proj.weight", r, h)?,
            q_a_norm: vec("self_attn.q_a_layernorm.weight", r)?,
            q_b: lin("self_attn.q_b_proj.weight", heads * (nope + rope), r)?,
        },
        None => QProj::Direct(lin("self_attn.q_proj.weight", heads * (nope + rope), h)?),
    };
    // W_uk and W_uv per head of this rank, from kv_b_proj [H·(nope + v), kv_lora] (dequantized on the host).
    let kv_b = ckpt.load_f32(&format!("{p}.self_attn.kv_b_proj.weight"), &[heads * (nope + v), lora])?;
    let local_heads = plan.heads.len();
    let (mut w_uk_t, mut w_uv) = (Vec::with_capacity(local_heads * lora * nope), Vec::with_capacity(local_heads * v * lora));
    for hd in plan.heads.clone() {
        let base = hd * (nope + v) * lora;
        let uk = &kv_b.data()[base..base + nope * lora];
        for col in 0..lora {
            w_uk_t.extend((0..nope).map(|r| uk[r * lora + col]));
        }
        w_uv.extend_from_slice(&kv_b.data()[base + nope * lora..base + (nope + v) * lora]);
    }
    // bf16 next to a bf16 or fp8 cache (whose attention rounds to bf16 anyway), f32 for the reference.
    let absorb = opts.kv_cache.absorb_dtype();
    let w_uk_t = DeviceTensor::from_f32(s, &[local_heads, lora, nope], &w_uk_t, absorb)?;
    let w_uv = DeviceTensor::from_f32(s, &[local_heads, v, lora], &w_uv, absorb)?;
    let ffn = if cfg.is_moe_layer(i) {
        let e = cfg.n_routed_experts;
        let inter = cfg.moe_intermediate_size;
        let name = |x: usize, proj: &str| format!("{p}.mlp.experts.{x}.{proj}.weight");
        let experts = |proj: &str| -> Vec<String> { plan.experts.clone().map(|x| name(x, proj)).collect() };
        let (n_local, inter_local) = (plan.experts.len(), plan.expert_inter.len());
        let all_fp8 = plan.experts.clone().all(|x| ["gate_proj", "up_proj", "down_proj"].iter().all(|proj| ckpt.info(&name(x, proj)).is_some_and(|i| i.dtype == DType::F8E4M3)));
        #[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.80
        let fused = opts.quant_kernels && all_fp8 && inter_local % 128 == 0 && plan.expert_inter.start % 128 == 0 && ckpt.fp8_block().is_none_or(|b| b == (128, 128));
        // INT8 / AWQ experts (this rank's, its slice of each) for the quantized MoE: fast options.
        let quant = if opts.quant_kernels {
            let names: Vec<[String; 3]> = plan.experts.clone().map(|x| [name(x, "gate_proj"), name(x, "up_proj"), name(x, "down_proj")]).collect();
            let first = names.first();
            match (first.and_then(|x| plan.slice(&x[0], inter, h)), first.and_then(|x| plan.slice(&x[2], h, inter))) {
                (Some(gate_part), Some(down_part)) => load_experts(s, ckpt, &names, h, inter, &gate_part, &down_part)?,
                _ => None,
            }
        } else {
            None
        };
        let experts = if let Some((w13, down)) = quant {
            Experts::Quant { w13, down }
        } else if fused {
            // [gate_0, up_0, gate_1, ...] stacked as [2E, I, H] is [E, 2I, H] (scales likewise).
            let gate_up: Vec<String> = plan.experts.clone().flat_map(|x| [name(x, "gate_proj"), name(x, "up_proj")]).collect();
            let w13 = load_part(s, ckpt, plan, &gate_up, inter, h)?;
            let w13 = Linear {
                w: w13.w.reshape(&[n_local, 2 * inter_local, h])?,
                scale: w13.scale.map(|sc| sc.reshape(&[n_local, 2 * inter_local / 128, h.div_ceil(128)])).transpose()?,
                n: 2 * inter_local,
                quant: None,
            };
            Experts::Fused { w13, down: load_experts_part(s, ckpt, plan, &experts("down_proj"), h, inter)? }
        } else {
            Experts::Split {
                gate: load_experts_part(s, ckpt, plan, &experts("gate_proj"), inter, h)?,
                up: load_experts_part(s, ckpt, plan, &experts("up_proj"), inter, h)?,
                down: load_experts_part(s, ckpt, plan, &experts("down_proj"), h, inter)?,
            }
        };
        Ffn::Moe(Moe {
            router: load_linear_f32(s, ckpt, &format!("{p}.mlp.gate.weight"), e, h)?,
            bias: vec("mlp.gate.e_score_correction_bias", e)?,
            experts,
            shared: match cfg.n_shared_experts {
                0 => None,
                n => Some(load_mlp(s, ckpt, plan, opts, &format!("{p}.mlp.shared_experts"), h, n * inter)?),
            },
            params: route_params(cfg),
            n_experts: e,
            local_experts: plan.experts.clone(),
            inter: plan.expert_inter.len(),
        })
    } else {
        Ffn::Dense(load_mlp(s, ckpt, plan, opts, &format!("{p}.mlp"), h, cfg.intermediate_size)?)
    };
    Ok(Layer {
        input_norm: vec("input_layernorm.weight", h)?,
        post_attn_norm: vec("post_attention_layernorm.weight", h)?,
        q,
        kv_a: lin("self_attn.kv_a_proj_with_mqa.weight", lora + rope, h)?,
        kv_a_norm: vec("self_attn.kv_a_layernorm.weight", lora)?,
        w_uk_t,
        w_uv,
        o: lin("self_attn.o_proj.weight", h, heads * v)?,
        ffn,
    })
}

/// `plan`'s slice of the [n, k] tensors `names` (all sliced alike: the experts of one layer).
pub(super) fn load_part(s: &dyn GpuStream, ckpt: &Checkpoint, plan: &ShardPlan, names: &[String], n: usize, k: usize) -> Result<Linear> {
    let part = names.first().and_then(|first| plan.slice(first, n, k)).ok_or_else(|| {
        Error::InvalidArgument(format!("rank {} of {} holds none of {names:?}", plan.shard.rank, plan.shard.world))
    })?;
    load_linear_part(s, ckpt, names, n, k, &part)
}

/// [`load_part`] of a rank's experts, always with the leading expert dimension ([E, N, K], block
/// scales [E, ⌈N/128⌉, ⌈K/128⌉]) — also when the rank holds one expert (EP over as many ranks as
/// experts), which the grouped GEMMs still index by expert.
pub(super) fn load_experts_part(s: &dyn GpuStream, ckpt: &Checkpoint, plan: &ShardPlan, names: &[String], n: usize, k: usize) -> Result<Linear> {
    let mut lin = load_part(s, ckpt, plan, names, n, k)?;
    if names.len() == 1 {
        let lead = |t: DeviceTensor| -> Result<DeviceTensor> {
            let shape = [&[1][..], t.shape()].concat();
            t.reshape(&shape)
        };
        lin.w = lead(lin.w)?;
        lin.scale = lin.scale.map(lead).transpose()?;
    }
    Ok(lin)
}

/// The router stays in f32: its logits decide discrete expert choices.
pub(super) fn load_linear_f32(s: &dyn GpuStream, ckpt: &Checkpoint, name: &str, n: usize, k: usize) -> Result<Linear> {
    let w = ckpt.load_f32(name, &[n, k])?;
    Ok(Linear { w: upload_f32(s, &w)?, scale: None, n, quant: None })
}

pub(super) fn load_mlp(s: &dyn GpuStream, ckpt: &Checkpoint, plan: &ShardPlan, opts: &GpuOptions, prefix: &str, h: usize, inter: usize) -> Result<Mlp> {
    let one = |proj: &str| format!("{prefix}.{proj}.weight");
    Ok(Mlp {
        gate: load_part_for(s, ckpt, plan, opts, &one("gate_proj"), inter, h)?,
        up: load_part_for(s, ckpt, plan, opts, &one("up_proj"), inter, h)?,
        down: load_part_for(s, ckpt, plan, opts, &one("down_proj"), h, inter)?,
    })
}

/// [`load_part`] of one [n, k] weight for `opts`: with the fast options, an INT8 / AWQ weight
/// whose shape (and slice) their kernels take loads in the kernel's form (`super::quant`);
/// everything else as [`load_linear_part`] loads it.
pub(super) fn load_part_for(s: &dyn GpuStream, ckpt: &Checkpoint, plan: &ShardPlan, opts: &GpuOptions, name: &str, n: usize, k: usize) -> Result<Linear> {
    if opts.quant_kernels {
        let part = plan.slice(name, n, k).ok_or_else(|| Error::InvalidArgument(format!("rank {} of {} holds none of {name}", plan.shard.rank, plan.shard.world)))?;
        if let Some(l) = load_dense(s, ckpt, name, n, k, &part)? {
            return Ok(l);
        }
    }
    load_part(s, ckpt, plan, &[name.to_string()], n, k)
}
