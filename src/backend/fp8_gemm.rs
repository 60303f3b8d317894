//! FP8 block-scaled GEMM and fused MoE on any [`GpuStream`] (kernels/fp8_gemm.cuh,
//! kernels/fused_moe.cuh).
//!
//! Dense: `out[M, N] (bf16) = Σ_kb s_a[m, kb]·s_b[n/128, kb]·(a[m, kb-block] · b[n, kb-block])` with
//! `a` e4m3 [M, K] and its per-token-group scales [M, ⌈K/128⌉] (from [`act_quant`]), `b` an e4m3
//! Linear weight [N, K] with `weight_scale_inv` [⌈N/128⌉, ⌈K/128⌉]. Any M ≥ 1; N, K need not be
//! multiples of 128 but K must be a multiple of 16 (16-byte rows). The tile (BM ∈ {16, 64, 128},
//! BN = 128, or the weight-streaming kernel of [`super::stream_gemm`] for M ≤ 64) and the split-K
//! factor are chosen from the shape by [`plan_dense`]; small M splits K so the weights stream from
//! every SM at once.
//!
//! Split-K adds partial tiles into an f32 workspace that the kernel leaves zeroed; keep one
//! [`Fp8Workspace`] per stream and pass it to [`fp8_gemm_ws`] (no allocation and no memset per
//! call). [`fp8_gemm`] is the convenience form that allocates (and zeroes) one per call.
//!
//! Fused MoE ([`fused_moe`]): `out[t] = beta·out[t] + Σ_k w[t,k]·E_{id[t,k]}(x[t])`,
//! `E(x) = W_down(silu(W_gate x) ⊙ W_up x)` with FP8 block-scaled expert weights, in six launches:
//! tile-aligned sort by expert → per-token-group quant of x → grouped GEMM gate_up (rows gathered
//! from the quantized x, no copy) → SiLU·mul + quant → grouped GEMM down → weighted combine. Experts
//! without tokens get no tile. Ids outside `[0, E)` (experts of other ranks) are skipped, so an
//! expert-parallel rank passes local ids and `-1` (or any id ≥ E) for the rest.
#![allow(clippy::too_many_arguments, clippy::manual_is_multiple_of, clippy::manual_checked_ops)]

use super::memory::DeviceTensor;
use super::moe_driver::{gather_sorted, run_experts, slot, stacked_dims, ExpertGemms, MoePlan, Operand, SortedRows};
use super::registry;
use super::stream::GpuStream;
use super::gemm_wgs::{self, launch_wgs, wgs_enabled, WgsFormat, WgsTile};
use super::stream_gemm::StreamTile;
use super::types::*;
use crate::error::{Error, Result};
use std::ffi::c_void;

/// Streaming multiprocessors assumed when sizing split-K (H200: 132).
pub const DEFAULT_SMS: usize = 132;

/// Dynamic shared memory of the v2 entries (`Wg2Smem::BYTES`, FP8 and INT8): 5 stages of A + B
/// boxes, 2 × 64 staged output rows of 272 bytes, 5 × 128 scales, the 128-row gather table, 10
/// mbarriers, 1 KB to align the base.
pub(super) const WG2_SMEM: u32 = 5 * 32768 + 2 * 64 * 272 + 5 * 512 + 512 + 80 + 1024;

pub(super) fn bad(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// `n` as the kernels' 32-bit size argument `what`.
pub(super) fn u32_of(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| bad(format!("{what} = {n} does not fit the kernels' 32-bit sizes")))
}

/// (rows, columns) of `t` as a matrix of its last dimension.
pub(super) fn rows_cols(t: &DeviceTensor) -> (usize, usize) {
    let cols = *t.shape().last().unwrap_or(&1);
    (if cols == 0 { 0 } else { t.numel() / cols }, cols)
}

fn is_fp8(d: DType) -> bool {
    matches!(d, DType::E4m3fn | DType::E4m3fnuz)
}

/// M-tile rows of the GEMM kernel (BN is always 128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fp8Tile {
    Bm16,
    Bm64,
    Bm128,
    /// BM 128 through the sm_90a wgmma entry (`fp8_gemm_wgmma_*`); on other code variants that
    /// entry runs the mma.sync BM-128 kernel.
    Wg128,
    /// The small-M weight-streaming kernel (`stream_gemm_e4m3fn_t*`, [`super::stream_gemm`]).
    Stream(StreamTile),
    /// BM 128 through the sm_90a v2 entry (`fp8_gemm_wgmma2_e4m3fn`: persistent, TMA-fed,
    /// warp-specialized; e4m3fn, no split-K). Launched only where [`wgmma2_available`].
    Wg2,
    /// [`Fp8Tile::Wg2`] in clusters of two CTAs that share (multicast) the weight tile of two M
    /// tiles (`fp8_gemm_wgmma2_pair_e4m3fn`); a launch with a single M tile runs as `Wg2`. Not a
    /// default: measured 3–8% slower than `Wg2` at M = 4096 (L2 traffic is not v2's limit).
    Wg2Pair,
    /// The small-M sm_90a entry (`fp8_gemm_wgs_e4m3fn_n*`, [`super::gemm_wgs`]): wgmma with the
    /// weights as the 64-row operand and the M tile's tokens as N, stream-K over the SMs (the
    /// plan's splits are ignored). e4m3fn; launched only where [`super::gemm_wgs::wgs_available`].
    Wgs(WgsTile),
}

