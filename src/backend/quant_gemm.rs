//! INT8 (W8A8) and AWQ (W4A16) GEMMs on any [`GpuStream`] (kernels/quant_gemm.cuh, on the tile
//! machinery of kernels/block_gemm.cuh that the FP8 GEMM shares).
//!
//! INT8 ([`int8_gemm`], [`int8_grouped_gemm`]): `out[M, N] bf16` from `a` int8 `[M, K]` and a
//! Linear weight `b` int8 `[N, K]`, scaled per [`Int8Scheme`]:
//! - `Block` (Meituan block INT8): `a_scales [M, ⌈K/128⌉]` (per token group, from
//!   [`int8_act_quant`]) and `weight_scale_inv [⌈N/128⌉, ⌈K/128⌉]`; each 128-wide K block is summed
//!   exactly in s32 by `mma.sync.m16n8k32.s8` and promoted with `s_a·s_w` into f32;
//! - `Channel` (`w8a8_int8`): `a_scales [M]` (per token) and `weight_scale [N]`; s32 over K, one
//!   scale at the end.
//!
//! Any M ≥ 1; N, K need not be multiples of 128; K % 16 == 0 (16-byte rows). Up to 64 rows per M
//! tile [`plan_int8`] / [`plan_awq`] / [`plan_grouped`] pick the weight-streaming kernel
//! ([`QuantTile::Stream`], [`super::stream_gemm`]; AWQ too), the BM 16 / 64 / 128 tiles above.
//! On an H100 / H200 stream that loads the sm_90a cubin, [`int8_plan_for_stream`] moves INT8's
//! BM-128 plans to [`QuantTile::Wg2`]: the persistent TMA + wgmma kernel of the FP8 v2 GEMM with
//! an s8 MMA (kernels/int8_gemm_wgmma2.cuh), unsplit (`DSV3_INT8_WGMMA2=0` turns it off).
//!
//! AWQ ([`awq_gemm`], [`awq_grouped_gemm`]): `out[M, N] bf16 = a bf16 [M, K] · W` with
//! `W[k, n] = (q − z)·s` from an AWQ layer (`qzeros` i32 `[K/G, N/8]`, `scales` f16 `[K/G, N]`,
//! G ∈ {64, 128}). The kernel reads `qweight` **repacked at load time** by [`awq_repack`] from the
//! checkpoint's `[K, N/8]` into `[N/8, K/32, 32]` words whose nibbles are the mma.sync B fragments
//! (see kernels/quant_gemm.cuh): one coalesced 128-byte read per warp, n tile and 32 K, and no
//! shuffling in the kernel. The repack is a permutation of nibbles (same size); qzeros / scales stay
//! as the checkpoint has them. K % G == 0 and N % 8 == 0.
//! On an H100 / H200 stream that loads the sm_90a cubin, [`awq_plan_dense_for_stream`] (the plan
//! of [`awq_gemm`]) takes the small-M wgmma entry for 9–64 rows ([`QuantTile::Wgs`],
//! kernels/awq_gemm_wgs.cuh: the same repacked words dequantized in registers as the wgmma's A
//! operand, stream-K; 1.1–2.6× the mma.sync kernels there on the H200; N % 32 == 0, as its
//! zeros are TMA-copied); `DSV3_GEMM_WGS=0` turns it off.
//!
//! Split-K (small M) adds partial tiles into an f32 workspace the kernels leave zeroed: hold one
//! [`SplitKWorkspace`] (the FP8 GEMM's [`Fp8Workspace`]) per stream. Grouped (MoE) launches take
//! the expert-sorted, tile-padded rows of [`moe_align_tiles`] (the fused-MoE kernel): experts
//! without tokens get no tile, so they cost nothing.
#![allow(clippy::too_many_arguments, clippy::manual_is_multiple_of)]

use super::fp8_gemm::{bad, launch_raw, launch_wg2, rows_cols, splits_for, u32_of, Fp8Workspace, GroupedRows, Operands, WG2_SMEM};
use super::memory::DeviceTensor;
use super::registry;
use super::stream::GpuStream;
use super::gemm_wgs::{self, awq_wgs_enabled, launch_awq_wgs, launch_wgs, wgs_enabled, WgsFormat, WgsTile};
use super::stream_gemm::StreamTile;
use super::types::*;
use crate::error::Result;

pub use super::fp8_gemm::DEFAULT_SMS;

/// The split-K workspace (shared with the FP8 GEMM).
pub type SplitKWorkspace = Fp8Workspace;

/// Floor of the activations' absolute maximum (as the CPU reference: `ops::int8::INT8_AMAX_EPS`).
pub(super) const EPS: f32 = crate::ops::int8::INT8_AMAX_EPS;

/// How an INT8 layer is scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Int8Scheme {
    /// Per-token-group (128) activation scales, 128×128 block weight scales (`weight_scale_inv`).
    Block,
    /// Per-token activation scales, per-output-channel weight scales (`weight_scale`).
    Channel,
}

impl Int8Scheme {
    pub const ALL: [Int8Scheme; 2] = [Int8Scheme::Block, Int8Scheme::Channel];
    /// The small-M entry's format of this scheme ([`gemm_wgs::dense_tile`], [`gemm_wgs::moe_tile`]).
    pub fn wgs_format(self) -> WgsFormat {
        match self {
            Int8Scheme::Block => WgsFormat::Int8Block,
            Int8Scheme::Channel => WgsFormat::Int8Channel,
        }
    }
    /// Kernel name part (`int8_gemm_{tag}_bm*`).
    pub fn tag(self) -> &'static str {
        match self {
            Int8Scheme::Block => "block",
            Int8Scheme::Channel => "channel",
        }
    }
    /// Quantization name part of the activation kernels.
    pub(super) fn quant_tag(self) -> &'static str {
        match self {
            Int8Scheme::Block => "group128",
            Int8Scheme::Channel => "token",
        }
    }
    /// Number of activation scales of `[m, k]`.
    pub fn a_scales_len(self, m: usize, k: usize) -> usize {
        match self {
            Int8Scheme::Block => m * k.div_ceil(128),
            Int8Scheme::Channel => m,
        }
    }
    /// Number of weight scales of one `[n, k]` weight.
    pub fn w_scales_len(self, n: usize, k: usize) -> usize {
        match self {
            Int8Scheme::Block => n.div_ceil(128) * k.div_ceil(128),
            Int8Scheme::Channel => n,
        }
    }
}

