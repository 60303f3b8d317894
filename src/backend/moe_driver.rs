//! The routed-expert pipeline of one MoE layer, shared by every expert weight format (FP8 block
//! in [`super::fp8_gemm::fused_moe`], INT8 block / channel and AWQ in [`super::quant_moe`]):
//!
//! 1. `moe_align_tiles`: the (token, k) pairs sorted by expert, each expert's rows padded to the
//!    M tile (experts without tokens get no tile);
//! 2. the gate_up GEMM's activation operand from x (quantized per token (group), or x itself);
//! 3. grouped GEMM gate_up = x[row / topk] · W13[e]ᵀ (rows gathered from the operand, no copy);
//! 4. SiLU·mul of gate_up (fused with the down GEMM's activation quantization where it has one);
//! 5. grouped GEMM y = h · W2[e]ᵀ;
//! 6. out = beta·out + Σ_k w[t, k] · y[row of (t, k)].
//!
//! A format ([`ExpertGemms`]) says how 2–5 run; [`run_experts`] owns 1 and 6, the buffers (one
//! [`FusedMoeWorkspace`] per stream, reused across calls) and the shape checks.

use super::fp8_gemm::{bad, launch_raw, rows_cols, u32_of, Fp8Workspace, FusedMoeWorkspace};
use super::memory::DeviceTensor;
use super::stream::GpuStream;
use super::types::*;
use crate::error::Result;

/// Workspace slots of the pipeline (the driver's and the formats').
pub(crate) mod slot {
    pub const SORTED: usize = 0;
    pub const TILE_EXPERT: usize = 1;
    pub const NUM_TILES: usize = 2;
    pub const PAIR_TO_ROW: usize = 3;
    /// The gate_up GEMM's activation codes and scales.
    pub const X: usize = 4;
    pub const X_SCALES: usize = 5;
    pub const GATE_UP: usize = 6;
    /// The down GEMM's activation and scales.
    pub const H: usize = 7;
    pub const H_SCALES: usize = 8;
    pub const Y: usize = 9;
    /// The gate_up operand in sorted row order ([`super::gather_sorted`]).
    pub const X_SORTED: usize = 10;
    pub const X_SORTED_SCALES: usize = 11;
}

/// An activation operand (raw device addresses): values, and scales for quantized ones (0: none).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operand {
    pub data: u64,
    pub scales: u64,
    /// The gate_up operand's rows already in the call's sorted order ([`gather_sorted`]): the
    /// GEMM reads row r in place instead of row `sorted[r] / topk`.
    pub sorted: bool,
}

impl Operand {
    pub fn new(data: u64, scales: u64) -> Self {
        Operand { data, scales, sorted: false }
    }
}

/// The expert-sorted rows of one call: `max_tiles` M tiles of `bm` rows, `*num_tiles` of them in
/// use (on the device); row r of the gate_up GEMM reads activation row `sorted[r] / topk`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SortedRows {
    pub sorted: u64,
    pub tile_expert: u64,
    pub num_tiles: u64,
    pub max_tiles: usize,
    pub bm: usize,
    pub topk: usize,
}

impl SortedRows {
    /// Rows of the grouped GEMMs' outputs (`max_tiles · bm`).
    pub fn rows(&self) -> usize {
        self.max_tiles * self.bm
    }
}

/// The M tile and the two GEMMs' plans of one call.
pub(crate) struct MoePlan<P> {
    pub bm: usize,
    pub max_tiles: usize,
    pub gate_up: P,
    pub down: P,
}