impl Fp8Tile {
    pub const ALL: [Fp8Tile; 11] = [
        Fp8Tile::Bm16,
        Fp8Tile::Bm64,
        Fp8Tile::Bm128,
        Fp8Tile::Wg128,
        Fp8Tile::Wg2,
        Fp8Tile::Wg2Pair,
        Fp8Tile::Stream(StreamTile::T8),
        Fp8Tile::Stream(StreamTile::T64),
        Fp8Tile::Wgs(WgsTile::N16),
        Fp8Tile::Wgs(WgsTile::N32),
        Fp8Tile::Wgs(WgsTile::N64),
    ];
    /// The v2 entries (TMA + warp-specialized wgmma, sm_90a, no split-K).
    pub fn is_wgmma2(self) -> bool {
        matches!(self, Fp8Tile::Wg2 | Fp8Tile::Wg2Pair)
    }
    /// Tiles whose grouped launches read pre-sorted rows by TMA (the MoE gathers them first).
    pub fn reads_sorted_rows(self) -> bool {
        self.is_wgmma2() || matches!(self, Fp8Tile::Wgs(_))
    }
    pub fn bm(self) -> usize {
        match self {
            Fp8Tile::Bm16 => 16,
            Fp8Tile::Bm64 => 64,
            Fp8Tile::Bm128 | Fp8Tile::Wg128 | Fp8Tile::Wg2 | Fp8Tile::Wg2Pair => 128,
            Fp8Tile::Stream(t) => t.bm(),
            Fp8Tile::Wgs(t) => t.nt(),
        }
    }
    /// The registry kernel of this tile for float8 type `f8`.
    pub fn kernel_name(self, f8: DType) -> String {
        match self {
            Fp8Tile::Wg128 => format!("fp8_gemm_wgmma_{f8}"),
            Fp8Tile::Stream(t) => format!("stream_gemm_{f8}_t{}", t.bm()),
            Fp8Tile::Wg2 => format!("fp8_gemm_wgmma2_{f8}"),
            Fp8Tile::Wg2Pair => format!("fp8_gemm_wgmma2_pair_{f8}"),
            Fp8Tile::Wgs(t) => format!("fp8_gemm_wgs_{f8}_n{}", t.nt()),
            t => format!("fp8_gemm_{f8}_bm{}", t.bm()),
        }
    }
    /// Short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Fp8Tile::Bm16 => "bm16",
            Fp8Tile::Bm64 => "bm64",
            Fp8Tile::Bm128 => "bm128",
            Fp8Tile::Wg128 => "wg128",
            Fp8Tile::Stream(t) => t.label(),
            Fp8Tile::Wg2 => "wg2",
            Fp8Tile::Wg2Pair => "wg2p",
            Fp8Tile::Wgs(t) => t.label(),
        }
    }
    /// CTAs of this tile resident per SM on a Hopper (registers / shared memory; ptxas -v).
    pub fn occupancy(self) -> usize {
        match self {
            Fp8Tile::Bm16 => 2,
            Fp8Tile::Stream(t) => t.occupancy(),
            _ => 1,
        }
    }
    /// The tile for `rows` rows per M tile: the streaming kernel up to its limit, else BM 128.
    pub fn for_rows(rows: usize) -> Fp8Tile {
        StreamTile::for_rows(rows).map(Fp8Tile::Stream).unwrap_or_else(|| Fp8Tile::tiled_for_rows(rows))
    }
    /// The tiled (mma.sync) kernels' tile for `rows`: BM 16 up to 16 rows, 64 up to 64, else 128
    /// (what the plans took before the streaming kernel; benches compare with it).
    pub fn tiled_for_rows(rows: usize) -> Fp8Tile {
        match rows {
            0..=16 => Fp8Tile::Bm16,
            17..=64 => Fp8Tile::Bm64,
            _ => Fp8Tile::Bm128,
        }
    }
    /// Dynamic shared memory of one CTA on `vendor` (mirrors `Fp8GemmSmem` in the kernel).
    pub fn smem_bytes(self, vendor: Vendor) -> u32 {
        if let Fp8Tile::Stream(t) = self {
            return t.smem_bytes(vendor);
        }
        if self.is_wgmma2() {
            return WG2_SMEM;
        }
        if let Fp8Tile::Wgs(t) = self {
            return t.smem_bytes();
        }
        if self == Fp8Tile::Wg128 && vendor == Vendor::Cuda {
            // FP8G_WG_SMEM: 4 stages + 1 KB to align the stages to 1024 bytes.
            return (4 * 256 * 128 + 1024) as u32;
        }
        let stage = (self.bm() + 128) * 128;
        let stages = match (vendor, self) {
            (Vendor::Hip, _) => 1,
            (Vendor::Cuda, Fp8Tile::Bm128 | Fp8Tile::Wg128) => 3,
            (Vendor::Cuda, _) => 4,
        };
        (stage * stages) as u32
    }
}

/// Tile and split-K factor of one GEMM launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fp8Plan {
    pub tile: Fp8Tile,
    pub splits: usize,
}

/// Split-K factor that fills one wave (CTAs resident at once: `occupancy` per SM) without a
/// ragged tail, keeping at least two 128-wide K tiles per split.
pub(crate) fn splits_for(ctas: usize, k_tiles: usize, sms: usize, occupancy: usize) -> usize {
    let slots = sms * occupancy;
    if ctas == 0 || ctas >= slots {
        return 1;
    }
    (slots / ctas).min((k_tiles / 2).max(1)).max(1)
}

/// Whether the default plans use the sm_90a wgmma kernel on this stream: it loads the sm_90a
/// cubin ([`registry::loads_cubin`]), unless `DSV3_FP8_WGMMA=0` (on by default since its GPU tests
/// passed on the H200: 1.2–2.6× the mma.sync BM-128 kernel).
pub fn wgmma_enabled(s: &dyn GpuStream) -> bool {
    std::env::var("DSV3_FP8_WGMMA").map(|v| v != "0").unwrap_or(true) && registry::loads_cubin(s, "sm_90a")
}

/// Whether the v2 entry can run on this stream: it loads the sm_90a cubin and this build compiled
/// one ([`registry::runs_on`]; elsewhere — other archs, PTX, NVRTC, HIP — the entry only traps).
pub fn wgmma2_available(s: &dyn GpuStream) -> bool {
    registry::kernel(&Fp8Tile::Wg2.kernel_name(DType::E4m3fn)).is_some_and(|k| registry::runs_on(s, k))
}

/// Whether the default plans use the v2 entry: [`wgmma2_available`], unless `DSV3_FP8_WGMMA2=0`
/// (on by default since its GPU tests passed on the H200; measured 1.3–1.7× wgmma v1 at M = 4096
/// and faster at M = 128 too, docs/perf/fp8_gemm.md).
pub fn wgmma2_enabled(s: &dyn GpuStream) -> bool {
    std::env::var("DSV3_FP8_WGMMA2").map(|v| v != "0").unwrap_or(true) && wgmma2_available(s)
}

/// `plan` with the BM-128 tile moved to the v2 entry where [`wgmma2_enabled`], without split-K
/// (v2 has none: unsplit it measured faster than v1 with the plan's splits on every shape at
/// M = 128, 13–69 µs vs 19–84 µs), else to wgmma v1 where [`wgmma_enabled`].
pub fn with_wgmma(s: &dyn GpuStream, plan: Fp8Plan) -> Fp8Plan {
    if plan.tile != Fp8Tile::Bm128 {
        plan
    } else if wgmma2_enabled(s) {
        // Unpaired: the pair entry measured 3–8% slower at M = 4096 (docs/perf/fp8_gemm.md).
        Fp8Plan { tile: Fp8Tile::Wg2, splits: 1 }
    } else if wgmma_enabled(s) {
        Fp8Plan { tile: Fp8Tile::Wg128, ..plan }
    } else {
        plan
    }
}

