//! INT8 (W8A8 block / channel) and AWQ (W4A16) GEMM benchmark on cuda:0 (src/backend/quant_gemm.rs).
//!
//! Prints ONE table (same columns and timing as benches/fp8_gemm.rs):
//! - `i8blk` / `i8ch` rows: dense INT8 on the DeepSeek-V3 shapes N×K ∈ {2112×7168, 24576×1536,
//!   32768×512, 7168×16384, 4096×7168, 7168×2048} at M ∈ {1, 16, 32, 64, 128, 4096} with the
//!   default plan (on sm_90a the small-M wgmma entry `wgs*` up to 64 rows, v2 `wg2` above;
//!   elsewhere the weight-streaming kernel `st8` for M ≤ 8, the tiled ones above; `-old`: the plan
//!   before the wgs entry): plan (tile/split), µs, TOPS (2·M·N·K), weight
//!   GB/s (N·K bytes / time) and its ratio to the device copy measured in the same process; `-mma`
//!   rows: the tiled mma.sync kernel the plan took before (BM 16 / 64 at M ≤ 64, BM 128 with its
//!   split where the default is `wg2`), `-st` rows: the streaming kernel (two 64-row tiles) at
//!   M = 128, for the comparison; `-wgs` rows: the small-M wgmma entry at M ≤ 128 (two 64-token M
//!   tiles above 64) where the default plan does not take it (sm_90a); `-wgs32` rows (INT8): its
//!   32-token tile at 17–64 rows;
//! - `awq` rows: AWQ (group 128) decode at M ∈ {1, 16, 32, 64} on the same shapes (weight bytes =
//!   N·K/2 + scales N·K/64 + zeros N·K/256), the default plan (on sm_90a the small-M wgmma entry
//!   `wgs16` / `wgs64`, kernels/awq_gemm_wgs.cuh; elsewhere streaming up to 8 rows), `awq-old` the
//!   plan before the wgs entry, and `awq-mma` the tiled kernel (the 64-row streaming tile at 16–64
//!   rows and the 8-row one at 4 CTAs per SM were measured no faster in session 5,
//!   docs/perf/quant_gemm.md, and dropped);
//! - `moe-i8` / `moe-awq` rows: one MoE layer of the TP-8 shard (256 experts, inter 256) and of
//!   the EP-8 shard (32 experts, inter 2048), hidden 7168, top-8 (ids uniform and distinct per
//!   token among the shard's experts), at 1, 16, 64, 128, 4096 tokens: align, (INT8: quant of x,)
//!   grouped gate_up, SiLU·mul (INT8: fused with the quant), grouped down; the combine is not
//!   timed (the same kernel for every format). TOPS = 2·T·8·3·I·H / time; GB/s = weight bytes of
//!   the experts hit / time. `moe-i8` (block INT8) / `moe-awq` take the default plan (the
//!   streaming kernel up to 8 rows per expert; BM 128 above, `wg2` on sm_90a), `-mma` the tiled
//!   mma.sync kernel where the default is another, `moe-awq-st` AWQ on the 64-row streaming tile
//!   at 9–64 rows per expert;
//!   `moe-i8-fused`: the whole fused `int8_moe` (block INT8, combine included) on its default plan,
//!   which on sm_90a takes the small-M wgmma entry (`wgs16` / `wgs64`) up to 32 rows per
//!   active expert; `moe-awq-fused`: the whole `awq_moe` (group 128, combine included) on its
//!   default plan, which on sm_90a takes the AWQ wgs entry (`wgs16` / `wgs64`, after a bf16 row
//!   gather) up to 32 rows per active expert, and `moe-awq-fused-old` the same call with
//!   `DSV3_GEMM_WGS=0` (the plan before it) where the default is the wgs entry;
//! - last, the INT8 wgmma v2 tile forced (sm_90a streams only; `DSV3_INT8_BENCH_WGMMA2=0` skips
//!   them): the v2 tile in 2-CTA clusters, `i8blk-wg2p` / `i8ch-wg2p` dense at M = 4096 on the six
//!   shapes, `moe-i8-wg2p` / `moe-i8ch-wg2p` (block / channel INT8) on both shards at 4096 tokens.
//!
//! Timing: CUDA events around 20 back-to-back launches (no sync in between), per-launch mean;
//! median of 7 batches after 5 warm-ups. Dense weights smaller than 256 MiB are replicated and the
//! launches rotate among the copies, so no run reads its weights from L2.
//!
//! Build here, run on the GPU machine (docs/perf/quant_gemm.md):
//!   /work/shared/tools/gpu-bundle --filter '^(gpu_quant_gemm|quant_gemm)'
//!   bash .gpu/run.sh '^quant_gemm-'
//! Without a CUDA device it panics ("no CUDA device").

