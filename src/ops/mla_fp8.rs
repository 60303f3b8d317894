//! The fp8 e4m3 MLA latent cache row (FlashMLA's layout, `--kv-cache-dtype fp8_e4m3`): CPU
//! quantize / dequantize of one token row, the reference of the GPU cache write
//! (`mla_cache_write_fp8_*`, bit for bit) and of the fp8-cache decode kernels.
//!
//! A row is [`ROW_BYTES`] = 656 bytes:
//!
//! ```text
//! bytes [0, 512)    c_kv: 512 values as e4m3fn; group g = values 128g .. 128g + 127
//! bytes [512, 528)  4 f32 scales (little-endian), s_g = max(amax_g, 1e-10) / 448
//! bytes [528, 656)  k_pe: 64 values as bf16 (little-endian)
//! ```
//!
//! Quantize: byte i = e4m3fn(x_i / s_{i/128}) with IEEE f32 division, round to nearest even,
//! saturating to ±448 ([`f32_to_e4m3fn`]); amax ignores NaN (as `fmaxf` does on the GPU). A
//! group of zeros gets s = 1e-10 / 448 and bytes 0. Dequantize: e4m3fn(byte) · s in f32 (exact
//! e4m3 value, one f32 rounding of the product); rope: the bf16 value.
//!
//! Error of the round trip, per latent value: |dq − x| ≤ 2^-4·|x| + 2^-10·s (the e4m3 half-ulp
//! of x / s, relative 2^-4 in the normal range and 2^-10 absolute among subnormals, times s),
//! plus f32 rounding of the division and the product.

use crate::error::{Error, Result};
use crate::ops::fp8::{e4m3fn_to_f32, f32_to_e4m3fn, E4M3_MAX};

/// Latent values per row.
pub const LATENT: usize = 512;
/// Rope values per row.
pub const ROPE: usize = 64;
/// Values per scale group.
pub const GROUP: usize = 128;
/// Scale groups per row.
pub const GROUPS: usize = LATENT / GROUP;
/// Byte offset of the scales.
pub const SCALES_AT: usize = LATENT;
/// Byte offset of the rope values.
pub const ROPE_AT: usize = SCALES_AT + 4 * GROUPS;
/// Bytes of one row.
pub const ROW_BYTES: usize = ROPE_AT + 2 * ROPE;
/// Floor on a group's amax before it becomes a scale.
pub const AMAX_EPS: f32 = 1e-10;

/// The scale of a group of values: max(amax, 1e-10) / 448.
pub fn group_scale(x: &[f32]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    amax.max(AMAX_EPS) / E4M3_MAX
}

/// Quantizes one row of 576 values (`[c_kv | k_pe]`) into `out` (656 bytes).
pub fn quantize_row_into(row: &[f32], out: &mut [u8]) -> Result<()> {
    if row.len() != LATENT + ROPE || out.len() != ROW_BYTES {
        return Err(Error::InvalidArgument(format!(
            "mla fp8 row: {} values into {} bytes (want {} into {ROW_BYTES})",
            row.len(),
            out.len(),
            LATENT + ROPE
        )));
    }
    for g in 0..GROUPS {
        let x = &row[g * GROUP..(g + 1) * GROUP];
        let s = group_scale(x);
        for (o, &v) in out[g * GROUP..(g + 1) * GROUP].iter_mut().zip(x) {
            *o = f32_to_e4m3fn(v / s);
        }
        out[SCALES_AT + 4 * g..SCALES_AT + 4 * g + 4].copy_from_slice(&s.to_le_bytes());
    }
    for (i, &v) in row[LATENT..].iter().enumerate() {
        out[ROPE_AT + 2 * i..ROPE_AT + 2 * i + 2]
            .copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
    }
    Ok(())
}

/// Quantizes one row of 576 values into a new 656-byte row.
pub fn quantize_row(row: &[f32]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; ROW_BYTES];
    quantize_row_into(row, &mut out)?;
    Ok(out)
}