/// e4m3fnuz (any vendor) and every HIP launch run the generic path, built for BM 64 only.
fn generic_only(s: &dyn GpuStream, f8: DType) -> bool {
    f8 == DType::E4m3fnuz || s.vendor() == Vendor::Hip
}

/// `plan` adapted to the stream and float8 type: BM 64 where only the generic kernel exists, the
/// wgmma kernel where [`wgmma_enabled`].
pub fn plan_for_stream(s: &dyn GpuStream, f8: DType, plan: Fp8Plan) -> Fp8Plan {
    if generic_only(s, f8) {
        Fp8Plan { tile: Fp8Tile::Bm64, ..plan }
    } else {
        with_wgmma(s, plan)
    }
}

/// The plan of a dense FP8 GEMM of `m` rows on this stream: the small-M wgmma entry where
/// [`gemm_wgs::dense_tile`] takes it and [`wgs_enabled`] (e4m3fn), else [`plan_dense`] adapted by
/// [`plan_for_stream`].
pub fn plan_dense_for_stream(s: &dyn GpuStream, f8: DType, m: usize, n: usize, k: usize) -> Fp8Plan {
    match gemm_wgs::dense_tile(WgsFormat::Fp8, m, n, k, s.sm_count().unwrap_or(DEFAULT_SMS)) {
        Some(t) if f8 == DType::E4m3fn && wgs_enabled(s) => Fp8Plan { tile: Fp8Tile::Wgs(t), splits: 1 },
        _ => plan_for_stream(s, f8, plan_dense(m, n, k, DEFAULT_SMS)),
    }
}

/// The tile and split for a dense `[m, k] · [n, k]ᵀ` on a GPU of `sms` SMs: the streaming kernel
/// for M ≤ 64 ([`super::stream_gemm::STREAM_MAX_ROWS`]), BM 128 above.
pub fn plan_dense(m: usize, n: usize, k: usize, sms: usize) -> Fp8Plan {
    plan_dense_tile(Fp8Tile::for_rows(m), m, n, k, sms)
}

/// [`plan_dense`] with the tile given: split-K to fill one wave for M ≤ 256.
pub fn plan_dense_tile(tile: Fp8Tile, m: usize, n: usize, k: usize, sms: usize) -> Fp8Plan {
    let ctas = m.div_ceil(tile.bm()) * n.div_ceil(128);
    let splits = if m <= 256 { splits_for(ctas, k.div_ceil(128), sms, tile.occupancy()) } else { 1 };
    Fp8Plan { tile, splits }
}

/// Split-K workspace: f32 partial sums and per-tile arrival counters, kept zero by the kernel
/// between launches (zeroed here only when (re)allocated). One per stream; not for concurrent
/// launches on several streams.
#[derive(Default)]
pub struct Fp8Workspace {
    ws: Option<DeviceTensor>,
    counters: Option<DeviceTensor>,
    /// The small-M kernels' per-CTA partial-tile slots (kernels/gemm_wgs.cuh `wgs_slot`): left
    /// holding partial sums, so never shared with `ws`, which the other kernels need zero.
    slots: Option<DeviceTensor>,
    /// Buffers replaced by bigger ones: kept, because a captured graph may still address them.
    retired: Vec<DeviceTensor>,
}

impl Fp8Workspace {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn ensure(&mut self, s: &dyn GpuStream, ws_elems: usize, counter_elems: usize) -> Result<(u64, u64)> {
        if self.ws.as_ref().map(|t| t.numel() < ws_elems).unwrap_or(true) {
            let t = DeviceTensor::empty(s, DType::F32, &[ws_elems.max(1)])?;
            unsafe { s.memset_u8(t.raw(), 0, t.bytes())? };
            self.retired.extend(self.ws.replace(t));
        }
        if self.counters.as_ref().map(|t| t.numel() < counter_elems).unwrap_or(true) {
            let t = DeviceTensor::empty(s, DType::U32, &[counter_elems.max(1)])?;
            unsafe { s.memset_u8(t.raw(), 0, t.bytes())? };
            self.retired.extend(self.counters.replace(t));
        }
        Ok((self.ws.as_ref().unwrap().raw(), self.counters.as_ref().unwrap().raw()))
    }

    /// The small-M kernels' slots (any contents) and the counters (zero), at least these sizes.
    pub(crate) fn ensure_slots(&mut self, s: &dyn GpuStream, slot_elems: usize, counter_elems: usize) -> Result<(u64, u64)> {
        if self.slots.as_ref().map(|t| t.numel() < slot_elems).unwrap_or(true) {
            let t = DeviceTensor::empty(s, DType::F32, &[slot_elems.max(1)])?;
            self.retired.extend(self.slots.replace(t));
        }
        let (_, counters) = self.ensure(s, 1, counter_elems)?;
        Ok((self.slots.as_ref().unwrap().raw(), counters))
    }
}

/// A raw kernel argument: a pointer or scalar widened to u64 (little-endian, so a 4-byte scalar
/// sits in the low half), or a TMA descriptor.
pub(super) enum RawArg {
    Word(u64),
    Map(TensorMap),
}

/// Launch with raw arguments, checked against the registry's argument list (count, and
/// descriptors exactly where the kernel takes them).
pub(super) fn launch_args(s: &dyn GpuStream, name: &str, cfg: LaunchCfg, args: &mut [RawArg]) -> Result<()> {
    let k = registry::kernel(name).ok_or_else(|| bad(format!("no kernel `{name}` in the registry")))?;
    if k.args.len() != args.len() {
        return Err(bad(format!("{name}: {} arguments given, {} expected", args.len(), k.args.len())));
    }
    let mut params = Vec::with_capacity(args.len());
    for (a, info) in args.iter_mut().zip(k.args) {
        params.push(match (a, info.ty) {
            (RawArg::Map(m), ArgType::TensorMap) => m as *mut TensorMap as *mut c_void,
            (RawArg::Word(v), ty) if ty != ArgType::TensorMap => v as *mut u64 as *mut c_void,
            _ => return Err(bad(format!("{name}: argument `{}` expects {:?}", info.name, info.ty))),
        });
    }
    unsafe { s.launch(k, cfg, &mut params) }
}

/// [`launch_args`] with every argument a word.
pub(crate) fn launch_raw(s: &dyn GpuStream, name: &str, cfg: LaunchCfg, vals: &mut [u64]) -> Result<()> {
    let mut args: Vec<RawArg> = vals.iter().map(|&v| RawArg::Word(v)).collect();
    launch_args(s, name, cfg, &mut args)
}