/// M-tile rows of the INT8 / AWQ kernels (BN is always 128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantTile {
    Bm16,
    Bm64,
    Bm128,
    /// The small-M weight-streaming kernel (`stream_gemm_int8_*`, `stream_gemm_awq_*`,
    /// [`super::stream_gemm`]).
    Stream(StreamTile),
    /// INT8 only: BM 128 through the sm_90a v2 entry (`int8_gemm_wgmma2_*`: persistent, TMA-fed,
    /// warp-specialized wgmma; no split-K). Launched only where [`int8_wgmma2_available`].
    Wg2,
    /// INT8 only: [`QuantTile::Wg2`] in 2-CTA clusters sharing the weight tile of two M tiles
    /// (`int8_gemm_wgmma2_pair_*`; a launch with one M tile runs as `Wg2`). Not a default:
    /// measured 2–6% slower than `Wg2` at M = 4096 (docs/perf/quant_gemm.md).
    Wg2Pair,
    /// The small-M sm_90a entries (`int8_gemm_wgs_*_n*`, `awq_gemm_wgs_g*_n*`,
    /// [`super::gemm_wgs`]: weights as the wgmma's 64-row operand, tokens as N,
    /// stream-K; the plan's splits are ignored).
    Wgs(WgsTile),
}

impl QuantTile {
    /// The tiled kernels' tiles.
    pub const ALL: [QuantTile; 3] = [QuantTile::Bm16, QuantTile::Bm64, QuantTile::Bm128];
    /// The streaming kernel's tiles.
    pub const STREAM: [QuantTile; 2] = [QuantTile::Stream(StreamTile::T8), QuantTile::Stream(StreamTile::T64)];
    /// The v2 tiles (sm_90a TMA + wgmma, no split-K).
    pub fn is_wgmma2(self) -> bool {
        matches!(self, QuantTile::Wg2 | QuantTile::Wg2Pair)
    }
    /// Tiles whose grouped launches read pre-sorted rows by TMA (the MoE gathers them first).
    pub fn reads_sorted_rows(self) -> bool {
        self.is_wgmma2() || matches!(self, QuantTile::Wgs(_))
    }
    pub fn bm(self) -> usize {
        match self {
            QuantTile::Bm16 => 16,
            QuantTile::Bm64 => 64,
            QuantTile::Bm128 | QuantTile::Wg2 | QuantTile::Wg2Pair => 128,
            QuantTile::Stream(t) => t.bm(),
            QuantTile::Wgs(t) => t.nt(),
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            QuantTile::Bm16 => "bm16",
            QuantTile::Bm64 => "bm64",
            QuantTile::Bm128 => "bm128",
            QuantTile::Stream(t) => t.label(),
            QuantTile::Wg2 => "wg2",
            QuantTile::Wg2Pair => "wg2p",
            QuantTile::Wgs(t) => t.label(),
        }
    }
    /// The tile the plans pick for `rows` rows per M tile: the streaming kernel up to
    /// [`super::stream_gemm::STREAM_MAX_ROWS`], the tiled ones above.
    pub fn for_rows(rows: usize) -> QuantTile {
        StreamTile::for_rows(rows).map(QuantTile::Stream).unwrap_or_else(|| QuantTile::tiled_for_rows(rows))
    }
    /// The tiled kernels' tile for `m` rows per M tile (what the plans took before the streaming
    /// kernel; benches compare with it).
    pub fn tiled_for_rows(m: usize) -> QuantTile {
        if m <= 16 {
            QuantTile::Bm16
        } else if m <= 64 {
            QuantTile::Bm64
        } else {
            QuantTile::Bm128
        }
    }
    /// CTAs per SM assumed when sizing split-K (BM 16 is small in registers and shared memory).
    fn occupancy(self) -> usize {
        match self {
            QuantTile::Bm16 => 2,
            QuantTile::Stream(t) => t.occupancy(),
            _ => 1,
        }
    }
    /// Dynamic shared memory of the INT8 kernel (mirrors `Int8GemmSmem` / `StreamCfg` in the kernels).
    pub fn int8_smem_bytes(self, vendor: Vendor) -> u32 {
        let stage = (self.bm() + 128) * 128;
        let stages = match (vendor, self) {
            (_, QuantTile::Stream(t)) => return t.smem_bytes(vendor),
            (_, QuantTile::Wg2 | QuantTile::Wg2Pair) => return WG2_SMEM,
            (_, QuantTile::Wgs(t)) => return t.smem_bytes(),
            (Vendor::Hip, _) => 1,
            (Vendor::Cuda, QuantTile::Bm128) => 3,
            (Vendor::Cuda, _) => 4,
        };
        (stage * stages) as u32
    }
    /// Dynamic shared memory of the AWQ kernel (mirrors `AwqSmem` / `AwqStreamCfg`): 4 stages of BM ×
    /// 128 bytes of activations + 4 KB of packed weights on CUDA; on HIP one stage of BM × 128 + 4 KB
    /// (awq_gemm_mfma; the generic loop of HIP targets without MFMA uses none of it).
    pub fn awq_smem_bytes(self, vendor: Vendor) -> u32 {
        match (vendor, self) {
            (_, QuantTile::Stream(t)) => t.awq_smem_bytes(vendor),
            (Vendor::Cuda, _) => ((self.bm() * 128 + 4096) * 4) as u32,
            (Vendor::Hip, _) => ((self.bm() + 32) * 128) as u32,
        }
    }
}

/// Tile and split-K factor of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantPlan {
    pub tile: QuantTile,
    pub splits: usize,
}

/// The GEMM kernels of a quantized weight format, as the plans see them (split-K counts K tiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantKernel {
    /// INT8 (block or channel): K tiles of 128.
    Int8,
    /// AWQ W4A16: K tiles of 64.
    Awq,
}

impl QuantKernel {
    fn k_tile(self) -> usize {
        match self {
            QuantKernel::Int8 => 128,
            QuantKernel::Awq => 64,
        }
    }
}

/// A dense plan of `kernel` with the tile given: split-K to fill one wave for M ≤ 256.
pub fn plan_quant_tile(kernel: QuantKernel, tile: QuantTile, m: usize, n: usize, k: usize, sms: usize) -> QuantPlan {
    let ctas = m.div_ceil(tile.bm()) * n.div_ceil(128);
    let splits = if m <= 256 {
        splits_for(ctas, k.div_ceil(kernel.k_tile()), sms, tile.occupancy())
    } else {
        1
    };
    QuantPlan { tile, splits }
}