#![allow(clippy::too_many_arguments)]

#[path = "common/gpu.rs"]
mod common;
use common::{copy_gbs, listed, moe_ids, shape_listed, stream, time_us, Rng};
use dsv3::backend::cuda::CudaStream;
use dsv3::backend::dispatch;
use dsv3::backend::mla::cuda_util;
use dsv3::backend::fp8_gemm::FusedMoeWorkspace;
use dsv3::backend::quant_moe::{awq_moe, awq_moe_wgs_tile, int8_moe, MoeAwqWeights, MoeInt8Weights};
use dsv3::backend::quant_gemm::{self as qg, AwqWeight, Int8Scheme, QuantKernel, QuantPlan, QuantTile, SplitKWorkspace, TileAlignment};
use dsv3::backend::gemm_wgs::{self, WgsTile};
use dsv3::backend::stream_gemm::StreamTile;
use dsv3::backend::{DType, DeviceTensor, GpuStream};

const HIDDEN: usize = 7168;
const TOPK: usize = 8;
const SHAPES: [(usize, usize); 6] = [
    (2112, 7168),
    (24576, 1536),
    (32768, 512),
    (7168, 16384),
    (4096, 7168),
    (7168, 2048),
];



/// `n` random bytes as `dtype` (i8 codes, or i32 words when `dtype` is I32): a 16 MiB random block
/// uploaded once and tiled on the device.
fn random_bytes(s: &dyn GpuStream, dtype: DType, shape: &[usize], seed: u64) -> DeviceTensor {
    let t = DeviceTensor::empty(s, dtype, shape).unwrap();
    let n = t.bytes();
    let block = n.min(16 << 20);
    let mut r = Rng(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1);
    let v: Vec<u8> = (0..block).map(|_| (r.next() >> 33) as u8).collect();
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

fn random_f(
    s: &dyn GpuStream,
    dtype: DType,
    shape: &[usize],
    lo: f32,
    hi: f32,
    seed: u64,
) -> DeviceTensor {
    let n: usize = shape.iter().product();
    let mut r = Rng(seed.wrapping_mul(0x2545f4914f6cdd1d) | 1);
    let v: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * r.unit()).collect();
    DeviceTensor::from_f32(s, shape, &v, dtype).unwrap()
}


fn row(
    kind: &str,
    shape: &str,
    m: usize,
    plan: String,
    us: f64,
    flops: f64,
    bytes: f64,
    copy: f64,
) {
    let gbs = bytes / (us * 1e3);
    println!(
        "{:<12} {:<22} {:>6} {:>12} {:>10.2} {:>10.1} {:>10.0} {:>8.2}",
        kind,
        shape,
        m,
        plan,
        us,
        flops / (us * 1e6),
        gbs,
        gbs / copy
    );
}

/// `plan` as the default INT8 plans adapt it to the stream (BM 128 → wgmma v2 on sm_90a); AWQ's
/// as it is.
fn for_stream(s: &dyn GpuStream, kernel: QuantKernel, plan: QuantPlan) -> QuantPlan {
    match kernel {
        QuantKernel::Int8 => qg::int8_plan_for_stream(s, plan),
        QuantKernel::Awq => plan,
    }
}

