//! FP8 e4m3fn conversions, block weight (de)quantization and per-token-group activation
//! quantization (CPU reference).
//!
//! Error bound used below, derived from one cast's error: for y = w/s (one f32 rounding,
//! relative 2^-24), cast(y) is within 2^-4·|y| of y in the normal range (half an ulp of a 3-bit
//! mantissa) and within 2^-10 in the subnormal range (half of 2^-9); saturation only removes the
//! f32 excess above 448. Multiplying back by s (one more f32 rounding) gives per element
//! |deq − w| ≤ 2^-4·|w| + 2^-10·s + 2^-20·amax, with s = amax/448 the block's (group's) scale.

use dsv3::ops::fp8::{
    dequant_block_weight, e4m3fn_table, e4m3fn_to_f32, f32_to_e4m3fn, fake_quant_act_per_token_group,
    quantize_act_per_token_group, quantize_block_weight, try_dequant_block_weight, ACT_AMAX_EPS, E4M3_MAX,
};
use proptest::prelude::*;

/// Reference cast by brute force over the 254 finite codes: clamp to ±448, nearest value, ties to
/// the even code (the code's LSB is the mantissa's LSB).
fn brute_force_cast(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let x = x.clamp(-E4M3_MAX, E4M3_MAX) as f64;
    let mut best: Option<(f64, u8)> = None;
    for c in 0u16..=255 {
        let c = c as u8;
        let v = e4m3fn_to_f32(c);
        if v.is_nan() {
            continue;
        }
        // Keep the sign of zero: -0.0 only for negative inputs.
        if v == 0.0 && (c == 0x80) != (x < 0.0 || (x == 0.0 && x.is_sign_negative())) {
            continue;
        }
        let d = (v as f64 - x).abs();
        match best {
            None => best = Some((d, c)),
            Some((bd, bc)) => {
                if d < bd || (d == bd && c & 1 == 0 && bc & 1 == 1) {
                    best = Some((d, c));
                }
            }
        }
    }
    best.map(|b| b.1).unwrap_or(0x7f)
}

#[test]
fn all_codes_decode_and_round_trip() {
    let t = e4m3fn_table();
    assert_eq!(t.len(), 256);
    assert_eq!(e4m3fn_to_f32(0x00), 0.0);
    assert!(e4m3fn_to_f32(0x80) == 0.0 && e4m3fn_to_f32(0x80).is_sign_negative());
    assert_eq!(e4m3fn_to_f32(0x01), 2f32.powi(-9));
    assert_eq!(e4m3fn_to_f32(0x07), 7.0 * 2f32.powi(-9));
    assert_eq!(e4m3fn_to_f32(0x08), 2f32.powi(-6));
    assert_eq!(e4m3fn_to_f32(0x38), 1.0);
    assert_eq!(e4m3fn_to_f32(0xb8), -1.0);
    assert_eq!(e4m3fn_to_f32(0x3c), 1.5);
    assert_eq!(e4m3fn_to_f32(0x7e), 448.0);
    assert_eq!(e4m3fn_to_f32(0xfe), -448.0);
    assert_eq!(e4m3fn_to_f32(0x77), 240.0);
    assert!(e4m3fn_to_f32(0x7f).is_nan() && e4m3fn_to_f32(0xff).is_nan());
    for c in 0u16..=255 {
        let c = c as u8;
        let v = e4m3fn_to_f32(c);
        if c & 0x7f == 0x7f {
            assert!(v.is_nan(), "{c:#04x}");
            continue;
        }
        assert!(v.is_finite(), "{c:#04x}: no infinities");
        assert_eq!(f32_to_e4m3fn(v), c, "round trip of {c:#04x} = {v}");
        // Sign symmetry.
        assert_eq!(e4m3fn_to_f32(c ^ 0x80).to_bits(), (-v).to_bits());
        // Value from the definition: (-1)^s 2^(e-7) (1 + m/8), subnormal 2^-6 · m/8.
        let (e, m) = (((c >> 3) & 15) as i32, (c & 7) as f64);
        let want = if e == 0 { 2f64.powi(-6) * m / 8.0 } else { 2f64.powi(e - 7) * (1.0 + m / 8.0) };
        assert_eq!(v.abs() as f64, want, "{c:#04x}");
    }
    // Positive codes are strictly increasing.
    for c in 0u8..0x7e {
        assert!(e4m3fn_to_f32(c) < e4m3fn_to_f32(c + 1), "{c:#04x}");
    }
}

