//! Which slice of each weight rank `r` of a world of `w` GPUs holds (tensor / expert
//! parallelism). Pure: the GPU loader ([`crate::model::gpu::GpuModel::load_shard`]) and the CPU
//! math check (`tests/shard_math.rs`) read the same plan, by checkpoint tensor name.
//!
//! - MLA: heads are split. Rank r holds the rows of its heads in `q_b_proj` / `q_proj` and
//!   `kv_b_proj`, the columns of its heads in `o_proj`; `q_a_proj`, `kv_a_proj_with_mqa` and the
//!   norms are replicated (the latent cache is shared by all heads, so every rank writes the same
//!   latent rows into its own copy of the cache). o_proj's output is a partial sum.
//! - Dense MLP and shared experts: split along the intermediate dim (gate/up rows, down columns):
//!   silu(gate)⊙up is elementwise over that dim, so each rank's down output is a partial sum.
//! - Routed experts: under TP the same intermediate split inside every expert; under EP rank r
//!   owns whole experts `[r·E/w, (r+1)·E/w)` and pairs routed elsewhere contribute nothing.
//!   Router weight and bias are replicated: every rank routes identically.
//! - Embedding: replicated (simplest: the lookup needs no collective; 1.85 GB in bf16 at
//!   DeepSeek-V3's 129280 × 7168). lm_head: vocab-parallel, rank r computes logits of its vocab
//!   slice and the host concatenates them.
//!
//! - DP attention (`--enable-dp-attention`, [`AttnSplit::Data`]): every rank holds ALL heads
//!   (q_a/q_b/kv_a/kv_b/o_proj whole) and runs attention only for its own sequences, over its own
//!   page pool; the FFN (dense MLP, shared and routed experts) and lm_head stay split as above.
//!
//! Splits are balanced (`split`): part r is `[r·n/w, (r+1)·n/w)`, so sizes differ by at most one
//! unit when `w` does not divide `n`; a dim with fewer units than ranks is an error.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;

/// How routed experts are distributed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeSplit {
    /// Every rank holds a slice of every expert's intermediate dim.
    Tensor,
    /// Every rank holds whole experts (`--enable-ep-moe`, `--ep-size` = world).
    Expert,
}

/// How attention is distributed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnSplit {
    /// Heads split over the ranks; every rank sees every token; o_proj gives a partial sum.
    Heads,
    /// Data-parallel attention: every rank holds every head and attends only for its own
    /// sequences (their latent rows live in its pool alone); the FFN stays split.
    Data,
}

/// Rank `rank` of a world of `world` GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
    pub moe: MoeSplit,
    pub attn: AttnSplit,
}

impl Shard {
    /// The whole model on one GPU.
    pub fn single() -> Shard {
        Shard { rank: 0, world: 1, moe: MoeSplit::Tensor, attn: AttnSplit::Heads }
    }

    /// Rank `rank` with attention heads split (plain TP / EP).
    pub fn new(rank: usize, world: usize, moe: MoeSplit) -> Result<Shard> {
        Self::with_attn(rank, world, moe, AttnSplit::Heads)
    }

    pub fn with_attn(rank: usize, world: usize, moe: MoeSplit, attn: AttnSplit) -> Result<Shard> {
        if world == 0 || rank >= world {
            return Err(Error::InvalidArgument(format!("shard rank {rank} of a world of {world}")));
        }
        Ok(Shard { rank, world, moe, attn })
    }
}

/// Part `rank` of `0..len` split into `world` balanced parts.
pub fn split(len: usize, world: usize, rank: usize) -> Range<usize> {
    (rank * len / world)..((rank + 1) * len / world)
}

/// Rows and columns of a 2-D weight [N, K] that a rank holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSlice {
    pub rows: Range<usize>,
    pub cols: Range<usize>,
}

impl TensorSlice {
    pub fn full(n: usize, k: usize) -> TensorSlice {
        TensorSlice { rows: 0..n, cols: 0..k }
    }
    pub fn is_full(&self, n: usize, k: usize) -> bool {
        self.rows == (0..n) && self.cols == (0..k)
    }
    pub fn shape(&self) -> [usize; 2] {
        [self.rows.len(), self.cols.len()]
    }
}

/// The ranges of rank `shard.rank` for a model config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    pub shard: Shard,
    /// Attention heads of this rank (all of them under DP attention).
    pub heads: Range<usize>,
    /// Of the dense MLP's intermediate dim.
    pub dense_inter: Range<usize>,
    /// Of each routed expert's intermediate dim (all of it under EP).
    pub expert_inter: Range<usize>,
    /// Of the fused shared experts' intermediate dim (`n_shared · moe_intermediate`).
    pub shared_inter: Range<usize>,
    /// Routed experts this rank computes (all of them under TP).
    pub experts: Range<usize>,
    /// lm_head rows (logits columns) of this rank.
    pub vocab: Range<usize>,
    qk: usize,
    nope_v: usize,
    v: usize,
}

