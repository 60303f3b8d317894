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
//!
//! # FP8 latent cache (`--kv-cache-dtype fp8_e4m3`)
//!
//! The plan carries the cache type ([`MlaCacheDtype`], [`MlaDecodePlan::with_cache_dtype`]) and
//! [`mla_decode`] checks the cache tensor against it. The fp8 cache is FlashMLA's layout:
//! `cache` [pages, 64, 656] **u8**, one 656-byte row per token:
//!
//! ```text
//! bytes [0, 512)    c_kv, 512 values as e4m3fn; group g = values 128g .. 128g + 127
//! bytes [512, 528)  4 f32 scales s_g = max(amax_g, 1e-10) / 448   (c_kv[i] = e4m3(byte i) · s_{i/128})
//! bytes [528, 656)  k_pe, 64 values as bf16
//! ```
//!
//! Rows are written by [`mla_cache_write`] (quantize on write: byte = e4m3fn(x / s_g), round to
//! nearest even, saturating; bit-identical to the CPU's [`crate::ops::mla_fp8::quantize_row`]).
//! The decode kernels dequantize each tile to bf16 (`bf16(e4m3 · s_g)`) in shared memory and run
//! the same tensor-core code as the bf16 cache; q, out, lse, combine and metadata are unchanged.
//!
//! # sm_90a wgmma kernel
//!
//! `mla_decode_wgmma_{bf16,fp8}_*` (family `mla_decode_wgmma`, `kernels/mla_decode_wgmma.cuh`): the
//! same contract with 64 query rows per CTA and warpgroup MMAs, for the bf16 cache and the fp8
//! cache (its K buffers double as the raw tiles' staging area and are dequantized in place; same
//! shared memory). Built only as the sm_90a cubin; [`MlaDecodePlan::with_wgmma`] forces it on or
//! off, [`MlaDecodePlan::with_default_kernel`] applies the default choice for a stream
//! ([`mla_wgmma_enabled`]; `DSV3_MLA_WGMMA=0` turns it off; the fp8 cache takes it only with
//! `DSV3_MLA_WGMMA_FP8=1` until measured, [`mla_wgmma_fp8_opted_in`]). [`mla_decode`] refuses a
//! wgmma plan where the kernel cannot run.

use super::dispatch::{launch_by_name, KArg};
use super::registry;
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
/// The sm_90a split kernel's family.
const WGMMA_FAMILY: &str = "mla_decode_wgmma";
/// Query rows per CTA of the wgmma kernel (one wgmma M of 64).
pub const WGMMA_ROWS: usize = 64;
/// Its dynamic shared memory (the kernel's mla_wg::SMEM): Q and two K tiles (64 × 576 bf16 each),
/// P [64 × 64] bf16, the row statistics / sums [2][64] f32, the two K-tile mbarriers (64 bytes),
/// and 1 KiB to align the base to 1024. The same for the fp8 cache: a raw tile (41,984 bytes)
/// lands inside the K buffer it is dequantized into (mla_wg::F8Dequant), no staging buffer.
const WGMMA_SMEM: usize = 3 * PAGE * DK * 2 + WGMMA_ROWS * PAGE * 2 + 2 * WGMMA_ROWS * 4 + 64 + 1024;
/// Bytes of one token row of the fp8 cache (512 e4m3 + 4 f32 scales + 64 bf16).
pub const FP8_ROW_BYTES: usize = crate::ops::mla_fp8::ROW_BYTES;

/// The latent cache's element type (`--kv-cache-dtype`: `auto` / `bf16` → [`Bf16`](Self::Bf16),
/// `fp8_e4m3` → [`Fp8E4m3`](Self::Fp8E4m3)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MlaCacheDtype {
    /// [pages, 64, 576] bf16.
    #[default]
    Bf16,
    /// [pages, 64, 656] u8: FlashMLA's fp8 rows (512 e4m3fn, 4 f32 group scales, 64 bf16 rope).
    Fp8E4m3,
}

impl MlaCacheDtype {
    /// Parses a `--kv-cache-dtype` value.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" | "bf16" | "bfloat16" => Ok(MlaCacheDtype::Bf16),
            "fp8_e4m3" | "fp8" => Ok(MlaCacheDtype::Fp8E4m3),
            _ => Err(bad(format!("kv cache dtype `{s}`: expected auto, bf16 or fp8_e4m3"))),
        }
    }
    /// Element type of the cache tensor.
    pub fn tensor_dtype(self) -> DType {
        match self {
            MlaCacheDtype::Bf16 => DType::Bf16,
            MlaCacheDtype::Fp8E4m3 => DType::U8,
        }
    }
    /// Last dimension of the cache tensor (elements of one token row).
    pub fn row_len(self) -> usize {
        match self {
            MlaCacheDtype::Bf16 => DK,
            MlaCacheDtype::Fp8E4m3 => FP8_ROW_BYTES,
        }
    }
    /// Bytes of one token row.
    pub fn row_bytes(self) -> usize {
        self.row_len() * self.tensor_dtype().size()
    }
    /// The cache part of the kernel names (`mla_decode_{bf16,fp8}_...`).
    pub fn kernel_tag(self) -> &'static str {
        match self {
            MlaCacheDtype::Bf16 => "bf16",
            MlaCacheDtype::Fp8E4m3 => "fp8",
        }
    }
}

