//! DeepSeek-V3 forward pass on a GPU stream (CUDA or HIP), assembled from the generated kernels
//! in their first, simple form (`backend::dispatch`). Activations are f32; weights stay in their
//! checkpoint format where a kernel reads it (bf16, or float8 e4m3fn with 128×128 block scales),
//! f16 and f32 weights are used as f32. The latent KV cache is paged ([pages, 64, kv_lora + rope]).
//!
//! MLA runs in the absorbed form for prefill and decode alike: W_uk is folded into the query per
//! head, attention runs over the latent cache, W_uv is applied to the latent output.

use std::path::Path;

use crate::backend::dispatch::{self, PagedCache, RopeLayout, RouteParams, Strided};
use crate::backend::{open_stream, DType as DevDType, Device, DeviceTensor, Fp8E4m3fn, GpuStream};
use crate::error::{Error, Result};
use crate::model::checkpoint::{Checkpoint, DType};
use crate::model::config::ModelConfig;
use crate::model::generate::CausalLm;
use crate::ops::rope::YarnRope;
use crate::tensor::Tensor;

/// Positions per cache page.
pub const PAGE_SIZE: usize = 64;

/// A linear weight [N, K] as the GEMM kernels read it.
struct Linear {
    w: DeviceTensor,
    /// Block scales [ceil(N/128), ceil(K/128)] (or [E, ..] for stacked experts) of float8 weights.
    scale: Option<DeviceTensor>,
    n: usize,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

struct Moe {
    router: Linear,
    bias: DeviceTensor,
    /// Expert weights stacked along a leading expert dimension: [E, N, K].
    gate: Linear,
    up: Linear,
    down: Linear,
    shared: Option<Mlp>,
    params: RouteParams,
    n_experts: usize,
    inter: usize,
}

enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

enum QProj {
    LowRank { q_a: Linear, q_a_norm: DeviceTensor, q_b: Linear },
    Direct(Linear),
}

struct Layer {
    input_norm: DeviceTensor,
    post_attn_norm: DeviceTensor,
    q: QProj,
    kv_a: Linear,
    kv_a_norm: DeviceTensor,
    /// Per head W_ukᵀ [kv_lora, nope]: q_lat = q_nope · W_uk as a linear layer.
    w_uk_t: Vec<DeviceTensor>,
    /// Per head W_uv [v, kv_lora].
    w_uv: Vec<DeviceTensor>,
    o: Linear,
    ffn: Ffn,
}

pub struct GpuModel {
    cfg: ModelConfig,
    stream: Box<dyn GpuStream>,
    embed: DeviceTensor,
    layers: Vec<Layer>,
    norm: DeviceTensor,
    lm_head: Linear,
    cos: DeviceTensor,
    sin: DeviceTensor,
    /// Cache capacity of one sequence, in positions (a whole number of pages).
    max_positions: usize,
}

/// The paged latent cache of one sequence: per layer [pages, PAGE_SIZE, kv_lora + rope] f32.
pub struct GpuCache {
    layers: Vec<DeviceTensor>,
    block_table: DeviceTensor,
    len: usize,
}

impl GpuCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn upload_f32(s: &dyn GpuStream, t: &Tensor) -> Result<DeviceTensor> {
    DeviceTensor::from_f32(s, t.shape(), t.data(), DevDType::F32)
}

/// Loads linear weights in the form the GEMM reads: one tensor, or several stacked along a
/// leading expert dimension. float8 weights keep their bits and block scales; bf16 keeps its
/// bits; anything else is converted to f32.
fn load_linear(s: &dyn GpuStream, ckpt: &Checkpoint, names: &[String], n: usize, k: usize) -> Result<Linear> {
    let dtypes: Vec<DType> = names
        .iter()
        .map(|name| ckpt.info(name).map(|i| i.dtype).ok_or_else(|| missing(name)))
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

fn missing(name: &str) -> Error {
    Error::CheckpointTensor { name: name.to_string(), msg: "not found in the checkpoint".into() }
}

fn check_shape(name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found != expected {
        return Err(Error::CheckpointTensor {
            name: name.to_string(),
            msg: format!("expected shape {expected:?}, found {found:?}"),
        });
    }
    Ok(())
}

impl GpuModel {
    /// Loads config.json and the checkpoint in `dir` onto `device` (`cuda:N` or `hip:N`).
    pub fn load(dir: &Path, device: Device) -> Result<GpuModel> {
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        ckpt.check_against(&cfg)?;
        let stream = open_stream(device)?;
        let s = stream.as_ref();
        let h = cfg.hidden_size;
        let embed_name = "model.embed_tokens.weight";
        let embed = match ckpt.info(embed_name).map(|i| i.dtype) {
            Some(DType::BF16) => load_linear(s, &ckpt, &[embed_name.to_string()], cfg.vocab_size, h)?.w,
            _ => upload_f32(s, &ckpt.load_f32(embed_name, &[cfg.vocab_size, h])?)?,
        };
        let layers = (0..cfg.num_hidden_layers).map(|i| load_layer(s, &ckpt, &cfg, i)).collect::<Result<Vec<_>>>()?;
        let norm = upload_f32(s, &ckpt.load_f32("model.norm.weight", &[h])?)?;
        let lm_name = if cfg.tie_word_embeddings && !ckpt.contains("lm_head.weight") { embed_name } else { "lm_head.weight" };
        let lm_head = load_linear(s, &ckpt, &[lm_name.to_string()], cfg.vocab_size, h)?;
        // cos/sin tables for every position the cache can hold.
        let max_positions = cfg.max_position_embeddings.min(32768).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let rope = YarnRope::new(&cfg);
        let half = cfg.qk_rope_head_dim / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(max_positions * half), Vec::with_capacity(max_positions * half));
        for pos in 0..max_positions {
            let (c, sn) = rope.cos_sin(pos);
            cos.extend(c);
            sin.extend(sn);
        }
        let cos = DeviceTensor::from_f32(s, &[max_positions, half], &cos, DevDType::F32)?;
        let sin = DeviceTensor::from_f32(s, &[max_positions, half], &sin, DevDType::F32)?;
        s.synchronize()?;
        Ok(GpuModel { cfg, embed, layers, norm, lm_head, cos, sin, max_positions, stream })
    }

    fn s(&self) -> &dyn GpuStream {
        self.stream.as_ref()
    }

    fn empty(&self, shape: &[usize]) -> Result<DeviceTensor> {
        DeviceTensor::empty(self.s(), DevDType::F32, shape)
    }

    fn linear(&self, x: &DeviceTensor, w: &Linear) -> Result<DeviceTensor> {
        let rows = x.numel() / x.shape().last().copied().unwrap_or(1);
        let y = self.empty(&[rows, w.n])?;
        dispatch::linear(self.s(), &y, x, &w.w, w.scale.as_ref())?;
        Ok(y)
    }

    fn mlp(&self, x: &DeviceTensor, m: &Mlp) -> Result<DeviceTensor> {
        let gate = self.linear(x, &m.gate)?;
        let up = self.linear(x, &m.up)?;
        let h = self.silu_mul(&gate, &up)?;
        self.linear(&h, &m.down)
    }

    /// silu(gate) ⊙ up for two [rows, I] tensors.
    fn silu_mul(&self, gate: &DeviceTensor, up: &DeviceTensor) -> Result<DeviceTensor> {
        let (rows, i) = (gate.shape()[0], gate.shape()[1]);
        let gate_up = self.empty(&[rows, 2 * i])?;
        dispatch::copy_2d(self.s(), Strided::at(&gate_up, 0, 2 * i), Strided::rows(gate), rows, i)?;
        dispatch::copy_2d(self.s(), Strided::at(&gate_up, i, 2 * i), Strided::rows(up), rows, i)?;
        let out = self.empty(&[rows, i])?;
        dispatch::silu_mul(self.s(), &out, &gate_up)?;
        Ok(out)
    }

    fn moe(&self, x: &DeviceTensor, m: &Moe) -> Result<DeviceTensor> {
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
        let rows = self.empty(&[t * k, self.cfg.hidden_size])?;
        dispatch::moe_gather(s, &rows, x, &sorted_pairs, &offsets, k)?;
        let grouped = |a: &DeviceTensor, w: &Linear| -> Result<DeviceTensor> {
            let c = self.empty(&[t * k, w.n])?;
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

    /// MLA for `x` [T, hidden] at positions `start..start+T`; writes the new latent rows to the cache.
    fn attention(&self, layer: &Layer, li: usize, x: &DeviceTensor, cache: &GpuCache, step: &StepTensors) -> Result<DeviceTensor> {
        let s = self.s();
        let c = &self.cfg;
        let (t, heads) = (x.shape()[0], c.num_attention_heads);
        let (nope, rope, v, lora) = (c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank);
        let qk = nope + rope;
        let latent = lora + rope;
        let q = match &layer.q {
            QProj::LowRank { q_a, q_a_norm, q_b } => {
                let c_q = self.linear(x, q_a)?;
                let c_q_n = self.empty(c_q.shape())?;
                dispatch::rms_norm(s, &c_q_n, &c_q, q_a_norm, c.rms_norm_eps)?;
                self.linear(&c_q_n, q_b)?
            }
            QProj::Direct(w) => self.linear(x, w)?,
        };
        let kv = self.linear(x, &layer.kv_a)?;
        // RMSNorm of the c_kv part: copy it out, normalize, copy back.
        let c_kv = self.empty(&[t, lora])?;
        dispatch::copy_2d(s, Strided::rows(&c_kv), Strided::at(&kv, 0, latent), t, lora)?;
        let c_kv_n = self.empty(&[t, lora])?;
        dispatch::rms_norm(s, &c_kv_n, &c_kv, &layer.kv_a_norm, c.rms_norm_eps)?;
        dispatch::copy_2d(s, Strided::at(&kv, 0, latent), Strided::rows(&c_kv_n), t, lora)?;
        let pe = |heads, token_stride, head_stride, offset| RopeLayout { heads, token_stride, head_stride, offset, rope_dim: rope };
        dispatch::rope(s, &kv, &self.cos, &self.sin, &step.pos, pe(1, latent, latent, lora))?;
        dispatch::rope(s, &q, &self.cos, &self.sin, &step.pos, pe(heads, heads * qk, qk, nope))?;
        let paged = PagedCache { cache: &cache.layers[li], block_table: &cache.block_table, seq_lens: &step.seq_lens };
        dispatch::paged_kv_write(s, &paged, &kv, &step.seq, &step.pos)?;
        // Absorbed query [T, H, kv_lora + rope]: q_nope · W_uk per head, then q_pe.
        let q_abs = self.empty(&[t, heads, latent])?;
        let q_nope = self.empty(&[t, nope])?;
        for h in 0..heads {
            dispatch::copy_2d(s, Strided::rows(&q_nope), Strided::at(&q, h * qk, heads * qk), t, nope)?;
            let q_lat = self.empty(&[t, lora])?;
            dispatch::linear(s, &q_lat, &q_nope, &layer.w_uk_t[h], None)?;
            dispatch::copy_2d(s, Strided::at(&q_abs, h * latent, heads * latent), Strided::rows(&q_lat), t, lora)?;
            dispatch::copy_2d(s, Strided::at(&q_abs, h * latent + lora, heads * latent), Strided::at(&q, h * qk + nope, heads * qk), t, rope)?;
        }
        let o_lat = self.empty(&[t, heads, lora])?;
        dispatch::mla_paged_attention(s, &o_lat, &q_abs, &paged, &step.seq, &step.pos, lora, c.softmax_scale())?;
        // o = o_lat · W_uvᵀ per head, gathered into [T, H·v] for o_proj.
        let o_cat = self.empty(&[t, heads * v])?;
        let o_lat_h = self.empty(&[t, lora])?;
        for h in 0..heads {
            dispatch::copy_2d(s, Strided::rows(&o_lat_h), Strided::at(&o_lat, h * lora, heads * lora), t, lora)?;
            let o_h = self.empty(&[t, v])?;
            dispatch::linear(s, &o_h, &o_lat_h, &layer.w_uv[h], None)?;
            dispatch::copy_2d(s, Strided::at(&o_cat, h * v, heads * v), Strided::rows(&o_h), t, v)?;
        }
        self.linear(&o_cat, &layer.o)
    }

    pub fn new_gpu_cache(&self) -> Result<GpuCache> {
        let s = self.s();
        let pages = self.max_positions / PAGE_SIZE;
        let width = self.cfg.kv_lora_rank + self.cfg.qk_rope_head_dim;
        let layers = (0..self.cfg.num_hidden_layers)
            .map(|_| DeviceTensor::poisoned(s, DevDType::F32, &[pages, PAGE_SIZE, width]))
            .collect::<Result<Vec<_>>>()?;
        // One sequence owning every page, in a shuffled order so that paging is exercised.
        let table: Vec<i32> = (0..pages as i32).rev().collect();
        let block_table = DeviceTensor::from_slice(s, &[1, pages], &table)?;
        Ok(GpuCache { layers, block_table, len: 0 })
    }

    pub fn forward_gpu(&self, tokens: &[u32], cache: &mut GpuCache) -> Result<Tensor> {
        let s = self.s();
        let c = &self.cfg;
        let t = tokens.len();
        if t == 0 {
            return Err(Error::InvalidArgument("forward needs at least one token".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocabulary (size {})", c.vocab_size)));
        }
        if cache.len + t > self.max_positions {
            return Err(Error::InvalidArgument(format!(
                "sequence of {} tokens exceeds the GPU cache capacity of {} positions",
                cache.len + t,
                self.max_positions
            )));
        }
        let step = StepTensors::new(s, cache.len, t)?;
        let ids = DeviceTensor::from_slice(s, &[t], tokens)?;
        let x = self.empty(&[t, c.hidden_size])?;
        dispatch::embedding(s, &x, &self.embed, &ids)?;
        let normed = self.empty(&[t, c.hidden_size])?;
        dispatch::rms_norm(s, &normed, &x, &self.layers[0].input_norm, c.rms_norm_eps)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let attn = self.attention(layer, i, &normed, cache, &step)?;
            dispatch::add_rms_norm(s, &normed, &x, &attn, &layer.post_attn_norm, c.rms_norm_eps)?;
            let ffn = match &layer.ffn {
                Ffn::Dense(m) => self.mlp(&normed, m)?,
                Ffn::Moe(m) => self.moe(&normed, m)?,
            };
            let next_norm = self.layers.get(i + 1).map_or(&self.norm, |l| &l.input_norm);
            dispatch::add_rms_norm(s, &normed, &x, &ffn, next_norm, c.rms_norm_eps)?;
        }
        let logits = self.linear(&normed, &self.lm_head)?;
        let host = logits.to_f32(s)?;
        cache.len += t;
        Tensor::new(vec![t, c.vocab_size], host)
    }
}

/// Per-step index tensors: every token belongs to sequence 0 at consecutive positions.
struct StepTensors {
    seq: DeviceTensor,
    pos: DeviceTensor,
    seq_lens: DeviceTensor,
}

impl StepTensors {
    fn new(s: &dyn GpuStream, start: usize, t: usize) -> Result<Self> {
        let pos: Vec<i32> = (start..start + t).map(|p| p as i32).collect();
        Ok(StepTensors {
            seq: DeviceTensor::from_slice(s, &[t], &vec![0i32; t])?,
            pos: DeviceTensor::from_slice(s, &[t], &pos)?,
            seq_lens: DeviceTensor::from_slice(s, &[1], &[(start + t) as i32])?,
        })
    }
}

fn load_layer(s: &dyn GpuStream, ckpt: &Checkpoint, cfg: &ModelConfig, i: usize) -> Result<Layer> {
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
    let (mut w_uk_t, mut w_uv) = (Vec::with_capacity(heads), Vec::with_capacity(heads));
    for hd in 0..heads {
        let base = hd * (nope + v) * lora;
        let uk = &kv_b.data()[base..base + nope * lora];
        let mut uk_t = vec![0f32; lora * nope];
        for r in 0..nope {
            for col in 0..lora {
                uk_t[col * nope + r] = uk[r * lora + col];
            }
        }
        w_uk_t.push(DeviceTensor::from_f32(s, &[lora, nope], &uk_t, DevDType::F32)?);
        let uv = &kv_b.data()[base + nope * lora..base + (nope + v) * lora];
        w_uv.push(DeviceTensor::from_f32(s, &[v, lora], uv, DevDType::F32)?);
    }
    let ffn = if cfg.is_moe_layer(i) {
        let e = cfg.n_routed_experts;
        let inter = cfg.moe_intermediate_size;
        let experts = |proj: &str| -> Vec<String> { (0..e).map(|x| format!("{p}.mlp.experts.{x}.{proj}.weight")).collect() };
        Ffn::Moe(Moe {
            router: load_linear_f32(s, ckpt, &format!("{p}.mlp.gate.weight"), e, h)?,
            bias: vec("mlp.gate.e_score_correction_bias", e)?,
            gate: load_linear(s, ckpt, &experts("gate_proj"), inter, h)?,
            up: load_linear(s, ckpt, &experts("up_proj"), inter, h)?,
            down: load_linear(s, ckpt, &experts("down_proj"), h, inter)?,
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
fn load_linear_f32(s: &dyn GpuStream, ckpt: &Checkpoint, name: &str, n: usize, k: usize) -> Result<Linear> {
    let w = ckpt.load_f32(name, &[n, k])?;
    Ok(Linear { w: upload_f32(s, &w)?, scale: None, n })
}

fn load_mlp(s: &dyn GpuStream, ckpt: &Checkpoint, prefix: &str, h: usize, inter: usize) -> Result<Mlp> {
    let one = |proj: &str| vec![format!("{prefix}.{proj}.weight")];
    Ok(Mlp {
        gate: load_linear(s, ckpt, &one("gate_proj"), inter, h)?,
        up: load_linear(s, ckpt, &one("up_proj"), inter, h)?,
        down: load_linear(s, ckpt, &one("down_proj"), h, inter)?,
    })
}

impl CausalLm for GpuModel {
    type Cache = GpuCache;

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn new_cache(&self) -> Result<GpuCache> {
        self.new_gpu_cache()
    }

    fn forward(&self, tokens: &[u32], cache: &mut GpuCache) -> Result<Tensor> {
        self.forward_gpu(tokens, cache)
    }
}
