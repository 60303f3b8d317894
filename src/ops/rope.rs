//! Rotary position embedding with YaRN scaling, DeepSeek layout: adjacent pairs (2i, 2i+1) of the
//! rope part are rotated by frequency i. (transformers de-interleaves q_pe and k_pe first; the same
//! permutation applied to both leaves every score unchanged.)

use crate::model::config::{ModelConfig, YarnScaling};

#[derive(Clone, Debug)]
pub struct YarnRope {
    /// Inverse frequencies, `rope_dim / 2` of them.
    inv_freq: Vec<f32>,
    /// Factor applied to cos and sin (YaRN's attention factor; 1 for DeepSeek-V3).
    attention_factor: f32,
}

/// YaRN's magnitude correction: 0.1·mscale·ln(scale) + 1 for scale > 1.
pub fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// The dimension index at which a wavelength makes `num_rotations` turns over `max_pos` positions.
fn correction_dim(num_rotations: f64, dim: usize, base: f64, max_pos: usize) -> f64 {
    (dim as f64 * (max_pos as f64 / (num_rotations * 2.0 * std::f64::consts::PI)).ln())
        / (2.0 * base.ln())
}

/// YaRN inverse frequencies (DESIGN.md §5): base frequencies interpolated by a linear ramp
/// between the beta_fast and beta_slow correction dims.
pub fn yarn_inv_freq(dim: usize, theta: f64, y: &YarnScaling) -> Vec<f32> {
    let half = dim / 2;
    let low = correction_dim(y.beta_fast, dim, theta, y.original_max_position_embeddings)
        .floor()
        .max(0.0);
    let high = correction_dim(y.beta_slow, dim, theta, y.original_max_position_embeddings)
        .ceil()
        .min(dim as f64 - 1.0);
    let span = if low == high { 0.001 } else { high - low };
    (0..half)
        .map(|i| {
            let f = base_inv_freq(i, dim, theta);
            let ramp = ((i as f64 - low) / span).clamp(0.0, 1.0);
            // ramp = 1 → interpolated (f / factor), ramp = 0 → extrapolated (f).
            (f / y.factor * ramp + f * (1.0 - ramp)) as f32
        })
        .collect()
}

fn base_inv_freq(i: usize, dim: usize, theta: f64) -> f64 {
    // Rounded through f32 as transformers computes `base ** (arange(0, dim, 2).float() / dim)`.
    let exponent = ((2 * i) as f32 / dim as f32) as f64;
    1.0 / theta.powf(exponent)
}

impl YarnRope {
    pub fn new(cfg: &ModelConfig) -> Self {
        Self::with_params(cfg.qk_rope_head_dim, cfg.rope_theta, cfg.rope_scaling.as_ref())
    }

    pub fn with_params(dim: usize, theta: f64, scaling: Option<&YarnScaling>) -> Self {
        match scaling {
            None => YarnRope {
                inv_freq: (0..dim / 2).map(|i| base_inv_freq(i, dim, theta) as f32).collect(),
                attention_factor: 1.0,
            },
            Some(y) => {
                // transformers: ratio of the two mscales when both are set, else get_mscale(factor).
                let attention_factor = if y.mscale != 0.0 && y.mscale_all_dim != 0.0 {
                    yarn_get_mscale(y.factor, y.mscale) / yarn_get_mscale(y.factor, y.mscale_all_dim)
                } else {
                    yarn_get_mscale(y.factor, 1.0)
                };
                YarnRope {
                    inv_freq: yarn_inv_freq(dim, theta, y),
                    attention_factor: attention_factor as f32,
                }
            }
        }
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    pub fn attention_factor(&self) -> f32 {
        self.attention_factor
    }

    /// (cos, sin) of every frequency at position `pos`, attention factor applied.
    pub fn cos_sin(&self, pos: usize) -> (Vec<f32>, Vec<f32>) {
        self.inv_freq
            .iter()
            .map(|&f| {
                let angle = (pos as f32 * f) as f64;
                (
                    (angle.cos() as f32) * self.attention_factor,
                    (angle.sin() as f32) * self.attention_factor,
                )
            })
            .unzip()
    }

    /// Rotates one rope vector (`2 · inv_freq.len()` values) in place.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let (cos, sin) = self.cos_sin(pos);
        apply_cos_sin(x, &cos, &sin);
    }
}

/// Rotates adjacent pairs of `x` by precomputed (cos, sin).
pub fn apply_cos_sin(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    assert_eq!(x.len(), 2 * cos.len(), "rope: vector length must be twice the frequency count");
    for (i, pair) in x.chunks_exact_mut(2).enumerate() {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * cos[i] - b * sin[i];
        pair[1] = b * cos[i] + a * sin[i];
    }
}
