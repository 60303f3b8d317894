//! The small-M sm_90a 8-bit GEMM (kernels/gemm_wgs.cuh): FP8 block-scaled and INT8 block /
//! channel weights as the wgmma's 64-row operand, up to 64 tokens as its N, streamed by TMA and
//! split over K by stream-K (each CTA one equal, contiguous range of the launch's 128-K blocks).
//! Measured on the H200 (docs/perf/fp8_gemm.md): a 128-token tile was 1.2–3.5× slower than v2 at
//! M = 128 (its split-K atomics); two 64-token M tiles beat v2 at 65–128 rows on the shapes where
//! v2 leaves SMs idle ([`dense_tile`]).
//! It computes the block GEMMs' function with their scales, split-K workspace and grouped tiles, so
//! it is one more tile of them: [`super::fp8_gemm::Fp8Tile::Wgs`], [`super::quant_gemm::QuantTile::Wgs`].
//! Grouped launches need pre-sorted rows (the fused MoE gathers them first, as for v2).
//!
//! AWQ W4A16 runs on the same pipeline (kernels/awq_gemm_wgs.cuh, [`launch_awq_wgs`]): the
//! `awq_repack`ed words dequantized in registers as the wgmma's A operand, 16 or 64 tokens as N,
//! the group scales and zero points TMA-copied with them (so N % 32 == 0: [`awq_wgs_fits`]);
//! [`super::quant_gemm::QuantTile::Wgs`] for AWQ plans too.

use super::fp8_gemm::{bad, launch_args, u32_of, Fp8Workspace, Operands, RawArg, DEFAULT_SMS};
use super::registry;
use super::stream::GpuStream;
use super::types::*;
use crate::error::{Error, Result};

/// Tokens per M tile (the wgmma's N).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WgsTile {
    N16,
    /// 8-bit formats only (AWQ's register-A bf16 wgmma has entries for 16 and 64 tokens).
    N32,
    N64,
}

impl WgsTile {
    pub const ALL: [WgsTile; 3] = [WgsTile::N16, WgsTile::N32, WgsTile::N64];

    pub fn nt(self) -> usize {
        match self {
            WgsTile::N16 => 16,
            WgsTile::N32 => 32,
            WgsTile::N64 => 64,
        }
    }

    /// Short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            WgsTile::N16 => "wgs16",
            WgsTile::N32 => "wgs32",
            WgsTile::N64 => "wgs64",
        }
    }

    /// The tiles `format` has entries for (AWQ: no 32-token tile).
    pub fn of(format: WgsFormat) -> &'static [WgsTile] {
        match format {
            WgsFormat::Awq => &[WgsTile::N16, WgsTile::N64],
            _ => &WgsTile::ALL,
        }
    }

    /// The smallest tile of `format` holding `rows` tokens; `None` above 64 (several M tiles:
    /// `dense_tile`). At 17–32 rows the 32-token tile beat the 64-token one on every FP8 and
    /// block INT8 shape (session 10, run 4: 1.04–1.16×; at 33–64 rows, as two M tiles, it lost).
    pub fn for_rows(format: WgsFormat, rows: usize) -> Option<WgsTile> {
        WgsTile::of(format).iter().copied().find(|t| rows <= t.nt())
    }

    /// The tile of a grouped (MoE) GEMM whose active experts hold `mean_rows` rows on average:
    /// room for twice the mean, so that most experts fit one tile (a second tile of an expert
    /// streams its weights again); `None` above 32 rows (v2's 128-row tiles, or the tiled kernels).
    pub fn for_expert_rows(format: WgsFormat, mean_rows: usize) -> Option<WgsTile> {
        WgsTile::for_rows(format, 2 * mean_rows.max(1))
    }

    /// CTAs resident per SM (mirrors `WgsSmem<NT>::CTAS_PER_SM`): the 16-token kernel takes 68–74
    /// registers (at most 85 for two) and 93.6 KB, so two fit; the 32-token one 104 and 187 KB,
    /// the 64-token one 132 and 195 KB.
    pub fn ctas_per_sm(self) -> usize {
        match self {
            WgsTile::N16 => 2,
            WgsTile::N32 | WgsTile::N64 => 1,
        }
    }

    /// Dynamic shared memory of one AWQ CTA of group size `group` (mirrors `AwqWgsSmem<NT,
    /// G>::BYTES`; one CTA per SM): per stage the 8 KB weight box, two token boxes of NT × 128
    /// bytes and the block's 128/G group rows of scales (256 bytes each) and zero words (64),
    /// rounded up to 128 bytes (TMA destinations); as many stages as fit 192 KB (at most 16), 16
    /// bytes of mbarriers per stage, two 8-byte flags, 1 KB to align the base.
    pub fn awq_smem_bytes(self, group: usize) -> u32 {
        let stage = 8192 + self.nt() * 256;
        let aux = ((128 / group.max(1)) * (256 + 64)).next_multiple_of(128);
        layout_bytes(stage, aux, (196_608 / (stage + aux)).min(16))
    }

    /// Dynamic shared memory of one CTA (mirrors `WgsSmem<NT>::BYTES`): as many stages of the
    /// weight box (16 KB) and the token box (NT × 128 bytes) as fit 96 KB per CTA (two per SM) or
    /// 192 KB (one), their NT f32 scales, 2 mbarriers per stage, two 8-byte flags, 1 KB to align
    /// the base.
    pub fn smem_bytes(self) -> u32 {
        let nt = self.nt();
        let stage = 128 * 128 + nt * 128;
        layout_bytes(stage, nt * 4, 196_608 / self.ctas_per_sm() / stage)
    }
}

