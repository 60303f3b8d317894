//! MLA decode benchmark on cuda:0: the split-KV tensor-core kernel (`dsv3::backend::mla`) at
//! DeepSeek-V3 shapes (page 64, bf16 latent cache, 576 / 512), against the ceilings measured in
//! the same process (device-to-device copy) and the simple kernel (`mla_paged_attention`), and
//! the same kernels over the fp8 e4m3 cache (656-byte rows, `mla_decode_fp8_*`) beside them.
//!
//! Default (the device runner): prints ONE table. Each row: B, h, s_k, s_q; µs of one decode
//! (split + combine): a CUDA graph of 20 decodes replayed 7 times after warm-up, median (and the
//! same from events around 20 back-to-back stream launches, host overhead included); GB/s with bytes = q + kv + out; TFLOPS with FLOPs = 2·h·s_q·s_k·(576+512)·B; the
//! ratio of that bandwidth to the copy's; the simple kernel's µs where it is affordable; the fp8
//! cache's µs (graph), GB/s with bytes = q + s_k·656 + out, its ratio to the copy and its speedup
//! over the bf16 cache (page tiles; and the 32-key-tile fp8 kernel where it applies); the sm_90a
//! wgmma kernel's µs (graph), TFLOPS, ratio to the copy and speedup over the mma.sync page-tile
//! kernel (bf16 cache; "-" where the stream cannot load its sm_90a cubin); the fp8-cache wgmma
//! kernel's µs (graph), its GB/s and ratio to the copy counted with 656-byte rows, and its speedup
//! over the bf16 wgmma kernel and over the mma.sync fp8 kernel. Caches
//! smaller than 256 MiB are replicated and the launches rotate among the copies (no L2 replay).
//! `DSV3_MLA_CRITERION=1` also runs criterion on a few shapes; `DSV3_MLA_BENCH_SHAPES=BxHxSKxSQ,..`
//! restricts the table to those rows (e.g. for a profiler run).
//!
//! Build here, run on the GPU machine:
//!   /work/shared/tools/gpu-bundle --filter '^(gpu_mla|mla_decode)'
//!   bash .gpu/run.sh '^mla_decode-'
//! Without a CUDA device it panics ("no CUDA device").

use criterion::{BenchmarkId, Criterion, Throughput};
use dsv3::backend::cuda::CudaStream;
use dsv3::backend::dispatch::{self, PagedCache};
use dsv3::backend::mla::{self, cuda_util, MlaCacheDtype, MlaDecodeMeta, MlaDecodePlan, DK, DV, FP8_ROW_BYTES, PAGE};
use dsv3::backend::{DType, DeviceTensor, GpuStream};

fn stream() -> CudaStream {
    CudaStream::new(0).unwrap_or_else(|e| panic!("no CUDA device: {e}"))
}

