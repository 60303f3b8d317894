//! Multi-head latent attention (MLA) over a latent cache, CPU reference. Two equivalent paths:
//!
//! - naive (prefill): decompress the cache per head, k = [c·W_ukᵀ, k_pe], v = c·W_uvᵀ, softmax(q·kᵀ)·v;
//! - absorbed (decode): fold W_uk into the query (q_lat = q_nope·W_uk), attend in the 512-wide latent
//!   space (score = q_lat·c + q_pe·k_pe, o_lat = Σ p·c), then apply W_uv to o_lat.
//!
//! The latent cache holds one row of `kv_lora + rope` values per position: [c_kv (normalized) | k_pe
//! (rotated)]. Queries are causal: query `t` sits at absolute position `start + t` and sees the
//! cache rows `0..=start + t`.

use rayon::prelude::*;

use crate::ops::linear::dot;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaDims {
    pub heads: usize,
    pub nope: usize,
    pub rope: usize,
    pub v: usize,
    pub kv_lora: usize,
}

impl MlaDims {
    pub fn qk(&self) -> usize {
        self.nope + self.rope
    }
    pub fn latent(&self) -> usize {
        self.kv_lora + self.rope
    }
}

/// Per-head slices of `kv_b_proj` [H·(nope+v), kv_lora]: W_uk [nope, kv_lora] and W_uv [v, kv_lora].
fn w_uk<'a>(kv_b: &'a [f32], d: &MlaDims, h: usize) -> &'a [f32] {
    let base = h * (d.nope + d.v) * d.kv_lora;
    &kv_b[base..base + d.nope * d.kv_lora]
}
fn w_uv<'a>(kv_b: &'a [f32], d: &MlaDims, h: usize) -> &'a [f32] {
    let base = (h * (d.nope + d.v) + d.nope) * d.kv_lora;
    &kv_b[base..base + d.v * d.kv_lora]
}

/// Numerically stable softmax in place; returns log-sum-exp of the inputs.
pub fn softmax_inplace(x: &mut [f32]) -> f32 {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - m).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
    m + sum.ln()
}

/// Naive MLA. `q` [T, H, nope+rope] (rope part rotated), `cache` [S, kv_lora+rope], `kv_b`
/// = kv_b_proj [H·(nope+v), kv_lora]. Returns [T, H, v].
pub fn mla_naive(q: &[f32], cache: &[f32], kv_b: &[f32], d: &MlaDims, start: usize, scale: f32) -> Vec<f32> {
    let t_len = q.len() / (d.heads * d.qk());
    let s_len = start + t_len;
    assert!(cache.len() >= s_len * d.latent(), "mla_naive: cache shorter than start + T");
    let per_head: Vec<Vec<f32>> = (0..d.heads)
        .into_par_iter()
        .map(|h| {
            let (uk, uv) = (w_uk(kv_b, d, h), w_uv(kv_b, d, h));
            // Decompress keys and values for every cached position.
            let mut k_nope = vec![0f32; s_len * d.nope];
            let mut v = vec![0f32; s_len * d.v];
            for s in 0..s_len {
                let c = &cache[s * d.latent()..s * d.latent() + d.kv_lora];
                for i in 0..d.nope {
                    k_nope[s * d.nope + i] = dot(c, &uk[i * d.kv_lora..(i + 1) * d.kv_lora]);
                }
                for i in 0..d.v {
                    v[s * d.v + i] = dot(c, &uv[i * d.kv_lora..(i + 1) * d.kv_lora]);
                }
            }
            let mut out = vec![0f32; t_len * d.v];
            for t in 0..t_len {
                let qh = &q[(t * d.heads + h) * d.qk()..(t * d.heads + h + 1) * d.qk()];
                let visible = start + t + 1;
                let mut p: Vec<f32> = (0..visible)
                    .map(|s| {
                        let k_pe = &cache[s * d.latent() + d.kv_lora..(s + 1) * d.latent()];
                        (dot(&qh[..d.nope], &k_nope[s * d.nope..(s + 1) * d.nope])
                            + dot(&qh[d.nope..], k_pe))
                            * scale
                    })
                    .collect();
                softmax_inplace(&mut p);
                let o = &mut out[t * d.v..(t + 1) * d.v];
                for (s, &w) in p.iter().enumerate() {
                    for (oi, &vi) in o.iter_mut().zip(&v[s * d.v..(s + 1) * d.v]) {
                        *oi += w * vi;
                    }
                }
            }
            out
        })
        .collect();
    interleave_heads(&per_head, t_len, d.v)
}

