//! The MLA decode kernels (`mla_decode` family: split-KV tensor-core kernel, combine, scheduler
//! metadata) against the CPU reference `ops::attention::mla_latent_attention` and a float64
//! reference, on every NVIDIA code variant this build embedded (sm_90a cubin, compute_80 and
//! compute_89 PTX JIT-compiled by the driver, the fatbin, NVRTC).
//!
//! Inputs: random permuted block tables (pages handed out shuffled, spare pages in between),
//! the whole cache poisoned with NaN except the used slots, varlen batches, s_q ∈ {1, 2} with
//! the causal mask inside the query block, H ∈ {16, 128} (and odd head counts), several split
//! counts (one part, a few parts: sequences cut across parts and parts spanning sequences, one
//! part per SM). Outputs and LSE are poisoned before each launch.
//!
//! FP8 e4m3 latent cache (`mla_decode_fp8_*` / `mla_decode_t32_fp8_*`, 656-byte rows): the same
//! cases with the rows quantized by the CPU quantizer (`ops::mla_fp8`) and the unused slots
//! filled with NaN bytes (0x7f / 0xff latent bytes, NaN scales, NaN rope); the reference runs
//! on the dequantized cache as the kernel consumes it (bf16(e4m3 · scale)), so the tolerance is
//! the bf16 cache's. The quantize-on-write kernel (`mla_cache_write_fp8_*`) is checked bit for
//! bit against the CPU quantizer, and a cache written by it is decoded.
//!
//! The sm_90a wgmma kernel (`mla_decode_wgmma_{bf16,fp8}_*`) runs through the same cases, bf16
//! and fp8 caches (proptests, edges, graph replay, the GPU-written fp8 cache) on the streams that
//! load its sm_90a cubin; `mla_decode_wgmma_fp8_heads` adds fp8 cases at h = 16 / 32 / 64 / 128;
//! `mla_decode_wgmma_streams_present` fails where no stream can run it.
//!
//! Ignored in the CPU suite; run on the GPU machine with `--include-ignored`. Without a CUDA
//! device they panic ("no CUDA device"). `DSV3_TEST_NVRTC=0` skips the NVRTC variant.

mod common;

use common::gpu::*;
use dsv3::backend::cuda::CudaStream;
use dsv3::backend::mla::{self, cuda_util, MlaCacheDtype, MlaDecodeMeta, MlaDecodePlan, DK, DV, FP8_ROW_BYTES, PAGE};
use dsv3::backend::{DType, DeviceTensor, GpuStream};
use dsv3::ops::attention::{mla_latent_attention, MlaDims};
use dsv3::ops::mla_fp8;
use dsv3::tensor::rel_error;
use proptest::prelude::*;
use rand::Rng;

/// The streams of every code variant of the `mla_decode` module.
fn mla_streams() -> &'static [(String, CudaStream)] {
    variant_streams(Some("mla_decode"))
}

/// One decode batch on the host: bf16-rounded values as f32, the paged layout, NaN in unused slots.
struct Case {
    /// bf16 cache (`cache`) or fp8 cache (`cache_fp8`).
    kind: MlaCacheDtype,
    b: usize,
    s_q: usize,
    h: usize,
    lens: Vec<i32>,
    max_pages: usize,
    total_pages: usize,
    block_table: Vec<i32>,
    /// [total_pages, 64, 576], NaN where no sequence writes (bf16 cache; empty for fp8).
    cache: Vec<f32>,
    /// [total_pages, 64, 656] bytes, the NaN row pattern where no sequence writes (fp8 cache;
    /// empty for bf16).
    cache_fp8: Vec<u8>,
    /// per sequence, its rows [len, 576] in order (the reference's contiguous view): for the fp8
    /// cache, the dequantized rows as the kernel consumes them, bf16(e4m3 · scale)
    seq_rows: Vec<Vec<f32>>,
    /// [B, s_q, H, 576]
    q: Vec<f32>,
    scale: f32,
}