/// Bytes of a `WgsLayout` (kernels/gemm_wgs.cuh): `stages` × (a `stage` of weight and token boxes,
/// an `aux` area of the producer threads), two mbarriers per stage, two 8-byte flags, 1 KB to
/// align the base.
fn layout_bytes(stage: usize, aux: usize, stages: usize) -> u32 {
    (stages * (stage + aux) + 2 * stages * 8 + 16 + 1024) as u32
}

/// `DSV3_GEMM_WGS=0` keeps the default plans off every small-M entry.
fn switched_on() -> bool {
    std::env::var("DSV3_GEMM_WGS").map(|v| v != "0").unwrap_or(true)
}

/// Whether the small-M entries can run on this stream: it loads the sm_90a cubin and this build
/// compiled one (elsewhere the entries only trap).
pub fn wgs_available(s: &dyn GpuStream) -> bool {
    registry::kernel("fp8_gemm_wgs_e4m3fn_n16").is_some_and(|k| registry::runs_on(s, k))
}

/// Whether the default plans take the small-M entries: [`wgs_available`], unless
/// `DSV3_GEMM_WGS=0`.
pub fn wgs_enabled(s: &dyn GpuStream) -> bool {
    switched_on() && wgs_available(s)
}

/// Whether the AWQ small-M entries can run on this stream (as [`wgs_available`]).
pub fn awq_wgs_available(s: &dyn GpuStream) -> bool {
    registry::kernel("awq_gemm_wgs_g128_n16").is_some_and(|k| registry::runs_on(s, k))
}

/// Whether the default AWQ plans take the small-M entries: [`awq_wgs_available`], unless
/// `DSV3_GEMM_WGS=0` (the switch of the 8-bit ones).
pub fn awq_wgs_enabled(s: &dyn GpuStream) -> bool {
    switched_on() && awq_wgs_available(s)
}

/// Whether the AWQ small-M entry takes an `n`-wide output: its zero points reach shared memory by
/// TMA as rows of N/8 words, and the copy engine needs their N/2-byte row stride to be a multiple
/// of 16 bytes, so N % 32 == 0 (the scales' 2N-byte rows follow). Elsewhere the default plans keep
/// the older kernels and [`launch_awq_wgs`] refuses with [`Error::InvalidArgument`].
#[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.80
pub fn awq_wgs_fits(n: usize) -> bool {
    n % 32 == 0
}

/// The weight formats of the small-M entries (their measured crossovers with the older kernels
/// differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WgsFormat {
    Fp8,
    Int8Block,
    Int8Channel,
    Awq,
}