/// Folds W_uk into the queries: `q` [T, H, nope+rope] → q_lat [T, H, kv_lora].
pub fn absorb_q(q: &[f32], kv_b: &[f32], d: &MlaDims) -> Vec<f32> {
    let rows = q.len() / d.qk();
    let mut q_lat = vec![0f32; rows * d.kv_lora];
    q_lat.par_chunks_mut(d.kv_lora).enumerate().for_each(|(r, out)| {
        let h = r % d.heads;
        let q_nope = &q[r * d.qk()..r * d.qk() + d.nope];
        let uk = w_uk(kv_b, d, h);
        for (i, &qi) in q_nope.iter().enumerate() {
            for (o, &w) in out.iter_mut().zip(&uk[i * d.kv_lora..(i + 1) * d.kv_lora]) {
                *o += qi * w;
            }
        }
    });
    q_lat
}

/// Attention in the latent space. `q_lat` [T, H, kv_lora], `q_pe` taken from `q` [T, H, nope+rope].
/// Returns (o_lat [T, H, kv_lora], lse [T, H]) — the decode kernels' output.
pub fn mla_latent_attention(
    q_lat: &[f32],
    q: &[f32],
    cache: &[f32],
    d: &MlaDims,
    start: usize,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let rows = q_lat.len() / d.kv_lora;
    let results: Vec<(Vec<f32>, f32)> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let t = r / d.heads;
            let ql = &q_lat[r * d.kv_lora..(r + 1) * d.kv_lora];
            let q_pe = &q[r * d.qk() + d.nope..(r + 1) * d.qk()];
            let visible = start + t + 1;
            let mut p: Vec<f32> = (0..visible)
                .map(|s| {
                    let row = &cache[s * d.latent()..(s + 1) * d.latent()];
                    (dot(ql, &row[..d.kv_lora]) + dot(q_pe, &row[d.kv_lora..])) * scale
                })
                .collect();
            let lse = softmax_inplace(&mut p);
            let mut o = vec![0f32; d.kv_lora];
            for (s, &w) in p.iter().enumerate() {
                for (oi, &c) in o.iter_mut().zip(&cache[s * d.latent()..s * d.latent() + d.kv_lora]) {
                    *oi += w * c;
                }
            }
            (o, lse)
        })
        .collect();
    let mut o_lat = Vec::with_capacity(rows * d.kv_lora);
    let mut lse = Vec::with_capacity(rows);
    for (o, l) in results {
        o_lat.extend(o);
        lse.push(l);
    }
    (o_lat, lse)
}

/// Applies W_uv per head: o_lat [T, H, kv_lora] → [T, H, v].
pub fn project_v(o_lat: &[f32], kv_b: &[f32], d: &MlaDims) -> Vec<f32> {
    let rows = o_lat.len() / d.kv_lora;
    let mut out = vec![0f32; rows * d.v];
    out.par_chunks_mut(d.v).enumerate().for_each(|(r, o)| {
        let uv = w_uv(kv_b, d, r % d.heads);
        let ol = &o_lat[r * d.kv_lora..(r + 1) * d.kv_lora];
        for (i, oi) in o.iter_mut().enumerate() {
            *oi = dot(ol, &uv[i * d.kv_lora..(i + 1) * d.kv_lora]);
        }
    });
    out
}

/// Absorbed MLA end to end: same contract and result as [`mla_naive`].
pub fn mla_absorbed(q: &[f32], cache: &[f32], kv_b: &[f32], d: &MlaDims, start: usize, scale: f32) -> Vec<f32> {
    let q_lat = absorb_q(q, kv_b, d);
    let (o_lat, _lse) = mla_latent_attention(&q_lat, q, cache, d, start, scale);
    project_v(&o_lat, kv_b, d)
}

/// [H][T, w] → [T, H, w].
fn interleave_heads(per_head: &[Vec<f32>], t_len: usize, w: usize) -> Vec<f32> {
    let heads = per_head.len();
    let mut out = vec![0f32; t_len * heads * w];
    for (h, ph) in per_head.iter().enumerate() {
        for t in 0..t_len {
            out[(t * heads + h) * w..(t * heads + h + 1) * w].copy_from_slice(&ph[t * w..(t + 1) * w]);
        }
    }
    out
}
