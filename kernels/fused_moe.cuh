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
//                     non-null) are skipped. 16 lanes per 128-group (act_quant.cuh).
//   moe_gather_rows   the quantized x rows in sorted order (for the v2 GEMM, whose A tiles are TMA
//                     boxes): row r = row sorted_ids[r] / topk, zeros for padding.
//   moe_combine_rows  out[t, :] = beta · out[t, :] + Σ_k w[t, k] · y[pair_to_row[t·topk + k], :].
#pragma once
#include "dsv3/dsv3.h"
#include "act_quant.cuh"

namespace dsv3 {

// Pairs per thread per pass of moe_align_tiles: its ids are loaded together, so a pass costs one
// memory latency per 8 · blockDim pairs instead of one per blockDim.
constexpr u32 MOE_ALIGN_BATCH = 8;

// Dynamic smem: 2 · num_experts · 4 bytes. Block: up to 1024 threads.
DSV3_DEV void moe_align_tiles(i32* DSV3_RESTRICT sorted_ids, i32* DSV3_RESTRICT tile_expert, i32* DSV3_RESTRICT num_tiles,
                              i32* DSV3_RESTRICT pair_to_row, const i32* DSV3_RESTRICT topk_ids, u32 num_pairs,
                              u32 num_experts, u32 bm) {
  extern __shared__ i32 moe_align_smem[];
  __shared__ i32 part[1024];
  i32* cnt = moe_align_smem;
  i32* cur = moe_align_smem + num_experts;
  const u32 t = tid(), nt = nthreads();
  // This thread's ids of the pass starting at `base` (−1 past the end).
  auto load_ids = [&](u32 base, i32 (&ids)[MOE_ALIGN_BATCH]) {
#pragma unroll
    for (u32 j = 0; j < MOE_ALIGN_BATCH; ++j) {
      const u32 p = base + j * nt + t;
      ids[j] = p < num_pairs ? topk_ids[p] : -1;
    }
  };
  for (u32 e = t; e < num_experts; e += nt) cnt[e] = 0;
  __syncthreads();
  for (u32 base = 0; base < num_pairs; base += MOE_ALIGN_BATCH * nt) {
    i32 ids[MOE_ALIGN_BATCH];
    load_ids(base, ids);
#pragma unroll
    for (u32 j = 0; j < MOE_ALIGN_BATCH; ++j)
      if (ids[j] >= 0 && (u32)ids[j] < num_experts) atomicAdd(&cnt[ids[j]], 1);
  }
  __syncthreads();
  // Exclusive scan of the padded counts: each thread sums a run of experts, a Hillis-Steele scan
  // over the threads' sums gives each run its start.
  const u32 per = (num_experts + nt - 1) / nt, e0 = min(num_experts, t * per), e1 = min(num_experts, e0 + per);
  auto padded = [&](u32 e) { return (i32)(((u32)cnt[e] + bm - 1) / bm * bm); };
  i32 local = 0;
  for (u32 e = e0; e < e1; ++e) local += padded(e);
  part[t] = local;
  __syncthreads();
  for (u32 off = 1; off < nt; off <<= 1) {
    const i32 y = t >= off ? part[t - off] : 0;
    __syncthreads();
    part[t] += y;
    __syncthreads();
  }
  const i32 total_rows = part[nt - 1];
  i32 run = part[t] - local;
  for (u32 e = e0; e < e1; ++e) {
    cur[e] = run;
    const u32 first = (u32)run / bm, tiles = (u32)padded(e) / bm;
    for (u32 i = 0; i < tiles; ++i) tile_expert[first + i] = (i32)e;
    run += padded(e);
  }
  if (t == 0) *num_tiles = total_rows / (i32)bm;
  for (u32 r = t; r < (u32)total_rows; r += nt) sorted_ids[r] = -1;
  __syncthreads();
  for (u32 base = 0; base < num_pairs; base += MOE_ALIGN_BATCH * nt) {
    i32 ids[MOE_ALIGN_BATCH];
    load_ids(base, ids);
#pragma unroll
    for (u32 j = 0; j < MOE_ALIGN_BATCH; ++j) {
      const u32 p = base + j * nt + t;
      if (p >= num_pairs) continue;
      const i32 id = ids[j];
      if (id >= 0 && (u32)id < num_experts) {
        const i32 pos = atomicAdd(&cur[id], 1);
        sorted_ids[pos] = (i32)p;
        pair_to_row[p] = pos;
      } else {
        pair_to_row[p] = -1;
      }
    }
  }
}

// grid: quant_groups128's (16 groups per 256-thread block); in_stride: elements between rows of
// x (MODE 0) or gate_up (MODE 1, up at + cols).
template <class F8, int MODE>
DSV3_DEV void act_quant_group(F8* DSV3_RESTRICT q, float* DSV3_RESTRICT scales, const bf16* DSV3_RESTRICT x, u32 rows,
                              u32 cols, u32 in_stride, const i32* DSV3_RESTRICT num_tiles, u32 bm, float eps) {
  quant_groups128<QgFp8<F8>, bf16, MODE>(q, scales, x, rows_of_tiles(rows, num_tiles, bm), cols, in_stride, eps);
}

// Sorted copy of a quantized operand for a grouped GEMM that reads whole tiles (the sm_90a v2
// kernel loads A by TMA, so its rows must be contiguous): dst row r = src row sorted_ids[r] / topk,
// `row_bytes` bytes and `row_scales` f32 scales each; padding rows (−1) become zeros. Only rows of
// the *num_tiles tiles of bm are written. grid (rows), block 256.
DSV3_DEV void moe_gather_rows(u8* DSV3_RESTRICT dst, float* DSV3_RESTRICT dst_scales, const u8* DSV3_RESTRICT src,
                              const float* DSV3_RESTRICT src_scales, const i32* DSV3_RESTRICT sorted_ids,
                              const i32* DSV3_RESTRICT num_tiles, u32 rows, u32 bm, u32 topk, u32 row_bytes,
                              u32 row_scales) {
  const u32 r = blockIdx.x;
  if (r >= rows_of_tiles(rows, num_tiles, bm)) return;
  const i32 p = sorted_ids[r];
  const u64 sr = p >= 0 ? (u64)((u32)p / topk) : 0;
  u8* d = dst + (u64)r * row_bytes;
  const u8* sp = src + sr * row_bytes;
  if (row_bytes % 16 == 0 && is_aligned<u32, 4>(reinterpret_cast<const u32*>(d)) && is_aligned<u32, 4>(reinterpret_cast<const u32*>(sp))) {
    const Vec<u32, 4> zero = {{0u, 0u, 0u, 0u}};
    for (u32 c = tid() * 16; c < row_bytes; c += nthreads() * 16)
      store_vec<u32, 4>(reinterpret_cast<u32*>(d + c), p >= 0 ? load_vec<u32, 4>(reinterpret_cast<const u32*>(sp + c)) : zero);
  } else {
    for (u32 c = tid(); c < row_bytes; c += nthreads()) d[c] = p >= 0 ? sp[c] : (u8)0;
  }
  for (u32 j = tid(); j < row_scales; j += nthreads())
    dst_scales[(u64)r * row_scales + j] = p >= 0 ? src_scales[sr * row_scales + j] : 0.0f;
}

// grid (ceil(hidden / (8 · blockDim)), tokens): thread i of block (x, t) takes columns 8·(x·blockDim
// + i) .. + 7 of token t (16-byte loads and stores) when hidden % 8 == 0 and the rows are 16-byte
// aligned, else column x·blockDim + i; its topk rows are loaded together (one memory latency per
// chunk, not one per expert: a decode step's few tokens otherwise leave the GPU idle).
DSV3_DEV void moe_combine_rows(bf16* out, const bf16* DSV3_RESTRICT y, const float* DSV3_RESTRICT topk_weights,
                               const i32* DSV3_RESTRICT pair_to_row, u32 tokens, u32 topk, u32 hidden, float beta) {
  const u32 t = blockIdx.y;
  if (t >= tokens) return;
  const i32* rows = pair_to_row + (u64)t * topk;
  const float* wt = topk_weights + (u64)t * topk;
  bf16* orow = out + (u64)t * hidden;
  const u32 width = hidden % 8 == 0 && is_aligned<bf16, 8>(y) && is_aligned<bf16, 8>(orow) ? 8u : 1u;
  const u32 c = (blockIdx.x * nthreads() + tid()) * width;
  if (c >= hidden) return;
  float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 8
  for (u32 k = 0; k < topk; ++k) {
    const i32 r = rows[k];
    if (r < 0) continue;
    const bf16* yr = y + (u64)r * hidden + c;
    const float w = wt[k];
    if (width == 8) {
      float v[8];
      load_f32<bf16, 8>(yr, v);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] += w * v[j];
    } else {
      acc[0] += w * to_float(*yr);
    }
  }
  if (width == 8) {
    if (beta != 0.0f) {
      float o[8];
      load_f32<bf16, 8>(orow + c, o);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] += beta * o[j];
    }
    store_f32<bf16, 8>(orow + c, acc);
  } else {
    if (beta != 0.0f) acc[0] += beta * to_float(orow[c]);
    orow[c] = f32_to_bf16(acc[0]);
  }
}

}  // namespace dsv3