/// The scale of group `g` of a row.
pub fn row_scale(bytes: &[u8], g: usize) -> f32 {
    let at = SCALES_AT + 4 * g;
    f32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Dequantizes one 656-byte row into `out` (576 values).
pub fn dequantize_row_into(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    if bytes.len() != ROW_BYTES || out.len() != LATENT + ROPE {
        return Err(Error::InvalidArgument(format!(
            "mla fp8 row: {} bytes into {} values (want {ROW_BYTES} into {})",
            bytes.len(),
            out.len(),
            LATENT + ROPE
        )));
    }
    for g in 0..GROUPS {
        let s = row_scale(bytes, g);
        for (o, &b) in out[g * GROUP..(g + 1) * GROUP]
            .iter_mut()
            .zip(&bytes[g * GROUP..(g + 1) * GROUP])
        {
            *o = e4m3fn_to_f32(b) * s;
        }
    }
    for (i, o) in out[LATENT..].iter_mut().enumerate() {
        *o = half::bf16::from_bits(u16::from_le_bytes([
            bytes[ROPE_AT + 2 * i],
            bytes[ROPE_AT + 2 * i + 1],
        ]))
        .to_f32();
    }
    Ok(())
}

/// Dequantizes one 656-byte row into 576 values.
pub fn dequantize_row(bytes: &[u8]) -> Result<Vec<f32>> {
    let mut out = vec![0f32; LATENT + ROPE];
    dequantize_row_into(bytes, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// e4m3 half-ulp bound of |cast(y) − y| for |y| ≤ 448 (see `ops::fp8`).
    fn half_ulp(y: f32) -> f32 {
        if y.abs() >= 1.0 / 64.0 {
            y.abs() / 16.0
        } else {
            1.0 / 1024.0
        }
    }

    fn random_row(r: &mut rand::rngs::StdRng) -> Vec<f32> {
        // Groups of very different magnitudes (one scale each), some tiny values (subnormals).
        let mags = [1e-3f32, 0.5, 30.0, 7e3];
        let mut row: Vec<f32> = (0..LATENT)
            .map(|i| r.gen_range(-1.0f32..1.0) * mags[(i / GROUP + r.gen_range(0..2)) % 4])
            .collect();
        row.extend((0..ROPE).map(|_| r.gen_range(-4.0f32..4.0)));
        row
    }

    #[test]
    fn layout_is_flashmla_656() {
        assert_eq!((SCALES_AT, ROPE_AT, ROW_BYTES), (512, 528, 656));
        assert_eq!(ROW_BYTES % 16, 0, "rows stay 16-byte aligned for cp.async");
    }

    #[test]
    fn round_trip_within_half_ulp_times_scale() {
        let mut r = rand::rngs::StdRng::seed_from_u64(41);
        for _ in 0..200 {
            let row = random_row(&mut r);
            let q = quantize_row(&row).unwrap();
            let dq = dequantize_row(&q).unwrap();
            for g in 0..GROUPS {
                let x = &row[g * GROUP..(g + 1) * GROUP];
                let s = row_scale(&q, g);
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                // Scale from amax, exactly.
                assert_eq!(s, amax.max(AMAX_EPS) / 448.0);
                // The amax element lands on ±448 (0x7e / 0xfe).
                let i = x.iter().position(|v| v.abs() == amax).unwrap();
                assert_eq!(q[g * GROUP + i] & 0x7f, 0x7e, "group {g}: amax byte");
                for (j, &v) in x.iter().enumerate() {
                    let d = dq[g * GROUP + j];
                    let bound = half_ulp(v / s) * s * (1.0 + 1e-6) + v.abs() * 1e-6;
                    assert!(
                        (d - v).abs() <= bound,
                        "group {g} value {j}: {v} -> {d} (scale {s}, bound {bound})"
                    );
                    assert!(
                        q[g * GROUP + j] & 0x7f != 0x7f,
                        "no NaN byte from a finite value"
                    );
                }
            }
            for (i, &v) in row[LATENT..].iter().enumerate() {
                assert_eq!(dq[LATENT + i], half::bf16::from_f32(v).to_f32(), "rope {i}");
            }
        }
    }

    #[test]
    fn quantize_is_round_to_nearest_even_of_x_over_s() {
        let mut r = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..50 {
            let row = random_row(&mut r);
            let q = quantize_row(&row).unwrap();
            for (i, &v) in row[..LATENT].iter().enumerate() {
                let s = row_scale(&q, i / GROUP);
                // Nearest e4m3 value to v / s among all finite codes (ties: even code).
                let y = v / s;
                let best = (0u8..=255)
                    .filter(|c| c & 0x7f != 0x7f)
                    .min_by(|&a, &b| {
                        let (da, db) = ((e4m3fn_to_f32(a) - y).abs(), (e4m3fn_to_f32(b) - y).abs());
                        da.partial_cmp(&db).unwrap().then((a & 1).cmp(&(b & 1)))
                    })
                    .unwrap();
                assert_eq!(
                    e4m3fn_to_f32(q[i]),
                    e4m3fn_to_f32(best),
                    "value {i}: {v} / {s} = {y}"
                );
            }
        }
    }

    #[test]
    fn zero_rows_and_zero_groups() {
        let row = vec![0.0f32; LATENT + ROPE];
        let q = quantize_row(&row).unwrap();
        assert!(q[..LATENT].iter().all(|&b| b == 0));
        for g in 0..GROUPS {
            assert_eq!(row_scale(&q, g), AMAX_EPS / 448.0);
        }
        assert!(dequantize_row(&q).unwrap().iter().all(|&v| v == 0.0));
        // One zero group beside non-zero ones keeps its own (floor) scale and zero bytes.
        let mut row: Vec<f32> = (0..LATENT + ROPE)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        row[GROUP..2 * GROUP].iter_mut().for_each(|v| *v = 0.0);
        let q = quantize_row(&row).unwrap();
        assert!(q[GROUP..2 * GROUP].iter().all(|&b| b == 0));
        assert_eq!(row_scale(&q, 1), AMAX_EPS / 448.0);
        assert!(row_scale(&q, 0) > 1e-3);
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(quantize_row(&[0.0; 575]).is_err());
        assert!(dequantize_row(&[0u8; 655]).is_err());
        let mut out = [0u8; 656];
        assert!(quantize_row_into(&[0.0; 576], &mut out[..600]).is_err());
    }
}
