// The simple MoE expert path: sort (token, k) pairs by expert, gather their rows, grouped GEMM
// per expert, then a weighted combine back to tokens (a deterministic scatter-add).
//
//   moe_align:   topk_ids [P = T*K] -> expert_offsets [E+1], sorted_pairs [P] (pair index t*K+k,
//                in (expert, pair) order), pair_to_row [P] (-1 for ids outside [0, E)). One block.
//   moe_gather:  rows[r, :] = x[sorted_pairs[r] / K, :], r < expert_offsets[E]. One block per row.
//   moe_gemm:    C[r, :] = A[r, :] · W[e]^T for rows r of expert e (W [E, N, K], optional float8
//                block scales [E, ceil(N/128), ceil(K/128)]). grid (ceil(N/64), ceil(P/64), E).
//   moe_combine: out[t, :] = beta * out[t, :] + Σ_k w[t, k] * y[pair_to_row[t*K+k], :]. One block per token.
//   moe_local_ids: an expert-parallel rank's view of topk_ids: ids of its experts [first, first + count)
//                become id - first, every other id -1 (the fused MoE and moe_align skip ids outside
//                [0, count)). Grid-stride.
#pragma once
#include "dsv3/dsv3.h"
#include "gemm.cuh"

namespace dsv3 {

DSV3_DEV void moe_align(i32* DSV3_RESTRICT expert_offsets, i32* DSV3_RESTRICT sorted_pairs,
                        i32* DSV3_RESTRICT pair_to_row, const i32* DSV3_RESTRICT topk_ids, u32 num_pairs,
                        u32 num_experts) {
  for (u32 e = tid(); e < num_experts; e += nthreads()) {
    i32 cnt = 0;
    for (u32 p = 0; p < num_pairs; ++p) cnt += (topk_ids[p] == (i32)e);
    expert_offsets[e + 1] = cnt;
  }
  for (u32 p = tid(); p < num_pairs; p += nthreads()) {
    const i32 id = topk_ids[p];
    if (id < 0 || id >= (i32)num_experts) pair_to_row[p] = -1;
  }
  __syncthreads();
  if (tid() == 0) {
    expert_offsets[0] = 0;
    for (u32 e = 0; e < num_experts; ++e) expert_offsets[e + 1] += expert_offsets[e];
  }
  __syncthreads();
  for (u32 e = tid(); e < num_experts; e += nthreads()) {
    i32 pos = expert_offsets[e];
    for (u32 p = 0; p < num_pairs; ++p) {
      if (topk_ids[p] == (i32)e) {
        sorted_pairs[pos] = (i32)p;
        pair_to_row[p] = pos;
        ++pos;
      }
    }
  }
}

DSV3_DEV void moe_local_ids(i32* DSV3_RESTRICT local, const i32* DSV3_RESTRICT ids, u32 n, u32 first, u32 count) {
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
    const i32 id = ids[i];
    local[i] = (id >= (i32)first && (u32)(id - (i32)first) < count) ? id - (i32)first : -1;
  }
}

template <class T>
DSV3_DEV void moe_gather(T* DSV3_RESTRICT rows, const T* DSV3_RESTRICT x, const i32* DSV3_RESTRICT sorted_pairs,
                         const i32* DSV3_RESTRICT expert_offsets, u32 num_pairs, u32 num_experts, u32 topk,
                         u32 hidden) {
  const u32 r = blockIdx.x;
  if (r >= num_pairs || (i32)r >= expert_offsets[num_experts]) return;
  const u32 t = (u32)sorted_pairs[r] / topk;
  for (u32 i = tid(); i < hidden; i += nthreads()) rows[(u64)r * hidden + i] = x[(u64)t * hidden + i];
}

template <class TA, class TB, class TO, int BM, int BN, int BK>
DSV3_DEV void moe_gemm(TO* C, const TA* A, const TB* W, const float* w_scale, const i32* DSV3_RESTRICT expert_offsets,
                       u32 num_experts, u32 N, u32 K) {
  const u32 e = blockIdx.z;
  if (e >= num_experts) return;
  const u32 start = (u32)expert_offsets[e], end = (u32)expert_offsets[e + 1];
  const u32 m0 = start + blockIdx.y * BM, n0 = blockIdx.x * BN;
  if (m0 >= end) return;
  const TB* We = W + (u64)e * N * K;
  const float* se = w_scale;
  if (IsFp8<TB>::value) se = w_scale + (u64)e * ceil_div(N, 128) * ceil_div(K, 128);
  gemm_tile<TA, TB, TO, BM, BN, BK>(C, A, We, se, m0, end, n0, N, K, K, K, N, 1.0f, 0.0f);
}

template <class T, class TO>
DSV3_DEV void moe_combine(TO* out, const T* DSV3_RESTRICT y, const float* DSV3_RESTRICT topk_weights,
                          const i32* DSV3_RESTRICT pair_to_row, u32 tokens, u32 topk, u32 hidden, float beta) {
  const u32 t = blockIdx.x;
  if (t >= tokens) return;
  for (u32 i = tid(); i < hidden; i += nthreads()) {
    float acc = 0.0f;
    for (u32 k = 0; k < topk; ++k) {
      const i32 r = pair_to_row[t * topk + k];
      if (r >= 0) acc += topk_weights[t * topk + k] * to_float(y[(u64)r * hidden + i]);
    }
    TO* o = out + (u64)t * hidden + i;
    if (beta != 0.0f) acc += beta * to_float(*o);
    *o = from_float<TO>(acc);
  }
}

}  // namespace dsv3
