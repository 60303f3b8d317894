//! MLA decode (absorbed form) on the GPU: the split-KV tensor-core kernels of the `mla_decode`
//! family (`kernels/mla_decode.cuh`), their scheduler metadata and the combine step.
//!
//! Per decode step (and per layer for the attention itself):
//!
//! ```text
//! let plan = MlaDecodePlan::new(max_batch, s_q, heads, sm_count)?;   // once
//! let meta = MlaDecodeMeta::new(stream, plan)?;                       // once: fixed-size buffers
//! mla_decode_metadata(stream, &meta, &seq_lens)?;                      // once per step
//! for layer in layers {
//!     mla_decode(stream, &out, &lse, &q, &cache, &block_table, &seq_lens, &meta, scale)?;
//! }
//! ```
//!
//! - `q` [B, s_q, H, 576] bf16 (`[q_nope·W_uk | q_pe]`), `cache` [pages, 64, 576] bf16 (page size
//!   64), `block_table` [B, max_pages] i32, `seq_lens` [B] i32 (the cache length of each sequence,
//!   its s_q new tokens included); query j of sequence b sees keys `0 .. seq_lens[b] - s_q + j`.
//! - `out` [B, s_q, H, 512] bf16 or f32 (o_lat = Σ p·c_kv; apply W_uv next), `lse` [B, s_q, H] f32
//!   (natural log of Σ exp(scale·score)); a sequence of length 0 gets zeros and lse = -inf.
//! - The metadata (and the workspaces) live in fixed-size device buffers that depend only on the
//!   plan, and the metadata kernel reads `seq_lens` on the device: the whole step can be captured
//!   in a CUDA graph and replayed with new lengths and block tables.

use super::dispatch::{launch_by_name, KArg};
use super::memory::DeviceTensor;
use super::stream::GpuStream;
use super::types::*;
use crate::error::{Error, Result};

/// Latent + rope width of a cache row and of a query row.
pub const DK: usize = 576;
/// Latent width (the value part of a cache row, and the output width).
pub const DV: usize = 512;
/// Tokens per cache page (one key tile of the kernel).
pub const PAGE: usize = 64;
/// Header ints of the metadata buffer before the per-sequence prefix sums.
const META_HDR: usize = 4;

fn bad(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// The static shape of a decode step: how rows are packed and how many parts the KV is split into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaDecodePlan {
    /// Largest batch the buffers hold.
    pub max_batch: usize,
    /// Query tokens per sequence (1, or 2 when verifying a speculative token).
    pub s_q: usize,
    pub heads: usize,
    /// m-tiles (16 rows each) per block: 1, 2 or 4.
    pub mw: usize,
    /// Blocks along the rows (s_q·heads / (16·mw), rounded up): grid.y.
    pub row_blocks: usize,
    /// KV ranges the tiles are split into: grid.x.
    pub num_parts: usize,
    /// 32-key tiles with 4-warp blocks, two blocks per SM (`mla_decode_t32_*`; mw <= 2 only),
    /// instead of 64-key (one page) tiles with 8-warp blocks, one per SM.
    pub small_tiles: bool,
    /// Multiprocessors the plan was made for.
    pub sm_count: usize,
}

