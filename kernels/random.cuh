// Random tensors made on the device (benchmark models at real dimensions without a checkpoint).
//   fill_uniform: the window [A, R, C] at (a0, r0, c0) of a random tensor [.., N, K]:
//     out[a·out_stride + r·C + c] = T(fma(hi - lo, u, lo)), u = uniform01(seed, i),
//     i = ((a0 + a)·N + r0 + r)·K + c0 + c, the element's index in the whole tensor
//   (platform.h's counter-based generator, the same stream on every vendor and in the CPU mirror,
//   ops::random). A window of the whole tensor ([1, 1, n] at 0) is the plain fill; a rank's shard
//   of a random model draws exactly its slice of the full model's tensors.
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

template <class T>
DSV3_DEV void fill_uniform(T* DSV3_RESTRICT out, u64 A, u64 R, u64 C, u64 out_stride, u64 a0, u64 r0, u64 c0, u64 N,
                           u64 K, u64 seed, float lo, float hi) {
  const u64 n = A * R * C;
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
    const u64 c = i % C, r = (i / C) % R, a = i / (R * C);
    const u64 at = ((a0 + a) * N + r0 + r) * K + c0 + c;
    out[a * out_stride + r * C + c] = from_float<T>(fmaf(hi - lo, uniform01(seed, at), lo));  // one rounding, as the CPU mirror
  }
}

}  // namespace dsv3
