// Element-wise dtype conversion through f32.
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

template <class TI, class TO>
DSV3_DEV void cast(TO* DSV3_RESTRICT out, const TI* DSV3_RESTRICT in, u32 n) {
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    out[i] = from_float<TO>(to_float(in[i]));
}

}  // namespace dsv3
