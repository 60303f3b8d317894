//! Per-tensor encodings of a Linear weight `[n, k]` (f32 in, stored bytes out) and their inverse,
//! with the error bound each encoding guarantees (what verification checks).

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::checkpoint::{dequant_int8_block, dequant_int8_channel, DType};

use super::Target;

/// Block edge of block INT8 (DeepSeek's / Meituan's 128 × 128).
pub const INT8_BLOCK: (usize, usize) = (128, 128);

/// Smallest amax used for a scale, so an all-zero block or row gets a finite, positive scale
/// (the fixture generator's `clamp(min=1e-12)`).
const AMAX_FLOOR: f32 = 1e-12;

/// One encoded weight: the stored weight bytes and, for INT8, its f32 scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    pub weight: Vec<u8>,
    pub scale: Option<Vec<f32>>,
}

/// dtype and shape of the encoded weight `[n, k]` and of its scale tensor (name suffix, shape).
pub fn layout(target: Target, n: usize, k: usize) -> (DType, Option<(&'static str, Vec<usize>)>) {
    match target {
        Target::Bf16 => (DType::BF16, None),
        Target::Int8Block => (
            DType::I8,
            Some((
                "_scale_inv",
                vec![n.div_ceil(INT8_BLOCK.0), k.div_ceil(INT8_BLOCK.1)],
            )),
        ),
        Target::Int8Channel => (DType::I8, Some(("_scale", vec![n, 1]))),
    }
}

/// Encodes the weight `name` (`w` is `[n, k]` row-major f32). Non-finite values are refused: no
/// INT8 scale can hold them, and a NaN would make every later comparison meaningless.
pub fn encode(target: Target, name: &str, w: &[f32], n: usize, k: usize) -> Result<Encoded> {
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(Error::CheckpointTensor {
            name: name.to_string(),
            msg: format!(
                "element {i} is {}; refusing to convert a non-finite weight",
                w[i]
            ),
        });
    }
    Ok(match target {
        Target::Bf16 => Encoded {
            weight: to_bf16_bytes(w),
            scale: None,
        },
        Target::Int8Block => {
            let (q, s) = quantize_int8_block(w, n, k, INT8_BLOCK);
            Encoded {
                weight: q,
                scale: Some(s),
            }
        }
        Target::Int8Channel => {
            let (q, s) = quantize_int8_channel(w, n, k);
            Encoded {
                weight: q,
                scale: Some(s),
            }
        }
    })
}

/// The f32 values an encoded weight stands for (what the loader computes).
pub fn decode(
    target: Target,
    weight: &[u8],
    scale: Option<&[f32]>,
    n: usize,
    k: usize,
) -> Vec<f32> {
    match (target, scale) {
        (Target::Bf16, _) => weight
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        (Target::Int8Block, Some(s)) => dequant_int8_block(weight, n, k, s, INT8_BLOCK),
        (Target::Int8Channel, Some(s)) => dequant_int8_channel(weight, n, k, s),
        (_, None) => Vec::new(),
    }
}

/// The largest |decode(encode(w)) − w| the encoding allows for element `(r, c)`.
///
/// - BF16: round to nearest keeps 8 significand bits, so |err| ≤ 2^-8·|w| (plus half the spacing
///   of bf16 subnormals, 2^-134, for tiny values).
/// - INT8: q = round(w / s) is off by at most 1/2, so |q·s − w| ≤ s/2; the f32 division and
///   product add at most ~127·2^-23 relative to s, covered by the 1e-4 margin.
pub fn bound(target: Target, w: f32, scale: Option<&[f32]>, r: usize, c: usize, k: usize) -> f32 {
    match (target, scale) {
        (Target::Bf16, _) => w.abs() * 2f32.powi(-8) + 2f32.powi(-134),
        (Target::Int8Block, Some(s)) => {
            let sk = k.div_ceil(INT8_BLOCK.1);
            s[(r / INT8_BLOCK.0) * sk + c / INT8_BLOCK.1] * (0.5 + 1e-4)
        }
        (Target::Int8Channel, Some(s)) => s[r] * (0.5 + 1e-4),
        (_, None) => 0.0,
    }
}

/// f32 → bf16 little-endian bytes, round to nearest even.
pub fn to_bf16_bytes(w: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; w.len() * 2];
    out.par_chunks_mut(2 << 14)
        .zip(w.par_chunks(1 << 14))
        .for_each(|(o, x)| {
            for (b, &v) in o.chunks_exact_mut(2).zip(x) {
                b.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes());
            }
        });
    out
}

fn quantize_one(x: f32, s: f32) -> u8 {
    ((x / s).round_ties_even().clamp(-127.0, 127.0) as i8) as u8
}

