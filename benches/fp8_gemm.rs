//! FP8 block-scaled GEMM and fused MoE benchmark on cuda:0 (src/backend/fp8_gemm.rs).
//!
//! Default (the device runner): prints ONE table.
//! - dense rows: DeepSeek-V3 shapes N×K ∈ {2112×7168, 24576×1536, 32768×512, 7168×16384,
//!   4096×7168, 7168×2048} at M ∈ {1, 16, 32, 64, 128, 4096}: `dense` the default plan (on sm_90a
//!   the small-M wgmma entry `wgs16` / `wgs64` for M ≤ 64, v2 above); `dense-old` the
//!   plan the default took before the wgs entry (the streaming kernel `st8` up to 8 rows, BM 16 /
//!   64, v2), for the comparison; `dense-alt` the same with half / no split-K, for tuning; `dense-mma` the tiled mma.sync kernel the plan took before
//!   (BM 16 / 64) at M ≤ 64 and `dense-st` the streaming one (two 64-row tiles) at M = 128, for the
//!   comparison; `dense-wg` the sm_90a wgmma kernel v1 and `dense-wg2p` v2 in 2-CTA clusters
//!   sharing the weight tile (the default there is v2 one CTA per tile, `wg2`) where the mma.sync plan
//!   has BM 128 (`dense` itself is wgmma v1 there, its default). Columns: the plan (tile, split), µs, TFLOPS
//!   (2·M·N·K), weight GB/s (N·K bytes / time) and its ratio to the device-to-device copy measured
//!   in the same process (bytes read + written, 1 GiB).
//! - MoE rows: one layer, hidden 7168, top-8, at 1, 16, 64, 128, 512, 4096 tokens for the TP-8
//!   shard (256 experts, inter 256) and the EP-8 shard (32 experts, inter 2048); topk ids drawn
//!   uniformly (distinct per token) among the shard's experts; µs of the whole fused_moe (6
//!   launches), TFLOPS (2·T·8·3·I·H), expert GB/s = bytes of the experts hit / time, ratio to copy.
//!   `moe` is the default plan (on sm_90a the wgs entry up to 64 rows per active expert), `moe-old`
//!   the plan before it (the tiled kernels, v2 from 65 rows per expert), `moe-mma`
//!   the tiled kernel the plan took before, `moe-st` the streaming one at 65–128 rows per expert,
//!   `moe-wg`, `moe-wg2p` the grouped GEMMs on wgmma v1 / v2 in pairs where the plan has BM 128;
//!   `moe-wgs16` / `moe-wgs32` / `moe-wgs64` each small-M wgmma tile up to 128 rows per active
//!   expert where the default takes another. `dense-wgs`: the 64-token wgs tile at 65–128 rows
//!   (two M tiles); `dense-wgs32`: the 32-token one at 17–64 rows.
//!
//! Timing: CUDA events around 20 back-to-back launches (no sync in between), per-launch mean;
//! median of 7 such batches after 5 warm-up launches. Weights smaller than 256 MiB are replicated
//! and the launches rotate among the copies, so no run reads its weights from L2.
//! `DSV3_FP8_CRITERION=1` also runs criterion on two shapes.
//!
//! Build here, run on the GPU machine:
//!   /work/shared/tools/gpu-bundle --filter '^(gpu_fp8_gemm|fp8_gemm)'
//!   bash .gpu/run.sh '^fp8_gemm-'
//! Without a CUDA device it panics ("no CUDA device").

#[path = "common/gpu.rs"]
mod common;
use common::{copy_gbs, listed, moe_ids, shape_listed, stream, time_us, Rng};
use criterion::{BenchmarkId, Criterion, Throughput};
use dsv3::backend::fp8_gemm::{self as fg, Fp8Plan, Fp8Tile, Fp8Workspace, FusedMoeWorkspace, MoeFp8Weights};
use dsv3::backend::mla::cuda_util;
use dsv3::backend::gemm_wgs::{self, WgsTile};
use dsv3::backend::stream_gemm::StreamTile;
use dsv3::backend::{DType, DeviceTensor, Fp8E4m3fn, GpuStream};

const HIDDEN: usize = 7168;
const TOPK: usize = 8;