/// Tile and split for a dense INT8 `[m, k] · [n, k]ᵀ` on `sms` SMs (K tiles of 128).
pub fn plan_int8(m: usize, n: usize, k: usize, sms: usize) -> QuantPlan {
    plan_quant_tile(QuantKernel::Int8, QuantTile::for_rows(m), m, n, k, sms)
}

/// Whether the INT8 v2 entry can run on this stream: it loads the sm_90a cubin and this build
/// compiled one ([`registry::runs_on`]; elsewhere the entry only traps).
pub fn int8_wgmma2_available(s: &dyn GpuStream) -> bool {
    registry::kernel("int8_gemm_wgmma2_block").is_some_and(|k| registry::runs_on(s, k))
}

/// Whether the default INT8 plans use the v2 entry: [`int8_wgmma2_available`], unless
/// `DSV3_INT8_WGMMA2=0`.
pub fn int8_wgmma2_enabled(s: &dyn GpuStream) -> bool {
    std::env::var("DSV3_INT8_WGMMA2").map(|v| v != "0").unwrap_or(true) && int8_wgmma2_available(s)
}

/// An INT8 `plan` adapted to the stream: its BM-128 tile moved to the v2 entry where
/// [`int8_wgmma2_enabled`], without split-K (v2 has none; FP8's v2 measured faster unsplit than
/// v1 with the plan's splits on every shape at M = 128, docs/perf/fp8_gemm.md).
pub fn int8_plan_for_stream(s: &dyn GpuStream, plan: QuantPlan) -> QuantPlan {
    if plan.tile == QuantTile::Bm128 && int8_wgmma2_enabled(s) {
        QuantPlan { tile: QuantTile::Wg2, splits: 1 }
    } else {
        plan
    }
}

/// The plan of a dense INT8 GEMM of `m` rows on this stream: the small-M wgmma entry where
/// [`gemm_wgs::dense_tile`] takes it and [`wgs_enabled`], else [`plan_int8`] adapted by
/// [`int8_plan_for_stream`].
pub fn int8_plan_dense_for_stream(s: &dyn GpuStream, scheme: Int8Scheme, m: usize, n: usize, k: usize) -> QuantPlan {
    match gemm_wgs::dense_tile(scheme.wgs_format(), m, n, k, s.sm_count().unwrap_or(DEFAULT_SMS)) {
        Some(t) if wgs_enabled(s) => QuantPlan { tile: QuantTile::Wgs(t), splits: 1 },
        _ => int8_plan_for_stream(s, plan_int8(m, n, k, DEFAULT_SMS)),
    }
}

/// Tile and split for a dense AWQ GEMM (K tiles of 64).
pub fn plan_awq(m: usize, n: usize, k: usize, sms: usize) -> QuantPlan {
    plan_quant_tile(QuantKernel::Awq, QuantTile::for_rows(m), m, n, k, sms)
}

/// The plan of a dense AWQ GEMM of `m` rows on this stream: the small-M wgmma entry where
/// [`gemm_wgs::dense_tile`] takes it (9–64 rows, N % 32 == 0: [`gemm_wgs::awq_wgs_fits`]) and
/// [`awq_wgs_enabled`], else [`plan_awq`].
pub fn awq_plan_dense_for_stream(s: &dyn GpuStream, m: usize, n: usize, k: usize) -> QuantPlan {
    match gemm_wgs::dense_tile(WgsFormat::Awq, m, n, k, s.sm_count().unwrap_or(DEFAULT_SMS)) {
        Some(t) if awq_wgs_enabled(s) => QuantPlan { tile: QuantTile::Wgs(t), splits: 1 },
        _ => plan_awq(m, n, k, DEFAULT_SMS),
    }
}

/// Plan of a grouped GEMM of `kernel` over `pairs` expert-sorted rows among `experts`: the tile
/// (from the mean rows per active expert), the grid's maximum M tiles, and the split for an
/// `n`-wide output over `k`.
pub fn plan_grouped(
    kernel: QuantKernel,
    pairs: usize,
    experts: usize,
    n: usize,
    k: usize,
    sms: usize,
) -> (QuantPlan, usize) {
    // The tiled kernels: the streaming one measured slower on the grouped GEMMs at 16+ tokens
    // (INT8 EP-8 0.81 vs 0.88 of copy, AWQ 615 vs 479 µs; docs/perf/quant_gemm.md).
    let tile = QuantTile::tiled_for_rows(pairs.div_ceil(experts.min(pairs).max(1)));
    plan_grouped_tile(kernel, tile, pairs, experts, n, k, sms)
}

/// [`plan_grouped`] with the tile given.
pub fn plan_grouped_tile(
    kernel: QuantKernel,
    tile: QuantTile,
    pairs: usize,
    experts: usize,
    n: usize,
    k: usize,
    sms: usize,
) -> (QuantPlan, usize) {
    let active = experts.min(pairs).max(1);
    let bm = tile.bm();
    let max_tiles = pairs.div_ceil(bm) + experts.min(pairs);
    let est_tiles = pairs.div_ceil(bm).max(active).min(max_tiles);
    let splits = splits_for(est_tiles * n.div_ceil(128), k.div_ceil(kernel.k_tile()), sms, tile.occupancy());
    (QuantPlan { tile, splits }, max_tiles)
}

/// Operands of one tiled launch (raw addresses; 0 = null).
pub(super) struct Tiled {
    pub(super) name: String,
    pub(super) smem: u32,
    pub(super) n: usize,
    pub(super) k_tiles: usize,
    pub(super) m_tiles: usize,
    pub(super) ws_rows: usize,
    /// Arguments before `ws` (out, a, ...), and after `num_tiles` (m, n, k, ...), without `splits`.
    pub(super) head: Vec<u64>,
    pub(super) rows: [u64; 3],
    pub(super) tail: Vec<u64>,
}