impl MlaDecodePlan {
    /// A plan for `sm_count` multiprocessors: one block per SM (the kernels use most of the shared
    /// memory of an SM), so `num_parts · row_blocks ≈ sm_count`.
    pub fn new(max_batch: usize, s_q: usize, heads: usize, sm_count: usize) -> Result<Self> {
        if max_batch == 0 || s_q == 0 || heads == 0 || sm_count == 0 {
            return Err(bad(format!("MlaDecodePlan: batch {max_batch}, s_q {s_q}, heads {heads}, sms {sm_count} must be positive")));
        }
        let rows = s_q * heads;
        let mw = match rows.div_ceil(16) {
            1 => 1,
            2 => 2,
            _ => 4,
        };
        let row_blocks = rows.div_ceil(16 * mw);
        let num_parts = (sm_count / row_blocks).max(1);
        let plan = MlaDecodePlan { max_batch, s_q, heads, mw, row_blocks, num_parts, small_tiles: false, sm_count };
        // Until measured, the page-tile kernel is the default; DSV3_MLA_SMALL_TILES=1 selects the
        // 32-key-tile kernel where it applies.
        let small = std::env::var("DSV3_MLA_SMALL_TILES").map(|v| v == "1").unwrap_or(false);
        Ok(plan.with_small_tiles(small))
    }
    /// Selects the 32-key-tile kernel (two blocks per SM, twice the parts) when `on` and mw <= 2;
    /// otherwise the page-tile kernel.
    pub fn with_small_tiles(mut self, on: bool) -> Self {
        self.small_tiles = on && self.mw <= 2;
        let per_sm = if self.small_tiles { 2 } else { 1 };
        self.num_parts = (per_sm * self.sm_count / self.row_blocks).max(1);
        self
    }
    /// The same plan with an explicit number of parts (tuning, tests of the scheduler).
    pub fn with_parts(mut self, num_parts: usize) -> Self {
        self.num_parts = num_parts.max(1);
        self
    }
    pub fn rows(&self) -> usize {
        self.s_q * self.heads
    }
    /// Dynamic shared memory of the split kernel (bytes).
    pub fn smem_bytes(&self) -> u32 {
        let bm = 16 * self.mw;
        let tile = self.tile_keys();
        let warps = self.threads() / 32;
        (bm * DK * 2 + 2 * tile * DK * 2 + bm * tile * 2 + (warps / self.mw) * bm * 4) as u32
    }
    /// Keys per tile of the split kernel.
    pub fn tile_keys(&self) -> usize {
        if self.small_tiles {
            32
        } else {
            PAGE
        }
    }
    /// Threads per block of the split kernel.
    pub fn threads(&self) -> usize {
        if self.small_tiles {
            128
        } else {
            256
        }
    }
    /// Registry name of the split kernel for output dtype `out`.
    pub fn kernel_name(&self, out: DType) -> String {
        if self.small_tiles {
            format!("mla_decode_t32_bf16_{out}_m{}", self.mw)
        } else {
            format!("mla_decode_bf16_{out}_m{}", self.mw)
        }
    }
    /// i32 entries of the metadata buffer.
    pub fn meta_len(&self) -> usize {
        META_HDR + self.max_batch + 1
    }
    /// Partial-result slots of the workspace (two per part: its first and last segments).
    pub fn slots(&self) -> usize {
        2 * self.num_parts
    }
}

/// The per-step scheduler metadata and the split workspaces, in fixed-size device buffers.
pub struct MlaDecodeMeta {
    pub plan: MlaDecodePlan,
    /// [4 + max_batch + 1] i32: total tiles, tiles per part, parts, batch, cum tiles per sequence.
    pub meta: DeviceTensor,
    /// [2·num_parts, s_q·H, 512] f32: normalized partial outputs of split sequences.
    pub o_ws: DeviceTensor,
    /// [2·num_parts, s_q·H] f32: their log-sum-exps.
    pub lse_ws: DeviceTensor,
}

impl MlaDecodeMeta {
    pub fn new(s: &dyn GpuStream, plan: MlaDecodePlan) -> Result<Self> {
        Ok(MlaDecodeMeta {
            plan,
            meta: DeviceTensor::empty(s, DType::I32, &[plan.meta_len()])?,
            o_ws: DeviceTensor::empty(s, DType::F32, &[plan.slots(), plan.rows(), DV])?,
            lse_ws: DeviceTensor::empty(s, DType::F32, &[plan.slots(), plan.rows()])?,
        })
    }
}