/// Rows of a grouped GEMM: tile `t < *num_tiles` belongs to expert `tile_expert[t]`; row `r` reads
/// a-row `row_ids[r] / a_row_div` (−1 = padding) or row `r` itself when `row_ids` is `None`.
pub struct GroupedRows<'a> {
    pub row_ids: Option<&'a DeviceTensor>,
    pub a_row_div: usize,
    pub tile_expert: &'a DeviceTensor,
    pub num_tiles: &'a DeviceTensor,
    /// Upper bound of `*num_tiles` (the grid's y).
    pub max_tiles: usize,
}

impl GroupedRows<'_> {
    /// (row_ids or 0, tile_expert, num_tiles) as the kernels take them.
    pub(super) fn raw(&self) -> [u64; 3] {
        [self.row_ids.map(|t| t.raw()).unwrap_or(0), self.tile_expert.raw(), self.num_tiles.raw()]
    }
}

/// The operands of one block-scaled GEMM launch (FP8 or INT8; raw addresses, 0 = null).
pub(super) struct Operands {
    pub(super) out: u64,
    pub(super) a: u64,
    pub(super) a_scales: u64,
    pub(super) b: u64,
    pub(super) b_scale: u64,
    pub(super) row_ids: u64,
    pub(super) tile_expert: u64,
    pub(super) num_tiles: u64,
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) a_row_div: usize,
    pub(super) m_tiles: usize,
    pub(super) ws_rows: usize,
    /// Rows of `a` when it is read without a gather (v2's TMA map), and experts of `b`.
    pub(super) a_rows: usize,
    pub(super) experts: usize,
}

impl Operands {
    /// A dense GEMM `out` [m, n] = a [m, k] · b [n, k]ᵀ with their scales, in M tiles of `bm` rows.
    pub(super) fn dense(out: &DeviceTensor, a: &DeviceTensor, a_scales: &DeviceTensor, b: &DeviceTensor, b_scale: &DeviceTensor, (m, n, k): (usize, usize, usize), bm: usize) -> Operands {
        Operands {
            out: out.raw(),
            a: a.raw(),
            a_scales: a_scales.raw(),
            b: b.raw(),
            b_scale: b_scale.raw(),
            row_ids: 0,
            tile_expert: 0,
            num_tiles: 0,
            m,
            n,
            k,
            a_row_div: 1,
            m_tiles: m.div_ceil(bm),
            ws_rows: m,
            a_rows: m,
            experts: 1,
        }
    }

    /// A grouped GEMM of `a` (with its scales) against the stacked weights `w` [E, n, k] (with
    /// theirs) over `rows`, into `out` of `max_rows` rows.
    pub(super) fn grouped(out: &DeviceTensor, a: &DeviceTensor, a_scales: &DeviceTensor, w: &DeviceTensor, w_scale: &DeviceTensor, rows: &GroupedRows, max_rows: usize) -> Operands {
        let sh = w.shape();
        let [row_ids, tile_expert, num_tiles] = rows.raw();
        Operands {
            out: out.raw(),
            a: a.raw(),
            a_scales: a_scales.raw(),
            b: w.raw(),
            b_scale: w_scale.raw(),
            row_ids,
            tile_expert,
            num_tiles,
            m: max_rows,
            n: sh[1],
            k: sh[2],
            a_row_div: rows.a_row_div,
            m_tiles: rows.max_tiles,
            ws_rows: max_rows,
            a_rows: rows_cols(a).0,
            experts: sh[0],
        }
    }

    /// One of a fused MoE's grouped GEMMs: `out` [rows, n] = a · w[e]ᵀ (`w`: codes [E, n, k] and
    /// scales) over the sorted rows; row r reads activation row `sorted[r] / topk` when `gather`,
    /// row r otherwise (one row per sorted row).
    pub(super) fn sorted(out: u64, a: Operand, w: (&DeviceTensor, &DeviceTensor), rows: &SortedRows, gather: bool) -> Operands {
        let sh = w.0.shape();
        let m = rows.rows();
        let (row_ids, a_row_div) = if gather { (rows.sorted, rows.topk) } else { (0, 1) };
        Operands {
            out,
            a: a.data,
            a_scales: a.scales,
            b: w.0.raw(),
            b_scale: w.1.raw(),
            row_ids,
            tile_expert: rows.tile_expert,
            num_tiles: rows.num_tiles,
            m,
            n: sh[1],
            k: sh[2],
            a_row_div,
            m_tiles: rows.max_tiles,
            ws_rows: m,
            a_rows: m,
            experts: sh[0],
        }
    }
}

fn launch_gemm(s: &dyn GpuStream, ws: &mut Fp8Workspace, f8: DType, plan: Fp8Plan, o: Operands) -> Result<()> {
    if o.k % 16 != 0 {
        return Err(bad(format!("fp8_gemm: K = {} must be a multiple of 16 (16-byte rows)", o.k)));
    }
    let n_tiles = o.n.div_ceil(128);
    if o.m_tiles == 0 || n_tiles == 0 || o.k == 0 {
        return Ok(());
    }
    if plan.tile.is_wgmma2() {
        if f8 != DType::E4m3fn {
            return Err(bad(format!("fp8_gemm: the wgmma2 tiles take e4m3fn ({f8} given)")));
        }
        let pair = (plan.tile == Fp8Tile::Wg2Pair).then(|| Fp8Tile::Wg2Pair.kernel_name(f8));
        return launch_wg2(s, &Fp8Tile::Wg2.kernel_name(f8), pair.as_deref(), plan.splits, &o);
    }
    if let Fp8Tile::Wgs(t) = plan.tile {
        if f8 != DType::E4m3fn {
            return Err(bad(format!("fp8_gemm: the wgs tiles take e4m3fn ({f8} given)")));
        }
        return launch_wgs(s, ws, &plan.tile.kernel_name(f8), t, &o);
    }
    let k_tiles = o.k.div_ceil(128);
    let splits = plan.splits.clamp(1, k_tiles);
    // Every split must own at least one K tile: ceil-divided ranges may leave the last ones empty.
    let per = k_tiles.div_ceil(splits);
    let splits = k_tiles.div_ceil(per);
    let (wsp, cnt) = if splits > 1 { ws.ensure(s, o.ws_rows * o.n, o.m_tiles * n_tiles)? } else { (0, 0) };
    if generic_only(s, f8) && plan.tile != Fp8Tile::Bm64 {
        return Err(bad(format!("fp8_gemm: {f8} on {} runs the generic kernel, built for BM 64 only (plan_for_stream picks it)", s.vendor())));
    }
    let name = plan.tile.kernel_name(f8);
    let cfg = LaunchCfg::new(
        (u32_of(n_tiles, "n tiles")?, u32_of(o.m_tiles, "m tiles")?, u32_of(splits, "splits")?),
        (256, 1, 1),
        plan.tile.smem_bytes(s.vendor()),
    );
    if o.m_tiles > 65535 {
        return Err(bad(format!("fp8_gemm: {} M tiles exceed the grid's 65535", o.m_tiles)));
    }
    let mut vals = [
        o.out,
        o.a,
        o.a_scales,
        o.b,
        o.b_scale,
        wsp,
        cnt,
        o.row_ids,
        o.tile_expert,
        o.num_tiles,
        u32_of(o.m, "m")? as u64,
        u32_of(o.n, "n")? as u64,
        u32_of(o.k, "k")? as u64,
        u32_of(o.a_row_div.max(1), "a_row_div")? as u64,
        splits as u64,
    ];
    launch_raw(s, &name, cfg, &mut vals)
}

