//! `config.json` of DeepSeek-V3-architecture checkpoints (V3, R1, V2-Lite-style `q_lora_rank: null`),
//! as written by DeepSeek (`rope_scaling`) and by transformers >= 5 (`rope_parameters`).

use serde::{Deserialize, Serialize};

/// YaRN rope scaling (DeepSeek-V3 uses factor 40 over an original 4096 positions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct YarnScaling {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: f64,
    pub mscale_all_dim: f64,
}

/// Weight quantization declared by `quantization_config`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Quantization {
    /// float8_e4m3fn weights with `weight_scale_inv` per `[block_n, block_k]` block, dynamic
    /// per-token-group activation quantization.
    Fp8Block { block_n: usize, block_k: usize },
    /// A method this crate does not load yet; carries the `quant_method` string.
    Unsupported(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Dense MLP intermediate size (first `first_k_dense_replace` layers).
    pub intermediate_size: usize,
    pub moe_intermediate_size: usize,
    pub num_hidden_layers: usize,
    /// Number of MTP layers stored after the decoder layers (`model.layers.{num_hidden_layers}.*`).
    pub num_nextn_predict_layers: usize,
    pub num_attention_heads: usize,
    /// `None` for checkpoints without the q low-rank projection (q_proj directly).
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub routed_scaling_factor: f32,
    pub norm_topk_prob: bool,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<YarnScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` / `dtype` as written ("bfloat16", ...), if present.
    pub torch_dtype: Option<String>,
    pub quantization: Option<Quantization>,
}

impl ModelConfig {
    /// Whether decoder layer `i` uses the MoE (otherwise the dense MLP).
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.n_routed_experts > 0
            && i >= self.first_k_dense_replace
            && i % self.moe_layer_freq.max(1) == 0
    }

    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Attention softmax scale: head_dim^-0.5, times mscale² under YaRN
    /// (m = 0.1·mscale_all_dim·ln(factor) + 1).
    pub fn softmax_scale(&self) -> f32 {
        let mut scale = (self.qk_head_dim() as f64).powf(-0.5);
        if let Some(y) = &self.rope_scaling {
            if y.mscale_all_dim != 0.0 && y.factor > 1.0 {
                let m = 0.1 * y.mscale_all_dim * y.factor.ln() + 1.0;
                scale *= m * m;
            }
        }
        scale as f32
    }
}
