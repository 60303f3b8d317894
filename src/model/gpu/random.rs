//! DeepSeek-V3-shaped models with random weights made on the device: the whole forward at real
//! dimensions (hidden 7168, 128 heads, 256 experts, FP8 128×128 blocks) runs without a 700 GB
//! download, with as many layers as fit.
//!
//! Weights are drawn by the `fill_uniform` kernel (counter-based, reproducible from the seed):
//! - float8 linears (every weight DeepSeek-V3 ships in FP8): codes of values uniform in
//!   [-448, 448], block scales all equal to 1 / (σ_codes·√K), so that each output has about the
//!   variance of one input (σ_codes = 448/√3);
//! - W_uk / W_uv (the halves of kv_b_proj, stored per head for the absorbed MLA): uniform with
//!   variance 1/K, f32 next to the f32 cache, bf16 next to the bf16 and fp8 caches (the same
//!   draws, so models that differ only in the bf16 / fp8 cache hold the same weights);
//! - embedding (bf16) uniform with unit variance, lm_head (bf16) and router (f32) variance 1/K;
//!   norms 1, router bias 0 before [`GpuModel::balance_routing`].
//!
//! With random router weights the sigmoid scores of random hidden states already spread tokens
//! over the experts, but unevenly; [`GpuModel::balance_routing`] then applies DeepSeek's
//! auxiliary-loss-free rule — raise the bias of under-loaded experts, lower it for over-loaded
//! ones — over a few calibration prefills until the expert loads are roughly even.

use std::path::Path;

use super::weights::{route_params, Experts, Ffn, Layer, Linear, Mlp, Moe, QProj, Weights};
use super::{GpuModel, GpuOptions, PAGE_SIZE};
use crate::backend::dispatch;
use crate::backend::{open_stream, DType as DevDType, Device, DeviceTensor, GpuStream};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::shard::{Shard, ShardPlan};
use crate::ops::random::mix64;

/// DeepSeek-V3's config.json (the 671B model).
const DEEPSEEK_V3_CONFIG: &str = include_str!("../../../tests/fixtures/configs/deepseek-v3.json");

/// The real DeepSeek-V3 configuration cut to `layers` decoder layers, the first `dense` of them
/// dense (the full model: 61 and 3), without the MTP layer.
pub fn deepseek_v3_slice(layers: usize, dense: usize) -> Result<ModelConfig> {
    if layers == 0 || dense > layers {
        return Err(Error::InvalidArgument(format!("a DeepSeek-V3 slice of {layers} layers with {dense} dense ones")));
    }
    let mut cfg = ModelConfig::from_json_str(Path::new("deepseek-v3 config (built in)"), DEEPSEEK_V3_CONFIG)?;
    cfg.num_hidden_layers = layers;
    cfg.first_k_dense_replace = dense;
    cfg.num_nextn_predict_layers = 0;
    Ok(cfg)
}

/// Standard deviation of float8 codes drawn uniformly in [-448, 448].
const CODE_STD: f32 = 448.0 / 1.732_050_8;

/// Draws the tensors of one model: tensor `i` uses stream `mix64(seed + i)`.
struct Filler<'a> {
    s: &'a dyn GpuStream,
    seed: u64,
    next: u64,
}