/// Symmetric block INT8: per `[bn, bk]` block (edge blocks partial) `s = amax / 127`,
/// `q = round(w / s)` (ties to even, as torch.round) clamped to ±127. Returns (q, s) with s of
/// shape `[ceil(n/bn), ceil(k/bk)]`.
pub fn quantize_int8_block(
    w: &[f32],
    n: usize,
    k: usize,
    (bn, bk): (usize, usize),
) -> (Vec<u8>, Vec<f32>) {
    let (sn, sk) = (n.div_ceil(bn), k.div_ceil(bk));
    let mut scales = vec![0f32; sn * sk];
    scales
        .par_chunks_mut(sk.max(1))
        .enumerate()
        .for_each(|(br, srow)| {
            for (bc, s) in srow.iter_mut().enumerate() {
                let mut amax = 0f32;
                for r in br * bn..((br + 1) * bn).min(n) {
                    for &x in &w[r * k + bc * bk..(r * k + (bc + 1) * bk).min(r * k + k)] {
                        amax = amax.max(x.abs());
                    }
                }
                *s = amax.max(AMAX_FLOOR) / 127.0;
            }
        });
    let mut q = vec![0u8; n * k];
    q.par_chunks_mut(k.max(1)).enumerate().for_each(|(r, row)| {
        let srow = &scales[(r / bn) * sk..(r / bn + 1) * sk];
        for (c, o) in row.iter_mut().enumerate() {
            *o = quantize_one(w[r * k + c], srow[c / bk]);
        }
    });
    (q, scales)
}

/// Symmetric per-output-channel INT8: per row `s = amax / 127`, `q = round(w / s)`. Returns
/// (q, s) with s of length n (stored `[n, 1]`).
pub fn quantize_int8_channel(w: &[f32], n: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
    let mut q = vec![0u8; n * k];
    let mut scales = vec![0f32; n];
    q.par_chunks_mut(k.max(1))
        .zip(scales.par_iter_mut())
        .enumerate()
        .for_each(|(r, (row, s))| {
            let src = &w[r * k..(r + 1) * k];
            *s = src.iter().fold(0f32, |a, x| a.max(x.abs())).max(AMAX_FLOOR) / 127.0;
            for (o, &x) in row.iter_mut().zip(src) {
                *o = quantize_one(x, *s);
            }
        });
    (q, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(n: usize, k: usize) -> Vec<f32> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        (0..n * k)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect()
    }

    #[test]
    fn every_encoding_stays_within_its_bound_and_is_not_the_identity() {
        let (n, k) = (200, 300); // partial 128-blocks both ways
        let w = weights(n, k);
        for target in [Target::Bf16, Target::Int8Block, Target::Int8Channel] {
            let e = encode(target, "w", &w, n, k).unwrap();
            let back = decode(target, &e.weight, e.scale.as_deref(), n, k);
            assert_eq!(back.len(), n * k);
            let mut differs = 0;
            for r in 0..n {
                for c in 0..k {
                    let (x, y) = (w[r * k + c], back[r * k + c]);
                    assert!(
                        (x - y).abs() <= bound(target, x, e.scale.as_deref(), r, c, k),
                        "{target:?} [{r}, {c}]: {x} vs {y}"
                    );
                    differs += usize::from(x != y);
                }
            }
            assert!(
                differs > n * k / 2,
                "{target:?}: only {differs} elements changed"
            );
        }
    }

    #[test]
    fn int8_scales_are_amax_over_127_and_the_extremes_hit_127() {
        let (n, k) = (130, 129);
        let w = weights(n, k);
        let (q, s) = quantize_int8_block(&w, n, k, INT8_BLOCK);
        assert_eq!(s.len(), 4);
        let amax00 = (0..128)
            .flat_map(|r| w[r * k..r * k + 128].to_vec())
            .fold(0f32, |a, x| a.max(x.abs()));
        assert_eq!(s[0], amax00 / 127.0);
        let (qc, sc) = quantize_int8_channel(&w, n, k);
        for r in 0..n {
            assert!(
                qc[r * k..(r + 1) * k]
                    .iter()
                    .any(|&b| (b as i8).unsigned_abs() == 127),
                "row {r}"
            );
            assert!(sc[r] > 0.0);
        }
        assert!(q.iter().any(|&b| b as i8 == -127 || b as i8 == 127));
    }

    #[test]
    fn zero_blocks_and_non_finite_weights() {
        let (q, s) = quantize_int8_channel(&[0.0; 8], 2, 4);
        assert!(q.iter().all(|&b| b == 0) && s.iter().all(|&x| x > 0.0 && x.is_finite()));
        let e = encode(Target::Int8Block, "model.x.weight", &[1.0, f32::NAN], 1, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.x.weight") && e.contains("NaN"), "{e}");
    }
}
