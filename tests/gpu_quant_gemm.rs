//! INT8 (block / channel) and AWQ W4A16 GEMMs, dense and grouped by expert, and the INT8
//! activation quantization (src/backend/quant_gemm.rs, kernels/quant_gemm.cuh) against the CPU
//! reference, on every NVIDIA code variant this build embedded for the `quant_gemm` module (sm_90a
//! cubin, compute_80 / compute_89 PTX JIT-compiled by the driver, the fatbin, NVRTC), every tile
//! (BM 16 / 64 / 128, the weight-streaming kernel's 8- and 64-row tiles, INT8's sm_90a wgmma
//! v2 tile `wg2` and the small-M sm_90a `wgs` tiles (INT8 and AWQ) where a stream loads their
//! cubin) and split-K on and off.
//!
//! Reference: activations quantized with `ops::int8` (the same rule as the GPU, so the codes are
//! shared) and dequantized; INT8 weights dequantized with the checkpoint loader's
//! `dequant_int8_block` / `dequant_int8_channel`, AWQ weights with its `dequant_awq` (on the
//! checkpoint's own [K, N/8] layout; the GPU gets the `awq_repack`ed words); products in f64, not
//! rounded. Outputs are poisoned (NaN) before each launch; fresh random data per proptest case;
//! relative Frobenius error.
//!
//! Tolerances. The GEMMs' weights are exact on the GPU (INT8: s32 sums of integer codes; AWQ: the
//! integer q − z in bf16, the f16 scale applied to the f32 partial of each K tile), so the error is
//! the bf16 rounding of the output (at most 2^-9 ≈ 1.95e-3 relative per element, hence in the
//! Frobenius norm) plus f32 accumulation (~1e-6): 2.5e-3. The activation quantization is exact
//! (codes equal, scales bit-equal); the fused SiLU·mul variant may flip a code by one where the
//! GPU's expf and Rust's exp differ in the last ulp (≤ 1% of codes).
//!
//! Ignored in the CPU suite; run on the GPU machine with `--include-ignored`. `DSV3_TEST_NVRTC=0`
//! skips the NVRTC variant. Two processes, so that a fault of one kernel generation (a sticky CUDA
//! error poisons the context) cannot hide the other's results: `--skip wg2` (mma.sync, streaming,
//! generic) and `wg2` (the tests that force the v2 tile; note that the default plans of the
//! first group take v2 too for BM-128 shapes on sm_90a streams, as in production).

// Test helpers take the whole case (shapes, ids, closures); common::gpu's stream table type is theirs.
#![allow(clippy::too_many_arguments, clippy::type_complexity)]

mod common;

use common::gpu::*;
use dsv3::backend::quant_gemm::{
    self as qg, AwqWeight, Int8Scheme, QuantPlan, QuantTile, SplitKWorkspace,
};
use dsv3::backend::gemm_wgs::{awq_wgs_available, awq_wgs_enabled, wgs_available, WgsTile};
use dsv3::error::Error;
use dsv3::backend::fp8_gemm::FusedMoeWorkspace;
use dsv3::backend::quant_moe::{awq_moe, awq_moe_wgs_tile, int8_moe, MoeAwqWeights, MoeInt8Weights};
use dsv3::backend::{DType, DeviceTensor, GpuStream};
use dsv3::model::checkpoint::{dequant_awq, dequant_int8_block, dequant_int8_channel};
use dsv3::ops::int8::{
    dequant_act_int8, quantize_act_int8_per_token, quantize_act_int8_per_token_group,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::Rng;

/// bf16 output rounding (2^-9) + f32 accumulation; see the module comment.
const GEMM_TOL: f64 = 2.5e-3;

fn streams() -> &'static [(String, dsv3::backend::cuda::CudaStream)] {
    variant_streams(Some("quant_gemm"))
}

/// Quantized activations: codes, scales, dequantized values.
struct QAct {
    codes: Vec<i8>,
    scales: Vec<f32>,
    deq: Vec<f32>,
}

fn quant_act(scheme: Int8Scheme, x: &[f32], rows: usize, cols: usize) -> QAct {
    let (codes, scales) = match scheme {
        Int8Scheme::Block => quantize_act_int8_per_token_group(x, rows, cols, 128),
        Int8Scheme::Channel => quantize_act_int8_per_token(x, rows, cols),
    };
    let group = if scheme == Int8Scheme::Block {
        128
    } else {
        cols.max(1)
    };
    let deq = dequant_act_int8(&codes, &scales, rows, cols, group);
    QAct { codes, scales, deq }
}

/// A random INT8 weight [n, k]: codes in [-127, 127], scales per 128×128 block or per row (varying
/// magnitudes, as in real checkpoints), and the dequantized values (the loader's CPU path).
struct QW {
    codes: Vec<i8>,
    scales: Vec<f32>,
    deq: Vec<f32>,
}

fn int8_weight(r: &mut StdRng, scheme: Int8Scheme, n: usize, k: usize) -> QW {
    let codes: Vec<i8> = (0..n * k)
        .map(|_| r.gen_range(-127i32..=127) as i8)
        .collect();
    let scales: Vec<f32> = (0..scheme.w_scales_len(n, k))
        .map(|_| r.gen_range(1e-4f32..2e-3))
        .collect();
    let bytes: Vec<u8> = codes.iter().map(|&c| c as u8).collect();
    let deq = match scheme {
        Int8Scheme::Block => dequant_int8_block(&bytes, n, k, &scales, (128, 128)),
        Int8Scheme::Channel => dequant_int8_channel(&bytes, n, k, &scales),
    };
    QW { codes, scales, deq }
}

fn up_i8(s: &dyn GpuStream, shape: &[usize], v: &[i8]) -> DeviceTensor {
    DeviceTensor::from_slice(s, shape, v).unwrap()
}

fn up_f32(s: &dyn GpuStream, shape: &[usize], v: &[f32]) -> DeviceTensor {
    DeviceTensor::from_slice(s, shape, v).unwrap()
}

/// The split-K factors tried with `tile`: none and 3 (v2 has no split-K, wgs splits by stream-K
/// whatever the plan says).
fn splits_of(tile: QuantTile, k_tiles: usize) -> Vec<usize> {
    if tile.reads_sorted_rows() {
        vec![1]
    } else {
        vec![1, 3.min(k_tiles).max(1)]
    }
}

/// Every tile of the mma.sync / streaming kernels (the `wg2` tests run the v2 tile).
const TILES: [QuantTile; 5] = [QuantTile::ALL[0], QuantTile::ALL[1], QuantTile::ALL[2], QuantTile::STREAM[0], QuantTile::STREAM[1]];
const WG2: [QuantTile; 2] = [QuantTile::Wg2, QuantTile::Wg2Pair];
/// The small-M sm_90a entries (run by the `wg2` process too).
const WGS: [QuantTile; 3] = [QuantTile::Wgs(WgsTile::N16), QuantTile::Wgs(WgsTile::N32), QuantTile::Wgs(WgsTile::N64)];

/// The AWQ small-M sm_90a entries (`awq_gemm_wgs_g*_n*`; run by the `wg2` process).
const AWQ_WGS: [QuantTile; 2] = [QuantTile::Wgs(WgsTile::N16), QuantTile::Wgs(WgsTile::N64)];

/// Whether `tiles` can run on `s`: the v2 and wgs tiles only where the stream loads their sm_90a
/// cubin (elsewhere they are refused: [`int8_wg2_streams_present`] checks that).
fn tiles_run_on(s: &dyn GpuStream, tiles: &[QuantTile]) -> bool {
    let wg2 = tiles.iter().any(|t| t.is_wgmma2());
    let wgs = tiles.iter().any(|t| matches!(t, QuantTile::Wgs(_)));
    (!wg2 || qg::int8_wgmma2_available(s)) && (!wgs || wgs_available(s))
}

