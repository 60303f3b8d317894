//! Routed experts of one MoE layer on the INT8 and AWQ grouped GEMMs ([`int8_moe`], [`awq_moe`]):
//! the steps of the shared pipeline ([`super::moe_driver`]) for these formats.
//!
//! - INT8 (block or channel): x quantized per token group of 128 (block) or per token (channel)
//!   by `int8_act_quant`; grouped `int8_gemm` gate_up; `int8_silu_mul_quant` (SiLU·mul fused with
//!   the down GEMM's quantization); grouped `int8_gemm` down.
//! - AWQ (W4A16): x as is (bf16); grouped `awq_gemm` gate_up; `silu_mul` to bf16; grouped
//!   `awq_gemm` down. On sm_90a at ≤ 32 rows per active expert both GEMMs take the small-M wgmma
//!   entry (`awq_gemm_wgs_*`), whose gate_up reads x's rows copied into sorted order first.
#![allow(clippy::too_many_arguments, clippy::manual_is_multiple_of)]

use super::fp8_gemm::{bad, launch_raw, u32_of, Fp8Workspace, FusedMoeWorkspace, DEFAULT_SMS};
use super::memory::DeviceTensor;
use super::moe_driver::{gather_sorted, run_experts, slot, stacked_dims, ExpertGemms, MoePlan, Operand, SortedRows};
use super::fp8_gemm::Operands;
use super::gemm_wgs::{self, awq_wgs_enabled, awq_wgs_fits, wgs_enabled, WgsFormat, WgsTile};
use super::quant_gemm::{awq_tiled, int8_plan_for_stream, launch_awq_wgs_rows, launch_int8, launch_int8_quant, launch_tiled, plan_grouped, plan_grouped_tile, AwqWeight, Int8Scheme, QuantKernel, QuantPlan, QuantTile};
use super::stream::GpuStream;
use super::types::*;
use crate::error::Result;

/// The plans of both grouped GEMMs (same tile: it depends on the pairs and experts only).
fn plans(kernel: QuantKernel, pairs: usize, e: usize, h: usize, i: usize) -> MoePlan<QuantPlan> {
    let (gate_up, max_tiles) = plan_grouped(kernel, pairs, e, 2 * i, h, DEFAULT_SMS);
    let (down, _) = plan_grouped(kernel, pairs, e, h, i, DEFAULT_SMS);
    MoePlan { bm: gate_up.tile.bm(), max_tiles, gate_up, down }
}

/// INT8 expert weights of one MoE layer (all its experts stacked): `w13` i8 [E, 2I, H] = per
/// expert concat(gate, up) along the output dim, `w2` i8 [E, H, I], with their scales: `Block`
/// `[E, 2I/128, ⌈H/128⌉]` and `[E, ⌈H/128⌉, ⌈I/128⌉]` (I a multiple of 128, so gate and up share
/// no scale block: pad I with zero rows / columns otherwise), `Channel` `[E, 2I]` and `[E, H]`.
/// H and I are multiples of 16 (the GEMMs' K).
pub struct MoeInt8Weights<'a> {
    pub scheme: Int8Scheme,
    pub w13: &'a DeviceTensor,
    pub w13_scale: &'a DeviceTensor,
    pub w2: &'a DeviceTensor,
    pub w2_scale: &'a DeviceTensor,
}

