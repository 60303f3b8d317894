// Element types and their conversions to and from f32, written explicitly so that every
// vendor and every compiler (nvcc, NVRTC, hipcc, hiprtc) gives bit-identical results and no
// vendor header (cuda_bf16.h, hip_bf16.h) is needed.
#pragma once
#include "platform.h"

namespace dsv3 {

struct bf16 { u16 bits; };
struct f16 { u16 bits; };
// float8 e4m3fn (OCP, NVIDIA): bias 7, no infinities, 0x7f/0xff = NaN, max 448, has -0.
struct e4m3fn { u8 bits; };
// float8 e4m3fnuz (AMD gfx942): bias 8, no infinities, no -0, 0x80 = NaN, max 240.
// The same bit pattern means half the e4m3fn value (except 0x80 and 0x7f/0xff).
struct e4m3fnuz { u8 bits; };

// ---- f32 <-> bf16 -----------------------------------------------------------------------
DSV3_DEV float to_float(float x) { return x; }
DSV3_DEV float to_float(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }
DSV3_DEV float to_float(i32 x) { return (float)x; }
DSV3_DEV float to_float(i8 x) { return (float)x; }

DSV3_DEV bf16 f32_to_bf16(float f) {
  u32 u = __float_as_uint(f);
  bf16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a (quiet) NaN
    r.bits = (u16)((u >> 16) | 0x0040u);
    return r;
  }
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  r.bits = (u16)(u >> 16);
  return r;
}

// ---- f32 <-> f16 --------------------------------------------------------------------------
#if defined(DSV3_HIP)
DSV3_DEV float to_float(f16 x) {
  _Float16 h;
  __builtin_memcpy(&h, &x.bits, 2);
  return (float)h;
}
DSV3_DEV f16 f32_to_f16(float f) {
  _Float16 h = (_Float16)f;
  f16 r;
  __builtin_memcpy(&r.bits, &h, 2);
  return r;
}
#else
DSV3_DEV float to_float(f16 x) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
}
DSV3_DEV f16 f32_to_f16(float f) {
  f16 r;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(f));
  return r;
}
#endif

// ---- float8 -------------------------------------------------------------------------------
// Decode an e4m3 bit pattern with exponent bias `bias` (7: fn, 8: fnuz). NaN patterns are the
// caller's business.
DSV3_DEV float e4m3_decode_bias(u32 b, int bias) {
  u32 e = (b >> 3) & 0xfu, m = b & 7u;
  float mag = (e == 0) ? (float)m * __uint_as_float((u32)(127 - bias - 2) << 23)  // m/8 * 2^(1-bias)
                       : __uint_as_float(((e + 127u - (u32)bias) << 23) | (m << 20));
  return (b & 0x80u) ? -mag : mag;
}
DSV3_DEV float to_float(e4m3fn x) {
  if ((x.bits & 0x7fu) == 0x7fu) return f32_nan();
  return e4m3_decode_bias(x.bits, 7);
}
DSV3_DEV float to_float(e4m3fnuz x) {
  if (x.bits == 0x80u) return f32_nan();
  return e4m3_decode_bias(x.bits, 8);
}

// Four e4m3fn values packed in a u32 (byte i = value i, little-endian) to f32, exactly (0x7f /
// 0xff -> NaN). sm_89+ (Ada, Hopper: compute_89, sm_90a, NVRTC on those) converts two at a time
// in hardware (cvt.rn.f16x2.e4m3x2: every e4m3fn value is an f16, so f16 -> f32 is exact too);
// sm_80 and HIP decode in software. Both give the same floats.
DSV3_DEV void e4m3fn_x4_to_f32(u32 w, float (&f)[4]) {
#if defined(DSV3_CUDA) && defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 890)
  u32 h01, h23;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h01) : "h"((u16)(w & 0xffffu)));
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h23) : "h"((u16)(w >> 16)));
  asm("cvt.f32.f16 %0, %1;" : "=f"(f[0]) : "h"((u16)(h01 & 0xffffu)));
  asm("cvt.f32.f16 %0, %1;" : "=f"(f[1]) : "h"((u16)(h01 >> 16)));
  asm("cvt.f32.f16 %0, %1;" : "=f"(f[2]) : "h"((u16)(h23 & 0xffffu)));
  asm("cvt.f32.f16 %0, %1;" : "=f"(f[3]) : "h"((u16)(h23 >> 16)));
