// Argmax over vocabulary rows, and sampling with temperature / top-k / top-p.
//
//   argmax: out[r] = first index of the largest value of row r, values[r] (when not null) that
//     value; NaN and -inf never win, and a row without a larger value gives 0 (value -inf): the
//     host's ops::sampling::argmax exactly. One block per row.
//   sample: per row r, temperature[r] <= 0 means greedy (argmax). Otherwise z = (x - max) / T;
//     top_k[r] in (0, V) keeps the tokens whose z is >= the k-th largest z; top_p[r] in (0, 1)
//     keeps, of those, the smallest top set whose probability mass reaches top_p (ties at the edge
//     included); then Gumbel-max over the kept tokens with a counter-based RNG seeded by seeds[r]:
//     token = argmax_i z_i - log(-log(u(seed, i))). Thresholds are found by bisection on the
//     order-preserving integer image of f32 (32 passes over the row). One block per row.
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

// The first index of the largest value of row[0, cols), and that value in `best`; 0 and -inf
// when no value exceeds -inf (all NaN or -inf). Every thread of the block gets both.
template <class T>
DSV3_DEV int row_argmax(const T* DSV3_RESTRICT row, u32 cols, float& best, float* scratch, int* iscratch) {
  float v = -f32_inf();
  int idx = 0x7fffffff;
  // Strict >: each thread visits its indices in increasing order, so it keeps the first of equal
  // values, and neither NaN nor -inf ever becomes a candidate (as on the host).
  for (u32 i = tid(); i < cols; i += nthreads()) {
    const float y = to_float(row[i]);
    if (y > v) { v = y; idx = (int)i; }
  }
  // Equal candidates of different threads: the lowest index wins.
  block_argmax(v, idx, scratch, iscratch);
  best = v;
  return idx == 0x7fffffff ? 0 : idx;
}

template <class T, int BLOCK>
DSV3_DEV void argmax_rows(i32* DSV3_RESTRICT out, float* DSV3_RESTRICT values, const T* DSV3_RESTRICT x, u32 rows,
                          u32 cols) {
  __shared__ float scratch[32];
  __shared__ int iscratch[32];
  const u32 r = blockIdx.x;
  if (r >= rows) return;
  float best;
  const int idx = row_argmax(x + (u64)r * cols, cols, best, scratch, iscratch);
  if (tid() == 0) {
    out[r] = idx;
    if (values) values[r] = best;
  }
}

// Monotone map f32 -> u32 (for finite values and +-inf).
DSV3_DEV u32 order_key(float f) {
  const u32 b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

template <class T, int BLOCK>
DSV3_DEV void sample_rows(i32* DSV3_RESTRICT out, const T* DSV3_RESTRICT x, const float* DSV3_RESTRICT temperature,
                          const i32* DSV3_RESTRICT top_k, const float* DSV3_RESTRICT top_p,
                          const u64* DSV3_RESTRICT seeds, u32 rows, u32 cols) {
  __shared__ float scratch[32];
  __shared__ int iscratch[32];
  const u32 r = blockIdx.x;
  if (r >= rows) return;
  const T* row = x + (u64)r * cols;
  const float temp = temperature[r];
  // Max (and the greedy answer).
  float mx;
  const int idx = row_argmax(row, cols, mx, scratch, iscratch);
  if (!(temp > 0.0f)) {
    if (tid() == 0) out[r] = idx;
    return;
  }
  const float inv_t = 1.0f / temp;
  // Threshold keys: a token is kept when order_key(z) >= kmin.
  u32 kmin = 0;
  const i32 k = top_k[r];
  if (k > 0 && (u32)k < cols) {
    // Largest key t with count(key >= t) >= k.
    u32 lo = 0, hi = 0xffffffffu;
    while (lo < hi) {
      const u32 mid = (u32)(((u64)lo + hi + 1) / 2);  // in 64 bits: hi - lo + 1 wraps to 0 at the full range
      float cnt = 0.0f;
      for (u32 i = tid(); i < cols; i += nthreads()) {
        const float y = to_float(row[i]);
        cnt += (y == y && order_key((y - mx) * inv_t) >= mid) ? 1.0f : 0.0f;
      }
      cnt = block_sum(cnt, scratch);
      if (cnt >= (float)k) lo = mid; else hi = mid - 1;
    }
    kmin = lo;
  }
  const float p = top_p[r];
  if (p > 0.0f && p < 1.0f) {
    float total = 0.0f;
    for (u32 i = tid(); i < cols; i += nthreads()) {
      const float y = to_float(row[i]);
      const float z = (y - mx) * inv_t;
      if (y == y && order_key(z) >= kmin) total += fexp(z);
    }
    total = block_sum(total, scratch);
    u32 lo = kmin, hi = 0xffffffffu;
    while (lo < hi) {
      const u32 mid = (u32)(((u64)lo + hi + 1) / 2);  // in 64 bits: hi - lo + 1 wraps to 0 at the full range
      float mass = 0.0f;
      for (u32 i = tid(); i < cols; i += nthreads()) {
        const float y = to_float(row[i]);
        const float z = (y - mx) * inv_t;
        if (y == y && order_key(z) >= mid) mass += fexp(z);
      }
      mass = block_sum(mass, scratch);
      if (mass >= p * total) lo = mid; else hi = mid - 1;
    }
    kmin = lo;
  }
  const u64 seed = seeds[r];
  float best = -f32_inf();
  int bi = 0x7fffffff;
  for (u32 i = tid(); i < cols; i += nthreads()) {
    const float y = to_float(row[i]);
    const float z = (y - mx) * inv_t;
    if (!(y == y) || order_key(z) < kmin) continue;
    const float g = z - flog(-flog(uniform01(seed, i)));
    if (g > best || (g == best && (int)i < bi)) { best = g; bi = (int)i; }
  }
  block_argmax(best, bi, scratch, iscratch);
  if (tid() == 0) out[r] = bi == 0x7fffffff ? idx : bi;
}

}  // namespace dsv3