/// The dense rows of one shape (INT8 of `scheme`, AWQ for `None`): the default plan (`kind`), and
/// for the comparison the kernel the other side of the streaming threshold (`{kind}-mma` /
/// `{kind}-st`) or the mma.sync kernel where the default is the v2 tile (`{kind}-mma`).
fn dense_plans(s: &dyn GpuStream, kind: &str, scheme: Option<Int8Scheme>, m: usize, n: usize, k: usize) -> Vec<(String, QuantPlan)> {
    let kernel = if scheme.is_some() { QuantKernel::Int8 } else { QuantKernel::Awq };
    let plan = |tile| qg::plan_quant_tile(kernel, tile, m, n, k, qg::DEFAULT_SMS);
    let raw = plan(QuantTile::for_rows(m));
    let old = for_stream(s, kernel, raw);
    let default = match scheme {
        Some(scheme) => qg::int8_plan_dense_for_stream(s, scheme, m, n, k),
        None => qg::awq_plan_dense_for_stream(s, m, n, k),
    };
    let mut v = vec![(kind.to_string(), default)];
    if default != old {
        v.push((format!("{kind}-old"), old));
    }
    let default = old;
    let other = match m {
        0..=64 => Some(("mma", plan(QuantTile::tiled_for_rows(m)))),
        65..=128 => Some(("st", plan(QuantTile::Stream(StreamTile::T64)))),
        _ => None,
    };
    v.extend(other.map(|(tag, p)| (format!("{kind}-{tag}"), p)));
    if default != raw {
        v.push((format!("{kind}-mma"), raw));
    }
    // The small-M wgmma entry where the default plan does not take it (channel INT8 above 16
    // rows, ≤ 8 rows on some shapes), for tuning its crossover.
    let format = scheme.map(|sc| sc.wgs_format()).unwrap_or(gemm_wgs::WgsFormat::Awq);
    let wgs = (m <= 128).then(|| WgsTile::for_rows(format, m).unwrap_or(WgsTile::N64)).filter(|_| gemm_wgs::wgs_available(s) && !matches!(v[0].1.tile, QuantTile::Wgs(_)));
    v.extend(wgs.map(|t| (format!("{kind}-wgs"), plan(QuantTile::Wgs(t)))));
    // The 8-bit formats' 32-token tile at 17–64 rows where the default takes another.
    let n32 = QuantTile::Wgs(WgsTile::N32);
    if scheme.is_some() && gemm_wgs::wgs_available(s) && (17..=64).contains(&m) && !v.iter().any(|(_, p)| p.tile == n32) {
        v.push((format!("{kind}-wgs32"), plan(n32)));
    }
    v
}

fn copies_for(bytes: usize) -> usize {
    (256usize << 20).div_ceil(bytes).clamp(1, 16)
}

fn awq_layer(
    s: &dyn GpuStream,
    e: usize,
    n: usize,
    k: usize,
    seed: u64,
) -> (DeviceTensor, DeviceTensor, DeviceTensor) {
    // Random words are a valid repacked qweight (any nibble is a weight).
    (
        random_bytes(s, DType::I32, &[e, n / 8, k / 32, 32], seed),
        random_bytes(s, DType::I32, &[e, k / 128, n / 8], seed + 1),
        random_f(s, DType::F16, &[e, k / 128, n], 1e-3, 1e-2, seed + 2),
    )
}

fn awq_bytes(n: usize, k: usize) -> usize {
    n * k / 2 + n * k / 64 + n * k / 256
}

/// INT8 expert weights of one MoE shard: w13 [E, 2I, H], w2 [E, H, I] and their scales.
struct Int8Experts {
    scheme: Int8Scheme,
    w13: DeviceTensor,
    w13s: DeviceTensor,
    w2: DeviceTensor,
    w2s: DeviceTensor,
}