/// The small-M tile the default plans take for a dense `[m, k] · [n, k]ᵀ` of `format` on `sms` SMs
/// (`None`: the older plans), from the H200 rows of 2026-11-29 (docs/perf/fp8_gemm.md, "The
/// small-M wgmma GEMM"): it won from 9 to 64 rows on every FP8 shape (1.1–2.3×), on 4 of 6 block
/// INT8 shapes at 64 rows, and on AWQ from 16 rows. Channel INT8 at 17–64 rows takes it from K =
/// 2048 (session 9, run 1, 64 rows, on the slot split-K: 1.46–1.82× the tiled kernel on the four
/// shapes with K ≥ 2048; 0.83–0.84× on 24576×1536 and 32768×512, which keep the tiled kernel; in
/// session 7, before the slots, it lost on every shape). Up to 8 rows the mma.sync
/// streaming kernel stays where the launch is short: the entry won there only with a tile per CTA
/// (24576×1536, 32768×512: 1.1–1.3×) or long ranges (7168×16384: 1.2×), and lost 0.2–1 µs on
/// the ~15 MB shapes; AWQ's st8 won at 1 row on 4 of 6 shapes. AWQ needs [`awq_wgs_fits`]`(n)`.
///
/// At 65–128 rows FP8 and block INT8 take the 64-token tile (two M tiles, whose ranges stream the
/// same weight blocks at the same time: the second read is an L2 hit) where v2's grid of one CTA
/// per 128 × 128 tile leaves SMs idle (N / 128 < SMs) and K ≥ 4096 (session 10, run 1, 128 rows:
/// FP8 1.06–1.52×, block INT8 1.39–2.0× v2 on 2112×7168, 4096×7168, 7168×16384; v2 won on
/// 7168×2048 and on the shapes of ≥ 192 tiles; channel INT8, whose v2 is faster, won only on
/// 2112×7168 and keeps v2).
pub fn dense_tile(format: WgsFormat, m: usize, n: usize, k: usize, sms: usize) -> Option<WgsTile> {
    if format == WgsFormat::Awq && !awq_wgs_fits(n) {
        return None;
    }
    if m > 64 {
        let two_tiles = matches!(format, WgsFormat::Fp8 | WgsFormat::Int8Block) && m <= 128 && k >= 4096 && n.div_ceil(128) < sms;
        return two_tiles.then_some(WgsTile::N64);
    }
    let max_rows = if format == WgsFormat::Int8Channel && k < 2048 { 16 } else { 64 };
    let t = WgsTile::for_rows(format, m).filter(|_| m <= max_rows)?;
    if m > 8 {
        return Some(t);
    }
    if format == WgsFormat::Awq {
        return None;
    }
    let (tiles, per_sm) = (n.div_ceil(128), t.ctas_per_sm());
    let blocks = tiles * k.div_ceil(128);
    let tile_per_cta = grid_for(blocks, Some(tiles), sms, per_sm) == tiles;
    (tile_per_cta || blocks >= 16 * sms * per_sm).then_some(t)
}

/// The small-M tile the default plans take for a fused MoE of `pairs` (token, expert) pairs over
/// `experts` (`None`: the older plans), from the same rows: FP8 / block INT8 from 64 pairs (8
/// tokens at top-8; at one token the entry lost 3–9 µs to the older kernels' shorter launches) with
/// [`WgsTile::for_expert_rows`]. At 9–16 mean rows per active expert FP8 takes the 32-token tile
/// (session 10, run 4: EP-8 shard at 64 tokens 418 µs against the tiled BM 16's 490–519, TP-8 at
/// 512 tokens 542 against 609), block INT8 the tiled kernel (415 µs there, native s8 mma.sync; its
/// 32-token MoE was not measured). Channel INT8 at ≤ 8 rows only (its 64-token tile is slow, as
/// dense); AWQ only at 16–32 rows (it won on the EP-8 shard at 64 tokens, lost on the TP-8 shard
/// and at 16). The AWQ MoE plan also needs [`awq_wgs_fits`] for both GEMMs' N
/// (`quant_moe::awq_moe_wgs_tile`).
pub fn moe_tile(format: WgsFormat, pairs: usize, experts: usize) -> Option<WgsTile> {
    let mean = pairs.div_ceil(experts.min(pairs).max(1));
    let t = WgsTile::for_expert_rows(format, mean)?;
    match format {
        WgsFormat::Awq => (mean >= 16).then_some(t),
        _ if pairs < 64 => None,
        WgsFormat::Int8Channel => (t == WgsTile::N16).then_some(t),
        WgsFormat::Int8Block if t == WgsTile::N32 => None,
        _ => Some(t),
    }
}