/// The v2 tile runs only on streams that load its sm_90a cubin: fails loudly when none does (the
/// build lacks sm_90a or the GPU is not an sm_90) or when the default plans would not take it
/// there, and checks that the other variants refuse it with a typed error instead of launching a
/// kernel that would trap.
fn int8_wg2_streams_present() {
    let mut ok = 0;
    for (v, s) in streams() {
        let s: &dyn GpuStream = s;
        if qg::int8_wgmma2_available(s) {
            assert!(qg::int8_wgmma2_enabled(s), "{v}: DSV3_INT8_WGMMA2=0 keeps the default plans off the v2 tile");
            let bm128 = QuantPlan { tile: QuantTile::Bm128, splits: 3 };
            assert_eq!(qg::int8_plan_for_stream(s, bm128), QuantPlan { tile: QuantTile::Wg2, splits: 1 }, "{v}");
            ok += 1;
            continue;
        }
        let (m, n, k) = (1, 8, 16);
        let a = up_i8(s, &[m, k], &[1; 16]);
        let b = up_i8(s, &[n, k], &[1; 128]);
        for scheme in Int8Scheme::ALL {
            let asc = up_f32(s, &[scheme.a_scales_len(m, k)], &[1.0]);
            let bsc = up_f32(s, &[scheme.w_scales_len(n, k)], &vec![1.0; scheme.w_scales_len(n, k)]);
            let out = poisoned(s, DType::Bf16, &[m, n]);
            for tile in [QuantTile::Wg2, WGS[0]] {
                let plan = QuantPlan { tile, splits: 1 };
                match qg::int8_gemm_with(s, &mut SplitKWorkspace::new(), scheme, plan, &out, &a, &asc, &b, &bsc) {
                    Err(e @ Error::KernelUnavailable { .. }) => assert!(e.to_string().contains("sm_90a"), "{v}: {e}"),
                    r => panic!("{v} {scheme:?}: the {} tile must be refused where its cubin is not loaded, got {r:?}", tile.label()),
                }
            }
        }
    }
    assert!(ok > 0, "no stream loads the sm_90a cubin of int8_gemm_wgmma2: build with sm_90a in DSV3_CUDA_ARCHS and run on an H100 / H200");
}

/// The AWQ wgs entries run only on streams that load their sm_90a cubin: fails loudly when none
/// does, checks that the default plans take them there (dense 9–64 rows, MoE 16–32 rows per active
/// expert: `gemm_wgs::dense_tile` / `moe_tile`; N % 32 == 0, as the zeros are TMA-copied) and
/// that the other variants refuse them with a typed error, as the sm_90a streams refuse an N of 8.
fn awq_wgs_streams_present() {
    let mut ok = 0;
    for (v, s) in streams() {
        let s: &dyn GpuStream = s;
        let (m, n, k, g) = (1, 8, 64, 64);
        let mut r = rng(5);
        let w = awq_weights(&mut r, 1, n, k, g);
        let d = up_awq(s, &w, 1, n, k, g);
        let a = up(s, &[m, k], &vec![1.0; k], DType::Bf16);
        let out = poisoned(s, DType::Bf16, &[m, n]);
        if awq_wgs_available(s) {
            assert!(awq_wgs_enabled(s), "{v}: DSV3_GEMM_WGS=0 keeps the default plans off the wgs tiles");
            for (m, tile) in [(9, WgsTile::N16), (16, WgsTile::N16), (17, WgsTile::N64), (64, WgsTile::N64)] {
                assert_eq!(qg::awq_plan_dense_for_stream(s, m, 2112, 7168).tile, QuantTile::Wgs(tile), "{v} m{m}");
            }
            assert_eq!(qg::awq_plan_dense_for_stream(s, 1, 2112, 7168).tile, QuantTile::STREAM[0], "{v}");
            assert_eq!(qg::awq_plan_dense_for_stream(s, 65, 2112, 7168).tile, QuantTile::Bm128, "{v}");
            assert_eq!(awq_moe_wgs_tile(s, 8, 32, 7168, 2048), None, "{v}: 1 token, top-8 of 32");
            assert_eq!(awq_moe_wgs_tile(s, 160, 8, 7168, 2048), Some(WgsTile::N64), "{v}: 20 rows per expert");
            assert_eq!(awq_moe_wgs_tile(s, 400, 8, 7168, 2048), None, "{v}: 50 rows per expert");
            assert_eq!(awq_moe_wgs_tile(s, 160, 8, 7168, 100), None, "{v}: gate_up N 200 % 32 != 0");
            for (m, n) in [(16, 200), (64, 136), (16, 8)] {
                assert!(!matches!(qg::awq_plan_dense_for_stream(s, m, n, 1024).tile, QuantTile::Wgs(_)), "{v} m{m} n{n}: N % 32 != 0");
            }
            for tile in AWQ_WGS {
                let plan = QuantPlan { tile, splits: 1 };
                match qg::awq_gemm_with(s, &mut SplitKWorkspace::new(), plan, &out, &a, &awq_operand(&d, 1, n, k, g)) {
                    Err(e @ Error::InvalidArgument(_)) => assert!(e.to_string().contains("multiple of 32"), "{v}: {e}"),
                    r => panic!("{v}: the AWQ {} tile must refuse N = {n}, got {r:?}", tile.label()),
                }
            }
            ok += 1;
            continue;
        }
        for tile in AWQ_WGS {
            let plan = QuantPlan { tile, splits: 1 };
            match qg::awq_gemm_with(s, &mut SplitKWorkspace::new(), plan, &out, &a, &awq_operand(&d, 1, n, k, g)) {
                Err(e @ Error::KernelUnavailable { .. }) => assert!(e.to_string().contains("sm_90a"), "{v}: {e}"),
                r => panic!("{v}: the AWQ {} tile must be refused where its cubin is not loaded, got {r:?}", tile.label()),
            }
        }
    }
    assert!(ok > 0, "no stream loads the sm_90a cubin of awq_gemm_wgs: build with sm_90a in DSV3_CUDA_ARCHS and run on an H100 / H200");
}

// ---- INT8 dense ----------------------------------------------------------------------------------

fn check_int8_dense(seed: u64, m: usize, n: usize, k: usize) {
    check_int8_dense_tiles(seed, m, n, k, &TILES)
}

