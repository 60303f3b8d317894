// RMSNorm and fused residual-add + RMSNorm. One block per row; f32 accumulation.
//   rms_norm:     out = x * rsqrt(mean(x^2) + eps) * w
//   add_rms_norm: residual += x; out = rms_norm(residual)   (residual updated in place)
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

template <class T, int BLOCK>
DSV3_DEV void rms_norm(T* DSV3_RESTRICT out, const T* DSV3_RESTRICT x, const T* DSV3_RESTRICT w,
                       u32 rows, u32 cols, float eps) {
  __shared__ float scratch[32];
  const u32 row = blockIdx.x;
  if (row >= rows) return;
  const T* xr = x + (u64)row * cols;
  T* outr = out + (u64)row * cols;
  float ss = 0.0f;
  for (u32 i = tid(); i < cols; i += nthreads()) {
    float v = to_float(xr[i]);
    ss += v * v;
  }
  ss = block_sum(ss, scratch);
  const float r = frsqrt(ss / (float)cols + eps);
  for (u32 i = tid(); i < cols; i += nthreads()) outr[i] = from_float<T>(to_float(xr[i]) * r * to_float(w[i]));
}

template <class T, int BLOCK>
DSV3_DEV void add_rms_norm(T* DSV3_RESTRICT out, T* DSV3_RESTRICT residual, const T* DSV3_RESTRICT x,
                           const T* DSV3_RESTRICT w, u32 rows, u32 cols, float eps) {
  __shared__ float scratch[32];
  const u32 row = blockIdx.x;
  if (row >= rows) return;
  T* rr = residual + (u64)row * cols;
  const T* xr = x + (u64)row * cols;
  T* outr = out + (u64)row * cols;
  float ss = 0.0f;
  for (u32 i = tid(); i < cols; i += nthreads()) {
    // The sum is rounded to T before it is normalised, as the stored residual is.
    float v = to_float(from_float<T>(to_float(rr[i]) + to_float(xr[i])));
    rr[i] = from_float<T>(v);
    ss += v * v;
  }
  ss = block_sum(ss, scratch);
  const float r = frsqrt(ss / (float)cols + eps);
  for (u32 i = tid(); i < cols; i += nthreads()) outr[i] = from_float<T>(to_float(rr[i]) * r * to_float(w[i]));
}

}  // namespace dsv3