fn int8_experts(s: &dyn GpuStream, scheme: Int8Scheme, e: usize, inter: usize, seed: u64) -> Int8Experts {
    Int8Experts {
        scheme,
        w13: random_bytes(s, DType::I8, &[e, 2 * inter, HIDDEN], seed),
        w13s: random_f(s, DType::F32, &[e * scheme.w_scales_len(2 * inter, HIDDEN)], 1e-4, 3e-4, seed + 1),
        w2: random_bytes(s, DType::I8, &[e, HIDDEN, inter], seed + 2),
        w2s: random_f(s, DType::F32, &[e * scheme.w_scales_len(HIDDEN, inter)], 1e-4, 3e-4, seed + 3),
    }
}

/// The MoE plans of `tile` for `p` pairs over `e` experts: (gate_up, down, max M tiles).
fn moe_plans(kernel: QuantKernel, tile: QuantTile, p: usize, e: usize, inter: usize) -> (QuantPlan, QuantPlan, usize) {
    let (gu, max_tiles) = qg::plan_grouped_tile(kernel, tile, p, e, 2 * inter, HIDDEN, qg::DEFAULT_SMS);
    let (dn, _) = qg::plan_grouped_tile(kernel, tile, p, e, HIDDEN, inter, qg::DEFAULT_SMS);
    (gu, dn, max_tiles)
}

/// µs of one INT8 MoE layer's timed steps (align, quant of x, gate_up, SiLU·mul + quant, down).
fn time_int8_moe(s: &CudaStream, ws: &mut SplitKWorkspace, w: &Int8Experts, dids: &DeviceTensor, x: &DeviceTensor, e: usize, inter: usize, plans: (QuantPlan, QuantPlan, usize)) -> f64 {
    let (gu, dn, max_tiles) = plans;
    let (scheme, t, bm) = (w.scheme, x.shape()[0], gu.tile.bm());
    let rows = max_tiles * bm;
    let gate_up = DeviceTensor::empty(s, DType::Bf16, &[rows, 2 * inter]).unwrap();
    let y = DeviceTensor::empty(s, DType::Bf16, &[rows, HIDDEN]).unwrap();
    let xq = DeviceTensor::empty(s, DType::I8, &[t, HIDDEN]).unwrap();
    let xs = DeviceTensor::empty(s, DType::F32, &[scheme.a_scales_len(t, HIDDEN)]).unwrap();
    let hq = DeviceTensor::empty(s, DType::I8, &[rows, inter]).unwrap();
    let hs = DeviceTensor::empty(s, DType::F32, &[scheme.a_scales_len(rows, inter)]).unwrap();
    time_us(s, |_| {
        let al: TileAlignment = qg::moe_align_tiles(s, dids, e, bm).unwrap();
        qg::int8_act_quant(s, scheme, &xq, &xs, x).unwrap();
        qg::int8_grouped_gemm(s, ws, scheme, gu, &gate_up, &xq, &xs, &w.w13, &w.w13s, &al.rows(true, TOPK)).unwrap();
        qg::int8_silu_mul_quant(s, scheme, &hq, &hs, &gate_up).unwrap();
        qg::int8_grouped_gemm(s, ws, scheme, dn, &y, &hq, &hs, &w.w2, &w.w2s, &al.rows(false, 1)).unwrap();
    })
}

/// The MoE shards: (label, experts, intermediate).
const SHARDS: [(&str, usize, usize); 2] = [("TP8 E256 I256", 256, 256), ("EP8 E32 I2048", 32, 2048)];

