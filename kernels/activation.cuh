// SiLU-and-mul: out[r, c] = silu(gate[r, c]) * up[r, c], gate/up rows `in_stride` apart (so a
// fused gate_up [rows, 2I] is gate = base, up = base + I, in_stride = 2I); out is [rows, cols].
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

template <class T>
DSV3_DEV void silu_mul(T* DSV3_RESTRICT out, const T* gate, const T* up, u32 rows, u32 cols, u32 in_stride) {
  const u64 n = (u64)rows * cols;
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
    const u64 r = i / cols, c = i % cols;
    const float g = to_float(gate[r * in_stride + c]);
    const float u = to_float(up[r * in_stride + c]);
    out[i] = from_float<T>(g / (1.0f + fexp(-g)) * u);
  }
}

}  // namespace dsv3