/// How many 2-CTA clusters of the v2 pair entry `name` run at once on this stream's device (the
/// occupancy API's answer; `DSV3_FP8_PAIR_CLUSTERS=N` replaces it, for tuning): the persistent
/// grid.
pub fn pair_clusters(s: &dyn GpuStream, name: &str) -> Result<usize> {
    let k = registry::kernel(name).ok_or_else(|| bad(format!("no kernel `{name}` in the registry")))?;
    let cfg = LaunchCfg::new((2, 1, 1), (384, 1, 1), WG2_SMEM).with_cluster(2);
    let given = std::env::var("DSV3_FP8_PAIR_CLUSTERS").ok().and_then(|v| v.parse::<usize>().ok());
    let fit = match given {
        Some(n) => n,
        None => s.max_active_clusters(k, &cfg)?,
    };
    match fit {
        0 => Err(bad(format!("{name}: no cluster of 2 CTAs fits on this device"))),
        n => Ok(n),
    }
}

/// A v2 entry `name` (FP8 or INT8: 1-byte operands, kernels/fp8_gemm_wgmma2.cuh's pipeline), or its
/// pair entry `pair` (clusters of two CTAs sharing the weight tile) where there is one and the
/// launch has at least two M tiles (with one, its second CTA would only stream zeros): TMA
/// descriptors of b ([E, N, K], boxes of 128 bytes × 128 rows, or × 64 in pairs: each CTA loads
/// half of the shared tile) and, unless rows are gathered, of a ([rows, K]); one persistent CTA per
/// SM (at most one per tile), or as many clusters as fit at once (at most one per pair of M
/// tiles). No split-K; refused with [`Error::KernelUnavailable`] where the stream does not load
/// the entry's sm_90a cubin.
pub(super) fn launch_wg2(s: &dyn GpuStream, name: &str, pair: Option<&str>, splits: usize, o: &Operands) -> Result<()> {
    let (name, cluster) = match pair {
        Some(p) if o.m_tiles >= 2 => (p, 2u32),
        _ => (name, 1u32),
    };
    let kernel = registry::kernel(name).ok_or_else(|| bad(format!("no kernel `{name}` in the registry")))?;
    if splits != 1 {
        return Err(bad(format!("{name}: the wgmma2 tile has no split-K ({splits} splits given)")));
    }
    if !registry::runs_on(s, kernel) {
        let stream = format!("{} {}, {}", s.vendor(), s.arch(), s.variant());
        return Err(Error::KernelUnavailable { kernel: kernel.name, targets: kernel.cuda_archs.join(" / "), stream });
    }
    if o.m_tiles == 0 || o.n == 0 || o.k == 0 {
        return Ok(());
    }
    let (k, n) = (o.k as u64, o.n as u64);
    let map_b = s.tensor_map(&TmaTiled { addr: o.b, dims: vec![k, n, o.experts as u64], strides: vec![k, n * k], box_dims: vec![128, 128 / cluster, 1], swizzle: TmaSwizzle::B128 })?;
    let map_a = if o.row_ids == 0 {
        s.tensor_map(&TmaTiled { addr: o.a, dims: vec![k, o.a_rows as u64], strides: vec![k], box_dims: vec![128, 128], swizzle: TmaSwizzle::B128 })?
    } else {
        TensorMap::UNUSED
    };
    let units = o.m_tiles.div_ceil(cluster as usize) * o.n.div_ceil(128);
    let resident = if cluster == 1 { s.sm_count().unwrap_or(DEFAULT_SMS) } else { pair_clusters(s, name)? };
    let grid = units.min(resident) * cluster as usize;
    let cfg = LaunchCfg::new((u32_of(grid, "CTAs")?, 1, 1), (384, 1, 1), WG2_SMEM).with_cluster(cluster);
    let mut args = [
        RawArg::Word(o.out),
        RawArg::Map(map_a),
        RawArg::Map(map_b),
        RawArg::Word(o.a),
        RawArg::Word(o.a_scales),
        RawArg::Word(o.b_scale),
        RawArg::Word(o.row_ids),
        RawArg::Word(o.tile_expert),
        RawArg::Word(o.num_tiles),
        RawArg::Word(u32_of(o.m, "m")? as u64),
        RawArg::Word(u32_of(o.n, "n")? as u64),
        RawArg::Word(u32_of(o.k, "k")? as u64),
        RawArg::Word(u32_of(o.a_row_div.max(1), "a_row_div")? as u64),
    ];
    launch_args(s, name, cfg, &mut args)
}

fn check_dense(out: &DeviceTensor, a: &DeviceTensor, a_scales: &DeviceTensor, b: &DeviceTensor, b_scale_inv: &DeviceTensor) -> Result<(usize, usize, usize)> {
    let (m, k) = rows_cols(a);
    let (n, kb) = rows_cols(b);
    if !is_fp8(a.dtype()) || b.dtype() != a.dtype() {
        return Err(bad(format!("fp8_gemm: a {} and b {} must be the same float8 type", a.dtype(), b.dtype())));
    }
    out.check_dtype(DType::Bf16)?;
    a_scales.check_dtype(DType::F32)?;
    b_scale_inv.check_dtype(DType::F32)?;
    if k != kb || out.numel() != m * n {
        return Err(bad(format!("fp8_gemm: a {:?} b {:?} out {:?}", a.shape(), b.shape(), out.shape())));
    }
    if a_scales.numel() != m * k.div_ceil(128) || b_scale_inv.numel() != n.div_ceil(128) * k.div_ceil(128) {
        return Err(bad(format!(
            "fp8_gemm: scales a {:?} (want [{m}, {}]) b {:?} (want [{}, {}])",
            a_scales.shape(),
            k.div_ceil(128),
            b_scale_inv.shape(),
            n.div_ceil(128),
            k.div_ceil(128)
        )));
    }
    Ok((m, n, k))
}