impl MoeInt8Weights<'_> {
    /// (experts, hidden, intermediate).
    pub fn dims(&self) -> Result<(usize, usize, usize)> {
        let (e, h, i) = stacked_dims("int8_moe", self.w13, self.w2)?;
        let (s13, s2) = (self.w13.shape(), self.w2.shape());
        self.w13.check_dtype(DType::I8)?;
        self.w2.check_dtype(DType::I8)?;
        self.w13_scale.check_dtype(DType::F32)?;
        self.w2_scale.check_dtype(DType::F32)?;
        if s2 != [e, h, i] || h % 16 != 0 || i % 16 != 0 {
            return Err(bad(format!("int8_moe: w13 {s13:?} w2 {s2:?}: hidden and intermediate must be multiples of 16")));
        }
        if self.scheme == Int8Scheme::Block && i % 128 != 0 {
            return Err(bad(format!("int8_moe: block INT8 intermediate {i} must be a multiple of 128 (gate and up may not share a scale block)")));
        }
        let sc = self.scheme;
        if self.w13_scale.numel() != e * sc.w_scales_len(2 * i, h) || self.w2_scale.numel() != e * sc.w_scales_len(h, i) {
            return Err(bad(format!("int8_moe ({sc:?}): scales w13 {:?} w2 {:?} for {e} experts, H {h}, I {i}", self.w13_scale.shape(), self.w2_scale.shape())));
        }
        Ok((e, h, i))
    }

    /// `out` [rows, n] = a · w[e]ᵀ over the sorted rows; row r reads activation row
    /// `sorted[r] / topk` when `gather` (x), row r otherwise (h, one row per sorted row).
    fn gemm(&self, s: &dyn GpuStream, ws: &mut Fp8Workspace, plan: QuantPlan, out: u64, a: Operand, w: (&DeviceTensor, &DeviceTensor), rows: &SortedRows, gather: bool) -> Result<()> {
        launch_int8(s, ws, self.scheme, plan, Operands::sorted(out, a, w, rows, gather))
    }
}

impl ExpertGemms for MoeInt8Weights<'_> {
    type Plan = QuantPlan;

    fn input_dtypes(&self) -> &'static [DType] {
        &[DType::F32, DType::Bf16]
    }

    fn dims(&self) -> Result<(usize, usize, usize)> {
        MoeInt8Weights::dims(self)
    }

    /// The small-M wgmma entry where the experts hold few rows and the stream runs it
    /// ([`WgsTile::for_expert_rows`]), else the grouped plans of [`plan_grouped`], BM 128 on the v2
    /// entry where the stream runs it.
    fn plan(&self, s: &dyn GpuStream, _wsp: &FusedMoeWorkspace, pairs: usize) -> Result<MoePlan<QuantPlan>> {
        let (e, h, i) = MoeInt8Weights::dims(self)?;
        if let Some(t) = gemm_wgs::moe_tile(self.scheme.wgs_format(), pairs, e).filter(|_| wgs_enabled(s)) {
            let plan = QuantPlan { tile: QuantTile::Wgs(t), splits: 1 };
            let (_, max_tiles) = plan_grouped_tile(QuantKernel::Int8, plan.tile, pairs, e, 2 * i, h, DEFAULT_SMS);
            return Ok(MoePlan { bm: t.nt(), max_tiles, gate_up: plan, down: plan });
        }
        let p = plans(QuantKernel::Int8, pairs, e, h, i);
        Ok(MoePlan { gate_up: int8_plan_for_stream(s, p.gate_up), down: int8_plan_for_stream(s, p.down), ..p })
    }

    fn input(&self, s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, x: &DeviceTensor) -> Result<Operand> {
        let h = *x.shape().last().unwrap_or(&1);
        let t = x.numel().checked_div(h).unwrap_or(0);
        let q = wsp.buf(s, slot::X, DType::I8, t * h)?;
        let sc = wsp.buf(s, slot::X_SCALES, DType::F32, self.scheme.a_scales_len(t, h))?;
        launch_int8_quant(s, self.scheme, &format!("int8_quant_{}_{}", self.scheme.quant_tag(), x.dtype()), [q, sc, x.raw()], t, h, h, (0, 1))?;
        Ok(Operand::new(q, sc))
    }

    fn sort_operand(&self, s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, a: Operand, rows: &SortedRows, plan: QuantPlan) -> Result<Operand> {
        if !plan.tile.reads_sorted_rows() {
            return Ok(a);
        }
        let (_, h, _) = MoeInt8Weights::dims(self)?;
        gather_sorted(s, wsp, a, rows, DType::I8, h, self.scheme.a_scales_len(1, h))
    }

    fn gate_up(&self, s: &dyn GpuStream, ws: &mut Fp8Workspace, plan: QuantPlan, out: u64, a: Operand, rows: &SortedRows) -> Result<()> {
        self.gemm(s, ws, plan, out, a, (self.w13, self.w13_scale), rows, !a.sorted)
    }

    fn silu_mul(&self, s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, gate_up: u64, rows: &SortedRows) -> Result<Operand> {
        let (_, _, i) = MoeInt8Weights::dims(self)?;
        let m = rows.rows();
        let q = wsp.buf(s, slot::H, DType::I8, m * i)?;
        let sc = wsp.buf(s, slot::H_SCALES, DType::F32, self.scheme.a_scales_len(m, i))?;
        launch_int8_quant(s, self.scheme, &format!("int8_silu_mul_quant_{}", self.scheme.quant_tag()), [q, sc, gate_up], m, i, 2 * i, (rows.num_tiles, rows.bm))?;
        Ok(Operand::new(q, sc))
    }

    fn down(&self, s: &dyn GpuStream, ws: &mut Fp8Workspace, plan: QuantPlan, out: u64, h: Operand, rows: &SortedRows) -> Result<()> {
        self.gemm(s, ws, plan, out, h, (self.w2, self.w2_scale), rows, false)
    }
}