/// Dense INT8 rows of `scheme` on the six shapes at each of `ms`, with the plans `plans(m, n, k)`
/// gives (kind, plan).
fn dense_int8(s: &CudaStream, ws: &mut SplitKWorkspace, copy: f64, scheme: Int8Scheme, ms: &[usize], plans: &dyn Fn(usize, usize, usize) -> Vec<(String, QuantPlan)>) {
    for (n, k) in SHAPES.into_iter().filter(|(n, k)| shape_listed(&format!("{n}x{k}"))) {
        let nc = copies_for(n * k);
        let w: Vec<(DeviceTensor, DeviceTensor)> = (0..nc)
            .map(|c| (random_bytes(s, DType::I8, &[n, k], 100 + c as u64), random_f(s, DType::F32, &[scheme.w_scales_len(n, k)], 1e-4, 3e-4, 200 + c as u64)))
            .collect();
        for m in listed(ms) {
            let a = random_bytes(s, DType::I8, &[m, k], 7);
            let asc = random_f(s, DType::F32, &[scheme.a_scales_len(m, k)], 1e-3, 1e-2, 8);
            let out = DeviceTensor::empty(s, DType::Bf16, &[m, n]).unwrap();
            for (kind, plan) in plans(m, n, k) {
                let us = time_us(s, |i| {
                    let (b, bs) = &w[i % nc];
                    qg::int8_gemm_with(s, ws, scheme, plan, &out, &a, &asc, b, bs).unwrap();
                });
                row(&kind, &format!("{n}x{k}"), m, format!("{}/s{}", plan.tile.label(), plan.splits), us, 2.0 * (m * n * k) as f64, (n * k) as f64, copy);
            }
        }
    }
}

fn scheme_kind(scheme: Int8Scheme) -> &'static str {
    match scheme {
        Int8Scheme::Block => "i8blk",
        Int8Scheme::Channel => "i8ch",
    }
}

