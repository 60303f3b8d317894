//! Dense linear layer, `y[t, n] = Σ_k x[t, k] · w[n, k]` (PyTorch's Linear layout: W is [out, in]).

use rayon::prelude::*;

use crate::tensor::Tensor;

/// Dot product with eight independent accumulators so the compiler vectorizes it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `x` [T, K] (any leading shape flattened to rows), `w` [N, K] → [T, N].
pub fn linear(x: &Tensor, w: &Tensor) -> Tensor {
    let k = w.shape()[1];
    let n = w.shape()[0];
    assert_eq!(x.row_len(), k, "linear: input width {} != weight in-features {k}", x.row_len());
    let t = x.numel() / k;
    let mut out = vec![0f32; t * n];
    linear_into(x.data(), w.data(), k, &mut out);
    Tensor::new(vec![t, n], out).expect("linear output shape")
}

/// Slice form of [`linear`]: `x` is [T, k], `w` is [N, k], `out` is [T, N].
pub fn linear_into(x: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
    let n = w.len() / k;
    let t = x.len() / k;
    debug_assert_eq!(out.len(), t * n);
    // Parallelize over output columns in chunks: each weight row is read once per chunk and
    // reused for every token (decode has T = 1, prefill a few hundred).
    const COLS: usize = 16;
    let mut cols: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(COLS))
        .into_par_iter()
        .map(|c| {
            let n0 = c * COLS;
            let n1 = (n0 + COLS).min(n);
            let mut block = vec![0f32; t * (n1 - n0)];
            for (j, wr) in w[n0 * k..n1 * k].chunks_exact(k).enumerate() {
                for (ti, xr) in x.chunks_exact(k).enumerate() {
                    block[ti * (n1 - n0) + j] = dot(xr, wr);
                }
            }
            (n0, block)
        })
        .collect();
    for (n0, block) in cols.drain(..) {
        let w_cols = block.len() / t.max(1);
        for ti in 0..t {
            out[ti * n + n0..ti * n + n0 + w_cols]
                .copy_from_slice(&block[ti * w_cols..(ti + 1) * w_cols]);
        }
    }
}
