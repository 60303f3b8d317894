// Warp (NVIDIA, 32 lanes) / wavefront (AMD, 64 lanes) shuffles and reductions, block-wide
// reductions over shared memory.
#pragma once
#include "platform.h"

namespace dsv3 {

DSV3_DEV float shfl_xor(float v, int mask) {
#if defined(DSV3_HIP)
  return __shfl_xor(v, mask, WARP_SIZE);
#else
  return __shfl_xor_sync(0xffffffffu, v, mask, WARP_SIZE);
#endif
}
DSV3_DEV int shfl_xor(int v, int mask) {
#if defined(DSV3_HIP)
  return __shfl_xor(v, mask, WARP_SIZE);
#else
  return __shfl_xor_sync(0xffffffffu, v, mask, WARP_SIZE);
#endif
}
DSV3_DEV float shfl(float v, int src) {
#if defined(DSV3_HIP)
  return __shfl(v, src, WARP_SIZE);
#else
  return __shfl_sync(0xffffffffu, v, src, WARP_SIZE);
#endif
}

// Orders the warp's shared-memory accesses before this point with those after it (lanes of one
// warp exchanging through shared memory).
DSV3_DEV void warp_sync() {
#if defined(DSV3_HIP)
  __builtin_amdgcn_fence(__ATOMIC_RELEASE, "wavefront");
  __builtin_amdgcn_wave_barrier();
  __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "wavefront");
#else
  __syncwarp();
#endif
}

struct SumOp { DSV3_DEV float operator()(float a, float b) const { return a + b; } };
struct MaxOp { DSV3_DEV float operator()(float a, float b) const { return fmaxf(a, b); } };
struct MinOp { DSV3_DEV float operator()(float a, float b) const { return fminf(a, b); } };

// Butterfly reduction: every lane ends with the full result. All lanes of the warp must call.
template <class Op> DSV3_DEV float warp_reduce(float v, Op op) {
#pragma unroll
  for (int m = WARP_SIZE / 2; m > 0; m >>= 1) v = op(v, shfl_xor(v, m));
  return v;
}
DSV3_DEV float warp_sum(float v) { return warp_reduce(v, SumOp()); }
DSV3_DEV float warp_max(float v) { return warp_reduce(v, MaxOp()); }

// (value, index) argmax across the warp; ties go to the lower index. NaN values lose.
DSV3_DEV void warp_argmax(float& v, int& idx) {
#pragma unroll
  for (int m = WARP_SIZE / 2; m > 0; m >>= 1) {
    float ov = shfl_xor(v, m);
    int oi = shfl_xor(idx, m);
    if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
  }
}

// Block-wide reduction; every thread gets the result. `scratch` holds >= 32 floats of shared
// memory; the block size must be a multiple of WARP_SIZE. Contains __syncthreads(): all
// threads of the block must call, and scratch may be reused right after it returns.
template <class Op> DSV3_DEV float block_reduce(float v, Op op, float* scratch) {
  v = warp_reduce(v, op);
  const u32 nw = nwarps();
  if (lane() == 0) scratch[warp_id()] = v;
  __syncthreads();
  float r = scratch[0];
  for (u32 w = 1; w < nw; ++w) r = op(r, scratch[w]);
  __syncthreads();
  return r;
}
DSV3_DEV float block_sum(float v, float* scratch) { return block_reduce(v, SumOp(), scratch); }
DSV3_DEV float block_max(float v, float* scratch) { return block_reduce(v, MaxOp(), scratch); }

// Block-wide argmax (ties to the lower index). scratch: >= 32 floats, iscratch: >= 32 ints.
DSV3_DEV void block_argmax(float& v, int& idx, float* scratch, int* iscratch) {
  warp_argmax(v, idx);
  const u32 nw = nwarps();
  if (lane() == 0) { scratch[warp_id()] = v; iscratch[warp_id()] = idx; }
  __syncthreads();
  v = scratch[0];
  idx = iscratch[0];
  for (u32 w = 1; w < nw; ++w) {
    if (scratch[w] > v || (scratch[w] == v && iscratch[w] < idx)) { v = scratch[w]; idx = iscratch[w]; }
  }
  __syncthreads();
}

}  // namespace dsv3
