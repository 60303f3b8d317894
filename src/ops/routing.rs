//! DeepSeek-V3 MoE routing (`noaux_tc`), in f32: sigmoid scores, bias-corrected group-limited
//! top-k selection, weights from the unbiased scores.

use crate::model::config::ModelConfig;

#[derive(Clone, Debug, PartialEq)]
pub struct RoutingParams {
    pub n_experts: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub top_k: usize,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
}

impl RoutingParams {
    pub fn from_config(cfg: &ModelConfig) -> Self {
        RoutingParams {
            n_experts: cfg.n_routed_experts,
            n_group: cfg.n_group,
            topk_group: cfg.topk_group,
            top_k: cfg.num_experts_per_tok,
            norm_topk_prob: cfg.norm_topk_prob,
            routed_scaling_factor: cfg.routed_scaling_factor,
        }
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Indices of the `k` largest values, best first; ties go to the lower index.
fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Routes one token. `logits` are the router's outputs (x·W_gateᵀ) for every expert, `bias` is
/// `e_score_correction_bias`. Returns the chosen experts (best first) and their weights.
pub fn route_noaux_tc(logits: &[f32], bias: &[f32], p: &RoutingParams) -> (Vec<usize>, Vec<f32>) {
    assert_eq!(logits.len(), p.n_experts, "routing: one logit per expert expected");
    let scores: Vec<f32> = logits.iter().map(|&l| sigmoid(l)).collect();
    let biased: Vec<f32> = scores.iter().zip(bias).map(|(s, b)| s + b).collect();
    let group_size = p.n_experts / p.n_group;
    // A group's score is the sum of its two best biased scores (its only one if it has one).
    let group_scores: Vec<f32> = biased
        .chunks_exact(group_size)
        .map(|g| top_k_indices(g, 2).iter().map(|&i| g[i]).sum())
        .collect();
    let kept_groups = top_k_indices(&group_scores, p.topk_group);
    let masked: Vec<f32> = biased
        .iter()
        .enumerate()
        .map(|(e, &c)| if kept_groups.contains(&(e / group_size)) { c } else { f32::NEG_INFINITY })
        .collect();
    let experts = top_k_indices(&masked, p.top_k);
    let mut weights: Vec<f32> = experts.iter().map(|&e| scores[e]).collect();
    if p.norm_topk_prob {
        let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    weights.iter_mut().for_each(|w| *w *= p.routed_scaling_factor);
    (experts, weights)
}
