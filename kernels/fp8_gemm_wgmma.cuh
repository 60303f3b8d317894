// sm_90a variant of the FP8 block-scaled GEMM (kernels/fp8_gemm.cuh): same arguments, same
// split-K and grouped modes, same cp.async loader and swizzled shared memory, but the MMAs are
// Hopper warpgroup MMAs (dsv3/sm90.h): two warpgroups each issue wgmma.m64n128k32 e4m3 (A and B
// from shared memory through descriptors) per 32-wide K step of a 128 × 128 CTA tile.
// kernels/fp8_gemm_wgmma2.cuh is its successor (TMA, warp-specialized, persistent).
//
// The loader's layout (16-byte chunk c of a 128-byte row r stored at c ^ (r & 7)) is the 128-byte
// swizzle of the wgmma descriptors (K-major, 8-row atoms of 1024 bytes, SBO = 1024): stage bases
// are aligned to 1024 bytes, and the k32 steps advance the descriptors' start address by 32 bytes.
// cp.async writes are made visible to the tensor cores' async proxy with fence.proxy.async.
//
// Elsewhere (compute_80 / compute_89 PTX, NVRTC for compute_90, HIP) the entry point runs the
// mma.sync BM-128 kernel or the generic path, so every variant computes the same function.
#pragma once
#include "dsv3/dsv3.h"
#include "fp8_gemm.cuh"

namespace dsv3 {

// Dynamic smem of the wgmma entry: 4 stages of (128 + 128) × 128 bytes plus 1 KB for alignment.
constexpr int FP8G_WG_STAGES = 4;
constexpr int FP8G_WG_SMEM = FP8G_WG_STAGES * (128 + FP8G_BN) * FP8G_BK + 1024;

#if defined(DSV3_SM90A)
DSV3_DEV void fp8_gemm_wg(const Fp8GemmArgs& g) {
  constexpr int BM = 128, BN = FP8G_BN, BK = FP8G_BK, STAGES = FP8G_WG_STAGES, THREADS = 256;
  constexpr int A_BYTES = BM * BK, STAGE = (BM + BN) * BK;
  extern __shared__ __attribute__((aligned(1024))) u8 fp8g_smem[];

  BgCta c;
  if (!bg_cta<BM>(g, true, c)) return;
  const u32 N = g.N, K = g.K;
  const u32 t = tid();

  constexpr int A_PER = BM * 8 / THREADS, B_PER = BN * 8 / THREADS;
  const u8* a_src[A_PER];
  u32 a_dst[A_PER];
  bool a_ok[A_PER];
#pragma unroll
  for (int i = 0; i < A_PER; ++i) {
    const u32 e = t + i * THREADS, r = e / 8, ch = e % 8;
    const i64 ar = bg_a_row(g, c.m0 + r, c.m_end);
    a_ok[i] = ar >= 0;
    a_src[i] = g.a + (ar >= 0 ? (u64)ar * K : 0) + ch * 16;
    a_dst[i] = r * BK + ((ch ^ (r & 7)) << 4);
  }
  const u8* b_src[B_PER];
  u32 b_dst[B_PER];
  bool b_ok[B_PER];
#pragma unroll
  for (int i = 0; i < B_PER; ++i) {
    const u32 e = t + i * THREADS, r = e / 8, ch = e % 8;
    b_ok[i] = c.n0 + r < N;
    b_src[i] = c.b + (b_ok[i] ? (u64)(c.n0 + r) * K : 0) + ch * 16;
    b_dst[i] = A_BYTES + r * BK + ((ch ^ (r & 7)) << 4);
  }
  const u32 smem0 = smem_base_1024(fp8g_smem).addr;
  auto load_stage = [&](u32 kt, u32 stage) {
    const u32 kbase = kt * BK, sbase = smem0 + stage * STAGE;
#pragma unroll
    for (int i = 0; i < A_PER; ++i) {
      const u32 ch = (t + i * THREADS) % 8;
      const bool ok = a_ok[i] && kbase + ch * 16 < K;
      cp_async_16(sbase + a_dst[i], ok ? (const void*)(a_src[i] + kbase) : (const void*)g.a, ok);
    }
#pragma unroll
    for (int i = 0; i < B_PER; ++i) {
      const u32 ch = (t + i * THREADS) % 8;
      const bool ok = b_ok[i] && kbase + ch * 16 < K;
      cp_async_16(sbase + b_dst[i], ok ? (const void*)(b_src[i] + kbase) : (const void*)g.b, ok);
    }
  };

  // Warpgroup wg owns rows [64 wg, 64 wg + 64); thread rows 16 w + grp and + 8 of it.
  const u32 wg = t / 128, w = (t % 128) / 32, ln = t % 32, grp = ln / 4, tig = ln % 4;
  const u32 rbase = c.m0 + wg * 64 + w * 16 + grp;
  const i32 srow0 = (i32)bg_a_row(g, rbase, c.m_end), srow1 = (i32)bg_a_row(g, rbase + 8, c.m_end);

  float acc[64], part[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

  const u32 nk = c.kt1 > c.kt0 ? c.kt1 - c.kt0 : 0;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if ((u32)s < nk) load_stage(c.kt0 + s, s);
    cp_async_commit();
  }
  for (u32 it = 0; it < nk; ++it) {
    cp_async_wait<STAGES - 2>();
    fence_proxy_async();
    __syncthreads();
    {
      const u32 nx = it + STAGES - 1;
      if (nx < nk) load_stage(c.kt0 + nx, nx % STAGES);
      cp_async_commit();
    }
    const u32 kt = c.kt0 + it;
    const float sb = c.b_scale[kt];
    const float s0 = (srow0 >= 0 ? g.a_scales[(u64)srow0 * c.sk + kt] : 0.0f) * sb;
    const float s1 = (srow1 >= 0 ? g.a_scales[(u64)srow1 * c.sk + kt] : 0.0f) * sb;
    const u32 sbase = smem0 + (it % STAGES) * STAGE;
    wgmma_fence();
    wgmma_m64n128k32_e4m3<false>(part, wgmma_desc_sw128(sbase + wg * 64 * BK), wgmma_desc_sw128(sbase + A_BYTES));
#pragma unroll
    for (int ks = 1; ks < BK / 32; ++ks) {
      const u64 da = wgmma_desc_sw128(sbase + wg * 64 * BK + ks * 32);
      const u64 db = wgmma_desc_sw128(sbase + A_BYTES + ks * 32);
      wgmma_m64n128k32_e4m3<true>(part, da, db);
    }
    wgmma_commit();
    wgmma_wait<0>();
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      acc[4 * j + 0] += part[4 * j + 0] * s0;
      acc[4 * j + 1] += part[4 * j + 1] * s0;
      acc[4 * j + 2] += part[4 * j + 2] * s1;
      acc[4 * j + 3] += part[4 * j + 3] * s1;
    }
  }
  cp_async_wait<0>();

