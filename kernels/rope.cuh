// YaRN rotary embedding on the rope part of q (q_pe) or of the latent kv (k_pe), in place.
// DeepSeek's layout: adjacent pairs (2i, 2i+1) are rotated by frequency i:
//   (a, b) -> (a cos - b sin, a sin + b cos),  cos/sin = table[pos, i], tables [max_pos, rope_dim/2].
// Element (t, h, 2i) lives at x[t * token_stride + h * head_stride + offset + 2i].
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

template <class T>
DSV3_DEV void rope_interleaved(T* x, const float* DSV3_RESTRICT cos_t, const float* DSV3_RESTRICT sin_t,
                               const i32* DSV3_RESTRICT pos, u32 tokens, u32 heads, u32 token_stride,
                               u32 head_stride, u32 offset, u32 rope_dim) {
  const u32 t = blockIdx.x;
  if (t >= tokens) return;
  const u32 half = rope_dim / 2;
  const u64 p = (u64)pos[t];
  for (u32 idx = tid(); idx < heads * half; idx += nthreads()) {
    const u32 h = idx / half, i = idx % half;
    T* v = x + (u64)t * token_stride + (u64)h * head_stride + offset + 2 * i;
    const float a = to_float(v[0]), b = to_float(v[1]);
    const float c = cos_t[p * half + i], s = sin_t[p * half + i];
    v[0] = from_float<T>(a * c - b * s);
    v[1] = from_float<T>(a * s + b * c);
  }
}

}  // namespace dsv3