/// Steps 2–5 of the pipeline for one expert weight format.
pub(crate) trait ExpertGemms {
    type Plan: Copy;
    /// Element types of x that [`ExpertGemms::input`] takes.
    fn input_dtypes(&self) -> &'static [DType];
    /// (experts, hidden, intermediate), with the format's own shape checks.
    fn dims(&self) -> Result<(usize, usize, usize)>;
    /// Tile and plans for `pairs` (token, expert) pairs.
    fn plan(&self, s: &dyn GpuStream, wsp: &FusedMoeWorkspace, pairs: usize) -> Result<MoePlan<Self::Plan>>;
    /// The gate_up GEMM's operand from `x` bf16 [T, H].
    fn input(&self, s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, x: &DeviceTensor) -> Result<Operand>;
    /// The gate_up operand `a` in sorted row order ([`gather_sorted`]) where the format's gate_up
    /// GEMM under `plan` reads whole row tiles; `a` itself otherwise.
    fn sort_operand(&self, _s: &dyn GpuStream, _wsp: &mut FusedMoeWorkspace, a: Operand, _rows: &SortedRows, _plan: Self::Plan) -> Result<Operand> {
        Ok(a)
    }
    /// `out` bf16 [rows, 2I] = a[sorted / topk] · W13[e]ᵀ (a[r] when `a.sorted`).
    fn gate_up(&self, s: &dyn GpuStream, ws: &mut Fp8Workspace, plan: Self::Plan, out: u64, a: Operand, rows: &SortedRows) -> Result<()>;
    /// silu(gate) · up of `gate_up` bf16 [rows, 2I] as the down GEMM's operand ([rows, I]).
    fn silu_mul(&self, s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, gate_up: u64, rows: &SortedRows) -> Result<Operand>;
    /// `out` bf16 [rows, H] = h · W2[e]ᵀ (row r of h is sorted row r).
    fn down(&self, s: &dyn GpuStream, ws: &mut Fp8Workspace, plan: Self::Plan, out: u64, h: Operand, rows: &SortedRows) -> Result<()>;
}

/// `a` — rows of `row_bytes` bytes (elements of `dtype`: quantized codes, or AWQ's bf16) and
/// `row_scales` f32 scales each (0: none) — copied into the call's sorted row order
/// (`moe_gather_rows`: row r = row `sorted[r] / topk`, zeros for padding), for grouped GEMMs that
/// load whole A tiles by TMA (the sm_90a v2 and small-M kernels) instead of gathering rows: on the
/// EP-8 shard at 4096 tokens the gathered gate_up ran at 625 TFLOPS against 910 for the down GEMM
/// that reads its rows in place.
pub(crate) fn gather_sorted(s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, a: Operand, rows: &SortedRows, dtype: DType, row_bytes: usize, row_scales: usize) -> Result<Operand> {
    let m = rows.rows();
    let data = wsp.buf(s, slot::X_SORTED, dtype, (m * row_bytes).div_ceil(dtype.size()))?;
    let scales = wsp.buf(s, slot::X_SORTED_SCALES, DType::F32, m * row_scales)?;
    let mut v = [
        data,
        scales,
        a.data,
        a.scales,
        rows.sorted,
        rows.num_tiles,
        u32_of(m, "rows")? as u64,
        rows.bm as u64,
        rows.topk as u64,
        u32_of(row_bytes, "row bytes")? as u64,
        u32_of(row_scales, "row scales")? as u64,
    ];
    launch_raw(s, "moe_gather_rows", LaunchCfg::linear(u32_of(m.max(1), "rows")?, 256), &mut v)?;
    Ok(Operand { data, scales, sorted: true })
}

/// (experts, hidden, intermediate) of stacked expert weights `w13` [E, 2I, H] and `w2` [E, H, I]
/// whose ranks and even 2I are checked here (`what`: the caller, for the error); the rest of the
/// shape is the format's to check.
pub(crate) fn stacked_dims(what: &str, w13: &DeviceTensor, w2: &DeviceTensor) -> Result<(usize, usize, usize)> {
    let (s13, s2) = (w13.shape(), w2.shape());
    if s13.len() != 3 || s2.len() != 3 || s13[1] % 2 != 0 {
        return Err(bad(format!("{what}: w13 {s13:?} w2 {s2:?} must be [E, 2I, H] and [E, H, I]")));
    }
    Ok((s13[0], s13[2], s13[1] / 2))
}

