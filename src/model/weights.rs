//! The model's weights in f32 (dequantized), loaded and shape-checked from a checkpoint.

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::Result;
use crate::model::checkpoint::Checkpoint;
use crate::model::config::ModelConfig;
use crate::ops::moe::{MlpWeights, MoeWeights};
use crate::ops::routing::RoutingParams;
use crate::tensor::Tensor;

/// The query projection: low-rank (q_a → norm → q_b, DeepSeek-V3) or direct (q_lora_rank null).
#[derive(Clone, Debug)]
pub enum QProj {
    LowRank { q_a: Tensor, q_a_norm: Vec<f32>, q_b: Tensor },
    Direct { q: Tensor },
}

#[derive(Clone, Debug)]
pub struct AttentionWeights {
    pub q: QProj,
    /// kv_a_proj_with_mqa [kv_lora + rope, hidden].
    pub kv_a: Tensor,
    pub kv_a_norm: Vec<f32>,
    /// kv_b_proj [H·(nope + v), kv_lora].
    pub kv_b: Tensor,
    /// o_proj [hidden, H·v].
    pub o: Tensor,
}

#[derive(Clone, Debug)]
pub enum FfnWeights {
    Dense(MlpWeights),
    Moe(MoeWeights),
}

#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub input_norm: Vec<f32>,
    pub attn: AttentionWeights,
    pub post_attn_norm: Vec<f32>,
    pub ffn: FfnWeights,
}

#[derive(Clone, Debug)]
pub struct ModelWeights {
    pub embed: Tensor,
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
    pub lm_head: Tensor,
}

/// Reads tensors by name with their expected shapes and ticks a progress bar.
struct Reader<'a> {
    ckpt: &'a Checkpoint,
    progress: ProgressBar,
}

impl Reader<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.ckpt.load_f32(name, shape)?;
        self.progress.inc(1);
        Ok(t)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(self.tensor(name, &[len])?.into_data())
    }

    fn mlp(&self, prefix: &str, hidden: usize, inter: usize) -> Result<MlpWeights> {
        Ok(MlpWeights {
            gate: self.tensor(&format!("{prefix}.gate_proj.weight"), &[inter, hidden])?,
            up: self.tensor(&format!("{prefix}.up_proj.weight"), &[inter, hidden])?,
            down: self.tensor(&format!("{prefix}.down_proj.weight"), &[hidden, inter])?,
        })
    }
}

impl ModelWeights {
    /// Loads and dequantizes every weight the forward pass uses. Tensors of the MTP layer
    /// (`model.layers.{num_hidden_layers}.*`) are not needed for generation and are left on disk.
    pub fn load(ckpt: &Checkpoint, cfg: &ModelConfig) -> Result<ModelWeights> {
        let progress = if ckpt.total_bytes() > (1 << 30) {
            let pb = ProgressBar::new(count_tensors(cfg));
            pb.set_style(
                ProgressStyle::with_template("loading weights {bar:40} {pos}/{len} tensors {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb
        } else {
            ProgressBar::hidden()
        };
        let r = Reader { ckpt, progress };
        let h = cfg.hidden_size;
        let embed = r.tensor("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| load_layer(&r, cfg, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = r.vector("model.norm.weight", h)?;
        let lm_head = if cfg.tie_word_embeddings && !ckpt.contains("lm_head.weight") {
            embed.clone()
        } else {
            r.tensor("lm_head.weight", &[cfg.vocab_size, h])?
        };
        r.progress.finish_and_clear();
        Ok(ModelWeights { embed, layers, norm, lm_head })
    }
}

fn load_layer(r: &Reader, cfg: &ModelConfig, i: usize) -> Result<LayerWeights> {
    let p = format!("model.layers.{i}");
    let h = cfg.hidden_size;
    let heads = cfg.num_attention_heads;
    let q = match cfg.q_lora_rank {
        Some(rank) => QProj::LowRank {
            q_a: r.tensor(&format!("{p}.self_attn.q_a_proj.weight"), &[rank, h])?,
            q_a_norm: r.vector(&format!("{p}.self_attn.q_a_layernorm.weight"), rank)?,
            q_b: r.tensor(&format!("{p}.self_attn.q_b_proj.weight"), &[heads * cfg.qk_head_dim(), rank])?,
        },
        None => QProj::Direct {
            q: r.tensor(&format!("{p}.self_attn.q_proj.weight"), &[heads * cfg.qk_head_dim(), h])?,
        },
    };
    let attn = AttentionWeights {
        q,
        kv_a: r.tensor(
            &format!("{p}.self_attn.kv_a_proj_with_mqa.weight"),
            &[cfg.kv_lora_rank + cfg.qk_rope_head_dim, h],
        )?,
        kv_a_norm: r.vector(&format!("{p}.self_attn.kv_a_layernorm.weight"), cfg.kv_lora_rank)?,
        kv_b: r.tensor(
            &format!("{p}.self_attn.kv_b_proj.weight"),
            &[heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank],
        )?,
        o: r.tensor(&format!("{p}.self_attn.o_proj.weight"), &[h, heads * cfg.v_head_dim])?,
    };
    let ffn = if cfg.is_moe_layer(i) {
        let inter = cfg.moe_intermediate_size;
        let e = cfg.n_routed_experts;
        FfnWeights::Moe(MoeWeights {
            router: r.tensor(&format!("{p}.mlp.gate.weight"), &[e, h])?,
            bias: r.vector(&format!("{p}.mlp.gate.e_score_correction_bias"), e)?,
            experts: (0..e)
                .map(|x| r.mlp(&format!("{p}.mlp.experts.{x}"), h, inter))
                .collect::<Result<Vec<_>>>()?,
            shared: match cfg.n_shared_experts {
                0 => None,
                n => Some(r.mlp(&format!("{p}.mlp.shared_experts"), h, n * inter)?),
            },
            routing: RoutingParams::from_config(cfg),
        })
    } else {
        FfnWeights::Dense(r.mlp(&format!("{p}.mlp"), h, cfg.intermediate_size)?)
    };
    Ok(LayerWeights {
        input_norm: r.vector(&format!("{p}.input_layernorm.weight"), h)?,
        attn,
        post_attn_norm: r.vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
        ffn,
    })
}

/// Number of tensors [`ModelWeights::load`] reads (for the progress bar).
fn count_tensors(cfg: &ModelConfig) -> u64 {
    let q = if cfg.q_lora_rank.is_some() { 3 } else { 1 };
    let attn = q + 4 + 2; // q + kv_a, kv_a_norm, kv_b, o + two layer norms
    let moe_layers = (0..cfg.num_hidden_layers).filter(|&i| cfg.is_moe_layer(i)).count();
    let dense_layers = cfg.num_hidden_layers - moe_layers;
    let shared = if cfg.n_shared_experts > 0 { 3 } else { 0 };
    let per_moe = 2 + 3 * cfg.n_routed_experts + shared;
    (cfg.num_hidden_layers * attn + dense_layers * 3 + moe_layers * per_moe + 3) as u64
}