/// Computes the split schedule from `seq_lens` [B] i32 (B ≤ max_batch) on the device. Call once
/// per decode step, before the layers' [`mla_decode`] calls (it reads only `seq_lens`).
pub fn mla_decode_metadata(s: &dyn GpuStream, meta: &MlaDecodeMeta, seq_lens: &DeviceTensor) -> Result<()> {
    let b = seq_lens.numel();
    if b == 0 || b > meta.plan.max_batch {
        return Err(bad(format!("mla_decode_metadata: batch {b} for a plan of at most {}", meta.plan.max_batch)));
    }
    launch_by_name(
        s,
        "mla_decode_metadata",
        LaunchCfg::linear(1, 1024),
        &[KArg::Out(&meta.meta), KArg::In(seq_lens), KArg::U32(b as u32), KArg::U32(meta.plan.num_parts as u32)],
    )
}

/// MLA decode attention: `out` [B, s_q, H, 512] (bf16 or f32) and `lse` [B, s_q, H] f32 from `q`
/// [B, s_q, H, 576] bf16 over the paged bf16 cache [pages, 64, 576]. `meta` must have been
/// computed by [`mla_decode_metadata`] from the same `seq_lens` (same step). Two launches: the
/// split kernel and the combine (which returns at once for sequences that were not split).
#[allow(clippy::too_many_arguments)]
pub fn mla_decode(
    s: &dyn GpuStream,
    out: &DeviceTensor,
    lse: &DeviceTensor,
    q: &DeviceTensor,
    cache: &DeviceTensor,
    block_table: &DeviceTensor,
    seq_lens: &DeviceTensor,
    meta: &MlaDecodeMeta,
    scale: f32,
) -> Result<()> {
    let p = &meta.plan;
    let qs = q.shape();
    let cs = cache.shape();
    let bts = block_table.shape();
    let b = seq_lens.numel();
    let err = |m: &str| {
        bad(format!(
            "mla_decode: {m} (q {qs:?}, cache {cs:?}, block_table {bts:?}, out {:?}, lse {:?}, plan {p:?})",
            out.shape(),
            lse.shape()
        ))
    };
    if qs.len() != 4 || qs[0] != b || qs[1] != p.s_q || qs[2] != p.heads || qs[3] != DK {
        return Err(err("q must be [B, s_q, H, 576] with the plan's s_q and H and B = seq_lens.len()"));
    }
    if b == 0 || b > p.max_batch {
        return Err(err("batch must be 1..=max_batch"));
    }
    if cs.len() != 3 || cs[1] != PAGE || cs[2] != DK {
        return Err(err("cache must be [pages, 64, 576]"));
    }
    if bts.len() != 2 || bts[0] != b {
        return Err(err("block_table must be [B, max_pages]"));
    }
    if out.numel() != b * p.rows() * DV || lse.numel() != b * p.rows() {
        return Err(err("out must be [B, s_q, H, 512] and lse [B, s_q, H]"));
    }
    for (t, n, d) in [
        (q, "q", DType::Bf16),
        (cache, "cache", DType::Bf16),
        (block_table, "block_table", DType::I32),
        (seq_lens, "seq_lens", DType::I32),
        (lse, "lse", DType::F32),
    ] {
        t.check_dtype(d).map_err(|e| bad(format!("mla_decode: {n}: {e}")))?;
    }
    let to = out.dtype();
    if to != DType::Bf16 && to != DType::F32 {
        return Err(err("out must be bf16 or f32"));
    }
    let max_pages = bts[1];
    launch_by_name(
        s,
        &p.kernel_name(to),
        LaunchCfg::new((p.num_parts as u32, p.row_blocks as u32, 1), (p.threads() as u32, 1, 1), p.smem_bytes()),
        &[
            KArg::Out(out),
            KArg::Out(lse),
            KArg::Out(&meta.o_ws),
            KArg::Out(&meta.lse_ws),
            KArg::In(q),
            KArg::In(cache),
            KArg::In(block_table),
            KArg::In(seq_lens),
            KArg::In(&meta.meta),
            KArg::U32(b as u32),
            KArg::U32(p.s_q as u32),
            KArg::U32(p.heads as u32),
            KArg::U32(max_pages as u32),
            KArg::F32(scale),
        ],
    )?;
    launch_by_name(
        s,
        &format!("mla_decode_combine_{to}"),
        LaunchCfg::new((b as u32, p.rows() as u32, 1), (128, 1, 1), 0),
        &[
            KArg::Out(out),
            KArg::Out(lse),
            KArg::In(&meta.o_ws),
            KArg::In(&meta.lse_ws),
            KArg::In(&meta.meta),
            KArg::U32(b as u32),
            KArg::U32(p.rows() as u32),
        ],
    )
}

