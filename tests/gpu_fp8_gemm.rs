//! FP8 block-scaled GEMM and fused MoE (src/backend/fp8_gemm.rs) against the CPU reference with
//! activation-quantization emulation, on every NVIDIA code variant this build embedded (sm_90a
//! cubin, compute_80 / compute_89 PTX JIT-compiled by the driver, the fatbin, NVRTC), every tile
//! (BM 16 / 64 / 128 and the weight-streaming kernel's 8- and 64-row tiles) and split-K on and
//! off.
//!
//! Reference: activations quantized per token group with `ops::fp8::quantize_act_per_token_group`
//! and dequantized; weights quantized with `ops::fp8::quantize_block_weight` and dequantized with
//! `ops::fp8::dequant_block_weight`; products in f64; the intermediate tensors the GPU stores in
//! bf16 (gate_up, expert outputs) are rounded to bf16 in the reference too. Outputs are poisoned
//! (NaN) before each launch; fresh random data per proptest case; relative Frobenius error.
//!
//! Ignored in the CPU suite; run on the GPU machine with `--include-ignored`. `DSV3_TEST_NVRTC=0`
//! skips the NVRTC variant. Three processes, so that a fault (a sticky CUDA error poisons the
//! context) in one kernel generation cannot hide the others' results:
//!   `--skip wgmma --skip wg2` (mma.sync / generic), `wgmma` (sm_90a v1), `wg2` (sm_90a v2 and the
//!   small-M `wgs` entries, whose tests are named `wg2_*` for that reason).

mod common;

use common::gpu::*;
use dsv3::backend::fp8_gemm::{self as fg, Fp8Plan, Fp8Tile, Fp8Workspace, FusedMoeWorkspace, MoeFp8Weights};
use dsv3::backend::gemm_wgs::{wgs_available, WgsTile};
use dsv3::backend::stream_gemm::StreamTile;
use dsv3::backend::{DType, DeviceTensor, Fp8E4m3fn, Fp8E4m3fnuz, GpuStream};
use dsv3::ops::fp8::{dequant_block_weight, e4m3fn_to_f32, quantize_act_per_token_group, quantize_block_weight};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::Rng;

/// A quantized activation: codes, scales, and the values they stand for.
struct QAct {
    codes: Vec<u8>,
    scales: Vec<f32>,
    deq: Vec<f32>,
}

fn quant_act(x: &[f32], rows: usize, cols: usize) -> QAct {
    let (codes, scales) = quantize_act_per_token_group(x, rows, cols, 128);
    let ng = cols.div_ceil(128);
    let deq = (0..rows * cols).map(|i| e4m3fn_to_f32(codes[i]) * scales[(i / cols) * ng + (i % cols) / 128]).collect();
    QAct { codes, scales, deq }
}

/// A block-quantized weight [n, k]: codes, scale_inv, dequantized values.
struct QW {
    codes: Vec<u8>,
    scales: Vec<f32>,
    deq: Vec<f32>,
}

fn quant_weight(r: &mut StdRng, n: usize, k: usize) -> QW {
    // Per-block magnitudes vary, as in real checkpoints.
    let mut w = rand_vec(r, n * k, 1.0);
    let sk = k.div_ceil(128);
    let mags: Vec<f32> = (0..n.div_ceil(128) * sk).map(|_| r.gen_range(0.01f32..0.2)).collect();
    for (i, v) in w.iter_mut().enumerate() {
        *v *= mags[(i / k / 128) * sk + (i % k) / 128];
    }
    let (codes, scales) = quantize_block_weight(&w, n, k, (128, 128));
    let deq = dequant_block_weight(&codes, n, k, &scales, (128, 128));
    QW { codes, scales, deq }
}