pub(super) fn launch_tiled(
    s: &dyn GpuStream,
    ws: &mut SplitKWorkspace,
    plan: QuantPlan,
    t: Tiled,
) -> Result<()> {
    let n_tiles = t.n.div_ceil(128);
    if t.m_tiles == 0 || n_tiles == 0 || t.k_tiles == 0 {
        return Ok(());
    }
    if t.m_tiles > 65535 {
        return Err(bad(format!(
            "{}: {} M tiles exceed the grid's 65535",
            t.name, t.m_tiles
        )));
    }
    let splits = plan.splits.clamp(1, t.k_tiles);
    // Every split must own at least one K tile.
    let per = t.k_tiles.div_ceil(splits);
    let splits = t.k_tiles.div_ceil(per);
    let (wsp, cnt) = if splits > 1 {
        ws.ensure(s, t.ws_rows * t.n, t.m_tiles * n_tiles)?
    } else {
        (0, 0)
    };
    let cfg = LaunchCfg::new(
        (
            u32_of(n_tiles, "n tiles")?,
            u32_of(t.m_tiles, "m tiles")?,
            u32_of(splits, "splits")?,
        ),
        (256, 1, 1),
        t.smem,
    );
    let mut vals = t.head;
    vals.extend([wsp, cnt]);
    vals.extend(t.rows);
    vals.extend(t.tail);
    vals.push(splits as u64);
    launch_raw(s, &t.name, cfg, &mut vals)
}

// ---- INT8 ------------------------------------------------------------------------------------

/// Dynamic INT8 activation quantization of `x` (f32 or bf16) `[rows, cols]`: `q` i8 `[rows, cols]`,
/// `scales` f32 `[rows, ⌈cols/128⌉]` (`Block`) or `[rows]` (`Channel`). Bit-identical to
/// `ops::int8::quantize_act_int8_per_token_group` / `quantize_act_int8_per_token`.
pub fn int8_act_quant(
    s: &dyn GpuStream,
    scheme: Int8Scheme,
    q: &DeviceTensor,
    scales: &DeviceTensor,
    x: &DeviceTensor,
) -> Result<()> {
    let (rows, cols) = rows_cols(x);
    if !matches!(x.dtype(), DType::F32 | DType::Bf16) {
        return Err(bad(format!(
            "int8_act_quant: x is {}, expected f32 or bf16",
            x.dtype()
        )));
    }
    q.check_dtype(DType::I8)?;
    scales.check_dtype(DType::F32)?;
    if q.numel() != rows * cols || scales.numel() != scheme.a_scales_len(rows, cols) {
        return Err(bad(format!(
            "int8_act_quant ({scheme:?}): q {:?} scales {:?} for x {:?}",
            q.shape(),
            scales.shape(),
            x.shape()
        )));
    }
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let name = format!("int8_quant_{}_{}", scheme.quant_tag(), x.dtype());
    launch_int8_quant(s, scheme, &name, [q.raw(), scales.raw(), x.raw()], rows, cols, cols, (0, 1))
}

/// Fused SiLU·mul + INT8 quantization: `gate_up` bf16 `[rows, 2I]` → `q` i8 `[rows, I]` and scales
/// (`[rows, ⌈I/128⌉]` or `[rows]`).
pub fn int8_silu_mul_quant(
    s: &dyn GpuStream,
    scheme: Int8Scheme,
    q: &DeviceTensor,
    scales: &DeviceTensor,
    gate_up: &DeviceTensor,
) -> Result<()> {
    let (rows, c2) = rows_cols(gate_up);
    gate_up.check_dtype(DType::Bf16)?;
    q.check_dtype(DType::I8)?;
    scales.check_dtype(DType::F32)?;
    let i = c2 / 2;
    if c2 % 2 != 0 || q.numel() != rows * i || scales.numel() != scheme.a_scales_len(rows, i) {
        return Err(bad(format!(
            "int8_silu_mul_quant ({scheme:?}): q {:?} scales {:?} for gate_up {:?}",
            q.shape(),
            scales.shape(),
            gate_up.shape()
        )));
    }
    if rows == 0 || i == 0 {
        return Ok(());
    }
    let name = format!("int8_silu_mul_quant_{}", scheme.quant_tag());
    launch_int8_quant(s, scheme, &name, [q.raw(), scales.raw(), gate_up.raw()], rows, i, c2, (0, 1))
}

/// Launches INT8 activation-quantization kernel `name` (`int8_quant_*`, `int8_silu_mul_quant_*`) of `scheme`
/// on `io` = (codes, scales, input) raw: `rows` rows of `cols` values, input rows `stride` apart;
/// `tiles` = (num_tiles address, bm): rows of tiles past `*num_tiles` are skipped ((0, 1): none).
pub(super) fn launch_int8_quant(s: &dyn GpuStream, scheme: Int8Scheme, name: &str, io: [u64; 3], rows: usize, cols: usize, stride: usize, tiles: (u64, usize)) -> Result<()> {
    let r = u32_of(rows, "rows")?;
    let mut vals = [io[0], io[1], io[2], r as u64, u32_of(cols, "cols")? as u64, u32_of(stride, "stride")? as u64, tiles.0, tiles.1 as u64, EPS.to_bits() as u64];
    let cfg = match scheme {
        Int8Scheme::Block => LaunchCfg::quant_groups128(rows, cols)?,
        Int8Scheme::Channel => LaunchCfg::linear(r, 256),
    };
    launch_raw(s, name, cfg, &mut vals)
}

fn check_int8_operands(
    scheme: Int8Scheme,
    a: &DeviceTensor,
    a_scales: &DeviceTensor,
    w_scale: &DeviceTensor,
    experts: usize,
    n: usize,
    k: usize,
    w: &DeviceTensor,
) -> Result<usize> {
    let (am, ak) = rows_cols(a);
    a.check_dtype(DType::I8)?;
    w.check_dtype(DType::I8)?;
    a_scales.check_dtype(DType::F32)?;
    w_scale.check_dtype(DType::F32)?;
    if ak != k {
        return Err(bad(format!(
            "int8_gemm: a {:?} has K {ak}, the weight {:?} has K {k}",
            a.shape(),
            w.shape()
        )));
    }
    if k % 16 != 0 {
        return Err(bad(format!(
            "int8_gemm: K = {k} must be a multiple of 16 (16-byte rows)"
        )));
    }
    if a_scales.numel() != scheme.a_scales_len(am, k) {
        return Err(bad(format!(
            "int8_gemm ({scheme:?}): a_scales {:?} for a {:?} (want {} values)",
            a_scales.shape(),
            a.shape(),
            scheme.a_scales_len(am, k)
        )));
    }
    if w_scale.numel() != experts * scheme.w_scales_len(n, k) {
        return Err(bad(format!("int8_gemm ({scheme:?}): weight scales {:?} for {experts} weight(s) [{n}, {k}] (want {} values)", w_scale.shape(), experts * scheme.w_scales_len(n, k))));
    }
    Ok(am)
}