/// Launches the small-M entry `name` (FP8 or INT8: 1-byte operands) of tile `tile` on `o`: TMA
/// maps of the rows ([rows, K], boxes of NT rows × 128 bytes) and of the weights ([E, N, K], 128 ×
/// 128), the split-K workspace from `ws`, [`WgsTile::ctas_per_sm`] CTAs per SM (at most one per
/// 128-K block). Refused
/// with [`Error::KernelUnavailable`] where the stream does not load the sm_90a cubin, and for
/// gathered rows (the caller sorts them first).
pub(super) fn launch_wgs(s: &dyn GpuStream, ws: &mut Fp8Workspace, name: &str, tile: WgsTile, o: &Operands) -> Result<()> {
    let (k, n) = (o.k as u64, o.n as u64);
    launch_wgs_with(s, ws, name, tile, (tile.ctas_per_sm(), tile.smem_bytes()), o, || {
        let map_b = s.tensor_map(&TmaTiled { addr: o.b, dims: vec![k, n, o.experts as u64], strides: vec![k, n * k], box_dims: vec![128, 128, 1], swizzle: TmaSwizzle::B128 })?;
        let map_a = s.tensor_map(&TmaTiled { addr: o.a, dims: vec![k, o.a_rows as u64], strides: vec![k], box_dims: vec![128, tile.nt() as u32], swizzle: TmaSwizzle::B128 })?;
        Ok([RawArg::Map(map_a), RawArg::Map(map_b), RawArg::Word(o.a_scales), RawArg::Word(o.b_scale)])
    })
}

/// Launches the AWQ small-M entry (`awq_gemm_wgs_g{G}_n{NT}`) of tile `tile` on `o`, whose `b` is
/// the `awq_repack`ed qweight `[E, N/8, K/32, 32]` words, `a_scales` the qzeros `[E, K/G, N/8]`
/// and `b_scale` the f16 scales `[E, K/G, N]`, `a` the bf16 rows: TMA maps of the words as bytes
/// `[E, N/8, K/32, 128]` (box 128 × 4 × 16: one 128-K block of a 128-row tile), of the rows as
/// bytes `[rows, 2K]` (box 128 × NT), and, unswizzled, of the scales as bytes `[E, K/G, 2N]` (box
/// 256 × 128/G: a block's group rows of a tile) and of the zeros as bytes `[E, K/G, N/2]` (box 64
/// × 128/G); one CTA per SM, otherwise as [`launch_wgs`]. `group` ∈ {64, 128}, K % group == 0
/// (checked by the caller's `AwqWeight`), N % 32 == 0 ([`awq_wgs_fits`]; else
/// [`Error::InvalidArgument`], after the kernel check).
pub(super) fn launch_awq_wgs(s: &dyn GpuStream, ws: &mut Fp8Workspace, tile: WgsTile, group: usize, o: &Operands) -> Result<()> {
    if !matches!(group, 64 | 128) {
        return Err(bad(format!("awq_gemm: no small-M entry for group {group} (64 or 128)")));
    }
    let name = format!("awq_gemm_wgs_g{group}_n{}", tile.nt());
    let (k, n, e) = (o.k as u64, o.n as u64, o.experts as u64);
    launch_wgs_with(s, ws, &name, tile, (1, tile.awq_smem_bytes(group)), o, || {
        if !awq_wgs_fits(o.n) {
            return Err(bad(format!("{name}: N = {} is not a multiple of 32 (the qzeros rows, N/2 bytes, are TMA-copied: 16-byte strides); take the tiled or streaming AWQ plans", o.n)));
        }
        let (kg, gb) = (k / group as u64, (128 / group) as u32);
        let dims = vec![128, k / 32, n / 8, e];
        let map_b = s.tensor_map(&TmaTiled { addr: o.b, dims, strides: vec![128, 4 * k, n / 8 * 4 * k], box_dims: vec![128, 4, 16, 1], swizzle: TmaSwizzle::B128 })?;
        let map_a = s.tensor_map(&TmaTiled { addr: o.a, dims: vec![2 * k, o.a_rows as u64], strides: vec![2 * k], box_dims: vec![128, tile.nt() as u32], swizzle: TmaSwizzle::B128 })?;
        let map_s = s.tensor_map(&TmaTiled { addr: o.b_scale, dims: vec![2 * n, kg, e], strides: vec![2 * n, kg * 2 * n], box_dims: vec![256, gb, 1], swizzle: TmaSwizzle::None })?;
        let map_z = s.tensor_map(&TmaTiled { addr: o.a_scales, dims: vec![n / 2, kg, e], strides: vec![n / 2, kg * n / 2], box_dims: vec![64, gb, 1], swizzle: TmaSwizzle::None })?;
        Ok([RawArg::Map(map_a), RawArg::Map(map_b), RawArg::Map(map_s), RawArg::Map(map_z)])
    })
}

