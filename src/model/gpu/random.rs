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

use std::ops::Range;
use std::path::Path;

use super::weights::{route_params, Experts, Ffn, Layer, Linear, Mlp, Moe, QProj, Weights};
use super::{GpuModel, GpuOptions, PAGE_SIZE};
use crate::backend::dispatch::{self, UniformWindow};
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

/// Draws the tensors of one model, or of one rank's shard of it: tensor `i` of the whole model
/// uses stream `mix64(seed + i)`, and a shard draws the window of it that its plan keeps, so the
/// shards of every rank together hold exactly the single-GPU model's weights.
struct Filler<'a> {
    s: &'a dyn GpuStream,
    seed: u64,
    next: u64,
    plan: &'a ShardPlan,
}

/// Which part of a whole tensor [lead.., n, k] a rank draws: the lead indices `lead` (of
/// `lead_len`; `None`: no lead dimension), then the row ranges `rows` stacked in order, then `cols`.
struct Part<'r> {
    lead: Option<(usize, Range<usize>)>,
    n: usize,
    k: usize,
    rows: &'r [Range<usize>],
    cols: Range<usize>,
}

impl Part<'_> {
    fn whole(n: usize, k: usize) -> Part<'static> {
        Part { lead: None, n, k, rows: &[], cols: 0..k }
    }
    // No row selection: one range, the whole dimension (a one-range Vec on purpose).
    #[allow(clippy::single_range_in_vec_init)]
    fn row_ranges(&self) -> Vec<Range<usize>> {
        if self.rows.is_empty() { vec![0..self.n] } else { self.rows.to_vec() }
    }
    fn shape(&self) -> Vec<usize> {
        let rows = self.row_ranges().iter().map(|r| r.len()).sum();
        self.lead.iter().map(|(_, a)| a.len()).chain([rows, self.cols.len()]).collect()
    }
}