/// Routed experts of one MoE layer in format `f`: `out [T, H] bf16 = beta·out + Σ_k
/// topk_weights[t, k] · E_{topk_ids[t, k]}(x[t])`. `x` [T, H] (bf16, or what `f` takes); `topk_ids` i32 [T, topk]
/// (ids outside [0, E) are skipped: an expert-parallel rank passes −1 for other ranks' experts);
/// `topk_weights` f32 [T, topk]. `beta = 1` adds into `out` (the residual, or the shared experts).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_experts<F: ExpertGemms + ?Sized>(s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, out: &DeviceTensor, x: &DeviceTensor, topk_ids: &DeviceTensor, topk_weights: &DeviceTensor, f: &F, beta: f32) -> Result<()> {
    let (e, h, inter) = f.dims()?;
    let (t, hx) = rows_cols(x);
    let (ti, topk) = rows_cols(topk_ids);
    if !f.input_dtypes().contains(&x.dtype()) {
        return Err(bad(format!("fused_moe: x is {}, this format takes {:?}", x.dtype(), f.input_dtypes())));
    }
    out.check_dtype(DType::Bf16)?;
    topk_ids.check_dtype(DType::I32)?;
    topk_weights.check_dtype(DType::F32)?;
    if hx != h || ti != t || topk_weights.numel() != t * topk || out.numel() != t * h {
        return Err(bad(format!("fused_moe: x {:?} out {:?} ids {:?} weights {:?} for hidden {h}", x.shape(), out.shape(), topk_ids.shape(), topk_weights.shape())));
    }
    if t == 0 {
        return Ok(());
    }
    let p = t * topk;
    let plan = f.plan(s, wsp, p)?;
    let rows = SortedRows {
        sorted: wsp.buf(s, slot::SORTED, DType::I32, plan.max_tiles * plan.bm)?,
        tile_expert: wsp.buf(s, slot::TILE_EXPERT, DType::I32, plan.max_tiles)?,
        num_tiles: wsp.buf(s, slot::NUM_TILES, DType::I32, 1)?,
        max_tiles: plan.max_tiles,
        bm: plan.bm,
        topk,
    };
    let p2r = wsp.buf(s, slot::PAIR_TO_ROW, DType::I32, p)?;
    // 1. sort pairs by expert, padded to the tile.
    let mut v = [rows.sorted, rows.tile_expert, rows.num_tiles, p2r, topk_ids.raw(), u32_of(p, "pairs")? as u64, u32_of(e, "experts")? as u64, plan.bm as u64];
    launch_raw(s, "moe_align_tiles", align_cfg(p, e)?, &mut v)?;
    // 2. the gate_up operand.
    let a = f.input(s, wsp, x)?;
    let a = f.sort_operand(s, wsp, a, &rows, plan.gate_up)?;
    // 3. gate_up = x[row_ids / topk] · w13[e]ᵀ.
    let gate_up = wsp.buf(s, slot::GATE_UP, DType::Bf16, rows.rows() * 2 * inter)?;
    f.gate_up(s, &mut wsp.gemm, plan.gate_up, gate_up, a, &rows)?;
    // 4. silu(gate) · up (rows of real tiles).
    let hq = f.silu_mul(s, wsp, gate_up, &rows)?;
    // 5. y = h · w2[e]ᵀ.
    let y = wsp.buf(s, slot::Y, DType::Bf16, rows.rows() * h)?;
    f.down(s, &mut wsp.gemm, plan.down, y, hq, &rows)?;
    // 6. out = beta · out + Σ_k w · y[pair_to_row].
    // 8 columns per thread where the kernel takes 16-byte rows (the same test as its own).
    let width = if h % 8 == 0 && out.raw().is_multiple_of(16) && y % 16 == 0 { 8 } else { 1 };
    let grid = (u32_of(h.div_ceil(256 * width), "combine blocks")?, u32_of(t, "tokens")?, 1);
    let mut v = [out.raw(), y, topk_weights.raw(), p2r, t as u64, topk as u64, h as u64, beta.to_bits() as u64];
    launch_raw(s, "moe_combine_rows_bf16", LaunchCfg::new(grid, (256, 1, 1), 0), &mut v)
}

/// `moe_align_tiles`' launch: one block with enough threads for its passes over the pairs (8 ids
/// a thread each) and its scan over the experts — from 128 (a decode step's few pairs: fewer scan
/// steps and barriers) to 1024 — and 2 · experts i32 of shared memory.
pub(crate) fn align_cfg(pairs: usize, experts: usize) -> Result<LaunchCfg> {
    let threads = pairs.div_ceil(8).max(experts).next_power_of_two().clamp(128, 1024);
    Ok(LaunchCfg::linear(1, threads as u32).with_shared(u32_of(2 * experts * 4, "align smem")?))
}