/// The host mirror of the metadata kernel (tests of the schedule, and hosts that prefer to
/// upload it): the same i32 buffer the device computes from `seq_lens`.
pub fn host_metadata(seq_lens: &[i32], num_parts: usize) -> Vec<i32> {
    let mut m = vec![0i32; META_HDR + seq_lens.len() + 1];
    let mut c = 0i32;
    for (b, &l) in seq_lens.iter().enumerate() {
        c += if l > 0 { (l + PAGE as i32 - 1) / PAGE as i32 } else { 0 };
        m[META_HDR + b + 1] = c;
    }
    let parts = num_parts.max(1) as i32;
    m[0] = c;
    m[1] = ((c + parts - 1) / parts).max(1);
    m[2] = parts;
    m[3] = seq_lens.len() as i32;
    m
}

/// CUDA helpers for tests and benchmarks: the SM count and event timing of a [`CudaStream`].
#[cfg(feature = "cuda")]
pub mod cuda_util {
    use crate::backend::cuda::CudaStream;
    use crate::error::{Error, Result};
    use cudarc::driver::{result, sys};

    fn e(what: &str, err: result::DriverError) -> Error {
        Error::Backend { backend: "cuda", msg: format!("{what}: {err:?}") }
    }

    /// Multiprocessors of the stream's device.
    pub fn sm_count(s: &CudaStream) -> Result<usize> {
        crate::backend::GpuStream::sm_count(s)
    }

    /// A pair of events on the stream: `start()`, enqueue work, `stop_ms()` (waits for the work).
    pub struct EventTimer {
        start: sys::CUevent,
        stop: sys::CUevent,
        stream: sys::CUstream,
    }

    impl EventTimer {
        pub fn new(s: &CudaStream) -> Result<Self> {
            s.context().bind_to_thread().map_err(|x| e("bind context", x))?;
            let f = sys::CUevent_flags::CU_EVENT_DEFAULT;
            Ok(EventTimer {
                start: result::event::create(f).map_err(|x| e("cuEventCreate", x))?,
                stop: result::event::create(f).map_err(|x| e("cuEventCreate", x))?,
                stream: s.cu_stream(),
            })
        }
        pub fn start(&self) -> Result<()> {
            unsafe { result::event::record(self.start, self.stream) }.map_err(|x| e("cuEventRecord", x))
        }
        /// Milliseconds between `start()` and now (on the stream); synchronizes on the stop event.
        pub fn stop_ms(&self) -> Result<f32> {
            unsafe { result::event::record(self.stop, self.stream) }.map_err(|x| e("cuEventRecord", x))?;
            unsafe { result::event::synchronize(self.stop) }.map_err(|x| e("cuEventSynchronize", x))?;
            unsafe { result::event::elapsed(self.start, self.stop) }.map_err(|x| e("cuEventElapsedTime", x))
        }
    }

    /// A CUDA graph captured from the work `f` enqueues on the stream (thread-local capture),
    /// replayed with [`Graph::launch`]. `f` must not allocate or synchronize (warm it up first:
    /// modules load on first use).
    pub struct Graph {
        graph: sys::CUgraph,
        exec: sys::CUgraphExec,
        stream: sys::CUstream,
    }

