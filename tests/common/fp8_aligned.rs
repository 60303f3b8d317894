//! A small DeepSeek-V3-shaped FP8 checkpoint written at test time whose TP-2 slices all fall on
//! 128×128 scale-block edges (the tiny-fp8-sharded fixture's do not, so there every split linear
//! runs dequantized): with it, TP / EP over two GPUs run the FP8 GEMMs on sliced weights and
//! their block scales, the fused FP8 MoE on each rank's slice of every expert (TP: 128 of the
//! 256 intermediate columns) and on each rank's own experts (EP: 4 of 8, local ids), and the
//! split-KV MLA kernel and the fp8 cache on DeepSeek's 512 + 64 latent.
//!
//! Dims: hidden 256, 4 heads (nope 128, rope 64, v 128: q_b rows 384 and o_proj columns 256 per
//! rank), q_lora 256, kv_lora 512, dense intermediate 512, 8 routed experts of 256 + 1 shared,
//! top-2 of 4 groups (2 kept), 3 layers (the first dense), vocab 1024.
//!
//! Weights: float8 codes of values uniform in [-448, 448], each 128×128 block scaled by
//! gain / (σ_codes·√K) times its own factor uniform in [0.5, 1.5] — distinct scales per block, so
//! that a scale block applied to the wrong rows or columns shows. Gain 1 for the projections into
//! attention and the MLPs' gate / up, [`DOWN_GAIN`] for o_proj and down; embedding bf16 of unit
//! variance, lm_head and router bf16 of variance 1/K, norms bf16 in [0.8, 1.2], router bias f32 in
//! ±0.1. Measured on the CPU: FP8 activation quantization moves the logits by 6 % (emulated vs
//! plain), an EP rank's experts missing in one layer by 22–28 %.

use std::path::Path;

use dsv3::model::shard::TensorSlice;
use dsv3::ops::fp8::f32_to_e4m3fn;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::Dtype;

use super::files::{t, write_file, TempDir, T};

const HIDDEN: usize = 256;
const HEADS: usize = 4;
const NOPE: usize = 128;
const ROPE: usize = 64;
const V: usize = 128;
const Q_LORA: usize = 256;
const KV_LORA: usize = 512;
const INTER: usize = 512;
const MOE_INTER: usize = 256;
const EXPERTS: usize = 8;
const LAYERS: usize = 3;
const VOCAB: usize = 1024;
/// Standard deviation of float8 codes drawn uniformly in [-448, 448].
const CODE_STD: f32 = 448.0 / 1.732_050_8;
/// Gain of o_proj and down: each sublayer adds less than the residual holds, which keeps the
/// activation quantization's effect on the logits small against that of a missing expert (with
/// larger sublayer outputs its noise compounds through the layers and flips expert choices).
const DOWN_GAIN: f32 = 0.3;

/// Whether slice `s` of an [n, k] float8 weight keeps whole 128×128 scale blocks (a rank then
/// holds it in float8 with the matching scales and runs the FP8 kernels on it).
#[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.80
pub fn on_block_edges(s: &TensorSlice, n: usize, k: usize) -> bool {
    let edge = |r: &std::ops::Range<usize>, len: usize| r.start % 128 == 0 && (r.end % 128 == 0 || r.end == len);
    edge(&s.rows, n) && edge(&s.cols, k)
}

/// The checkpoint in a fresh temporary directory (removed when the guard drops).
pub fn checkpoint() -> TempDir {
    let dir = TempDir::new("fp8-aligned");
    write(dir.path(), 17);
    dir
}

struct Writer {
    r: StdRng,
    tensors: Vec<T>,
}

impl Writer {
    fn bf16(&mut self, name: &str, shape: &[usize], lo: f32, hi: f32) {
        let n: usize = shape.iter().product();
        let bytes = (0..n).flat_map(|_| half::bf16::from_f32(self.r.gen_range(lo..hi)).to_bits().to_le_bytes()).collect();
        self.tensors.push(t(name, Dtype::BF16, shape, bytes));
    }

    /// Zero mean, variance 1/fan_in, bf16.
    fn bf16_scaled(&mut self, name: &str, shape: &[usize], fan_in: usize) {
        let a = (3.0 / fan_in as f32).sqrt();
        self.bf16(name, shape, -a, a);
    }

    fn norm(&mut self, name: &str, n: usize) {
        self.bf16(name, &[n], 0.8, 1.2);
    }