#else
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const u32 b = (w >> (8 * i)) & 0xffu;
    f[i] = (b & 0x7fu) == 0x7fu ? f32_nan() : e4m3_decode_bias(b, 7);
  }
#endif
}

// Encode |a| (finite, < 2^(9-bias) * 1.875 after saturation) into the 7 magnitude bits of an
// e4m3 with bias `bias`, rounding to nearest even.
DSV3_DEV u32 e4m3_encode_mag(float a, int bias) {
  // Smallest normal: 2^(1-bias). Below it the quantum is 2^(1-bias-3).
  float min_normal = __uint_as_float((u32)(127 + 1 - bias) << 23);
  if (a < min_normal) {
    float q = a * __uint_as_float((u32)(127 - (1 - bias - 3)) << 23);  // a / quantum, exact
    return (u32)rintf(q);  // 0..8; 8 is the smallest normal's encoding (e=1, m=0)
  }
  u32 u = __float_as_uint(a);
  int e = (int)(u >> 23) - 127 + bias;
  u32 mant = u & 0x7fffffu;
  u32 m3 = mant >> 20, rest = mant & 0xfffffu;
  if (rest > 0x80000u || (rest == 0x80000u && (m3 & 1u))) m3++;
  if (m3 == 8u) { m3 = 0; e++; }
  return ((u32)e << 3) | m3;
}

DSV3_DEV e4m3fn f32_to_e4m3fn(float f) {  // saturating (satfinite), NaN -> NaN
  e4m3fn r;
#if defined(DSV3_CUDA) && defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 890)
  // sm_89+: the hardware conversion (round to nearest even, satfinite: the same codes as the
  // software path below for every finite f; NaN gives 0x7f, the sign dropped). The quantizers
  // are bound by this conversion in software (~20 instructions a value).
  u16 pair;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(0.0f), "f"(f));
  r.bits = (u8)(pair & 0xffu);
  if (is_nan(f)) r.bits = (u8)(0x7fu | ((__float_as_uint(f) >> 24) & 0x80u));
#else
  u32 sign = (__float_as_uint(f) >> 24) & 0x80u;
  float a = fabsf(f);
  if (is_nan(f)) { r.bits = (u8)(0x7fu | sign); return r; }
  if (a >= 448.0f) { r.bits = (u8)(0x7eu | sign); return r; }
  r.bits = (u8)(sign | e4m3_encode_mag(a, 7));
#endif
  return r;
}
DSV3_DEV e4m3fnuz f32_to_e4m3fnuz(float f) {  // saturating, NaN -> 0x80, never -0
  e4m3fnuz r;
  u32 sign = (__float_as_uint(f) >> 24) & 0x80u;
  float a = fabsf(f);
  if (is_nan(f)) { r.bits = 0x80u; return r; }
  if (a >= 240.0f) { r.bits = (u8)(0x7fu | sign); return r; }
  u32 mag = e4m3_encode_mag(a, 8);
  r.bits = (u8)(mag == 0 ? 0u : (sign | mag));
  return r;
}

// ---- generic conversion: from_float<T>(float) ----------------------------------------------
template <class T> struct Conv;
template <> struct Conv<float> { DSV3_DEV static float from(float f) { return f; } };
template <> struct Conv<bf16> { DSV3_DEV static bf16 from(float f) { return f32_to_bf16(f); } };
template <> struct Conv<f16> { DSV3_DEV static f16 from(float f) { return f32_to_f16(f); } };
template <> struct Conv<e4m3fn> { DSV3_DEV static e4m3fn from(float f) { return f32_to_e4m3fn(f); } };
template <> struct Conv<e4m3fnuz> { DSV3_DEV static e4m3fnuz from(float f) { return f32_to_e4m3fnuz(f); } };
template <class T> DSV3_DEV T from_float(float f) { return Conv<T>::from(f); }

// Largest finite value used as the quantization range of each float8 type. e4m3fnuz uses 224
// (not its 240 maximum) so that its scales are exactly twice the e4m3fn ones and the quantized
// bit patterns agree with e4m3fn's (the convention of AMD's FP8 serving stacks).
template <class F8> struct Fp8Traits;
template <> struct Fp8Traits<e4m3fn> { static constexpr float QMAX = 448.0f; };
template <> struct Fp8Traits<e4m3fnuz> { static constexpr float QMAX = 224.0f; };

}  // namespace dsv3
