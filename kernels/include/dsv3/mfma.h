// AMD matrix-core (MFMA) instructions of the 16×16 family, one wrapper per operation, with the
// per-architecture selection in one place. HIP only; DSV3_MFMA is defined where a kernel may use
// them (gfx90a = CDNA2, gfx940/941/942 = CDNA3; DSV3_CDNA3 for the latter). Elsewhere (other
// targets, a host pass) nothing here is defined and kernels keep their portable paths.
//
// Register layouts of every wrapper below (single-block 16×16 MFMAs; the gfx9 formulas of AMD's
// Matrix Instruction Calculator, github.com/ROCm/amd_matrix_instruction_calculator), lane l = 0..63:
//   A (16 × K, row i) : lane l holds row i = l % 16, the K/4 consecutive k = (K/4)·(l / 16) + e,
//                       element e of the lane's register(s) in order (byte e, or half e);
//   B (K × 16, col j) : the same with column j = l % 16;
//   C/D (16 × 16, f32 or i32, 4 registers): register v of lane l holds D[4·(l / 16) + v][l % 16].
// A and B have the same layout, so a GEMM over K-major operands [rows, K] loads both with one
// fragment reader (8 consecutive bytes of row l % 16 at byte 8·(l / 16) per k32 step).
#pragma once
#include "platform.h"

#if defined(DSV3_HIP) && (defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__))
#define DSV3_MFMA 1
#define DSV3_CDNA3 1
#elif defined(DSV3_HIP) && defined(__gfx90a__)
#define DSV3_MFMA 1
#endif

#if defined(DSV3_MFMA)
namespace dsv3 {

typedef float f32x4 __attribute__((ext_vector_type(4)));
typedef i32 i32x4 __attribute__((ext_vector_type(4)));
typedef _Float16 f16x4 __attribute__((ext_vector_type(4)));
typedef short bf16x4 __attribute__((ext_vector_type(4)));  // 4 bf16 bit patterns

// c += a · b over k32 with 8-bit operands: 8 bytes (k = 8·(l / 16) .. +7) of A row / B column
// l % 16 per lane. CDNA3: one v_mfma_i32_16x16x32_i8; CDNA2: two v_mfma_i32_16x16x16i8, on the
// low and the high 4 bytes of every lane (the same k split for A and B, so the sum is over all 32).
DSV3_DEV i32x4 mfma_i8_k32(u64 a, u64 b, i32x4 c) {
#if defined(DSV3_CDNA3)
  return __builtin_amdgcn_mfma_i32_16x16x32_i8((long)a, (long)b, c, 0, 0, 0);
#else
  c = __builtin_amdgcn_mfma_i32_16x16x16i8((i32)(u32)a, (i32)(u32)b, c, 0, 0, 0);
  return __builtin_amdgcn_mfma_i32_16x16x16i8((i32)(u32)(a >> 32), (i32)(u32)(b >> 32), c, 0, 0, 0);
#endif
}

#if defined(DSV3_CDNA3)
// c += a · b over k32, e4m3fnuz operands (bias 8, 0x80 = NaN), layout as mfma_i8_k32.
DSV3_DEV f32x4 mfma_fp8_k32(u64 a, u64 b, f32x4 c) {
  return __builtin_amdgcn_mfma_f32_16x16x32_fp8_fp8((long)a, (long)b, c, 0, 0, 0);
}
#endif

// c += a · b over k16, f16 operands (4 halves per lane: k = 4·(l / 16) + e). Both archs. Note that
// CDNA2's f16 / bf16 MFMAs flush denormal inputs and outputs to zero.
DSV3_DEV f32x4 mfma_f16_k16(f16x4 a, f16x4 b, f32x4 c) {
  return __builtin_amdgcn_mfma_f32_16x16x16f16(a, b, c, 0, 0, 0);
}

// c += a · b over k16, bf16 operands (layout as mfma_f16_k16; the _1k form, both archs).
DSV3_DEV f32x4 mfma_bf16_k16(bf16x4 a, bf16x4 b, f32x4 c) {
  return __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(a, b, c, 0, 0, 0);
}

}  // namespace dsv3
#endif  // DSV3_MFMA