/// Launches an INT8 GEMM (dense or grouped; `o.b` the weights `[E, n, k]`): the v2 entry for
/// [`QuantTile::Wg2`], the streaming or tiled kernels otherwise.
pub(super) fn launch_int8(s: &dyn GpuStream, ws: &mut SplitKWorkspace, scheme: Int8Scheme, plan: QuantPlan, o: Operands) -> Result<()> {
    let name = match plan.tile {
        QuantTile::Wg2 | QuantTile::Wg2Pair => {
            let pair = (plan.tile == QuantTile::Wg2Pair).then(|| format!("int8_gemm_wgmma2_pair_{}", scheme.tag()));
            return launch_wg2(s, &format!("int8_gemm_wgmma2_{}", scheme.tag()), pair.as_deref(), plan.splits, &o);
        }
        QuantTile::Wgs(t) => return launch_wgs(s, ws, &format!("int8_gemm_wgs_{}_n{}", scheme.tag(), t.nt()), t, &o),
        QuantTile::Stream(t) => format!("stream_gemm_int8_{}_t{}", scheme.tag(), t.bm()),
        tile => format!("int8_gemm_{}_{}", scheme.tag(), tile.label()),
    };
    let t = Tiled {
        name,
        smem: plan.tile.int8_smem_bytes(s.vendor()),
        n: o.n,
        k_tiles: o.k.div_ceil(128),
        m_tiles: o.m_tiles,
        ws_rows: o.ws_rows,
        head: vec![o.out, o.a, o.a_scales, o.b, o.b_scale],
        rows: [o.row_ids, o.tile_expert, o.num_tiles],
        tail: vec![
            u32_of(o.m, "m")? as u64,
            u32_of(o.n, "n")? as u64,
            u32_of(o.k, "k")? as u64,
            u32_of(o.a_row_div.max(1), "a_row_div")? as u64,
        ],
    };
    launch_tiled(s, ws, plan, t)
}

/// Dense INT8 GEMM with an explicit plan (tests run every tile and split).
pub fn int8_gemm_with(
    s: &dyn GpuStream,
    ws: &mut SplitKWorkspace,
    scheme: Int8Scheme,
    plan: QuantPlan,
    out: &DeviceTensor,
    a: &DeviceTensor,
    a_scales: &DeviceTensor,
    b: &DeviceTensor,
    b_scale: &DeviceTensor,
) -> Result<()> {
    let (n, k) = rows_cols(b);
    let m = check_int8_operands(scheme, a, a_scales, b_scale, 1, n, k, b)?;
    out.check_dtype(DType::Bf16)?;
    if out.numel() != m * n {
        return Err(bad(format!(
            "int8_gemm: out {:?} for [{m}, {n}]",
            out.shape()
        )));
    }
    launch_int8(s, ws, scheme, plan, Operands::dense(out, a, a_scales, b, b_scale, (m, n, k), plan.tile.bm()))
}

/// Dense INT8 GEMM `out bf16 [M, N] = a i8 [M, K] · b i8 [N, K]ᵀ` with `scheme`'s scales; the plan
/// from the shape ([`plan_int8`]) and the stream ([`int8_plan_for_stream`]), split-K workspace
/// from `ws`.
pub fn int8_gemm(
    s: &dyn GpuStream,
    ws: &mut SplitKWorkspace,
    scheme: Int8Scheme,
    out: &DeviceTensor,
    a: &DeviceTensor,
    a_scales: &DeviceTensor,
    b: &DeviceTensor,
    b_scale: &DeviceTensor,
) -> Result<()> {
    let (m, k) = rows_cols(a);
    let (n, _) = rows_cols(b);
    int8_gemm_with(
        s,
        ws,
        scheme,
        int8_plan_dense_for_stream(s, scheme, m, n, k),
        out,
        a,
        a_scales,
        b,
        b_scale,
    )
}

/// Grouped INT8 GEMM over expert-sorted rows: `w` i8 `[E, N, K]`, `w_scale` `[E, ⌈N/128⌉, ⌈K/128⌉]`
/// (`Block`) or `[E, N]` (`Channel`); `a` i8 `[rows_a, K]` with its scales, read through `rows`
/// (`row_ids / a_row_div`, e.g. the token of a (token, k) pair); `out` has at least
/// `rows.max_tiles · bm` rows of N (row r = sorted row r; padding rows come out zero).
pub fn int8_grouped_gemm(
    s: &dyn GpuStream,
    ws: &mut SplitKWorkspace,
    scheme: Int8Scheme,
    plan: QuantPlan,
    out: &DeviceTensor,
    a: &DeviceTensor,
    a_scales: &DeviceTensor,
    w: &DeviceTensor,
    w_scale: &DeviceTensor,
    rows: &GroupedRows,
) -> Result<()> {
    let sh = w.shape();
    if sh.len() != 3 {
        return Err(bad(format!(
            "int8_grouped_gemm: w {sh:?} must be [E, N, K]"
        )));
    }
    let (e, n, k) = (sh[0], sh[1], sh[2]);
    check_int8_operands(scheme, a, a_scales, w_scale, e, n, k, w)?;
    let max_rows = rows.max_tiles * plan.tile.bm();
    out.check_dtype(DType::Bf16)?;
    check_rows(rows, out, max_rows, n, "int8_grouped_gemm")?;
    launch_int8(s, ws, scheme, plan, Operands::grouped(out, a, a_scales, w, w_scale, rows, max_rows))
}

fn check_rows(
    rows: &GroupedRows,
    out: &DeviceTensor,
    max_rows: usize,
    n: usize,
    what: &str,
) -> Result<()> {
    rows.tile_expert.check_dtype(DType::I32)?;
    rows.num_tiles.check_dtype(DType::I32)?;
    if let Some(r) = rows.row_ids {
        r.check_dtype(DType::I32)?;
        if r.numel() < max_rows {
            return Err(bad(format!(
                "{what}: row_ids {:?} shorter than {max_rows} rows",
                r.shape()
            )));
        }
    }
    if out.numel() < max_rows * n
        || rows.tile_expert.numel() < rows.max_tiles
        || rows.num_tiles.numel() < 1
    {
        return Err(bad(format!(
            "{what}: out {:?} tile_expert {:?} for {} tiles of {} rows × {n}",
            out.shape(),
            rows.tile_expert.shape(),
            rows.max_tiles,
            max_rows / rows.max_tiles.max(1)
        )));
    }
    Ok(())
}

