// NVIDIA tensor-core and async-copy primitives of sm_80+ (Ampere, Ada, Hopper): cp.async with
// zero fill, ldmatrix (plain and transposed), mma.sync m16n8k16 bf16 -> f32, m16n8k32 s8 -> s32
// and packed bf16x2 fma. CUDA only: a kernel that includes this guards its use with DSV3_CUDA and
// gives HIP its own path.
#pragma once
#include "platform.h"

#if defined(DSV3_CUDA)
namespace dsv3 {

// 32-bit shared-memory address of a generic pointer into shared memory.
DSV3_DEV u32 smem_u32(const void* p) {
  u32 a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}

// 16-byte global -> shared copy, bypassing L1; `valid` false fills the 16 bytes with zeros
// (the source is not read).
DSV3_DEV void cp_async_16(u32 dst, const void* src, bool valid) {
  const u32 n = valid ? 16u : 0u;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
DSV3_DEV void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until at most N committed groups are still in flight.
template <int N> DSV3_DEV void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

DSV3_DEV void ldmatrix_x4(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
DSV3_DEV void ldmatrix_x4_trans(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a · b, a 16x16 bf16 (row), b 16x8 bf16 (col), c 16x8 f32. Fragments as in the PTX ISA:
// a {a0..a3}, b {b0, b1}, c {c0..c3} (rows lane/4 and lane/4 + 8, columns 2·(lane%4) + {0, 1}).
DSV3_DEV void mma_bf16_16816(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c += a · b, a 16x32 s8 (row), b 32x8 s8 (col), c 16x8 s32 (exact). Fragments as the e4m3
// m16n8k32 ones: a {a0..a3} (4 consecutive k per register), b {b0, b1}; sm_80+.
DSV3_DEV void mma_s8_16832(i32 (&c)[4], const u32 (&a)[4], const u32 (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d = a · b + c on packed bf16x2 (round to nearest even); sm_80+.
DSV3_DEV u32 fma_bf16x2(u32 a, u32 b, u32 c) {
  u32 d;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// Two f32 -> a packed bf16x2 (round to nearest even; lo in the low half).
DSV3_DEV u32 pack_bf16x2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

DSV3_DEV float fexp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace dsv3
#endif