/// An fp8 cache row that is NaN everywhere: latent bytes 0x7f / 0xff (alternating), NaN scales,
/// NaN rope values.
fn nan_row_fp8() -> Vec<u8> {
    let mut row = vec![0u8; FP8_ROW_BYTES];
    for (i, b) in row[..mla_fp8::SCALES_AT].iter_mut().enumerate() {
        *b = if i % 2 == 0 { 0x7f } else { 0xff };
    }
    for g in 0..mla_fp8::GROUPS {
        row[mla_fp8::SCALES_AT + 4 * g..][..4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    for i in 0..mla_fp8::ROPE {
        row[mla_fp8::ROPE_AT + 2 * i..][..2].copy_from_slice(&half::bf16::NAN.to_bits().to_le_bytes());
    }
    row
}

/// A latent row [c_kv | k_pe] for the fp8 cache: each 128-value group with its own magnitude
/// (so the four scales differ), in [-mag, mag).
fn fp8_source_row(r: &mut rand::rngs::StdRng) -> Vec<f32> {
    let mut row = Vec::with_capacity(DK);
    for _ in 0..mla_fp8::GROUPS {
        let mag = [0.25f32, 0.5, 1.0, 2.0][r.gen_range(0..4)];
        row.extend((0..mla_fp8::GROUP).map(|_| r.gen_range(-1.0f32..1.0) * mag));
    }
    row.extend((0..mla_fp8::ROPE).map(|_| r.gen_range(-1.0f32..1.0)));
    row
}

/// What the fp8 decode kernel computes with for a quantized row: bf16(e4m3 · scale), rope bf16.
fn fp8_kernel_view(bytes: &[u8]) -> Vec<f32> {
    mla_fp8::dequantize_row(bytes).unwrap().into_iter().map(bf16r).collect()
}

fn make_case_kind(seed: u64, lens: Vec<i32>, s_q: usize, h: usize, kind: MlaCacheDtype) -> Case {
    let fp8 = kind == MlaCacheDtype::Fp8E4m3;
    let mut r = rng(seed);
    let b = lens.len();
    let max_pages = lens.iter().map(|&l| (l.max(0) as usize).div_ceil(PAGE)).max().unwrap().max(1);
    let total_pages = b * max_pages + 5;
    let mut pages: Vec<i32> = (0..total_pages as i32).collect();
    for i in (1..pages.len()).rev() {
        let j = r.gen_range(0..=i);
        pages.swap(i, j);
    }
    // Unused table entries point at random pages too (the kernel must not read past seq_len).
    let block_table: Vec<i32> = (0..b * max_pages).map(|i| pages[i]).collect();
    let mut cache = if fp8 { Vec::new() } else { vec![f32::NAN; total_pages * PAGE * DK] };
    let mut cache_fp8 = if fp8 { nan_row_fp8().repeat(total_pages * PAGE) } else { Vec::new() };
    let mut seq_rows = Vec::new();
    for (s, &l) in lens.iter().enumerate() {
        let mut rows = Vec::with_capacity(l.max(0) as usize * DK);
        for t in 0..l.max(0) as usize {
            let page = block_table[s * max_pages + t / PAGE] as usize;
            let slot = page * PAGE + t % PAGE;
            if fp8 {
                let q = mla_fp8::quantize_row(&fp8_source_row(&mut r)).unwrap();
                cache_fp8[slot * FP8_ROW_BYTES..(slot + 1) * FP8_ROW_BYTES].copy_from_slice(&q);
                rows.extend(fp8_kernel_view(&q));
                continue;
            }
            let base = slot * DK;
            for d in 0..DK {
                let v = bf16r(r.gen_range(-1.0f32..1.0));
                cache[base + d] = v;
                rows.push(v);
            }
        }
        seq_rows.push(rows);
    }
    // Queries scaled so that softmax is neither flat nor one-hot.
    let q: Vec<f32> = (0..b * s_q * h * DK).map(|_| bf16r(r.gen_range(-1.0f32..1.0) * 2.0)).collect();
    Case { kind, b, s_q, h, lens, max_pages, total_pages, block_table, cache, cache_fp8, seq_rows, q, scale: 1.0 / (192f32).sqrt() }
}

/// CPU reference (f32, the crate's op): o_lat [B, s_q, H, 512], lse [B, s_q, H].
fn reference(c: &Case) -> (Vec<f32>, Vec<f32>) {
    let d = MlaDims { heads: c.h, nope: 0, rope: DK - DV, v: DV, kv_lora: DV };
    let (mut o, mut lse) = (Vec::new(), Vec::new());
    for s in 0..c.b {
        let qb = &c.q[s * c.s_q * c.h * DK..(s + 1) * c.s_q * c.h * DK];
        let len = c.lens[s].max(0) as usize;
        if len < c.s_q {
            o.resize(o.len() + c.s_q * c.h * DV, 0.0);
            lse.resize(lse.len() + c.s_q * c.h, f32::NEG_INFINITY);
            continue;
        }
        let q_lat: Vec<f32> = qb.chunks(DK).flat_map(|r| r[..DV].to_vec()).collect();
        let q_pe: Vec<f32> = qb.chunks(DK).flat_map(|r| r[DV..].to_vec()).collect();
        let (os, ls) = mla_latent_attention(&q_lat, &q_pe, &c.seq_rows[s], &d, len - c.s_q, c.scale);
        o.extend(os);
        lse.extend(ls);
    }
    (o, lse)
}

/// Float64 reference of one (sequence, query, head) row: (o_lat, lse).
fn reference_f64(c: &Case, s: usize, j: usize, hh: usize) -> (Vec<f64>, f64) {
    let q = &c.q[((s * c.s_q + j) * c.h + hh) * DK..][..DK];
    let vis = c.lens[s] as usize - c.s_q + j + 1;
    let rows = &c.seq_rows[s];
    let sc: Vec<f64> = (0..vis)
        .map(|t| q.iter().zip(&rows[t * DK..(t + 1) * DK]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * c.scale as f64)
        .collect();
    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
    let sum: f64 = w.iter().sum();
    let mut o = vec![0f64; DV];
    for (t, wt) in w.iter().enumerate() {
        for (d, od) in o.iter_mut().enumerate() {
            *od += wt / sum * rows[t * DK + d] as f64;
        }
    }
    (o, m + sum.ln())
}

struct Got {
    o: Vec<f32>,
    lse: Vec<f32>,
    meta: Vec<i32>,
}

/// The split kernel of a test run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// mma.sync, one page (64 keys) per tile.
    Page,
    /// mma.sync, 32-key tiles (two blocks per SM; plans with mw <= 2).
    Small,
    /// The sm_90a wgmma kernel (bf16 or fp8 cache, streams that load its sm_90a cubin).
    Wgmma,
}

const KERNELS: [Kernel; 3] = [Kernel::Page, Kernel::Small, Kernel::Wgmma];

impl Kernel {
    fn plan(self, p: MlaDecodePlan) -> MlaDecodePlan {
        p.with_small_tiles(self == Kernel::Small).with_wgmma(self == Kernel::Wgmma)
    }
    /// Whether this kernel serves the plan's shape and cache on stream `s`.
    fn runs(self, s: &CudaStream, p: &MlaDecodePlan) -> bool {
        match self {
            Kernel::Page => true,
            Kernel::Small => p.small_tiles,
            Kernel::Wgmma => mla::mla_wgmma_available(s),
        }
    }
}

/// The plan of a test run for kernel `k`, parts as given or automatic.
fn plan_for(s: &CudaStream, c: &Case, k: Kernel, parts: Option<usize>) -> MlaDecodePlan {
    let sms = cuda_util::sm_count(s).unwrap();
    let plan = k.plan(MlaDecodePlan::new(c.b + 3, c.s_q, c.h, sms).unwrap()).with_cache_dtype(c.kind);
    match parts {
        Some(p) => plan.with_parts(p),
        None => plan,
    }
}

fn run_gpu(s: &CudaStream, c: &Case, out_dtype: DType, parts: Option<usize>, k: Kernel) -> Got {
    let plan = plan_for(s, c, k, parts);
    let meta = MlaDecodeMeta::new(s, plan).unwrap();
    // Poison the metadata and workspaces too: everything the kernels read must be written first.
    meta.meta.poison(s).unwrap();
    meta.o_ws.poison(s).unwrap();
    meta.lse_ws.poison(s).unwrap();
    let q = up(s, &[c.b, c.s_q, c.h, DK], &c.q, DType::Bf16);
    let cache = upload_cache(s, c);
    let bt = up_i32(s, &[c.b, c.max_pages], &c.block_table);
    let sl = up_i32(s, &[c.b], &c.lens);
    let out = poisoned(s, out_dtype, &[c.b, c.s_q, c.h, DV]);
    let lse = poisoned(s, DType::F32, &[c.b, c.s_q, c.h]);
    mla::mla_decode_metadata(s, &meta, &sl).unwrap();
    mla::mla_decode(s, &out, &lse, &q, &cache, &bt, &sl, &meta, c.scale).unwrap();
    s.synchronize().unwrap();
    let m = meta.meta.to_vec::<i32>(s).unwrap();
    Got { o: out.to_f32(s).unwrap(), lse: lse.to_f32(s).unwrap(), meta: m[..4 + c.b + 1].to_vec() }
}

/// The case's cache on the device: bf16 [pages, 64, 576] or u8 [pages, 64, 656].
fn upload_cache(s: &CudaStream, c: &Case) -> DeviceTensor {
    match c.kind {
        MlaCacheDtype::Bf16 => up(s, &[c.total_pages, PAGE, DK], &c.cache, DType::Bf16),
        MlaCacheDtype::Fp8E4m3 => DeviceTensor::from_slice(s, &[c.total_pages, PAGE, FP8_ROW_BYTES], &c.cache_fp8).unwrap(),
    }
}

#[track_caller]
fn check(what: &str, c: &Case, g: &Got, want_o: &[f32], want_lse: &[f32], parts: usize) {
    assert_eq!(g.meta, mla::host_metadata(&c.lens, parts), "{what}: metadata");
    if let Some(i) = g.o.iter().position(|x| !x.is_finite()) {
        panic!("{what}: non-finite output {} at {i} (of {})", g.o[i], g.o.len());
    }
    let e = rel_error(&g.o, want_o);
    assert!(e <= 1e-2, "{what}: output relative error {e:e} > 1e-2");
    for (i, (a, b)) in g.lse.iter().zip(want_lse).enumerate() {
        let ok = if b.is_infinite() { a == b } else { (a - b).abs() <= 1e-3 };
        assert!(ok, "{what}: lse[{i}] = {a}, want {b}");
    }
}

fn lens_strategy(max_b: usize, max_len: i32) -> impl Strategy<Value = Vec<i32>> {
    prop::collection::vec(2i32..max_len, 1..=max_b)
}

fn run_all(seed: u64, lens: Vec<i32>, s_q: usize, h: usize, f64_rows: usize) {
    run_all_kind(seed, lens, s_q, h, f64_rows, MlaCacheDtype::Bf16)
}

fn run_all_kind(seed: u64, lens: Vec<i32>, s_q: usize, h: usize, f64_rows: usize, kind: MlaCacheDtype) {
    let c = make_case_kind(seed, lens, s_q, h, kind);
    let (want_o, want_lse) = reference(&c);
    // The f32 CPU reference itself against float64 on a few rows.
    let mut r = rng(seed ^ 0x5eed);
    for _ in 0..f64_rows {
        let (sq, j, hh) = (r.gen_range(0..c.b), r.gen_range(0..s_q), r.gen_range(0..h));
        if (c.lens[sq] as usize) < s_q {
            continue;
        }
        let (o64, l64) = reference_f64(&c, sq, j, hh);
        let row = (sq * s_q + j) * h + hh;
        let o32: Vec<f32> = want_o[row * DV..(row + 1) * DV].to_vec();
        let o64f: Vec<f32> = o64.iter().map(|&x| x as f32).collect();
        assert!(rel_error(&o32, &o64f) < 1e-4, "f32 reference vs f64: {}", rel_error(&o32, &o64f));
        assert!((want_lse[row] as f64 - l64).abs() < 1e-4);
    }
    for (name, s) in mla_streams() {
        for k in KERNELS {
            let p0 = plan_for(s, &c, k, None);
            if !k.runs(s, &p0) {
                continue;
            }
            let auto = p0.num_parts;
            for (parts, tag) in [(None, "auto"), (Some(1), "1 part"), (Some(3), "3 parts"), (Some(7), "7 parts")] {
                for od in [DType::Bf16, DType::F32] {
                    let g = run_gpu(s, &c, od, parts, k);
                    let what = format!("{name} {} B={} s_q={s_q} H={h} lens={:?} {tag} out {od}", p0.kernel_name(od), c.b, c.lens);
                    check(&what, &c, &g, &want_o, &want_lse, parts.unwrap_or(auto));
                    // And against float64 directly on a few rows.
                    for _ in 0..f64_rows.min(4) {
                        let (sq, j, hh) = (r.gen_range(0..c.b), r.gen_range(0..s_q), r.gen_range(0..h));
                        if (c.lens[sq] as usize) < s_q {
                            continue;
                        }
                        let (o64, l64) = reference_f64(&c, sq, j, hh);
                        let row = (sq * s_q + j) * h + hh;
                        let o64f: Vec<f32> = o64.iter().map(|&x| x as f32).collect();
                        let e = rel_error(&g.o[row * DV..(row + 1) * DV], &o64f);
                        assert!(e <= 1e-2, "{what}: row {row} vs float64: {e:e}");
                        assert!((g.lse[row] as f64 - l64).abs() <= 1e-3, "{what}: row {row} lse {} vs float64 {l64}", g.lse[row]);
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(cfg(6))]

    /// H = 16: one m-tile (s_q = 1) or two (s_q = 2); lengths across page boundaries.
    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn mla_decode_h16(seed: u64, lens in lens_strategy(9, 700), s_q in 1usize..=2) {
        run_all(seed, lens, s_q, 16, 6);
    }

    /// H = 128: four m-tiles per block, two or four row blocks.
    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn mla_decode_h128(seed: u64, lens in lens_strategy(4, 400), s_q in 1usize..=2) {
        run_all(seed, lens, s_q, 128, 2);
    }

    /// Odd head counts (rows padded inside an m-tile; a partial last row block).
    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn mla_decode_odd_heads(seed: u64, lens in lens_strategy(5, 300), s_q in 1usize..=2, h in prop::sample::select(vec![1usize, 5, 20, 40, 72])) {
        run_all(seed, lens, s_q, h, 2);
    }
}

/// Fixed shapes that exercise the edges: exactly one page, one key past a page, s_q = 2 with
/// two keys (the first query sees one key), long sequences beside short ones, an empty sequence.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn mla_decode_edges() {
    edges(MlaCacheDtype::Bf16);
}

fn edges(kind: MlaCacheDtype) {
    for (i, (lens, s_q, h)) in [
        (vec![64], 1usize, 16usize),
        (vec![65, 1, 128], 1, 16),
        (vec![2, 3, 64, 65], 2, 16),
        (vec![3000, 7, 129], 2, 16),
        (vec![1500, 64], 1, 128),
        (vec![2, 2], 2, 128),
    ]
    .into_iter()
    .enumerate()
    {
        run_all_kind(1000 + i as u64, lens, s_q, h, 3, kind);
    }
    // An empty sequence between two others: zeros and lse = -inf for it.
    let c = make_case_kind(7, vec![100, 0, 70], 1, 16, kind);
    let (want_o, want_lse) = reference(&c);
    for (name, s) in mla_streams() {
        for parts in [1usize, 2, 5] {
            for k in KERNELS {
                if !k.runs(s, &plan_for(s, &c, k, None)) {
                    continue;
                }
                let g = run_gpu(s, &c, DType::F32, Some(parts), k);
                check(&format!("{name} {kind} cache: empty sequence, {parts} parts, {k:?} kernel"), &c, &g, &want_o, &want_lse, parts);
            }
        }
    }
}

/// The scheduler kernel alone against the host mirror, up to batches past one block of threads.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn mla_decode_metadata_matches_host() {
    let mut r = rng(3);
    for (name, s) in mla_streams() {
        for b in [1usize, 7, 128, 1023, 1024, 1025, 3000] {
            for parts in [1usize, 33, 132] {
                let lens: Vec<i32> = (0..b).map(|_| if r.gen_bool(0.1) { 0 } else { r.gen_range(1..20000) }).collect();
                let plan = MlaDecodePlan::new(b, 1, 16, 132).unwrap().with_parts(parts);
                let meta = MlaDecodeMeta::new(s, plan).unwrap();
                meta.meta.poison(s).unwrap();
                let sl = up_i32(s, &[b], &lens);
                mla::mla_decode_metadata(s, &meta, &sl).unwrap();
                s.synchronize().unwrap();
                let got = meta.meta.to_vec::<i32>(s).unwrap();
                assert_eq!(got, mla::host_metadata(&lens, parts), "{name}: B={b} parts={parts}");
            }
        }
    }
}

/// Wrong shapes are refused before any launch.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn mla_decode_checks_shapes() {
    let (_, s) = &mla_streams()[0];
    let plan = MlaDecodePlan::new(4, 1, 16, 132).unwrap();
    let meta = MlaDecodeMeta::new(s, plan).unwrap();
    let q = DeviceTensor::empty(s, DType::Bf16, &[2, 1, 16, DK]).unwrap();
    let cache = DeviceTensor::empty(s, DType::Bf16, &[4, 32, DK]).unwrap();
    let bt = DeviceTensor::empty(s, DType::I32, &[2, 2]).unwrap();
    let sl = DeviceTensor::empty(s, DType::I32, &[2]).unwrap();
    let out = DeviceTensor::empty(s, DType::Bf16, &[2, 1, 16, DV]).unwrap();
    let lse = DeviceTensor::empty(s, DType::F32, &[2, 1, 16]).unwrap();
    let e = mla::mla_decode(s, &out, &lse, &q, &cache, &bt, &sl, &meta, 0.1).unwrap_err().to_string();
    assert!(e.contains("cache must be [pages, 64, 576]"), "{e}");
}

/// The step captured once in a CUDA graph (metadata + decode) and replayed with new sequence
/// lengths, block tables and queries written into the same buffers: the fixed-size metadata
/// makes the graph reusable across steps.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn mla_decode_graph_replay_with_new_lengths() {
    graph_replay(MlaCacheDtype::Bf16);
}

/// The sm_90a wgmma kernel must run somewhere: the tests above skip it on streams that cannot
/// load it (PTX, NVRTC, other GPUs), so without this check a build or device that never runs it
/// would pass silently. Fails unless some stream runs it, and checks that it is refused elsewhere.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn mla_decode_wgmma_streams_present() {
    let streams = mla_streams();
    let able: Vec<&str> = streams.iter().filter(|(_, s)| mla::mla_wgmma_available(s)).map(|(n, _)| n.as_str()).collect();
    let all: Vec<&str> = streams.iter().map(|(n, _)| n.as_str()).collect();
    assert!(!able.is_empty(), "no stream runs the sm_90a wgmma MLA kernel (streams: {all:?}): needs an H100 / H200 and a build with sm_90a in DSV3_CUDA_ARCHS");
    eprintln!("wgmma MLA kernel runs on: {able:?} (of {all:?})");
    // A forced wgmma plan is refused (typed error, no launch) where the kernel cannot run; where
    // it can, it serves both cache types.
    for kind in [MlaCacheDtype::Bf16, MlaCacheDtype::Fp8E4m3] {
        let c = make_case_kind(5, vec![70, 3], 1, 16, kind);
        let (want_o, want_lse) = reference(&c);
        for (name, s) in streams {
            let plan = plan_for(s, &c, Kernel::Wgmma, None);
            assert_eq!(plan.kernel_name(DType::F32), format!("mla_decode_wgmma_{}_f32", kind.kernel_tag()));
            let meta = MlaDecodeMeta::new(s, plan).unwrap();
            let q = up(s, &[c.b, c.s_q, c.h, DK], &c.q, DType::Bf16);
            let cache = upload_cache(s, &c);
            let bt = up_i32(s, &[c.b, c.max_pages], &c.block_table);
            let sl = up_i32(s, &[c.b], &c.lens);
            let out = poisoned(s, DType::F32, &[c.b, c.s_q, c.h, DV]);
            let lse = poisoned(s, DType::F32, &[c.b, c.s_q, c.h]);
            mla::mla_decode_metadata(s, &meta, &sl).unwrap();
            let r = mla::mla_decode(s, &out, &lse, &q, &cache, &bt, &sl, &meta, c.scale);
            if mla::mla_wgmma_available(s) {
                r.unwrap_or_else(|e| panic!("{name} {kind}: {e}"));
                let g = run_gpu(s, &c, DType::F32, None, Kernel::Wgmma);
                check(&format!("{name} {} (forced)", plan.kernel_name(DType::F32)), &c, &g, &want_o, &want_lse, plan.num_parts);
            } else {
                let e = r.unwrap_err().to_string();
                assert!(e.contains("cannot run on this stream"), "{name} {kind}: {e}");
            }
        }
    }
}

/// The fp8-cache wgmma kernel alone (its in-place dequantization: the latent bands, the scales
/// in chunk 6, the rope box, zeroed rows past the end) at every head count of the model's TP
/// shards (16 .. 128) and s_q 1 / 2, including one-tile and odd-tile segments (parts 1 / 3 / 7 /
/// auto, via run_all_kind). The mma.sync kernels run too: the same references.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn mla_decode_wgmma_fp8_heads() {
    if !mla_streams().iter().any(|(_, s)| mla::mla_wgmma_available(s)) {
        eprintln!("no stream runs the sm_90a wgmma kernel: mla_decode_wgmma_streams_present reports it");
        return;
    }
    for (i, (lens, s_q, h)) in [
        (vec![64, 1, 700, 129], 1usize, 16usize),
        (vec![65, 3000, 2], 2, 16),
        (vec![300, 63, 128], 1, 32),
        (vec![500, 5], 2, 32),
        (vec![190, 64, 1], 1, 64),
        (vec![257, 40], 2, 64),
        (vec![400, 3], 1, 128),
        (vec![130, 66], 2, 128),
    ]
    .into_iter()
    .enumerate()
    {
        run_all_kind(3000 + i as u64, lens, s_q, h, 2, MlaCacheDtype::Fp8E4m3);
    }
}

