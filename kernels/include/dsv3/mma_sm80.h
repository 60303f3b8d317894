// NVIDIA tensor-core and async-copy primitives of sm_80+ (Ampere, Ada, Hopper): cp.async with
// zero fill, streaming 16-byte loads, ldmatrix (plain and transposed), mma.sync m16n8k16 bf16 /
// f16 -> f32, m16n8k32 s8 -> s32 and e4m3 -> f32 (native on sm_89+, widened to f16 on sm_80) and
// packed bf16x2 fma. CUDA only: a kernel that includes this guards its use with DSV3_CUDA and
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

// The first 1024-byte boundary at or after `p` in shared memory, as a shared address and a generic
// pointer: 128-byte-swizzled TMA boxes and wgmma descriptors need their 1024-byte swizzle atom
// aligned, and dynamic shared memory is only guaranteed 16.
struct SmemBase {
  u32 addr;
  u8* ptr;
};
DSV3_DEV SmemBase smem_base_1024(u8* p) {
  const u32 raw = smem_u32(p), addr = (raw + 1023u) & ~1023u;
  return {addr, p + (addr - raw)};
}

// 16-byte global -> shared copy, bypassing L1, of `bytes` (16: a copy; 0: 16 zero bytes, the
// source is not read).
DSV3_DEV void cp_async_16_n(u32 dst, const void* src, u32 bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
// The same, `valid` false filling the 16 bytes with zeros.
DSV3_DEV void cp_async_16(u32 dst, const void* src, bool valid) { cp_async_16_n(dst, src, valid ? 16u : 0u); }
// 4-byte global -> shared copy (through L1) of `bytes` (4 or 0), zero fill as cp_async_16_n.
DSV3_DEV void cp_async_4_n(u32 dst, const void* src, u32 bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
// The same, `valid` false filling the 4 bytes with zeros.
DSV3_DEV void cp_async_4(u32 dst, const void* src, bool valid) { cp_async_4_n(dst, src, valid ? 4u : 0u); }
DSV3_DEV void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until at most N committed groups are still in flight.
template <int N> DSV3_DEV void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

// 16- and 4-byte global loads of data read once (streamed weights): read-only path, not kept in
// L1. volatile: they stay where the code issues them (a prefetch ahead of its use).
DSV3_DEV void ld_stream_16(u32 (&v)[4], const void* p) {
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3])
               : "l"(p));
}
DSV3_DEV u32 ld_stream_4(const void* p) {
  u32 v;
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

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

// The same with f16 operands.
DSV3_DEV void mma_f16_16816(float (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
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

// c += a · b, a 16x32 e4m3fn (row), b 32x8 e4m3fn (col), c 16x8 f32; fragments as the s8 ones.
// sm_89+ (compute_89 PTX, sm_90a SASS): mma.sync.m16n8k32 e4m3. sm_80 (compute_80 PTX): the
// codes are widened in registers to f16 (exact: an e4m3 code shifted into an f16 is the value ·
// 2^-8, subnormals included; no table, no cvt) and fed to two m16n8k16 f16 MMAs, so c holds the
// sum · 2^-16: multiply the result by E4M3_MMA_FIX.
#if __CUDA_ARCH__ >= 890
constexpr float E4M3_MMA_FIX = 1.0f;
#else
constexpr float E4M3_MMA_FIX = 65536.0f;
// Two e4m3fn codes (bytes lo, hi of x selected by `sel`) -> f16x2 of value · 2^-8.
DSV3_DEV u32 e4m3x2_to_f16x2_scaled(u32 x, u32 sel) {
  u32 p;  // [b_lo, 0, b_hi, 0]
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(p) : "r"(x), "r"(0u), "r"(sel));
  return ((p & 0x007f007fu) << 7) | ((p & 0x00800080u) << 8);
}
#endif
DSV3_DEV void mma_e4m3_16832(float (&c)[4], const u32 (&a)[4], const u32 (&b)[2]) {
#if __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  // The thread's 4 consecutive k of each fp8 register map to the f16 mma's k pairs
  // {2t, 2t+1} and {2t+8, 2t+9}: the same permutation of k for A and B, so the sum is the same.
  mma_f16_16816(c, e4m3x2_to_f16x2_scaled(a[0], 0x4140u), e4m3x2_to_f16x2_scaled(a[1], 0x4140u),
                e4m3x2_to_f16x2_scaled(a[0], 0x4342u), e4m3x2_to_f16x2_scaled(a[1], 0x4342u),
                e4m3x2_to_f16x2_scaled(b[0], 0x4140u), e4m3x2_to_f16x2_scaled(b[0], 0x4342u));
  mma_f16_16816(c, e4m3x2_to_f16x2_scaled(a[2], 0x4140u), e4m3x2_to_f16x2_scaled(a[3], 0x4140u),
                e4m3x2_to_f16x2_scaled(a[2], 0x4342u), e4m3x2_to_f16x2_scaled(a[3], 0x4342u),
                e4m3x2_to_f16x2_scaled(b[1], 0x4140u), e4m3x2_to_f16x2_scaled(b[1], 0x4342u));
#endif
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
