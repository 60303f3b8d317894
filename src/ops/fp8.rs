//! float8_e4m3fn conversions, 128×128 block weight dequantization and per-token-group
//! activation quantization (CPU reference).
//!
//! e4m3fn: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; no infinities; `0x7f`/`0xff`
//! are NaN; the largest finite value is 448 (`0x7e`), the smallest subnormal 2^-9.
//!
//! Rounding: every f32 → e4m3fn cast here rounds to nearest, ties to even, and saturates to ±448
//! (what `x.clamp(-448, 448).to(torch.float8_e4m3fn)` does and what the GPU's `cvt.rn.satfinite`
//! does). NaN maps to `0x7f`.
//!
//! Error of one cast (used by the tests to derive their bounds): for |x| ≥ 2^-6 (normal range)
//! |cast(x) − x| ≤ 2^-4·|x|; below it (subnormals, spacing 2^-9) |cast(x) − x| ≤ 2^-10.

use std::sync::LazyLock;

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Largest finite e4m3fn value.
pub const E4M3_MAX: f32 = 448.0;

/// Floor on a token group's amax before dividing, as SGLang's `per_token_group_quant_fp8` does
/// (`eps = 1e-10`): an all-zero group gets scale 1e-10/448 and quantizes to zeros.
pub const ACT_AMAX_EPS: f32 = 1e-10;

/// Work (elements) below which the helpers stay on one thread.
const PAR_THRESHOLD: usize = 1 << 16;

fn decode(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0f32 } else { 1.0f32 };
    let e = ((code >> 3) & 0x0f) as i32;
    let m = (code & 0x07) as u32;
    if e == 15 && m == 7 {
        return f32::NAN;
    }
    if e == 0 {
        // m · 2^-9, exact in f32.
        return sign * (m as f32) * (1.0 / 512.0);
    }
    // (1 + m/8) · 2^(e-7): f32 exponent field e - 7 + 127, mantissa m in the top 3 bits.
    sign * f32::from_bits((((e + 120) as u32) << 23) | (m << 20))
}

static TABLE: LazyLock<[f32; 256]> = LazyLock::new(|| {
    let mut t = [0f32; 256];
    for (i, v) in t.iter_mut().enumerate() {
        *v = decode(i as u8);
    }
    t
});

/// The 256 e4m3fn values, indexed by code.
pub fn e4m3fn_table() -> &'static [f32; 256] {
    &TABLE
}

/// Exact value of an e4m3fn code (`0x7f`, `0xff` → NaN).
#[inline]
pub fn e4m3fn_to_f32(code: u8) -> f32 {
    TABLE[code as usize]
}

/// f32 → e4m3fn, round to nearest even, saturating to ±448 (±inf too); NaN → `0x7f`.
#[inline]
pub fn f32_to_e4m3fn(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a >= E4M3_MAX {
        return sign | 0x7e;
    }
    if a < 1.0 / 64.0 {
        // Subnormal range: multiples of 2^-9 (scaling by 512 is exact). q = 8 is the smallest
        // normal, whose code is also 8.
        let q = (a * 512.0).round_ties_even() as u8;
        return sign | q;
    }
    // Normal: round the f32 mantissa from 23 to 3 bits, ties to even; a carry moves into the
    // exponent field, which is what we want.
    let bits = a.to_bits();
    let rounded = bits + 0x7_ffff + ((bits >> 20) & 1);
    let e = (rounded >> 23) as i32 - 120; // e4m3 exponent field (f32 bias 127, e4m3 bias 7)
    let code = ((e as u32) << 3) | ((rounded >> 20) & 7);
    // a < 448 so the rounded value is at most 448 (code 0x7e); stay safe anyway.
    sign | (code.min(0x7e) as u8)
}

