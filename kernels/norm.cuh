// RMSNorm and fused residual-add + RMSNorm. One block per row; f32 accumulation.
//   rms_norm:     out = x * rsqrt(mean(x^2) + eps) * w
//   add_rms_norm: residual += x; out = rms_norm(residual)   (residual updated in place)
//
// rms_norm_quant / add_rms_norm_quant<T, Q, BLOCK>: the same, and the normalized row (rounded to
//   T, exactly the values rms_norm / add_rms_norm store) quantized for the next linear layer as
//   the standalone kernels would quantize it: Q = NormQuantFp8<F8> (fp8_quant_group128: scales
//   [rows, ceil(cols/128)]) or NormQuantInt8<G> (int8_act_quant: group128 scales [rows,
//   ceil(cols/128)], token scales [rows]). Codes and scales are bit-identical to the two-kernel
//   path: the sum of squares is reduced in the same order (same BLOCK, same strided loop), the
//   per-value formulas are act_quant.cuh's, and a group's max does not depend on the order.
//   `out` may be null (no T output: the row feeds only the quantized linear). One block per row:
//   pass 1 reads the row (and adds the residual), pass 2 re-reads it (L1 / L2) per 128-group,
//   one warp per group, writes out, codes and the group's scale (token scales: a block max, then
//   a third pass over the row for the codes). grid (rows), block BLOCK.
#pragma once
#include "dsv3/dsv3.h"
#include "act_quant.cuh"

