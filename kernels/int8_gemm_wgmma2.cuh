// sm_90a INT8 (W8A8) GEMM, v2: the function of kernels/quant_gemm.cuh's int8_gemm<BM, MODE> (same
// operands, dense and grouped modes; no split-K) on the persistent, warp-specialized TMA + wgmma
// pipeline of kernels/fp8_gemm_wgmma2.cuh (`wg2_gemm<Op>`), instantiated with an s8 policy:
//
// - MMA: wgmma.mma_async m64n128k32.s32.s8.s8 (4 per 128-K block and warpgroup), exact s32 partial
//   sums: |Σ over 128 K of s8·s8| ≤ 128³ = 2^21.
// - Promotion: total += f32(partial) · scale, the conversion exact (|x| < 2^22) as
//   bits(x + 0x4B400000) − 1.5·2^23 (an integer add and a float add, full-rate pipes) instead of
//   I2F (16 / clock / SM on Hopper: 64 × 128 per block and warpgroup would take twice as long as
//   the block's MMAs).
// - MODE 0 (block INT8): the producer's per-stage scale of tile row r is s_a[row, kb] · s_w[expert]
//   [nb, kb] exactly as FP8 (a_scales [M, ⌈K/128⌉], b_scale [E][⌈N/128⌉][⌈K/128⌉]).
// - MODE 1 (channel INT8, w8a8_int8): the per-stage scale is s_a[row] for every kb and the
//   epilogue multiplies output column n by s_w[expert][n] (a_scales [M], b_scale [E][N]). Each
//   block's s32 sum is exact; summing them in f32 (instead of the mma.sync kernel's one s32 sum
//   over K) adds a rounding of ~2^-24 relative per block, far below the bf16 output's 2^-9.
//
// Operand bytes are 1-byte elements like e4m3, so the TMA boxes (128 rows × 128 bytes, 128-byte
// swizzle), the cp.async gather of MoE rows and every shared-memory offset are FP8's.
// Off sm_90a the entry traps: the host launches it only where the sm_90a cubin is loaded
// (src/backend/quant_gemm.rs).
#pragma once
#include "fp8_gemm_wgmma2.cuh"

namespace dsv3 {

#if defined(DSV3_SM90A)
// Channel scales: s_a[row] for every k block (a padding row: 0).
struct Wg2RowScales {
  const float* a;
  DSV3_DEV Wg2RowScales(const BlockGemmArgs& g, i64 arow, u32, u32, u32, u32)
      : a(arow >= 0 ? g.a_scales + arow : nullptr) {}
  DSV3_DEV void load(u32, float& x, float& y) const {
    x = a != nullptr ? *a : 0.0f;
    y = 1.0f;
  }
};

// Channel weight scales s_w[expert][n] (0 past N) of the thread's 32 fragment columns, loaded
// at once before the epilogue's shared-memory stores (which the loads could not be moved past).
struct Wg2ChannelColumns {
  float v[16][2];
  DSV3_DEV Wg2ChannelColumns(const BlockGemmArgs& g, u32 expert, u32 nt, u32 q) {
    const float* w = g.b_scale + (u64)expert * g.N;
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const u32 n = nt * 128 + j * 8 + 2 * q + e;
        v[j][e] = n < g.N ? w[n] : 0.0f;
      }
  }
  DSV3_DEV float at(int j, int e) const { return v[j][e]; }
};

// s8 × s8 into s32.
struct Wg2S8Mma {
  using Acc = i32;
  template <bool ACC> DSV3_DEV static void mma(i32 (&d)[64], u64 da, u64 db) { wgmma_m64n128k32_s8(d, da, db, ACC); }
  // A block's first step, continuing the sum of the earlier blocks unless `fresh` (WHOLE_K).
  DSV3_DEV static void mma_first(i32 (&d)[64], u64 da, u64 db, bool fresh) { wgmma_m64n128k32_s8(d, da, db, !fresh); }
  // One 128-K block's sum (|x| ≤ 2^21) as f32, exactly, without I2F.
  DSV3_DEV static float to_f32(i32 x) { return __uint_as_float((u32)(x + 0x4B400000)) - 12582912.0f; }
  // A whole-K sum (up to 2^31) as f32 (rounded: once per output, not per block).
  DSV3_DEV static float sum_to_f32(i32 x) { return __int2float_rn(x); }
};

template <int MODE> struct Wg2S8;
template <> struct Wg2S8<int8_block> : Wg2S8Mma {
  static constexpr bool WHOLE_K = false;
  using Scales = Wg2BlockScales;
  using Columns = Wg2NoColumns;
};
// Channel scales do not change along K: the s32 accumulators sum all of K (|Σ| < 2^31 up to
// K ≈ 133k) and the tile is converted and scaled once, with no per-block promotion.
template <> struct Wg2S8<int8_channel> : Wg2S8Mma {
  static constexpr bool WHOLE_K = true;
  using Scales = Wg2RowScales;
  using Columns = Wg2ChannelColumns;
};
#endif  // DSV3_SM90A

// Entry: grid (min(SMs, tiles)), block 384, dynamic smem Wg2Smem::BYTES. tmap_a: 2-D map of a
// [rows, K] (unused when row_ids gathers); tmap_b: 3-D map of b [E, N, K] (E = 1 dense).
template <int MODE, int CL>
DSV3_DEV void int8_gemm_wgmma2(bf16* out, const TmaMap& tmap_a, const TmaMap& tmap_b, const i8* a,
                               const float* a_scales, const float* b_scale, const i32* row_ids, const i32* tile_expert,
                               const i32* num_tiles, u32 M, u32 N, u32 K, u32 a_row_div) {
#if defined(DSV3_SM90A)
  wg2_gemm<Wg2S8<MODE>, CL>(bg_args(out, a, a_scales, nullptr, b_scale, nullptr, nullptr, row_ids, tile_expert, num_tiles,
                                M, N, K, a_row_div, 1),
                        tmap_a, tmap_b);
#else
  trap();
#endif
}

}  // namespace dsv3
