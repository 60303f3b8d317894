// FP8 block-scaled GEMM (DeepSeek-V3 linears), dense and grouped by expert:
//
//   out[m, n] (bf16) = Σ_kb  s_a[m, kb] · s_b[n/128, kb] · Σ_{k in block kb} a[m, k] · b[n, k]
//
// a: e4m3 [M, K] with per-token-group scales a_scales [M, ceil(K/128)]; b: e4m3 [N, K] (a Linear
// weight [out, in]) with 128×128 block scales b_scale [ceil(N/128), ceil(K/128)] (weight_scale_inv).
// Each 128-wide K block is accumulated in f32 by the tensor cores, then promoted into the f32
// result with s_a·s_b (DESIGN §5). Edge blocks may be partial in N and K (K % 16 == 0: 16-byte
// rows for cp.async).
//
// One CTA computes a BM × 128 tile of out (BN = 128 = the weight's scale block, so s_b is one
// number per K block). K is walked in 128-byte tiles through a STAGES-deep cp.async pipeline into
// XOR-swizzled shared memory (16-byte chunk c of row r lives at chunk c ^ (r & 7): ldmatrix reads
// 8 rows of one chunk without bank conflicts). Warps read fragments with ldmatrix.x4 and issue
//   sm_89+ (compute_89 PTX, sm_90a SASS): mma.sync.m16n8k32 e4m3·e4m3 → f32;
//   sm_80 (compute_80 PTX): the same e4m3 fragments widened in registers to f16 (exact: an e4m3
//     code shifted into an f16 is the value · 2^-8, subnormals included) and two mma.sync.m16n8k16
//     f16 per k32 step; the 2^16 is folded into the promotion scale. (A100 serves FP8 weights.)
//   HIP gfx942 / gfx90a (e4m3fn or e4m3fnuz): block_gemm_mfma (kernels/block_gemm.cuh), the same
//     block-scaled contract on matrix cores: gfx942 v_mfma_f32_16x16x32_fp8_fp8 on e4m3fnuz (e4m3fn
//     operands made fnuz bits when stored in shared memory: 0x80 → 0, ×4 folded into the weight
//     scale); gfx90a (no FP8 MFMA) widens the codes exactly to f16 and runs
//     v_mfma_f32_16x16x16f16. Compiled, not run on AMD hardware (docs/perf/fp8_gemm.md, "HIP MFMA").
//   Other HIP targets, and e4m3fnuz on NVIDIA: a generic shared-memory tile loop in f32.
//
// Split-K (small M: weights stream from many SMs at once): blockIdx.z takes a contiguous range of
// K tiles; partial tiles are added into an f32 workspace `ws` [rows, N] with atomics, and the last
// CTA of an output tile (counted in `counters`, one per (m tile, n tile)) converts the sum to bf16,
// then re-zeroes its workspace tile and its counter, so `ws` and `counters` stay zero between
// launches (zero them once at allocation). splits == 1 writes bf16 directly and touches neither.
//
// Grouped (fused MoE): with `tile_expert` non-null, M tile t belongs to expert tile_expert[t]
// (b, b_scale offset by that expert) and only tiles < *num_tiles run; with `row_ids` non-null,
// row r of the tile reads a-row row_ids[r] / a_row_div (−1: a padding row, read as zeros); out
// rows are the padded rows r. Tiles never straddle experts (moe_align_tiles pads each expert's
// rows to BM).
#pragma once
#include "dsv3/dsv3.h"
#include "block_gemm.cuh"

namespace dsv3 {

// The tile machinery (loader, fragments, split-K, grouping, epilogue) and the float8 MMA policy
// live in block_gemm.cuh, shared with the INT8 GEMM (kernels/quant_gemm.cuh) and the
// weight-streaming GEMM (kernels/stream_gemm.cuh).
template <int BM_> using Fp8GemmCfg = BlockGemmCfg<BM_>;
using Fp8GemmArgs = BlockGemmArgs;
constexpr int FP8G_BN = BG_BN;
constexpr int FP8G_BK = BG_BK;

// Dynamic shared memory of one CTA (the Rust dispatch computes the same numbers).
template <int BM> struct Fp8GemmSmem {
  static constexpr int STAGE = (BM + FP8G_BN) * FP8G_BK;
#if defined(DSV3_HIP)
  static constexpr int BYTES = STAGE;
#else
  static constexpr int BYTES = STAGE * Fp8GemmCfg<BM>::STAGES;
#endif
};

template <class F8> struct Fp8IsFn { static constexpr bool value = false; };
template <> struct Fp8IsFn<e4m3fn> { static constexpr bool value = true; };

// Entry: grid (ceil(N/128), M tiles, splits), block 32·WARPS_M·WARPS_N (CUDA, e4m3fn) or 256
// (HIP, generic), dynamic smem Fp8GemmSmem<BM>::BYTES (HIP, generic: one stage, (BM + 128) · 128).
template <class F8, int BM>
DSV3_DEV void fp8_gemm(bf16* out, const F8* a, const float* a_scales, const F8* b, const float* b_scale, float* ws,
                       u32* counters, const i32* row_ids, const i32* tile_expert, const i32* num_tiles, u32 M, u32 N,
                       u32 K, u32 a_row_div, u32 splits) {
  const BlockGemmArgs g =
      bg_args(out, a, a_scales, b, b_scale, ws, counters, row_ids, tile_expert, num_tiles, M, N, K, a_row_div, splits);
#if defined(DSV3_CUDA)
  if constexpr (Fp8IsFn<F8>::value) {
    block_gemm_mma<BM, Fp8MmaOp>(g);
  } else {
    block_gemm_generic<Fp8Dec<F8>, true, BM>(g);
  }
#elif defined(DSV3_MFMA)
  block_gemm_mfma<BM, Fp8MfmaOp<Fp8IsFn<F8>::value>>(g);
#else
  block_gemm_generic<Fp8Dec<F8>, true, BM>(g);
#endif
}

}  // namespace dsv3
