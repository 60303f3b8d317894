// Element-wise dtype conversion through f32, and strided 2-D copies.
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

template <class TI, class TO>
DSV3_DEV void cast(TO* DSV3_RESTRICT out, const TI* DSV3_RESTRICT in, u32 n) {
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    out[i] = from_float<TO>(to_float(in[i]));
}

// out[r * out_stride + c] = x[r * x_stride + c] for r < rows, c < cols.
template <class T>
DSV3_DEV void copy_2d(T* DSV3_RESTRICT out, const T* DSV3_RESTRICT x, u32 rows, u32 cols, u32 out_stride, u32 x_stride) {
  const u64 n = (u64)rows * cols;
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
    const u64 r = i / cols, c = i % cols;
    out[r * out_stride + c] = x[r * x_stride + c];
  }
}

}  // namespace dsv3