impl Filler<'_> {
    fn uniform(&mut self, dtype: DevDType, part: &Part<'_>, lo: f32, hi: f32) -> Result<DeviceTensor> {
        let t = DeviceTensor::empty(self.s, dtype, &part.shape())?;
        self.next += 1;
        let seed = mix64(self.seed.wrapping_add(self.next));
        let a = part.lead.as_ref().map_or(0..1, |(_, a)| a.clone());
        let rows = part.row_ranges();
        let width = rows.iter().map(|r| r.len()).sum::<usize>() * part.cols.len();
        let mut first_row = 0;
        for r in rows {
            let w = UniformWindow { a: a.clone(), rows: r.clone(), cols: part.cols.clone(), n: part.n, k: part.k };
            dispatch::fill_uniform_window(self.s, &t, first_row * part.cols.len(), width, &w, seed, lo, hi)?;
            first_row += r.len();
        }
        Ok(t)
    }

    /// Zero mean and variance 1/fan_in.
    fn scaled(&mut self, dtype: DevDType, part: &Part<'_>, fan_in: usize) -> Result<DeviceTensor> {
        let a = (3.0 / fan_in as f32).sqrt();
        self.uniform(dtype, part, -a, a)
    }

    fn constant(&mut self, dtype: DevDType, shape: &[usize], value: f32) -> Result<DeviceTensor> {
        let n = shape.iter().product();
        self.uniform(dtype, &Part::whole(1, n), value, value)?.reshape(shape)
    }

    /// A float8 linear [N, K] with 128×128 block scales (or a stack of them, [E, N, K]): the part
    /// this rank keeps, which must cut the scale blocks only at their edges.
    fn fp8_linear(&mut self, part: &Part<'_>) -> Result<Linear> {
        let aligned = |r: &Range<usize>, len: usize| r.start.is_multiple_of(128) && (r.len().is_multiple_of(128) || r.end == len);
        if !part.row_ranges().iter().all(|r| aligned(r, part.n)) || !aligned(&part.cols, part.k) {
            return Err(Error::InvalidArgument(format!(
                "random float8 weight [{}, {}]: rows {:?} / columns {:?} of this shard cut its 128×128 scale blocks",
                part.n, part.k, part.rows, part.cols
            )));
        }
        let w = self.uniform(DevDType::E4m3fn, part, -448.0, 448.0)?;
        let shape = part.shape();
        let (lead, nk) = shape.split_at(shape.len() - 2);
        let scale_shape = [lead, &[nk[0].div_ceil(128), nk[1].div_ceil(128)]].concat();
        let scale = self.constant(DevDType::F32, &scale_shape, 1.0 / (CODE_STD * (part.k as f32).sqrt()))?;
        Ok(Linear { w, scale: Some(scale), n: nk[0], quant: None })
    }

    /// gate / up rows `inter` of [inter_full, h], down columns `inter` of [h, inter_full].
    fn mlp(&mut self, h: usize, inter_full: usize, inter: &Range<usize>) -> Result<Mlp> {
        let rows = [inter.clone()];
        let gate_up = Part { lead: None, n: inter_full, k: h, rows: &rows, cols: 0..h };
        Ok(Mlp {
            gate: self.fp8_linear(&gate_up)?,
            up: self.fp8_linear(&gate_up)?,
            down: self.fp8_linear(&Part { lead: None, n: h, k: inter_full, rows: &[], cols: inter.clone() })?,
        })
    }

    fn layer(&mut self, cfg: &ModelConfig, opts: &GpuOptions, i: usize) -> Result<Layer> {
        let plan = self.plan;
        let h = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        let (nope, rope, v, lora) = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank);
        let per_head = |unit: usize| plan.heads.start * unit..plan.heads.end * unit;
        let q_rows = [per_head(nope + rope)];
        let q = match cfg.q_lora_rank {
            Some(r) => QProj::LowRank {
                q_a: self.fp8_linear(&Part::whole(r, h))?,
                q_a_norm: self.constant(DevDType::F32, &[r], 1.0)?,
                q_b: self.fp8_linear(&Part { lead: None, n: heads * (nope + rope), k: r, rows: &q_rows, cols: 0..r })?,
            },
            None => QProj::Direct(self.fp8_linear(&Part { lead: None, n: heads * (nope + rope), k: h, rows: &q_rows, cols: 0..h })?),
        };
        let ffn = if cfg.is_moe_layer(i) {
            let (e, inter) = (cfg.n_routed_experts, cfg.moe_intermediate_size);
            let (experts, part) = (Some((e, plan.experts.clone())), plan.expert_inter.clone());
            // Fused whenever the shape allows, whatever the options: the same draws then serve
            // the reference and the fast forward (which the tests compare).
            let experts = if part.start % 128 == 0 && part.len() % 128 == 0 {
                let w13_rows = [part.clone(), inter + part.start..inter + part.end];
                Experts::Fused {
                    w13: self.fp8_linear(&Part { lead: experts.clone(), n: 2 * inter, k: h, rows: &w13_rows, cols: 0..h })?,
                    down: self.fp8_linear(&Part { lead: experts, n: h, k: inter, rows: &[], cols: part })?,
                }
            } else {
                let rows = [part.clone()];
                let gate_up = Part { lead: experts.clone(), n: inter, k: h, rows: &rows, cols: 0..h };
                Experts::Split {
                    gate: self.fp8_linear(&gate_up)?,
                    up: self.fp8_linear(&gate_up)?,
                    down: self.fp8_linear(&Part { lead: experts, n: h, k: inter, rows: &[], cols: part })?,
                }
            };
            Ffn::Moe(Moe {
                router: Linear { w: self.scaled(DevDType::F32, &Part::whole(e, h), h)?, scale: None, n: e, quant: None },
                bias: self.constant(DevDType::F32, &[e], 0.0)?,
                experts,
                shared: match cfg.n_shared_experts {
                    0 => None,
                    n => Some(self.mlp(h, n * inter, &plan.shared_inter)?),
                },
                params: route_params(cfg),
                n_experts: e,
                local_experts: plan.experts.clone(),
                inter: plan.expert_inter.len(),
            })
        } else {
            Ffn::Dense(self.mlp(h, cfg.intermediate_size, &plan.dense_inter)?)
        };
        let head_lead = Some((heads, plan.heads.clone()));
        Ok(Layer {
            input_norm: self.constant(DevDType::F32, &[h], 1.0)?,
            post_attn_norm: self.constant(DevDType::F32, &[h], 1.0)?,
            q,
            kv_a: self.fp8_linear(&Part::whole(lora + rope, h))?,
            kv_a_norm: self.constant(DevDType::F32, &[lora], 1.0)?,
            w_uk_t: self.scaled(opts.kv_cache.absorb_dtype(), &Part { lead: head_lead.clone(), n: lora, k: nope, rows: &[], cols: 0..nope }, nope)?,
            w_uv: self.scaled(opts.kv_cache.absorb_dtype(), &Part { lead: head_lead, n: v, k: lora, rows: &[], cols: 0..lora }, lora)?,
            o: self.fp8_linear(&Part { lead: None, n: h, k: heads * v, rows: &[], cols: per_head(v) })?,
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
        Self::random_shard(cfg, open_stream(device)?, Shard::single(), opts, seed)
    }

    /// `shard`'s part of [`GpuModel::random`]'s model (the same seed gives the same whole model
    /// for every shard layout), on `stream`'s device.
    pub fn random_shard(cfg: ModelConfig, stream: Box<dyn GpuStream>, shard: Shard, opts: GpuOptions, seed: u64) -> Result<GpuModel> {
        opts.kv_cache.check(&cfg)?;
        let plan = ShardPlan::new(&cfg, shard)?;
        let s = stream.as_ref();
        let mut f = Filler { s, seed, next: 0, plan: &plan };
        let (h, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let vocab_rows = [plan.vocab.clone()];
        // Vocab-parallel embedding and lm_head: this rank's rows of both.
        let embed = f.uniform(DevDType::Bf16, &Part { lead: None, n: vocab, k: h, rows: &vocab_rows, cols: 0..h }, -1.732, 1.732)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            layers.push(f.layer(&cfg, &opts, i)?);
            tracing::info!("random model: layer {}/{} made on {} (rank {} of {})", i + 1, cfg.num_hidden_layers, s.device(), shard.rank, shard.world);
        }
        let norm = f.constant(DevDType::F32, &[h], 1.0)?;
        let lm_head = f.scaled(DevDType::Bf16, &Part { lead: None, n: vocab, k: h, rows: &vocab_rows, cols: 0..h }, h)?;
        let lm_head = Linear { w: lm_head, scale: None, n: plan.vocab.len(), quant: None };
        Self::assemble(cfg, opts, stream, Weights { embed, layers, norm, lm_head }, plan)
    }

    /// Sets the router biases so that random tokens spread evenly over the experts: `iterations`
    /// prefills of `tokens` random ids, each followed by b_e += γ·(mean − load_e)/mean per MoE
    /// layer (DeepSeek's auxiliary-loss-free balancing, with a step proportional to the error).
    pub fn balance_routing(&mut self, tokens: usize, iterations: usize, seed: u64) -> Result<RoutingBalance> {
        let tokens = tokens.clamp(1, self.max_positions);
        let pages = tokens.div_ceil(PAGE_SIZE);
        let mut pool = self.new_page_pool(pages, PAGE_SIZE)?;
        let table: Vec<u32> = (0..pages as u32).collect();
        let mut balancer = Balancer::default();
        for it in 0..=iterations {
            let ids = calibration_ids(seed, it, tokens, self.cfg.vocab_size);
            let seq = super::BatchSeq { tokens: &ids, start: 0, block_table: &table, logits: super::LogitRows::None };
            let probes = self.routed_ids(&mut pool, &[seq])?;
            balancer.step(&probes, &mut [&mut *self], it < iterations)?;
        }
        Ok(balancer.report)
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
        self.with_routing_probe(|| self.forward_batch(pool, seqs))
    }

    /// Runs `forward` (a forward this model takes part in) with the routing probe on; returns
    /// each MoE layer's expert ids [T·top_k], in layer order.
    pub(super) fn with_routing_probe<T>(&self, forward: impl FnOnce() -> Result<T>) -> Result<Vec<Vec<i32>>> {
        *self.routing_probe.lock().map_err(|_| poisoned())? = Some(Vec::new());
        let run = forward();
        let probes = self.routing_probe.lock().map_err(|_| poisoned())?.take().unwrap_or_default();
        run.map(|_| probes)
    }
}

