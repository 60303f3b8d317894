//! RMSNorm: `y = x / sqrt(mean(x²) + eps) · weight`, row by row, in f32.

/// 1 / sqrt(mean(row²) + eps).
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// Normalizes each row of `x` (rows of `weight.len()` values) into `out`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    assert_eq!(x.len(), out.len(), "rms_norm: input and output lengths differ");
    assert_eq!(x.len() % d, 0, "rms_norm: input is not a whole number of rows");
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let inv = inv_rms(xr, eps);
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// Fused residual add + RMSNorm: `residual += x; out = rms_norm(residual)`.
pub fn add_rms_norm(residual: &mut [f32], x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(residual.len(), x.len(), "add_rms_norm: residual and input lengths differ");
    for (r, &v) in residual.iter_mut().zip(x) {
        *r += v;
    }
    rms_norm(residual, weight, eps, out);
}

/// In-place variant used by the model.
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    assert_eq!(x.len() % weight.len(), 0, "rms_norm: input is not a whole number of rows");
    for xr in x.chunks_exact_mut(weight.len()) {
        let inv = inv_rms(xr, eps);
        for (v, &w) in xr.iter_mut().zip(weight) {
            *v = *v * inv * w;
        }
    }
}
