// FP8 (e4m3fn / e4m3fnuz) quantization and dequantization.
//   per_token_group_quant: q[r, c] = sat(x[r, c] / s[r, g]), s[r, g] = max(amax(group), eps) / QMAX,
//     groups of GROUP consecutive channels (the last one may be partial); scales [rows, ceil(cols/GROUP)].
//     16 lanes per (row, group) (act_quant.cuh quant_groups128).
//   per_token_group_fake_quant: x → dequant(quant(x)) with those scales, in x's type.
//   block_dequant: out[n, k] = q[n, k] * scale_inv[n / B, k / B], scale_inv [ceil(N/B), ceil(K/B)].
#pragma once
#include "dsv3/dsv3.h"
#include "act_quant.cuh"

namespace dsv3 {

// The value this thread holds of its (group, row) block and the group's scale; in = false for
// threads past the group or the row.
template <class T, class F8, int GROUP>
DSV3_DEV float group_value_and_scale(const T* DSV3_RESTRICT x, u32 r, u32 c, u32 cols, bool in, float eps, float& s) {
  __shared__ float scratch[32];
  const float v = in ? to_float(x[(u64)r * cols + c]) : 0.0f;
  s = fp8_act_scale<F8>(block_max(fabsf(v), scratch), eps);
  return v;
}

// grid: quant_groups128's (16 groups per 256-thread block; act_quant.cuh).
template <class T, class F8, int GROUP>
DSV3_DEV void per_token_group_quant(F8* DSV3_RESTRICT q, float* DSV3_RESTRICT scales, const T* DSV3_RESTRICT x,
                                    u32 rows, u32 cols, float eps) {
  static_assert(GROUP == 128, "the vectorized quantizer takes groups of 128");
  quant_groups128<QgFp8<F8>, T, 0>(q, scales, x, rows, cols, cols, eps);
}

// out = dequant(quant(x)) with the scales of per_token_group_quant: the activation rounding of
// the FP8 GEMMs, for GEMMs that read the dequantized value (shapes the FP8 kernels do not take).
template <class T, class F8, int GROUP>
DSV3_DEV void per_token_group_fake_quant(T* DSV3_RESTRICT out, const T* DSV3_RESTRICT x, u32 rows, u32 cols, float eps) {
  const u32 g = blockIdx.x, r = blockIdx.y;
  if (r >= rows || g >= ceil_div(cols, GROUP)) return;
  const u32 c = g * GROUP + tid();
  const bool in = tid() < GROUP && c < cols;
  float s;
  const float v = group_value_and_scale<T, F8, GROUP>(x, r, c, cols, in, eps, s);
  if (in) out[(u64)r * cols + c] = from_float<T>(to_float(fp8_act_code<F8>(v, s)) * s);
}

template <class F8, class TO, int B>
DSV3_DEV void block_dequant(TO* DSV3_RESTRICT out, const F8* DSV3_RESTRICT q, const float* DSV3_RESTRICT scale_inv,
                            u32 n, u32 k) {
  const u32 sk = ceil_div(k, B);
  const u64 total = (u64)n * k;
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (u64)gridDim.x * blockDim.x) {
    const u32 r = (u32)(i / k), c = (u32)(i % k);
    out[i] = from_float<TO>(to_float(q[i]) * scale_inv[(u64)(r / B) * sk + c / B]);
  }
}

}  // namespace dsv3