impl ShardPlan {
    pub fn new(cfg: &ModelConfig, shard: Shard) -> Result<ShardPlan> {
        let w = shard.world;
        let r = shard.rank;
        if w == 0 || r >= w {
            return Err(Error::InvalidArgument(format!("shard rank {r} of a world of {w}")));
        }
        let part = |len: usize, what: &str| -> Result<Range<usize>> {
            if len < w {
                return Err(Error::InvalidArgument(format!(
                    "cannot split {what} ({len}) over {w} GPUs: at least one per GPU is needed (use a smaller --tp)"
                )));
            }
            Ok(split(len, w, r))
        };
        let is_moe = (0..cfg.num_hidden_layers).any(|i| cfg.is_moe_layer(i));
        let is_dense = (0..cfg.num_hidden_layers).any(|i| !cfg.is_moe_layer(i));
        let shared = cfg.n_shared_experts * cfg.moe_intermediate_size;
        let (experts, expert_inter) = match shard.moe {
            MoeSplit::Tensor => (0..cfg.n_routed_experts, if is_moe { part(cfg.moe_intermediate_size, "moe_intermediate_size")? } else { 0..0 }),
            MoeSplit::Expert => (
                if is_moe { part(cfg.n_routed_experts, "the routed experts (--ep-size)")? } else { 0..0 },
                0..cfg.moe_intermediate_size,
            ),
        };
        Ok(ShardPlan {
            shard,
            heads: match shard.attn {
                AttnSplit::Heads => part(cfg.num_attention_heads, "num_attention_heads")?,
                // Replicated: q_b / kv_b rows and o_proj columns of every head (slice() below).
                AttnSplit::Data => 0..cfg.num_attention_heads,
            },
            dense_inter: if is_dense { part(cfg.intermediate_size, "intermediate_size")? } else { 0..0 },
            expert_inter,
            shared_inter: if is_moe && shared > 0 { part(shared, "the shared experts' intermediate size")? } else { 0..0 },
            experts,
            vocab: part(cfg.vocab_size, "vocab_size")?,
            qk: cfg.qk_nope_head_dim + cfg.qk_rope_head_dim,
            nope_v: cfg.qk_nope_head_dim + cfg.v_head_dim,
            v: cfg.v_head_dim,
        })
    }

