//! Property tests of the CPU reference ops against independent (naive, f64) formulations.

use dsv3::model::config::YarnScaling;
use dsv3::ops::attention::{mla_absorbed, mla_latent_attention, absorb_q, mla_naive, MlaDims};
use dsv3::ops::norm::{add_rms_norm, rms_norm};
use dsv3::ops::rope::YarnRope;
use dsv3::ops::routing::{route_noaux_tc, RoutingParams};
use dsv3::tensor::rel_error;
use proptest::prelude::*;

fn v3_yarn() -> YarnScaling {
    YarnScaling {
        factor: 40.0,
        original_max_position_embeddings: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
        mscale: 1.0,
        mscale_all_dim: 1.0,
    }
}

/// Naive routing: sort everything, straight from the definition in DESIGN.md §5.
fn naive_route(logits: &[f32], bias: &[f32], p: &RoutingParams) -> (Vec<usize>, Vec<f32>) {
    let s: Vec<f32> = logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect();
    let c: Vec<f32> = s.iter().zip(bias).map(|(a, b)| a + b).collect();
    let gsize = p.n_experts / p.n_group;
    let mut groups: Vec<(f32, usize)> = (0..p.n_group)
        .map(|g| {
            let mut vals: Vec<f32> = c[g * gsize..(g + 1) * gsize].to_vec();
            vals.sort_by(|a, b| b.total_cmp(a));
            (vals.iter().take(2).sum(), g)
        })
        .collect();
    groups.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let kept: Vec<usize> = groups.iter().take(p.topk_group).map(|g| g.1).collect();
    let mut cand: Vec<(f32, usize)> =
        (0..p.n_experts).filter(|e| kept.contains(&(e / gsize))).map(|e| (c[e], e)).collect();
    cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let experts: Vec<usize> = cand.iter().take(p.top_k).map(|x| x.1).collect();
    let mut w: Vec<f32> = experts.iter().map(|&e| s[e]).collect();
    if p.norm_topk_prob {
        let sum: f32 = w.iter().sum::<f32>() + 1e-20;
        w.iter_mut().for_each(|x| *x /= sum);
    }
    w.iter_mut().for_each(|x| *x *= p.routed_scaling_factor);
    (experts, w)
}

fn routing_case() -> impl Strategy<Value = (RoutingParams, Vec<f32>, Vec<f32>)> {
    (1usize..=8, 1usize..=8, any::<bool>(), any::<bool>()).prop_flat_map(|(n_group, gsize, norm, coarse)| {
        let n_experts = n_group * gsize;
        (1..=n_group, Just((n_group, n_experts, norm, coarse))).prop_flat_map(
            move |(topk_group, (n_group, n_experts, norm, coarse))| {
                let max_k = topk_group * (n_experts / n_group);
                // Coarse values (multiples of 1/4) make ties between experts and between groups.
                let value = if coarse {
                    (-8i32..8).prop_map(|v| v as f32 / 4.0).boxed()
                } else {
                    (-4.0f32..4.0).boxed()
                };
                (
                    1..=max_k,
                    proptest::collection::vec(value.clone(), n_experts),
                    proptest::collection::vec(value.prop_map(|v| v / 8.0), n_experts),
                )
                    .prop_map(move |(top_k, logits, bias)| {
                        let p = RoutingParams {
                            n_experts,
                            n_group,
                            topk_group,
                            top_k,
                            norm_topk_prob: norm,
                            routed_scaling_factor: 2.5,
                        };
                        (p, logits, bias)
                    })
            },
        )
    })
}