impl Filler<'_> {
    fn uniform(&mut self, dtype: DevDType, shape: &[usize], lo: f32, hi: f32) -> Result<DeviceTensor> {
        let t = DeviceTensor::empty(self.s, dtype, shape)?;
        self.next += 1;
        dispatch::fill_uniform(self.s, &t, mix64(self.seed.wrapping_add(self.next)), lo, hi)?;
        Ok(t)
    }

    /// Zero mean and variance 1/fan_in.
    fn scaled(&mut self, dtype: DevDType, shape: &[usize], fan_in: usize) -> Result<DeviceTensor> {
        let a = (3.0 / fan_in as f32).sqrt();
        self.uniform(dtype, shape, -a, a)
    }

    fn constant(&mut self, dtype: DevDType, shape: &[usize], value: f32) -> Result<DeviceTensor> {
        self.uniform(dtype, shape, value, value)
    }

    /// A float8 linear [N, K] with 128×128 block scales, or `stack` of them ([E, N, K]).
    fn fp8_linear(&mut self, stack: Option<usize>, n: usize, k: usize) -> Result<Linear> {
        let lead: Vec<usize> = stack.into_iter().collect();
        let w = self.uniform(DevDType::E4m3fn, &[&lead[..], &[n, k]].concat(), -448.0, 448.0)?;
        let scale_shape = [&lead[..], &[n.div_ceil(128), k.div_ceil(128)]].concat();
        let scale = self.constant(DevDType::F32, &scale_shape, 1.0 / (CODE_STD * (k as f32).sqrt()))?;
        Ok(Linear { w, scale: Some(scale), n, quant: None })
    }

    fn mlp(&mut self, h: usize, inter: usize) -> Result<Mlp> {
        Ok(Mlp { gate: self.fp8_linear(None, inter, h)?, up: self.fp8_linear(None, inter, h)?, down: self.fp8_linear(None, h, inter)? })
    }

    fn layer(&mut self, cfg: &ModelConfig, opts: &GpuOptions, i: usize) -> Result<Layer> {
        let h = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        let (nope, rope, v, lora) = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank);
        let q = match cfg.q_lora_rank {
            Some(r) => QProj::LowRank {
                q_a: self.fp8_linear(None, r, h)?,
                q_a_norm: self.constant(DevDType::F32, &[r], 1.0)?,
                q_b: self.fp8_linear(None, heads * (nope + rope), r)?,
            },
            None => QProj::Direct(self.fp8_linear(None, heads * (nope + rope), h)?),
        };
        let ffn = if cfg.is_moe_layer(i) {
            let (e, inter) = (cfg.n_routed_experts, cfg.moe_intermediate_size);
            // Fused whenever the shape allows, whatever the options: the same draws then serve
            // the reference and the fast forward (which the tests compare).
            let experts = if inter % 128 == 0 {
                let w13 = self.fp8_linear(Some(e), 2 * inter, h)?;
                Experts::Fused { w13, down: self.fp8_linear(Some(e), h, inter)? }
            } else {
                Experts::Split {
                    gate: self.fp8_linear(Some(e), inter, h)?,
                    up: self.fp8_linear(Some(e), inter, h)?,
                    down: self.fp8_linear(Some(e), h, inter)?,
                }
            };
            Ffn::Moe(Moe {
                router: Linear { w: self.scaled(DevDType::F32, &[e, h], h)?, scale: None, n: e, quant: None },
                bias: self.constant(DevDType::F32, &[e], 0.0)?,
                experts,
                shared: match cfg.n_shared_experts {
                    0 => None,
                    n => Some(self.mlp(h, n * inter)?),
                },
                params: route_params(cfg),
                n_experts: e,
                local_experts: 0..e,
                inter,
            })
        } else {
            Ffn::Dense(self.mlp(h, cfg.intermediate_size)?)
        };
        Ok(Layer {
            input_norm: self.constant(DevDType::F32, &[h], 1.0)?,
            post_attn_norm: self.constant(DevDType::F32, &[h], 1.0)?,
            q,
            kv_a: self.fp8_linear(None, lora + rope, h)?,
            kv_a_norm: self.constant(DevDType::F32, &[lora], 1.0)?,
            w_uk_t: self.scaled(opts.kv_cache.absorb_dtype(), &[heads, lora, nope], nope)?,
            w_uv: self.scaled(opts.kv_cache.absorb_dtype(), &[heads, v, lora], lora)?,
            o: self.fp8_linear(None, h, heads * v)?,
            ffn,
        })
    }
}

/// Expert loads of the MoE layers before and after [`GpuModel::balance_routing`].
#[derive(Clone, Debug, Default)]
pub struct RoutingBalance {
    /// Per MoE layer: the most loaded expert's (token, expert) pairs over the mean, first pass.
    pub max_over_mean_before: Vec<f64>,
    /// The same after the last bias update.
    pub max_over_mean_after: Vec<f64>,
    /// Per MoE layer: experts that got no token in the last pass.
    pub idle_after: Vec<usize>,
}

impl GpuModel {
    /// A model of `cfg`'s shape with random weights made on `device` (see the module docs).
    /// Progress goes to the log: at real dimensions one MoE layer is 11 GB of float8 weights.
    pub fn random(cfg: ModelConfig, device: Device, opts: GpuOptions, seed: u64) -> Result<GpuModel> {
        opts.kv_cache.check(&cfg)?;
        let stream = open_stream(device)?;
        let s = stream.as_ref();
        let mut f = Filler { s, seed, next: 0 };
        let (h, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let embed = f.uniform(DevDType::Bf16, &[vocab, h], -1.732, 1.732)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            layers.push(f.layer(&cfg, &opts, i)?);
            tracing::info!("random model: layer {}/{} made on {device}", i + 1, cfg.num_hidden_layers);
        }
        let norm = f.constant(DevDType::F32, &[h], 1.0)?;
        let lm_head = Linear { w: f.scaled(DevDType::Bf16, &[vocab, h], h)?, scale: None, n: vocab, quant: None };
        let plan = ShardPlan::new(&cfg, Shard::single())?;
        Self::assemble(cfg, opts, stream, Weights { embed, layers, norm, lm_head }, plan)
    }

