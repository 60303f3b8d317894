// MLA attention over a paged latent cache, absorbed form (a simple, correct first version).
//
//   q      [T, H, dk]             (dk = kv_lora + rope, 576 for V3; q_nope already absorbed)
//   cache  [pages, page_size, row] each token's [c_kv | k_pe], in the row format of TKV:
//          TKV = f32 / bf16: dk values (row = dk);
//          TKV = e4m3fn: the 656-byte fp8 record of mla_fp8_row.cuh (512 e4m3 latent values,
//          4 f32 group scales, 64 bf16 rope values; row = 656 bytes, dk must be 576, dv <= 512),
//          read through the portability layer's e4m3 / bf16 conversions (mla::key_at).
//   block_table [B, max_pages] i32, seq_lens [B] i32, token_seq [T] i32 (which sequence a query
//   token belongs to), token_pos [T] i32 (its position: it sees keys 0..=pos, causal).
//   out    [T, H, dv] f32          o_lat = softmax(scale * q·k) · c_kv (v = first dv values of a row)
// One block per (token, head); keys in chunks of CHUNK, online softmax. Works for decode (one
// token per sequence at pos = len-1) and prefill chunks (several tokens of a sequence).
// Dynamic shared memory: (dk + CHUNK) floats.
//
//   paged_kv_write: cache[slot(token_seq[t], token_pos[t]), :] = kv[t, :] (kv rows kv_stride apart;
//   f32 / bf16 rows; the fp8 rows are written by mla_cache_write_fp8 in mla_decode.cuh).
#pragma once
#include "dsv3/dsv3.h"
#include "mla_fp8_row.cuh"

namespace dsv3 {

// The cache row formats of mla_paged_attention: `elem` is the cache pointer's type, `stride` the
// elements of one row, `at(row, d)` value d of a row as f32.
template <class TKV> struct PagedRow {
  using elem = TKV;
  DSV3_DEV static u64 stride(u32 dk) { return dk; }
  DSV3_DEV static float at(const TKV* row, u32 d) { return to_float(row[d]); }
};
template <> struct PagedRow<e4m3fn> {
  using elem = u8;
  DSV3_DEV static u64 stride(u32) { return mla::F8_ROW; }
  DSV3_DEV static float at(const u8* row, u32 d) { return mla::key_at(row, d); }
};

template <class TQ, class TKV, int BLOCK, int DV_PER_THREAD, int CHUNK>
DSV3_DEV void mla_paged_attention(float* DSV3_RESTRICT out, const TQ* DSV3_RESTRICT q,
                                  const typename PagedRow<TKV>::elem* DSV3_RESTRICT cache,
                                  const i32* DSV3_RESTRICT block_table,
                                  const i32* DSV3_RESTRICT seq_lens, const i32* DSV3_RESTRICT token_seq,
                                  const i32* DSV3_RESTRICT token_pos, u32 tokens, u32 heads, u32 dk, u32 dv,
                                  u32 page_size, u32 max_pages, float scale) {
  extern __shared__ float smem[];
  float* qs = smem;
  float* ps = smem + dk;
  const u32 t = blockIdx.x, h = blockIdx.y;
  if (t >= tokens || h >= heads) return;
  const i32 b = token_seq[t];
  i32 len = token_pos[t] + 1;
  if (seq_lens[b] < len) len = seq_lens[b];
  const u32 L = len > 0 ? (u32)len : 0u;
  const TQ* qh = q + ((u64)t * heads + h) * dk;
  for (u32 d = tid(); d < dk; d += BLOCK) qs[d] = to_float(qh[d]);
  __syncthreads();

  float m = -f32_inf(), l = 0.0f;
  float acc[DV_PER_THREAD];
#pragma unroll
  for (int i = 0; i < DV_PER_THREAD; ++i) acc[i] = 0.0f;
  const i32* bt = block_table + (u64)b * max_pages;
  using Row = PagedRow<TKV>;
  const u64 row_len = Row::stride(dk);

  for (u32 j0 = 0; j0 < L; j0 += CHUNK) {
    const u32 n = (L - j0) < (u32)CHUNK ? (L - j0) : (u32)CHUNK;
    for (u32 jj = warp_id(); jj < n; jj += BLOCK / WARP_SIZE) {
      const u32 j = j0 + jj;
      const auto* k = cache + ((u64)bt[j / page_size] * page_size + j % page_size) * row_len;
      float dot = 0.0f;
      for (u32 d = lane(); d < dk; d += WARP_SIZE) dot += qs[d] * Row::at(k, d);
      dot = warp_sum(dot);
      if (lane() == 0) ps[jj] = dot * scale;
    }
    __syncthreads();
    float cm = m;
    for (u32 jj = 0; jj < n; ++jj) cm = fmaxf(cm, ps[jj]);
    const float corr = fexp(m - cm);  // m = -inf on the first chunk: corr = 0
    l *= corr;
#pragma unroll
    for (int i = 0; i < DV_PER_THREAD; ++i) acc[i] *= corr;
    for (u32 jj = 0; jj < n; ++jj) {
      const u32 j = j0 + jj;
      const float p = fexp(ps[jj] - cm);
      l += p;
      const auto* v = cache + ((u64)bt[j / page_size] * page_size + j % page_size) * row_len;
#pragma unroll
      for (int i = 0; i < DV_PER_THREAD; ++i) {
        const u32 d = tid() + (u32)i * BLOCK;
        if (d < dv) acc[i] += p * Row::at(v, d);
      }
    }
    m = cm;
    __syncthreads();
  }
  float* o = out + ((u64)t * heads + h) * dv;
#pragma unroll
  for (int i = 0; i < DV_PER_THREAD; ++i) {
    const u32 d = tid() + (u32)i * BLOCK;
    if (d < dv) o[d] = L > 0 ? acc[i] / l : 0.0f;
  }
}

template <class T, class TC>
DSV3_DEV void paged_kv_write(TC* DSV3_RESTRICT cache, const T* DSV3_RESTRICT kv, const i32* DSV3_RESTRICT block_table,
                             const i32* DSV3_RESTRICT token_seq, const i32* DSV3_RESTRICT token_pos, u32 tokens,
                             u32 dk, u32 kv_stride, u32 page_size, u32 max_pages) {
  const u32 t = blockIdx.x;
  if (t >= tokens) return;
  const u32 b = (u32)token_seq[t], p = (u32)token_pos[t];
  const u64 slot = (u64)block_table[(u64)b * max_pages + p / page_size] * page_size + p % page_size;
  for (u32 d = tid(); d < dk; d += nthreads()) cache[slot * dk + d] = from_float<TC>(to_float(kv[(u64)t * kv_stride + d]));
}

}  // namespace dsv3
