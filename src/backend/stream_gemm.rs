//! The weight-streaming ("swap AB") GEMM for small M (kernels/stream_gemm.cuh): FP8 block-scaled,
//! INT8 block / channel and AWQ W4A16 weights, dense and grouped by expert. It takes the tiled
//! GEMMs' arguments and computes their function (same scales, split-K workspace, grouped rows), so
//! it is one more M tile of them: [`super::fp8_gemm::Fp8Tile::Stream`] and
//! [`super::quant_gemm::QuantTile::Stream`], launched by the same code and chosen by their plans
//! for M ≤ [`STREAM_MAX_ROWS`] rows per M tile.
//!
//! The threshold is measured (H200, 2026-11-28, docs/perf/fp8_gemm.md): the 8-row tile is level
//! with the tiled kernels' BM 16 at M = 1 on FP8 / INT8 (0.9–1.1×) and 10–20% faster on AWQ and on
//! the TP-8 MoE at 1–16 tokens; the 64-row tile is 1.2–2× slower than BM 16 / 64 from M = 16 on
//! (issue-bound: sm_90a runs FP8 mma.sync as f16 HMMAs plus conversions, and a weight row per
//! 16-byte load costs register moves per MMA), so the plans take the streaming kernel only up to
//! 8 rows, and only for dense GEMMs (the grouped MoE GEMMs measured slower on it at 16+ tokens);
//! the 64-row tile stays for the tests and the bench's comparison rows.

use super::types::Vendor;

/// Most rows per M tile the streaming kernel is planned for (see the module comment).
pub const STREAM_MAX_ROWS: usize = 8;

/// Token rows per M tile of the streaming kernel (`stream_gemm_*_t{8,64}`): 8 for a decode step
/// of up to 8 tokens (or an expert with few), 64 up to [`STREAM_MAX_ROWS`]; token groups of 8
/// past a tile's last valid row are skipped at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamTile {
    T8,
    T64,
}

impl StreamTile {
    pub const ALL: [StreamTile; 2] = [StreamTile::T8, StreamTile::T64];

    pub fn bm(self) -> usize {
        match self {
            StreamTile::T8 => 8,
            StreamTile::T64 => 64,
        }
    }

    /// Short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            StreamTile::T8 => "st8",
            StreamTile::T64 => "st64",
        }
    }

    /// The tile for `rows` rows per M tile; `None` above [`STREAM_MAX_ROWS`].
    pub fn for_rows(rows: usize) -> Option<StreamTile> {
        (rows <= STREAM_MAX_ROWS).then_some(StreamTile::T8)
    }

    /// CTAs per SM assumed when sizing split-K (ptxas -v, docs/perf/fp8_gemm.md): the 64-row FP8
    /// kernel takes 174 registers on sm_90a (one 256-thread CTA), the 8-row ones ≤ 116 (two).
    /// AWQ (session 5: weights through shared memory) takes 63 / 105 registers and 52 / 82 KB,
    /// so up to 4 / 2 CTAs fit; split-K keeps the same counts (two 8-row CTAs per SM already keep
    /// ≈ 57 KB of weights in flight per SM, docs/perf/quant_gemm.md).
    pub fn occupancy(self) -> usize {
        match self {
            StreamTile::T8 => 2,
            StreamTile::T64 => 1,
        }
    }

    /// Dynamic shared memory of one 8-bit (FP8 / INT8) CTA on `vendor` (mirrors
    /// `StreamCfg<BM, Stream8>::SMEM`: two buffers of BM staged activation rows of 4 K tiles + 64
    /// bytes and their 4 × BM f32 scales; HIP runs the tiled 8-bit loop, block_gemm_mfma or
    /// block_gemm_generic: one stage, (BM + 128) · 128).
    pub fn smem_bytes(self, vendor: Vendor) -> u32 {
        let bm = self.bm();
        let bytes = match vendor {
            Vendor::Cuda => 2 * (bm * (4 * 128 + 64) + 4 * bm * 4),
            Vendor::Hip => (bm + 128) * 128,
        };
        bytes as u32
    }

    /// The same for AWQ (mirrors `AwqStreamCfg<BM>::SMEM` in kernels/stream_gemm.cuh): NA
    /// buffers of the BM token rows of CH K tiles (rows CH · 128 + 16 bytes apart) and, per warp,
    /// NS = PF + 1 weight stages of 560 bytes (a K tile's 512 bytes of words, its zero points and
    /// scales): BM 8: PF 7, CH 8, NA 2; BM 64: PF 5, CH 1, NA 6. HIP runs awq_gemm_mfma (`AwqSmem`:
    /// one stage of BM × 128 + 4 KB; the generic loop of HIP targets without MFMA uses none).
    pub fn awq_smem_bytes(self, vendor: Vendor) -> u32 {
        let (pf, ch): (usize, usize) = match self {
            StreamTile::T8 => (7, 8),
            StreamTile::T64 => (5, 1),
        };
        let na = 1 + pf.div_ceil(ch);
        match vendor {
            Vendor::Cuda => (na * self.bm() * (ch * 128 + 16) + 8 * (pf + 1) * 560) as u32,
            Vendor::Hip => ((self.bm() + 32) * 128) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles() {
        assert_eq!(StreamTile::for_rows(1), Some(StreamTile::T8));
        assert_eq!(StreamTile::for_rows(8), Some(StreamTile::T8));
        assert_eq!(StreamTile::for_rows(9), None);
        // 2 × (64 × 576 + 1024) bytes.
        assert_eq!(StreamTile::T64.smem_bytes(Vendor::Cuda), 75_776);
        assert_eq!(StreamTile::T8.smem_bytes(Vendor::Cuda), 9_472);
        assert_eq!(StreamTile::T8.smem_bytes(Vendor::Hip), 17_408);
        // AWQ: 2 × 8 × 1040 + 8 × 8 × 560; 6 × 64 × 144 + 8 × 6 × 560.
        assert_eq!(StreamTile::T8.awq_smem_bytes(Vendor::Cuda), 52_480);
        assert_eq!(StreamTile::T64.awq_smem_bytes(Vendor::Cuda), 82_176);
        assert_eq!(StreamTile::T64.awq_smem_bytes(Vendor::Hip), 12_288);
    }
}