/// The launch both kinds share: the kernel check, the split-K workspace (two slots of 128 × NT f32
/// per CTA: `wgs_slot`), the grid (`per_sm.0` CTAs per SM of `per_sm.1` bytes of shared memory,
/// at most one per 128-K block) and the arguments, of which `operands` builds the four after `out`
/// (tmap_a, tmap_b and the format's two scale operands: pointers for the 8-bit entries, the
/// scales' and zeros' maps for AWQ) once the launch is known to be non-empty.
fn launch_wgs_with(s: &dyn GpuStream, ws: &mut Fp8Workspace, name: &str, tile: WgsTile, per_sm: (usize, u32), o: &Operands, operands: impl FnOnce() -> Result<[RawArg; 4]>) -> Result<()> {
    let kernel = registry::kernel(name).ok_or_else(|| bad(format!("no kernel `{name}` in the registry")))?;
    if !registry::runs_on(s, kernel) {
        let stream = format!("{} {}, {}", s.vendor(), s.arch(), s.variant());
        return Err(Error::KernelUnavailable { kernel: kernel.name, targets: kernel.cuda_archs.join(" / "), stream });
    }
    if o.row_ids != 0 {
        return Err(bad(format!("{name}: rows must be pre-sorted (no row_ids; gather them first)")));
    }
    let n_tiles = o.n.div_ceil(128);
    let blocks = o.m_tiles * n_tiles * o.k.div_ceil(128);
    if blocks == 0 {
        return Ok(());
    }
    let sms = s.sm_count().unwrap_or(DEFAULT_SMS);
    let tiles = if o.tile_expert == 0 { Some(o.m_tiles * n_tiles) } else { None };
    let grid = grid_for(blocks, tiles, sms, per_sm.0);
    let (wsp, cnt) = ws.ensure_slots(s, 2 * grid * 128 * tile.nt(), o.m_tiles * n_tiles)?;
    let [op_a, op_b, op_q0, op_q1] = operands()?;
    let cfg = LaunchCfg::new((u32_of(grid, "CTAs")?, 1, 1), (384, 1, 1), per_sm.1);
    let mut args = [
        RawArg::Word(o.out),
        op_a,
        op_b,
        op_q0,
        op_q1,
        RawArg::Word(wsp),
        RawArg::Word(cnt),
        RawArg::Word(o.tile_expert),
        RawArg::Word(o.num_tiles),
        RawArg::Word(u32_of(o.m, "m")? as u64),
        RawArg::Word(u32_of(o.n, "n")? as u64),
        RawArg::Word(u32_of(o.k, "k")? as u64),
    ];
    launch_args(s, name, cfg, &mut args)
}

/// CTAs of a launch of `blocks` 128-K blocks (`tiles` output tiles when known on the host: dense)
/// on `sms` SMs of `per_sm` CTAs each. The kernel cuts the blocks into one equal range per CTA;
/// with a CTA per tile no range splits a tile (no split-K atomics, no hand-off), which pays where
/// every SM gets a tile and the waves are full: H200 at M = 1, 24576×1536 and 32768×512 (192 and
/// 256 tiles) ran 1.2× faster unsplit (the tiled kernels) than stream-K. Otherwise stream-K over
/// every CTA slot, with ranges of at least [`min_range`] blocks.
pub fn grid_for(blocks: usize, tiles: Option<usize>, sms: usize, per_sm: usize) -> usize {
    let slots = sms * per_sm;
    if let Some(t) = tiles {
        let full_waves = t >= sms && (t <= slots || t * 10 >= t.div_ceil(slots) * slots * 8);
        if full_waves {
            return t;
        }
    }
    blocks.div_ceil(min_range()).min(slots)
}