fn graph_replay(kind: MlaCacheDtype) {
    // Streams of its own: a capture must not see the other test threads' work (they share
    // mla_streams()).
    let _ = mla_streams(); // the device check
    let own: Vec<(String, CudaStream)> = variants(Some("mla_decode"))
        .into_iter()
        .map(|v| (v.to_string(), CudaStream::with_variant(0, v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"))))
        .collect();
    for (name, s) in &own {
        let (b, s_q, h, max_pages) = (4usize, 2usize, 16usize, 12usize);
        let sms = cuda_util::sm_count(s).unwrap();
        for k in KERNELS {
            let plan = k.plan(MlaDecodePlan::new(b, s_q, h, sms).unwrap()).with_cache_dtype(kind);
            if !k.runs(s, &plan) {
                continue;
            }
            let meta = MlaDecodeMeta::new(s, plan).unwrap();
            let total_pages = b * max_pages + 5;
            let q = DeviceTensor::empty(s, DType::Bf16, &[b, s_q, h, DK]).unwrap();
            let cache = DeviceTensor::empty(s, kind.tensor_dtype(), &[total_pages, PAGE, kind.row_len()]).unwrap();
            let bt = DeviceTensor::empty(s, DType::I32, &[b, max_pages]).unwrap();
            let sl = DeviceTensor::empty(s, DType::I32, &[b]).unwrap();
            let out = DeviceTensor::empty(s, DType::Bf16, &[b, s_q, h, DV]).unwrap();
            let lse = DeviceTensor::empty(s, DType::F32, &[b, s_q, h]).unwrap();
            let upload = |c: &Case| unsafe {
                let bytes = |v: &[f32]| v.iter().flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes()).collect::<Vec<u8>>();
                let ints = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
                assert_eq!(c.total_pages, total_pages);
                // The case's table has its own max_pages: re-lay it out with this test's width.
                let mut wide = vec![0i32; b * max_pages];
                for sq in 0..b {
                    for p in 0..c.max_pages {
                        wide[sq * max_pages + p] = c.block_table[sq * c.max_pages + p];
                    }
                }
                s.copy_htod(q.raw(), &bytes(&c.q)).unwrap();
                match kind {
                    MlaCacheDtype::Bf16 => s.copy_htod(cache.raw(), &bytes(&c.cache)).unwrap(),
                    MlaCacheDtype::Fp8E4m3 => s.copy_htod(cache.raw(), &c.cache_fp8).unwrap(),
                }
                s.copy_htod(bt.raw(), &ints(&wide)).unwrap();
                s.copy_htod(sl.raw(), &ints(&c.lens)).unwrap();
            };
            // Pages: make_case sizes total_pages from the longest sequence, so fix it at max_pages.
            let case = |seed: u64, lens: Vec<i32>| {
                let mut c = make_case_kind(seed, lens, s_q, h, kind);
                if c.total_pages != total_pages {
                    // Pad the page pool (extra pages stay NaN) to the graph's fixed size.
                    let extra = total_pages - c.total_pages;
                    match kind {
                        MlaCacheDtype::Bf16 => c.cache.resize(c.cache.len() + extra * PAGE * DK, f32::NAN),
                        MlaCacheDtype::Fp8E4m3 => c.cache_fp8.extend(nan_row_fp8().repeat(extra * PAGE)),
                    }
                    c.total_pages = total_pages;
                }
                c
            };
            let c1 = case(11, vec![700, 65, 2, 300]);
            upload(&c1);
            mla::mla_decode_metadata(s, &meta, &sl).unwrap();
            mla::mla_decode(s, &out, &lse, &q, &cache, &bt, &sl, &meta, c1.scale).unwrap();
            s.synchronize().unwrap();
            let g = cuda_util::Graph::capture(s, || {
                mla::mla_decode_metadata(s, &meta, &sl)?;
                mla::mla_decode(s, &out, &lse, &q, &cache, &bt, &sl, &meta, c1.scale)
            })
            .unwrap_or_else(|e| panic!("{name}: capture: {e}"));
            for (i, lens) in [vec![700, 65, 2, 300], vec![3, 760, 128, 129], vec![64, 64, 64, 64]].into_iter().enumerate() {
                let c = case(20 + i as u64, lens);
                upload(&c);
                out.poison(s).unwrap();
                lse.poison(s).unwrap();
                g.launch().unwrap();
                s.synchronize().unwrap();
                let (want_o, want_lse) = reference(&c);
                let got = Got {
                    o: out.to_f32(s).unwrap(),
                    lse: lse.to_f32(s).unwrap(),
                    meta: meta.meta.to_vec::<i32>(s).unwrap()[..4 + b + 1].to_vec(),
                };
                check(
                    &format!("{name} {} ({kind} cache) graph replay {i}", meta.plan.kernel_name(DType::Bf16)),
                    &c,
                    &got,
                    &want_o,
                    &want_lse,
                    meta.plan.num_parts,
                );
            }
        }
    }
}

// ---- FP8 e4m3 latent cache ----------------------------------------------------------------

proptest! {
    #![proptest_config(cfg(6))]

    /// fp8 cache, H = 16: page-tile and 32-key-tile kernels, s_q ∈ {1, 2}, varlen.
    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn mla_decode_fp8_h16(seed: u64, lens in lens_strategy(9, 700), s_q in 1usize..=2) {
        run_all_kind(seed, lens, s_q, 16, 6, MlaCacheDtype::Fp8E4m3);
    }

    /// fp8 cache, H = 128: four m-tiles per block, two or four row blocks.
    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn mla_decode_fp8_h128(seed: u64, lens in lens_strategy(4, 400), s_q in 1usize..=2) {
        run_all_kind(seed, lens, s_q, 128, 2, MlaCacheDtype::Fp8E4m3);
    }

    /// fp8 cache, odd head counts.
    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn mla_decode_fp8_odd_heads(seed: u64, lens in lens_strategy(5, 300), s_q in 1usize..=2, h in prop::sample::select(vec![1usize, 5, 20, 40, 72])) {
        run_all_kind(seed, lens, s_q, h, 2, MlaCacheDtype::Fp8E4m3);
    }
}

/// fp8 cache: the fixed edge shapes and the empty sequence of [`mla_decode_edges`].
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn mla_decode_fp8_edges() {
    edges(MlaCacheDtype::Fp8E4m3);
}

/// fp8 cache: the step captured in a CUDA graph and replayed with new lengths.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn mla_decode_fp8_graph_replay_with_new_lengths() {
    graph_replay(MlaCacheDtype::Fp8E4m3);
}

/// Rows for the cache-write tests: [T, stride] f32 (values past 576 are junk the kernel must
/// skip), with the awkward rows first: all zeros, one zero group, a group spanning 2^12 in
/// magnitude (e4m3 subnormals after scaling), large values, ties of x / s.
fn write_rows(r: &mut rand::rngs::StdRng, t: usize, stride: usize) -> Vec<f32> {
    let mut kv = Vec::with_capacity(t * stride);
    for i in 0..t {
        let mut row = fp8_source_row(r);
        match i {
            0 => row.iter_mut().for_each(|v| *v = 0.0),
            1 => row[mla_fp8::GROUP..2 * mla_fp8::GROUP]
                .iter_mut()
                .for_each(|v| *v = 0.0),
            2 => row[..mla_fp8::GROUP]
                .iter_mut()
                .enumerate()
                .for_each(|(j, v)| {
                    *v = if j == 0 {
                        448.0
                    } else {
                        (j as f32 - 64.0) * 0.01
                    }
                }),
            3 => row[..mla_fp8::LATENT].iter_mut().for_each(|v| *v *= 3e4),
            4 => {
                // amax 448 -> scale 1: the values themselves are quantized, halfway points included.
                row[3 * mla_fp8::GROUP] = -448.0;
                for (j, v) in row[3 * mla_fp8::GROUP + 1..mla_fp8::LATENT]
                    .iter_mut()
                    .enumerate()
                {
                    *v = 1.0 + (j as f32) / 16.0; // 1 + k/16: ties between e4m3 steps of 1/8
                }
            }
            _ => {}
        }
        row.extend((DK..stride).map(|_| f32::NAN));
        kv.extend(row);
    }
    kv
}

/// One cache-write setup: B sequences of max_pages pages in a shuffled page pool, T tokens at
/// distinct random (sequence, position) slots.
struct WriteCase {
    total_pages: usize,
    max_pages: usize,
    block_table: Vec<i32>,
    seq: Vec<i32>,
    pos: Vec<i32>,
}

fn write_case(r: &mut rand::rngs::StdRng, b: usize, max_pages: usize, t: usize) -> WriteCase {
    let total_pages = b * max_pages + 3;
    let mut pages: Vec<i32> = (0..total_pages as i32).collect();
    for i in (1..pages.len()).rev() {
        pages.swap(i, r.gen_range(0..=i));
    }
    let block_table = pages[..b * max_pages].to_vec();
    let mut slots: Vec<(i32, i32)> = (0..b as i32)
        .flat_map(|s| (0..(max_pages * PAGE) as i32).map(move |p| (s, p)))
        .collect();
    for i in (1..slots.len()).rev() {
        slots.swap(i, r.gen_range(0..=i));
    }
    slots.truncate(t);
    WriteCase {
        total_pages,
        max_pages,
        block_table,
        seq: slots.iter().map(|x| x.0).collect(),
        pos: slots.iter().map(|x| x.1).collect(),
    }
}

impl WriteCase {
    /// Cache row index of token i.
    fn slot(&self, i: usize) -> usize {
        let (s, p) = (self.seq[i] as usize, self.pos[i] as usize);
        self.block_table[s * self.max_pages + p / PAGE] as usize * PAGE + p % PAGE
    }
}

/// The quantize-on-write kernel against the CPU quantizer, bit for bit, for f32 and bf16 rows
/// (row strides 576 and 640); every slot it must not touch keeps its NaN pattern. The bf16
/// cache path of the same API is checked too.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn mla_cache_write_fp8_matches_cpu_quantizer() {
    let mut r = rng(77);
    for (name, s) in mla_streams() {
        for kv_dtype in [DType::F32, DType::Bf16] {
            for (b, max_pages, t, stride) in [
                (1usize, 1usize, 1usize, DK),
                (3, 4, 37, DK),
                (4, 5, 300, 640),
                (2, 3, 384, DK),
            ] {
                let w = write_case(&mut r, b, max_pages, t);
                let mut kv = write_rows(&mut r, t, stride);
                if kv_dtype == DType::Bf16 {
                    kv.iter_mut().for_each(|v| *v = bf16r(*v));
                }
                let what =
                    format!("{name}: mla_cache_write_fp8_{kv_dtype} B={b} T={t} stride={stride}");
                let nan = nan_row_fp8();
                let cache = DeviceTensor::from_slice(
                    s,
                    &[w.total_pages, PAGE, FP8_ROW_BYTES],
                    &nan.repeat(w.total_pages * PAGE),
                )
                .unwrap();
                let dkv = up(s, &[t, stride], &kv, kv_dtype);
                let bt = up_i32(s, &[b, max_pages], &w.block_table);
                let (seq, pos) = (up_i32(s, &[t], &w.seq), up_i32(s, &[t], &w.pos));
                mla::mla_cache_write(s, MlaCacheDtype::Fp8E4m3, &cache, &dkv, &bt, &seq, &pos)
                    .unwrap();
                s.synchronize().unwrap();
                let got = cache.to_vec::<u8>(s).unwrap();
                let mut written = vec![false; w.total_pages * PAGE];
                for i in 0..t {
                    let slot = w.slot(i);
                    written[slot] = true;
                    let want = mla_fp8::quantize_row(&kv[i * stride..i * stride + DK]).unwrap();
                    let g = &got[slot * FP8_ROW_BYTES..(slot + 1) * FP8_ROW_BYTES];
                    if let Some(j) = (0..FP8_ROW_BYTES).find(|&j| g[j] != want[j]) {
                        panic!(
                            "{what}: token {i} (slot {slot}) byte {j}: got {:#04x}, want {:#04x}",
                            g[j], want[j]
                        );
                    }
                }
                for (slot, _) in written.iter().enumerate().filter(|(_, w)| !**w) {
                    assert_eq!(
                        &got[slot * FP8_ROW_BYTES..(slot + 1) * FP8_ROW_BYTES],
                        &nan[..],
                        "{what}: slot {slot} was not written to"
                    );
                }

                // The bf16 cache through the same call: the rows rounded to bf16.
                let cache = poisoned(s, DType::Bf16, &[w.total_pages, PAGE, DK]);
                mla::mla_cache_write(s, MlaCacheDtype::Bf16, &cache, &dkv, &bt, &seq, &pos)
                    .unwrap();
                let got = down(s, &cache);
                for i in 0..t {
                    let slot = w.slot(i);
                    for d in 0..DK {
                        assert_eq!(
                            got[slot * DK + d].to_bits(),
                            bf16r(kv[i * stride + d]).to_bits(),
                            "{what}: bf16 cache token {i} value {d}"
                        );
                    }
                }
            }
        }
    }
}

