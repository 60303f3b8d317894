//! The CPU reference forward pass of DeepSeek-V3 (DESIGN.md §5): f32 math on dequantized weights.
//! `h = x + Attn(RMSNorm(x)); out = h + FFN(RMSNorm(h))`, then the final norm and lm_head.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::cache::{LatentCache, LatentStore};
use crate::model::checkpoint::{Checkpoint, WeightFormat};
use crate::model::config::ModelConfig;
use crate::model::generate::CausalLm;
use crate::model::weights::{AttentionWeights, FfnWeights, LayerWeights, ModelWeights, QProj};
use crate::ops::attention::{mla_absorbed, mla_naive, MlaDims};
use crate::ops::embedding::embed;
use crate::ops::linear::linear_into;
use crate::ops::moe::{linear_act, ActQuant};
use crate::ops::norm::{rms_norm, rms_norm_inplace};
use crate::ops::rope::YarnRope;
use crate::tensor::Tensor;

/// Which MLA formulation attention uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionPath {
    /// Naive for multi-token steps (prefill), absorbed for single-token steps (decode).
    #[default]
    Auto,
    Naive,
    Absorbed,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuOptions {
    /// Quantize and dequantize the inputs of the FP8 GEMMs per token per 128 channels, as the GPU
    /// kernels do, so that op-level comparisons with them can be tight. Off by default.
    pub emulate_fp8_activations: bool,
    /// For INT8 checkpoints: quantize the inputs of the linear layers as the INT8 GEMMs do (per
    /// token and 128-channel group for block INT8, per token for channel INT8; codes and scales
    /// bit-identical to the kernels'). Wins over `emulate_fp8_activations` there; ignored for
    /// other formats. Off by default.
    pub emulate_int8_activations: bool,
    pub attention: AttentionPath,
}

impl CpuOptions {
    /// The activation quantization that the linear layers emulate for weights of `format`.
    pub fn act_quant(&self, format: WeightFormat) -> ActQuant {
        match format {
            WeightFormat::Int8Block { .. } if self.emulate_int8_activations => ActQuant::Int8Group128,
            WeightFormat::Int8Channel if self.emulate_int8_activations => ActQuant::Int8Token,
            _ => ActQuant::from(self.emulate_fp8_activations),
        }
    }
}

pub struct CpuModel {
    cfg: ModelConfig,
    weights: ModelWeights,
    rope: YarnRope,
    opts: CpuOptions,
    /// What the linear layers' inputs go through ([`CpuOptions::act_quant`]).
    act: ActQuant,
}

impl CpuModel {
    /// Loads config.json and the checkpoint from `dir`.
    pub fn load(dir: &Path, opts: CpuOptions) -> Result<CpuModel> {
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        let format = ckpt.check_against(&cfg)?;
        let weights = ModelWeights::load(&ckpt, &cfg)?;
        let mut model = CpuModel::new(cfg, weights, opts);
        model.act = opts.act_quant(format);
        Ok(model)
    }

    /// A model over `weights`; INT8 emulation needs the checkpoint's format: see [`Self::load`].
    pub fn new(cfg: ModelConfig, weights: ModelWeights, opts: CpuOptions) -> CpuModel {
        let rope = YarnRope::new(&cfg);
        let act = ActQuant::from(opts.emulate_fp8_activations);
        CpuModel { cfg, weights, rope, opts, act }
    }

    fn dims(&self) -> MlaDims {
        MlaDims {
            heads: self.cfg.num_attention_heads,
            nope: self.cfg.qk_nope_head_dim,
            rope: self.cfg.qk_rope_head_dim,
            v: self.cfg.v_head_dim,
            kv_lora: self.cfg.kv_lora_rank,
        }
    }