/// Dense FP8 GEMM with an explicit plan (tests run every tile and split).
pub fn fp8_gemm_with(s: &dyn GpuStream, ws: &mut Fp8Workspace, plan: Fp8Plan, out: &DeviceTensor, a: &DeviceTensor, a_scales: &DeviceTensor, b: &DeviceTensor, b_scale_inv: &DeviceTensor) -> Result<()> {
    let mnk = check_dense(out, a, a_scales, b, b_scale_inv)?;
    launch_gemm(s, ws, a.dtype(), plan, Operands::dense(out, a, a_scales, b, b_scale_inv, mnk, plan.tile.bm()))
}

/// Dense FP8 GEMM, plan chosen by shape, split-K workspace from `ws`.
pub fn fp8_gemm_ws(s: &dyn GpuStream, ws: &mut Fp8Workspace, out: &DeviceTensor, a: &DeviceTensor, a_scales: &DeviceTensor, b: &DeviceTensor, b_scale_inv: &DeviceTensor) -> Result<()> {
    let (m, n, k) = check_dense(out, a, a_scales, b, b_scale_inv)?;
    fp8_gemm_with(s, ws, plan_dense_for_stream(s, a.dtype(), m, n, k), out, a, a_scales, b, b_scale_inv)
}

/// Dense FP8 GEMM `out_bf16 [M, N] = a_fp8 [M, K] (scales [M, ⌈K/128⌉]) · b_fp8 [N, K]ᵀ (block
/// scales [⌈N/128⌉, ⌈K/128⌉])`. Allocates a zeroed split-K workspace per call when split-K is
/// chosen; hot paths should hold an [`Fp8Workspace`] and call [`fp8_gemm_ws`].
pub fn fp8_gemm(s: &dyn GpuStream, out: &DeviceTensor, a: &DeviceTensor, a_scales: &DeviceTensor, b: &DeviceTensor, b_scale_inv: &DeviceTensor) -> Result<()> {
    let mut ws = Fp8Workspace::new();
    fp8_gemm_ws(s, &mut ws, out, a, a_scales, b, b_scale_inv)
}

/// Per-token-group (128) FP8 quantization of bf16 rows: q [rows, cols], scales [rows, ⌈cols/128⌉]
/// (the activation operand of [`fp8_gemm`]).
pub fn act_quant(s: &dyn GpuStream, q: &DeviceTensor, scales: &DeviceTensor, x: &DeviceTensor) -> Result<()> {
    let (rows, cols) = rows_cols(x);
    x.check_dtype(DType::Bf16)?;
    if !is_fp8(q.dtype()) || q.numel() != rows * cols || scales.numel() != rows * cols.div_ceil(128) {
        return Err(bad(format!("act_quant: q {:?} {} scales {:?} for x {:?}", q.shape(), q.dtype(), scales.shape(), x.shape())));
    }
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let mut vals = [q.raw(), scales.raw(), x.raw(), rows as u64, u32_of(cols, "cols")? as u64, cols as u64, 0, 1, 1e-10f32.to_bits() as u64];
    launch_raw(s, &format!("act_quant_group128_{}", q.dtype()), LaunchCfg::quant_groups128(rows, cols)?, &mut vals)
}

/// Fused SiLU·mul + per-token-group quant: gate_up bf16 [rows, 2I] → q [rows, I], scales [rows, ⌈I/128⌉].
pub fn silu_mul_quant(s: &dyn GpuStream, q: &DeviceTensor, scales: &DeviceTensor, gate_up: &DeviceTensor) -> Result<()> {
    let (rows, c2) = rows_cols(gate_up);
    gate_up.check_dtype(DType::Bf16)?;
    let i = c2 / 2;
    if c2 % 2 != 0 || !is_fp8(q.dtype()) || q.numel() != rows * i || scales.numel() != rows * i.div_ceil(128) {
        return Err(bad(format!("silu_mul_quant: q {:?} scales {:?} for gate_up {:?}", q.shape(), scales.shape(), gate_up.shape())));
    }
    if rows == 0 || i == 0 {
        return Ok(());
    }
    let mut vals = [q.raw(), scales.raw(), gate_up.raw(), rows as u64, u32_of(i, "cols")? as u64, c2 as u64, 0, 1, 1e-10f32.to_bits() as u64];
    launch_raw(s, &format!("silu_mul_quant_group128_{}", q.dtype()), LaunchCfg::quant_groups128(rows, i)?, &mut vals)
}

/// FP8 expert weights of one MoE layer (all local experts stacked): `w13` = per expert
/// concat(gate, up) along the output dim [E, 2I, H] with scales [E, 2I/128, ⌈H/128⌉]; `w2` [E, H, I]
/// with scales [E, ⌈H/128⌉, ⌈I/128⌉]. I must be a multiple of 128 (so gate and up blocks do not share
/// a scale block; DeepSeek-V3: 2048, or 256 per TP-8 shard).
pub struct MoeFp8Weights<'a> {
    pub w13: &'a DeviceTensor,
    pub w13_scale: &'a DeviceTensor,
    pub w2: &'a DeviceTensor,
    pub w2_scale: &'a DeviceTensor,
}

impl MoeFp8Weights<'_> {
    /// (experts, hidden, intermediate).
    pub fn dims(&self) -> Result<(usize, usize, usize)> {
        let (e, h, i) = stacked_dims("fused_moe", self.w13, self.w2)?;
        let (s13, s2) = (self.w13.shape(), self.w2.shape());
        if s2 != [e, h, i] || !is_fp8(self.w13.dtype()) || self.w2.dtype() != self.w13.dtype() {
            return Err(bad(format!("fused_moe: w13 {s13:?} {} w2 {s2:?} {}", self.w13.dtype(), self.w2.dtype())));
        }
        if i % 128 != 0 {
            return Err(bad(format!("fused_moe: intermediate {i} must be a multiple of 128")));
        }
        if self.w13_scale.numel() != e * (2 * i / 128) * h.div_ceil(128) || self.w2_scale.numel() != e * h.div_ceil(128) * i.div_ceil(128) {
            return Err(bad(format!("fused_moe: scales w13 {:?} w2 {:?}", self.w13_scale.shape(), self.w2_scale.shape())));
        }
        Ok((e, h, i))
    }

    /// `out` [rows, n] = a · w[e]ᵀ (`w`: codes [E, n, k] and scales) over the sorted rows; row r
    /// reads activation row `sorted[r] / topk` when `gather`, row r otherwise.
    fn gemm(&self, s: &dyn GpuStream, ws: &mut Fp8Workspace, plan: Fp8Plan, out: u64, a: Operand, w: (&DeviceTensor, &DeviceTensor), rows: &SortedRows, gather: bool) -> Result<()> {
        launch_gemm(s, ws, self.w13.dtype(), plan, Operands::sorted(out, a, w, rows, gather))
    }
}