fn up_fp8(s: &dyn GpuStream, shape: &[usize], codes: &[u8], dtype: DType) -> DeviceTensor {
    match dtype {
        DType::E4m3fn => DeviceTensor::from_slice(s, shape, &codes.iter().map(|&c| Fp8E4m3fn(c)).collect::<Vec<_>>()).unwrap(),
        // Same bits = half the value in e4m3fnuz (the caller doubles the scales); 0x80 (-0) is NaN there.
        DType::E4m3fnuz => DeviceTensor::from_slice(s, shape, &codes.iter().map(|&c| Fp8E4m3fnuz(if c == 0x80 { 0 } else { c })).collect::<Vec<_>>()).unwrap(),
        d => panic!("not a float8 type: {d}"),
    }
}

fn up_f32(s: &dyn GpuStream, shape: &[usize], v: &[f32], mul: f32) -> DeviceTensor {
    DeviceTensor::from_slice(s, shape, &v.iter().map(|x| x * mul).collect::<Vec<_>>()).unwrap()
}

/// The mma.sync / generic tiles, the weight-streaming kernel's included. The sm_90a wgmma tiles
/// run only in the tests named `wgmma_*` (v1) and `wg2_*` (v2), each group in its own process
/// (see the top of the file).
const MMA_TILES: [Fp8Tile; 5] = [Fp8Tile::Bm16, Fp8Tile::Bm64, Fp8Tile::Bm128, STREAM_TILES[0], STREAM_TILES[1]];
const STREAM_TILES: [Fp8Tile; 2] = [Fp8Tile::Stream(StreamTile::T8), Fp8Tile::Stream(StreamTile::T64)];
const WGMMA_TILES: [Fp8Tile; 1] = [Fp8Tile::Wg128];
const WG2_TILES: [Fp8Tile; 2] = [Fp8Tile::Wg2, Fp8Tile::Wg2Pair];
const WGS_TILES: [Fp8Tile; 3] = [Fp8Tile::Wgs(WgsTile::N16), Fp8Tile::Wgs(WgsTile::N32), Fp8Tile::Wgs(WgsTile::N64)];

/// Whether every one of `tiles` (forced plans) can run on `s`: the sm_90a-only entries where its
/// cubin is loaded ([`sm90a_streams_present`] checks that the others refuse them).
fn runs_on(s: &dyn GpuStream, tiles: &[Fp8Tile]) -> bool {
    let wg2 = tiles.iter().any(|t| t.is_wgmma2());
    let wgs = tiles.iter().any(|t| matches!(t, Fp8Tile::Wgs(_)));
    (!wg2 || fg::wgmma2_available(s)) && (!wgs || wgs_available(s))
}

/// `tile` (v2 or wgs) runs only on streams that load its sm_90a cubin: fails loudly when none does
/// (the build lacks sm_90a or the GPU is not an sm_90), and checks that the other variants refuse
/// it with an error instead of launching a kernel that would trap.
fn sm90a_streams_present(tile: Fp8Tile) {
    let mut ok = 0;
    for (v, s) in all_streams() {
        if runs_on(s, &[tile]) {
            ok += 1;
            continue;
        }
        let (m, n, k) = (1, 8, 16);
        let a = DeviceTensor::from_slice(s, &[m, k], &vec![Fp8E4m3fn(0); m * k]).unwrap();
        let asc = up_f32(s, &[m, 1], &[1.0], 1.0);
        let b = DeviceTensor::from_slice(s, &[n, k], &vec![Fp8E4m3fn(0); n * k]).unwrap();
        let bsc = up_f32(s, &[1, 1], &[1.0], 1.0);
        let out = DeviceTensor::poisoned(s, DType::Bf16, &[m, n]).unwrap();
        let e = fg::fp8_gemm_with(s, &mut Fp8Workspace::new(), Fp8Plan { tile, splits: 1 }, &out, &a, &asc, &b, &bsc);
        let msg = e.expect_err("an sm_90a-only tile must be refused where its cubin is not loaded").to_string();
        assert!(msg.contains("sm_90a"), "{v} {}: {msg}", tile.label());
    }
    assert!(ok > 0, "no stream loads the sm_90a cubin of {}: build with sm_90a in DSV3_CUDA_ARCHS and run on an H100 / H200", tile.kernel_name(DType::E4m3fn));
}