#[test]
fn ties_round_to_even() {
    for c in 0u8..0x7e {
        let (lo, hi) = (e4m3fn_to_f32(c), e4m3fn_to_f32(c + 1));
        let mid = (lo + hi) / 2.0; // exact: both have ≤ 4 significant bits
        assert_eq!(mid as f64, (lo as f64 + hi as f64) / 2.0);
        let even = if c & 1 == 0 { c } else { c + 1 };
        assert_eq!(f32_to_e4m3fn(mid), even, "tie between {c:#04x} and {:#04x}", c + 1);
        assert_eq!(f32_to_e4m3fn(-mid), even | 0x80);
        // One f32 ulp off the tie goes to the nearer side.
        let below = f32::from_bits(mid.to_bits() - 1);
        let above = f32::from_bits(mid.to_bits() + 1);
        assert_eq!(f32_to_e4m3fn(below), c, "just below the tie after {c:#04x}");
        assert_eq!(f32_to_e4m3fn(above), c + 1, "just above the tie after {c:#04x}");
    }
    // Below half the smallest subnormal: zero; the half itself ties to even (0).
    assert_eq!(f32_to_e4m3fn(2f32.powi(-10)), 0x00);
    assert_eq!(f32_to_e4m3fn(-2f32.powi(-10)), 0x80);
    assert_eq!(f32_to_e4m3fn(1.5 * 2f32.powi(-9)), 0x02);
    assert_eq!(f32_to_e4m3fn(f32::MIN_POSITIVE / 4.0), 0x00, "f32 subnormal input");
}

#[test]
fn saturation_and_nan() {
    for (x, c) in [
        (448.0f32, 0x7e),
        (449.0, 0x7e),
        (464.0, 0x7e), // the tie between 448 and (non-existent) 480
        (479.0, 0x7e),
        (1e30, 0x7e),
        (f32::MAX, 0x7e),
        (f32::INFINITY, 0x7e),
        (-448.0, 0xfe),
        (-1e9, 0xfe),
        (f32::NEG_INFINITY, 0xfe),
    ] {
        assert_eq!(f32_to_e4m3fn(x), c, "{x}");
    }
    assert_eq!(f32_to_e4m3fn(f32::NAN), 0x7f);
    assert_eq!(f32_to_e4m3fn(-f32::NAN), 0x7f);
    assert_eq!(f32_to_e4m3fn(0.0), 0x00);
    assert_eq!(f32_to_e4m3fn(-0.0), 0x80);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn cast_matches_brute_force_in_range(x in -500.0f32..500.0) {
        prop_assert_eq!(f32_to_e4m3fn(x), brute_force_cast(x));
    }

    #[test]
    fn cast_matches_brute_force_any_bits(bits in any::<u32>()) {
        let x = f32::from_bits(bits);
        prop_assert_eq!(f32_to_e4m3fn(x), brute_force_cast(x));
    }

    #[test]
    fn cast_matches_brute_force_small(x in -0.05f32..0.05) {
        prop_assert_eq!(f32_to_e4m3fn(x), brute_force_cast(x));
    }
}

/// Values spanning several orders of magnitude, with a different magnitude per row.
fn weight_strategy() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..300, 1usize..300).prop_flat_map(|(n, k)| {
        let vals = prop::collection::vec((-1.0f32..1.0, -12i32..4), n * k)
            .prop_map(|v| v.into_iter().map(|(m, e)| m * 2f32.powi(e)).collect::<Vec<_>>());
        (Just(n), Just(k), vals)
    })
}