    impl Graph {
        pub fn capture(s: &CudaStream, f: impl FnOnce() -> Result<()>) -> Result<Self> {
            s.context().bind_to_thread().map_err(|x| e("bind context", x))?;
            let stream = s.cu_stream();
            unsafe { result::stream::begin_capture(stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) }
                .map_err(|x| e("cuStreamBeginCapture", x))?;
            let r = f();
            let g = unsafe { result::stream::end_capture(stream) };
            r?;
            let graph = g.map_err(|x| e("cuStreamEndCapture", x))?;
            let exec = match unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) } {
                Ok(x) => x,
                Err(x) => {
                    unsafe {
                        let _ = result::graph::destroy(graph);
                    }
                    return Err(e("cuGraphInstantiate", x));
                }
            };
            Ok(Graph { graph, exec, stream })
        }
        pub fn launch(&self) -> Result<()> {
            unsafe { result::graph::launch(self.exec, self.stream) }.map_err(|x| e("cuGraphLaunch", x))
        }
    }

    impl Drop for Graph {
        fn drop(&mut self) {
            unsafe {
                let _ = result::graph::exec_destroy(self.exec);
                let _ = result::graph::destroy(self.graph);
            }
        }
    }

    impl Drop for EventTimer {
        fn drop(&mut self) {
            unsafe {
                let _ = result::event::destroy(self.start);
                let _ = result::event::destroy(self.stop);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_pack_rows_into_m_tiles() {
        let p = MlaDecodePlan::new(128, 1, 16, 132).unwrap();
        assert_eq!((p.mw, p.row_blocks, p.num_parts), (1, 1, 132));
        let p = MlaDecodePlan::new(128, 2, 16, 132).unwrap();
        assert_eq!((p.mw, p.row_blocks), (2, 1));
        let p = MlaDecodePlan::new(128, 1, 128, 132).unwrap();
        assert_eq!((p.mw, p.row_blocks, p.num_parts), (4, 2, 66));
        let p = MlaDecodePlan::new(8, 2, 128, 132).unwrap();
        assert_eq!((p.mw, p.row_blocks, p.num_parts), (4, 4, 33));
        assert!(p.smem_bytes() <= 227 * 1024);
        let p = MlaDecodePlan::new(8, 1, 5, 132).unwrap();
        assert_eq!((p.mw, p.row_blocks), (1, 1));
        let p = MlaDecodePlan::new(128, 1, 16, 132).unwrap().with_small_tiles(false);
        assert_eq!(p.smem_bytes(), 168_448);
        let p = MlaDecodePlan::new(128, 1, 128, 132).unwrap().with_small_tiles(false);
        assert_eq!(p.smem_bytes(), 229_888);
        let p = MlaDecodePlan::new(128, 1, 16, 132).unwrap().with_small_tiles(true);
        assert_eq!((p.small_tiles, p.num_parts, p.smem_bytes(), p.threads()), (true, 264, 93_440, 128));
        let p = MlaDecodePlan::new(128, 2, 16, 132).unwrap().with_small_tiles(true);
        assert_eq!((p.small_tiles, p.smem_bytes()), (true, 112_896));
        assert_eq!(p.kernel_name(DType::Bf16), "mla_decode_t32_bf16_bf16_m2");
        let p = MlaDecodePlan::new(128, 1, 128, 132).unwrap().with_small_tiles(true);
        assert!(!p.small_tiles, "mw = 4 has no small-tile kernel");
    }

    #[test]
    fn host_metadata_cuts_tiles_evenly() {
        let m = host_metadata(&[1, 64, 65, 0, 200], 3);
        // tiles 1, 1, 2, 0, 4 -> cum 0, 1, 2, 4, 4, 8
        assert_eq!(&m[..4], &[8, 3, 3, 5]);
        assert_eq!(&m[4..], &[0, 1, 2, 4, 4, 8]);
        let m = host_metadata(&[0, 0], 4);
        assert_eq!(&m[..2], &[0, 1]);
    }
}
