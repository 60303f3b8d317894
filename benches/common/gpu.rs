//! What the GPU kernel benches (harness = false executables) share: the stream, a small host
//! RNG, random expert choices, CUDA-event timing of back-to-back launches, and the
//! device-to-device copy ceiling measured in the same process.

use dsv3::backend::cuda::CudaStream;
use dsv3::backend::mla::cuda_util;
use dsv3::backend::{DType, DeviceTensor, GpuStream};

pub fn stream() -> CudaStream {
    CudaStream::new(0).unwrap_or_else(|e| panic!("no CUDA device: {e}"))
}

/// xorshift64: host-side random data for the benches.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [0, 1), 24 random bits.
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `topk` distinct random experts of `e` for each of `t` tokens, and how many experts are hit.
pub fn moe_ids(t: usize, e: usize, topk: usize, seed: u64) -> (Vec<i32>, usize) {
    let mut r = Rng(seed | 1);
    let mut ids = Vec::with_capacity(t * topk);
    let mut hit = vec![false; e];
    for _ in 0..t {
        let mut pool: Vec<i32> = (0..e as i32).collect();
        for k in 0..topk.min(e) {
            let j = k + (r.next() as usize) % (e - k);
            pool.swap(k, j);
            ids.push(pool[k]);
            hit[pool[k] as usize] = true;
        }
    }
    (ids, hit.iter().filter(|&&h| h).count())
}

/// `counts` (token counts / M of a bench's rows) that `DSV3_BENCH_TOKENS` lists ("4096" or
/// "1,64"), all of them when it is unset: runs a few rows of a long table (tuning, variants).
pub fn listed(counts: &[usize]) -> Vec<usize> {
    match std::env::var("DSV3_BENCH_TOKENS") {
        Ok(only) => counts.iter().copied().filter(|c| only.split(',').any(|w| w.trim() == c.to_string())).collect(),
        Err(_) => counts.to_vec(),
    }
}

/// Whether the GEMM / MoE shape `label` ("7168x16384", "EP8", ...) is one that `DSV3_BENCH_SHAPES`
/// lists (comma-separated prefixes of the table's shape column), every shape when it is unset:
/// keeps a profiler's (ncu's) launch filter on the rows it is after.
pub fn shape_listed(label: &str) -> bool {
    match std::env::var("DSV3_BENCH_SHAPES") {
        Ok(only) => only.split(',').any(|w| !w.trim().is_empty() && label.starts_with(w.trim())),
        Err(_) => true,
    }
}

/// Median over 7 batches of the per-launch mean of 20 back-to-back launches, in µs.
pub fn time_us(s: &CudaStream, mut launch: impl FnMut(usize)) -> f64 {
    for i in 0..5 {
        launch(i);
    }
    s.synchronize().unwrap();
    let timer = cuda_util::EventTimer::new(s).unwrap();
    let mut v = Vec::new();
    let mut i = 0;
    for _ in 0..7 {
        timer.start().unwrap();
        for _ in 0..20 {
            launch(i);
            i += 1;
        }
        v.push(timer.stop_ms().unwrap() as f64 * 1000.0 / 20.0);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Device-to-device copy bandwidth (read + write bytes), GB/s.
pub fn copy_gbs(s: &CudaStream) -> f64 {
    let bytes = 1usize << 30;
    let a = DeviceTensor::empty(s, DType::U8, &[bytes]).unwrap();
    let b = DeviceTensor::empty(s, DType::U8, &[bytes]).unwrap();
    unsafe { s.memset_u8(a.raw(), 1, bytes).unwrap() };
    let us = time_us(s, |_| unsafe { s.copy_dtod(b.raw(), a.raw(), bytes).unwrap() });
    2.0 * bytes as f64 / (us * 1e3)
}