/// Random finite e4m3fn codes (no NaN patterns, few zeros): a 16 MiB random block uploaded once,
/// tiled on the device.
fn random_fp8(s: &dyn GpuStream, shape: &[usize], seed: u64) -> DeviceTensor {
    let n: usize = shape.iter().product();
    let t = DeviceTensor::empty(s, DType::E4m3fn, shape).unwrap();
    let block = n.min(16 << 20);
    let mut r = Rng(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1);
    let v: Vec<Fp8E4m3fn> = (0..block).map(|_| Fp8E4m3fn(((r.next() >> 33) % 0x7e) as u8 | if r.next() & 1 == 1 { 0x80 } else { 0 })).collect();
    let src = DeviceTensor::from_slice(s, &[block], &v).unwrap();
    let mut off = 0;
    while off < n {
        let len = block.min(n - off);
        unsafe { s.copy_dtod(t.raw() + off as u64, src.raw(), len).unwrap() };
        off += len;
    }
    s.synchronize().unwrap();
    t
}

fn random_f32(s: &dyn GpuStream, shape: &[usize], lo: f32, hi: f32, seed: u64) -> DeviceTensor {
    let n: usize = shape.iter().product();
    let mut r = Rng(seed.wrapping_mul(0x2545f4914f6cdd1d) | 1);
    let v: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * r.unit()).collect();
    DeviceTensor::from_slice(s, shape, &v).unwrap()
}

fn random_bf16(s: &dyn GpuStream, shape: &[usize], seed: u64) -> DeviceTensor {
    let n: usize = shape.iter().product();
    let mut r = Rng(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1);
    let v: Vec<f32> = (0..n).map(|_| r.unit() * 2.0 - 1.0).collect();
    DeviceTensor::from_f32(s, shape, &v, DType::Bf16).unwrap()
}


struct Dense {
    copies: Vec<(DeviceTensor, DeviceTensor)>,
    a: DeviceTensor,
    asc: DeviceTensor,
    out: DeviceTensor,
}

fn dense_setup(s: &dyn GpuStream, m: usize, n: usize, k: usize) -> Dense {
    let wbytes = n * k;
    let ncopies = (256usize << 20).div_ceil(wbytes).clamp(1, 16);
    let copies = (0..ncopies)
        .map(|c| (random_fp8(s, &[n, k], 100 + c as u64), random_f32(s, &[n.div_ceil(128), k.div_ceil(128)], 1e-4, 3e-4, 200 + c as u64)))
        .collect();
    Dense {
        copies,
        a: random_fp8(s, &[m, k], 7),
        asc: random_f32(s, &[m, k.div_ceil(128)], 1e-3, 1e-2, 8),
        out: DeviceTensor::empty(s, DType::Bf16, &[m, n]).unwrap(),
    }
}

/// The first pass's rows of one dense shape: the default plan, the plan before the wgs entry
/// (`old`, with half / no split-K for tuning), and the kernel the other side of the streaming
/// threshold for the comparison.
fn dense_plans(m: usize, n: usize, k: usize, base: Fp8Plan, old: Fp8Plan, wgs_ok: bool) -> Vec<(&'static str, Fp8Plan)> {
    let mut v = vec![("dense", base)];
    if old != base {
        v.push(("dense-old", old));
    }
    for sp in [old.splits / 2, 1] {
        if old.splits > 1 && sp >= 1 && !v.iter().any(|(_, p)| p.tile == old.tile && p.splits == sp) {
            v.push(("dense-alt", Fp8Plan { splits: sp, ..old }));
        }
    }
    let other = match m {
        0..=64 => Some(("dense-mma", Fp8Tile::tiled_for_rows(m))),
        65..=128 => Some(("dense-st", Fp8Tile::Stream(StreamTile::T64))),
        _ => None,
    };
    v.extend(other.map(|(kind, tile)| (kind, fg::plan_dense_tile(tile, m, n, k, fg::DEFAULT_SMS))));
    // The small-M wgmma entry at 65–128 rows (two 64-token M tiles) where the default is v2, and
    // its 32-token tile at 17–64 rows where the default takes another.
    if wgs_ok && (65..=128).contains(&m) && !matches!(base.tile, Fp8Tile::Wgs(_)) {
        v.push(("dense-wgs", Fp8Plan { tile: Fp8Tile::Wgs(WgsTile::N64), splits: 1 }));
    }
    let n32 = Fp8Tile::Wgs(WgsTile::N32);
    if wgs_ok && (17..=64).contains(&m) && !v.iter().any(|(_, p)| p.tile == n32) {
        v.push(("dense-wgs32", Fp8Plan { tile: n32, splits: 1 }));
    }
    v
}