impl std::fmt::Display for MlaCacheDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MlaCacheDtype::Bf16 => "bf16",
            MlaCacheDtype::Fp8E4m3 => "fp8_e4m3",
        })
    }
}

impl std::str::FromStr for MlaCacheDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        MlaCacheDtype::parse(s)
    }
}

fn bad(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// Whether the sm_90a wgmma split kernel can run on this stream: an sm_90 GPU loading the sm_90a
/// cubin of family `mla_decode_wgmma`, which this build compiled ([`registry::runs_on`];
/// elsewhere its entry traps).
pub fn mla_wgmma_available(s: &dyn GpuStream) -> bool {
    registry::KERNELS.iter().find(|k| k.family == WGMMA_FAMILY).is_some_and(|k| registry::runs_on(s, k))
}

/// The shared memory per block that MLA plans are fitted to on `s`
/// ([`MlaDecodePlan::fit_shared_memory`]; read once per model): CUDA's opt-in limit; none on HIP,
/// whose launches declare their LDS statically, or where the stream cannot report it (plans stay
/// as they are).
pub fn plan_smem_limit(s: &dyn GpuStream) -> Option<usize> {
    match s.vendor() {
        Vendor::Cuda => s.max_shared_per_block().ok(),
        Vendor::Hip => None,
    }
}

/// Whether the default plans may use the wgmma kernel on this stream: [`mla_wgmma_available`],
/// unless `DSV3_MLA_WGMMA=0`.
pub fn mla_wgmma_enabled(s: &dyn GpuStream) -> bool {
    std::env::var("DSV3_MLA_WGMMA").map(|v| v != "0").unwrap_or(true) && mla_wgmma_available(s)
}

/// Whether default plans over the fp8 cache may take the wgmma kernel (`DSV3_MLA_WGMMA_FP8=1`;
/// off by default: correct on the H200, but its in-place dequantization measured 0.55–0.62× the
/// bf16 wgmma kernel and slower than the fp8 mma.sync kernels below h = 64, docs/perf/mla.md).
/// Where on, it still needs [`mla_wgmma_enabled`].
pub fn mla_wgmma_fp8_opted_in() -> bool {
    std::env::var("DSV3_MLA_WGMMA_FP8").map(|v| v == "1").unwrap_or(false)
}

/// The default kernel choice ([`MlaDecodePlan::with_default_kernel`]) as a pure rule: `wgmma`
/// whether the kernel may run ([`mla_wgmma_enabled`]), `fp8` whether fp8 plans may take it
/// ([`mla_wgmma_fp8_opted_in`]). bf16 cache: from 32 query rows per sequence (there the mma.sync
/// kernel is bound by its ldmatrix / mma.sync rate; measured level at 16 rows). fp8 cache, opted
/// in: every row count, since the mma.sync fp8 kernels do not overlap their dequantization
/// (41.5% of copy at h = 16 vs 97.8% for the bf16 wgmma kernel) and the wgmma kernel does.
fn default_wgmma(rows: usize, cache: MlaCacheDtype, wgmma: bool, fp8: bool) -> bool {
    wgmma
        && match cache {
            MlaCacheDtype::Bf16 => rows >= 32,
            MlaCacheDtype::Fp8E4m3 => fp8,
        }
}

/// Whether a plan of `max_batch` sequences takes the 32-key-tile kernel (two blocks per SM) by
/// default: bf16 cache, mma.sync (≤ 16 query rows), from 64 sequences. Session 9, run 5 (h = 16,
/// s_q = 1): B = 128 at s_k 4K–32K 1.02–1.10× the page tiles (101.6% / 102.9% of the copy rate
/// at 16K / 32K), B = 64 1.04×; B = 32 and below, and s_k = 1K, 0.93–0.98×.
/// `DSV3_MLA_SMALL_TILES=1` takes it at every batch.
fn default_small_tiles(max_batch: usize, cache: MlaCacheDtype, wgmma: bool) -> bool {
    !wgmma && cache == MlaCacheDtype::Bf16 && max_batch >= 64
}

/// Part groups of `mla_decode_combine` (32 threads each, group g summing parts g, g + G, ...):
/// 8 where the plan cuts a sequence into at least 8 parts on average (small batches: the parts
/// are read in parallel), else 1 (a few parts per sequence; many small blocks). Measured on the
/// H200: 8 groups took B = 1 from 34 to 17 µs and cost B = 128, h = 128 a quarter (605 → 765 µs).
fn combine_groups(num_parts: usize, batch: usize) -> u32 {
    if num_parts >= 8 * batch { 8 } else { 1 }
}

/// Parts whose loads a part group of `mla_decode_combine` issues together: 4 for whole rows (G =
/// 1); with 8 groups, 8 where each group has ≥ 8 parts (B = 1–2 at 132 parts), else 1 (their
/// registers halve the blocks per SM, which the many (sequence, row) blocks of B = 8, h = 128
/// need: 16.6 vs 6.7 µs, session 9 run 4).
fn combine_parts_in_flight(num_parts: usize, batch: usize) -> u32 {
    match combine_groups(num_parts, batch) {
        1 => 4,
        _ if num_parts >= 64 * batch => 8,
        _ => 1,
    }
}

/// Column blocks (grid.z) of `mla_decode_combine`: the 8-group kernel takes 128 of the 512 output
/// columns per block (4 blocks per row), the 1-group kernel whole rows (kernels/mla_decode.cuh).
fn combine_column_blocks(num_parts: usize, batch: usize) -> u32 {
    if combine_groups(num_parts, batch) == 8 { 4 } else { 1 }
}

/// Dynamic shared memory a split-kernel block may use (the kernel's mla_smem_max): 227 KiB of an
/// H100 / H200 SM for the page-tile kernel (one block per SM), half of the SM's 228 KiB less the
/// 1 KiB each block reserves for the 32-key-tile kernel (two per SM).
fn smem_max(tile_keys: usize) -> usize {
    if tile_keys == PAGE { 227 * 1024 } else { 113 * 1024 }
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
    /// The latent cache's element type (bf16 by default; [`Self::with_cache_dtype`]).
    pub cache: MlaCacheDtype,
    /// The sm_90a wgmma kernel (`mla_decode_wgmma_{bf16,fp8}_*`: 64 rows per CTA) instead of the
    /// mma.sync kernels ([`Self::with_wgmma`], [`Self::with_default_kernel`]).
    pub wgmma: bool,
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
        let plan = MlaDecodePlan {
            max_batch,
            s_q,
            heads,
            mw,
            row_blocks: 0,
            num_parts: 0,
            small_tiles: false,
            sm_count,
            cache: MlaCacheDtype::Bf16,
            wgmma: false,
        };
        // The page-tile kernel unless DSV3_MLA_SMALL_TILES=1 (the 32-key tiles where they apply);
        // with_default_kernel takes the 32-key tiles for large batches (default_small_tiles).
        let small = std::env::var("DSV3_MLA_SMALL_TILES").map(|v| v == "1").unwrap_or(false);
        Ok(plan.with_small_tiles(small))
    }
    /// Selects the 32-key-tile kernel (two blocks per SM, twice the parts) when `on` and mw <= 2
    /// (and not the wgmma kernel); otherwise the page-tile kernel.
    pub fn with_small_tiles(mut self, on: bool) -> Self {
        self.small_tiles = on && self.mw <= 2 && !self.wgmma;
        self.layout()
    }
    /// Forces the sm_90a wgmma kernel on or off (tests, benchmarks). On, it replaces the
    /// mma.sync kernels whatever the row count (64-row blocks; the 32-key-tile choice is dropped).
    /// Both cache types; [`mla_decode`] refuses it where [`mla_wgmma_available`] is false.
    pub fn with_wgmma(mut self, on: bool) -> Self {
        self.wgmma = on;
        if on {
            self.small_tiles = false;
        }
        self.layout()
    }
    /// The default kernel for stream `s`: the wgmma kernel where [`mla_wgmma_enabled`], for the bf16
    /// cache, with at least 32 query rows per sequence (s_q·H ≥ 32: there the mma.sync kernel is
    /// bound by its ldmatrix / mma.sync rate, 45–75% of the copy bandwidth at 32–64 rows and
    /// 243 TFLOPS at 128; at s_q·H ≤ 16 the two were measured level). For the fp8 cache at every
    /// row count, but only with `DSV3_MLA_WGMMA_FP8=1` until its first GPU run
    /// ([`mla_wgmma_fp8_opted_in`]); otherwise the mma.sync fp8 kernels. The mma.sync bf16 plans
    /// of at least 64 sequences take the 32-key tiles ([`default_small_tiles`]).
    pub fn with_default_kernel(self, s: &dyn GpuStream) -> Self {
        let fp8 = self.cache == MlaCacheDtype::Fp8E4m3 && mla_wgmma_fp8_opted_in();
        let on = default_wgmma(self.rows(), self.cache, mla_wgmma_enabled(s), fp8);
        let small = self.small_tiles || default_small_tiles(self.max_batch, self.cache, on);
        self.with_wgmma(on).with_small_tiles(small)
    }
    /// Row blocks and parts for the chosen kernel: one block per SM (two for 32-key tiles).
    fn layout(mut self) -> Self {
        let rows_per_block = if self.wgmma { WGMMA_ROWS } else { 16 * self.mw };
        self.row_blocks = self.rows().div_ceil(rows_per_block);
        let per_sm = if self.small_tiles { 2 } else { 1 };
        self.num_parts = (per_sm * self.sm_count / self.row_blocks).max(1);
        self
    }
    /// The plan for a device whose blocks may use at most `limit` bytes of dynamic shared memory
    /// (an A100: 163 KiB, Ada: 99 KiB; the page-tile kernel takes 168–230 KB): the 32-key-tile
    /// kernel (93–113 KB), with fewer query rows per block (more row blocks) where that is what
    /// fits; `None` when no split kernel fits (the caller takes the paged attention kernel).
    pub fn fit_shared_memory(self, limit: usize) -> Option<Self> {
        if self.smem_bytes() as usize <= limit {
            return Some(self);
        }
        if self.wgmma {
            return None;
        }
        (1..=self.mw.min(2)).rev().map(|mw| MlaDecodePlan { mw, ..self }.with_small_tiles(true)).find(|p| p.smem_bytes() as usize <= limit)
    }
    /// The same plan for a cache of type `cache` (the parts, tiles, workspaces and the wgmma
    /// choice do not change: the wgmma kernel reads both).
    pub fn with_cache_dtype(mut self, cache: MlaCacheDtype) -> Self {
        self.cache = cache;
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
    /// Dynamic shared memory of the split kernel (bytes): Q, the K tiles (bf16 cache: two bf16
    /// tiles; fp8 cache: one bf16 tile and one or two raw 656-byte-row tiles), P and the
    /// reductions. The wgmma kernel: the same for both caches (its fp8 tiles are dequantized in
    /// place).
    pub fn smem_bytes(&self) -> u32 {
        if self.wgmma {
            return WGMMA_SMEM as u32;
        }
        let bm = 16 * self.mw;
        let tile = self.tile_keys();
        let warps = self.threads() / 32;
        let rest = bm * DK * 2 + bm * tile * 2 + (warps / self.mw) * bm * 4;
        let k_tiles = match self.cache {
            MlaCacheDtype::Bf16 => 2 * tile * DK * 2,
            // One bf16 tile and two raw tiles where they fit (the kernel's mla_fp8_raw_buffers).
            MlaCacheDtype::Fp8E4m3 if rest + tile * DK * 2 + 2 * tile * FP8_ROW_BYTES <= smem_max(tile) => tile * DK * 2 + 2 * tile * FP8_ROW_BYTES,
            MlaCacheDtype::Fp8E4m3 => tile * DK * 2 + tile * FP8_ROW_BYTES,
        };
        (rest + k_tiles) as u32
    }
    /// Dynamic shared memory to launch the split kernel with on `vendor`: [`Self::smem_bytes`] on
    /// CUDA; 0 on HIP, whose MFMA kernel declares its LDS statically (32-key K tile + S partials,
    /// at most 45056 bytes of the 64 KiB; kernels/mla_decode.cuh).
    pub fn launch_smem_bytes(&self, vendor: Vendor) -> u32 {
        match vendor {
            Vendor::Cuda => self.smem_bytes(),
            Vendor::Hip => 0,
        }
    }
    /// Keys per tile of the split kernel.
    pub fn tile_keys(&self) -> usize {
        if self.small_tiles && !self.wgmma {
            32
        } else {
            PAGE
        }
    }
    /// Threads per block of the split kernel (on HIP: 4 or 2 waves of 64, the MFMA kernel's NW).
    pub fn threads(&self) -> usize {
        if self.small_tiles {
            128
        } else {
            256
        }
    }
    /// Registry name of the split kernel for output dtype `out` (and the plan's cache type).
    pub fn kernel_name(&self, out: DType) -> String {
        let c = self.cache.kernel_tag();
        if self.wgmma {
            format!("mla_decode_wgmma_{c}_{out}")
        } else if self.small_tiles {
            format!("mla_decode_t32_{c}_{out}_m{}", self.mw)
        } else {
            format!("mla_decode_{c}_{out}_m{}", self.mw)
        }
    }
    /// Cache bytes per token row (bandwidth accounting).
    pub fn cache_row_bytes(&self) -> usize {
        self.cache.row_bytes()
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
        // With one part every sequence lies wholly inside it, so the split kernel writes straight
        // to out and the workspace is never touched (a prefill's s_q·H rows would make it GBs).
        let slots = if plan.num_parts == 1 { 0 } else { plan.slots() };
        Ok(MlaDecodeMeta {
            plan,
            meta: DeviceTensor::empty(s, DType::I32, &[plan.meta_len()])?,
            o_ws: DeviceTensor::empty(s, DType::F32, &[slots, plan.rows(), DV])?,
            lse_ws: DeviceTensor::empty(s, DType::F32, &[slots, plan.rows()])?,
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
    // One block of one thread per sequence (whole warps, at most 1024): its scan takes log2(threads)
    // barrier rounds, so a small batch does not pay the 10 rounds of 1024 threads (4 µs at B = 1).
    let threads = b.next_multiple_of(32).min(1024) as u32;
    launch_by_name(
        s,
        "mla_decode_metadata",
        LaunchCfg::linear(1, threads),
        &[KArg::Out(&meta.meta), KArg::In(seq_lens), KArg::U32(b as u32), KArg::U32(meta.plan.num_parts as u32)],
    )
}

/// MLA decode attention: `out` [B, s_q, H, 512] (bf16 or f32) and `lse` [B, s_q, H] f32 from `q`
/// [B, s_q, H, 576] bf16 over the paged cache of the plan's type: [pages, 64, 576] bf16, or
/// [pages, 64, 656] u8 for [`MlaCacheDtype::Fp8E4m3`] (a cache that does not match the plan is an
/// `InvalidArgument` error). `meta` must have been computed by [`mla_decode_metadata`] from the
/// same `seq_lens` (same step). Two launches: the split kernel and the combine (which returns at
/// once for sequences that were not split).
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
    let row = p.cache.row_len();
    if cs.len() != 3 || cs[1] != PAGE || cs[2] != row {
        return Err(err(match p.cache {
            MlaCacheDtype::Bf16 => "cache must be [pages, 64, 576] (bf16 cache plan)",
            MlaCacheDtype::Fp8E4m3 => "cache must be [pages, 64, 656] (fp8_e4m3 cache plan: 656-byte rows)",
        }));
    }
    if cache.dtype() != p.cache.tensor_dtype() {
        return Err(err(match p.cache {
            MlaCacheDtype::Bf16 => "cache must be bf16 for a bf16 cache plan",
            MlaCacheDtype::Fp8E4m3 => "cache must be u8 (656-byte fp8 rows) for an fp8_e4m3 cache plan",
        }));
    }
    if bts.len() != 2 || bts[0] != b {
        return Err(err("block_table must be [B, max_pages]"));
    }
    if out.numel() != b * p.rows() * DV || lse.numel() != b * p.rows() {
        return Err(err("out must be [B, s_q, H, 512] and lse [B, s_q, H]"));
    }
    for (t, n, d) in [
        (q, "q", DType::Bf16),
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
    if p.wgmma && !mla_wgmma_available(s) {
        return Err(err("the sm_90a wgmma kernel cannot run on this stream (it needs an sm_90 GPU loading this build's sm_90a cubin of mla_decode_wgmma)"));
    }
    let max_pages = bts[1];
    // The wgmma kernel loads K tiles with TMA: the cache as [pages·64 rows, row bytes], one box
    // = 64 rows × 128 bytes (bf16: a 64-column chunk of a page; fp8: a 128-value latent band, or
    // the rope as its last 128 bytes).
    let cache_map = if p.wgmma {
        let row_bytes = p.cache.row_bytes() as u64;
        let map = s.tensor_map(&TmaTiled { addr: cache.raw(), dims: vec![row_bytes, (cs[0] * PAGE) as u64], strides: vec![row_bytes], box_dims: vec![128, PAGE as u32], swizzle: TmaSwizzle::B128 })?;
        Some(KArg::Map(map))
    } else {
        None
    };
    let split_args = [
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
    ];
    let args: Vec<KArg> = split_args.into_iter().chain(cache_map).collect();
    launch_by_name(
        s,
        &p.kernel_name(to),
        LaunchCfg::new((p.num_parts as u32, p.row_blocks as u32, 1), (p.threads() as u32, 1, 1), p.launch_smem_bytes(s.vendor())),
        &args,
    )?;
    if p.rows() > 65535 {
        // The combine's grid.y is the row: at prefill sizes (s_q·H rows) it cannot launch, and is
        // not needed — such plans have one part, so the split kernel wrote every sequence whole.
        if p.num_parts != 1 {
            return Err(err("more than 65535 rows need a plan of one part"));
        }
        return Ok(());
    }
    let groups = combine_groups(p.num_parts, b);
    launch_by_name(
        s,
        &format!("mla_decode_combine_{to}_g{groups}_p{}", combine_parts_in_flight(p.num_parts, b)),
        LaunchCfg::new((b as u32, p.rows() as u32, combine_column_blocks(p.num_parts, b)), (32 * groups, 1, 1), 0),
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

/// Writes kv [T, kv_stride] rows (their first 576 values, `[c_kv | k_pe]`, f32 or bf16) into the
/// paged cache slots of (`token_seq[t]`, `token_pos[t]`) through `block_table` [B, max_pages]
/// (page size 64), in the cache's format `dtype`: bf16 rows (the `paged_kv_write` kernel), or
/// fp8 rows quantized on write (`mla_cache_write_fp8_*`: per 128-value group s = max(amax,
/// 1e-10) / 448, bytes e4m3fn(x / s) rounded to nearest even and saturated, rope as bf16;
/// bit-identical to [`crate::ops::mla_fp8::quantize_row`]). The slots are not checked on the
/// host (device data): they must lie inside the cache.
pub fn mla_cache_write(
    s: &dyn GpuStream,
    dtype: MlaCacheDtype,
    cache: &DeviceTensor,
    kv: &DeviceTensor,
    block_table: &DeviceTensor,
    token_seq: &DeviceTensor,
    token_pos: &DeviceTensor,
) -> Result<()> {
    let cs = cache.shape();
    let ks = kv.shape();
    let bts = block_table.shape();
    let err = |m: &str| bad(format!("mla_cache_write ({dtype}): {m} (cache {cs:?} {}, kv {ks:?} {}, block_table {bts:?})", cache.dtype(), kv.dtype()));
    if cs.len() != 3 || cs[1] != PAGE || cs[2] != dtype.row_len() || cache.dtype() != dtype.tensor_dtype() {
        return Err(err(match dtype {
            MlaCacheDtype::Bf16 => "cache must be [pages, 64, 576] bf16",
            MlaCacheDtype::Fp8E4m3 => "cache must be [pages, 64, 656] u8",
        }));
    }
    if ks.len() != 2 || ks[1] < DK {
        return Err(err("kv must be [T, kv_stride] with kv_stride >= 576"));
    }
    let t = ks[0];
    if bts.len() != 2 || bts[1] == 0 {
        return Err(err("block_table must be [B, max_pages]"));
    }
    if token_seq.numel() != t || token_pos.numel() != t {
        return Err(err("token_seq and token_pos need one entry per kv row"));
    }
    for (x, n) in [(block_table, "block_table"), (token_seq, "token_seq"), (token_pos, "token_pos")] {
        x.check_dtype(DType::I32).map_err(|e| bad(format!("mla_cache_write: {n}: {e}")))?;
    }
    if kv.dtype() != DType::F32 && kv.dtype() != DType::Bf16 {
        return Err(err("kv must be f32 or bf16"));
    }
    if t == 0 {
        return Ok(());
    }
    let tokens = u32::try_from(t).map_err(|_| err("too many rows"))?;
    // Both kernels take (cache, kv, block_table, token_seq, token_pos, tokens, ...).
    let mut args = vec![KArg::Out(cache), KArg::In(kv), KArg::In(block_table), KArg::In(token_seq), KArg::In(token_pos), KArg::U32(tokens)];
    let (name, threads) = match dtype {
        MlaCacheDtype::Bf16 => {
            args.extend([KArg::U32(DK as u32), KArg::U32(ks[1] as u32), KArg::U32(PAGE as u32), KArg::U32(bts[1] as u32)]);
            (format!("paged_kv_write_{}_bf16", kv.dtype()), 256)
        }
        MlaCacheDtype::Fp8E4m3 => {
            args.extend([KArg::U32(ks[1] as u32), KArg::U32(bts[1] as u32)]);
            (format!("mla_cache_write_fp8_{}", kv.dtype()), 128)
        }
    };
    launch_by_name(s, &name, LaunchCfg::linear(tokens, threads), &args)
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
    use crate::backend::stream::StreamEvent;
    use crate::backend::GpuStream;
    use std::sync::Mutex;
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
    /// Built on the stream's timing events ([`crate::backend::GpuStream::record_event`]).
    pub struct EventTimer<'a> {
        s: &'a CudaStream,
        start: Mutex<Option<Box<dyn StreamEvent>>>,
    }

    impl<'a> EventTimer<'a> {
        pub fn new(s: &'a CudaStream) -> Result<Self> {
            Ok(EventTimer { s, start: Mutex::new(None) })
        }
        pub fn start(&self) -> Result<()> {
            let ev = self.s.record_event()?;
            *self.start.lock().map_err(|_| timer_err("lock poisoned"))? = Some(ev);
            Ok(())
        }
        /// Milliseconds between `start()` and now (on the stream); synchronizes on the stop event.
        pub fn stop_ms(&self) -> Result<f32> {
            let stop = self.s.record_event()?;
            let start = self.start.lock().map_err(|_| timer_err("lock poisoned"))?;
            stop.ms_since(start.as_deref().ok_or_else(|| timer_err("stop_ms before start"))?)
        }
    }

    fn timer_err(what: &str) -> Error {
        Error::Backend { backend: "cuda", msg: format!("EventTimer: {what}") }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_shapes_follow_parts_per_sequence() {
        // 132 parts: one sequence -> 8 groups, 8 parts in flight each; 8 sequences -> 8 groups of
        // about one part, none in flight ahead; 32 sequences -> whole rows.
        assert_eq!((combine_groups(132, 1), combine_parts_in_flight(132, 1), combine_column_blocks(132, 1)), (8, 8, 4));
        assert_eq!((combine_groups(66, 1), combine_parts_in_flight(66, 1)), (8, 8));
        assert_eq!((combine_groups(66, 8), combine_parts_in_flight(66, 8), combine_column_blocks(66, 8)), (8, 1, 4));
        assert_eq!((combine_groups(132, 32), combine_parts_in_flight(132, 32), combine_column_blocks(132, 32)), (1, 4, 1));
    }

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
        assert_eq!((p.launch_smem_bytes(Vendor::Cuda), p.launch_smem_bytes(Vendor::Hip)), (168_448, 0));
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
    fn plans_fit_the_devices_shared_memory() {
        let (hopper, a100, ada) = (227 * 1024, 163 * 1024, 99 * 1024);
        // h = 16 (a TP-8 shard): page tiles (168 KB) on Hopper, 32-key tiles (93 KB) elsewhere.
        let p = MlaDecodePlan::new(128, 1, 16, 108).unwrap();
        assert_eq!(p.fit_shared_memory(hopper).map(|p| (p.small_tiles, p.smem_bytes())), Some((false, 168_448)));
        for limit in [a100, ada] {
            let f = p.fit_shared_memory(limit).unwrap();
            assert_eq!((f.small_tiles, f.mw, f.smem_bytes(), f.num_parts), (true, 1, 93_440, 216));
        }
        // h = 128: mw 4 on page tiles (230 KB); an A100 takes mw 2 on 32-key tiles (4 row blocks),
        // Ada mw 1 (8 row blocks).
        let p = MlaDecodePlan::new(8, 1, 128, 108).unwrap();
        let f = p.fit_shared_memory(a100).unwrap();
        assert_eq!((f.mw, f.small_tiles, f.row_blocks, f.smem_bytes()), (2, true, 4, 112_896));
        assert_eq!(f.kernel_name(DType::Bf16), "mla_decode_t32_bf16_bf16_m2");
        let f = p.fit_shared_memory(ada).unwrap();
        assert_eq!((f.mw, f.small_tiles, f.row_blocks, f.smem_bytes()), (1, true, 8, 93_440));
        // The fp8 cache's 32-key tiles fit Ada too.
        let f = MlaDecodePlan::new(8, 1, 16, 58).unwrap().with_cache_dtype(MlaCacheDtype::Fp8E4m3).fit_shared_memory(ada).unwrap();
        assert_eq!((f.small_tiles, f.smem_bytes()), (true, 98_560));
        // Nothing fits 48 KB, and the wgmma kernel is never shrunk.
        assert!(MlaDecodePlan::new(8, 1, 16, 58).unwrap().fit_shared_memory(48 * 1024).is_none());
        assert!(MlaDecodePlan::new(8, 1, 128, 132).unwrap().with_wgmma(true).fit_shared_memory(a100).is_none());
    }

    #[test]
    fn fp8_cache_plans() {
        let fp8 = MlaCacheDtype::Fp8E4m3;
        assert_eq!((fp8.row_len(), fp8.row_bytes(), fp8.tensor_dtype()), (656, 656, DType::U8));
        assert_eq!((MlaCacheDtype::Bf16.row_len(), MlaCacheDtype::Bf16.row_bytes()), (576, 1152));
        assert_eq!(MlaCacheDtype::parse("fp8_e4m3").unwrap(), fp8);
        assert_eq!("auto".parse::<MlaCacheDtype>().unwrap(), MlaCacheDtype::Bf16);
        assert!(MlaCacheDtype::parse("fp8_e5m2").is_err());
        assert_eq!(fp8.to_string(), "fp8_e4m3");
        // Q + one bf16 K tile + two raw tiles (one where two do not fit) + P + reductions.
        for (h, s_q, small, smem, name) in [
            (16, 1, false, 178_688, "mla_decode_fp8_bf16_m1"),
            (16, 2, false, 199_168, "mla_decode_fp8_bf16_m2"),
            (128, 1, false, 198_144, "mla_decode_fp8_bf16_m4"),
            (16, 1, true, 98_560, "mla_decode_t32_fp8_bf16_m1"),
            (16, 2, true, 97_024, "mla_decode_t32_fp8_bf16_m2"),
        ] {
            let p = MlaDecodePlan::new(128, s_q, h, 132).unwrap().with_small_tiles(small).with_cache_dtype(fp8);
            assert_eq!((p.smem_bytes(), p.kernel_name(DType::Bf16).as_str()), (smem, name));
            assert!(p.smem_bytes() as usize <= smem_max(p.tile_keys()));
            // The cache type changes nothing else.
            let b = MlaDecodePlan::new(128, s_q, h, 132).unwrap().with_small_tiles(small);
            assert_eq!((p.num_parts, p.row_blocks, p.mw, p.threads()), (b.num_parts, b.row_blocks, b.mw, b.threads()));
        }
        let p = MlaDecodePlan::new(8, 1, 16, 132).unwrap().with_cache_dtype(fp8);
        assert_eq!(p.kernel_name(DType::F32), "mla_decode_fp8_f32_m1");
        assert_eq!(p.cache_row_bytes(), 656);
    }

    #[test]
    fn wgmma_plans_take_64_row_blocks() {
        for (h, s_q, blocks, parts) in [(128, 1, 2, 66), (128, 2, 4, 33), (16, 2, 1, 132), (64, 1, 1, 132), (20, 2, 1, 132), (72, 1, 2, 66)] {
            let p = MlaDecodePlan::new(128, s_q, h, 132).unwrap().with_wgmma(true);
            assert_eq!((p.row_blocks, p.num_parts, p.threads(), p.tile_keys()), (blocks, parts, 256, 64), "h {h} s_q {s_q}");
            assert_eq!((p.smem_bytes(), p.kernel_name(DType::F32).as_str()), (230_976, "mla_decode_wgmma_bf16_f32"));
            assert!(p.smem_bytes() as usize <= smem_max(PAGE));
            // Off again: the mma.sync plan it came from.
            assert_eq!(p.with_wgmma(false), MlaDecodePlan::new(128, s_q, h, 132).unwrap().with_small_tiles(false));
        }
        // Small tiles and wgmma exclude each other.
        let p = MlaDecodePlan::new(128, 1, 16, 132).unwrap().with_small_tiles(true).with_wgmma(true);
        assert!(p.wgmma && !p.small_tiles);
        assert!(!p.with_small_tiles(true).small_tiles);
    }

    #[test]
    fn fp8_wgmma_plans_match_the_bf16_ones() {
        let fp8 = MlaCacheDtype::Fp8E4m3;
        for (h, s_q) in [(16, 1), (16, 2), (32, 1), (64, 1), (128, 1), (128, 2), (20, 2)] {
            let b = MlaDecodePlan::new(128, s_q, h, 132).unwrap().with_wgmma(true);
            // Either order of the two builders gives the same plan.
            let p = b.with_cache_dtype(fp8);
            assert_eq!(p, MlaDecodePlan::new(128, s_q, h, 132).unwrap().with_cache_dtype(fp8).with_wgmma(true));
            assert_eq!((p.row_blocks, p.num_parts, p.threads(), p.tile_keys()), (b.row_blocks, b.num_parts, 256, 64), "h {h} s_q {s_q}");
            // The raw tile lands inside its K buffer: the bf16 kernel's shared memory.
            assert_eq!((p.smem_bytes(), p.launch_smem_bytes(Vendor::Cuda)), (230_976, 230_976));
            assert_eq!(p.kernel_name(DType::F32), "mla_decode_wgmma_fp8_f32");
            assert_eq!(p.kernel_name(DType::Bf16), "mla_decode_wgmma_fp8_bf16");
            assert_eq!(p.cache_row_bytes(), 656);
            // Fits Hopper as it is; never shrunk for smaller devices.
            assert_eq!(p.fit_shared_memory(227 * 1024), Some(p));
            assert!(p.fit_shared_memory(163 * 1024).is_none());
        }
        // The raw page (4 latent bands + rope + scales) is one page of 656-byte rows, and fits a
        // K buffer (64 × 576 bf16).
        assert_eq!(4 * 8192 + 8192 + PAGE * 16, PAGE * FP8_ROW_BYTES);
        const { assert!(PAGE * FP8_ROW_BYTES <= PAGE * DK * 2) };
    }

    #[test]
    fn default_kernel_rule() {
        let (bf16, fp8) = (MlaCacheDtype::Bf16, MlaCacheDtype::Fp8E4m3);
        // bf16: wgmma from 32 rows, where it can run.
        assert!(!default_wgmma(16, bf16, true, false) && default_wgmma(32, bf16, true, false) && default_wgmma(128, bf16, true, true));
        assert!(!default_wgmma(128, bf16, false, true));
        // fp8: only opted in (DSV3_MLA_WGMMA_FP8=1), then at every row count.
        for rows in [16, 32, 128, 4096] {
            assert!(!default_wgmma(rows, fp8, true, false));
            assert!(default_wgmma(rows, fp8, true, true));
            assert!(!default_wgmma(rows, fp8, false, true));
        }
    }

    #[test]
    fn small_tiles_rule() {
        let bf16 = MlaCacheDtype::Bf16;
        assert!(default_small_tiles(64, bf16, false) && default_small_tiles(256, bf16, false));
        assert!(!default_small_tiles(32, bf16, false), "small batches: the page tiles");
        assert!(!default_small_tiles(128, bf16, true), "the wgmma kernel has no 32-key tiles");
        assert!(!default_small_tiles(128, MlaCacheDtype::Fp8E4m3, false), "fp8 cache: not measured");
        // A 16-row plan (h = 16, s_q = 1) of 128 sequences: 32-key tiles, twice the parts.
        let p = MlaDecodePlan::new(128, 1, 16, 132).unwrap().with_small_tiles(false);
        let q = p.with_small_tiles(default_small_tiles(128, bf16, false));
        assert!(q.small_tiles && q.num_parts == 264);
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
