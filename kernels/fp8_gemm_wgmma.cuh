// sm_90a variant of the FP8 block-scaled GEMM (kernels/fp8_gemm.cuh): same arguments, same
// split-K and grouped modes, same cp.async loader and swizzled shared memory, but the MMAs are
// Hopper warpgroup MMAs: two warpgroups each issue wgmma.m64n128k32 e4m3 (A and B from shared
// memory through descriptors) per 32-wide K step of a 128 × 128 CTA tile.
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

#if defined(DSV3_CUDA) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
DSV3_DEV void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
DSV3_DEV void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
DSV3_DEV void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
DSV3_DEV void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

// K-major operand, 128-byte swizzle, 8-row atoms 1024 bytes apart.
DSV3_DEV u64 wgmma_desc_sw128(u32 addr) {
  u64 d = (u64)((addr & 0x3ffffu) >> 4);
  d |= (u64)1 << 16;             // leading byte offset (unused for swizzled K-major)
  d |= (u64)(1024 >> 4) << 32;   // stride byte offset
  d |= (u64)1 << 62;             // 128-byte swizzle
  return d;
}

DSV3_DEV void wgmma_m64n128k32_e4m3(float d[64], u64 da, u64 db, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(scale_d));
}

DSV3_DEV void fp8_gemm_wg(const Fp8GemmArgs& g) {
  constexpr int BM = 128, BN = FP8G_BN, BK = FP8G_BK, STAGES = FP8G_WG_STAGES, THREADS = 256;
  constexpr int A_BYTES = BM * BK, STAGE = (BM + BN) * BK;
  extern __shared__ __attribute__((aligned(1024))) u8 fp8g_smem[];

  const u32 nt_idx = blockIdx.x, mt_idx = blockIdx.y, split = blockIdx.z;
  u32 expert, m_end;
  if (!bg_tile(g, mt_idx, BM, expert, m_end)) return;
  const u32 N = g.N, K = g.K;
  const u32 m0 = mt_idx * BM, n0 = nt_idx * BN;
  const u32 sk = (K + BK - 1) / BK, sn = (N + BN - 1) / BN;
  const u8* B = g.b + (u64)expert * N * K;
  const float* b_scale = g.b_scale + (u64)expert * sn * sk + (u64)nt_idx * sk;
  const u32 per = (sk + g.splits - 1) / g.splits;
  const u32 kt0 = split * per, kt1 = min(sk, kt0 + per);
  const u32 t = tid();

  constexpr int A_PER = BM * 8 / THREADS, B_PER = BN * 8 / THREADS;
  const u8* a_src[A_PER];
  u32 a_dst[A_PER];
  bool a_ok[A_PER];
#pragma unroll
  for (int i = 0; i < A_PER; ++i) {
    const u32 c = t + i * THREADS, r = c / 8, ch = c % 8;
    const i64 ar = bg_a_row(g, m0 + r, m_end);
    a_ok[i] = ar >= 0;
    a_src[i] = g.a + (ar >= 0 ? (u64)ar * K : 0) + ch * 16;
    a_dst[i] = r * BK + ((ch ^ (r & 7)) << 4);
  }
  const u8* b_src[B_PER];
  u32 b_dst[B_PER];
  bool b_ok[B_PER];
#pragma unroll
  for (int i = 0; i < B_PER; ++i) {
    const u32 c = t + i * THREADS, r = c / 8, ch = c % 8;
    b_ok[i] = n0 + r < N;
    b_src[i] = B + (b_ok[i] ? (u64)(n0 + r) * K : 0) + ch * 16;
    b_dst[i] = A_BYTES + r * BK + ((ch ^ (r & 7)) << 4);
  }
  const u32 smem0 = (smem_u32(fp8g_smem) + 1023u) & ~1023u;
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
  const u32 rbase = m0 + wg * 64 + w * 16 + grp;
  const i32 srow0 = (i32)bg_a_row(g, rbase, m_end), srow1 = (i32)bg_a_row(g, rbase + 8, m_end);

  float acc[64], part[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

  const u32 nk = kt1 > kt0 ? kt1 - kt0 : 0;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if ((u32)s < nk) load_stage(kt0 + s, s);
    cp_async_commit();
  }
  for (u32 it = 0; it < nk; ++it) {
    cp_async_wait<STAGES - 2>();
    fence_proxy_async();
    __syncthreads();
    {
      const u32 nx = it + STAGES - 1;
      if (nx < nk) load_stage(kt0 + nx, nx % STAGES);
      cp_async_commit();
    }
    const u32 kt = kt0 + it;
    const float sb = b_scale[kt];
    const float s0 = (srow0 >= 0 ? g.a_scales[(u64)srow0 * sk + kt] : 0.0f) * sb;
    const float s1 = (srow1 >= 0 ? g.a_scales[(u64)srow1 * sk + kt] : 0.0f) * sb;
    const u32 sbase = smem0 + (it % STAGES) * STAGE;
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < BK / 32; ++ks) {
      const u64 da = wgmma_desc_sw128(sbase + wg * 64 * BK + ks * 32);
      const u64 db = wgmma_desc_sw128(sbase + A_BYTES + ks * 32);
      wgmma_m64n128k32_e4m3(part, da, db, ks > 0 ? 1 : 0);
    }
    wgmma_commit();
    wgmma_wait0();
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
      if (r >= m_end) continue;
      bf16* orow = g.out + (u64)r * N;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const u32 n = n0 + j * 8 + 2 * tig;
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
    if (r >= m_end) continue;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const u32 n = n0 + j * 8 + 2 * tig;
      if (n < N) atomicAdd(g.ws + (u64)r * N + n, acc[4 * j + 2 * h]);
      if (n + 1 < N) atomicAdd(g.ws + (u64)r * N + n + 1, acc[4 * j + 2 * h + 1]);
    }
  }
  const u32 tile_id = mt_idx * gridDim.x + nt_idx;
  if (bg_last_split(g, tile_id)) bg_finish_split<BM>(g, tile_id, m0, m_end, n0);
}
#endif  // sm_90a

// Entry: grid (ceil(N/128), ceil(M/128) or tiles, splits), block 256, dynamic smem FP8G_WG_SMEM.
template <class F8>
DSV3_DEV void fp8_gemm_wgmma(bf16* out, const F8* a, const float* a_scales, const F8* b, const float* b_scale, float* ws,
                             u32* counters, const i32* row_ids, const i32* tile_expert, const i32* num_tiles, u32 M,
                             u32 N, u32 K, u32 a_row_div, u32 splits) {
#if defined(DSV3_CUDA) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (Fp8IsFn<F8>::value) {
    Fp8GemmArgs g;
    g.out = out;
    g.a = reinterpret_cast<const u8*>(a);
    g.a_scales = a_scales;
    g.b = reinterpret_cast<const u8*>(b);
    g.b_scale = b_scale;
    g.ws = ws;
    g.counters = counters;
    g.row_ids = row_ids;
    g.tile_expert = tile_expert;
    g.num_tiles = num_tiles;
    g.M = M;
    g.N = N;
    g.K = K;
    g.a_row_div = a_row_div == 0 ? 1u : a_row_div;
    g.splits = splits == 0 ? 1u : splits;
    fp8_gemm_wg(g);
    return;
  }
#endif
  fp8_gemm<F8, 128>(out, a, a_scales, b, b_scale, ws, counters, row_ids, tile_expert, num_tiles, M, N, K, a_row_div,
                    splits);
}

}  // namespace dsv3