// ---- AWQ ---------------------------------------------------------------------------------------

/// Nibble position of column `j % 8` in an AWQ word (`[0, 4, 1, 5, 2, 6, 3, 7]`).
const AWQ_NIBBLE: [u32; 8] = crate::model::checkpoint::AWQ_REVERSE_ORDER;

/// Word index and bit shift of weight (`k`, `n`) in [`awq_repack`]'s layout (K rows in all).
pub fn awq_repacked_pos(n: usize, k: usize, k_total: usize) -> (usize, u32) {
    let (n8, gcol, kb, kk) = (n / 8, n % 8, k / 32, k % 32);
    let (s, r) = (kk / 16, kk % 16);
    let (t, hi, second) = ((r % 8) / 2, r % 2, r / 8);
    (
        (n8 * (k_total / 32) + kb) * 32 + gcol * 4 + t,
        4 * (s * 2 + second + 4 * hi) as u32,
    )
}

/// Repacks one AWQ `qweight` (i32 `[k, n/8]`, nibble order 0,4,1,5,2,6,3,7) into the kernel's
/// layout `[n/8, k/32, 32]`: the word of lane (g, t) of column group n8 and K block kb holds column
/// `n8·8 + g` at k = `kb·32 + {2t, 2t+8, 16+2t, 24+2t}` in nibbles 0..3 and the next k of each in
/// nibbles 4..7 (the m16n8k16 B fragments of two MMAs). Needs k % 32 == 0 and n % 8 == 0.
pub fn awq_repack(qweight: &[i32], k: usize, n: usize) -> Result<Vec<i32>> {
    if k % 32 != 0 || n % 8 != 0 || qweight.len() != k * n / 8 {
        return Err(bad(format!("awq_repack: qweight of {} words for [K {k}, N {n}] (K % 32 == 0, N % 8 == 0, K·N/8 words)", qweight.len())));
    }
    let n8 = n / 8;
    let mut out = vec![0u32; qweight.len()];
    for kk in 0..k {
        for nn in 0..n {
            let q = (qweight[kk * n8 + nn / 8] as u32 >> (4 * AWQ_NIBBLE[nn % 8])) & 0xF;
            let (w, sh) = awq_repacked_pos(nn, kk, k);
            out[w] |= q << sh;
        }
    }
    Ok(out.into_iter().map(|w| w as i32).collect())
}

/// [`awq_repack`] of `experts` stacked `[k, n/8]` weights.
pub fn awq_repack_experts(qweight: &[i32], experts: usize, k: usize, n: usize) -> Result<Vec<i32>> {
    let per = k * n / 8;
    if qweight.len() != experts * per {
        return Err(bad(format!(
            "awq_repack_experts: {} words for {experts} × [K {k}, N {n}]",
            qweight.len()
        )));
    }
    let mut out = Vec::with_capacity(qweight.len());
    for e in 0..experts {
        out.extend(awq_repack(&qweight[e * per..(e + 1) * per], k, n)?);
    }
    Ok(out)
}

/// An AWQ layer (or `experts` of them, stacked) on the device: `qweight` repacked by
/// [`awq_repack`] (i32, `experts · K · N/8` words), `qzeros` i32 `[E, K/G, N/8]`, `scales` f16
/// `[E, K/G, N]`, as the checkpoint stores them.
pub struct AwqWeight<'a> {
    pub qweight: &'a DeviceTensor,
    pub qzeros: &'a DeviceTensor,
    pub scales: &'a DeviceTensor,
    pub experts: usize,
    pub n: usize,
    pub k: usize,
    pub group: usize,
}

impl AwqWeight<'_> {
    pub(super) fn check(&self) -> Result<()> {
        let (e, n, k, g) = (self.experts, self.n, self.k, self.group);
        if !matches!(g, 64 | 128) || k % g != 0 || n % 8 != 0 || e == 0 {
            return Err(bad(format!("awq: group {g} (64 or 128), K {k} (a multiple of it), N {n} (a multiple of 8), {e} expert(s)")));
        }
        self.qweight.check_dtype(DType::I32)?;
        self.qzeros.check_dtype(DType::I32)?;
        self.scales.check_dtype(DType::F16)?;
        if self.qweight.numel() != e * k * n / 8
            || self.qzeros.numel() != e * (k / g) * (n / 8)
            || self.scales.numel() != e * (k / g) * n
        {
            return Err(bad(format!(
                "awq: qweight {:?} qzeros {:?} scales {:?} for {e} × [K {k}, N {n}], group {g}",
                self.qweight.shape(),
                self.qzeros.shape(),
                self.scales.shape()
            )));
        }
        Ok(())
    }
}

pub(super) fn awq_tiled(
    s: &dyn GpuStream,
    plan: QuantPlan,
    out: u64,
    a: u64,
    w: &AwqWeight,
    m_tiles: usize,
    m: usize,
    rows: [u64; 3],
    a_row_div: usize,
) -> Result<Tiled> {
    let name = match plan.tile {
        QuantTile::Wg2 | QuantTile::Wg2Pair => return Err(bad("awq_gemm: the wg2 tiles are INT8 only".into())),
        QuantTile::Wgs(_) => return Err(bad("awq_gemm: the wgs tiles launch through launch_awq_wgs_rows".into())),
        QuantTile::Stream(t) => format!("stream_gemm_awq_t{}", t.bm()),
        tile => format!("awq_gemm_{}", tile.label()),
    };
    Ok(Tiled {
        name,
        smem: plan.tile.awq_smem_bytes(s.vendor()),
        n: w.n,
        k_tiles: w.k / 64,
        m_tiles,
        ws_rows: m,
        head: vec![
            out,
            a,
            w.qweight.raw(),
            w.qzeros.raw(),
            w.scales.raw(),
        ],
        rows,
        tail: vec![
            u32_of(m, "m")? as u64,
            u32_of(w.n, "n")? as u64,
            u32_of(w.k, "k")? as u64,
            w.group as u64,
            u32_of(a_row_div.max(1), "a_row_div")? as u64,
        ],
    })
}