/// A bf16 tensor of `n` pseudo-random values in [-1, 1) (never zeros): a random 32 MiB block
/// uploaded once and copied on the device.
fn random_bf16(s: &dyn GpuStream, shape: &[usize], seed: u64) -> DeviceTensor {
    let n: usize = shape.iter().product();
    let t = DeviceTensor::empty(s, DType::Bf16, shape).unwrap();
    let block = n.min(16 << 20);
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let v: Vec<half::bf16> = (0..block)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            half::bf16::from_f32(((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect();
    let src = DeviceTensor::from_slice(s, &[block], &v).unwrap();
    let mut off = 0;
    while off < n {
        let k = block.min(n - off);
        unsafe { s.copy_dtod(t.raw() + (off * 2) as u64, src.raw(), k * 2).unwrap() };
        off += k;
    }
    s.synchronize().unwrap();
    t
}

/// An fp8 cache [pages, 64, 656] u8 of valid quantized rows (the CPU quantizer over
/// pseudo-random latent rows, never NaN): a block of up to 4096 rows uploaded once and copied.
fn random_fp8_cache(s: &dyn GpuStream, pages: usize, seed: u64) -> DeviceTensor {
    let rows = pages * PAGE;
    let t = DeviceTensor::empty(s, DType::U8, &[pages, PAGE, FP8_ROW_BYTES]).unwrap();
    let block_rows = rows.min(4096);
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut host = Vec::with_capacity(block_rows * FP8_ROW_BYTES);
    for _ in 0..block_rows {
        let row: Vec<f32> = (0..DK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        host.extend(dsv3::ops::mla_fp8::quantize_row(&row).unwrap());
    }
    let src = DeviceTensor::from_slice(s, &[host.len()], &host).unwrap();
    let mut off = 0;
    while off < rows {
        let k = block_rows.min(rows - off);
        unsafe { s.copy_dtod(t.raw() + (off * FP8_ROW_BYTES) as u64, src.raw(), k * FP8_ROW_BYTES).unwrap() };
        off += k;
    }
    s.synchronize().unwrap();
    t
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Device-to-device copy bandwidth (read + write bytes per second) of a `bytes` buffer.
fn copy_bandwidth(s: &CudaStream, bytes: usize) -> f64 {
    let a = DeviceTensor::empty(s, DType::U8, &[bytes]).unwrap();
    let b = DeviceTensor::empty(s, DType::U8, &[bytes]).unwrap();
    unsafe { s.memset_u8(a.raw(), 0x3c, bytes).unwrap() };
    let t = cuda_util::EventTimer::new(s).unwrap();
    for _ in 0..3 {
        unsafe { s.copy_dtod(b.raw(), a.raw(), bytes).unwrap() };
    }
    let mut times = Vec::new();
    for _ in 0..10 {
        t.start().unwrap();
        unsafe { s.copy_dtod(b.raw(), a.raw(), bytes).unwrap() };
        times.push(t.stop_ms().unwrap());
    }
    2.0 * bytes as f64 / (median(times) as f64 * 1e-3)
}

/// One decode shape with its device buffers (several cache copies when small).
struct Shape {
    b: usize,
    h: usize,
    s_k: usize,
    s_q: usize,
    copies: usize,
    cache: DeviceTensor,
    /// The same page layout as an fp8 cache (656-byte rows).
    cache_fp8: DeviceTensor,
    tables: Vec<DeviceTensor>,
    q: Vec<DeviceTensor>,
    lens: DeviceTensor,
    out: DeviceTensor,
    lse: DeviceTensor,
    meta: MlaDecodeMeta,
    /// The 32-key-tile kernel's plan where it applies (h·s_q <= 32).
    meta_small: Option<MlaDecodeMeta>,
    /// The fp8-cache plans: page tiles, and 32-key tiles where they apply.
    meta_fp8: MlaDecodeMeta,
    meta_fp8_small: Option<MlaDecodeMeta>,
    /// The sm_90a wgmma kernel's plans (bf16 cache, fp8 cache) where the stream runs it.
    meta_wgmma: Option<MlaDecodeMeta>,
    meta_wgmma_fp8: Option<MlaDecodeMeta>,
}

impl Shape {
    fn new(s: &CudaStream, sms: usize, b: usize, h: usize, s_k: usize, s_q: usize) -> Shape {
        let pages = s_k.div_ceil(PAGE);
        let bytes = b * pages * PAGE * DK * 2;
        let copies = (256usize << 20).div_ceil(bytes).clamp(1, 64);
        let cache = random_bf16(s, &[copies * b * pages, PAGE, DK], 1);
        let cache_fp8 = random_fp8_cache(s, copies * b * pages, 1);
        // Each copy's pages in a shuffled order (paged, not contiguous).
        let mut x = 0x2545f4914f6cdd1du64;
        let tables = (0..copies)
            .map(|c| {
                let mut t: Vec<i32> = (0..(b * pages) as i32).map(|p| p + (c * b * pages) as i32).collect();
                for i in (1..t.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    t.swap(i, (x % (i as u64 + 1)) as usize);
                }
                DeviceTensor::from_slice(s, &[b, pages], &t).unwrap()
            })
            .collect();
        let q = (0..copies).map(|c| random_bf16(s, &[b, s_q, h, DK], 7 + c as u64)).collect();
        let lens = DeviceTensor::from_slice(s, &[b], &vec![s_k as i32; b]).unwrap();
        let out = DeviceTensor::empty(s, DType::Bf16, &[b, s_q, h, DV]).unwrap();
        let lse = DeviceTensor::empty(s, DType::F32, &[b, s_q, h]).unwrap();
        let meta = MlaDecodeMeta::new(s, MlaDecodePlan::new(b, s_q, h, sms).unwrap().with_small_tiles(false)).unwrap();
        let small = MlaDecodePlan::new(b, s_q, h, sms).unwrap().with_small_tiles(true);
        let meta_small = if small.small_tiles { Some(MlaDecodeMeta::new(s, small).unwrap()) } else { None };
        let fp8 = MlaCacheDtype::Fp8E4m3;
        let meta_fp8 = MlaDecodeMeta::new(s, meta.plan.with_cache_dtype(fp8)).unwrap();
        let meta_fp8_small = meta_small.as_ref().map(|m| MlaDecodeMeta::new(s, m.plan.with_cache_dtype(fp8)).unwrap());
        let meta_wgmma = mla::mla_wgmma_available(s).then(|| MlaDecodeMeta::new(s, meta.plan.with_wgmma(true)).unwrap());
        let meta_wgmma_fp8 = meta_wgmma.as_ref().map(|m| MlaDecodeMeta::new(s, m.plan.with_cache_dtype(fp8)).unwrap());
        for m in [Some(&meta), meta_small.as_ref(), Some(&meta_fp8), meta_fp8_small.as_ref(), meta_wgmma.as_ref(), meta_wgmma_fp8.as_ref()].into_iter().flatten() {
            mla::mla_decode_metadata(s, m, &lens).unwrap();
        }
        Shape { b, h, s_k, s_q, copies, cache, cache_fp8, tables, q, lens, out, lse, meta, meta_small, meta_fp8, meta_fp8_small, meta_wgmma, meta_wgmma_fp8 }
    }
    fn launch(&self, s: &CudaStream, i: usize) {
        let c = i % self.copies;
        mla::mla_decode(s, &self.out, &self.lse, &self.q[c], &self.cache, &self.tables[c], &self.lens, &self.meta, 0.0722).unwrap();
    }
    /// The cache tensor a plan reads.
    fn cache_for(&self, meta: &MlaDecodeMeta) -> &DeviceTensor {
        match meta.plan.cache {
            MlaCacheDtype::Bf16 => &self.cache,
            MlaCacheDtype::Fp8E4m3 => &self.cache_fp8,
        }
    }
    /// q + kv + out bytes with the bf16 cache (1152-byte rows).
    fn bytes(&self) -> f64 {
        self.bytes_with(DK * 2)
    }
    /// q + kv + out bytes with cache rows of `row_bytes` (fp8: 656).
    fn bytes_with(&self, row_bytes: usize) -> f64 {
        (self.b * (self.s_q * self.h * DK * 2 + self.s_k * row_bytes + self.s_q * self.h * DV * 2)) as f64
    }
    fn flops(&self) -> f64 {
        2.0 * (self.b * self.h * self.s_q * self.s_k * (DK + DV)) as f64
    }
    /// Median µs of one decode: events around 20 back-to-back launches (after 10 warm-up
    /// launches), 7 repetitions, median of the per-launch means. Includes host launch overhead
    /// where the host enqueues slower than the GPU runs.
    fn time_stream_us(&self, s: &CudaStream) -> f32 {
        let t = cuda_util::EventTimer::new(s).unwrap();
        for i in 0..10 {
            self.launch(s, i);
        }
        let mut v = Vec::new();
        for r in 0..7 {
            t.start().unwrap();
            for i in 0..20 {
                self.launch(s, r * 20 + i);
            }
            v.push(t.stop_ms().unwrap() * 1e3 / 20.0);
        }
        median(v)
    }
    /// Median µs of one decode from a CUDA graph of 20 decodes (rotating inputs), 7 timed
    /// replays after 2 warm-up replays. None when capture fails (reported).
    fn time_graph_us(&self, s: &CudaStream, meta: &MlaDecodeMeta) -> Option<f32> {
        let cache = self.cache_for(meta);
        mla::mla_decode(s, &self.out, &self.lse, &self.q[0], cache, &self.tables[0], &self.lens, meta, 0.0722).unwrap();
        s.synchronize().unwrap();
        let g = match cuda_util::Graph::capture(s, || {
            for i in 0..20 {
                let c = i % self.copies;
                mla::mla_decode(s, &self.out, &self.lse, &self.q[c], cache, &self.tables[c], &self.lens, meta, 0.0722)?;
            }
            Ok(())
        }) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("graph capture failed: {e}");
                return None;
            }
        };
        let t = cuda_util::EventTimer::new(s).unwrap();
        for _ in 0..2 {
            g.launch().unwrap();
        }
        let mut v = Vec::new();
        for _ in 0..7 {
            t.start().unwrap();
            g.launch().unwrap();
            v.push(t.stop_ms().unwrap() * 1e3 / 20.0);
        }
        Some(median(v))
    }
    /// Median µs of the metadata kernel (once per decode step, not per layer).
    fn meta_us(&self, s: &CudaStream) -> f32 {
        let t = cuda_util::EventTimer::new(s).unwrap();
        let mut v = Vec::new();
        for _ in 0..20 {
            t.start().unwrap();
            mla::mla_decode_metadata(s, &self.meta, &self.lens).unwrap();
            v.push(t.stop_ms().unwrap() * 1e3);
        }
        median(v)
    }
    /// Median µs of the simple kernel (s_q = 1 only), f32 output.
    fn simple_us(&self, s: &CudaStream) -> Option<f32> {
        if self.s_q != 1 {
            return None;
        }
        let out = DeviceTensor::empty(s, DType::F32, &[self.b, self.h, DV]).unwrap();
        let seq: Vec<i32> = (0..self.b as i32).collect();
        let seq = DeviceTensor::from_slice(s, &[self.b], &seq).unwrap();
        let pos = DeviceTensor::from_slice(s, &[self.b], &vec![self.s_k as i32 - 1; self.b]).unwrap();
        let q = self.q[0].clone_shape(s, &[self.b, self.h, DK]);
        let t = cuda_util::EventTimer::new(s).unwrap();
        let mut v = Vec::new();
        for i in 0..7 {
            let pc = PagedCache { cache: &self.cache, block_table: &self.tables[i % self.copies], seq_lens: &self.lens };
            t.start().unwrap();
            dispatch::mla_paged_attention(s, &out, &q, &pc, &seq, &pos, DV, 0.0722).unwrap();
            let ms = t.stop_ms().unwrap();
            if i >= 2 {
                v.push(ms * 1e3);
            }
        }
        Some(median(v))
    }
}

trait CloneShape {
    fn clone_shape(&self, s: &dyn GpuStream, shape: &[usize]) -> DeviceTensor;
}
impl CloneShape for DeviceTensor {
    /// A copy of the tensor viewed with another shape of the same size.
    fn clone_shape(&self, s: &dyn GpuStream, shape: &[usize]) -> DeviceTensor {
        let t = DeviceTensor::empty(s, self.dtype(), shape).unwrap();
        assert_eq!(t.numel(), self.numel());
        unsafe { s.copy_dtod(t.raw(), self.raw(), self.bytes()).unwrap() };
        t
    }
}

/// The fp8-cache columns of one row of the table.
struct Fp8Cols {
    us: Option<f32>,
    small_us: Option<f32>,
    /// The sm_90a wgmma kernel over the fp8 cache.
    wgmma_us: Option<f32>,
    /// q + s_k·656 + out.
    bytes: f64,
}

fn table(s: &CudaStream) {
    let sms = cuda_util::sm_count(s).unwrap();
    let copy = copy_bandwidth(s, 2usize << 30);
    eprintln!("device-to-device copy (2 GiB, read + write): {:.0} GB/s; {} SMs", copy / 1e9, sms);
    if !mla::mla_wgmma_available(s) {
        eprintln!("the sm_90a wgmma kernel cannot run on this stream (not an sm_90 GPU, or no sm_90a cubin in this build): its columns stay empty");
    }
    let mut shapes = Vec::new();
    // The table: B = 128 over s_k 1K..32K, and B = 1..64 at 4K.
    for h in [16usize, 32, 64, 128] {
        for s_k in [1024usize, 4096, 8192, 16384, 32768] {
            for s_q in [1usize, 2] {
                shapes.push((128usize, h, s_k, s_q));
            }
        }
    }
    for b in [1usize, 8, 32, 64] {
        for h in [16usize, 128] {
            for s_q in [1usize, 2] {
                shapes.push((b, h, 4096, s_q));
            }
        }
    }
    // DSV3_MLA_BENCH_SHAPES="1x16x4096x1,8x16x4096x1" (B×h×s_k×s_q) keeps only those rows.
    if let Ok(only) = std::env::var("DSV3_MLA_BENCH_SHAPES") {
        shapes.retain(|(b, h, s_k, s_q)| only.split(',').any(|w| w.trim() == format!("{b}x{h}x{s_k}x{s_q}")));
    }
    let mut rows = Vec::new();
    for (b, h, s_k, s_q) in shapes {
        let sh = Shape::new(s, sms, b, h, s_k, s_q);
        let stream_us = sh.time_stream_us(s);
        let graph_us = sh.time_graph_us(s, &sh.meta);
        let small_us = sh.meta_small.as_ref().and_then(|m| sh.time_graph_us(s, m));
        let fp8_us = sh.time_graph_us(s, &sh.meta_fp8);
        let fp8_small_us = sh.meta_fp8_small.as_ref().and_then(|m| sh.time_graph_us(s, m));
        let fp8_bytes = sh.bytes_with(FP8_ROW_BYTES);
        let wg_us = sh.meta_wgmma.as_ref().and_then(|m| sh.time_graph_us(s, m));
        let wg_fp8_us = sh.meta_wgmma_fp8.as_ref().and_then(|m| sh.time_graph_us(s, m));
        let us = graph_us.unwrap_or(stream_us);
        let meta_us = sh.meta_us(s);
        let simple = if (s_k <= 4096 && h <= 32) || b <= 8 { sh.simple_us(s) } else { None };
        let gbs = sh.bytes() / (us as f64 * 1e-6) / 1e9;
        let tf = sh.flops() / (us as f64 * 1e-6) / 1e12;
        eprintln!("B={b} h={h} s_k={s_k} s_q={s_q}: {us:.1} us, {gbs:.0} GB/s, {tf:.1} TFLOPS");
        if let Some(f) = fp8_us {
            eprintln!("  fp8 cache: {f:.1} us, {:.0} GB/s (656-byte rows), {:.2}x the bf16 cache", fp8_bytes / (f as f64 * 1e-6) / 1e9, us / f);
        }
        if let Some(w) = wg_us {
            eprintln!("  wgmma: {w:.1} us, {:.1} TFLOPS, {:.2}x the mma.sync kernel", sh.flops() / (w as f64 * 1e-6) / 1e12, us / w);
        }
        if let Some(w) = wg_fp8_us {
            eprintln!("  wgmma fp8 cache: {w:.1} us, {:.0} GB/s (656-byte rows), {:.1}% of copy", fp8_bytes / (w as f64 * 1e-6) / 1e9, fp8_bytes / (w as f64 * 1e-6) / copy * 100.0);
        }
        let fp8 = Fp8Cols { us: fp8_us, small_us: fp8_small_us, wgmma_us: wg_fp8_us, bytes: fp8_bytes };
        let wg = wg_us.map(|w| (w, sh.flops() / (w as f64 * 1e-6) / 1e12));
        rows.push((b, h, s_k, s_q, us, stream_us, small_us, gbs, tf, gbs * 1e9 / copy, meta_us, simple, sh.meta.plan, fp8, wg));
        drop(sh);
        s.allocator().empty_cache().unwrap();
    }
    println!();
    println!(
        "MLA decode (split + combine), bf16 cache (and fp8 e4m3 cache, 656-byte rows), page 64, bf16 out, {sms} SMs; copy {:.0} GB/s (2 GiB D2D, read+write). \
         µs: CUDA graph of 20 decodes, median of 7 replays (stream: events around 20 back-to-back launches)",
        copy / 1e9
    );
    println!(
        "| B | h | s_k | s_q | µs (graph) | µs (stream) | GB/s | TFLOPS | BW / copy | 32-key tiles: µs (graph), BW / copy | metadata µs | simple µs | plan (mw, row blocks, parts) \
         | fp8 cache: µs (graph) | fp8 GB/s (656-B rows) | fp8 BW / copy | fp8 speedup vs bf16 | fp8 32-key tiles: µs, BW / copy \
         | wgmma: µs (graph) | wgmma TFLOPS | wgmma BW / copy | wgmma speedup vs mma.sync \
         | fp8 wgmma: µs (graph) | fp8 wgmma BW / copy (656-B rows) | fp8 wgmma speedup vs bf16 wgmma, vs fp8 mma.sync |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (b, h, s_k, s_q, us, stream_us, small_us, gbs, tf, ratio, meta_us, simple, p, fp8, wg) in rows {
        let simple = simple.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
        let small = small_us.map(|v| format!("{v:.1}, {:.1}%", ratio * us as f64 / v as f64 * 100.0)).unwrap_or_else(|| "-".into());
        let bw = |bytes: f64, us: f32| bytes / (us as f64 * 1e-6);
        let (f_us, f_gbs, f_ratio, f_x) = match fp8.us {
            Some(f) => (format!("{f:.1}"), format!("{:.0}", bw(fp8.bytes, f) / 1e9), format!("{:.1}%", bw(fp8.bytes, f) / copy * 100.0), format!("{:.2}x", us / f)),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let f_small = fp8.small_us.map(|v| format!("{v:.1}, {:.1}%", bw(fp8.bytes, v) / copy * 100.0)).unwrap_or_else(|| "-".into());
        let (w_us, w_tf, w_ratio, w_x) = match wg {
            Some((w, wtf)) => (format!("{w:.1}"), format!("{wtf:.1}"), format!("{:.1}%", ratio * us as f64 / w as f64 * 100.0), format!("{:.2}x", us / w)),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let (fw_us, fw_ratio, fw_x) = match fp8.wgmma_us {
            Some(v) => {
                let vs = |base: Option<f32>| base.map(|b| format!("{:.2}x", b / v)).unwrap_or_else(|| "-".into());
                (format!("{v:.1}"), format!("{:.1}%", bw(fp8.bytes, v) / copy * 100.0), format!("{}, {}", vs(wg.map(|w| w.0)), vs(fp8.us)))
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {b} | {h} | {s_k} | {s_q} | {us:.1} | {stream_us:.1} | {gbs:.0} | {tf:.1} | {:.1}% | {small} | {meta_us:.1} | {simple} | {}, {}, {} | {f_us} | {f_gbs} | {f_ratio} | {f_x} | {f_small} | {w_us} | {w_tf} | {w_ratio} | {w_x} | {fw_us} | {fw_ratio} | {fw_x} |",
            ratio * 100.0,
            p.mw,
            p.row_blocks,
            p.num_parts
        );
    }
}

fn criterion_benches(s: &CudaStream) {
    let sms = cuda_util::sm_count(s).unwrap();
    let mut c = Criterion::default().sample_size(20);
    let mut g = c.benchmark_group("mla_decode_bf16_page64");
    for (b, h, s_k, s_q) in [(128usize, 16usize, 4096usize, 1usize), (128, 128, 4096, 1), (1, 16, 4096, 1), (8, 16, 4096, 1)] {
        let sh = Shape::new(s, sms, b, h, s_k, s_q);
        g.throughput(Throughput::Bytes(sh.bytes() as u64));
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("split_mma", format!("b{b}_h{h}_s{s_k}_q{s_q}")), &(), |bn, _| {
            bn.iter(|| {
                sh.launch(s, i);
                i += 1;
                s.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

fn main() {
    let s = stream();
    table(&s);
    if std::env::var("DSV3_MLA_CRITERION").map(|v| v == "1").unwrap_or(false) {
        criterion_benches(&s);
    }
}
