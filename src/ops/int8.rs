//! INT8 (W8A8) reference: dynamic symmetric activation quantization exactly as the GPU kernels do
//! it (kernels/quant_gemm.cuh `int8_act_quant`), and the INT8 GEMM it feeds.
//!
//! Rule (both granularities): `s = max(amax, 1e-10) / 127` and `q = clamp(rint(x / s), -127, 127)`
//! with an IEEE f32 division and round-half-to-even (`rintf` on the GPU, `round_ties_even` here), so
//! CPU and GPU codes and scales are bit-identical. (vLLM's `float_to_int8_rn` rounds the same way;
//! SGLang's Triton per-group kernel truncates, which biases small values toward zero.) Per token
//! group: groups of `group` channels, the last one partial, scales `[rows, ceil(cols / group)]`;
//! per token: scales `[rows]`.

use rayon::prelude::*;

/// Largest code magnitude (symmetric: -128 is never produced).
pub const INT8_MAX: f32 = 127.0;
/// Floor of the absolute maximum (as for FP8: `ops::fp8::ACT_AMAX_EPS`).
pub const INT8_AMAX_EPS: f32 = 1e-10;

const PAR_THRESHOLD: usize = 1 << 16;

/// The scale of a group whose absolute maximum is `amax`.
pub fn int8_scale(amax: f32) -> f32 {
    amax.max(INT8_AMAX_EPS) / INT8_MAX
}

/// The code of `v` at scale `s`.
pub fn int8_code(v: f32, s: f32) -> i8 {
    (v / s).round_ties_even().clamp(-INT8_MAX, INT8_MAX) as i8
}

fn quantize_rows(x: &[f32], rows: usize, cols: usize, group: usize) -> (Vec<i8>, Vec<f32>) {
    assert!(group > 0, "int8 quantization: group must be positive");
    assert_eq!(
        x.len(),
        rows * cols,
        "int8 quantization: [{rows}, {cols}] needs {} values",
        rows * cols
    );
    let ng = cols.div_ceil(group);
    let mut q = vec![0i8; rows * cols];
    let mut scales = vec![0f32; rows * ng];
    if rows == 0 || cols == 0 {
        return (q, scales);
    }
    let row = |((qr, sr), xr): ((&mut [i8], &mut [f32]), &[f32])| {
        for ((qg, s), xg) in qr
            .chunks_mut(group)
            .zip(sr.iter_mut())
            .zip(xr.chunks(group))
        {
            let amax = xg.iter().fold(0f32, |m, v| m.max(v.abs()));
            *s = int8_scale(amax);
            for (o, &v) in qg.iter_mut().zip(xg) {
                *o = int8_code(v, *s);
            }
        }
    };
    if rows * cols >= PAR_THRESHOLD {
        q.par_chunks_mut(cols)
            .zip(scales.par_chunks_mut(ng))
            .zip(x.par_chunks(cols))
            .for_each(row);
    } else {
        q.chunks_mut(cols)
            .zip(scales.chunks_mut(ng))
            .zip(x.chunks(cols))
            .for_each(row);
    }
    (q, scales)
}

/// Per-token-group INT8 quantization of `x` `[rows, cols]`: codes `[rows, cols]`, scales
/// `[rows, ceil(cols / group)]` (block INT8 activations; `group` = 128).
///
/// # Panics
/// When `x.len() != rows * cols` or `group == 0`.
pub fn quantize_act_int8_per_token_group(
    x: &[f32],
    rows: usize,
    cols: usize,
    group: usize,
) -> (Vec<i8>, Vec<f32>) {
    quantize_rows(x, rows, cols, group)
}

/// Per-token INT8 quantization of `x` `[rows, cols]`: codes `[rows, cols]`, scales `[rows]`
/// (channel INT8 activations).
///
/// # Panics
/// When `x.len() != rows * cols`.
pub fn quantize_act_int8_per_token(x: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    quantize_rows(x, rows, cols, cols.max(1))
}

/// Dequantized activations: `q · s` with `s` per `group` channels of each row (`group = cols` for
/// per-token scales).
pub fn dequant_act_int8(
    q: &[i8],
    scales: &[f32],
    rows: usize,
    cols: usize,
    group: usize,
) -> Vec<f32> {
    let ng = cols.div_ceil(group.max(1));
    (0..rows * cols)
        .map(|i| f32::from(q[i]) * scales[(i / cols) * ng + (i % cols) / group.max(1)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_half_even_and_saturate() {
        // amax 127 → s = 1: codes are rint(x), ties to even.
        let x = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -127.0, 3.49];
        let (q, s) = quantize_act_int8_per_token(&x, 1, x.len());
        assert_eq!(s, vec![1.0]);
        assert_eq!(q, vec![127, 0, 2, 2, 0, -2, -127, 3]);
        // Zero rows: scale from the eps floor, codes 0.
        let (q, s) = quantize_act_int8_per_token_group(&[0.0; 130], 1, 130, 128);
        assert_eq!(q, vec![0; 130]);
        assert_eq!(s, vec![INT8_AMAX_EPS / 127.0; 2]);
    }

    #[test]
    fn groups_and_dequant() {
        let x: Vec<f32> = (0..2 * 200)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let (q, s) = quantize_act_int8_per_token_group(&x, 2, 200, 128);
        assert_eq!(s.len(), 4);
        let d = dequant_act_int8(&q, &s, 2, 200, 128);
        for (i, (a, b)) in x.iter().zip(&d).enumerate() {
            let sc = s[(i / 200) * 2 + (i % 200) / 128];
            assert!((a - b).abs() <= 0.5 * sc * 1.0001, "{i}: {a} vs {b}");
        }
        // The group's largest magnitude maps to ±127.
        assert!(q[..128].iter().any(|&c| c.abs() == 127));
    }
}