  // Fragment j: cols n0 + 8 j + 2 tig (+1); regs 0,1 → row rbase, regs 2,3 → row rbase + 8.
  if (g.splits == 1) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const u32 r = rbase + h * 8;
      if (r >= c.m_end) continue;
      bf16* orow = g.out + (u64)r * N;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const u32 n = c.n0 + j * 8 + 2 * tig;
        const float v0 = acc[4 * j + 2 * h], v1 = acc[4 * j + 2 * h + 1];
        if (n + 1 < N && (N % 2 == 0)) {
          *reinterpret_cast<u32*>(orow + n) = (u32)f32_to_bf16(v0).bits | ((u32)f32_to_bf16(v1).bits << 16);
        } else {
          if (n < N) orow[n] = f32_to_bf16(v0);
          if (n + 1 < N) orow[n + 1] = f32_to_bf16(v1);
        }
      }
    }
    return;
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const u32 r = rbase + h * 8;
    if (r >= c.m_end) continue;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const u32 n = c.n0 + j * 8 + 2 * tig;
      if (n < N) atomicAdd(g.ws + (u64)r * N + n, acc[4 * j + 2 * h]);
      if (n + 1 < N) atomicAdd(g.ws + (u64)r * N + n + 1, acc[4 * j + 2 * h + 1]);
    }
  }
  const u32 tile_id = c.mt_idx * gridDim.x + c.nt_idx;
  if (bg_last_split(g, tile_id)) bg_finish_split<BM>(g, tile_id, c.m0, c.m_end, c.n0);
}
#endif  // DSV3_SM90A

// Entry: grid (ceil(N/128), ceil(M/128) or tiles, splits), block 256, dynamic smem FP8G_WG_SMEM.
template <class F8>
DSV3_DEV void fp8_gemm_wgmma(bf16* out, const F8* a, const float* a_scales, const F8* b, const float* b_scale, float* ws,
                             u32* counters, const i32* row_ids, const i32* tile_expert, const i32* num_tiles, u32 M,
                             u32 N, u32 K, u32 a_row_div, u32 splits) {
#if defined(DSV3_SM90A)
  if constexpr (Fp8IsFn<F8>::value) {
    const Fp8GemmArgs g = bg_args(out, a, a_scales, b, b_scale, ws, counters, row_ids, tile_expert, num_tiles, M, N, K,
                                  a_row_div, splits);
    fp8_gemm_wg(g);
    return;
  }
#endif
  fp8_gemm<F8, 128>(out, a, a_scales, b, b_scale, ws, counters, row_ids, tile_expert, num_tiles, M, N, K, a_row_div,
                    splits);
}

}  // namespace dsv3
