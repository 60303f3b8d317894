// DeepSeek-V3 `noaux_tc` routing, in f32. One block per token:
//   s = sigmoid(logits); c = s + bias; group score = sum of the two largest c of the group;
//   keep the topk_group best groups; pick top_k experts by c among them (ties: lower index);
//   weights = s of those, divided by their sum when renormalize != 0, times scaling.
// Dynamic shared memory: (2 * E + n_group) floats.
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

// The largest two of (b1 ≥ b2) and the other lane's (o1 ≥ o2).
DSV3_DEV void top2_merge(float& b1, float& b2, float o1, float o2) {
  const float lo = fminf(b1, o1);
  b1 = fmaxf(b1, o1);
  b2 = fmaxf(lo, fmaxf(b2, o2));
}

// The selection runs in warp 0, lane-parallel with shuffle reductions, in the serial definition's
// order of ties (a single thread scanning E experts top_k times measured ~44 µs per launch on the
// H200, the whole of a B = 1 router).
DSV3_DEV void route_noaux_tc(i32* DSV3_RESTRICT topk_ids, float* DSV3_RESTRICT topk_weights,
                             const float* DSV3_RESTRICT logits, const float* DSV3_RESTRICT bias, u32 tokens,
                             u32 num_experts, u32 n_group, u32 topk_group, u32 top_k, float scaling,
                             u32 renormalize) {
  extern __shared__ float smem[];
  const u32 t = blockIdx.x;
  if (t >= tokens) return;
  const u32 E = num_experts;
  float* s = smem;
  float* c = smem + E;
  float* gs = smem + 2 * E;
  for (u32 e = tid(); e < E; e += nthreads()) {
    const float v = sigmoid(logits[(u64)t * E + e]);
    s[e] = v;
    c[e] = v + bias[e];
  }
  __syncthreads();
  if (warp_id() != 0) return;
  const float NEG = -f32_inf();
  const u32 ln = lane(), gsize = E / n_group;
  // Group score: the sum of the group's two largest c.
  for (u32 g = 0; g < n_group; ++g) {
    float b1 = NEG, b2 = NEG;
    for (u32 e = g * gsize + ln; e < (g + 1) * gsize; e += WARP_SIZE) top2_merge(b1, b2, c[e], NEG);
#pragma unroll
    for (int m = WARP_SIZE / 2; m > 0; m >>= 1) top2_merge(b1, b2, shfl_xor(b1, m), shfl_xor(b2, m));
    if (ln == 0) gs[g] = gsize >= 2 ? b1 + b2 : b1;
  }
  warp_sync();
  // Keep the topk_group best groups: the lowest score goes first, among equals the higher index
  // (an argmax of −score over the reversed index); its experts become -inf.
  for (u32 j = 0; j < n_group - topk_group; ++j) {
    float key = NEG;
    int idx = 0x7fffffff;
    for (u32 g = ln; g < n_group; g += WARP_SIZE) {
      const float k = gs[g] != NEG ? -gs[g] : NEG;
      const int r = (int)(n_group - 1 - g);
      if (k > key || (k == key && r < idx)) {
        key = k;
        idx = r;
      }
    }
    warp_argmax(key, idx);
    const u32 worst = n_group - 1 - (u32)idx;
    warp_sync();
    if (ln == 0) gs[worst] = NEG;
    for (u32 e = worst * gsize + ln; e < (worst + 1) * gsize; e += WARP_SIZE) c[e] = NEG;
    warp_sync();
  }
  // top_k experts by c among the kept groups (ties: lower index).
  float sum = 0.0f;
  for (u32 k = 0; k < top_k; ++k) {
    float bv = NEG;
    int best = 0x7fffffff;
    for (u32 e = ln; e < E; e += WARP_SIZE)
      if (c[e] != NEG && (best == 0x7fffffff || c[e] > bv)) {
        bv = c[e];
        best = (int)e;
      }
    warp_argmax(bv, best);
    const bool found = best != 0x7fffffff;
    warp_sync();
    if (ln == 0) {
      if (found) c[best] = NEG;
      const float w = found ? s[best] : 0.0f;
      topk_ids[(u64)t * top_k + k] = found ? best : -1;
      topk_weights[(u64)t * top_k + k] = w;
      sum += w;
    }
    warp_sync();
  }
  if (ln == 0)
    for (u32 k = 0; k < top_k; ++k) {
      float w = topk_weights[(u64)t * top_k + k];
      if (renormalize) w = w / sum;
      topk_weights[(u64)t * top_k + k] = w * scaling;
    }
}

}  // namespace dsv3