    /// Runs `tokens` after what `cache` holds, appends them to the cache and returns the logits
    /// at every new position, [tokens.len(), vocab].
    pub fn forward_tokens<C: LatentStore>(&self, tokens: &[u32], cache: &mut C) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("forward needs at least one token".into()));
        }
        let start = cache.cached_len();
        if start + tokens.len() > self.cfg.max_position_embeddings {
            return Err(Error::InvalidArgument(format!(
                "sequence of {} tokens exceeds max_position_embeddings {}",
                start + tokens.len(),
                self.cfg.max_position_embeddings
            )));
        }
        let h = self.cfg.hidden_size;
        let eps = self.cfg.rms_norm_eps;
        let mut x = embed(&self.weights.embed, tokens)?.into_data();
        let mut normed = vec![0f32; x.len()];
        for (i, layer) in self.weights.layers.iter().enumerate() {
            rms_norm(&x, &layer.input_norm, eps, &mut normed);
            let attn = self.attention(&layer.attn, &normed, cache, i, start);
            add_into(&mut x, &attn);
            rms_norm(&x, &layer.post_attn_norm, eps, &mut normed);
            let ffn = self.ffn(layer, &normed);
            add_into(&mut x, &ffn);
        }
        rms_norm_inplace(&mut x, &self.weights.norm, eps);
        let vocab = self.cfg.vocab_size;
        let mut logits = vec![0f32; tokens.len() * vocab];
        linear_into(&x, self.weights.lm_head.data(), h, &mut logits);
        Tensor::new(vec![tokens.len(), vocab], logits)
    }

    /// MLA for the new rows `x` [T, hidden] at positions `start..start+T`; appends their latent
    /// rows to layer `layer` of the cache.
    fn attention<C: LatentStore>(&self, w: &AttentionWeights, x: &[f32], cache: &mut C, layer: usize, start: usize) -> Vec<f32> {
        let d = self.dims();
        let act = self.act;
        let eps = self.cfg.rms_norm_eps;
        let t_len = x.len() / self.cfg.hidden_size;
        let mut q = match &w.q {
            QProj::LowRank { q_a, q_a_norm, q_b } => {
                let mut c_q = linear_act(x, q_a, act);
                rms_norm_inplace(&mut c_q, q_a_norm, eps);
                linear_act(&c_q, q_b, act)
            }
            QProj::Direct { q } => linear_act(x, q, act),
        };
        let mut kv = linear_act(x, &w.kv_a, act);
        for t in 0..t_len {
            let pos = start + t;
            let row = &mut kv[t * d.latent()..(t + 1) * d.latent()];
            rms_norm_inplace(&mut row[..d.kv_lora], &w.kv_a_norm, eps);
            self.rope.apply(&mut row[d.kv_lora..], pos);
            for hd in 0..d.heads {
                let qh = &mut q[(t * d.heads + hd) * d.qk()..(t * d.heads + hd + 1) * d.qk()];
                self.rope.apply(&mut qh[d.nope..], pos);
            }
        }
        cache.append(layer, &kv);
        let scale = self.cfg.softmax_scale();
        let absorbed = match self.opts.attention {
            AttentionPath::Auto => t_len == 1,
            AttentionPath::Naive => false,
            AttentionPath::Absorbed => true,
        };
        let mla = if absorbed { mla_absorbed } else { mla_naive };
        let o = mla(&q, &cache.rows(layer), w.kv_b.data(), &d, start, scale);
        linear_act(&o, &w.o, act)
    }

    fn ffn(&self, layer: &LayerWeights, x: &[f32]) -> Vec<f32> {
        let act = self.act;
        match &layer.ffn {
            FfnWeights::Dense(mlp) => mlp.forward(x, act),
            FfnWeights::Moe(moe) => moe.forward(x, act),
        }
    }
}

impl CausalLm for CpuModel {
    type Cache = LatentCache;

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn new_cache(&self) -> Result<LatentCache> {
        Ok(LatentCache::new(self.cfg.num_hidden_layers, self.cfg.kv_lora_rank, self.cfg.qk_rope_head_dim))
    }

    fn forward(&self, tokens: &[u32], cache: &mut LatentCache) -> Result<Tensor> {
        self.forward_tokens(tokens, cache)
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