fn main() {
    let s = stream();
    let sms = cuda_util::sm_count(&s).unwrap_or(qg::DEFAULT_SMS);
    let copy = copy_gbs(&s);
    println!("device: {} ({} SMs); device copy {:.0} GB/s (read + write)", s.name(), sms, copy);
    println!("{:<12} {:<22} {:>6} {:>12} {:>10} {:>10} {:>10} {:>8}", "kind", "shape", "M/tok", "plan", "us", "TOPS", "W GB/s", "W/copy");
    let mut ws = SplitKWorkspace::new();

    // INT8 dense.
    for scheme in Int8Scheme::ALL {
        dense_int8(&s, &mut ws, copy, scheme, &[1, 16, 32, 64, 128, 4096], &|m, n, k| dense_plans(&s, scheme_kind(scheme), Some(scheme), m, n, k));
    }

    // AWQ decode (group 128).
    for (n, k) in SHAPES.into_iter().filter(|(n, k)| shape_listed(&format!("{n}x{k}"))) {
        let nc = copies_for(awq_bytes(n, k));
        let layers: Vec<_> = (0..nc).map(|c| awq_layer(&s, 1, n, k, 300 + 3 * c as u64)).collect();
        for m in listed(&[1, 16, 32, 64]) {
            let a = random_f(&s, DType::Bf16, &[m, k], -1.0, 1.0, 9);
            let out = DeviceTensor::empty(&s, DType::Bf16, &[m, n]).unwrap();
            for (kind, plan) in dense_plans(&s, "awq", None, m, n, k) {
                let us = time_us(&s, |i| {
                    let (qw, qz, sc) = &layers[i % nc];
                    let w = AwqWeight { qweight: qw, qzeros: qz, scales: sc, experts: 1, n, k, group: 128 };
                    qg::awq_gemm_with(&s, &mut ws, plan, &out, &a, &w).unwrap();
                });
                row(&kind, &format!("{n}x{k}"), m, format!("{}/s{}", plan.tile.label(), plan.splits), us, 2.0 * (m * n * k) as f64, awq_bytes(n, k) as f64, copy);
            }
        }
    }

    // MoE, TP-8 and EP-8 shards: block INT8 and AWQ.
    for (label, e, inter) in SHARDS.into_iter().filter(|(label, ..)| shape_listed(label)) {
        let w8 = int8_experts(&s, Int8Scheme::Block, e, inter, 31);
        let (a13q, a13z, a13s) = awq_layer(&s, e, 2 * inter, HIDDEN, 35);
        let (a2q, a2z, a2s) = awq_layer(&s, e, HIDDEN, inter, 38);
        let aw13 = AwqWeight { qweight: &a13q, qzeros: &a13z, scales: &a13s, experts: e, n: 2 * inter, k: HIDDEN, group: 128 };
        let aw2 = AwqWeight { qweight: &a2q, qzeros: &a2z, scales: &a2s, experts: e, n: HIDDEN, k: inter, group: 128 };
        for t in listed(&[1, 16, 64, 128, 4096]) {
            let p = t * TOPK;
            let (ids, hit) = moe_ids(t, e, TOPK, 1000 + t as u64);
            let dids = DeviceTensor::from_slice(&s, &[t, TOPK], &ids).unwrap();
            let x = random_f(&s, DType::Bf16, &[t, HIDDEN], -1.0, 1.0, 42);
            let flops = 2.0 * (p * 3 * inter * HIDDEN) as f64;
            // The default plans, and the tiled mma.sync kernels where the default is another.
            let per_expert = p.div_ceil(e.min(p));
            let (tile, tiled) = (QuantTile::for_rows(per_expert), QuantTile::tiled_for_rows(per_expert));
            let mut runs = Vec::new();
            for (kind, kernel) in [("moe-i8", QuantKernel::Int8), ("moe-awq", QuantKernel::Awq)] {
                let (gu, dn, max_tiles) = moe_plans(kernel, tile, p, e, inter);
                let default = (for_stream(&s, kernel, gu), for_stream(&s, kernel, dn), max_tiles);
                runs.push((kind.to_string(), kernel, default));
                if default.0.tile != tiled {
                    runs.push((format!("{kind}-mma"), kernel, moe_plans(kernel, tiled, p, e, inter)));
                }
                if kernel == QuantKernel::Awq && (9..=64).contains(&per_expert) {
                    let st64 = QuantTile::Stream(StreamTile::T64);
                    runs.push((format!("{kind}-st"), kernel, moe_plans(kernel, st64, p, e, inter)));
                }
            }
            for (kind, kernel, plans) in runs {
                let (gu, dn, max_tiles) = plans;
                let (us, bytes) = match kernel {
                    QuantKernel::Int8 => (time_int8_moe(&s, &mut ws, &w8, &dids, &x, e, inter, plans), hit * 3 * inter * HIDDEN),
                    QuantKernel::Awq => {
                        let bm = gu.tile.bm();
                        let gate_up = DeviceTensor::empty(&s, DType::Bf16, &[max_tiles * bm, 2 * inter]).unwrap();
                        let h = DeviceTensor::empty(&s, DType::Bf16, &[max_tiles * bm, inter]).unwrap();
                        let y = DeviceTensor::empty(&s, DType::Bf16, &[max_tiles * bm, HIDDEN]).unwrap();
                        let us = time_us(&s, |_| {
                            let al = qg::moe_align_tiles(&s, &dids, e, bm).unwrap();
                            qg::awq_grouped_gemm(&s, &mut ws, gu, &gate_up, &x, &aw13, &al.rows(true, TOPK)).unwrap();
                            dispatch::silu_mul(&s, &h, &gate_up).unwrap();
                            qg::awq_grouped_gemm(&s, &mut ws, dn, &y, &h, &aw2, &al.rows(false, 1)).unwrap();
                        });
                        (us, hit * (awq_bytes(2 * inter, HIDDEN) + awq_bytes(HIDDEN, inter)))
                    }
                };
                row(&kind, label, t, format!("{}/s{}/{}", gu.tile.label(), gu.splits, dn.splits), us, flops, bytes as f64, copy);
            }
            // The whole fused pipeline on the default plan (the wgs entry on sm_90a at decode sizes).
            let w = MoeInt8Weights { scheme: w8.scheme, w13: &w8.w13, w13_scale: &w8.w13s, w2: &w8.w2, w2_scale: &w8.w2s };
            let tw = random_f(&s, DType::F32, &[t, TOPK], 0.05, 0.3, 41);
            let out = DeviceTensor::empty(&s, DType::Bf16, &[t, HIDDEN]).unwrap();
            let mut wsp = FusedMoeWorkspace::new();
            let us = time_us(&s, |_| int8_moe(&s, &mut wsp, &out, &x, &dids, &tw, &w, 0.0).unwrap());
            row("moe-i8-fused", label, t, "default".into(), us, flops, (hit * 3 * inter * HIDDEN) as f64, copy);
            // AWQ likewise; `-old`: the plan before the wgs entry (DSV3_GEMM_WGS=0 for that row).
            let wa = MoeAwqWeights {
                w13: AwqWeight { qweight: &a13q, qzeros: &a13z, scales: &a13s, experts: e, n: 2 * inter, k: HIDDEN, group: 128 },
                w2: AwqWeight { qweight: &a2q, qzeros: &a2z, scales: &a2s, experts: e, n: HIDDEN, k: inter, group: 128 },
            };
            let wgs = awq_moe_wgs_tile(&s, p, e, HIDDEN, inter);
            let abytes = (hit * (awq_bytes(2 * inter, HIDDEN) + awq_bytes(HIDDEN, inter))) as f64;
            let mut awq_rows = vec![("moe-awq-fused", wgs.map(|t| t.label()).unwrap_or("grouped"), false)];
            if wgs.is_some() {
                awq_rows.push(("moe-awq-fused-old", "grouped", true));
            }
            for (kind, plan, old) in awq_rows {
                let prev = std::env::var_os("DSV3_GEMM_WGS");
                if old {
                    std::env::set_var("DSV3_GEMM_WGS", "0");
                }
                let us = time_us(&s, |_| awq_moe(&s, &mut wsp, &out, &x, &dids, &tw, &wa, 0.0).unwrap());
                match prev {
                    Some(v) => std::env::set_var("DSV3_GEMM_WGS", v),
                    None => std::env::remove_var("DSV3_GEMM_WGS"),
                }
                row(kind, label, t, plan.into(), us, flops, abytes, copy);
            }
        }
    }

    // The INT8 wgmma v2 tile forced, last: a fault there (a sticky CUDA error) cannot cost the
    // forced-tile-free rows above.
    if !qg::int8_wgmma2_available(&s) {
        println!("int8 wgmma2: not available on this stream (needs the sm_90a cubin on an sm_90 GPU): no -wg2p rows");
        return;
    }
    if std::env::var("DSV3_INT8_BENCH_WGMMA2").map(|v| v == "0").unwrap_or(false) {
        return;
    }
    let wg2 = QuantPlan { tile: QuantTile::Wg2Pair, splits: 1 };
    for scheme in Int8Scheme::ALL {
        dense_int8(&s, &mut ws, copy, scheme, &[4096], &|_, _, _| vec![(format!("{}-wg2p", scheme_kind(scheme)), wg2)]);
    }
    let t = 4096;
    let x = random_f(&s, DType::Bf16, &[t, HIDDEN], -1.0, 1.0, 42);
    for (label, e, inter) in SHARDS {
        let (ids, hit) = moe_ids(t, e, TOPK, 1000 + t as u64);
        let dids = DeviceTensor::from_slice(&s, &[t, TOPK], &ids).unwrap();
        let (.., max_tiles) = moe_plans(QuantKernel::Int8, QuantTile::Wg2Pair, t * TOPK, e, inter);
        for (scheme, kind) in [(Int8Scheme::Block, "moe-i8-wg2p"), (Int8Scheme::Channel, "moe-i8ch-wg2p")] {
            let w8 = int8_experts(&s, scheme, e, inter, 31);
            let us = time_int8_moe(&s, &mut ws, &w8, &dids, &x, e, inter, (wg2, wg2, max_tiles));
            row(kind, label, t, "wg2p/s1/1".into(), us, 2.0 * (t * TOPK * 3 * inter * HIDDEN) as f64, (hit * 3 * inter * HIDDEN) as f64, copy);
        }
    }
}
