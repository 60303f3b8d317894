// DeepSeek-V3 `noaux_tc` routing, in f32. One block per token:
//   s = sigmoid(logits); c = s + bias; group score = sum of the two largest c of the group;
//   keep the topk_group best groups; pick top_k experts by c among them (ties: lower index);
//   weights = s of those, divided by their sum when renormalize != 0, times scaling.
// Dynamic shared memory: (2 * E + n_group) floats.
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

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
  if (tid() != 0) return;
  const float NEG = -f32_inf();
  const u32 gsize = E / n_group;
  for (u32 g = 0; g < n_group; ++g) {
    float b1 = NEG, b2 = NEG;
    for (u32 e = g * gsize; e < (g + 1) * gsize; ++e) {
      const float v = c[e];
      if (v > b1) { b2 = b1; b1 = v; } else if (v > b2) { b2 = v; }
    }
    gs[g] = gsize >= 2 ? b1 + b2 : b1;
  }
  // Keep the topk_group best groups: mark the others' experts -inf.
  for (u32 j = 0; j < n_group - topk_group; ++j) {
    u32 worst = 0;
    float wv = f32_inf();
    for (u32 g = 0; g < n_group; ++g) {
      // Lowest score loses; among equals the higher index loses (the lower one is kept).
      if (gs[g] != NEG && (gs[g] < wv || (gs[g] == wv && g > worst))) { wv = gs[g]; worst = g; }
    }
    gs[worst] = NEG;
    for (u32 e = worst * gsize; e < (worst + 1) * gsize; ++e) c[e] = NEG;
  }
  float sum = 0.0f;
  for (u32 k = 0; k < top_k; ++k) {
    u32 best = 0;
    float bv = NEG;
    bool found = false;
    for (u32 e = 0; e < E; ++e) {
      if (c[e] != NEG && (!found || c[e] > bv)) { bv = c[e]; best = e; found = true; }
    }
    c[best] = NEG;
    topk_ids[(u64)t * top_k + k] = found ? (i32)best : -1;
    const float w = found ? s[best] : 0.0f;
    topk_weights[(u64)t * top_k + k] = w;
    sum += w;
  }
  for (u32 k = 0; k < top_k; ++k) {
    float w = topk_weights[(u64)t * top_k + k];
    if (renormalize) w = w / sum;
    topk_weights[(u64)t * top_k + k] = w * scaling;
  }
}

}  // namespace dsv3