fn wg2_streams_present() {
    sm90a_streams_present(Fp8Tile::Wg2);
}

/// Runs each of `tiles` × {no split, split} of one dense shape on every variant; with the mma
/// tiles also e4m3fnuz (generic path) and the shape-chosen plan.
fn check_dense(seed: u64, m: usize, n: usize, k: usize, tiles: &[Fp8Tile]) {
    let mma = tiles.contains(&Fp8Tile::Bm64);
    let mut r = rng(seed);
    let x = rand_vec(&mut r, m * k, 3.0);
    let qa = quant_act(&x, m, k);
    let qw = quant_weight(&mut r, n, k);
    let want: Vec<f32> = matmul_nt(&qa.deq, &qw.deq, m, n, k).into_iter().map(bf16r).collect();
    let kt = k.div_ceil(128);
    for (v, s) in all_streams() {
        let s: &dyn GpuStream = s;
        if !runs_on(s, tiles) {
            continue; // refused there (sm90a_streams_present checks it)
        }
        let mut ws = Fp8Workspace::new();
        for f8 in [DType::E4m3fn, DType::E4m3fnuz] {
            if f8 == DType::E4m3fnuz && !mma {
                continue;
            }
            let mul = if f8 == DType::E4m3fnuz { 2.0 } else { 1.0 };
            let a = up_fp8(s, &[m, k], &qa.codes, f8);
            let asc = up_f32(s, &[m, kt], &qa.scales, mul);
            let b = up_fp8(s, &[n, k], &qw.codes, f8);
            let bsc = up_f32(s, &[n.div_ceil(128), kt], &qw.scales, mul);
            for &tile in tiles {
                // e4m3fnuz runs the generic path on NVIDIA: one tile is enough.
                if f8 == DType::E4m3fnuz && tile != Fp8Tile::Bm64 {
                    continue;
                }
                // v2 has no split-K; wgs splits by stream-K whatever the plan says.
                let splits_list = if tile.reads_sorted_rows() { vec![1] } else { vec![1, 3.min(kt).max(1)] };
                for splits in splits_list {
                    // Twice with the same workspace: the kernel must leave it zeroed.
                    for rep in 0..2 {
                        let out = DeviceTensor::poisoned(s, DType::Bf16, &[m, n]).unwrap();
                        fg::fp8_gemm_with(s, &mut ws, Fp8Plan { tile, splits }, &out, &a, &asc, &b, &bsc).unwrap();
                        let what = format!("{v} {f8} m{m} n{n} k{k} {} split{splits} rep{rep}", tile.label());
                        let got = down(s, &out);
                        assert_close(&what, &got, &want, 1e-2);
                        if tile.reads_sorted_rows() {
                            let worst = max_tile_error(&got, &want, m, n);
                            assert!(worst <= 2e-2, "{what}: a 128 × 128 tile has relative error {worst:e}");
                        }
                    }
                }
            }
            if !mma {
                continue;
            }
            // The shape-chosen plan through the convenience entry.
            let out = DeviceTensor::poisoned(s, DType::Bf16, &[m, n]).unwrap();
            fg::fp8_gemm(s, &out, &a, &asc, &b, &bsc).unwrap();
            assert_close(&format!("{v} {f8} auto plan m{m} n{n} k{k}"), &down(s, &out), &want, 1e-2);
        }
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn dense_v3_shapes_decode() {
    // M = 1 and small M on real V3 widths (split-K chosen by the plan), partial N block (2112, 576).
    check_dense(1, 1, 2112, 7168, &MMA_TILES);
    check_dense(2, 7, 576, 1536, &MMA_TILES);
    check_dense(3, 64, 384, 2048, &MMA_TILES);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn stream_dense_token_counts() {
    // Every token-group boundary of the streaming kernel up to its 64-row tile and past it
    // (several M tiles of 8 and 64 rows). N = 200: the second 128-row block has one partial
    // 16-row warp tile (rows 192..199 of 192..207) and three warps past N; K = 400: three full K
    // tiles and one of 16 bytes (only lane t = 0 of the first half loads).
    for (i, m) in [1usize, 2, 7, 8, 9, 16, 17, 31, 32, 33, 63, 64, 65, 100, 128].into_iter().enumerate() {
        check_dense(60 + i as u64, m, 200, 400, &STREAM_TILES);
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn stream_dense_v3_shapes() {
    // kv_a alone (N = 576: 4.5 scale blocks) at a full K = 7168 (56 K tiles: 14 activation chunks
    // without split-K), an expert's down projection (7168×2048), o_proj's K = 16384 at the 64-row
    // limit.
    check_dense(80, 9, 576, 7168, &STREAM_TILES);
    check_dense(81, 32, 7168, 2048, &STREAM_TILES);
    check_dense(82, 64, 256, 16384, &STREAM_TILES);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wgmma_dense() {
    check_dense(21, 1, 2112, 7168, &WGMMA_TILES);
    check_dense(22, 300, 256, 512, &WGMMA_TILES);
    check_dense(23, 130, 576, 1536, &WGMMA_TILES);
    check_dense(24, 257, 300, 208, &WGMMA_TILES);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_dense_edges() {
    wg2_streams_present();
    // M around the 64-row warpgroup halves and the 128-row tile; N and K partial blocks; K < 128.
    check_dense(41, 1, 2112, 7168, &WG2_TILES);
    check_dense(42, 63, 576, 1536, &WG2_TILES);
    check_dense(43, 64, 256, 512, &WG2_TILES);
    check_dense(44, 65, 300, 208, &WG2_TILES);
    check_dense(45, 129, 136, 16, &WG2_TILES);
    check_dense(46, 257, 1000, 1040, &WG2_TILES);
    // More tiles than SMs: every CTA walks several tiles (pipeline phases run on across tiles).
    check_dense(47, 4096, 520, 400, &WG2_TILES);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_dense_v3_shapes_m256() {
    wg2_streams_present();
    for (i, (n, k)) in [(2112usize, 7168usize), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)].into_iter().enumerate() {
        check_dense(50 + i as u64, 256, n, k, &WG2_TILES);
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_wgs_dense_edges() {
    for t in WGS_TILES {
        sm90a_streams_present(t);
    }
    // Token counts around the 16 / 64 tiles (several M tiles where M > NT), N and K partial blocks,
    // K < 128; few blocks (fewer than CTAs: one or none per CTA) and many (every tile split over
    // several CTAs, their partial sums meeting in the workspace; CTAs whose range lies inside one
    // tile, or touches three).
    for (i, m) in [1usize, 15, 16, 17, 63, 64, 65, 127, 128, 200].into_iter().enumerate() {
        check_dense(90 + i as u64, m, 200, 400, &WGS_TILES);
    }
    check_dense(101, 5, 136, 16, &WGS_TILES);
    check_dense(102, 33, 1000, 1040, &WGS_TILES);
    check_dense(103, 1, 576, 7168, &WGS_TILES);
    check_dense(104, 128, 2112, 7168, &WGS_TILES);
    check_dense(105, 3, 7168, 16384, &WGS_TILES);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_wgs_default_plan_two_m_tiles() {
    // 65–128 rows with K ≥ 4096 and fewer 128-row tiles than SMs: the default plan takes the
    // 64-token wgs tile (two M tiles) on sm_90a streams (17–32 rows: the 32-token one; a MoE of
    // 9–16 rows per expert too); its result through the convenience entry.
    sm90a_streams_present(WGS_TILES[2]);
    for (v, s) in all_streams() {
        if wgs_available(s) {
            assert_eq!(fg::plan_dense_for_stream(s, DType::E4m3fn, 100, 300, 4096).tile, Fp8Tile::Wgs(WgsTile::N64), "{v}");
            assert_eq!(fg::plan_dense_for_stream(s, DType::E4m3fn, 24, 300, 4096).tile, Fp8Tile::Wgs(WgsTile::N32), "{v}");
            assert_eq!(fg::moe_wgs_tile(s, DType::E4m3fn, 96, 8), Some(Fp8Tile::Wgs(WgsTile::N32)), "{v}: 12 rows per expert");
        }
    }
    check_dense(118, 100, 300, 4096, &[Fp8Tile::Bm64]);
    check_dense(119, 24, 300, 4096, &[Fp8Tile::Bm64]);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_wgs_dense_v3_shapes() {
    sm90a_streams_present(WGS_TILES[0]);
    for (i, (n, k)) in [(2112usize, 7168usize), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)].into_iter().enumerate() {
        check_dense(110 + i as u64, 64, n, k, &WGS_TILES);
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn dense_prefill_shape() {
    check_dense(4, 300, 256, 512, &MMA_TILES);
}

proptest! {
    #![proptest_config(cfg(8))]

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn dense_random_shapes(seed: u64, m in 1usize..200, n in 1usize..300, k16 in 1usize..40) {
        check_dense(seed, m, n, k16 * 16, &MMA_TILES);
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn stream_dense_random_shapes(seed: u64, m in 1usize..140, n in 1usize..400, k16 in 1usize..70) {
        check_dense(seed, m, n, k16 * 16, &STREAM_TILES);
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn wg2_dense_random_shapes(seed: u64, m in prop::sample::select(vec![1usize, 63, 64, 65, 127, 128, 129, 200, 4096]), n in 1usize..400, k16 in 1usize..48) {
        wg2_streams_present();
        check_dense(seed, m, n, k16 * 16, &WG2_TILES);
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn wg2_wgs_dense_random_shapes(seed: u64, m in 1usize..=160, n in 1usize..400, k16 in 1usize..80) {
        sm90a_streams_present(WGS_TILES[0]);
        check_dense(seed, m, n, k16 * 16, &WGS_TILES);
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn act_quant_and_silu_mul_quant(seed: u64, rows in 1usize..40, cols in 1usize..700) {
        let mut r = rng(seed);
        let x: Vec<f32> = rand_vec(&mut r, rows * 2 * cols, 4.0).into_iter().map(bf16r).collect();
        // act_quant of the first `cols` of each row viewed as [rows, 2·cols].
        let q1 = quant_act(&x, rows, 2 * cols);
        let h: Vec<f32> = (0..rows * cols).map(|i| {
            let (row, c) = (i / cols, i % cols);
            let g = x[row * 2 * cols + c];
            let u = x[row * 2 * cols + cols + c];
            g / (1.0 + (-g).exp()) * u
        }).collect();
        let q2 = quant_act(&h, rows, cols);
        for (v, s) in all_streams() {
            let s: &dyn GpuStream = s;
            let dx = DeviceTensor::from_f32(s, &[rows, 2 * cols], &x, DType::Bf16).unwrap();
            let q = DeviceTensor::poisoned(s, DType::E4m3fn, &[rows, 2 * cols]).unwrap();
            let sc = DeviceTensor::poisoned(s, DType::F32, &[rows, (2 * cols).div_ceil(128)]).unwrap();
            fg::act_quant(s, &q, &sc, &dx).unwrap();
            s.synchronize().unwrap();
            let codes: Vec<u8> = q.to_vec::<Fp8E4m3fn>(s).unwrap().into_iter().map(|c| c.0).collect();
            assert_close(&format!("{v} act_quant scales"), &sc.to_f32(s).unwrap(), &q1.scales, 1e-7);
            let bad = codes.iter().zip(&q1.codes).filter(|(a, b)| a != b).count();
            prop_assert_eq!(bad, 0, "{} act_quant: {} codes differ", v, bad);

            let q = DeviceTensor::poisoned(s, DType::E4m3fn, &[rows, cols]).unwrap();
            let sc = DeviceTensor::poisoned(s, DType::F32, &[rows, cols.div_ceil(128)]).unwrap();
            fg::silu_mul_quant(s, &q, &sc, &dx).unwrap();
            s.synchronize().unwrap();
            let codes: Vec<u8> = q.to_vec::<Fp8E4m3fn>(s).unwrap().into_iter().map(|c| c.0).collect();
            let scv = sc.to_f32(s).unwrap();
            let ng = cols.div_ceil(128);
            let deq: Vec<f32> = (0..rows * cols).map(|i| e4m3fn_to_f32(codes[i]) * scv[(i / cols) * ng + (i % cols) / 128]).collect();
            assert_close(&format!("{v} silu_mul_quant scales"), &scv, &q2.scales, 1e-5);
            assert_close(&format!("{v} silu_mul_quant values"), &deq, &q2.deq, 1e-2);
        }
    }
}

/// One fused-MoE case: `ids` [t, topk] (entries outside [0, e) are other ranks' experts).
/// Tiles forced in the fused MoE runs: the size-chosen one twice (the split-K workspace must stay
/// zeroed), then each mma tile and each streaming tile.
const MOE_MMA_RUNS: [Option<Fp8Tile>; 7] = [
    None,
    None,
    Some(Fp8Tile::Bm16),
    Some(Fp8Tile::Bm64),
    Some(Fp8Tile::Bm128),
    Some(STREAM_TILES[0]),
    Some(STREAM_TILES[1]),
];
const MOE_WGMMA_RUNS: [Option<Fp8Tile>; 2] = [Some(Fp8Tile::Wg128), Some(Fp8Tile::Wg128)];
// v2 alone and in pairs (the latter twice: the workspace is reused).
const MOE_WG2_RUNS: [Option<Fp8Tile>; 3] = [Some(Fp8Tile::Wg2), Some(Fp8Tile::Wg2Pair), Some(Fp8Tile::Wg2Pair)];
// The small-M entries, the 16-token tile twice (the workspace is reused).
const MOE_WGS_RUNS: [Option<Fp8Tile>; 4] = [Some(WGS_TILES[0]), Some(WGS_TILES[0]), Some(WGS_TILES[1]), Some(WGS_TILES[2])];

fn check_moe(seed: u64, t: usize, e: usize, topk: usize, h: usize, inter: usize, ids: &[i32]) {
    check_moe_runs(seed, t, e, topk, h, inter, ids, &MOE_MMA_RUNS)
}

#[allow(clippy::too_many_arguments)]
fn check_moe_runs(seed: u64, t: usize, e: usize, topk: usize, h: usize, inter: usize, ids: &[i32], runs: &[Option<Fp8Tile>]) {
    let mut r = rng(seed);
    let x: Vec<f32> = rand_vec(&mut r, t * h, 2.0).into_iter().map(bf16r).collect();
    let tw: Vec<f32> = (0..t * topk).map(|_| r.gen_range(0.1f32..1.0)).collect();
    let out0: Vec<f32> = rand_vec(&mut r, t * h, 1.0).into_iter().map(bf16r).collect();
    let w13: Vec<QW> = (0..e).map(|_| quant_weight(&mut r, 2 * inter, h)).collect();
    let w2: Vec<QW> = (0..e).map(|_| quant_weight(&mut r, h, inter)).collect();
    let qx = quant_act(&x, t, h);
    // Reference.
    let mut want = out0.clone();
    for tok in 0..t {
        for k in 0..topk {
            let id = ids[tok * topk + k];
            if id < 0 || id as usize >= e {
                continue;
            }
            let ex = id as usize;
            let xr = &qx.deq[tok * h..(tok + 1) * h];
            let gu: Vec<f32> = matmul_nt(xr, &w13[ex].deq, 1, 2 * inter, h).into_iter().map(bf16r).collect();
            let hv: Vec<f32> = (0..inter).map(|c| gu[c] / (1.0 + (-gu[c]).exp()) * gu[inter + c]).collect();
            let qh = quant_act(&hv, 1, inter);
            let y: Vec<f32> = matmul_nt(&qh.deq, &w2[ex].deq, 1, h, inter).into_iter().map(bf16r).collect();
            for c in 0..h {
                want[tok * h + c] += tw[tok * topk + k] * y[c];
            }
        }
    }
    let want: Vec<f32> = want.into_iter().map(bf16r).collect();
    let cat = |ws: &[QW], f: fn(&QW) -> &Vec<u8>| ws.iter().flat_map(|q| f(q).iter().copied()).collect::<Vec<u8>>();
    let cats = |ws: &[QW]| ws.iter().flat_map(|q| q.scales.iter().copied()).collect::<Vec<f32>>();
    for (v, s) in all_streams() {
        let s: &dyn GpuStream = s;
        let forced: Vec<Fp8Tile> = runs.iter().flatten().copied().collect();
        if !runs_on(s, &forced) {
            continue; // refused there (sm90a_streams_present checks it)
        }
        let d13 = up_fp8(s, &[e, 2 * inter, h], &cat(&w13, |q| &q.codes), DType::E4m3fn);
        let d13s = up_f32(s, &[e, 2 * inter / 128, h.div_ceil(128)], &cats(&w13), 1.0);
        let d2 = up_fp8(s, &[e, h, inter], &cat(&w2, |q| &q.codes), DType::E4m3fn);
        let d2s = up_f32(s, &[e, h.div_ceil(128), inter.div_ceil(128)], &cats(&w2), 1.0);
        let w = MoeFp8Weights { w13: &d13, w13_scale: &d13s, w2: &d2, w2_scale: &d2s };
        let dx = DeviceTensor::from_f32(s, &[t, h], &x, DType::Bf16).unwrap();
        let dids = DeviceTensor::from_slice(s, &[t, topk], ids).unwrap();
        let dtw = DeviceTensor::from_slice(s, &[t, topk], &tw).unwrap();
        let mut wsp = FusedMoeWorkspace::new();
        for (rep, &force) in runs.iter().enumerate() {
            wsp.force_tile = force;
            let out = DeviceTensor::from_f32(s, &[t, h], &out0, DType::Bf16).unwrap();
            fg::fused_moe(s, &mut wsp, &out, &dx, &dids, &dtw, &w, 1.0).unwrap();
            assert_close(&format!("{v} fused_moe t{t} e{e} topk{topk} h{h} i{inter} run{rep} tile {force:?}"), &down(s, &out), &want, 2e-2);
        }
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn moe_decode_split_k() {
    // One token, 8 of 64 experts, hidden 1024: the gate_up GEMM splits K; most experts idle.
    let mut r = rng(11);
    let ids = distinct_ids(&mut r, 1, 64, 8);
    check_moe(11, 1, 64, 8, 1024, 128, &ids);
    // A few tokens, some pairs on other ranks' experts (-1 and >= E).
    let mut ids = distinct_ids(&mut r, 5, 16, 4);
    ids[1] = -1;
    ids[6] = 99;
    check_moe(12, 5, 16, 4, 512, 256, &ids);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn moe_all_tokens_on_one_expert() {
    // 150 tokens all routed to expert 2 (topk 1): BM-128 tiles of one expert, the others empty
    // (streaming: 19 tiles of 8 rows, or 64 + 64 + 22 rows).
    check_moe(13, 150, 6, 1, 256, 128, &vec![2i32; 150]);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn moe_decode_batches_on_the_default_plan() {
    // Decode-sized batches: 16, 40 and 24 tokens over 64 / 8 / 8 experts (1–20 rows per expert,
    // some experts without a token; on sm_90a the default plan takes the 16-, 64- and 32-token wgs
    // tiles), hidden with a partial K tile (1040); every tile, the streaming ones included, and the
    // default plan.
    let mut r = rng(14);
    let ids = distinct_ids(&mut r, 16, 64, 8);
    check_moe(14, 16, 64, 8, 1040, 128, &ids);
    let ids = distinct_ids(&mut r, 40, 8, 4);
    check_moe(15, 40, 8, 4, 512, 256, &ids);
    let ids = distinct_ids(&mut r, 24, 8, 4);
    check_moe(16, 24, 8, 4, 512, 256, &ids);
}

proptest! {
    #![proptest_config(cfg(6))]

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn moe_random(seed: u64, t in 1usize..48, e in 1usize..10, topk in 1usize..4, h16 in 1usize..24, i128 in 1usize..3) {
        let topk = topk.min(e);
        let mut r = rng(seed ^ 0x5eed);
        let ids = distinct_ids(&mut r, t, e, topk);
        check_moe(seed, t, e, topk, h16 * 16, i128 * 128, &ids);
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wgmma_moe() {
    let mut r = rng(31);
    let ids = distinct_ids(&mut r, 40, 8, 4);
    check_moe_runs(31, 40, 8, 4, 512, 256, &ids, &MOE_WGMMA_RUNS);
    check_moe_runs(32, 150, 6, 1, 256, 128, &[2i32; 150], &MOE_WGMMA_RUNS);
    let ids = distinct_ids(&mut r, 1, 64, 8);
    check_moe_runs(33, 1, 64, 8, 1024, 128, &ids, &MOE_WGMMA_RUNS);
}

/// The MoE edge cases of the sm_90a tiles (seeds from `seed`): experts 5..7 without a token and
/// one pair on another rank's expert (40 tokens: ≈ 20 rows per active expert); every token on one
/// expert (150 rows: two 128-row tiles, ten 16-row ones), the others empty; one token on 8 of 64
/// experts with hidden 1040 (a partial K block in gate_up, a partial N block in down). Returns the
/// generator for the caller's own cases.
fn moe_edge_cases(seed: u64, runs: &[Option<Fp8Tile>]) -> StdRng {
    let mut r = rng(seed);
    let mut ids = distinct_ids(&mut r, 40, 5, 4);
    ids[3] = -1;
    check_moe_runs(seed, 40, 8, 4, 512, 256, &ids, runs);
    check_moe_runs(seed + 1, 150, 6, 1, 256, 128, &[2i32; 150], runs);
    let ids = distinct_ids(&mut r, 1, 64, 8);
    check_moe_runs(seed + 2, 1, 64, 8, 1040, 128, &ids, runs);
    r
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_moe() {
    wg2_streams_present();
    let mut r = moe_edge_cases(61, &MOE_WG2_RUNS);
    // Several M tiles per expert; hidden 400: partial K block in gate_up, partial N in down.
    let ids = distinct_ids(&mut r, 600, 4, 2);
    check_moe_runs(64, 600, 4, 2, 400, 256, &ids, &MOE_WG2_RUNS);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn wg2_wgs_moe() {
    sm90a_streams_present(WGS_TILES[0]);
    let mut r = moe_edge_cases(71, &MOE_WGS_RUNS);
    // A decode batch at V3's hidden size (inter 256: the TP-8 shard's), the default plan (the
    // small-M entry on sm_90a).
    let ids = distinct_ids(&mut r, 16, 32, 8);
    check_moe_runs(74, 16, 32, 8, 7168, 256, &ids, &[None, None]);
}