/// The first pass's MoE runs at `per_expert` rows per active expert: the default plan, the plan
/// before the wgs entry (`old`, when the default takes it), and the kernel the other side of the
/// streaming threshold.
fn moe_runs(per_expert: usize, old: Option<Fp8Tile>, wgs: Option<Fp8Tile>, wgs_ok: bool) -> Vec<(&'static str, Option<Fp8Tile>)> {
    let mut v = vec![("moe", None)];
    v.extend(old.map(|t| ("moe-old", Some(t))));
    match per_expert {
        0..=64 => v.push(("moe-mma", Some(Fp8Tile::tiled_for_rows(per_expert)))),
        65..=128 => v.push(("moe-st", Some(Fp8Tile::Stream(StreamTile::T64)))),
        _ => {}
    }
    // Each small-M wgmma tile up to 128 rows per expert where the default plan takes another.
    if wgs_ok && per_expert <= 128 {
        for (kind, t) in [("moe-wgs16", WgsTile::N16), ("moe-wgs32", WgsTile::N32), ("moe-wgs64", WgsTile::N64)] {
            if wgs != Some(Fp8Tile::Wgs(t)) {
                v.push((kind, Some(Fp8Tile::Wgs(t))));
            }
        }
    }
    v
}

fn main() {
    let s = stream();
    let sms = cuda_util::sm_count(&s).unwrap_or(fg::DEFAULT_SMS);
    let copy = copy_gbs(&s);
    println!("device: {} ({} SMs); device copy {:.0} GB/s (read + write)", s.name(), sms, copy);
    println!(
        "{:<6} {:<22} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "kind", "shape", "M/tok", "plan", "us", "TFLOPS", "W GB/s", "W/copy"
    );
    let mut ws = Fp8Workspace::new();
    // Pass 0: the default plans (mma.sync). Pass 1: the sm_90a wgmma kernel where the plan has BM
    // 128; pass 2: its v2 (no split-K). Last, so that a fault there (sticky CUDA error) cannot
    // cost the earlier rows. DSV3_FP8_BENCH_WGMMA=0 / DSV3_FP8_BENCH_WGMMA2=0 skip pass 1 / 2.
    let on = |var: &str| std::env::var(var).map(|v| v != "0").unwrap_or(true);
    let wg2_ok = fg::wgmma2_available(&s);
    let wgs_ok = gemm_wgs::wgs_available(&s);
    if !wg2_ok {
        println!("wgmma2: not available on this stream (needs the sm_90a cubin on an sm_90 GPU): no wg2 rows");
    } else {
        println!("wgmma2 pairs: {:?} clusters of 2 CTAs resident", fg::pair_clusters(&s, &Fp8Tile::Wg2Pair.kernel_name(DType::E4m3fn)));
    }
    let passes: Vec<usize> = [(0, true), (1, on("DSV3_FP8_BENCH_WGMMA")), (2, on("DSV3_FP8_BENCH_WGMMA2") && wg2_ok)]
        .into_iter()
        .filter_map(|(p, run)| run.then_some(p))
        .collect();
    for pass in passes {
        for (n, k) in [(2112usize, 7168usize), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)] {
            if !shape_listed(&format!("{n}x{k}")) {
                continue;
            }
            for m in listed(&[1, 16, 32, 64, 128, 4096]) {
                let raw = fg::plan_dense(m, n, k, fg::DEFAULT_SMS);
                // Passes 1 / 2 where the mma.sync plan has BM 128 (the default takes wgmma v1 there).
                if pass > 0 && raw.tile != Fp8Tile::Bm128 {
                    continue;
                }
                let old = fg::plan_for_stream(&s, DType::E4m3fn, raw);
                let base = fg::plan_dense_for_stream(&s, DType::E4m3fn, m, n, k);
                let d = dense_setup(&s, m, n, k);
                let nc = d.copies.len();
                let plans = match pass {
                    0 => dense_plans(m, n, k, base, old, wgs_ok),
                    1 => vec![("dense-wg", Fp8Plan { tile: Fp8Tile::Wg128, ..old })],
                    _ => vec![("dense-wg2p", Fp8Plan { tile: Fp8Tile::Wg2Pair, splits: 1 })],
                };
                for (kind, plan) in plans {
                    let us = time_us(&s, |i| {
                        let (b, bs) = &d.copies[i % nc];
                        fg::fp8_gemm_with(&s, &mut ws, plan, &d.out, &d.a, &d.asc, b, bs).unwrap();
                    });
                    let tf = 2.0 * (m * n * k) as f64 / (us * 1e6);
                    let gbs = (n * k) as f64 / (us * 1e3);
                    println!(
                        "{:<6} {:<22} {:>6} {:>10} {:>10.2} {:>10.1} {:>10.0} {:>8.2}",
                        kind,
                        format!("{n}x{k}"),
                        m,
                        format!("{}/s{}", plan.tile.label(), plan.splits),
                        us,
                        tf,
                        gbs,
                        gbs / copy
                    );
                }
            }
        }
        for (label, e, inter) in [("TP8 E256 I256", 256usize, 256usize), ("EP8 E32 I2048", 32, 2048)] {
            if !shape_listed(label) {
                continue;
            }
            let w13 = random_fp8(&s, &[e, 2 * inter, HIDDEN], 31);
            let w13s = random_f32(&s, &[e, 2 * inter / 128, HIDDEN / 128], 1e-4, 3e-4, 32);
            let w2 = random_fp8(&s, &[e, HIDDEN, inter], 33);
            let w2s = random_f32(&s, &[e, HIDDEN / 128, inter / 128], 1e-4, 3e-4, 34);
            let w = MoeFp8Weights { w13: &w13, w13_scale: &w13s, w2: &w2, w2_scale: &w2s };
            let mut wsp = FusedMoeWorkspace::new();
            for t in listed(&[1, 16, 64, 128, 512, 4096]) {
                let (ids, hit) = moe_ids(t, e, TOPK, 1000 + t as u64);
                let dids = DeviceTensor::from_slice(&s, &[t, TOPK], &ids).unwrap();
                let tw = random_f32(&s, &[t, TOPK], 0.05, 0.3, 41);
                let x = random_bf16(&s, &[t, HIDDEN], 42);
                let out = random_bf16(&s, &[t, HIDDEN], 43);
                let p = t * TOPK;
                let (tile, ..) = fg::plan_moe(p, e, HIDDEN, inter, fg::DEFAULT_SMS);
                let wgs = fg::moe_wgs_tile(&s, DType::E4m3fn, p, e);
                let old = wgs.map(|_| fg::with_wgmma(&s, Fp8Plan { tile, splits: 1 }).tile);
                let runs = match pass {
                    0 => moe_runs(p.div_ceil(e.min(p)), old, wgs, wgs_ok),
                    _ if tile != Fp8Tile::Bm128 => vec![],
                    1 => vec![("moe-wg", Some(Fp8Tile::Wg128))],
                    _ => vec![("moe-wg2p", Some(Fp8Tile::Wg2Pair))],
                };
                for (kind, force) in runs {
                    wsp.force_tile = force;
                    let used = force.or(wgs).unwrap_or(tile);
                    let (_, gu, dn) = fg::plan_moe_tile(used, p, e, HIDDEN, inter, fg::DEFAULT_SMS);
                    // v2 runs without split-K whatever the plan says, wgs splits by stream-K.
                    let (gs, ds) = if used.reads_sorted_rows() { (1, 1) } else { (gu.splits, dn.splits) };
                    let us = time_us(&s, |_| fg::fused_moe(&s, &mut wsp, &out, &x, &dids, &tw, &w, 0.0).unwrap());
                    let flops = 2.0 * (t * TOPK * 3 * inter * HIDDEN) as f64;
                    let bytes = (hit * 3 * inter * HIDDEN) as f64;
                    let gbs = bytes / (us * 1e3);
                    println!(
                        "{:<6} {:<22} {:>6} {:>10} {:>10.2} {:>10.1} {:>10.0} {:>8.2}",
                        kind,
                        label,
                        t,
                        format!("{}/s{gs}/{ds}", gu.tile.label()),
                        us,
                        flops / (us * 1e6),
                        gbs,
                        gbs / copy
                    );
                }
                wsp.force_tile = None;
            }
        }
    }
    if std::env::var("DSV3_FP8_CRITERION").map(|v| v == "1").unwrap_or(false) {
        let mut c = Criterion::default().configure_from_args();
        let mut g = c.benchmark_group("fp8_gemm");
        for (m, n, k) in [(64usize, 2112usize, 7168usize), (4096, 4096, 7168)] {
            let d = dense_setup(&s, m, n, k);
            g.throughput(Throughput::Bytes((n * k) as u64));
            let nc = d.copies.len();
            let mut i = 0;
            g.bench_with_input(BenchmarkId::new(format!("{n}x{k}"), m), &m, |b, _| {
                b.iter(|| {
                    let (w, wsc) = &d.copies[i % nc];
                    i += 1;
                    fg::fp8_gemm_ws(&s, &mut ws, &d.out, &d.a, &d.asc, w, wsc).unwrap();
                    s.synchronize().unwrap();
                })
            });
        }
        g.finish();
        c.final_summary();
    }
}