/// A cache written by the GPU quantizer (every token of every sequence, in a shuffled order),
/// then decoded: the two fp8 kernels agree on the layout.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn mla_decode_fp8_over_gpu_written_cache() {
    for (i, (lens, s_q, h)) in [
        (vec![700, 65, 2, 300], 1usize, 16usize),
        (vec![129, 64, 3], 2, 16),
        (vec![200, 77], 1, 128),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = make_case_kind(500 + i as u64, lens, s_q, h, MlaCacheDtype::Fp8E4m3);
        let mut r = rng(900 + i as u64);
        // Fresh source rows for every token, written by the GPU; the reference from the CPU quantizer.
        let mut toks: Vec<(usize, usize)> = (0..c.b)
            .flat_map(|s| (0..c.lens[s] as usize).map(move |t| (s, t)))
            .collect();
        for k in (1..toks.len()).rev() {
            toks.swap(k, r.gen_range(0..=k));
        }
        let mut kv = Vec::with_capacity(toks.len() * DK);
        for &(s, t) in &toks {
            let row = fp8_source_row(&mut r);
            let q = mla_fp8::quantize_row(&row).unwrap();
            c.seq_rows[s][t * DK..(t + 1) * DK].copy_from_slice(&fp8_kernel_view(&q));
            kv.extend(row);
        }
        let (want_o, want_lse) = reference(&c);
        for (name, s) in mla_streams() {
            let cache = DeviceTensor::from_slice(
                s,
                &[c.total_pages, PAGE, FP8_ROW_BYTES],
                &nan_row_fp8().repeat(c.total_pages * PAGE),
            )
            .unwrap();
            let dkv = up(s, &[toks.len(), DK], &kv, DType::F32);
            let bt = up_i32(s, &[c.b, c.max_pages], &c.block_table);
            let seq = up_i32(
                s,
                &[toks.len()],
                &toks.iter().map(|x| x.0 as i32).collect::<Vec<_>>(),
            );
            let pos = up_i32(
                s,
                &[toks.len()],
                &toks.iter().map(|x| x.1 as i32).collect::<Vec<_>>(),
            );
            mla::mla_cache_write(s, MlaCacheDtype::Fp8E4m3, &cache, &dkv, &bt, &seq, &pos).unwrap();
            for k in KERNELS {
                let plan = plan_for(s, &c, k, None);
                if !k.runs(s, &plan) {
                    continue;
                }
                let meta = MlaDecodeMeta::new(s, plan).unwrap();
                let q = up(s, &[c.b, c.s_q, c.h, DK], &c.q, DType::Bf16);
                let sl = up_i32(s, &[c.b], &c.lens);
                let out = poisoned(s, DType::F32, &[c.b, c.s_q, c.h, DV]);
                let lse = poisoned(s, DType::F32, &[c.b, c.s_q, c.h]);
                mla::mla_decode_metadata(s, &meta, &sl).unwrap();
                mla::mla_decode(s, &out, &lse, &q, &cache, &bt, &sl, &meta, c.scale).unwrap();
                s.synchronize().unwrap();
                let g = Got {
                    o: out.to_f32(s).unwrap(),
                    lse: lse.to_f32(s).unwrap(),
                    meta: meta.meta.to_vec::<i32>(s).unwrap()[..4 + c.b + 1].to_vec(),
                };
                check(
                    &format!(
                        "{name} {} over a GPU-written cache",
                        plan.kernel_name(DType::F32)
                    ),
                    &c,
                    &g,
                    &want_o,
                    &want_lse,
                    plan.num_parts,
                );
            }
        }
    }
}