/// AWQ expert weights of one MoE layer: `w13` the experts' concat(gate, up) along N (`n` = 2I,
/// `k` = H), `w2` their down projections (`n` = H, `k` = I), both with `experts` = E.
pub struct MoeAwqWeights<'a> {
    pub w13: AwqWeight<'a>,
    pub w2: AwqWeight<'a>,
}

impl MoeAwqWeights<'_> {
    /// (experts, hidden, intermediate).
    pub fn dims(&self) -> Result<(usize, usize, usize)> {
        self.w13.check()?;
        self.w2.check()?;
        let (e, h, i) = (self.w13.experts, self.w13.k, self.w13.n / 2);
        if self.w13.n % 2 != 0 || self.w2.experts != e || self.w2.n != h || self.w2.k != i {
            return Err(bad(format!(
                "awq_moe: w13 {} × [K {}, N {}] and w2 {} × [K {}, N {}] are not gate_up [H, 2I] and down [I, H]",
                e, self.w13.k, self.w13.n, self.w2.experts, self.w2.k, self.w2.n
            )));
        }
        Ok((e, h, i))
    }

    /// `out` [rows, n] = a · W[e] over the sorted rows; row r reads activation row `sorted[r] /
    /// topk` when `gather` (x), row r otherwise (sorted x, or h). The wgs tiles take no gather.
    fn gemm(&self, s: &dyn GpuStream, ws: &mut Fp8Workspace, plan: QuantPlan, out: u64, a: Operand, w: &AwqWeight, rows: &SortedRows, gather: bool) -> Result<()> {
        if let QuantTile::Wgs(t) = plan.tile {
            if gather {
                return Err(bad("awq_moe: the wgs tiles read pre-sorted rows (sort_operand first)".into()));
            }
            return launch_awq_wgs_rows(s, ws, t, out, a.data, rows.rows(), w, rows.rows(), rows.max_tiles, [rows.tile_expert, rows.num_tiles]);
        }
        let r = [if gather { rows.sorted } else { 0 }, rows.tile_expert, rows.num_tiles];
        let t = awq_tiled(s, plan, out, a.data, w, rows.max_tiles, rows.rows(), r, if gather { rows.topk } else { 1 })?;
        launch_tiled(s, ws, plan, t)
    }
}