proptest! {
    #[test]
    fn routing_matches_naive_sort((p, logits, bias) in routing_case()) {
        let (experts, weights) = route_noaux_tc(&logits, &bias, &p);
        let (ref_experts, ref_weights) = naive_route(&logits, &bias, &p);
        prop_assert_eq!(&experts, &ref_experts);
        prop_assert!(rel_error(&weights, &ref_weights) <= 1e-6);
        // Distinct experts, all inside at most topk_group groups; normalized weights sum to the scale.
        let mut sorted = experts.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(sorted.len(), p.top_k);
        let gsize = p.n_experts / p.n_group;
        let mut groups: Vec<usize> = experts.iter().map(|e| e / gsize).collect();
        groups.sort();
        groups.dedup();
        prop_assert!(groups.len() <= p.topk_group);
        if p.norm_topk_prob {
            let sum: f32 = weights.iter().sum();
            prop_assert!((sum - p.routed_scaling_factor).abs() <= 1e-5);
        }
    }

    #[test]
    fn rms_norm_matches_f64(rows in 1usize..5, d in 1usize..300, seed in any::<u64>()) {
        let x = random_vec(rows * d, seed, 3.0);
        let w = random_vec(d, seed ^ 1, 1.0);
        let mut out = vec![f32::NAN; x.len()];
        rms_norm(&x, &w, 1e-6, &mut out);
        let mut reference = vec![0f32; x.len()];
        for r in 0..rows {
            let xr = &x[r * d..(r + 1) * d];
            let ms = xr.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / d as f64;
            let inv = 1.0 / (ms + 1e-6).sqrt();
            for i in 0..d {
                reference[r * d + i] = (xr[i] as f64 * inv * w[i] as f64) as f32;
            }
        }
        prop_assert!(rel_error(&out, &reference) <= 1e-6);
        // The fused residual form equals add-then-norm.
        let mut residual = random_vec(rows * d, seed ^ 2, 1.0);
        let sum: Vec<f32> = residual.iter().zip(&x).map(|(a, b)| a + b).collect();
        let mut fused = vec![f32::NAN; x.len()];
        add_rms_norm(&mut residual, &x, &w, 1e-6, &mut fused);
        let mut unfused = vec![f32::NAN; x.len()];
        rms_norm(&sum, &w, 1e-6, &mut unfused);
        prop_assert_eq!(residual, sum);
        prop_assert_eq!(fused, unfused);
    }

    #[test]
    fn absorbed_mla_equals_naive(
        heads in 1usize..4, nope in 1usize..24, rope_half in 1usize..8, v in 1usize..24,
        kv_lora in 1usize..48, start in 0usize..6, t_len in 1usize..5, seed in any::<u64>()
    ) {
        let d = MlaDims { heads, nope, rope: 2 * rope_half, v, kv_lora };
        let s_len = start + t_len;
        let q = random_vec(t_len * heads * d.qk(), seed, 1.0);
        let cache = random_vec(s_len * d.latent(), seed ^ 3, 1.0);
        let kv_b = random_vec(heads * (nope + v) * kv_lora, seed ^ 4, 0.5);
        let scale = (d.qk() as f32).powf(-0.5);
        let naive = mla_naive(&q, &cache, &kv_b, &d, start, scale);
        let absorbed = mla_absorbed(&q, &cache, &kv_b, &d, start, scale);
        prop_assert!(naive.iter().all(|x| x.is_finite()));
        prop_assert!(rel_error(&absorbed, &naive) <= 1e-5, "rel error {}", rel_error(&absorbed, &naive));
        // The log-sum-exp the decode kernels return matches a direct f64 computation.
        let q_lat = absorb_q(&q, &kv_b, &d);
        let (_o, lse) = mla_latent_attention(&q_lat, &q, &cache, &d, start, scale);
        for r in 0..t_len * heads {
            let t = r / heads;
            let scores: Vec<f64> = (0..=start + t).map(|s| {
                let row = &cache[s * d.latent()..(s + 1) * d.latent()];
                let mut acc = 0f64;
                for j in 0..kv_lora { acc += q_lat[r * kv_lora + j] as f64 * row[j] as f64; }
                for j in 0..d.rope { acc += q[r * d.qk() + nope + j] as f64 * row[kv_lora + j] as f64; }
                acc * scale as f64
            }).collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let reference = m + scores.iter().map(|s| (s - m).exp()).sum::<f64>().ln();
            prop_assert!((lse[r] as f64 - reference).abs() <= 1e-4 * reference.abs().max(1.0));
        }
    }

    #[test]
    fn rope_preserves_norm_and_relative_position(pos in 0usize..20_000, shift in 0usize..1000, seed in any::<u64>()) {
        let rope = YarnRope::with_params(64, 10000.0, None);
        let q = random_vec(64, seed, 1.0);
        let k = random_vec(64, seed ^ 7, 1.0);
        let (mut q1, mut k1) = (q.clone(), k.clone());
        rope.apply(&mut q1, pos + shift);
        rope.apply(&mut k1, pos);
        let (mut q0, mut k0) = (q.clone(), k.clone());
        rope.apply(&mut q0, shift);
        rope.apply(&mut k0, 0);
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
        // Rotation: norms kept; scores depend only on the distance.
        prop_assert!((dot(&q1, &q1) - dot(&q, &q)).abs() <= 1e-3 * dot(&q, &q));
        prop_assert!((dot(&q1, &k1) - dot(&q0, &k0)).abs() <= 2e-2 * (dot(&q, &q) * dot(&k, &k)).sqrt());
    }
}

#[test]
fn yarn_frequencies_of_deepseek_v3() {
    let y = v3_yarn();
    let rope = YarnRope::with_params(64, 10000.0, Some(&y));
    let f = rope.inv_freq();
    assert_eq!(f.len(), 32);
    // Correction range for beta_fast 32 / beta_slow 1 over 4096 positions, d = 64, θ = 10⁴:
    // low = floor(10.47) = 10, high = ceil(22.50) = 23.
    for (i, &fi) in f.iter().enumerate() {
        let base = 10000f64.powf(-(2.0 * i as f64) / 64.0);
        let ramp = ((i as f64 - 10.0) / 13.0).clamp(0.0, 1.0);
        let expected = base / 40.0 * ramp + base * (1.0 - ramp);
        assert!(((fi as f64) - expected).abs() <= 1e-6 * expected, "freq {i}: {fi} vs {expected}");
    }
    // mscale == mscale_all_dim: cos and sin are not scaled.
    assert_eq!(rope.attention_factor(), 1.0);
}

/// Deterministic pseudo-random values in [-amp, amp) (SplitMix64).
fn random_vec(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}
