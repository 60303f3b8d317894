// Simple tiled GEMM (the first correct version; fast ones are separate kernels):
//   C[M, N] = alpha * A[M, K] · B[N, K]^T (+ beta * C), f32 accumulation.
// B is a Linear weight [out, in]; when it is float8, b_scale holds its 128x128 block scales
// [ceil(N/128), ceil(K/128)] and is applied as the tile is loaded (b_scale is ignored otherwise).
// Block: 256 threads, tile BM x BN, each thread a 4x4 sub-tile. beta == 0 never reads C.
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

template <class T> struct IsFp8 { static constexpr bool value = false; };
template <> struct IsFp8<e4m3fn> { static constexpr bool value = true; };
template <> struct IsFp8<e4m3fnuz> { static constexpr bool value = true; };

// Computes the tile of C with rows [m0, min(m0 + BM, m_end)) and columns [n0, n0 + BN) ∩ [0, N).
template <class TA, class TB, class TO, int BM, int BN, int BK>
DSV3_DEV void gemm_tile(TO* C, const TA* DSV3_RESTRICT A, const TB* DSV3_RESTRICT B,
                        const float* DSV3_RESTRICT b_scale, u32 m0, u32 m_end, u32 n0, u32 N, u32 K,
                        u32 lda, u32 ldb, u32 ldc, float alpha, float beta) {
  static_assert(BM == 64 && BN == 64, "thread mapping assumes 64x64 tiles and 256 threads");
  __shared__ float As[BK][BM + 4];
  __shared__ float Bs[BK][BN + 4];
  const u32 t = tid();
  const u32 ty = t / 16, tx = t % 16;
  const u32 sk = ceil_div(K, 128);
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

  for (u32 k0 = 0; k0 < K; k0 += BK) {
    for (u32 i = t; i < BM * BK; i += 256) {
      const u32 r = i / BK, kk = i % BK;
      const u32 m = m0 + r, k = k0 + kk;
      As[kk][r] = (m < m_end && k < K) ? to_float(A[(u64)m * lda + k]) : 0.0f;
    }
    for (u32 i = t; i < BN * BK; i += 256) {
      const u32 r = i / BK, kk = i % BK;
      const u32 n = n0 + r, k = k0 + kk;
      float v = 0.0f;
      if (n < N && k < K) {
        v = to_float(B[(u64)n * ldb + k]);
        if (IsFp8<TB>::value) v *= b_scale[(u64)(n / 128) * sk + k / 128];
      }
      Bs[kk][r] = v;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx * 4 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const u32 m = m0 + ty * 4 + i;
    if (m >= m_end) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const u32 n = n0 + tx * 4 + j;
      if (n >= N) continue;
      float v = alpha * acc[i][j];
      TO* c = C + (u64)m * ldc + n;
      if (beta != 0.0f) v += beta * to_float(*c);
      *c = from_float<TO>(v);
    }
  }
}

// grid: (ceil(N / 64), ceil(M / 64), batch), block: 256. Batch z reads A + z·stride_a, B + z·stride_b
// and writes C + z·stride_c (elements): MLA's per-head products (q_nope·W_uk, o_lat·W_uvᵀ) are one
// launch over the heads. float8 B is not batched (its block scales have no batch stride).
template <class TA, class TB, class TO, int BM, int BN, int BK>
DSV3_DEV void gemm_nt(TO* C, const TA* A, const TB* B, const float* b_scale, u32 M, u32 N, u32 K, u32 lda,
                      u32 ldb, u32 ldc, u64 stride_a, u64 stride_b, u64 stride_c, float alpha, float beta) {
  const u32 m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  if (m0 >= M) return;
  const u64 z = blockIdx.z;
  gemm_tile<TA, TB, TO, BM, BN, BK>(C + z * stride_c, A + z * stride_a, B + z * stride_b, b_scale, m0, M, n0, N, K,
                                    lda, ldb, ldc, alpha, beta);
}

}  // namespace dsv3