impl ExpertGemms for MoeAwqWeights<'_> {
    type Plan = QuantPlan;

    fn input_dtypes(&self) -> &'static [DType] {
        &[DType::Bf16]
    }

    fn dims(&self) -> Result<(usize, usize, usize)> {
        MoeAwqWeights::dims(self)
    }

    /// The small-M wgmma entry where [`awq_moe_wgs_tile`] takes it, else [`plan_grouped`].
    fn plan(&self, s: &dyn GpuStream, _wsp: &FusedMoeWorkspace, pairs: usize) -> Result<MoePlan<QuantPlan>> {
        let (e, h, i) = MoeAwqWeights::dims(self)?;
        if let Some(t) = awq_moe_wgs_tile(s, pairs, e, h, i) {
            let plan = QuantPlan { tile: QuantTile::Wgs(t), splits: 1 };
            let (_, max_tiles) = plan_grouped_tile(QuantKernel::Awq, plan.tile, pairs, e, 2 * i, h, DEFAULT_SMS);
            return Ok(MoePlan { bm: t.nt(), max_tiles, gate_up: plan, down: plan });
        }
        Ok(plans(QuantKernel::Awq, pairs, e, h, i))
    }

    fn input(&self, _s: &dyn GpuStream, _wsp: &mut FusedMoeWorkspace, x: &DeviceTensor) -> Result<Operand> {
        Ok(Operand::new(x.raw(), 0))
    }

    /// The wgs tiles read whole row tiles by TMA: x's bf16 rows copied into sorted order.
    fn sort_operand(&self, s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, a: Operand, rows: &SortedRows, plan: QuantPlan) -> Result<Operand> {
        if !plan.tile.reads_sorted_rows() {
            return Ok(a);
        }
        let (_, h, _) = MoeAwqWeights::dims(self)?;
        gather_sorted(s, wsp, a, rows, DType::Bf16, h * DType::Bf16.size(), 0)
    }

    fn gate_up(&self, s: &dyn GpuStream, ws: &mut Fp8Workspace, plan: QuantPlan, out: u64, a: Operand, rows: &SortedRows) -> Result<()> {
        self.gemm(s, ws, plan, out, a, &self.w13, rows, !a.sorted)
    }

    fn silu_mul(&self, s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, gate_up: u64, rows: &SortedRows) -> Result<Operand> {
        let (_, _, i) = MoeAwqWeights::dims(self)?;
        let m = rows.rows();
        let h = wsp.buf(s, slot::H, DType::Bf16, m * i)?;
        // silu_mul_bf16(out, gate, up, rows, cols, in_stride): up starts I elements into each row.
        let mut v = [h, gate_up, gate_up + (i * DType::Bf16.size()) as u64, u32_of(m, "rows")? as u64, u32_of(i, "cols")? as u64, u32_of(2 * i, "stride")? as u64];
        let blocks = u32_of((m * i).div_ceil(256).clamp(1, 65535), "blocks")?;
        launch_raw(s, "silu_mul_bf16", LaunchCfg::linear(blocks, 256), &mut v)?;
        Ok(Operand::new(h, 0))
    }

    fn down(&self, s: &dyn GpuStream, ws: &mut Fp8Workspace, plan: QuantPlan, out: u64, h: Operand, rows: &SortedRows) -> Result<()> {
        self.gemm(s, ws, plan, out, h, &self.w2, rows, false)
    }
}

/// The small-M wgmma tile of [`awq_moe`]'s plan for `pairs` (token, expert) pairs over `experts`
/// of hidden size `hidden` and intermediate size `inter` on this stream: [`gemm_wgs::moe_tile`]
/// (16–32 rows per active expert) where [`awq_wgs_enabled`] and both GEMMs' N (2·inter, hidden)
/// fit the entry ([`awq_wgs_fits`]: N % 32 == 0, its zeros are TMA-copied); `None`: the grouped
/// plans of [`plan_grouped`].
pub fn awq_moe_wgs_tile(s: &dyn GpuStream, pairs: usize, experts: usize, hidden: usize, inter: usize) -> Option<WgsTile> {
    let fits = awq_wgs_fits(2 * inter) && awq_wgs_fits(hidden);
    gemm_wgs::moe_tile(WgsFormat::Awq, pairs, experts).filter(|_| fits && awq_wgs_enabled(s))
}

/// Routed experts of one MoE layer on the INT8 grouped GEMMs: as [`super::fp8_gemm::fused_moe`]
/// (`out [T, H] bf16 = beta·out + Σ_k w[t, k] · E_{id[t, k]}(x[t])`), x f32 or bf16.
pub fn int8_moe(s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, out: &DeviceTensor, x: &DeviceTensor, topk_ids: &DeviceTensor, topk_weights: &DeviceTensor, w: &MoeInt8Weights, beta: f32) -> Result<()> {
    run_experts(s, wsp, out, x, topk_ids, topk_weights, w, beta)
}

/// Routed experts of one MoE layer on the AWQ grouped GEMMs (bf16 activations), as [`int8_moe`].
pub fn awq_moe(s: &dyn GpuStream, wsp: &mut FusedMoeWorkspace, out: &DeviceTensor, x: &DeviceTensor, topk_ids: &DeviceTensor, topk_weights: &DeviceTensor, w: &MoeAwqWeights, beta: f32) -> Result<()> {
    run_experts(s, wsp, out, x, topk_ids, topk_weights, w, beta)
}