/// Scratch of [`fused_moe`], grown on demand and reused across calls on one stream.
#[derive(Default)]
pub struct FusedMoeWorkspace {
    pub gemm: Fp8Workspace,
    /// Forces the grouped GEMMs' tile (benchmarks); `None`: chosen by size.
    pub force_tile: Option<Fp8Tile>,
    bufs: Vec<Option<DeviceTensor>>,
    /// Buffers replaced by bigger ones: kept, because a captured graph may still address them.
    retired: Vec<DeviceTensor>,
}

impl FusedMoeWorkspace {
    pub fn new() -> Self {
        Self::default()
    }
    /// Slot `slot`'s buffer of at least `n` elements of `dtype` (its raw address).
    pub(crate) fn buf(&mut self, s: &dyn GpuStream, slot: usize, dtype: DType, n: usize) -> Result<u64> {
        if self.bufs.len() <= slot {
            self.bufs.resize_with(slot + 1, || None);
        }
        let fits = self.bufs[slot].as_ref().map(|t| t.dtype() == dtype && t.numel() >= n).unwrap_or(false);
        if !fits {
            let fresh = DeviceTensor::empty(s, dtype, &[n.max(1)])?;
            self.retired.extend(self.bufs[slot].replace(fresh));
        }
        Ok(self.bufs[slot].as_ref().unwrap().raw())
    }
}

/// Plans of the fused MoE's two grouped GEMMs for `pairs` (token, expert) pairs over `experts`:
/// the M tile from the mean rows per active expert (the streaming kernel up to 64), the grid's
/// maximum M tiles, the gate_up and down plans.
pub fn plan_moe(pairs: usize, experts: usize, hidden: usize, inter: usize, sms: usize) -> (Fp8Tile, usize, Fp8Plan, Fp8Plan) {
    // The tiled kernels: the streaming one measured slower on the grouped GEMMs of a decode step
    // with many experts (EP-8 shard, 16 tokens: 449 vs 423 µs; the 4-layer slice's decode).
    let tile = Fp8Tile::tiled_for_rows(pairs.div_ceil(experts.min(pairs).max(1)));
    let (max_tiles, gu, dn) = plan_moe_tile(tile, pairs, experts, hidden, inter, sms);
    (tile, max_tiles, gu, dn)
}

/// [`plan_moe`] with the tile given: (max M tiles, gate_up plan, down plan).
pub fn plan_moe_tile(tile: Fp8Tile, pairs: usize, experts: usize, hidden: usize, inter: usize, sms: usize) -> (usize, Fp8Plan, Fp8Plan) {
    let active = experts.min(pairs).max(1);
    let bm = tile.bm();
    let max_tiles = pairs.div_ceil(bm) + experts.min(pairs);
    let est_tiles = pairs.div_ceil(bm).max(active).min(max_tiles);
    let gu = Fp8Plan { tile, splits: splits_for(est_tiles * (2 * inter).div_ceil(128), hidden.div_ceil(128), sms, tile.occupancy()) };
    let dn = Fp8Plan { tile, splits: splits_for(est_tiles * hidden.div_ceil(128), inter.div_ceil(128), sms, tile.occupancy()) };
    (max_tiles, gu, dn)
}

/// The small-M entry's tile for a fused MoE of `pairs` (token, expert) pairs over `experts` on this
/// stream, where it takes them (e4m3fn, [`wgs_enabled`], [`gemm_wgs::moe_tile`]); `None`:
/// [`plan_moe`]'s tiles.
pub fn moe_wgs_tile(s: &dyn GpuStream, f8: DType, pairs: usize, experts: usize) -> Option<Fp8Tile> {
    let t = gemm_wgs::moe_tile(WgsFormat::Fp8, pairs, experts)?;
    (f8 == DType::E4m3fn && wgs_enabled(s)).then_some(Fp8Tile::Wgs(t))
}

/// Routed experts of one MoE layer, FP8: `out [T, H] bf16 = beta·out + Σ_k topk_weights[t, k] ·
/// E_{topk_ids[t, k]}(x[t])`. `x` bf16 [T, H]; `topk_ids` i32 [T, topk] (ids outside [0, E) are
/// skipped); `topk_weights` f32 [T, topk]. `beta = 1` adds into `out` (the residual, or the
/// shared expert's output). The pipeline is [`super::moe_driver::run_experts`]'s.
pub fn fused_moe(s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, out: &DeviceTensor, x: &DeviceTensor, topk_ids: &DeviceTensor, topk_weights: &DeviceTensor, w: &MoeFp8Weights, beta: f32) -> Result<()> {
    run_experts(s, wsp, out, x, topk_ids, topk_weights, w, beta)
}

