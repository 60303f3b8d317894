//! The model's weights on the device, in the form the kernels read them, and their loading from
//! a checkpoint.

use super::GpuOptions;
use crate::backend::dispatch::RouteParams;
use crate::backend::{DType as DevDType, DeviceTensor, Fp8E4m3fn, GpuStream};
use crate::error::{Error, Result};
use crate::model::checkpoint::{Checkpoint, DType};
use crate::model::config::ModelConfig;
use crate::tensor::Tensor;


/// A linear weight [N, K] as the GEMM kernels read it.
pub(super) struct Linear {
    pub(super) w: DeviceTensor,
    /// Block scales [ceil(N/128), ceil(K/128)] (or [E, ..] for stacked experts) of float8 weights.
    pub(super) scale: Option<DeviceTensor>,
    pub(super) n: usize,
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
    pub(super) n_experts: usize,
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
}

// One per layer, built once: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

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
    /// W_ukᵀ of every head [H, kv_lora, nope]: q_lat = q_nope · W_uk as a linear layer per head.
    pub(super) w_uk_t: DeviceTensor,
    /// W_uv of every head [H, v, kv_lora].
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

/// Loads linear weights in the form the GEMM reads: one tensor, or several stacked along a
/// leading expert dimension. float8 weights keep their bits and block scales; bf16 keeps its
/// bits; anything else (int8 block / channel, AWQ) is dequantized to f32 by `Checkpoint::load_f32`.
pub(super) fn load_linear(s: &dyn GpuStream, ckpt: &Checkpoint, names: &[String], n: usize, k: usize) -> Result<Linear> {
    let dtypes: Vec<DType> = names
        .iter()
        .map(|name| {
            // An AWQ layer has `{base}.qweight` instead of `{base}.weight`: it goes through
            // `load_f32` (dequantized) like int8 and the other non-bf16 / non-fp8 dtypes.
            let awq = || name.strip_suffix(".weight").filter(|b| ckpt.contains(&format!("{b}.qweight"))).map(|_| DType::I32);
            ckpt.info(name).map(|i| i.dtype).or_else(awq).ok_or_else(|| missing(name))
        })
        .collect::<Result<_>>()?;
    let stacked = |shape: &[usize]| -> Vec<usize> {
        if names.len() == 1 { shape.to_vec() } else { [&[names.len()][..], shape].concat() }
    };
    let fp8_128 = ckpt.fp8_block().is_none_or(|b| b == (128, 128));
    if dtypes.iter().all(|&d| d == DType::F8E4M3) && fp8_128 {
        let (mut bits, mut scales) = (Vec::new(), Vec::new());
        let scale_shape = [n.div_ceil(128), k.div_ceil(128)];
        for name in names {
            let raw = ckpt.raw(name)?;
            check_shape(name, &raw.shape, &[n, k])?;
            bits.extend(raw.bytes.iter().map(|&b| Fp8E4m3fn(b)));
            scales.extend(ckpt.load_f32(&format!("{name}_scale_inv"), &scale_shape)?.into_data());
        }
        return Ok(Linear {
            w: DeviceTensor::from_slice(s, &stacked(&[n, k]), &bits)?,
            scale: Some(DeviceTensor::from_slice(s, &stacked(&scale_shape), &scales)?),
            n,
        });
    }
    if dtypes.iter().all(|&d| d == DType::BF16) {
        let mut bits = Vec::new();
        for name in names {
            let raw = ckpt.raw(name)?;
            check_shape(name, &raw.shape, &[n, k])?;
            bits.extend(raw.bytes.chunks_exact(2).map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]]))));
        }
        return Ok(Linear { w: DeviceTensor::from_slice(s, &stacked(&[n, k]), &bits)?, scale: None, n });
    }
    let mut values = Vec::new();
    for name in names {
        values.extend(ckpt.load_f32(name, &[n, k])?.into_data());
    }
    Ok(Linear { w: DeviceTensor::from_f32(s, &stacked(&[n, k]), &values, DevDType::F32)?, scale: None, n })
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

