// The dynamic activation quantizers' per-value formulas, shared by the standalone quantization
// kernels (fp8.cuh per_token_group_quant / fake_quant, quant_gemm.cuh int8_act_quant) and the
// fused RMSNorm → quant kernels (norm.cuh), so that both paths produce bit-identical codes and
// scales from the same input values (the max over a group does not depend on the order).
//   FP8:  s = max(amax, eps) / QMAX (448 e4m3fn, 224 e4m3fnuz), q = saturating cast of v / s.
//   INT8: s = max(amax, eps) / 127, q = clamp(rint(v / s), −127, 127) (IEEE division, RNE).
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

template <class F8> DSV3_DEV float fp8_act_scale(float amax, float eps) { return fmaxf(amax, eps) / Fp8Traits<F8>::QMAX; }
template <class F8> DSV3_DEV F8 fp8_act_code(float v, float s) { return from_float<F8>(v / s); }

DSV3_DEV float i8_act_scale(float amax, float eps) { return fmaxf(amax, eps) / 127.0f; }
DSV3_DEV i8 i8q_code(float v, float s) {
  const float q = fminf(fmaxf(rintf(v / s), -127.0f), 127.0f);
  return (i8)(int)q;
}

// GROUP values of int8_act_quant and of the fused norm (the manifest's `G` axis): per token
// group of 128 (block INT8), or one scale per token (channel INT8).
constexpr int i8q_group128 = 128, i8q_token = 0;

DSV3_DEV float silu_f(float g) { return g / (1.0f + fexp(-g)); }

// ---- Group-128 quantizers (fp8_quant_group128, act_quant_group, int8 group128), vectorized ------
// One 128-value group per 16 consecutive lanes, 8 values each (one 16-byte load of bf16, one
// 8-byte store of codes): a warp takes WARP_SIZE / 16 groups, a 256-thread block 16, on 32- and
// 64-lane warps alike. The group's amax uses xor shuffles below 16, which stay inside the group.
// The codes and scales are those of the per-value formulas above, so every path agrees bit for bit.
constexpr u32 QG_LANES = 16, QG_VALS = 8, QG_PER_BLOCK = 256 / QG_LANES;

template <class F8> struct QgFp8 {
  using Code = F8;
  DSV3_DEV static float scale(float amax, float eps) { return fp8_act_scale<F8>(amax, eps); }
  DSV3_DEV static F8 code(float v, float s) { return fp8_act_code<F8>(v, s); }
};
struct QgInt8 {
  using Code = i8;
  DSV3_DEV static float scale(float amax, float eps) { return i8_act_scale(amax, eps); }
  DSV3_DEV static i8 code(float v, float s) { return i8q_code(v, s); }
};

// Values c .. c + 7 of a row (zeros past `cols`): x (MODE 0) or silu(gate) · up (MODE 1: up
// `cols` elements after gate).
template <class T, int MODE> DSV3_DEV void qg_values(const T* row, u32 c, u32 cols, float (&v)[QG_VALS]) {
  if (c + QG_VALS <= cols && is_aligned<T, QG_VALS>(row + c) && (MODE == 0 || is_aligned<T, QG_VALS>(row + c + cols))) {
    load_f32<T, QG_VALS>(row + c, v);
    if (MODE == 1) {
      float u[QG_VALS];
      load_f32<T, QG_VALS>(row + c + cols, u);
#pragma unroll
      for (u32 j = 0; j < QG_VALS; ++j) v[j] = silu_f(v[j]) * u[j];
    }
    return;
  }
#pragma unroll
  for (u32 j = 0; j < QG_VALS; ++j) {
    const u32 cj = c + j;
    v[j] = cj >= cols ? 0.0f : MODE == 0 ? to_float(row[cj]) : silu_f(to_float(row[cj])) * to_float(row[cj + cols]);
  }
}

// Quantizes `rows` rows (row r at x + r · in_stride, `cols` values) in groups of 128: codes to
// q [rows, cols], scales [rows, ceil(cols / 128)]. Every thread of the grid calls it; the grid's
// warps walk the (row, group) items.
template <class Q, class T, int MODE>
DSV3_DEV void quant_groups128(typename Q::Code* DSV3_RESTRICT q, float* DSV3_RESTRICT scales, const T* DSV3_RESTRICT x,
                              u32 rows, u32 cols, u32 in_stride, float eps) {
  using Code = typename Q::Code;
  constexpr u32 PER_WARP = WARP_SIZE / QG_LANES;
  const u32 groups = (cols + 127) / 128, items = rows * groups;
  const u32 sub = lane() / QG_LANES, ln = lane() % QG_LANES;
  const u32 warps = gridDim.x * nwarps();
  // w is the same in every lane of a warp, so all of them reach the shuffles.
  for (u32 w = blockIdx.x * nwarps() + warp_id(); w * PER_WARP < items; w += warps) {
    const u32 item = w * PER_WARP + sub;
    const bool in = item < items;
    const u32 r = in ? item / groups : 0u, c = (in ? item % groups : 0u) * 128 + ln * QG_VALS;
    float v[QG_VALS];
    if (in) {
      qg_values<T, MODE>(x + (u64)r * in_stride, c, cols, v);
    } else {
#pragma unroll
      for (u32 j = 0; j < QG_VALS; ++j) v[j] = 0.0f;
    }
    float amax = 0.0f;
#pragma unroll
    for (u32 j = 0; j < QG_VALS; ++j) amax = fmaxf(amax, fabsf(v[j]));
#pragma unroll
    for (int m = QG_LANES / 2; m > 0; m >>= 1) amax = fmaxf(amax, shfl_xor(amax, m));
    if (!in) continue;
    const float s = Q::scale(amax, eps);
    Code* qr = q + (u64)r * cols;
    if (c + QG_VALS <= cols && is_aligned<Code, QG_VALS>(qr + c)) {
      Vec<Code, QG_VALS> codes;
#pragma unroll
      for (u32 j = 0; j < QG_VALS; ++j) codes.v[j] = Q::code(v[j], s);
      store_vec<Code, QG_VALS>(qr + c, codes);
    } else {
      for (u32 j = 0; j < QG_VALS && c + j < cols; ++j) qr[c + j] = Q::code(v[j], s);
    }
    if (ln == 0) scales[(u64)r * groups + c / 128] = s;
  }
}

// Rows a grouped (MoE) quantizer covers: all, or those of the *num_tiles real tiles of bm rows.
DSV3_DEV u32 rows_of_tiles(u32 rows, const i32* num_tiles, u32 bm) {
  return num_tiles != nullptr ? min(rows, (u32)(*num_tiles) * bm) : rows;
}

}  // namespace dsv3
