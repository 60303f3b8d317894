// bf16 matrix-core (MFMA) primitives of AMD CDNA2 / CDNA3 (gfx90a, gfx942; wave64), used by the
// HIP MLA decode kernel. HIP only. The MFMA itself is mfma.h's mfma_bf16_k16 (shared with the AWQ
// GEMM); the names below are the MLA kernel's.
//
// v_mfma_f32_16x16x16bf16_1k: D[16][16] = A[16][16]·B[16][16] + C, bf16 in, f32 out, one wave.
// Each lane holds 4 bf16 of A and of B (2 VGPRs each) and 4 f32 of C / D. With lane = 16·q + i
// (i = lane % 16, q = lane / 16) and element e = 0..3 of the lane's vector:
//   A[i][4q + e]    (lane i + 16q: row i, k = 4q .. 4q + 3)
//   B[4q + e][i]    (lane i + 16q: column i, k = 4q .. 4q + 3)
//   D[4q + e][i]    (lane i + 16q: column i, rows 4q .. 4q + 3)
// Sources: the AMD lab notes' matrix-cores example mfma_fp32_16x16x16fp16.cpp (amd/amd-lab-notes;
// the f16 form, same shape and lane layout) and the FlyDSL MFMA example that fills the
// _1k bf16 operands by hand (A[m = lane % 16][4·(lane / 16) + i], C[4·(lane / 16) + i][lane % 16]).
// gfx90a and gfx942 both have the instruction (gfx950 adds a K = 32 form; not used here).
#pragma once
#include "types.h"
#include "mfma.h"

#if defined(DSV3_HIP)
#if defined(__HIP_DEVICE_COMPILE__) && !(defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__))
#error "dsv3 bf16 MFMA kernels need a CDNA2 / CDNA3 target (gfx90a, gfx940, gfx941, gfx942)"
#endif
namespace dsv3 {

typedef bf16x4 mfma_bf16x4;
typedef f32x4 mfma_f32x4;

// d = a·b + c on 16×16×16 tiles (layouts above).
DSV3_DEV mfma_f32x4 mfma_16x16x16_bf16(mfma_bf16x4 a, mfma_bf16x4 b, mfma_f32x4 c) { return mfma_bf16_k16(a, b, c); }

// Two f32 -> a packed bf16x2 (round to nearest even; lo in the low half): the HIP counterpart of
// mma_sm80.h's pack_bf16x2 (same bits, NaN payloads aside).
DSV3_DEV u32 pack_bf16x2(float lo, float hi) { return (u32)f32_to_bf16(lo).bits | ((u32)f32_to_bf16(hi).bits << 16); }

// Four f32 -> an MFMA bf16 operand (element e = value e).
DSV3_DEV mfma_bf16x4 pack_bf16x4(float a, float b, float c, float d) {
  typedef u32 u32x2 __attribute__((ext_vector_type(2)));
  const u32x2 w = {pack_bf16x2(a, b), pack_bf16x2(c, d)};
  return __builtin_bit_cast(mfma_bf16x4, w);
}

// No instruction moves across this point (the scheduler would otherwise hoist every LDS load of
// an unrolled MFMA loop ahead of the MFMAs, holding all their registers at once).
DSV3_DEV void sched_barrier() { __builtin_amdgcn_sched_barrier(0); }

// 2^x (v_exp_f32; 0 for -inf): the HIP counterpart of mma_sm80.h's fexp2.
DSV3_DEV float fexp2(float x) { return exp2f(x); }

}  // namespace dsv3
#endif
