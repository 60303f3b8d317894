//! All-reduce on 2+ GPUs of one machine against a CPU sum: the custom push, one-shot and
//! two-shot kernels (bit-identical to the CPU's f32 rank-order sum, on every rank), NCCL, and the
//! dispatcher; f32 and bf16; 16 B to 64 MB (push: to its 512 KB) including odd sizes and
//! misaligned pointers; in and out of place; many back-to-back iterations (stale flags or a stale
//! push generation would deadlock — the watchdog turns that into an error — or give wrong sums);
//! inside CUDA graphs replayed many times.
//!
//! Ignored in the CPU suite; run on the GPU machine with `--include-ignored`. With fewer than
//! two CUDA devices every test panics loudly. The tests share one communicator behind a mutex:
//! collectives from two test threads would interleave their launches across the ranks.

#![allow(clippy::needless_range_loop)]

mod common;

use common::gpu::run_two_nodes;

use dsv3::backend::cuda::device_count;
use dsv3::backend::{DType, DeviceBuffer};
use dsv3::dist::allreduce::CustomAllReduce;
use dsv3::dist::nccl::Nccl;
use dsv3::dist::{Algo, AllReduce, Communicator, Policy};
use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

const GPU: &str = "GPU test: run on the GPU machine with --include-ignored";
/// Registered buffers big enough for the largest message (64 MB).
const BUF: usize = 64 << 20;
/// The largest push message the tests register (the default policy's at world 2).
const PUSH: usize = 512 << 10;

struct Ctx {
    comm: Arc<Communicator>,
    custom: CustomAllReduce,
    nccl: Result<Nccl, String>,
}

fn init() -> Ctx {
    // NVLink multicast stays off on the shared machines.
    std::env::set_var("NCCL_NVLS_ENABLE", "0");
    let n = match device_count() {
        Err(e) => panic!("no CUDA device: {e}"),
        Ok(n) => n,
    };
    assert!(n >= 2, "the all-reduce tests need at least 2 CUDA devices; the driver reports {n}");
    let comm = Arc::new(Communicator::new(&[0, 1]).unwrap_or_else(|e| panic!("communicator over cuda:0, cuda:1: {e}")));
    assert!(comm.peer_access(), "cuda:0 and cuda:1 have no peer access: the custom all-reduce cannot run here");
    let custom = CustomAllReduce::new(comm.clone(), BUF, PUSH).unwrap_or_else(|e| panic!("custom all-reduce: {e}"));
    let nccl = Nccl::single_node(comm.clone()).map_err(|e| e.to_string());
    if let Ok(n) = &nccl {
        eprintln!("NCCL {} from {}", n.version(), n.library_path());
    }
    Ctx { comm, custom, nccl }
}

fn ctx() -> MutexGuard<'static, Ctx> {
    static CTX: OnceLock<Mutex<Ctx>> = OnceLock::new();
    CTX.get_or_init(|| Mutex::new(init())).lock().unwrap_or_else(|p| p.into_inner())
}

/// One rank's host data: the bytes to upload and the values as f32.
fn random(dtype: DType, n: usize, rng: &mut StdRng) -> (Vec<u8>, Vec<f32>) {
    let vals: Vec<f32> = (0..n).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
    match dtype {
        DType::F32 => (vals.iter().flat_map(|v| v.to_le_bytes()).collect(), vals),
        DType::Bf16 => {
            let b: Vec<bf16> = vals.iter().map(|v| bf16::from_f32(*v)).collect();
            (b.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(), b.iter().map(|v| v.to_f32()).collect())
        }
        _ => unreachable!(),
    }
}

/// The CPU reference: f32 sum in rank order, rounded once to `dtype` (what the kernels do).
fn cpu_sum(dtype: DType, per_rank: &[Vec<f32>]) -> Vec<u8> {
    let n = per_rank[0].len();
    let mut out = Vec::with_capacity(n * dtype.size());
    for i in 0..n {
        let mut acc = per_rank[0][i];
        for r in &per_rank[1..] {
            acc += r[i];
        }
        match dtype {
            DType::F32 => out.extend_from_slice(&acc.to_le_bytes()),
            _ => out.extend_from_slice(&bf16::from_f32(acc).to_bits().to_le_bytes()),
        }
    }
    out
}

fn to_f32(dtype: DType, b: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        _ => b.chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes(c.try_into().unwrap())).to_f32()).collect(),
    }
}

fn first_diff(dtype: DType, got: &[u8], want: &[u8]) -> Option<String> {
    if got == want {
        return None;
    }
    let (g, w) = (to_f32(dtype, got), to_f32(dtype, want));
    let i = (0..g.len()).find(|&i| g[i].to_bits() != w[i].to_bits()).unwrap_or(0);
    let bad = (0..g.len()).filter(|&i| g[i].to_bits() != w[i].to_bits()).count();
    Some(format!("{bad} of {} elements differ; first at {i}: got {} want {}", g.len(), g[i], w[i]))
}

