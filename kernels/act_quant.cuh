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

}  // namespace dsv3