/// The checks an AWQ GEMM's operands share (bf16 `a` and `out`, a consistent weight): `a`'s
/// (rows, K).
fn check_awq_io(w: &AwqWeight, a: &DeviceTensor, out: &DeviceTensor) -> Result<(usize, usize)> {
    w.check()?;
    a.check_dtype(DType::Bf16)?;
    out.check_dtype(DType::Bf16)?;
    Ok(rows_cols(a))
}

/// Dense AWQ GEMM with an explicit plan: `out bf16 [M, N] = a bf16 [M, K] · W` (`w.experts == 1`).
pub fn awq_gemm_with(
    s: &dyn GpuStream,
    ws: &mut SplitKWorkspace,
    plan: QuantPlan,
    out: &DeviceTensor,
    a: &DeviceTensor,
    w: &AwqWeight,
) -> Result<()> {
    let (m, k) = check_awq_io(w, a, out)?;
    if w.experts != 1 || k != w.k || out.numel() != m * w.n {
        return Err(bad(format!(
            "awq_gemm: a {:?} out {:?} for a weight [K {}, N {}] × {}",
            a.shape(),
            out.shape(),
            w.k,
            w.n,
            w.experts
        )));
    }
    if let QuantTile::Wgs(t) = plan.tile {
        return launch_awq_wgs_rows(s, ws, t, out.raw(), a.raw(), m, w, m, m.div_ceil(t.nt()), [0, 0]);
    }
    let t = awq_tiled(s, plan, out.raw(), a.raw(), w, m.div_ceil(plan.tile.bm()), m, [0, 0, 0], 1)?;
    launch_tiled(s, ws, plan, t)
}

/// An AWQ GEMM on the small-M wgmma entry of tile `t`: `out` [m, N] (bf16) from the `a_rows` bf16
/// rows at `a` (row r read in place: dense, or already in sorted order), `m_tiles` M tiles;
/// `tiles` = (tile_expert, num_tiles) of a grouped launch ((0, 0): dense).
pub(super) fn launch_awq_wgs_rows(s: &dyn GpuStream, ws: &mut SplitKWorkspace, t: WgsTile, out: u64, a: u64, a_rows: usize, w: &AwqWeight, m: usize, m_tiles: usize, tiles: [u64; 2]) -> Result<()> {
    let o = Operands {
        out,
        a,
        a_scales: w.qzeros.raw(),
        b: w.qweight.raw(),
        b_scale: w.scales.raw(),
        row_ids: 0,
        tile_expert: tiles[0],
        num_tiles: tiles[1],
        m,
        n: w.n,
        k: w.k,
        a_row_div: 1,
        m_tiles,
        ws_rows: m,
        a_rows,
        experts: w.experts,
    };
    launch_awq_wgs(s, ws, t, w.group, &o)
}

/// Dense AWQ GEMM, plan from the shape and the stream ([`awq_plan_dense_for_stream`]).
pub fn awq_gemm(
    s: &dyn GpuStream,
    ws: &mut SplitKWorkspace,
    out: &DeviceTensor,
    a: &DeviceTensor,
    w: &AwqWeight,
) -> Result<()> {
    let (m, _) = rows_cols(a);
    awq_gemm_with(s, ws, awq_plan_dense_for_stream(s, m, w.n, w.k), out, a, w)
}

/// Grouped AWQ GEMM over expert-sorted rows (`w.experts` stacked layers), rows as in
/// [`int8_grouped_gemm`]; the wgs tiles read `a` row by row (no `row_ids`: sort the rows first).
pub fn awq_grouped_gemm(
    s: &dyn GpuStream,
    ws: &mut SplitKWorkspace,
    plan: QuantPlan,
    out: &DeviceTensor,
    a: &DeviceTensor,
    w: &AwqWeight,
    rows: &GroupedRows,
) -> Result<()> {
    let (_, k) = check_awq_io(w, a, out)?;
    if k != w.k {
        return Err(bad(format!(
            "awq_grouped_gemm: a {:?} for K {}",
            a.shape(),
            w.k
        )));
    }
    let max_rows = rows.max_tiles * plan.tile.bm();
    check_rows(rows, out, max_rows, w.n, "awq_grouped_gemm")?;
    if let QuantTile::Wgs(t) = plan.tile {
        if rows.row_ids.is_some() {
            return Err(bad("awq_grouped_gemm: the wgs tiles read pre-sorted rows (no row_ids; gather them first)".into()));
        }
        let [_, te, nt] = rows.raw();
        return launch_awq_wgs_rows(s, ws, t, out.raw(), a.raw(), rows_cols(a).0, w, max_rows, rows.max_tiles, [te, nt]);
    }
    let t = awq_tiled(s, plan, out.raw(), a.raw(), w, rows.max_tiles, max_rows, rows.raw(), rows.a_row_div)?;
    launch_tiled(s, ws, plan, t)
}

// ---- MoE grouping --------------------------------------------------------------------------------

/// Expert-sorted, tile-padded rows of a MoE layer (the `moe_align_tiles` kernel of the fused MoE).
pub struct TileAlignment {
    /// `[max_tiles · bm]`: the (token, k) pair of each sorted row, −1 for padding.
    pub sorted_ids: DeviceTensor,
    /// `[max_tiles]`: the expert of each M tile (tiles < `num_tiles` are valid).
    pub tile_expert: DeviceTensor,
    /// `[1]`: tiles in use (on the device; no host sync).
    pub num_tiles: DeviceTensor,
    /// `[pairs]`: the sorted row of each pair (−1: an expert outside `[0, E)`).
    pub pair_to_row: DeviceTensor,
    pub max_tiles: usize,
    pub bm: usize,
}

impl TileAlignment {
    /// The grouped-GEMM rows: sorted row r reads a-row `sorted_ids[r] / a_row_div` (`topk` for a
    /// per-token activation, 1 for one already per pair) or, without ids, row r itself.
    pub fn rows(&self, gather: bool, a_row_div: usize) -> GroupedRows<'_> {
        GroupedRows {
            row_ids: gather.then_some(&self.sorted_ids),
            a_row_div,
            tile_expert: &self.tile_expert,
            num_tiles: &self.num_tiles,
            max_tiles: self.max_tiles,
        }
    }
}