/// The cache type is part of the call: a cache that does not match the plan's type, and bad
/// cache-write arguments, are refused before any launch.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn mla_fp8_cache_checks_types_and_shapes() {
    let (_, s) = &mla_streams()[0];
    let bf16_plan = MlaDecodePlan::new(4, 1, 16, 132).unwrap();
    let fp8_plan = bf16_plan.with_cache_dtype(MlaCacheDtype::Fp8E4m3);
    let q = DeviceTensor::empty(s, DType::Bf16, &[2, 1, 16, DK]).unwrap();
    let bt = DeviceTensor::empty(s, DType::I32, &[2, 2]).unwrap();
    let sl = DeviceTensor::empty(s, DType::I32, &[2]).unwrap();
    let out = DeviceTensor::empty(s, DType::Bf16, &[2, 1, 16, DV]).unwrap();
    let lse = DeviceTensor::empty(s, DType::F32, &[2, 1, 16]).unwrap();
    let bf16_cache = DeviceTensor::empty(s, DType::Bf16, &[4, PAGE, DK]).unwrap();
    let fp8_cache = DeviceTensor::empty(s, DType::U8, &[4, PAGE, FP8_ROW_BYTES]).unwrap();
    let u8_576 = DeviceTensor::empty(s, DType::U8, &[4, PAGE, DK]).unwrap();
    let e4m3_656 = DeviceTensor::empty(s, DType::E4m3fn, &[4, PAGE, FP8_ROW_BYTES]).unwrap();
    for (plan, cache, want) in [
        (fp8_plan, &bf16_cache, "cache must be [pages, 64, 656]"),
        (fp8_plan, &u8_576, "cache must be [pages, 64, 656]"),
        (fp8_plan, &e4m3_656, "cache must be u8"),
        (bf16_plan, &fp8_cache, "cache must be [pages, 64, 576]"),
        (bf16_plan, &u8_576, "cache must be bf16"),
    ] {
        let meta = MlaDecodeMeta::new(s, plan).unwrap();
        let e = mla::mla_decode(s, &out, &lse, &q, cache, &bt, &sl, &meta, 0.1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(want),
            "{:?} cache {:?} {}: {e}",
            plan.cache,
            cache.shape(),
            cache.dtype()
        );
    }
    let kv = DeviceTensor::empty(s, DType::F32, &[3, DK]).unwrap();
    let short_kv = DeviceTensor::empty(s, DType::F32, &[3, 512]).unwrap();
    let (seq, pos) = (
        DeviceTensor::empty(s, DType::I32, &[3]).unwrap(),
        DeviceTensor::empty(s, DType::I32, &[3]).unwrap(),
    );
    let fp8 = MlaCacheDtype::Fp8E4m3;
    let e = mla::mla_cache_write(s, fp8, &bf16_cache, &kv, &bt, &seq, &pos)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cache must be [pages, 64, 656] u8"), "{e}");
    let e = mla::mla_cache_write(s, MlaCacheDtype::Bf16, &fp8_cache, &kv, &bt, &seq, &pos)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cache must be [pages, 64, 576] bf16"), "{e}");
    let e = mla::mla_cache_write(s, fp8, &fp8_cache, &short_kv, &bt, &seq, &pos)
        .unwrap_err()
        .to_string();
    assert!(e.contains("kv_stride >= 576"), "{e}");
    let e = mla::mla_cache_write(s, fp8, &fp8_cache, &kv, &bt, &sl, &pos)
        .unwrap_err()
        .to_string();
    assert!(e.contains("one entry per kv row"), "{e}");
}