    /// The slice of checkpoint tensor `name` (shape [n, k]) this rank holds; `None`: the rank
    /// does not load it (a routed expert of another rank under EP). 1-D tensors are [n, 1].
    pub fn slice(&self, name: &str, n: usize, k: usize) -> Option<TensorSlice> {
        let rows = |r: Range<usize>| TensorSlice { rows: r, cols: 0..k };
        let cols = |c: Range<usize>| TensorSlice { rows: 0..n, cols: c };
        let scaled = |r: &Range<usize>, unit: usize| r.start * unit..r.end * unit;
        if name == "lm_head.weight" || name == "model.embed_tokens.weight" {
            return Some(rows(self.vocab.clone()));
        }
        let Some(rest) = name.strip_prefix("model.layers.").and_then(|s| s.split_once('.')).map(|(_, r)| r) else {
            return Some(TensorSlice::full(n, k));
        };
        let rest = rest.strip_suffix(".weight").unwrap_or(rest);
        let mlp_part = |proj: &str, inter: &Range<usize>| match proj {
            "gate_proj" | "up_proj" => Some(rows(inter.clone())),
            "down_proj" => Some(cols(inter.clone())),
            _ => Some(TensorSlice::full(n, k)),
        };
        match rest {
            "self_attn.q_b_proj" | "self_attn.q_proj" => Some(rows(scaled(&self.heads, self.qk))),
            "self_attn.kv_b_proj" => Some(rows(scaled(&self.heads, self.nope_v))),
            "self_attn.o_proj" => Some(cols(scaled(&self.heads, self.v))),
            _ => {
                if let Some(proj) = rest.strip_prefix("mlp.shared_experts.") {
                    mlp_part(proj, &self.shared_inter)
                } else if let Some(e) = rest.strip_prefix("mlp.experts.") {
                    let (idx, proj) = e.split_once('.')?;
                    let idx: usize = idx.parse().ok()?;
                    if !self.experts.contains(&idx) {
                        return None;
                    }
                    mlp_part(proj, &self.expert_inter)
                } else if let Some(proj) = rest.strip_prefix("mlp.") {
                    // Dense MLP (the router `mlp.gate` and its bias are replicated).
                    mlp_part(proj, &self.dense_inter)
                } else {
                    Some(TensorSlice::full(n, k))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bf16/config.json");
        ModelConfig::from_file(&dir).unwrap()
    }

    #[test]
    fn splits_cover_the_range_once() {
        for len in [1usize, 7, 8, 129280, 18432] {
            for w in 1..=8usize.min(len) {
                let parts: Vec<_> = (0..w).map(|r| split(len, w, r)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[w - 1].end, len);
                for p in parts.windows(2) {
                    assert_eq!(p[0].end, p[1].start);
                }
                let (min, max) = (parts.iter().map(|p| p.len()).min().unwrap(), parts.iter().map(|p| p.len()).max().unwrap());
                assert!(max - min <= 1 && min >= 1, "{len}/{w}: {parts:?}");
            }
        }
    }

    #[test]
    fn tensors_are_sliced_by_name() {
        let c = cfg();
        let (h, heads, qk) = (c.hidden_size, c.num_attention_heads, c.qk_nope_head_dim + c.qk_rope_head_dim);
        let p = ShardPlan::new(&c, Shard::new(1, 2, MoeSplit::Tensor).unwrap()).unwrap();
        let half = heads / 2;
        let s = p.slice("model.layers.0.self_attn.q_b_proj.weight", heads * qk, 32).unwrap();
        assert_eq!(s.rows, half * qk..heads * qk);
        let s = p.slice("model.layers.0.self_attn.o_proj.weight", h, heads * c.v_head_dim).unwrap();
        assert_eq!((s.rows, s.cols), (0..h, half * c.v_head_dim..heads * c.v_head_dim));
        let i = c.intermediate_size;
        assert_eq!(p.slice("model.layers.0.mlp.up_proj.weight", i, h).unwrap().rows, i / 2..i);
        assert_eq!(p.slice("model.layers.0.mlp.down_proj.weight", h, i).unwrap().cols, i / 2..i);
        let m = c.moe_intermediate_size;
        assert_eq!(p.slice("model.layers.1.mlp.experts.3.gate_proj.weight", m, h).unwrap().rows, m / 2..m);
        assert!(p.slice("model.layers.1.mlp.gate.weight", c.n_routed_experts, h).unwrap().is_full(c.n_routed_experts, h));
        assert!(p.slice("model.layers.1.self_attn.kv_a_proj_with_mqa.weight", 9, h).unwrap().is_full(9, h));
        assert_eq!(p.slice("model.embed_tokens.weight", c.vocab_size, h).unwrap().rows, c.vocab_size / 2..c.vocab_size);
        assert_eq!(p.slice("lm_head.weight", c.vocab_size, h).unwrap().rows, c.vocab_size / 2..c.vocab_size);
        // EP: whole experts, rank 1 owns the upper half.
        let e = ShardPlan::new(&c, Shard::new(1, 2, MoeSplit::Expert).unwrap()).unwrap();
        assert!(e.slice("model.layers.1.mlp.experts.0.up_proj.weight", m, h).is_none());
        let last = c.n_routed_experts - 1;
        assert!(e.slice(&format!("model.layers.1.mlp.experts.{last}.down_proj.weight"), h, m).unwrap().is_full(h, m));
        // Too many ranks for the heads: one clear line.
        let err = ShardPlan::new(&c, Shard::new(0, heads + 1, MoeSplit::Tensor).unwrap()).unwrap_err().to_string();
        assert!(err.contains("num_attention_heads"), "{err}");
    }

    #[test]
    fn dp_attention_replicates_attention_and_splits_the_ffn() {
        let c = cfg();
        let (h, heads, qk, nv) = (c.hidden_size, c.num_attention_heads, c.qk_nope_head_dim + c.qk_rope_head_dim, c.qk_nope_head_dim + c.v_head_dim);
        for moe in [MoeSplit::Tensor, MoeSplit::Expert] {
            let p = ShardPlan::new(&c, Shard::with_attn(1, 2, moe, AttnSplit::Data).unwrap()).unwrap();
            let tp = ShardPlan::new(&c, Shard::new(1, 2, moe).unwrap()).unwrap();
            assert_eq!(p.heads, 0..heads);
            for (name, n, k) in [
                ("model.layers.0.self_attn.q_b_proj.weight", heads * qk, 32),
                ("model.layers.0.self_attn.kv_b_proj.weight", heads * nv, c.kv_lora_rank),
                ("model.layers.0.self_attn.o_proj.weight", h, heads * c.v_head_dim),
                ("model.layers.0.self_attn.q_a_proj.weight", 32, h),
            ] {
                assert!(p.slice(name, n, k).unwrap().is_full(n, k), "{name} under DP attention");
            }
            // The FFN and lm_head are exactly the TP / EP plan's.
            assert_eq!((&p.dense_inter, &p.expert_inter, &p.shared_inter, &p.experts, &p.vocab), (&tp.dense_inter, &tp.expert_inter, &tp.shared_inter, &tp.experts, &tp.vocab));
        }
        // More ranks than heads is fine when heads are not split (the fixture's FFN dims are larger).
        assert!(ShardPlan::new(&c, Shard::with_attn(0, heads + 1, MoeSplit::Tensor, AttnSplit::Data).unwrap()).is_ok());
    }
}