/// Sorts `topk_ids` i32 `[T, topk]` by expert, each expert's rows padded to `bm` (one launch).
pub fn moe_align_tiles(
    s: &dyn GpuStream,
    topk_ids: &DeviceTensor,
    num_experts: usize,
    bm: usize,
) -> Result<TileAlignment> {
    topk_ids.check_dtype(DType::I32)?;
    let p = topk_ids.numel();
    if num_experts == 0 || !matches!(bm, 8 | 16 | 32 | 64 | 128) {
        return Err(bad(format!(
            "moe_align_tiles: {num_experts} experts, bm {bm} (8, 16, 32, 64 or 128)"
        )));
    }
    let max_tiles = p.div_ceil(bm) + num_experts.min(p);
    let al = TileAlignment {
        sorted_ids: DeviceTensor::empty(s, DType::I32, &[(max_tiles * bm).max(1)])?,
        tile_expert: DeviceTensor::empty(s, DType::I32, &[max_tiles.max(1)])?,
        num_tiles: DeviceTensor::empty(s, DType::I32, &[1])?,
        pair_to_row: DeviceTensor::empty(s, DType::I32, &[p.max(1)])?,
        max_tiles,
        bm,
    };
    if p == 0 {
        unsafe { s.memset_u8(al.num_tiles.raw(), 0, 4)? };
        return Ok(al);
    }
    let mut v = [
        al.sorted_ids.raw(),
        al.tile_expert.raw(),
        al.num_tiles.raw(),
        al.pair_to_row.raw(),
        topk_ids.raw(),
        u32_of(p, "pairs")? as u64,
        u32_of(num_experts, "experts")? as u64,
        bm as u64,
    ];
    launch_raw(s, "moe_align_tiles", super::moe_driver::align_cfg(p, num_experts)?, &mut v)?;
    Ok(al)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let p = plan_int8(1, 2112, 7168, 132);
        assert_eq!(p.tile, QuantTile::Stream(StreamTile::T8));
        assert!(p.splits > 1, "{p:?}");
        assert_eq!(plan_int8(64, 2112, 7168, 132).tile, QuantTile::Bm64);
        assert_eq!(plan_int8(65, 2112, 7168, 132).tile, QuantTile::Bm128);
        assert_eq!(plan_awq(1, 2112, 7168, 132).tile, QuantTile::Stream(StreamTile::T8));
        assert_eq!(plan_awq(65, 2112, 7168, 132).tile, QuantTile::Bm128);
        assert_eq!(
            plan_int8(4096, 7168, 2048, 132),
            QuantPlan {
                tile: QuantTile::Bm128,
                splits: 1
            }
        );
        assert_eq!(plan_awq(64, 4096, 7168, 132).tile, QuantTile::Bm64);
        assert_eq!(QuantTile::Bm128.int8_smem_bytes(Vendor::Cuda), 98304);
        assert_eq!(QuantTile::Bm128.awq_smem_bytes(Vendor::Cuda), 81920);
        assert_eq!(QuantTile::Bm128.awq_smem_bytes(Vendor::Hip), 20480);
        let (p, max_tiles) = plan_grouped(QuantKernel::Int8, 8, 32, 512, 7168, 132);
        assert_eq!((p.tile, max_tiles), (QuantTile::Bm16, 9));
        assert!(p.splits > 1);
        let (p, _) = plan_grouped(QuantKernel::Awq, 8, 32, 512, 7168, 132);
        assert_eq!(p.tile, QuantTile::Bm16);
        assert_eq!(QuantTile::Stream(StreamTile::T64).int8_smem_bytes(Vendor::Cuda), 75_776);
        // v2: FP8's shared memory (one CTA per SM), one entry per scheme.
        assert_eq!((QuantTile::Wg2.bm(), QuantTile::Wg2.label()), (128, "wg2"));
        assert_eq!(QuantTile::Wg2.int8_smem_bytes(Vendor::Cuda), 202_832);
        for scheme in Int8Scheme::ALL {
            assert!(registry::kernel(&format!("int8_gemm_wgmma2_{}", scheme.tag())).is_some(), "{scheme:?}");
        }
    }

    /// The repacked word of lane (g, t) holds the B fragments of two m16n8k16 MMAs: nibbles
    /// (0, 4) = k (2t, 2t+1), (1, 5) = (2t+8, 2t+9), (2, 6) = (16+2t, 17+2t), (3, 7) = (24+2t, 25+2t)
    /// of column g; and the repack is a bijection of the nibbles.
    #[test]
    fn awq_repack_layout() {
        let (k, n) = (64usize, 24usize);
        // Every nibble of the source distinct modulo 16 in a pattern we can recompute.
        let val = |kk: usize, nn: usize| ((kk * 7 + nn * 3 + kk / 16) % 16) as u32;
        let mut qw = vec![0i32; k * n / 8];
        for kk in 0..k {
            for nn in 0..n {
                let w = &mut qw[kk * (n / 8) + nn / 8];
                *w = ((*w as u32) | (val(kk, nn) << (4 * AWQ_NIBBLE[nn % 8]))) as i32;
            }
        }
        let r = awq_repack(&qw, k, n).unwrap();
        let nib = |w: i32, p: usize| (w as u32 >> (4 * p)) & 0xF;
        for n8 in 0..n / 8 {
            for kb in 0..k / 32 {
                for ln in 0..32 {
                    let (g, t) = (ln / 4, ln % 4);
                    let w = r[(n8 * (k / 32) + kb) * 32 + ln];
                    let col = n8 * 8 + g;
                    let kbase = kb * 32;
                    for (p, kk) in [
                        (0, 2 * t),
                        (4, 2 * t + 1),
                        (1, 2 * t + 8),
                        (5, 2 * t + 9),
                        (2, 16 + 2 * t),
                        (6, 17 + 2 * t),
                        (3, 24 + 2 * t),
                        (7, 25 + 2 * t),
                    ] {
                        assert_eq!(
                            nib(w, p),
                            val(kbase + kk, col),
                            "n8 {n8} kb {kb} lane {ln} nibble {p}"
                        );
                    }
                }
            }
        }
        // awq_repacked_pos visits every nibble once.
        let mut seen = vec![false; k * n];
        for kk in 0..k {
            for nn in 0..n {
                let (w, sh) = awq_repacked_pos(nn, kk, k);
                let i = w * 8 + sh as usize / 4;
                assert!(!seen[i]);
                seen[i] = true;
            }
        }
        assert!(awq_repack(&qw, 48, n).is_err());
        assert_eq!(
            awq_repack_experts(&[qw.clone(), qw].concat(), 2, k, n)
                .unwrap()
                .len(),
            2 * k * n / 8
        );
    }
}