/// FP8 steps of the MoE pipeline: per-token-group e4m3 activations, the block-scaled grouped
/// GEMMs (BM 64 generic kernel where only that exists, wgmma where enabled).
impl ExpertGemms for MoeFp8Weights<'_> {
    type Plan = Fp8Plan;

    fn input_dtypes(&self) -> &'static [DType] {
        &[DType::Bf16]
    }

    fn dims(&self) -> Result<(usize, usize, usize)> {
        let (e, h, i) = MoeFp8Weights::dims(self)?;
        if h % 16 != 0 {
            return Err(bad(format!("fused_moe: hidden {h} must be a multiple of 16")));
        }
        Ok((e, h, i))
    }

    fn plan(&self, s: &dyn GpuStream, wsp: &FusedMoeWorkspace, pairs: usize) -> Result<MoePlan<Fp8Plan>> {
        let (e, h, inter) = MoeFp8Weights::dims(self)?;
        let force = wsp.force_tile.or_else(|| generic_only(s, self.w13.dtype()).then_some(Fp8Tile::Bm64));
        let (max_tiles, gate_up, down) = match force.or_else(|| moe_wgs_tile(s, self.w13.dtype(), pairs, e)) {
            // v2 has no split-K; the wgs tiles split by stream-K.
            Some(ft) if ft.reads_sorted_rows() => {
                let (max_tiles, gu, dn) = plan_moe_tile(ft, pairs, e, h, inter, DEFAULT_SMS);
                (max_tiles, Fp8Plan { splits: 1, ..gu }, Fp8Plan { splits: 1, ..dn })
            }
            Some(ft) => plan_moe_tile(ft, pairs, e, h, inter, DEFAULT_SMS),
            None => {
                let (_, max_tiles, gu, dn) = plan_moe(pairs, e, h, inter, DEFAULT_SMS);
                (max_tiles, with_wgmma(s, gu), with_wgmma(s, dn))
            }
        };
        Ok(MoePlan { bm: gate_up.tile.bm(), max_tiles, gate_up, down })
    }

    fn input(&self, s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, x: &DeviceTensor) -> Result<Operand> {
        let (t, h) = rows_cols(x);
        let f8 = self.w13.dtype();
        let xq = wsp.buf(s, slot::X, f8, t * h)?;
        let xs = wsp.buf(s, slot::X_SCALES, DType::F32, t * h.div_ceil(128))?;
        let mut v = [xq, xs, x.raw(), t as u64, h as u64, h as u64, 0, 1, 1e-10f32.to_bits() as u64];
        launch_raw(s, &format!("act_quant_group128_{f8}"), LaunchCfg::quant_groups128(t, h)?, &mut v)?;
        Ok(Operand::new(xq, xs))
    }

    fn sort_operand(&self, s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, a: Operand, rows: &SortedRows, plan: Fp8Plan) -> Result<Operand> {
        if !plan.tile.reads_sorted_rows() {
            return Ok(a);
        }
        let (_, h, _) = MoeFp8Weights::dims(self)?;
        gather_sorted(s, wsp, a, rows, self.w13.dtype(), h, h.div_ceil(128))
    }

    fn gate_up(&self, s: &dyn GpuStream, ws: &mut Fp8Workspace, plan: Fp8Plan, out: u64, a: Operand, rows: &SortedRows) -> Result<()> {
        self.gemm(s, ws, plan, out, a, (self.w13, self.w13_scale), rows, !a.sorted)
    }

    fn silu_mul(&self, s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, gate_up: u64, rows: &SortedRows) -> Result<Operand> {
        let (_, _, inter) = MoeFp8Weights::dims(self)?;
        let f8 = self.w13.dtype();
        let m = rows.rows();
        let hq = wsp.buf(s, slot::H, f8, m * inter)?;
        let hs = wsp.buf(s, slot::H_SCALES, DType::F32, m * inter.div_ceil(128))?;
        let mut v = [hq, hs, gate_up, m as u64, inter as u64, (2 * inter) as u64, rows.num_tiles, rows.bm as u64, 1e-10f32.to_bits() as u64];
        launch_raw(s, &format!("silu_mul_quant_group128_{f8}"), LaunchCfg::quant_groups128(m, inter)?, &mut v)?;
        Ok(Operand::new(hq, hs))
    }

    fn down(&self, s: &dyn GpuStream, ws: &mut Fp8Workspace, plan: Fp8Plan, out: u64, h_act: Operand, rows: &SortedRows) -> Result<()> {
        self.gemm(s, ws, plan, out, h_act, (self.w2, self.w2_scale), rows, false)
    }
}

/// Grouped FP8 GEMM over expert-sorted rows (the building block of [`fused_moe`]): `out` has
/// `rows.max_tiles · bm` rows of N; `w` [E, N, K], `w_scale` [E, ⌈N/128⌉, ⌈K/128⌉].
pub fn fp8_grouped_gemm(s: &dyn GpuStream, ws: &mut Fp8Workspace, plan: Fp8Plan, out: &DeviceTensor, a: &DeviceTensor, a_scales: &DeviceTensor, w: &DeviceTensor, w_scale: &DeviceTensor, rows: &GroupedRows) -> Result<()> {
    let sh = w.shape();
    if sh.len() != 3 || !is_fp8(w.dtype()) || a.dtype() != w.dtype() {
        return Err(bad(format!("fp8_grouped_gemm: w {:?} {} a {}", sh, w.dtype(), a.dtype())));
    }
    let (e, n, k) = (sh[0], sh[1], sh[2]);
    let (_, ka) = rows_cols(a);
    let max_rows = rows.max_tiles * plan.tile.bm();
    if ka != k || out.numel() < max_rows * n || w_scale.numel() != e * n.div_ceil(128) * k.div_ceil(128) || rows.tile_expert.numel() < rows.max_tiles {
        return Err(bad(format!("fp8_grouped_gemm: a {:?} w {:?} out {:?} scales {:?}", a.shape(), sh, out.shape(), w_scale.shape())));
    }
    out.check_dtype(DType::Bf16)?;
    launch_gemm(s, ws, w.dtype(), plan, Operands::grouped(out, a, a_scales, w, w_scale, rows, max_rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let p = plan_dense(1, 2112, 7168, 132);
        assert_eq!(p.tile, Fp8Tile::Stream(StreamTile::T8));
        assert!(p.splits > 1 && p.splits <= 28, "{p:?}");
        assert_eq!(plan_dense(9, 2112, 7168, 132).tile, Fp8Tile::Bm16);
        assert_eq!(plan_dense(65, 2112, 7168, 132).tile, Fp8Tile::Bm128);
        assert_eq!(plan_dense(4096, 7168, 2048, 132), Fp8Plan { tile: Fp8Tile::Bm128, splits: 1 });
        assert_eq!(plan_dense(64, 32768, 512, 132).splits, 1);
        assert_eq!(Fp8Tile::Bm128.smem_bytes(Vendor::Cuda), 98304);
        assert_eq!(Fp8Tile::Stream(StreamTile::T8).kernel_name(DType::E4m3fn), "stream_gemm_e4m3fn_t8");
        // v2: within the 227 KB a Hopper block may opt into; one CTA per SM.
        assert_eq!(Fp8Tile::Wg2.smem_bytes(Vendor::Cuda), 202_832);
        assert!(Fp8Tile::Wg2.smem_bytes(Vendor::Cuda) <= 227 * 1024);
        assert_eq!((Fp8Tile::Wg2.bm(), Fp8Tile::Wg2.kernel_name(DType::E4m3fn)), (128, "fp8_gemm_wgmma2_e4m3fn".to_string()));
        assert!(registry::kernel(&Fp8Tile::Wg2.kernel_name(DType::E4m3fn)).is_some());
        assert_eq!((Fp8Tile::Wg2Pair.bm(), Fp8Tile::Wg2Pair.smem_bytes(Vendor::Cuda)), (128, 202_832));
        assert!(registry::kernel(&Fp8Tile::Wg2Pair.kernel_name(DType::E4m3fn)).is_some());
        // One token, 8 of 256 experts: one 16-row tile per expert (+1 of slack), split K.
        let (tile, max_tiles, gu, _) = plan_moe(8, 256, 7168, 256, 132);
        assert_eq!((tile, max_tiles), (Fp8Tile::Bm16, 9));
        assert!(gu.splits > 1);
        // 64 tokens on 32 experts: 16 rows per expert, the tiled BM 16 (measured faster there).
        assert_eq!(plan_moe(512, 32, 7168, 2048, 132).0, Fp8Tile::Bm16);
        let (tile, _, gu, dn) = plan_moe(4096 * 8, 32, 7168, 2048, 132);
        assert_eq!((tile, gu.splits, dn.splits), (Fp8Tile::Bm128, 1, 1));
    }
}