namespace dsv3 {

// A decode step's row is one block, latency-bound (H200 ncu, 256 threads, a 7168-wide row: 21.9
// µs, no eligible warp 87% of cycles): the manifest allows 1024 threads (the host launches that
// many for fewer rows than SMs, src/backend/dispatch.rs `norm_threads`), and a thread reads its
// strided columns ROW_CHUNK at a time, the loads issued before the arithmetic. Each thread still
// adds its columns in ascending order (the fused and unfused kernels' sums stay identical).
constexpr u32 ROW_CHUNK = 8;

// 1 / rms of row xr (every kernel here: BLOCK threads, strided sum, block_sum).
template <class T>
DSV3_DEV float rms_inv(const T* DSV3_RESTRICT xr, u32 cols, float eps, float* scratch) {
  const u32 n = nthreads();
  float ss = 0.0f;
  for (u32 i0 = tid(); i0 < cols; i0 += ROW_CHUNK * n) {
    float v[ROW_CHUNK];
#pragma unroll
    for (u32 u = 0; u < ROW_CHUNK; ++u) v[u] = i0 + u * n < cols ? to_float(xr[i0 + u * n]) : 0.0f;
#pragma unroll
    for (u32 u = 0; u < ROW_CHUNK; ++u) ss += v[u] * v[u];  // + 0 past the row: unchanged
  }
  ss = block_sum(ss, scratch);
  return frsqrt(ss / (float)cols + eps);
}

// rr += xr (rounded to T, as stored), then 1 / rms of the sum. The block_sum's barrier makes the
// stored residual visible to every thread of the block.
template <class T>
DSV3_DEV float add_rms_inv(T* DSV3_RESTRICT rr, const T* DSV3_RESTRICT xr, u32 cols, float eps, float* scratch) {
  const u32 n = nthreads();
  float ss = 0.0f;
  for (u32 i0 = tid(); i0 < cols; i0 += ROW_CHUNK * n) {
    float a[ROW_CHUNK], b[ROW_CHUNK];
#pragma unroll
    for (u32 u = 0; u < ROW_CHUNK; ++u) {
      const bool in = i0 + u * n < cols;
      a[u] = in ? to_float(rr[i0 + u * n]) : 0.0f;
      b[u] = in ? to_float(xr[i0 + u * n]) : 0.0f;
    }
#pragma unroll
    for (u32 u = 0; u < ROW_CHUNK; ++u) {
      // The sum is rounded to T before it is normalised, as the stored residual is.
      const float v = to_float(from_float<T>(a[u] + b[u]));
      if (i0 + u * n < cols) rr[i0 + u * n] = from_float<T>(v);
      ss += v * v;
    }
  }
  ss = block_sum(ss, scratch);
  return frsqrt(ss / (float)cols + eps);
}

// The normalized value of column i, in T.
template <class T>
DSV3_DEV T rms_normed(const T* DSV3_RESTRICT src, const T* DSV3_RESTRICT w, u32 i, float r) {
  return from_float<T>(to_float(src[i]) * r * to_float(w[i]));
}

template <class T, int BLOCK>
DSV3_DEV void rms_norm(T* DSV3_RESTRICT out, const T* DSV3_RESTRICT x, const T* DSV3_RESTRICT w,
                       u32 rows, u32 cols, float eps) {
  __shared__ float scratch[32];
  const u32 row = blockIdx.x;
  if (row >= rows) return;
  const T* xr = x + (u64)row * cols;
  T* outr = out + (u64)row * cols;
  const float r = rms_inv<T>(xr, cols, eps, scratch);
#pragma unroll ROW_CHUNK
  for (u32 i = tid(); i < cols; i += nthreads()) outr[i] = rms_normed<T>(xr, w, i, r);
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
  const float r = add_rms_inv<T>(rr, xr, cols, eps, scratch);
#pragma unroll ROW_CHUNK
  for (u32 i = tid(); i < cols; i += nthreads()) outr[i] = rms_normed<T>(rr, w, i, r);
}

// ---- RMSNorm → activation quantization -------------------------------------------------------
// Quantizer policies: the code type, GROUP (128, or 0: one scale per row) and act_quant.cuh's
// formulas.
template <class F8> struct NormQuantFp8 {
  using Code = F8;
  static constexpr int GROUP = 128;
  DSV3_DEV static float scale(float amax, float eps) { return fp8_act_scale<F8>(amax, eps); }
  DSV3_DEV static Code code(float v, float s) { return fp8_act_code<F8>(v, s); }
};

template <int G> struct NormQuantInt8 {
  using Code = i8;
  static constexpr int GROUP = G;
  DSV3_DEV static float scale(float amax, float eps) { return i8_act_scale(amax, eps); }
  DSV3_DEV static Code code(float v, float s) { return i8q_code(v, s); }
};

// Pass 2 (and 3) of the fused kernels over the row src (x, or the updated residual) with 1/rms r.
template <class T, class Q>
DSV3_DEV void quantize_normed_row(T* DSV3_RESTRICT outr, typename Q::Code* DSV3_RESTRICT qr, float* DSV3_RESTRICT scales,
                                  const T* DSV3_RESTRICT src, const T* DSV3_RESTRICT w, u32 row, u32 cols, float r,
                                  float qeps, float* scratch) {
  if constexpr (Q::GROUP > 0) {
    static_assert(Q::GROUP % WARP_SIZE == 0, "group / warp");
    constexpr int PER = Q::GROUP / WARP_SIZE;
    const u32 groups = ceil_div(cols, (u32)Q::GROUP);
#pragma unroll 2
    for (u32 g = warp_id(); g < groups; g += nwarps()) {
      float v[PER];
      float amax = 0.0f;
#pragma unroll
      for (int j = 0; j < PER; ++j) {
        const u32 c = g * Q::GROUP + lane() + j * WARP_SIZE;
        v[j] = 0.0f;
        if (c < cols) {
          const T y = rms_normed<T>(src, w, c, r);
          if (outr != nullptr) outr[c] = y;
          v[j] = to_float(y);
        }
        amax = fmaxf(amax, fabsf(v[j]));
      }
      amax = warp_max(amax);
      const float s = Q::scale(amax, qeps);
#pragma unroll
      for (int j = 0; j < PER; ++j) {
        const u32 c = g * Q::GROUP + lane() + j * WARP_SIZE;
        if (c < cols) qr[c] = Q::code(v[j], s);
      }
      if (lane() == 0) scales[(u64)row * groups + g] = s;
    }
  } else {
    float amax = 0.0f;
    for (u32 i = tid(); i < cols; i += nthreads()) {
      const T y = rms_normed<T>(src, w, i, r);
      if (outr != nullptr) outr[i] = y;
      amax = fmaxf(amax, fabsf(to_float(y)));
    }
    amax = block_max(amax, scratch);
    const float s = Q::scale(amax, qeps);
    for (u32 i = tid(); i < cols; i += nthreads()) qr[i] = Q::code(to_float(rms_normed<T>(src, w, i, r)), s);
    if (tid() == 0) scales[row] = s;
  }
}

template <class T, class Q, int BLOCK>
DSV3_DEV void rms_norm_quant(T* DSV3_RESTRICT out, const T* DSV3_RESTRICT x, const T* DSV3_RESTRICT w,
                             typename Q::Code* DSV3_RESTRICT q, float* DSV3_RESTRICT scales, u32 rows, u32 cols,
                             float eps, float qeps) {
  __shared__ float scratch[32];
  const u32 row = blockIdx.x;
  if (row >= rows) return;
  const T* xr = x + (u64)row * cols;
  const float r = rms_inv<T>(xr, cols, eps, scratch);
  T* outr = out != nullptr ? out + (u64)row * cols : nullptr;
  quantize_normed_row<T, Q>(outr, q + (u64)row * cols, scales, xr, w, row, cols, r, qeps, scratch);
}

template <class T, class Q, int BLOCK>
DSV3_DEV void add_rms_norm_quant(T* DSV3_RESTRICT out, T* DSV3_RESTRICT residual, const T* DSV3_RESTRICT x,
                                 const T* DSV3_RESTRICT w, typename Q::Code* DSV3_RESTRICT q,
                                 float* DSV3_RESTRICT scales, u32 rows, u32 cols, float eps, float qeps) {
  __shared__ float scratch[32];
  const u32 row = blockIdx.x;
  if (row >= rows) return;
  T* rr = residual + (u64)row * cols;
  const float r = add_rms_inv<T>(rr, x + (u64)row * cols, cols, eps, scratch);
  T* outr = out != nullptr ? out + (u64)row * cols : nullptr;
  quantize_normed_row<T, Q>(outr, q + (u64)row * cols, scales, rr, w, row, cols, r, qeps, scratch);
}

}  // namespace dsv3