pub(super) fn load_layer(s: &dyn GpuStream, ckpt: &Checkpoint, cfg: &ModelConfig, opts: &GpuOptions, i: usize) -> Result<Layer> {
    let p = format!("model.layers.{i}");
    let h = cfg.hidden_size;
    let heads = cfg.num_attention_heads;
    let (nope, rope, v, lora) = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank);
    let lin = |name: &str, n: usize, k: usize| load_linear(s, ckpt, &[format!("{p}.{name}")], n, k);
    let vec = |name: &str, n: usize| -> Result<DeviceTensor> { upload_f32(s, &ckpt.load_f32(&format!("{p}.{name}"), &[n])?) };
    let q = match cfg.q_lora_rank {
        Some(r) => QProj::LowRank {
            q_a: lin("self_attn.q_a_proj.weight", r, h)?,
            q_a_norm: vec("self_attn.q_a_layernorm.weight", r)?,
            q_b: lin("self_attn.q_b_proj.weight", heads * (nope + rope), r)?,
        },
        None => QProj::Direct(lin("self_attn.q_proj.weight", heads * (nope + rope), h)?),
    };
    // W_uk and W_uv per head, from kv_b_proj [H·(nope + v), kv_lora] (dequantized on the host).
    let kv_b = ckpt.load_f32(&format!("{p}.self_attn.kv_b_proj.weight"), &[heads * (nope + v), lora])?;
    let (mut w_uk_t, mut w_uv) = (Vec::with_capacity(heads * lora * nope), Vec::with_capacity(heads * v * lora));
    for hd in 0..heads {
        let base = hd * (nope + v) * lora;
        let uk = &kv_b.data()[base..base + nope * lora];
        for col in 0..lora {
            w_uk_t.extend((0..nope).map(|r| uk[r * lora + col]));
        }
        w_uv.extend_from_slice(&kv_b.data()[base + nope * lora..base + (nope + v) * lora]);
    }
    // bf16 next to a bf16 cache (whose attention rounds to bf16 anyway), f32 for the reference.
    let absorb = opts.kv_cache;
    let w_uk_t = DeviceTensor::from_f32(s, &[heads, lora, nope], &w_uk_t, absorb)?;
    let w_uv = DeviceTensor::from_f32(s, &[heads, v, lora], &w_uv, absorb)?;
    let ffn = if cfg.is_moe_layer(i) {
        let e = cfg.n_routed_experts;
        let inter = cfg.moe_intermediate_size;
        let name = |x: usize, proj: &str| format!("{p}.mlp.experts.{x}.{proj}.weight");
        let experts = |proj: &str| -> Vec<String> { (0..e).map(|x| name(x, proj)).collect() };
        let all_fp8 = (0..e).all(|x| ["gate_proj", "up_proj", "down_proj"].iter().all(|proj| ckpt.info(&name(x, proj)).is_some_and(|i| i.dtype == DType::F8E4M3)));
        let experts = if opts.fp8_kernels && all_fp8 && inter % 128 == 0 && ckpt.fp8_block().is_none_or(|b| b == (128, 128)) {
            // [gate_0, up_0, gate_1, ...] stacked as [2E, I, H] is [E, 2I, H] (scales likewise).
            let gate_up: Vec<String> = (0..e).flat_map(|x| [name(x, "gate_proj"), name(x, "up_proj")]).collect();
            let w13 = load_linear(s, ckpt, &gate_up, inter, h)?;
            let w13 = Linear {
                w: w13.w.reshape(&[e, 2 * inter, h])?,
                scale: w13.scale.map(|sc| sc.reshape(&[e, 2 * inter / 128, h.div_ceil(128)])).transpose()?,
                n: 2 * inter,
            };
            Experts::Fused { w13, down: load_linear(s, ckpt, &experts("down_proj"), h, inter)? }
        } else {
            Experts::Split {
                gate: load_linear(s, ckpt, &experts("gate_proj"), inter, h)?,
                up: load_linear(s, ckpt, &experts("up_proj"), inter, h)?,
                down: load_linear(s, ckpt, &experts("down_proj"), h, inter)?,
            }
        };
        Ffn::Moe(Moe {
            router: load_linear_f32(s, ckpt, &format!("{p}.mlp.gate.weight"), e, h)?,
            bias: vec("mlp.gate.e_score_correction_bias", e)?,
            experts,
            shared: match cfg.n_shared_experts {
                0 => None,
                n => Some(load_mlp(s, ckpt, &format!("{p}.mlp.shared_experts"), h, n * inter)?),
            },
            params: RouteParams {
                n_group: cfg.n_group,
                topk_group: cfg.topk_group,
                top_k: cfg.num_experts_per_tok,
                scaling: cfg.routed_scaling_factor,
                renormalize: cfg.norm_topk_prob,
            },
            n_experts: e,
            inter,
        })
    } else {
        Ffn::Dense(load_mlp(s, ckpt, &format!("{p}.mlp"), h, cfg.intermediate_size)?)
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

/// The router stays in f32: its logits decide discrete expert choices.
pub(super) fn load_linear_f32(s: &dyn GpuStream, ckpt: &Checkpoint, name: &str, n: usize, k: usize) -> Result<Linear> {
    let w = ckpt.load_f32(name, &[n, k])?;
    Ok(Linear { w: upload_f32(s, &w)?, scale: None, n })
}

pub(super) fn load_mlp(s: &dyn GpuStream, ckpt: &Checkpoint, prefix: &str, h: usize, inter: usize) -> Result<Mlp> {
    let one = |proj: &str| vec![format!("{prefix}.{proj}.weight")];
    Ok(Mlp {
        gate: load_linear(s, ckpt, &one("gate_proj"), inter, h)?,
        up: load_linear(s, ckpt, &one("up_proj"), inter, h)?,
        down: load_linear(s, ckpt, &one("down_proj"), h, inter)?,
    })
}
