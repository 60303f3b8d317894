// Fused MoE around the FP8 grouped GEMM (kernels/fp8_gemm.cuh):
//
//   moe_align_tiles   topk_ids [P = T·topk] → per expert, its pairs padded to a multiple of the
//                     GEMM's M tile: sorted_ids [rows] (pair index, −1 = padding), tile_expert
//                     [tiles], num_tiles [1], pair_to_row [P] (−1 for ids outside [0, E): experts of
//                     another rank under expert parallelism). One block; experts without tokens get
//                     no tile, so they cost nothing.
//   act_quant_group   per-token-group (128) FP8 quantization of bf16 rows, MODE 0: x; MODE 1:
//                     silu(gate) · up from a gate_up [rows, 2I] row (the fused SiLU·mul + quant
//                     between the two grouped GEMMs). Rows past *num_tiles · bm (when num_tiles is
//                     non-null) are skipped. One warp per 128-group.
//   moe_combine_rows  out[t, :] = beta · out[t, :] + Σ_k w[t, k] · y[pair_to_row[t·topk + k], :].
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

// Dynamic smem: 2 · num_experts · 4 bytes. Block: up to 1024 threads.
DSV3_DEV void moe_align_tiles(i32* DSV3_RESTRICT sorted_ids, i32* DSV3_RESTRICT tile_expert, i32* DSV3_RESTRICT num_tiles,
                              i32* DSV3_RESTRICT pair_to_row, const i32* DSV3_RESTRICT topk_ids, u32 num_pairs,
                              u32 num_experts, u32 bm) {
  extern __shared__ i32 moe_align_smem[];
  i32* cnt = moe_align_smem;
  i32* cur = moe_align_smem + num_experts;
  const u32 t = tid(), nt = nthreads();
  for (u32 e = t; e < num_experts; e += nt) cnt[e] = 0;
  __syncthreads();
  for (u32 p = t; p < num_pairs; p += nt) {
    const i32 id = topk_ids[p];
    if (id >= 0 && (u32)id < num_experts) atomicAdd(&cnt[id], 1);
  }
  __syncthreads();
  __shared__ i32 total_rows;
  if (t == 0) {
    i32 run = 0;
    for (u32 e = 0; e < num_experts; ++e) {
      cur[e] = run;
      run += (i32)(((u32)cnt[e] + bm - 1) / bm * bm);
    }
    total_rows = run;
    *num_tiles = run / (i32)bm;
  }
  __syncthreads();
  for (u32 e = t; e < num_experts; e += nt) {
    const u32 tiles = ((u32)cnt[e] + bm - 1) / bm, first = (u32)cur[e] / bm;
    for (u32 i = 0; i < tiles; ++i) tile_expert[first + i] = (i32)e;
  }
  for (u32 r = t; r < (u32)total_rows; r += nt) sorted_ids[r] = -1;
  __syncthreads();
  for (u32 p = t; p < num_pairs; p += nt) {
    const i32 id = topk_ids[p];
    if (id >= 0 && (u32)id < num_experts) {
      const i32 pos = atomicAdd(&cur[id], 1);
      sorted_ids[pos] = (i32)p;
      pair_to_row[p] = pos;
    } else {
      pair_to_row[p] = -1;
    }
  }
}

DSV3_DEV float silu_f(float g) { return g / (1.0f + fexp(-g)); }

// grid (rows), block 256 (8 warps loop over the row's groups). in_stride: elements between rows
// of x (MODE 0) or gate_up (MODE 1, up at + cols).
template <class F8, int MODE>
DSV3_DEV void act_quant_group(F8* DSV3_RESTRICT q, float* DSV3_RESTRICT scales, const bf16* DSV3_RESTRICT x, u32 rows,
                              u32 cols, u32 in_stride, const i32* DSV3_RESTRICT num_tiles, u32 bm, float eps) {
  constexpr int G = 128;
  const u32 r = blockIdx.x;
  if (r >= rows) return;
  if (num_tiles != nullptr && r >= (u32)(*num_tiles) * bm) return;
  const u32 groups = (cols + G - 1) / G;
  const u32 w = warp_id(), ln = lane(), nw = nwarps();
  const bf16* xr = x + (u64)r * in_stride;
  for (u32 grp = w; grp < groups; grp += nw) {
    float v[G / WARP_SIZE];
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < G / WARP_SIZE; ++j) {
      const u32 c = grp * G + ln + j * WARP_SIZE;
      float val = 0.0f;
      if (c < cols) {
        if (MODE == 0) {
          val = to_float(xr[c]);
        } else {
          val = silu_f(to_float(xr[c])) * to_float(xr[c + cols]);
        }
      }
      v[j] = val;
      amax = fmaxf(amax, fabsf(val));
    }
    amax = warp_max(amax);
    const float s = fmaxf(amax, eps) / Fp8Traits<F8>::QMAX;
#pragma unroll
    for (int j = 0; j < G / WARP_SIZE; ++j) {
      const u32 c = grp * G + ln + j * WARP_SIZE;
      if (c < cols) q[(u64)r * cols + c] = from_float<F8>(v[j] / s);
    }
    if (ln == 0) scales[(u64)r * groups + grp] = s;
  }
}

// grid (tokens), block up to 1024.
DSV3_DEV void moe_combine_rows(bf16* out, const bf16* DSV3_RESTRICT y, const float* DSV3_RESTRICT topk_weights,
                               const i32* DSV3_RESTRICT pair_to_row, u32 tokens, u32 topk, u32 hidden, float beta) {
  const u32 t = blockIdx.x;
  if (t >= tokens) return;
  for (u32 i = tid(); i < hidden; i += nthreads()) {
    float acc = 0.0f;
    for (u32 k = 0; k < topk; ++k) {
      const i32 r = pair_to_row[t * topk + k];
      if (r >= 0) acc += topk_weights[t * topk + k] * to_float(y[(u64)r * hidden + i]);
    }
    bf16* o = out + (u64)t * hidden + i;
    if (beta != 0.0f) acc += beta * to_float(*o);
    *o = f32_to_bf16(acc);
  }
}

}  // namespace dsv3