fn ceil_div(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// `W[i, j] = e4m3fn(q[i, j]) · scale_inv[i / bn, j / bk]` for an `[n, k]` weight with
/// `scale_inv` of shape `[ceil(n / bn), ceil(k / bk)]` (edge blocks partial).
///
/// # Panics
/// When the lengths do not match (use [`try_dequant_block_weight`] for data read from files).
pub fn dequant_block_weight(
    q: &[u8],
    n: usize,
    k: usize,
    scale_inv: &[f32],
    block: (usize, usize),
) -> Vec<f32> {
    match try_dequant_block_weight(q, n, k, scale_inv, block) {
        Ok(w) => w,
        Err(e) => panic!("dequant_block_weight: {e}"),
    }
}

/// [`dequant_block_weight`] that reports bad shapes as `Error::InvalidArgument` instead of panicking.
pub fn try_dequant_block_weight(
    q: &[u8],
    n: usize,
    k: usize,
    scale_inv: &[f32],
    block: (usize, usize),
) -> Result<Vec<f32>> {
    let (bn, bk) = block;
    if bn == 0 || bk == 0 {
        return Err(Error::InvalidArgument(format!("fp8 block size [{bn}, {bk}] must be positive")));
    }
    let numel = n.checked_mul(k).ok_or_else(|| Error::InvalidArgument(format!("[{n}, {k}] overflows")))?;
    if q.len() != numel {
        return Err(Error::InvalidArgument(format!(
            "fp8 weight [{n}, {k}] needs {numel} bytes, got {}",
            q.len()
        )));
    }
    let (sn, sk) = (ceil_div(n, bn), ceil_div(k, bk));
    if scale_inv.len() != sn * sk {
        return Err(Error::InvalidArgument(format!(
            "scale_inv for weight [{n}, {k}] with blocks [{bn}, {bk}] must have shape [{sn}, {sk}] \
             ({} values), got {}",
            sn * sk,
            scale_inv.len()
        )));
    }
    let mut out = vec![0f32; numel];
    if numel == 0 {
        return Ok(out);
    }
    let table = e4m3fn_table();
    let row = |(i, (dst, src)): (usize, (&mut [f32], &[u8]))| {
        let srow = &scale_inv[(i / bn) * sk..(i / bn + 1) * sk];
        for ((d, s), &sc) in dst.chunks_mut(bk).zip(src.chunks(bk)).zip(srow) {
            for (o, &c) in d.iter_mut().zip(s) {
                *o = table[c as usize] * sc;
            }
        }
    };
    if numel >= PAR_THRESHOLD {
        out.par_chunks_mut(k).zip(q.par_chunks(k)).enumerate().for_each(row);
    } else {
        out.chunks_mut(k).zip(q.chunks(k)).enumerate().for_each(row);
    }
    Ok(out)
}

/// Quantizes an `[n, k]` f32 weight to e4m3fn with one scale per `[bn, bk]` block (edge blocks
/// partial): `scale_inv = amax / 448`, `q = cast(w / scale_inv)`. The inverse of
/// [`dequant_block_weight`]: |dequant − w| ≤ 2^-4·|w| + 2^-10·scale_inv per element (plus f32
/// rounding). An all-zero block gets `scale_inv = 1` (its codes are all 0 either way).
///
/// # Panics
/// When `w.len() != n * k` or a block dimension is 0.
pub fn quantize_block_weight(w: &[f32], n: usize, k: usize, block: (usize, usize)) -> (Vec<u8>, Vec<f32>) {
    let (bn, bk) = block;
    assert!(bn > 0 && bk > 0, "quantize_block_weight: block [{bn}, {bk}] must be positive");
    assert_eq!(w.len(), n * k, "quantize_block_weight: weight [{n}, {k}] needs {} values", n * k);
    let (sn, sk) = (ceil_div(n, bn), ceil_div(k, bk));
    let mut scales = vec![0f32; sn * sk];
    let mut q = vec![0u8; n * k];
    for bi in 0..sn {
        let rows = bi * bn..((bi + 1) * bn).min(n);
        for bj in 0..sk {
            let cols = bj * bk..((bj + 1) * bk).min(k);
            let mut amax = 0f32;
            for i in rows.clone() {
                for &v in &w[i * k + cols.start..i * k + cols.end] {
                    amax = amax.max(v.abs());
                }
            }
            let s = if amax > 0.0 { amax / E4M3_MAX } else { 1.0 };
            scales[bi * sk + bj] = s;
            for i in rows.clone() {
                for j in cols.clone() {
                    q[i * k + j] = f32_to_e4m3fn(w[i * k + j] / s);
                }
            }
        }
    }
    (q, scales)
}

/// Per-token-group dynamic activation quantization as the GPU does it (DESIGN §5): each row of
/// the `[rows, cols]` activation is cut into groups of `group` channels (the last one partial);
/// per group `scale = max(amax, 1e-10) / 448` (SGLang's eps; see [`ACT_AMAX_EPS`]) and
/// `q = cast_sat(x / scale)` (a division in f32, as SGLang's kernels do). Returns the codes
/// `[rows, cols]` and the scales `[rows, ceil(cols / group)]`.
///
/// # Panics
/// When `x.len() != rows * cols` or `group == 0`.
pub fn quantize_act_per_token_group(x: &[f32], rows: usize, cols: usize, group: usize) -> (Vec<u8>, Vec<f32>) {
    assert!(group > 0, "quantize_act_per_token_group: group must be positive");
    assert_eq!(x.len(), rows * cols, "quantize_act_per_token_group: [{rows}, {cols}] needs {} values", rows * cols);
    let ng = ceil_div(cols, group);
    let mut q = vec![0u8; rows * cols];
    let mut scales = vec![0f32; rows * ng];
    if rows == 0 || cols == 0 {
        return (q, scales);
    }
    let row = |((qr, sr), xr): ((&mut [u8], &mut [f32]), &[f32])| {
        for ((qg, s), xg) in qr.chunks_mut(group).zip(sr.iter_mut()).zip(xr.chunks(group)) {
            let amax = xg.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax.max(ACT_AMAX_EPS) / E4M3_MAX;
            *s = scale;
            for (o, &v) in qg.iter_mut().zip(xg) {
                *o = f32_to_e4m3fn(v / scale);
            }
        }
    };
    if rows * cols >= PAR_THRESHOLD {
        q.par_chunks_mut(cols).zip(scales.par_chunks_mut(ng)).zip(x.par_chunks(cols)).for_each(row);
    } else {
        q.chunks_mut(cols).zip(scales.chunks_mut(ng)).zip(x.chunks(cols)).for_each(row);
    }
    (q, scales)
}

/// Quantizes and dequantizes in place with [`quantize_act_per_token_group`]'s rule
/// (`x ← e4m3fn(q) · scale`): the CPU model's "emulate FP8 activations" option.
///
/// # Panics
/// When `x.len() != rows * cols` or `group == 0`.
pub fn fake_quant_act_per_token_group(x: &mut [f32], rows: usize, cols: usize, group: usize) {
    assert!(group > 0, "fake_quant_act_per_token_group: group must be positive");
    assert_eq!(x.len(), rows * cols, "fake_quant_act_per_token_group: [{rows}, {cols}] needs {} values", rows * cols);
    if rows == 0 || cols == 0 {
        return;
    }
    let table = e4m3fn_table();
    let row = |xr: &mut [f32]| {
        for xg in xr.chunks_mut(group) {
            let amax = xg.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax.max(ACT_AMAX_EPS) / E4M3_MAX;
            for v in xg.iter_mut() {
                *v = table[f32_to_e4m3fn(*v / scale) as usize] * scale;
            }
        }
    };
    if rows * cols >= PAR_THRESHOLD {
        x.par_chunks_mut(cols).for_each(row);
    } else {
        x.chunks_mut(cols).for_each(row);
    }
}
