//! Criterion benchmarks of the first (simple, correct) kernels on cuda:0, at DeepSeek-V3 shapes,
//! with their byte counts so the reports read as bandwidth. These are the baselines the fast
//! kernels of later issues are measured against. Each iteration launches and synchronizes.
//!
//! Build here, run on the GPU machine (docs/GPU_WORKFLOW.md):
//!   /work/shared/tools/gpu-bundle --filter '^kernels-'   then   bash .gpu/run.sh '^kernels-'
//! Without a CUDA device it panics ("no CUDA device").

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dsv3::backend::cuda::CudaStream;
use dsv3::backend::dispatch::{self, PagedCache};
use dsv3::backend::{DType, DeviceTensor, GpuStream};

fn stream() -> CudaStream {
    CudaStream::new(0).unwrap_or_else(|e| panic!("no CUDA device: {e}"))
}

fn filled(s: &dyn GpuStream, dtype: DType, shape: &[usize]) -> DeviceTensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5).collect();
    DeviceTensor::from_f32(s, shape, &v, dtype).unwrap()
}

fn bench_norm(c: &mut Criterion) {
    let s = stream();
    let mut g = c.benchmark_group("rms_norm_bf16");
    for t in [1usize, 64, 4096] {
        let h = 7168;
        let x = filled(&s, DType::Bf16, &[t, h]);
        let w = filled(&s, DType::Bf16, &[h]);
        let out = DeviceTensor::empty(&s, DType::Bf16, &[t, h]).unwrap();
        g.throughput(Throughput::Bytes((2 * t * h * 2 + h * 2) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(t), &t, |b, _| {
            b.iter(|| {
                dispatch::rms_norm(&s, &out, &x, &w, 1e-6).unwrap();
                s.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

fn bench_gemm(c: &mut Criterion) {
    let s = stream();
    let mut g = c.benchmark_group("gemm_bf16_2112x7168");
    for m in [1usize, 64, 1024] {
        let (n, k) = (2112, 7168);
        let x = filled(&s, DType::Bf16, &[m, k]);
        let w = filled(&s, DType::Bf16, &[n, k]);
        let y = DeviceTensor::empty(&s, DType::Bf16, &[m, n]).unwrap();
        g.throughput(Throughput::Bytes(((m * k + n * k + m * n) * 2) as u64));
        g.bench_with_input(BenchmarkId::new("generated", m), &m, |b, _| {
            b.iter(|| {
                dispatch::gemm_kernel(&s, &y, &x, &w, None, 1.0, 0.0).unwrap();
                s.synchronize().unwrap();
            })
        });
        if s.has_blas() {
            g.bench_with_input(BenchmarkId::new("cublas", m), &m, |b, _| {
                b.iter(|| {
                    dispatch::linear(&s, &y, &x, &w, None).unwrap();
                    s.synchronize().unwrap();
                })
            });
        }
    }
    g.finish();
}

fn bench_mla_decode(c: &mut Criterion) {
    let s = stream();
    let mut g = c.benchmark_group("mla_decode_bf16_page64");
    g.sample_size(20);
    for (batch, heads, len) in [(1usize, 16usize, 4096usize), (32, 16, 4096), (32, 128, 1024)] {
        let (dk, dv, page) = (576, 512, 64);
        let pages_per = len / page;
        let cache = filled(&s, DType::Bf16, &[batch * pages_per, page, dk]);
        let bt: Vec<i32> = (0..(batch * pages_per) as i32).collect();
        let bt = DeviceTensor::from_slice(&s, &[batch, pages_per], &bt).unwrap();
        let lens = DeviceTensor::from_slice(&s, &[batch], &vec![len as i32; batch]).unwrap();
        let seq: Vec<i32> = (0..batch as i32).collect();
        let seq = DeviceTensor::from_slice(&s, &[batch], &seq).unwrap();
        let pos = DeviceTensor::from_slice(&s, &[batch], &vec![(len - 1) as i32; batch]).unwrap();
        let q = filled(&s, DType::Bf16, &[batch, heads, dk]);
        let out = DeviceTensor::empty(&s, DType::F32, &[batch, heads, dv]).unwrap();
        let pc = PagedCache { cache: &cache, block_table: &bt, seq_lens: &lens };
        g.throughput(Throughput::Bytes((batch * len * dk * 2 + batch * heads * (dk * 2 + dv * 4)) as u64));
        g.bench_function(format!("b{batch}_h{heads}_s{len}"), |b| {
            b.iter(|| {
                dispatch::mla_paged_attention(&s, &out, &q, &pc, &seq, &pos, dv, 0.04).unwrap();
                s.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_norm, bench_gemm, bench_mla_decode);
criterion_main!(benches);