fn rel_err(dtype: DType, got: &[u8], want: &[u8]) -> f64 {
    let (g, w) = (to_f32(dtype, got), to_f32(dtype, want));
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in g.iter().zip(&w) {
        if a.is_nan() {
            return f64::NAN;
        }
        num += ((a - b) as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// Per-rank device buffers of `count` elements at an element offset `skew` (misalignment).
struct Bufs {
    _keep: Vec<DeviceBuffer>,
    ptrs: Vec<u64>,
}

fn alloc(comm: &Communicator, dtype: DType, count: usize, skew: usize) -> Bufs {
    let mut keep = Vec::new();
    let mut ptrs = Vec::new();
    for r in 0..comm.local_size() {
        let b = comm.stream(r).alloc((count + skew) * dtype.size() + 64).unwrap();
        ptrs.push(b.ptr() + (skew * dtype.size()) as u64);
        keep.push(b);
    }
    Bufs { _keep: keep, ptrs }
}

fn upload(comm: &Communicator, ptrs: &[u64], data: &[Vec<u8>]) {
    for r in 0..comm.local_size() {
        unsafe { comm.stream(r).copy_htod(ptrs[r], &data[r]).unwrap() };
    }
}

fn poison(comm: &Communicator, ptrs: &[u64], bytes: usize) {
    for r in 0..comm.local_size() {
        unsafe { comm.stream(r).memset_u8(ptrs[r], 0xff, bytes).unwrap() };
    }
}

fn download(comm: &Communicator, ptrs: &[u64], bytes: usize) -> Vec<Vec<u8>> {
    (0..comm.local_size())
        .map(|r| {
            let mut h = vec![0u8; bytes];
            unsafe { comm.stream(r).copy_dtoh(&mut h, ptrs[r]).unwrap() };
            h
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Custom(Algo),
    Nccl,
}

/// One all-reduce of `count` elements checked against the CPU. Custom paths must match the CPU
/// bit for bit; NCCL within a relative error; every rank must agree bit for bit.
fn case(c: &Ctx, path: Path, dtype: DType, count: usize, in_place: bool, skew: usize, seed: u64) -> Result<(), String> {
    let comm = &c.comm;
    let w = comm.local_size();
    let bytes = count * dtype.size();
    let mut rng = StdRng::seed_from_u64(seed);
    let (host, vals): (Vec<Vec<u8>>, Vec<Vec<f32>>) = (0..w).map(|_| random(dtype, count, &mut rng)).unzip();
    let want = cpu_sum(dtype, &vals);
    let ins = alloc(comm, dtype, count, skew);
    let outs = if in_place { None } else { Some(alloc(comm, dtype, count, skew)) };
    let out_ptrs = outs.as_ref().map(|o| o.ptrs.clone()).unwrap_or_else(|| ins.ptrs.clone());
    upload(comm, &ins.ptrs, &host);
    if !in_place {
        poison(comm, &out_ptrs, bytes);
    }
    comm.synchronize().unwrap();
    let r = unsafe {
        match path {
            Path::Custom(a) => c.custom.all_reduce(a, dtype, count, &ins.ptrs, &out_ptrs),
            Path::Nccl => c.nccl.as_ref().unwrap_or_else(|e| panic!("NCCL unavailable: {e}")).all_reduce(dtype, count, &ins.ptrs, &out_ptrs),
        }
    };
    r.map_err(|e| format!("launch: {e}"))?;
    comm.synchronize().map_err(|e| format!("sync: {e}"))?;
    let got = download(comm, &out_ptrs, bytes);
    let what = format!("{path:?} {dtype} n={count} ({bytes} B) in_place={in_place} skew={skew}");
    for r in 1..w {
        if let Some(d) = first_diff(dtype, &got[r], &got[0]) {
            return Err(format!("{what}: rank {r} differs from rank 0: {d}"));
        }
    }
    match path {
        Path::Custom(_) => {
            if let Some(d) = first_diff(dtype, &got[0], &want) {
                return Err(format!("{what}: differs from the CPU sum: {d}"));
            }
        }
        Path::Nccl => {
            let e = rel_err(dtype, &got[0], &want);
            let tol = if dtype == DType::F32 { 1e-6 } else { 8e-3 };
            if e.is_nan() || e > tol {
                return Err(format!("{what}: relative error {e:e} > {tol:e}"));
            }
        }
    }
    Ok(())
}

/// Element counts from 16 B to 64 MB, including odd ones.
fn counts_all(dtype: DType) -> Vec<usize> {
    let s = dtype.size();
    let mut v: Vec<usize> = [16usize, 4096, 65536, 1 << 20, 8 << 20, 64 << 20].iter().map(|b| b / s).collect();
    v.extend([1usize, 3, 7, 9, 31, 255, 1023, 4097, 12_345, 65_537, 333_333, 1_000_003]);
    if dtype == DType::Bf16 {
        v.push((16 << 20) / 2 + 5);
    } else {
        v.push((16 << 20) / 4 - 3);
    }
    v
}

/// Push's element counts: 16 B to its largest message, odd ones and the largest ones included.
fn counts_push(dtype: DType) -> Vec<usize> {
    let max = PUSH / dtype.size();
    let mut v: Vec<usize> = [16usize, 4096, 65536].iter().map(|b| b / dtype.size()).collect();
    v.extend([1usize, 2, 3, 5, 7, 9, 31, 255, 1023, 4097, 12_345, 65_537, max - 3, max - 1, max]);
    v
}

fn run_all(path: Path, counts: fn(DType) -> Vec<usize>) {
    let c = ctx();
    let mut fails = Vec::new();
    let mut seed = 1000u64;
    for dtype in [DType::F32, DType::Bf16] {
        for n in counts(dtype) {
            for (in_place, skew) in [(false, 0), (true, 0), (false, 1), (true, 1)] {
                if skew > 0 && n > (1 << 20) {
                    continue;
                }
                seed += 1;
                if let Err(e) = case(&c, path, dtype, n, in_place, skew, seed) {
                    fails.push(e);
                }
            }
        }
    }
    assert!(fails.is_empty(), "{} failure(s):\n{}", fails.len(), fails.join("\n"));
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn one_shot_equals_the_cpu_sum_on_every_rank() {
    let _ = GPU;
    run_all(Path::Custom(Algo::OneShot), counts_all);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn two_shot_equals_the_cpu_sum_on_every_rank() {
    run_all(Path::Custom(Algo::TwoShot), counts_all);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn nccl_matches_the_cpu_sum() {
    {
        let c = ctx();
        if let Err(e) = &c.nccl {
            panic!("NCCL could not be set up: {e}");
        }
    }
    run_all(Path::Nccl, counts_all);
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn push_equals_the_cpu_sum_on_every_rank() {
    run_all(Path::Custom(Algo::Push), counts_push);
    // What push refuses, before launching anything.
    let c = ctx();
    let (dtype, max) = (DType::F32, PUSH / 4);
    let b = alloc(&c.comm, dtype, max + 8, 0);
    let e = unsafe { c.custom.all_reduce(Algo::Push, dtype, max + 1, &b.ptrs, &b.ptrs) };
    assert!(e.is_err(), "push took a message above its registered size");
    let shifted: Vec<u64> = b.ptrs.iter().map(|p| p + 4).collect();
    let e = unsafe { c.custom.all_reduce(Algo::Push, dtype, 100, &b.ptrs, &shifted) };
    assert!(e.is_err(), "push took an output that partly overlaps its input");
}

/// Push with inputs that are exactly +0.0 and -0.0 in every combination over the ranks (the sum's
/// sign of zero must be the CPU's: -0.0 only when every rank holds -0.0), sums that cancel to
/// +0.0, and a few elements with the sentinel's bit pattern (all bits set, a NaN): those must not
/// stall the call (pushed as they are, they would never count as arrived) and sum to NaN; every
/// other element equals the CPU sum bit for bit, and all ranks hold the same bits.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn push_keeps_signed_zeros_and_takes_sentinel_bits() {
    let c = ctx();
    let comm = &c.comm;
    let w = comm.local_size();
    let n = 4099usize;
    let combos = 1usize << w;
    for dtype in [DType::F32, DType::Bf16] {
        let sz = dtype.size();
        let mut rng = StdRng::seed_from_u64(11);
        let mut vals: Vec<Vec<f32>> = (0..w).map(|_| random(dtype, n, &mut rng).1).collect();
        for i in 0..n {
            if i < 8 * combos {
                // Bit r of i says whether rank r holds -0.0 (else +0.0).
                for r in 0..w {
                    vals[r][i] = if ((i % combos) >> r) & 1 == 1 { -0.0 } else { 0.0 };
                }
            } else if i % 3 == 0 {
                // x + 0 + ... + (-x) = +0.0
                let x = vals[0][i];
                for r in 1..w {
                    vals[r][i] = if r == w - 1 { -x } else { 0.0 };
                }
            }
        }
        let want = to_f32(dtype, &cpu_sum(dtype, &vals));
        let nan_at = [(8 * combos + 1, 0usize), (n / 2, w - 1), (n - 2, w - 1), (n - 1, 0)];
        let host: Vec<Vec<u8>> = (0..w)
            .map(|r| {
                let mut h: Vec<u8> = match dtype {
                    DType::F32 => vals[r].iter().flat_map(|v| v.to_le_bytes()).collect(),
                    _ => vals[r].iter().flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes()).collect(),
                };
                for &(i, rr) in &nan_at {
                    if rr == r {
                        h[i * sz..(i + 1) * sz].fill(0xff);
                    }
                }
                h
            })
            .collect();
        for (in_place, skew) in [(false, 0), (true, 0), (false, 1), (true, 1)] {
            let ins = alloc(comm, dtype, n, skew);
            let outs = alloc(comm, dtype, n, skew);
            let out_ptrs = if in_place { ins.ptrs.clone() } else { outs.ptrs.clone() };
            upload(comm, &ins.ptrs, &host);
            if !in_place {
                poison(comm, &out_ptrs, n * sz);
            }
            comm.synchronize().unwrap();
            unsafe { c.custom.all_reduce(Algo::Push, dtype, n, &ins.ptrs, &out_ptrs) }.unwrap();
            comm.synchronize().unwrap_or_else(|e| panic!("{dtype} in_place={in_place} skew={skew}: {e}"));
            let got = download(comm, &out_ptrs, n * sz);
            let what = format!("{dtype} in_place={in_place} skew={skew}");
            for r in 1..w {
                if let Some(d) = first_diff(dtype, &got[r], &got[0]) {
                    panic!("{what}: rank {r} differs from rank 0: {d}");
                }
            }
            let g = to_f32(dtype, &got[0]);
            for i in 0..n {
                if nan_at.iter().any(|&(j, _)| j == i) {
                    assert!(g[i].is_nan(), "{what}: element {i} (a sentinel-pattern input) gave {}", g[i]);
                } else {
                    assert_eq!(g[i].to_bits(), want[i].to_bits(), "{what}: element {i}: got {:e} want {:e} (inputs {:?})", g[i], want[i], (0..w).map(|r| vals[r][i]).collect::<Vec<_>>());
                }
            }
        }
    }
}

/// Thousands of back-to-back push calls with no host sync between them (checked every 64
/// calls): size, dtype, input set and in place / out of place vary with periods prime to the 3
/// generations, one-shot and two-shot calls come in between, and before many calls one rank is
/// held back by a memset of 4 to 16 MB so that the ranks drift apart. A stale
/// generation read gives a wrong sum (no two nearby calls share inputs and size); resetting a
/// generation still in use leaves a poll spinning until the watchdog traps.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn push_back_to_back_never_reads_a_stale_generation() {
    const SETS: usize = 7;
    const RING: usize = 64;
    // Element counts (0: the largest push message), 11 of them.
    const SIZES: [usize; 11] = [1, 7, 1000, 4097, 33_333, 0, 100_000, 8, 65_536, 131_071, 2];
    let c = ctx();
    let comm = &c.comm;
    let w = comm.local_size();
    let dtypes = [DType::F32, DType::Bf16];
    let mut rng = StdRng::seed_from_u64(21);
    // Per dtype, SETS inputs of the largest message and their sums (a shorter call's sum is a prefix).
    let sets: Vec<Vec<(Bufs, Vec<u8>)>> = dtypes
        .iter()
        .map(|&d| {
            (0..SETS)
                .map(|_| {
                    let max = PUSH / d.size();
                    let (host, vals): (Vec<Vec<u8>>, Vec<Vec<f32>>) = (0..w).map(|_| random(d, max, &mut rng)).unzip();
                    let b = alloc(comm, d, max, 0);
                    upload(comm, &b.ptrs, &host);
                    (b, cpu_sum(d, &vals))
                })
                .collect()
        })
        .collect();
    let outs: Vec<Bufs> = (0..RING).map(|_| alloc(comm, DType::F32, PUSH / 4, 0)).collect();
    let hold = alloc(comm, DType::F32, 4 << 20, 0);
    let mut pending = Vec::new();
    for i in 0..RING * 47 {
        let algo = if i % 13 == 5 { Algo::OneShot } else if i % 17 == 11 { Algo::TwoShot } else { Algo::Push };
        let di = if i % 5 < 3 { 0 } else { 1 };
        let d = dtypes[di];
        let max = PUSH / d.size();
        let n = match SIZES[i % SIZES.len()] {
            0 => max,
            s => s.min(max),
        };
        let (ins, _) = &sets[di][i % SETS];
        let out = &outs[i % RING].ptrs;
        if i % 3 == 0 && i % 5 != 0 {
            let r = (i / 3) % w;
            unsafe { comm.stream(r).memset_u8(hold.ptrs[r], i as u8, (i % 5) << 22) }.unwrap();
        }
        let in_place = i % 4 == 1;
        let src = if in_place {
            for r in 0..w {
                unsafe { comm.stream(r).copy_dtod(out[r], ins.ptrs[r], n * d.size()) }.unwrap();
            }
            out
        } else {
            &ins.ptrs
        };
        unsafe { c.custom.all_reduce(algo, d, n, src, out) }.unwrap_or_else(|e| panic!("call {i}: {e}"));
        pending.push((i, di, n, algo, in_place));
        if pending.len() == RING {
            comm.synchronize().unwrap_or_else(|e| panic!("calls {}..={i}: {e}", i + 1 - RING));
            for &(j, di, n, algo, in_place) in &pending {
                let d = dtypes[di];
                let want = &sets[di][j % SETS].1[..n * d.size()];
                for (r, g) in download(comm, &outs[j % RING].ptrs, n * d.size()).iter().enumerate() {
                    if let Some(diff) = first_diff(d, g, want) {
                        panic!("call {j} ({algo:?} {d} n={n} in_place={in_place}) rank {r}: {diff}");
                    }
                }
            }
            pending.clear();
        }
    }
}

/// The CPU sum applied `times` times, each time to every rank holding the previous sum (what an
/// in-place all-reduce replayed `times` times leaves).
fn repeated_sum(dtype: DType, per_rank: &[Vec<f32>], times: usize) -> Vec<u8> {
    let mut cur = per_rank.to_vec();
    let mut out = Vec::new();
    for _ in 0..times {
        out = cpu_sum(dtype, &cur);
        cur = vec![to_f32(dtype, &out); cur.len()];
    }
    out
}

/// Push calls captured in one CUDA graph per rank — four per replay, so consecutive replays start
/// at different generations (a generation fixed at capture time would show), with a one-shot
/// call among them — replayed 300 times with fresh inputs (every tenth replay 2–4 times back to
/// back), then 500 times in a row, then once more with fresh inputs.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn push_inside_cuda_graphs() {
    let c = ctx();
    let comm = &c.comm;
    let w = comm.local_size();
    // (dtype, algorithm, in place, elements)
    let calls = [
        (DType::F32, Algo::Push, true, 40_001usize),
        (DType::Bf16, Algo::Push, false, 3000),
        (DType::F32, Algo::OneShot, false, 1000),
        (DType::F32, Algo::Push, false, PUSH / 4),
        (DType::Bf16, Algo::Push, true, 7),
    ];
    let ins: Vec<Bufs> = calls.iter().map(|&(d, _, _, n)| alloc(comm, d, n, 0)).collect();
    let outs: Vec<Bufs> = calls.iter().map(|&(d, _, _, n)| alloc(comm, d, n, 0)).collect();
    let out_ptrs = |k: usize| if calls[k].2 { &ins[k].ptrs } else { &outs[k].ptrs };
    let run = || -> dsv3::Result<()> {
        for (k, &(d, a, _, n)) in calls.iter().enumerate() {
            unsafe { c.custom.all_reduce(a, d, n, &ins[k].ptrs, out_ptrs(k))? };
        }
        Ok(())
    };
    // Warm-up outside the graph (loads the modules).
    run().unwrap();
    comm.synchronize().unwrap();
    let graph = comm.capture(run).unwrap_or_else(|e| panic!("capture: {e}"));
    let mut rng = StdRng::seed_from_u64(77);
    let mut round = |rep: usize, times: usize| {
        let data: Vec<Vec<Vec<f32>>> = calls
            .iter()
            .enumerate()
            .map(|(k, &(d, _, in_place, n))| {
                let (host, vals): (Vec<Vec<u8>>, Vec<Vec<f32>>) = (0..w).map(|_| random(d, n, &mut rng)).unzip();
                upload(comm, &ins[k].ptrs, &host);
                if !in_place {
                    poison(comm, &outs[k].ptrs, n * d.size());
                }
                vals
            })
            .collect();
        comm.synchronize().unwrap();
        for _ in 0..times {
            graph.launch().unwrap();
        }
        comm.synchronize().unwrap_or_else(|e| panic!("replay {rep}: {e}"));
        for (k, &(d, a, in_place, n)) in calls.iter().enumerate() {
            let want = repeated_sum(d, &data[k], if in_place { times } else { 1 });
            for (r, g) in download(comm, out_ptrs(k), n * d.size()).iter().enumerate() {
                if let Some(diff) = first_diff(d, g, &want) {
                    panic!("replay {rep} (x{times}), call {k} ({a:?} {d} n={n} in_place={in_place}) rank {r}: {diff}");
                }
            }
        }
    };
    for rep in 0..300 {
        round(rep, if rep % 10 == 9 { 2 + rep % 3 } else { 1 });
    }
    for _ in 0..500 {
        graph.launch().unwrap();
    }
    comm.synchronize().unwrap_or_else(|e| panic!("500 replays in a row: {e}"));
    round(300, 1);
}

/// Thousands of back-to-back calls with no host sync in between (flags must never be stale;
/// a barrier bug shows up as a wrong sum or a watchdog trap), sizes varying so that different
/// block counts interleave, checked in batches.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn many_iterations_never_see_stale_flags() {
    let c = ctx();
    let comm = &c.comm;
    let dtype = DType::F32;
    let sizes = [1000usize, 100_000, 1_000_000, 7];
    let mut rng = StdRng::seed_from_u64(7);
    // Three input sets and their expected sums for each size prefix.
    let max = *sizes.iter().max().unwrap();
    let sets: Vec<(Bufs, Vec<Vec<f32>>)> = (0..3)
        .map(|_| {
            let (host, vals): (Vec<Vec<u8>>, Vec<Vec<f32>>) = (0..comm.local_size()).map(|_| random(dtype, max, &mut rng)).unzip();
            let b = alloc(comm, dtype, max, 0);
            upload(comm, &b.ptrs, &host);
            (b, vals)
        })
        .collect();
    let outs: Vec<Bufs> = (0..4).map(|_| alloc(comm, dtype, max, 0)).collect();
    let expect = |set: usize, n: usize| {
        let v: Vec<Vec<f32>> = sets[set].1.iter().map(|r| r[..n].to_vec()).collect();
        cpu_sum(dtype, &v)
    };
    let total = 3000usize;
    for i in 0..total {
        let algo = if i % 3 == 0 { Algo::TwoShot } else { Algo::OneShot };
        let n = sizes[(i / 4) % sizes.len()];
        let set = i % 3;
        unsafe { c.custom.all_reduce(algo, dtype, n, &sets[set].0.ptrs, &outs[i % 4].ptrs) }.unwrap();
        // Check every 4th batch (and the last one): the 4 outputs of this batch.
        if i % 4 == 3 && (i % 64 == 63 || i + 1 == total) {
            comm.synchronize().unwrap_or_else(|e| panic!("iteration {i}: {e}"));
            for j in i - 3..=i {
                let n = sizes[(j / 4) % sizes.len()];
                let got = download(comm, &outs[j % 4].ptrs, n * 4);
                let want = expect(j % 3, n);
                for (r, g) in got.iter().enumerate() {
                    if let Some(d) = first_diff(dtype, g, &want) {
                        panic!("iteration {j} (n={n}) rank {r}: {d}");
                    }
                }
            }
        }
    }
}

/// The custom all-reduce (one-shot out of place, one-shot in place through the registered
/// buffer, two-shot in place) captured into one CUDA graph per rank, replayed many times with
/// fresh inputs written into the same fixed addresses.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn custom_all_reduce_inside_cuda_graphs() {
    let c = ctx();
    let comm = &c.comm;
    for dtype in [DType::Bf16, DType::F32] {
        for (algo, in_place, n) in [(Algo::OneShot, false, 3000usize), (Algo::OneShot, true, 40_001), (Algo::TwoShot, true, 1_000_001), (Algo::TwoShot, false, 77)] {
            let bytes = n * dtype.size();
            let ins = alloc(comm, dtype, n, 0);
            let outs = alloc(comm, dtype, n, 0);
            let out_ptrs = if in_place { ins.ptrs.clone() } else { outs.ptrs.clone() };
            // Warm-up outside the graph (loads the modules).
            unsafe { c.custom.all_reduce(algo, dtype, n, &ins.ptrs, &out_ptrs) }.unwrap();
            comm.synchronize().unwrap();
            let graph = comm
                .capture(|| unsafe { c.custom.all_reduce(algo, dtype, n, &ins.ptrs, &out_ptrs) })
                .unwrap_or_else(|e| panic!("capture {algo:?} {dtype}: {e}"));
            let mut rng = StdRng::seed_from_u64(99);
            for rep in 0..60 {
                let (host, vals): (Vec<Vec<u8>>, Vec<Vec<f32>>) = (0..comm.local_size()).map(|_| random(dtype, n, &mut rng)).unzip();
                upload(comm, &ins.ptrs, &host);
                if !in_place {
                    poison(comm, &out_ptrs, bytes);
                }
                comm.synchronize().unwrap();
                // Replay several times back to back on the same inputs (out of place: same
                // result each time), once for in place (it would sum the sum).
                let times = if in_place { 1 } else { 1 + rep % 5 };
                for _ in 0..times {
                    graph.launch().unwrap();
                }
                comm.synchronize().unwrap_or_else(|e| panic!("replay {rep} {algo:?} {dtype}: {e}"));
                let want = cpu_sum(dtype, &vals);
                for (r, g) in download(comm, &out_ptrs, bytes).iter().enumerate() {
                    if let Some(d) = first_diff(dtype, g, &want) {
                        panic!("graph {algo:?} {dtype} n={n} in_place={in_place} replay {rep} rank {r}: {d}");
                    }
                }
            }
            // Many replays without a sync, then the graphs must still be in step.
            if !in_place {
                for _ in 0..500 {
                    graph.launch().unwrap();
                }
                comm.synchronize().unwrap_or_else(|e| panic!("500 replays {algo:?} {dtype}: {e}"));
            }
        }
    }
}

/// NCCL calls captured into graphs too (the benchmark's graph column relies on it).
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn nccl_inside_cuda_graphs() {
    let c = ctx();
    let nccl = c.nccl.as_ref().unwrap_or_else(|e| panic!("NCCL could not be set up: {e}"));
    let comm = &c.comm;
    let (dtype, n) = (DType::Bf16, 100_003usize);
    let ins = alloc(comm, dtype, n, 0);
    let outs = alloc(comm, dtype, n, 0);
    unsafe { nccl.all_reduce(dtype, n, &ins.ptrs, &outs.ptrs) }.unwrap();
    comm.synchronize().unwrap();
    let graph = comm.capture(|| unsafe { nccl.all_reduce(dtype, n, &ins.ptrs, &outs.ptrs) }).unwrap_or_else(|e| panic!("capture NCCL: {e}"));
    let mut rng = StdRng::seed_from_u64(5);
    for rep in 0..10 {
        let (host, vals): (Vec<Vec<u8>>, Vec<Vec<f32>>) = (0..comm.local_size()).map(|_| random(dtype, n, &mut rng)).unzip();
        upload(comm, &ins.ptrs, &host);
        poison(comm, &outs.ptrs, n * 2);
        comm.synchronize().unwrap();
        graph.launch().unwrap();
        comm.synchronize().unwrap();
        let got = download(comm, &outs.ptrs, n * 2);
        let want = cpu_sum(dtype, &vals);
        assert!(first_diff(dtype, &got[1], &got[0]).is_none(), "replay {rep}: ranks differ");
        let e = rel_err(dtype, &got[0], &want);
        assert!(e <= 8e-3, "replay {rep}: relative error {e}");
    }
}

/// The dispatcher picks by size (default policy, world 2) and each answer is right.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn dispatch_picks_by_size_and_is_right() {
    let c = ctx(); // held: no other test's collectives meanwhile
    let comm = c.comm.clone();
    let policy = Policy::default();
    let nccl = Nccl::single_node(comm.clone()).unwrap_or_else(|e| panic!("NCCL: {e}"));
    let ar = AllReduce::new(comm.clone(), policy, Some(nccl)).unwrap();
    let dtype = DType::Bf16;
    let mut seen = std::collections::BTreeSet::new();
    for (i, bytes) in [4096usize, 256 << 10, (512 << 10) + 2, 4 << 20, 32 << 20, 48 << 20].into_iter().enumerate() {
        let n = bytes / 2;
        let mut rng = StdRng::seed_from_u64(300 + i as u64);
        let (host, vals): (Vec<Vec<u8>>, Vec<Vec<f32>>) = (0..comm.local_size()).map(|_| random(dtype, n, &mut rng)).unzip();
        let ins = alloc(&comm, dtype, n, 0);
        let outs = alloc(&comm, dtype, n, 0);
        upload(&comm, &ins.ptrs, &host);
        poison(&comm, &outs.ptrs, bytes);
        comm.synchronize().unwrap();
        let algo = unsafe { ar.all_reduce(dtype, n, &ins.ptrs, &outs.ptrs) }.unwrap();
        comm.synchronize().unwrap();
        assert_eq!(algo, ar.algo(dtype, n));
        seen.insert(algo.name());
        let got = download(&comm, &outs.ptrs, bytes);
        let want = cpu_sum(dtype, &vals);
        assert!(first_diff(dtype, &got[1], &got[0]).is_none(), "{bytes} B via {algo:?}: ranks differ");
        let e = rel_err(dtype, &got[0], &want);
        assert!(e <= 8e-3, "{bytes} B via {algo:?}: relative error {e}");
    }
    // World 2: push up to its limit, one-shot the rest of the custom range (two-shot has its own
    // tests), NCCL above.
    let expected: std::collections::BTreeSet<&str> = ["push", "one-shot", "nccl"].into_iter().collect();
    assert_eq!(seen, expected, "algorithms taken at world 2");
    // What the TP model does: an in-place f32 reduce of a few rows of hidden 7168 (push, no
    // staging), exact.
    let n = 3 * 7168;
    let mut rng = StdRng::seed_from_u64(400);
    let (host, vals): (Vec<Vec<u8>>, Vec<Vec<f32>>) = (0..comm.local_size()).map(|_| random(DType::F32, n, &mut rng)).unzip();
    let b = alloc(&comm, DType::F32, n, 0);
    upload(&comm, &b.ptrs, &host);
    comm.synchronize().unwrap();
    let algo = unsafe { ar.all_reduce(DType::F32, n, &b.ptrs, &b.ptrs) }.unwrap();
    comm.synchronize().unwrap();
    assert_eq!(algo, Algo::Push, "in-place f32 of {} bytes", n * 4);
    let want = cpu_sum(DType::F32, &vals);
    for (r, g) in download(&comm, &b.ptrs, n * 4).iter().enumerate() {
        if let Some(d) = first_diff(DType::F32, g, &want) {
            panic!("in-place dispatch rank {r}: {d}");
        }
    }
}

/// Two "nodes" as two processes over loopback, one GPU each (`--nnodes 2`): the TCP rendezvous
/// hands node 0's NCCL unique id to node 1, each process builds its one-GPU communicator from
/// the rendezvous, and the dispatcher (several nodes → NCCL) sums across the processes.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn two_nodes_as_two_processes() {
    let n = device_count().unwrap_or_else(|e| panic!("no CUDA device: {e}"));
    assert!(n >= 2, "needs 2 CUDA devices; the driver reports {n}");
    let (ok, _, report) = run_two_nodes("two_nodes_child", "DSV3_AR_CHILD_RANK", "DSV3_AR_CHILD_ADDR", "TWO-NODE CHILD OK");
    assert!(ok, "two-process all-reduce failed:\n{report}");
}

/// The body of one node of `two_nodes_as_two_processes` (does nothing unless started by it).
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn two_nodes_child() {
    let Ok(rank) = std::env::var("DSV3_AR_CHILD_RANK") else { return };
    let rank: usize = rank.parse().unwrap();
    let addr = std::env::var("DSV3_AR_CHILD_ADDR").unwrap();
    use dsv3::dist::rendezvous::{rendezvous, RendezvousConfig};
    let id = if rank == 0 { dsv3::dist::nccl::unique_id().unwrap() } else { Vec::new() };
    let cfg = RendezvousConfig::new(addr, rank, 2, 1).with_world_size(2).with_timeout(std::time::Duration::from_secs(60));
    let info = rendezvous(&cfg, &id).unwrap();
    assert_eq!((info.world_size, info.rank_offset), (2, rank));
    let comm = Arc::new(Communicator::from_rendezvous(&[0], &info).unwrap());
    let nccl = Nccl::new(comm.clone(), &info.payload).unwrap();
    let ar = AllReduce::new(comm.clone(), Policy::default(), Some(nccl)).unwrap();
    for (dtype, count) in [(DType::F32, 1000usize), (DType::Bf16, 12_345), (DType::F32, 3 << 20)] {
        assert_eq!(ar.algo(dtype, count), Algo::Nccl, "across nodes the dispatcher takes NCCL");
        // Node r holds (i % 61) * (r + 1) / 8: small multiples of 1/8, exact in bf16 and f32, and
        // so is their sum (at most 180/8).
        let vals = |r: usize| -> Vec<f32> { (0..count).map(|i| ((i % 61) as f32) * (r + 1) as f32 / 8.0).collect() };
        let mine = vals(rank);
        let bytes: Vec<u8> = match dtype {
            DType::F32 => mine.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => mine.iter().flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes()).collect(),
        };
        let b = comm.stream(0).alloc(bytes.len()).unwrap();
        unsafe { comm.stream(0).copy_htod(b.ptr(), &bytes).unwrap() };
        let algo = unsafe { ar.all_reduce(dtype, count, &[b.ptr()], &[b.ptr()]) }.unwrap();
        assert_eq!(algo, Algo::Nccl);
        comm.synchronize().unwrap();
        let mut got = vec![0u8; bytes.len()];
        unsafe { comm.stream(0).copy_dtoh(&mut got, b.ptr()).unwrap() };
        let want = cpu_sum(dtype, &[vals(0), vals(1)]);
        if let Some(d) = first_diff(dtype, &got, &want) {
            panic!("node {rank}: {dtype} x {count}: {d}");
        }
    }
    println!("TWO-NODE CHILD OK (node {rank})");
}
