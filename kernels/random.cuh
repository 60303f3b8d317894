// Random tensors made on the device (benchmark models at real dimensions without a checkpoint).
//   fill_uniform: out[i] = T(fma(hi - lo, u, lo)), u = uniform01(seed, i) (platform.h's counter-based
//   generator, the same stream on every vendor and in the CPU mirror, ops::random).
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

template <class T>
DSV3_DEV void fill_uniform(T* DSV3_RESTRICT out, u64 n, u64 seed, float lo, float hi) {
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    out[i] = from_float<T>(fmaf(hi - lo, uniform01(seed, i), lo));  // one rounding, as the CPU mirror
}

}  // namespace dsv3