    /// Sets the router biases so that random tokens spread evenly over the experts: `iterations`
    /// prefills of `tokens` random ids, each followed by b_e += γ·(mean − load_e)/mean per MoE
    /// layer (DeepSeek's auxiliary-loss-free balancing, with a step proportional to the error).
    pub fn balance_routing(&mut self, tokens: usize, iterations: usize, seed: u64) -> Result<RoutingBalance> {
        const GAMMA: f32 = 0.05;
        let tokens = tokens.clamp(1, self.max_positions);
        let pages = tokens.div_ceil(PAGE_SIZE);
        let mut pool = self.new_page_pool(pages, PAGE_SIZE)?;
        let table: Vec<u32> = (0..pages as u32).collect();
        let vocab = self.cfg.vocab_size as u64;
        let mut report = RoutingBalance::default();
        for it in 0..=iterations {
            let ids: Vec<u32> = (0..tokens as u64).map(|i| (mix64(seed ^ mix64(i + ((it as u64) << 32))) % vocab) as u32).collect();
            let seq = super::BatchSeq { tokens: &ids, start: 0, block_table: &table, logits: super::LogitRows::None };
            let probes = self.routed_ids(&mut pool, &[seq])?;
            let (mut ratios, mut idle) = (Vec::new(), Vec::new());
            let moe_layers = self.layers.iter_mut().filter_map(|l| match &mut l.ffn {
                Ffn::Moe(m) => Some(m),
                Ffn::Dense(_) => None,
            });
            for (m, ids) in moe_layers.zip(&probes) {
                let mut load = vec![0usize; m.n_experts];
                for &e in ids.iter().filter(|&&e| e >= 0) {
                    load[e as usize] += 1;
                }
                let mean = ids.len() as f64 / m.n_experts as f64;
                ratios.push(load.iter().copied().max().unwrap_or(0) as f64 / mean);
                idle.push(load.iter().filter(|&&l| l == 0).count());
                if it < iterations {
                    let mut bias = m.bias.to_f32(self.stream.as_ref())?;
                    for (b, &l) in bias.iter_mut().zip(&load) {
                        *b += GAMMA * ((mean - l as f64) / mean) as f32;
                    }
                    m.bias = DeviceTensor::from_f32(self.stream.as_ref(), &[m.n_experts], &bias, DevDType::F32)?;
                }
            }
            if it == 0 {
                report.max_over_mean_before = ratios.clone();
            }
            report.max_over_mean_after = ratios;
            report.idle_after = idle;
        }
        Ok(report)
    }

    /// Distinct experts each MoE layer's routing picks in one forward of `seqs` (which runs,
    /// writing its latent rows as any forward does).
    pub fn experts_hit(&self, pool: &mut super::PagePool, seqs: &[super::BatchSeq<'_>]) -> Result<Vec<usize>> {
        Ok(self
            .routed_ids(pool, seqs)?
            .iter()
            .map(|ids| {
                let mut seen: Vec<i32> = ids.iter().copied().filter(|&e| e >= 0).collect();
                seen.sort_unstable();
                seen.dedup();
                seen.len()
            })
            .collect())
    }
}

impl GpuModel {
    /// One eager forward of `seqs` with the routing probe on: each MoE layer's expert ids
    /// [T·top_k], in layer order.
    fn routed_ids(&self, pool: &mut super::PagePool, seqs: &[super::BatchSeq<'_>]) -> Result<Vec<Vec<i32>>> {
        *self.routing_probe.lock().map_err(|_| poisoned())? = Some(Vec::new());
        let run = self.forward_batch(pool, seqs);
        let probes = self.routing_probe.lock().map_err(|_| poisoned())?.take().unwrap_or_default();
        run.map(|_| probes)
    }
}

fn poisoned() -> Error {
    Error::InvalidArgument("a forward on this model panicked while holding its routing probe".into())
}