/// `tokens` random token ids of calibration prefill `it`.
pub(super) fn calibration_ids(seed: u64, it: usize, tokens: usize, vocab: usize) -> Vec<u32> {
    (0..tokens as u64).map(|i| (mix64(seed ^ mix64(i + ((it as u64) << 32))) % vocab as u64) as u32).collect()
}

/// The balancing rule of [`GpuModel::balance_routing`], one calibration prefill at a time.
#[derive(Default)]
pub(super) struct Balancer {
    pub(super) report: RoutingBalance,
    steps: usize,
}

impl Balancer {
    /// Records the expert loads of one prefill (`probes`: each MoE layer's expert ids) and, when
    /// `update`, moves the router biases of `models` — the ranks of one model, whose biases are
    /// replicated: the update is computed from the first and set on all.
    pub(super) fn step(&mut self, probes: &[Vec<i32>], models: &mut [&mut GpuModel], update: bool) -> Result<()> {
        const GAMMA: f32 = 0.05;
        let first = models.first().ok_or_else(|| Error::InvalidArgument("routing balance over no model".into()))?;
        let (mut ratios, mut idle, mut new_biases) = (Vec::new(), Vec::new(), Vec::new());
        for (m, ids) in first.layers.iter().filter_map(|l| l.ffn.moe()).zip(probes) {
            let mut load = vec![0usize; m.n_experts];
            for &e in ids.iter().filter(|&&e| e >= 0) {
                load[e as usize] += 1;
            }
            let mean = ids.len() as f64 / m.n_experts as f64;
            ratios.push(load.iter().copied().max().unwrap_or(0) as f64 / mean);
            idle.push(load.iter().filter(|&&l| l == 0).count());
            let mut bias = m.bias.to_f32(first.stream.as_ref())?;
            for (b, &l) in bias.iter_mut().zip(&load) {
                *b += GAMMA * ((mean - l as f64) / mean) as f32;
            }
            new_biases.push(bias);
        }
        for model in models.iter_mut().filter(|_| update) {
            let s = model.stream.as_ref();
            for (m, bias) in model.layers.iter_mut().filter_map(|l| l.ffn.moe_mut()).zip(&new_biases) {
                m.bias = DeviceTensor::from_f32(s, &[m.n_experts], bias, DevDType::F32)?;
            }
        }
        if self.steps == 0 {
            self.report.max_over_mean_before = ratios.clone();
        }
        self.steps += 1;
        self.report.max_over_mean_after = ratios;
        self.report.idle_after = idle;
        Ok(())
    }
}

fn poisoned() -> Error {
    Error::InvalidArgument("a forward on this model panicked while holding its routing probe".into())
}