fn check_int8_dense_tiles(seed: u64, m: usize, n: usize, k: usize, tiles: &[QuantTile]) {
    for scheme in Int8Scheme::ALL {
        let mut r = rng(seed ^ scheme as u64);
        let x = rand_vec(&mut r, m * k, 3.0);
        let qa = quant_act(scheme, &x, m, k);
        let qw = int8_weight(&mut r, scheme, n, k);
        let want = matmul_nt(&qa.deq, &qw.deq, m, n, k);
        let kt = k.div_ceil(128);
        for (v, s) in streams() {
            let s: &dyn GpuStream = s;
            if !tiles_run_on(s, tiles) {
                continue;
            }
            let mut ws = SplitKWorkspace::new();
            let a = up_i8(s, &[m, k], &qa.codes);
            let asc = up_f32(s, &[qa.scales.len()], &qa.scales);
            let b = up_i8(s, &[n, k], &qw.codes);
            let bsc = up_f32(s, &[qw.scales.len()], &qw.scales);
            for &tile in tiles {
                for splits in splits_of(tile, kt) {
                    // Twice with the same workspace: the kernel must leave it zeroed.
                    for rep in 0..2 {
                        let out = poisoned(s, DType::Bf16, &[m, n]);
                        qg::int8_gemm_with(
                            s,
                            &mut ws,
                            scheme,
                            QuantPlan { tile, splits },
                            &out,
                            &a,
                            &asc,
                            &b,
                            &bsc,
                        )
                        .unwrap();
                        let what = format!("{v} int8 {scheme:?} m{m} n{n} k{k} {} split{splits} rep{rep}", tile.label());
                        let got = down(s, &out);
                        assert_close(&what, &got, &want, GEMM_TOL);
                        if tile.reads_sorted_rows() {
                            // A wrong 128 × 128 tile (a scale, a row of the schedule) cannot hide.
                            let worst = max_tile_error(&got, &want, m, n);
                            assert!(worst <= 2.0 * GEMM_TOL, "{what}: a 128 × 128 tile has relative error {worst:e}");
                        }
                    }
                }
            }
            let out = poisoned(s, DType::Bf16, &[m, n]);
            qg::int8_gemm(s, &mut ws, scheme, &out, &a, &asc, &b, &bsc).unwrap();
            assert_close(
                &format!("{v} int8 {scheme:?} auto plan m{m} n{n} k{k}"),
                &down(s, &out),
                &want,
                GEMM_TOL,
            );
        }
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn int8_dense_v3_shapes_decode() {
    // M = 1 on a real V3 width (split-K from the plan), partial N blocks (2112, 576).
    check_int8_dense(1, 1, 2112, 7168);
    check_int8_dense(2, 7, 576, 1536);
    check_int8_dense(3, 64, 384, 2048);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn int8_stream_dense_token_counts() {
    // Every token-group boundary of the streaming kernel up to its 64-row tile and past it; N = 200
    // (a partial 16-row warp tile, three warps past N), K = 400 (a 16-byte last K tile).
    for (i, m) in [1usize, 2, 7, 8, 9, 16, 17, 31, 32, 33, 63, 64, 65, 100, 128].into_iter().enumerate() {
        check_int8_dense_tiles(60 + i as u64, m, 200, 400, &QuantTile::STREAM);
    }
    // A full K = 7168 without split-K (14 staged activation chunks) and kv_a's N = 576.
    check_int8_dense_tiles(80, 9, 576, 7168, &QuantTile::STREAM);
    check_int8_dense_tiles(81, 64, 256, 16384, &QuantTile::STREAM);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn int8_dense_prefill_shape() {
    check_int8_dense(4, 300, 256, 512);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_int8_dense_edges() {
    int8_wg2_streams_present();
    // M around the 64-row warpgroup halves and the 128-row tile; N and K partial blocks (K % 16
    // == 0, K < 128 included); M = 4096: more tiles than SMs, every CTA walks several.
    for (i, (m, n, k)) in [(1, 2112, 7168), (63, 576, 1040), (64, 256, 512), (65, 300, 208), (129, 136, 16), (257, 1000, 1040), (4096, 520, 400)]
        .into_iter()
        .enumerate()
    {
        check_int8_dense_tiles(110 + i as u64, m, n, k, &WG2);
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_int8_wgs_dense() {
    int8_wg2_streams_present();
    // Token counts around the 16 / 64 tiles, partial N and K blocks, K < 128; few blocks per CTA and
    // many (tiles split over CTAs, meeting in the workspace); V3 shapes at M = 1, 64, 128.
    for (i, m) in [1usize, 15, 17, 64, 65, 128, 200].into_iter().enumerate() {
        check_int8_dense_tiles(130 + i as u64, m, 200, 400, &WGS);
    }
    for (i, (m, n, k)) in [(5, 136, 16), (1, 2112, 7168), (64, 576, 1536), (128, 7168, 2048), (3, 4096, 16384)].into_iter().enumerate() {
        check_int8_dense_tiles(140 + i as u64, m, n, k, &WGS);
    }
    // 65–128 rows, K ≥ 4096, fewer 128-row tiles than SMs: block INT8's default plan takes the
    // 64-token tile (two M tiles; its auto-plan result is checked above), channel INT8 keeps v2.
    for (v, s) in streams() {
        if wgs_available(s) {
            assert_eq!(qg::int8_plan_dense_for_stream(s, Int8Scheme::Block, 100, 300, 4096).tile, QuantTile::Wgs(WgsTile::N64), "{v}");
            assert!(!matches!(qg::int8_plan_dense_for_stream(s, Int8Scheme::Channel, 100, 300, 4096).tile, QuantTile::Wgs(_)), "{v}");
        }
    }
    check_int8_dense_tiles(146, 100, 300, 4096, &WGS);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_int8_dense_v3_shapes_m256() {
    int8_wg2_streams_present();
    for (i, (n, k)) in [(2112usize, 7168usize), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)].into_iter().enumerate() {
        check_int8_dense_tiles(120 + i as u64, 256, n, k, &WG2);
    }
}

proptest! {
    #![proptest_config(cfg(8))]

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn int8_dense_random_shapes(seed: u64, m in 1usize..200, n in 1usize..300, k16 in 1usize..40) {
        check_int8_dense(seed, m, n, k16 * 16);
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn wg2_int8_dense_random_shapes(seed: u64, m in prop::sample::select(vec![1usize, 63, 64, 65, 127, 128, 129, 200, 4096]), n in 1usize..400, k16 in 1usize..48) {
        int8_wg2_streams_present();
        check_int8_dense_tiles(seed, m, n, k16 * 16, &WG2);
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn int8_act_quant_exact(seed: u64, rows in 1usize..40, cols in 1usize..700) {
        let mut r = rng(seed);
        // Values, with exact ties for rint to settle (half-integers times a power-of-two scale).
        let mut x: Vec<f32> = rand_vec(&mut r, rows * cols, 4.0).into_iter().map(bf16r).collect();
        for v in x.iter_mut().step_by(7) {
            *v = (v.round() + 0.5) * 0.25;
        }
        for scheme in Int8Scheme::ALL {
            let want = quant_act(scheme, &x, rows, cols);
            for (v, s) in streams() {
                let s: &dyn GpuStream = s;
                for dt in [DType::F32, DType::Bf16] {
                    let dx = up(s, &[rows, cols], &x, dt);
                    let q = poisoned(s, DType::I8, &[rows, cols]);
                    let sc = poisoned(s, DType::F32, &[scheme.a_scales_len(rows, cols)]);
                    qg::int8_act_quant(s, scheme, &q, &sc, &dx).unwrap();
                    s.synchronize().unwrap();
                    let codes = q.to_vec::<i8>(s).unwrap();
                    let scales = sc.to_vec::<f32>(s).unwrap();
                    let bad_s = scales.iter().zip(&want.scales).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                    prop_assert_eq!(bad_s, 0, "{} {:?} {}: {} scales differ", v, scheme, dt, bad_s);
                    let bad = codes.iter().zip(&want.codes).filter(|(a, b)| a != b).count();
                    prop_assert_eq!(bad, 0, "{} {:?} {}: {} codes differ", v, scheme, dt, bad);
                }
            }
        }
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn int8_silu_mul_quant_matches(seed: u64, rows in 1usize..40, cols in 1usize..700) {
        let mut r = rng(seed);
        let x: Vec<f32> = rand_vec(&mut r, rows * 2 * cols, 4.0).into_iter().map(bf16r).collect();
        let h: Vec<f32> = (0..rows * cols).map(|i| {
            let (row, c) = (i / cols, i % cols);
            let g = x[row * 2 * cols + c];
            g / (1.0 + (-g).exp()) * x[row * 2 * cols + cols + c]
        }).collect();
        for scheme in Int8Scheme::ALL {
            let want = quant_act(scheme, &h, rows, cols);
            for (v, s) in streams() {
                let s: &dyn GpuStream = s;
                let dx = up(s, &[rows, 2 * cols], &x, DType::Bf16);
                let q = poisoned(s, DType::I8, &[rows, cols]);
                let sc = poisoned(s, DType::F32, &[scheme.a_scales_len(rows, cols)]);
                qg::int8_silu_mul_quant(s, scheme, &q, &sc, &dx).unwrap();
                s.synchronize().unwrap();
                let codes = q.to_vec::<i8>(s).unwrap();
                let scales = sc.to_vec::<f32>(s).unwrap();
                assert_close(&format!("{v} {scheme:?} silu_mul_quant scales"), &scales, &want.scales, 1e-6);
                let far = codes.iter().zip(&want.codes).filter(|(a, b)| (**a as i32 - **b as i32).abs() > 1).count();
                let off = codes.iter().zip(&want.codes).filter(|(a, b)| a != b).count();
                prop_assert_eq!(far, 0, "{} {:?}: codes off by more than one", v, scheme);
                prop_assert!(off * 100 <= codes.len(), "{} {:?}: {} of {} codes differ", v, scheme, off, codes.len());
            }
        }
    }
}

// ---- grouped (MoE) ---------------------------------------------------------------------------------

/// Tiles the host expects `moe_align_tiles` to produce: Σ_e ⌈count_e / bm⌉ (experts without
/// tokens: none).
fn expected_tiles(ids: &[i32], e: usize, bm: usize) -> i32 {
    let mut cnt = vec![0usize; e];
    for &id in ids {
        if id >= 0 && (id as usize) < e {
            cnt[id as usize] += 1;
        }
    }
    cnt.iter().map(|c| c.div_ceil(bm) as i32).sum()
}

/// Runs `launch(stream, ws, plan, out, alignment)` for every tile and split on every variant and
/// compares each routed pair's row with `want_row(token, expert)` ([n] values).
fn check_grouped(
    what: &str,
    tiles: &[QuantTile],
    t: usize,
    e: usize,
    topk: usize,
    n: usize,
    k_tiles: usize,
    ids: &[i32],
    want: &dyn Fn(usize, usize) -> Vec<f32>,
    launch: &dyn Fn(
        &dyn GpuStream,
        &mut SplitKWorkspace,
        QuantPlan,
        &DeviceTensor,
        &qg::TileAlignment,
    ),
) {
    // The reference once per (token, expert).
    let mut ref_rows = std::collections::HashMap::new();
    for (p, &id) in ids.iter().enumerate() {
        if id >= 0 && (id as usize) < e {
            ref_rows
                .entry((p / topk, id as usize))
                .or_insert_with(|| want(p / topk, id as usize));
        }
    }
    for (v, s) in streams() {
        let s: &dyn GpuStream = s;
        if !tiles_run_on(s, tiles) {
            continue;
        }
        let dids = up_i32(s, &[t, topk], ids);
        let mut ws = SplitKWorkspace::new();
        for &tile in tiles {
            let al = qg::moe_align_tiles(s, &dids, e, tile.bm()).unwrap();
            s.synchronize().unwrap();
            let nt = al.num_tiles.to_vec::<i32>(s).unwrap()[0];
            assert_eq!(
                nt,
                expected_tiles(ids, e, tile.bm()),
                "{v} {what}: tiles of bm {}",
                tile.bm()
            );
            let p2r = al.pair_to_row.to_vec::<i32>(s).unwrap();
            for splits in splits_of(tile, k_tiles) {
                let out = poisoned(s, DType::Bf16, &[al.max_tiles * tile.bm(), n]);
                launch(s, &mut ws, QuantPlan { tile, splits }, &out, &al);
                let got_all = down(s, &out);
                let (mut got, mut exp) = (Vec::new(), Vec::new());
                for (p, &id) in ids.iter().enumerate() {
                    if id < 0 || id as usize >= e {
                        assert_eq!(
                            p2r[p], -1,
                            "{v} {what}: pair {p} of expert {id} must not be routed here"
                        );
                        continue;
                    }
                    let row = p2r[p] as usize;
                    got.extend_from_slice(&got_all[row * n..(row + 1) * n]);
                    exp.extend_from_slice(&ref_rows[&(p / topk, id as usize)]);
                }
                assert_close(
                    &format!(
                        "{v} {what} t{t} e{e} topk{topk} n{n} {} split{splits}",
                        tile.label()
                    ),
                    &got,
                    &exp,
                    GEMM_TOL,
                );
            }
        }
    }
}

/// One grouped INT8 GEMM of `tiles` against the reference. `gather`: rows read the token's
/// activation through the sorted ids (gate_up); otherwise `a` holds one row per sorted row
/// (down: built here from the alignment, zeros for padding) and is read row by row (TMA on v2).
fn check_int8_grouped(
    seed: u64,
    scheme: Int8Scheme,
    tiles: &[QuantTile],
    gather: bool,
    t: usize,
    e: usize,
    topk: usize,
    n: usize,
    k: usize,
    ids: &[i32],
) {
    let mut r = rng(seed);
    let x = rand_vec(&mut r, t * k, 2.0);
    let qa = quant_act(scheme, &x, t, k);
    let ws: Vec<QW> = (0..e).map(|_| int8_weight(&mut r, scheme, n, k)).collect();
    let want =
        |tok: usize, ex: usize| matmul_nt(&qa.deq[tok * k..(tok + 1) * k], &ws[ex].deq, 1, n, k);
    let codes: Vec<i8> = ws.iter().flat_map(|w| w.codes.iter().copied()).collect();
    let scales: Vec<f32> = ws.iter().flat_map(|w| w.scales.iter().copied()).collect();
    // Uploads per stream (the launch closure gets the stream).
    let launch = |s: &dyn GpuStream,
                  wsp: &mut SplitKWorkspace,
                  plan: QuantPlan,
                  out: &DeviceTensor,
                  al: &qg::TileAlignment| {
        let (a, asc) = if gather {
            (up_i8(s, &[t, k], &qa.codes), up_f32(s, &[qa.scales.len()], &qa.scales))
        } else {
            let sorted = al.sorted_ids.to_vec::<i32>(s).unwrap();
            // Only the first num_tiles · bm sorted ids are written (the rest of the buffer is stale).
            let used = al.num_tiles.to_vec::<i32>(s).unwrap()[0] as usize * plan.tile.bm();
            let sc = qa.scales.len() / t;
            let (mut codes, mut scales) = (vec![0i8; sorted.len() * k], vec![0f32; sorted.len() * sc]);
            for (r, &id) in sorted.iter().enumerate().take(used).filter(|(_, &id)| id >= 0) {
                let tok = id as usize / topk;
                codes[r * k..(r + 1) * k].copy_from_slice(&qa.codes[tok * k..(tok + 1) * k]);
                scales[r * sc..(r + 1) * sc].copy_from_slice(&qa.scales[tok * sc..(tok + 1) * sc]);
            }
            (up_i8(s, &[sorted.len(), k], &codes), up_f32(s, &[scales.len()], &scales))
        };
        let w = up_i8(s, &[e, n, k], &codes);
        let wsc = up_f32(s, &[scales.len()], &scales);
        let rows = if gather { al.rows(true, topk) } else { al.rows(false, 1) };
        qg::int8_grouped_gemm(s, wsp, scheme, plan, out, &a, &asc, &w, &wsc, &rows).unwrap();
    };
    check_grouped(
        &format!("int8 {scheme:?} grouped gather {gather}"),
        tiles,
        t,
        e,
        topk,
        n,
        k.div_ceil(128),
        ids,
        &want,
        &launch,
    );
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn int8_grouped_cases() {
    let mut r = rng(11);
    for scheme in Int8Scheme::ALL {
        // One token, 8 of 64 experts (most without tokens), partial N and K blocks.
        let ids = distinct_ids(&mut r, 1, 64, 8);
        check_int8_grouped(11, scheme, &TILES, true, 1, 64, 8, 200, 1040, &ids);
        // A few tokens, some pairs on other ranks' experts (-1 and >= E).
        let mut ids = distinct_ids(&mut r, 5, 16, 4);
        ids[1] = -1;
        ids[6] = 99;
        check_int8_grouped(12, scheme, &TILES, true, 5, 16, 4, 256, 512, &ids);
        // 150 tokens all on expert 2 (topk 1): several tiles of one expert, the others empty.
        check_int8_grouped(13, scheme, &TILES, true, 150, 6, 1, 136, 256, &[2i32; 150]);
        // 40 tokens over 8 experts (≈ 20 rows each): three 8-row tiles or one 64-row tile with
        // three token groups per expert; K = 7168 (56 K tiles).
        let ids = distinct_ids(&mut r, 40, 8, 4);
        check_int8_grouped(14, scheme, &TILES, true, 40, 8, 4, 256, 7168, &ids);
    }
}

proptest! {
    #![proptest_config(cfg(6))]

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn int8_grouped_random(seed: u64, t in 1usize..48, e in 1usize..10, topk in 1usize..4, n in 1usize..300, k16 in 1usize..24, block in any::<bool>()) {
        let topk = topk.min(e);
        let mut r = rng(seed ^ 0x5eed);
        let ids = distinct_ids(&mut r, t, e, topk);
        let scheme = if block { Int8Scheme::Block } else { Int8Scheme::Channel };
        check_int8_grouped(seed, scheme, &TILES, true, t, e, topk, n, k16 * 16, &ids);
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_int8_wgs_grouped_cases() {
    int8_wg2_streams_present();
    let mut r = rng(91);
    for scheme in Int8Scheme::ALL {
        // One row per sorted row (the fused MoE gathers them first: the wgs tiles take no row ids).
        let ids = distinct_ids(&mut r, 1, 64, 8);
        check_int8_grouped(91, scheme, &WGS, false, 1, 64, 8, 200, 1040, &ids);
        let mut ids = distinct_ids(&mut r, 40, 5, 4);
        ids[3] = -1;
        check_int8_grouped(92, scheme, &WGS, false, 40, 8, 4, 256, 512, &ids);
        check_int8_grouped(93, scheme, &WGS, false, 150, 6, 1, 136, 256, &[2i32; 150]);
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_int8_grouped_cases() {
    int8_wg2_streams_present();
    let mut r = rng(71);
    for scheme in Int8Scheme::ALL {
        // Rows gathered from the tokens (cp.async, gate_up) and one row per sorted row (TMA, down).
        for gather in [true, false] {
            // One token, 8 of 64 experts (most without tokens), partial N and K blocks.
            let ids = distinct_ids(&mut r, 1, 64, 8);
            check_int8_grouped(71, scheme, &WG2, gather, 1, 64, 8, 200, 1040, &ids);
            // 40 tokens on experts 0..5 of 8 (5..7 get none), one pair on another rank's expert.
            let mut ids = distinct_ids(&mut r, 40, 5, 4);
            ids[3] = -1;
            check_int8_grouped(72, scheme, &WG2, gather, 40, 8, 4, 256, 512, &ids);
            // Every token on expert 2: two M tiles of it (the second partial), the others empty.
            check_int8_grouped(73, scheme, &WG2, gather, 150, 6, 1, 136, 256, &[2i32; 150]);
            // Several M tiles per expert (≈ 300 rows each), 16 K blocks, N past a 128 block.
            let ids = distinct_ids(&mut r, 600, 4, 2);
            check_int8_grouped(74, scheme, &WG2, gather, 600, 4, 2, 200, 2048, &ids);
        }
    }
}

// ---- AWQ -----------------------------------------------------------------------------------------

/// Random AWQ experts in the checkpoint layout: qweight [E, K, N/8], qzeros [E, K/G, N/8] (words),
/// scales [E, K/G, N] (f16 values), and each expert's dequantized Linear weight [N, K].
struct Awq {
    qweight: Vec<i32>,
    qzeros: Vec<i32>,
    scales: Vec<f32>,
    deq: Vec<Vec<f32>>,
}

fn awq_weights(r: &mut StdRng, e: usize, n: usize, k: usize, g: usize) -> Awq {
    let qweight: Vec<i32> = (0..e * k * n / 8).map(|_| r.gen::<u32>() as i32).collect();
    let qzeros: Vec<i32> = (0..e * (k / g) * n / 8)
        .map(|_| r.gen::<u32>() as i32)
        .collect();
    let scales: Vec<f32> = (0..e * (k / g) * n)
        .map(|_| half::f16::from_f32(r.gen_range(1e-3f32..1e-2)).to_f32())
        .collect();
    let (wq, zq, sq) = (k * n / 8, (k / g) * n / 8, (k / g) * n);
    let words = |v: &[i32]| v.iter().map(|&w| w as u32).collect::<Vec<u32>>();
    let deq = (0..e)
        .map(|x| {
            dequant_awq(
                &words(&qweight[x * wq..(x + 1) * wq]),
                &words(&qzeros[x * zq..(x + 1) * zq]),
                &scales[x * sq..(x + 1) * sq],
                n,
                k,
                g,
            )
        })
        .collect();
    Awq {
        qweight,
        qzeros,
        scales,
        deq,
    }
}

struct AwqDev {
    qweight: DeviceTensor,
    qzeros: DeviceTensor,
    scales: DeviceTensor,
}

fn up_awq(s: &dyn GpuStream, w: &Awq, e: usize, n: usize, k: usize, g: usize) -> AwqDev {
    let packed = qg::awq_repack_experts(&w.qweight, e, k, n).unwrap();
    AwqDev {
        qweight: up_i32(s, &[e, n / 8, k / 32, 32], &packed),
        qzeros: up_i32(s, &[e, k / g, n / 8], &w.qzeros),
        scales: up(s, &[e, k / g, n], &w.scales, DType::F16),
    }
}

/// Whether the AWQ `tiles` can run on `s` (the wgs ones need the sm_90a cubin:
/// [`awq_wgs_streams_present`] checks the refusal elsewhere).
fn awq_tiles_run_on(s: &dyn GpuStream, tiles: &[QuantTile]) -> bool {
    !tiles.iter().any(|t| matches!(t, QuantTile::Wgs(_))) || awq_wgs_available(s)
}

fn check_awq_dense(seed: u64, m: usize, n: usize, k: usize, g: usize) {
    check_awq_dense_tiles(seed, m, n, k, g, &TILES)
}

fn check_awq_dense_tiles(seed: u64, m: usize, n: usize, k: usize, g: usize, tiles: &[QuantTile]) {
    let mut r = rng(seed);
    let x: Vec<f32> = rand_vec(&mut r, m * k, 2.0)
        .into_iter()
        .map(bf16r)
        .collect();
    let w = awq_weights(&mut r, 1, n, k, g);
    let want = matmul_nt(&x, &w.deq[0], m, n, k);
    for (v, s) in streams() {
        let s: &dyn GpuStream = s;
        if !awq_tiles_run_on(s, tiles) {
            continue;
        }
        let d = up_awq(s, &w, 1, n, k, g);
        let aw = AwqWeight {
            qweight: &d.qweight,
            qzeros: &d.qzeros,
            scales: &d.scales,
            experts: 1,
            n,
            k,
            group: g,
        };
        let a = up(s, &[m, k], &x, DType::Bf16);
        let mut ws = SplitKWorkspace::new();
        for &tile in tiles {
            for splits in splits_of(tile, k / 64) {
                for rep in 0..2 {
                    let out = poisoned(s, DType::Bf16, &[m, n]);
                    qg::awq_gemm_with(s, &mut ws, QuantPlan { tile, splits }, &out, &a, &aw)
                        .unwrap();
                    let what = format!("{v} awq g{g} m{m} n{n} k{k} {} split{splits} rep{rep}", tile.label());
                    let got = down(s, &out);
                    assert_close(&what, &got, &want, GEMM_TOL);
                    if tile.reads_sorted_rows() {
                        // A wrong 128 × 128 tile (a group's zero or scale, a row of the schedule)
                        // cannot hide in the whole output's error.
                        let worst = max_tile_error(&got, &want, m, n);
                        assert!(worst <= 2.0 * GEMM_TOL, "{what}: a 128 × 128 tile has relative error {worst:e}");
                    }
                }
            }
        }
        let out = poisoned(s, DType::Bf16, &[m, n]);
        qg::awq_gemm(s, &mut ws, &out, &a, &aw).unwrap();
        assert_close(
            &format!("{v} awq g{g} auto plan m{m} n{n} k{k}"),
            &down(s, &out),
            &want,
            GEMM_TOL,
        );
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn awq_stream_dense_token_counts() {
    // The streaming kernel's token-group boundaries up to and past its 64-row tile; N = 200 (the
    // second 128-row block: warp 4 with column groups 24 (in) and 25 (past N), three warps past
    // N), K = 1024 (16 K tiles: four staged chunks without split-K).
    for g in [64, 128] {
        for (i, m) in [1usize, 7, 8, 9, 31, 33, 64, 65].into_iter().enumerate() {
            check_awq_dense_tiles(90 + i as u64, m, 200, 1024, g, &QuantTile::STREAM);
        }
    }
    // The weight ring through shared memory (8 / 6 stages per warp, activation chunks of 8 / 1 K
    // tiles): many rounds (K = 7168: 112 K tiles, splits 1 and 3: 38 / 36 per split), and fewer
    // K tiles than the ring ahead (K = 384 / 448: 6 / 7 tiles, 2 / 3 per split), partial token
    // groups and N % 16 == 8.
    for g in [64, 128] {
        check_awq_dense_tiles(110, 3, 264, 7168, g, &QuantTile::STREAM);
        check_awq_dense_tiles(111, 13, 136, if g == 64 { 448 } else { 384 }, g, &QuantTile::STREAM);
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn awq_dense_decode_and_prefill() {
    for g in [64, 128] {
        check_awq_dense(21, 1, 2112, 7168, g);
        check_awq_dense(22, 16, 4096, 1024, g);
        check_awq_dense(23, 300, 264, 512, g);
    }
}

proptest! {
    #![proptest_config(cfg(8))]

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn awq_dense_random_shapes(seed: u64, m in 1usize..150, n8 in 1usize..40, kg in 1usize..8, g128 in any::<bool>()) {
        let g = if g128 { 128 } else { 64 };
        check_awq_dense(seed, m, n8 * 8, kg * g, g);
    }
}

/// One grouped AWQ GEMM of `tiles` against the reference. `gather`: rows read the token's
/// activation through the sorted ids (gate_up); otherwise `a` holds one bf16 row per sorted row
/// (sorted x or h: built here from the alignment, zeros for padding) read row by row.
fn check_awq_grouped(
    seed: u64,
    tiles: &[QuantTile],
    gather: bool,
    t: usize,
    e: usize,
    topk: usize,
    n: usize,
    k: usize,
    g: usize,
    ids: &[i32],
) {
    let mut r = rng(seed);
    let x: Vec<f32> = rand_vec(&mut r, t * k, 2.0)
        .into_iter()
        .map(bf16r)
        .collect();
    let w = awq_weights(&mut r, e, n, k, g);
    let want = |tok: usize, ex: usize| matmul_nt(&x[tok * k..(tok + 1) * k], &w.deq[ex], 1, n, k);
    let launch = |s: &dyn GpuStream,
                  wsp: &mut SplitKWorkspace,
                  plan: QuantPlan,
                  out: &DeviceTensor,
                  al: &qg::TileAlignment| {
        let d = up_awq(s, &w, e, n, k, g);
        let aw = awq_operand(&d, e, n, k, g);
        if gather {
            let a = up(s, &[t, k], &x, DType::Bf16);
            qg::awq_grouped_gemm(s, wsp, plan, out, &a, &aw, &al.rows(true, topk)).unwrap();
        } else {
            let sorted = al.sorted_ids.to_vec::<i32>(s).unwrap();
            // Only the first num_tiles · bm sorted ids are written (the rest of the buffer is stale).
            let used = al.num_tiles.to_vec::<i32>(s).unwrap()[0] as usize * plan.tile.bm();
            let mut rows = vec![0f32; sorted.len() * k];
            for (row, &id) in sorted.iter().enumerate().take(used).filter(|(_, &id)| id >= 0) {
                let tok = id as usize / topk;
                rows[row * k..(row + 1) * k].copy_from_slice(&x[tok * k..(tok + 1) * k]);
            }
            let a = up(s, &[sorted.len(), k], &rows, DType::Bf16);
            qg::awq_grouped_gemm(s, wsp, plan, out, &a, &aw, &al.rows(false, 1)).unwrap();
        }
    };
    check_grouped(
        &format!("awq g{g} grouped gather {gather}"),
        tiles,
        t,
        e,
        topk,
        n,
        k / 64,
        ids,
        &want,
        &launch,
    );
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn awq_grouped_cases() {
    let mut r = rng(31);
    for g in [64, 128] {
        let ids = distinct_ids(&mut r, 1, 64, 8);
        check_awq_grouped(31, &TILES, true, 1, 64, 8, 200, 1024, g, &ids);
        let mut ids = distinct_ids(&mut r, 5, 16, 4);
        ids[1] = -1;
        ids[6] = 99;
        check_awq_grouped(32, &TILES, true, 5, 16, 4, 256, 512, g, &ids);
        check_awq_grouped(33, &TILES, true, 150, 6, 1, 136, 256, g, &[2i32; 150]);
    }
}

proptest! {
    #![proptest_config(cfg(6))]

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn awq_grouped_random(seed: u64, t in 1usize..48, e in 1usize..10, topk in 1usize..4, n8 in 1usize..36, kg in 1usize..5, g128 in any::<bool>()) {
        let topk = topk.min(e);
        let g = if g128 { 128 } else { 64 };
        let mut r = rng(seed ^ 0xa3c);
        let ids = distinct_ids(&mut r, t, e, topk);
        check_awq_grouped(seed, &TILES, true, t, e, topk, n8 * 8, kg * g, g, &ids);
    }
}

// ---- whole MoE layers (the pipeline shared with the FP8 fused MoE) --------------------------------

/// silu(gate) · up of one row of gate_up [2I].
fn silu_mul_row(gu: &[f32]) -> Vec<f32> {
    let i = gu.len() / 2;
    (0..i).map(|c| gu[c] / (1.0 + (-gu[c]).exp()) * gu[i + c]).collect()
}

/// `out0 + Σ_k w[t, k] · expert(ids[t, k], t)` rounded to bf16 as the kernels' bf16 output;
/// ids outside [0, e) are skipped.
fn moe_reference(out0: &[f32], ids: &[i32], tw: &[f32], t: usize, topk: usize, e: usize, h: usize, expert: impl Fn(usize, usize) -> Vec<f32>) -> Vec<f32> {
    let mut want = out0.to_vec();
    for tok in 0..t {
        for k in 0..topk {
            let id = ids[tok * topk + k];
            if id < 0 || id as usize >= e {
                continue;
            }
            let y = expert(id as usize, tok);
            for c in 0..h {
                want[tok * h + c] += tw[tok * topk + k] * y[c];
            }
        }
    }
    want.into_iter().map(bf16r).collect()
}

/// One routed-expert layer on `int8_moe` against the reference: x quantized per the scheme,
/// gate_up rounded to bf16 (the GEMM's output), SiLU·mul, quantized again, down (bf16), the
/// weighted sum. Tolerance 2e-2, as the FP8 fused MoE's: bf16 outputs (2^-9) plus the codes of h
/// that the GPU's expf may move by one step.
fn check_int8_moe(seed: u64, scheme: Int8Scheme, x_f32: bool, t: usize, e: usize, topk: usize, h: usize, inter: usize, ids: &[i32]) {
    let mut r = rng(seed);
    let x: Vec<f32> = rand_vec(&mut r, t * h, 2.0).into_iter().map(bf16r).collect();
    let tw: Vec<f32> = (0..t * topk).map(|_| r.gen_range(0.1f32..1.0)).collect();
    let out0: Vec<f32> = rand_vec(&mut r, t * h, 1.0).into_iter().map(bf16r).collect();
    let w13: Vec<QW> = (0..e).map(|_| int8_weight(&mut r, scheme, 2 * inter, h)).collect();
    let w2: Vec<QW> = (0..e).map(|_| int8_weight(&mut r, scheme, h, inter)).collect();
    let qx = quant_act(scheme, &x, t, h);
    let want = moe_reference(&out0, ids, &tw, t, topk, e, h, |ex, tok| {
        let gu: Vec<f32> = matmul_nt(&qx.deq[tok * h..(tok + 1) * h], &w13[ex].deq, 1, 2 * inter, h).into_iter().map(bf16r).collect();
        let qh = quant_act(scheme, &silu_mul_row(&gu), 1, inter);
        matmul_nt(&qh.deq, &w2[ex].deq, 1, h, inter).into_iter().map(bf16r).collect()
    });
    let codes = |ws: &[QW]| ws.iter().flat_map(|q| q.codes.iter().copied()).collect::<Vec<i8>>();
    let scales = |ws: &[QW]| ws.iter().flat_map(|q| q.scales.iter().copied()).collect::<Vec<f32>>();
    for (v, s) in streams() {
        let s: &dyn GpuStream = s;
        let (d13, d13s) = (up_i8(s, &[e, 2 * inter, h], &codes(&w13)), up_f32(s, &[e * scheme.w_scales_len(2 * inter, h)], &scales(&w13)));
        let (d2, d2s) = (up_i8(s, &[e, h, inter], &codes(&w2)), up_f32(s, &[e * scheme.w_scales_len(h, inter)], &scales(&w2)));
        let w = MoeInt8Weights { scheme, w13: &d13, w13_scale: &d13s, w2: &d2, w2_scale: &d2s };
        let dx = up(s, &[t, h], &x, if x_f32 { DType::F32 } else { DType::Bf16 });
        let dids = up_i32(s, &[t, topk], ids);
        let dtw = up_f32(s, &[t, topk], &tw);
        let mut wsp = FusedMoeWorkspace::new();
        // Twice: the split-K workspace must be left zeroed and the buffers reused.
        for rep in 0..2 {
            let out = up(s, &[t, h], &out0, DType::Bf16);
            int8_moe(s, &mut wsp, &out, &dx, &dids, &dtw, &w, 1.0).unwrap();
            assert_close(&format!("{v} int8_moe {scheme:?} t{t} e{e} topk{topk} h{h} i{inter} run{rep}"), &down(s, &out), &want, 2e-2);
        }
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn int8_moe_matches_the_reference() {
    let mut r = rng(41);
    // Decode-like (1 token, many experts), prefill-like (tiles of 64 / 128), other ranks' ids.
    let ids = distinct_ids(&mut r, 1, 32, 8);
    check_int8_moe(41, Int8Scheme::Block, true, 1, 32, 8, 256, 128, &ids);
    check_int8_moe(42, Int8Scheme::Channel, false, 1, 32, 8, 256, 48, &ids);
    let ids = distinct_ids(&mut r, 300, 8, 2);
    check_int8_moe(43, Int8Scheme::Block, false, 300, 8, 2, 160, 256, &ids);
    check_int8_moe(44, Int8Scheme::Channel, true, 300, 8, 2, 160, 32, &ids);
    let ids: Vec<i32> = distinct_ids(&mut r, 20, 6, 3).into_iter().map(|id| if id >= 4 { -1 } else { id }).collect();
    check_int8_moe(45, Int8Scheme::Block, true, 20, 4, 3, 128, 128, &ids);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_int8_moe_default_plan() {
    // At ≥ 65 rows per active expert the grouped plans take BM 128, which the sm_90a streams run
    // on the v2 tile (int8_wg2_streams_present checks int8_plan_for_stream there).
    int8_wg2_streams_present();
    for (pairs, e) in [(600, 8), (150, 2)] {
        let (plan, _) = qg::plan_grouped(qg::QuantKernel::Int8, pairs, e, 512, 400, qg::DEFAULT_SMS);
        assert_eq!(plan.tile, QuantTile::Bm128, "{pairs} pairs on {e} experts");
    }
    let mut r = rng(81);
    // 300 tokens, top-2 of 8 experts (≈ 75 rows each); hidden 400: a partial K block in gate_up
    // and a partial N block in down.
    let ids = distinct_ids(&mut r, 300, 8, 2);
    check_int8_moe(81, Int8Scheme::Block, false, 300, 8, 2, 400, 256, &ids);
    check_int8_moe(82, Int8Scheme::Channel, true, 300, 8, 2, 400, 48, &ids);
    // Every token on expert 2 (two M tiles, the second partial), the other experts without a token.
    check_int8_moe(83, Int8Scheme::Block, true, 150, 6, 1, 256, 128, &[2i32; 150]);
    check_int8_moe(84, Int8Scheme::Channel, false, 150, 6, 1, 256, 128, &[2i32; 150]);
    // A decode batch (16 tokens, top-8 of 32: 4 rows per expert), which the default plan runs on
    // the small-M wgmma entry (16-token tiles over the gathered rows) on sm_90a streams.
    let ids = distinct_ids(&mut r, 16, 32, 8);
    assert_eq!(dsv3::backend::gemm_wgs::moe_tile(Int8Scheme::Block.wgs_format(), 128, 32), Some(WgsTile::N16));
    check_int8_moe(85, Int8Scheme::Block, true, 16, 32, 8, 512, 128, &ids);
    check_int8_moe(86, Int8Scheme::Channel, false, 16, 32, 8, 512, 128, &ids);
}

/// One routed-expert layer on `awq_moe`: bf16 x, gate_up (bf16), SiLU·mul (bf16), down (bf16).
/// Tolerance 2e-2: bf16 roundings of gate_up, h and y (2^-9 each).
fn check_awq_moe(seed: u64, t: usize, e: usize, topk: usize, h: usize, inter: usize, g: usize, ids: &[i32]) {
    let mut r = rng(seed);
    let x: Vec<f32> = rand_vec(&mut r, t * h, 2.0).into_iter().map(bf16r).collect();
    let tw: Vec<f32> = (0..t * topk).map(|_| r.gen_range(0.1f32..1.0)).collect();
    let out0: Vec<f32> = rand_vec(&mut r, t * h, 1.0).into_iter().map(bf16r).collect();
    let w13 = awq_weights(&mut r, e, 2 * inter, h, g);
    let w2 = awq_weights(&mut r, e, h, inter, g);
    let want = moe_reference(&out0, ids, &tw, t, topk, e, h, |ex, tok| {
        let gu: Vec<f32> = matmul_nt(&x[tok * h..(tok + 1) * h], &w13.deq[ex], 1, 2 * inter, h).into_iter().map(bf16r).collect();
        let hv: Vec<f32> = silu_mul_row(&gu).into_iter().map(bf16r).collect();
        matmul_nt(&hv, &w2.deq[ex], 1, h, inter).into_iter().map(bf16r).collect()
    });
    for (v, s) in streams() {
        let s: &dyn GpuStream = s;
        let (d13, d2) = (up_awq(s, &w13, e, 2 * inter, h, g), up_awq(s, &w2, e, h, inter, g));
        let w = MoeAwqWeights { w13: awq_operand(&d13, e, 2 * inter, h, g), w2: awq_operand(&d2, e, h, inter, g) };
        let dx = up(s, &[t, h], &x, DType::Bf16);
        let dids = up_i32(s, &[t, topk], ids);
        let dtw = up_f32(s, &[t, topk], &tw);
        let mut wsp = FusedMoeWorkspace::new();
        for rep in 0..2 {
            let out = up(s, &[t, h], &out0, DType::Bf16);
            awq_moe(s, &mut wsp, &out, &dx, &dids, &dtw, &w, 1.0).unwrap();
            assert_close(&format!("{v} awq_moe g{g} t{t} e{e} topk{topk} h{h} i{inter} run{rep}"), &down(s, &out), &want, 2e-2);
        }
    }
}

fn awq_operand(d: &AwqDev, e: usize, n: usize, k: usize, g: usize) -> AwqWeight<'_> {
    AwqWeight { qweight: &d.qweight, qzeros: &d.qzeros, scales: &d.scales, experts: e, n, k, group: g }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn awq_moe_matches_the_reference() {
    let mut r = rng(51);
    let ids = distinct_ids(&mut r, 1, 32, 8);
    check_awq_moe(51, 1, 32, 8, 256, 128, 128, &ids);
    let ids = distinct_ids(&mut r, 300, 8, 2);
    check_awq_moe(52, 300, 8, 2, 128, 64, 64, &ids);
    let ids: Vec<i32> = distinct_ids(&mut r, 20, 6, 3).into_iter().map(|id| if id >= 4 { -1 } else { id }).collect();
    check_awq_moe(53, 20, 4, 3, 192, 64, 64, &ids);
}

// ---- AWQ on the small-M sm_90a entry (`awq_gemm_wgs_*`; the `wg2` process) -----------------------

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_awq_wgs_dense() {
    awq_wgs_streams_present();
    for g in [64, 128] {
        // Token counts around the 16 / 64 tiles (65: the tiled plan, the wgs tiles forced: two M
        // tiles); N = 224: a partial second 128-row tile (column groups 16..27 in, 28.. out, their
        // scale and zero columns zero-filled by TMA); K = 1024: 8 blocks, split over CTAs (tiles
        // meeting in the workspace). (The entry takes N % 32 == 0 only: its zeros' TMA rows.)
        for (i, m) in [1usize, 2, 15, 16, 17, 33, 63, 64, 65].into_iter().enumerate() {
            check_awq_dense_tiles(150 + i as u64, m, 224, 1024, g, &AWQ_WGS);
        }
        // N % 128 == 32: the second tile's rows of consumer warpgroup 1 all past N.
        check_awq_dense_tiles(160, 5, 160, 8 * g, g, &AWQ_WGS);
    }
    // G = 64 with K % 128 == 64 (the last block half past K: zero-filled words and activations,
    // the zeros' and scales' second group row zero-filled past K / G), K < 128, and a long K (112
    // blocks).
    check_awq_dense_tiles(161, 3, 288, 448, 64, &AWQ_WGS);
    check_awq_dense_tiles(162, 17, 128, 64, 64, &AWQ_WGS);
    check_awq_dense_tiles(163, 9, 256, 14336, 128, &AWQ_WGS);
    // V3 shapes at M = 1 and 64 (fused q_a + kv_a, expert down, kv_a's N = 576).
    for (i, (m, n, k)) in [(1, 2112, 7168), (64, 2112, 7168), (1, 7168, 2048), (64, 7168, 2048), (16, 576, 7168)].into_iter().enumerate() {
        for g in [64, 128] {
            check_awq_dense_tiles(170 + i as u64, m, n, k, g, &AWQ_WGS);
        }
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_awq_wgs_grouped_cases() {
    awq_wgs_streams_present();
    let mut r = rng(191);
    for g in [64, 128] {
        // One row per sorted row (the fused MoE gathers x first: the wgs tiles take no row ids).
        // One token on 8 of 64 experts (most without a tile), partial N.
        let ids = distinct_ids(&mut r, 1, 64, 8);
        check_awq_grouped(191, &AWQ_WGS, false, 1, 64, 8, 224, 1024, g, &ids);
        // 40 tokens on experts 0..5 of 8 (≈ 32 rows each: two 16-row tiles or one 64-row one),
        // one pair on another rank's expert.
        let mut ids = distinct_ids(&mut r, 40, 5, 4);
        ids[3] = -1;
        check_awq_grouped(192, &AWQ_WGS, false, 40, 8, 4, 256, 512, g, &ids);
        // Every token on expert 2: several M tiles of one expert (the last partial), the others empty.
        check_awq_grouped(193, &AWQ_WGS, false, 150, 6, 1, 160, 256, g, &[2i32; 150]);
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_awq_moe_default_plan() {
    // awq_wgs_streams_present checks that the AWQ MoE plan takes the wgs tiles at ≤ 32 rows per
    // active expert on the sm_90a streams; these layers run there on them (gather of the bf16 x
    // rows, gate_up, SiLU·mul, down) and on the other variants' plans.
    awq_wgs_streams_present();
    let mut r = rng(251);
    // 1 token, top-8 of 32 (wgs16); hidden 448 at G 64: a half block in gate_up's K.
    let ids = distinct_ids(&mut r, 1, 32, 8);
    check_awq_moe(251, 1, 32, 8, 448, 128, 64, &ids);
    check_awq_moe(252, 1, 32, 8, 256, 128, 128, &ids);
    // 20 tokens, top-3 of 4 (15 rows each: wgs64), some pairs on other ranks' experts.
    let ids: Vec<i32> = distinct_ids(&mut r, 20, 6, 3).into_iter().map(|id| if id >= 4 { -1 } else { id }).collect();
    check_awq_moe(253, 20, 4, 3, 256, 128, 128, &ids);
    // 40 tokens, top-4 of 8 (20 rows each: wgs64), G 64 with hidden 448: a half block in gate_up's
    // K and a partial 128-row tile in down's N.
    let ids = distinct_ids(&mut r, 40, 8, 4);
    check_awq_moe(254, 40, 8, 4, 448, 256, 64, &ids);
}