    /// `{name}` float8 [n, k] and `{name}_scale_inv` f32 [⌈n/128⌉, ⌈k/128⌉] (see the module docs).
    fn fp8(&mut self, name: &str, n: usize, k: usize, gain: f32) {
        let codes = (0..n * k).map(|_| f32_to_e4m3fn(self.r.gen_range(-448.0f32..448.0))).collect();
        let (nb, kb) = (n.div_ceil(128), k.div_ceil(128));
        let unit = gain / (CODE_STD * (k as f32).sqrt());
        let scales: Vec<u8> = (0..nb * kb).flat_map(|_| (unit * self.r.gen_range(0.5f32..1.5)).to_le_bytes()).collect();
        self.tensors.push(t(name, Dtype::F8_E4M3, &[n, k], codes));
        self.tensors.push(t(&format!("{name}_scale_inv"), Dtype::F32, &[nb, kb], scales));
    }

    fn mlp(&mut self, prefix: &str, inter: usize) {
        self.fp8(&format!("{prefix}.gate_proj.weight"), inter, HIDDEN, 1.0);
        self.fp8(&format!("{prefix}.up_proj.weight"), inter, HIDDEN, 1.0);
        self.fp8(&format!("{prefix}.down_proj.weight"), HIDDEN, inter, DOWN_GAIN);
    }
}

/// Writes `config.json` and `model.safetensors` into `dir`, weights drawn from `seed`.
pub fn write(dir: &Path, seed: u64) {
    let base = super::fixtures_root().join("configs/deepseek-v3.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&base).expect("deepseek-v3.json")).expect("config json");
    for (key, value) in [
        ("hidden_size", HIDDEN),
        ("num_attention_heads", HEADS),
        ("num_key_value_heads", HEADS),
        ("qk_nope_head_dim", NOPE),
        ("qk_rope_head_dim", ROPE),
        ("v_head_dim", V),
        ("q_lora_rank", Q_LORA),
        ("kv_lora_rank", KV_LORA),
        ("intermediate_size", INTER),
        ("moe_intermediate_size", MOE_INTER),
        ("n_routed_experts", EXPERTS),
        ("n_shared_experts", 1),
        ("num_experts_per_tok", 2),
        ("n_group", 4),
        ("topk_group", 2),
        ("num_hidden_layers", LAYERS),
        ("first_k_dense_replace", 1),
        ("num_nextn_predict_layers", 0),
        ("vocab_size", VOCAB),
        ("max_position_embeddings", 4096),
    ] {
        cfg[key] = serde_json::json!(value);
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).expect("config")).expect("write config.json");

    let mut w = Writer { r: StdRng::seed_from_u64(seed), tensors: Vec::new() };
    w.bf16("model.embed_tokens.weight", &[VOCAB, HIDDEN], -1.732, 1.732);
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        w.norm(&format!("{p}.input_layernorm.weight"), HIDDEN);
        w.norm(&format!("{p}.post_attention_layernorm.weight"), HIDDEN);
        w.fp8(&format!("{p}.self_attn.q_a_proj.weight"), Q_LORA, HIDDEN, 1.0);
        w.norm(&format!("{p}.self_attn.q_a_layernorm.weight"), Q_LORA);
        w.fp8(&format!("{p}.self_attn.q_b_proj.weight"), HEADS * (NOPE + ROPE), Q_LORA, 1.0);
        w.fp8(&format!("{p}.self_attn.kv_a_proj_with_mqa.weight"), KV_LORA + ROPE, HIDDEN, 1.0);
        w.norm(&format!("{p}.self_attn.kv_a_layernorm.weight"), KV_LORA);
        w.fp8(&format!("{p}.self_attn.kv_b_proj.weight"), HEADS * (NOPE + V), KV_LORA, 1.0);
        w.fp8(&format!("{p}.self_attn.o_proj.weight"), HIDDEN, HEADS * V, DOWN_GAIN);
        if i == 0 {
            w.mlp(&format!("{p}.mlp"), INTER);
            continue;
        }
        w.bf16_scaled(&format!("{p}.mlp.gate.weight"), &[EXPERTS, HIDDEN], HIDDEN);
        let bias: Vec<u8> = (0..EXPERTS).flat_map(|_| w.r.gen_range(-0.1f32..0.1).to_le_bytes()).collect();
        w.tensors.push(t(&format!("{p}.mlp.gate.e_score_correction_bias"), Dtype::F32, &[EXPERTS], bias));
        for e in 0..EXPERTS {
            w.mlp(&format!("{p}.mlp.experts.{e}"), MOE_INTER);
        }
        w.mlp(&format!("{p}.mlp.shared_experts"), MOE_INTER);
    }
    w.norm("model.norm.weight", HIDDEN);
    w.bf16_scaled("lm_head.weight", &[VOCAB, HIDDEN], HIDDEN);
    write_file(&dir.join("model.safetensors"), &w.tensors);
}