fn check_bound(w: &[f32], deq: &[f32], scale: impl Fn(usize) -> f32) -> Result<(), TestCaseError> {
    for (i, (&x, &y)) in w.iter().zip(deq).enumerate() {
        let s = scale(i);
        let amax = s * E4M3_MAX;
        let tol = 2f32.powi(-4) * x.abs() + 2f32.powi(-10) * s + 2f32.powi(-20) * amax;
        prop_assert!((y - x).abs() <= tol, "element {}: {} vs {} (tol {}, scale {})", i, y, x, tol, s);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn block_weight_round_trip((n, k, w) in weight_strategy(), bn in prop::sample::select(vec![128usize, 64, 7, 1]), bk in prop::sample::select(vec![128usize, 32, 5, 1])) {
        let (q, s) = quantize_block_weight(&w, n, k, (bn, bk));
        let (sn, sk) = (n.div_ceil(bn), k.div_ceil(bk));
        prop_assert_eq!(s.len(), sn * sk);
        prop_assert_eq!(q.len(), n * k);
        // Scale = amax/448 per block (1 for all-zero blocks).
        for bi in 0..sn {
            for bj in 0..sk {
                let mut amax = 0f32;
                for i in bi * bn..((bi + 1) * bn).min(n) {
                    for j in bj * bk..((bj + 1) * bk).min(k) {
                        amax = amax.max(w[i * k + j].abs());
                    }
                }
                let want = if amax > 0.0 { amax / 448.0 } else { 1.0 };
                prop_assert_eq!(s[bi * sk + bj], want);
            }
        }
        let deq = dequant_block_weight(&q, n, k, &s, (bn, bk));
        // Dequantization is exactly code value × its block's scale (edge blocks included).
        for i in 0..n {
            for j in 0..k {
                prop_assert_eq!(deq[i * k + j], e4m3fn_to_f32(q[i * k + j]) * s[(i / bn) * sk + j / bk]);
            }
        }
        check_bound(&w, &deq, |idx| s[(idx / k / bn) * sk + (idx % k) / bk])?;
        prop_assert!(q.iter().all(|&c| c & 0x7f != 0x7f), "no NaN codes");
        // Every non-zero block uses its full range: its amax element lands on ±448.
        for bi in 0..sn {
            for bj in 0..sk {
                let codes = (bi * bn..((bi + 1) * bn).min(n))
                    .flat_map(|i| (bj * bk..((bj + 1) * bk).min(k)).map(move |j| i * k + j));
                let (mut top, mut nonzero) = (false, false);
                for idx in codes {
                    top |= q[idx] & 0x7f == 0x7e;
                    nonzero |= w[idx] != 0.0;
                }
                prop_assert_eq!(top, nonzero, "block ({}, {})", bi, bj);
            }
        }
    }

    #[test]
    fn act_group_quant((rows, cols, x) in weight_strategy(), group in prop::sample::select(vec![128usize, 64, 3])) {
        let (q, s) = quantize_act_per_token_group(&x, rows, cols, group);
        let ng = cols.div_ceil(group);
        prop_assert_eq!(s.len(), rows * ng);
        for r in 0..rows {
            for g in 0..ng {
                let grp = &x[r * cols + g * group..r * cols + ((g + 1) * group).min(cols)];
                let amax = grp.iter().fold(0f32, |m, v| m.max(v.abs()));
                prop_assert_eq!(s[r * ng + g], amax.max(ACT_AMAX_EPS) / 448.0);
            }
        }
        let deq: Vec<f32> = (0..rows * cols)
            .map(|i| e4m3fn_to_f32(q[i]) * s[(i / cols) * ng + (i % cols) / group])
            .collect();
        check_bound(&x, &deq, |i| s[(i / cols) * ng + (i % cols) / group])?;
        let mut fake = x.clone();
        fake_quant_act_per_token_group(&mut fake, rows, cols, group);
        prop_assert_eq!(fake, deq, "fake quant == quantize then dequantize");
    }
}

#[test]
fn zero_blocks_and_groups() {
    let w = vec![0f32; 3 * 5];
    let (q, s) = quantize_block_weight(&w, 3, 5, (2, 2));
    assert!(q.iter().all(|&c| c == 0));
    assert!(s.iter().all(|&v| v == 1.0), "all-zero block scale is 1");
    assert_eq!(dequant_block_weight(&q, 3, 5, &s, (2, 2)), w);

    let (q, s) = quantize_act_per_token_group(&w, 3, 5, 4);
    assert!(q.iter().all(|&c| c == 0));
    assert!(s.iter().all(|&v| v == ACT_AMAX_EPS / 448.0), "eps floor 1e-10");
    let mut x = w.clone();
    fake_quant_act_per_token_group(&mut x, 3, 5, 4);
    assert_eq!(x, w);
}

#[test]
fn group_amax_maps_to_448_and_saturates() {
    // The element with the group's amax becomes ±448 exactly (x / (amax/448) rounds to 448 or a
    // hair above, which saturates).
    let x = vec![0.3f32, -1.7, 0.001, 1.7, 5.0, -2.5, 0.0, 1e-3];
    let (q, s) = quantize_act_per_token_group(&x, 2, 4, 4);
    assert_eq!(q[1], 0xfe);
    assert_eq!(q[3], 0x7e);
    assert_eq!(q[4], 0x7e);
    assert_eq!(s, vec![1.7 / 448.0, 5.0 / 448.0]);
}

#[test]
fn parallel_paths_match_serial() {
    // 64 × 2048 = 131072 elements: above the helpers' parallel threshold.
    let (rows, cols) = (64usize, 2048usize);
    let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 2654435761) % 1000) as f32 / 37.0 - 13.0).collect();
    let (q, s) = quantize_act_per_token_group(&x, rows, cols, 128);
    let mut fake = x.clone();
    fake_quant_act_per_token_group(&mut fake, rows, cols, 128);
    for r in 0..rows {
        let (qr, sr) = quantize_act_per_token_group(&x[r * cols..(r + 1) * cols], 1, cols, 128);
        assert_eq!(&q[r * cols..(r + 1) * cols], &qr[..]);
        assert_eq!(&s[r * 16..(r + 1) * 16], &sr[..]);
        let mut fr = x[r * cols..(r + 1) * cols].to_vec();
        fake_quant_act_per_token_group(&mut fr, 1, cols, 128);
        assert_eq!(&fake[r * cols..(r + 1) * cols], &fr[..]);
    }
    // Block dequant, 300 × 300 (partial edge blocks) through the parallel path.
    let (n, k) = (300usize, 300usize);
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 40503) % 997) as f32 / 100.0 - 5.0).collect();
    let (qw, sw) = quantize_block_weight(&w, n, k, (128, 128));
    assert_eq!(sw.len(), 9);
    let deq = dequant_block_weight(&qw, n, k, &sw, (128, 128));
    for i in 0..n {
        for j in 0..k {
            assert_eq!(deq[i * k + j], e4m3fn_to_f32(qw[i * k + j]) * sw[(i / 128) * 3 + j / 128]);
        }
    }
}

#[test]
fn dequant_rejects_bad_shapes() {
    let q = vec![0x38u8; 6];
    assert!(try_dequant_block_weight(&q, 2, 3, &[1.0], (2, 2)).is_err(), "needs [1, 2] scales");
    assert!(try_dequant_block_weight(&q, 2, 4, &[1.0, 1.0], (2, 2)).is_err(), "q length");
    assert!(try_dequant_block_weight(&q, 2, 3, &[1.0, 1.0], (0, 2)).is_err(), "zero block");
    let ok = try_dequant_block_weight(&q, 2, 3, &[2.0, 3.0], (2, 2)).expect("valid");
    assert_eq!(ok, vec![2.0, 2.0, 3.0, 2.0, 2.0, 3.0]);
    let msg = try_dequant_block_weight(&q, 2, 3, &[1.0], (2, 2)).expect_err("bad").to_string();
    assert!(msg.contains("[1, 2]"), "{msg}");
}