/// The shortest stream-K range, in 128-K blocks (`DSV3_WGS_MIN_RANGE`, default 8, for tuning):
/// the CTA completing a split tile reads one slot per CTA that shares it, so short ranges pay that
/// read at the kernel's tail. H200, M = 16 (docs/perf/fp8_gemm.md, session 8): 2112×7168 16.8 →
/// 11.2 µs and 4096×7168 17.0 → 13.9 µs from 1 to 8 (3.6 / 6.8 blocks per CTA before), 4 in
/// between; the shapes with long ranges unchanged.
fn min_range() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MIN.get_or_init(|| std::env::var("DSV3_WGS_MIN_RANGE").ok().and_then(|v| v.parse().ok()).unwrap_or(8).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_rules() {
        use WgsFormat::*;
        // Dense, up to 8 rows: a tile per CTA or long ranges only.
        assert_eq!(dense_tile(Fp8, 1, 2112, 7168, 132), None);
        assert_eq!(dense_tile(Fp8, 1, 24576, 1536, 132), Some(WgsTile::N16));
        assert_eq!(dense_tile(Fp8, 1, 7168, 16384, 132), Some(WgsTile::N16));
        assert_eq!(dense_tile(Fp8, 9, 2112, 7168, 132), Some(WgsTile::N16));
        assert_eq!(dense_tile(Fp8, 32, 2112, 7168, 132), Some(WgsTile::N32));
        assert_eq!(dense_tile(Fp8, 64, 2112, 7168, 132), Some(WgsTile::N64));
        // 65–128 rows: two 64-token tiles where v2 leaves SMs idle and K ≥ 4096.
        assert_eq!(dense_tile(Fp8, 65, 2112, 7168, 132), Some(WgsTile::N64));
        assert_eq!(dense_tile(Fp8, 128, 7168, 16384, 132), Some(WgsTile::N64));
        assert_eq!(dense_tile(Int8Block, 128, 4096, 7168, 132), Some(WgsTile::N64));
        assert_eq!(dense_tile(Fp8, 129, 2112, 7168, 132), None);
        assert_eq!(dense_tile(Fp8, 128, 7168, 2048, 132), None);
        assert_eq!(dense_tile(Fp8, 128, 24576, 1536, 132), None);
        assert_eq!(dense_tile(Fp8, 128, 32768, 4096, 132), None);
        assert_eq!(dense_tile(Int8Channel, 128, 2112, 7168, 132), None);
        assert_eq!(dense_tile(Awq, 128, 2112, 7168, 132), None);
        assert_eq!(dense_tile(Int8Channel, 17, 2112, 7168, 132), Some(WgsTile::N32));
        assert_eq!(dense_tile(Awq, 17, 2112, 7168, 132), Some(WgsTile::N64));
        assert_eq!(dense_tile(Int8Channel, 64, 7168, 2048, 132), Some(WgsTile::N64));
        assert_eq!(dense_tile(Int8Channel, 64, 24576, 1536, 132), None);
        assert_eq!(dense_tile(Int8Channel, 16, 24576, 1536, 132), Some(WgsTile::N16));
        assert_eq!(dense_tile(Int8Block, 64, 2112, 7168, 132), Some(WgsTile::N64));
        assert_eq!(dense_tile(Awq, 1, 24576, 1536, 132), None);
        assert_eq!(dense_tile(Awq, 16, 24576, 1536, 132), Some(WgsTile::N16));
        // AWQ's zeros are TMA-copied: N % 32 == 0 only (kv_a's 576 fits; 200 does not).
        assert_eq!(dense_tile(Awq, 16, 576, 7168, 132), Some(WgsTile::N16));
        assert_eq!(dense_tile(Awq, 16, 200, 1024, 132), None);
        assert_eq!(dense_tile(Awq, 64, 136, 1024, 132), None);
        assert_eq!(dense_tile(Fp8, 16, 200, 1024, 132), Some(WgsTile::N16));
        assert!(awq_wgs_fits(2112) && awq_wgs_fits(7168) && !awq_wgs_fits(8) && !awq_wgs_fits(264));
        // MoE: 8 tokens at top-8 and up; AWQ at 16–32 rows per expert.
        assert_eq!(moe_tile(Fp8, 8, 256), None);
        assert_eq!(moe_tile(Fp8, 128, 32), Some(WgsTile::N16));
        assert_eq!(moe_tile(Fp8, 512, 32), Some(WgsTile::N32));
        assert_eq!(moe_tile(Fp8, 4096, 256), Some(WgsTile::N32));
        assert_eq!(moe_tile(Int8Block, 512, 32), None);
        assert_eq!(moe_tile(Fp8, 1024, 32), Some(WgsTile::N64));
        assert_eq!(moe_tile(Fp8, 4096, 32), None);
        assert_eq!(moe_tile(Int8Channel, 512, 32), None);
        assert_eq!(moe_tile(Awq, 128, 32), None);
        assert_eq!(moe_tile(Awq, 512, 32), Some(WgsTile::N64));
    }

    #[test]
    fn tiles() {
        use WgsFormat::*;
        assert_eq!(WgsTile::for_rows(Fp8, 1), Some(WgsTile::N16));
        assert_eq!(WgsTile::for_rows(Fp8, 17), Some(WgsTile::N32));
        assert_eq!(WgsTile::for_rows(Int8Channel, 32), Some(WgsTile::N32));
        assert_eq!(WgsTile::for_rows(Awq, 17), Some(WgsTile::N64));
        assert_eq!(WgsTile::for_rows(Fp8, 33), Some(WgsTile::N64));
        assert_eq!(WgsTile::for_rows(Fp8, 64), Some(WgsTile::N64));
        assert_eq!(WgsTile::for_rows(Fp8, 65), None);
        assert_eq!(WgsTile::for_expert_rows(Fp8, 4), Some(WgsTile::N16));
        assert_eq!(WgsTile::for_expert_rows(Fp8, 16), Some(WgsTile::N32));
        assert_eq!(WgsTile::for_expert_rows(Awq, 16), Some(WgsTile::N64));
        assert_eq!(WgsTile::for_expert_rows(Fp8, 32), Some(WgsTile::N64));
        assert_eq!(WgsTile::for_expert_rows(Fp8, 33), None);
        // 5 stages of 16 + 2 KB (two CTAs per SM: 2 × 93.6 KB of the 228 KB); 8 of 16 + 8 KB
        // (one): within the 227 KB a Hopper block may opt into.
        assert_eq!(WgsTile::N16.smem_bytes(), 93_600);
        assert_eq!(WgsTile::N32.smem_bytes(), 186_656);
        assert_eq!(WgsTile::N64.smem_bytes(), 199_824);
        assert!(WgsTile::ALL.iter().all(|t| t.smem_bytes() as usize * t.ctas_per_sm() <= 228 * 1024 - t.ctas_per_sm() * 1024));
        assert!(registry::kernel("fp8_gemm_wgs_e4m3fn_n64").is_some());
        assert!(registry::kernel("int8_gemm_wgs_block_n32").is_some());
        // One CTA per tile where every SM gets one and the waves are ≥ 80% full; stream-K else.
        assert_eq!(grid_for(256 * 4, Some(256), 132, 2), 256);
        assert_eq!(grid_for(192 * 12, Some(192), 132, 2), 192);
        assert_eq!(grid_for(192 * 12, Some(192), 132, 1), 132);
        assert_eq!(grid_for(256 * 4, Some(256), 132, 1), 256);
        // Stream-K ranges of at least 8 blocks (min_range's default).
        assert_eq!(grid_for(17 * 56, Some(17), 132, 2), 119);
        assert_eq!(grid_for(10, Some(10), 132, 2), 2);
        assert_eq!(grid_for(5000, None, 132, 2), 264);
        assert!(registry::kernel("int8_gemm_wgs_channel_n16").is_some());
    }

    #[test]
    fn awq_tiles() {
        // AwqWgsSmem<NT, G>::BYTES: NT 16: 15 stages of 12 KB + 384 / 640 bytes of scales and
        // zeros (G 128 / 64); NT 64: 7 of 24 KB + the same.
        assert_eq!(WgsTile::N16.awq_smem_bytes(128), 191_360);
        assert_eq!(WgsTile::N16.awq_smem_bytes(64), 195_200);
        assert_eq!(WgsTile::N64.awq_smem_bytes(128), 175_872);
        assert_eq!(WgsTile::N64.awq_smem_bytes(64), 177_664);
        for g in [64, 128] {
            for &t in WgsTile::of(WgsFormat::Awq) {
                assert!(t.awq_smem_bytes(g) <= 227 * 1024);
                assert!(registry::kernel(&format!("awq_gemm_wgs_g{g}_n{}", t.nt())).is_some(), "{t:?} g{g}");
            }
            assert!(registry::kernel(&format!("awq_gemm_wgs_g{g}_n32")).is_none());
        }
    }
}
