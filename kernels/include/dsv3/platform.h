// dsv3 portability layer: platform detection, qualifiers, integer types, basic math.
//
// Everything vendor-specific in dsv3's kernels lives in this directory. Kernel bodies
// (kernels/*.cuh) are written once against it and compile unchanged with nvcc, NVRTC,
// hipcc (ROCm clang) and clang -x hip.
#pragma once

#if defined(__HIP_PLATFORM_AMD__) || defined(__HIP__) || defined(__HIPCC_RTC__)
#define DSV3_HIP 1
#if !defined(__HIPCC_RTC__)
#include <hip/hip_runtime.h>
#endif
#elif defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define DSV3_CUDA 1
#else
#error "dsv3 kernels are compiled by nvcc, NVRTC, hipcc, hiprtc or clang -x hip"
#endif

#define DSV3_DEV __device__ __forceinline__
#define DSV3_RESTRICT __restrict__

namespace dsv3 {

// No <stdint.h>: NVRTC and hiprtc do not ship it.
typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef long long i64;

// Threads per warp (NVIDIA) or wavefront (AMD CDNA: gfx90a, gfx942 run wave64).
#if defined(DSV3_HIP)
constexpr int WARP_SIZE = 64;
#else
constexpr int WARP_SIZE = 32;
#endif

DSV3_DEV float f32_inf() { return __uint_as_float(0x7f800000u); }
DSV3_DEV float f32_nan() { return __uint_as_float(0x7fc00000u); }
DSV3_DEV bool is_nan(float x) { return x != x; }

// Math through compiler builtins / intrinsics available on both vendors without headers.
DSV3_DEV float fexp(float x) { return expf(x); }
DSV3_DEV float flog(float x) { return logf(x); }
DSV3_DEV float fsqrt(float x) { return sqrtf(x); }
DSV3_DEV float frsqrt(float x) { return rsqrtf(x); }
DSV3_DEV float fabs_(float x) { return fabsf(x); }
DSV3_DEV float fmax_(float a, float b) { return fmaxf(a, b); }
DSV3_DEV float fmin_(float a, float b) { return fminf(a, b); }
DSV3_DEV float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

DSV3_DEV u32 ceil_div(u32 a, u32 b) { return (a + b - 1) / b; }

// Programmatic dependent launch (sm_90+; generated entry points call this first unless their
// kernel does: `Pdl::InKernel` in the manifest). A kernel
// the host launched with the PDL attribute may start while the previous kernel of its stream is
// still running: `griddepcontrol.wait` holds it until that kernel has completed and its memory is
// visible (so no read or write of this kernel can race with it), then `launch_dependents` lets
// the next kernel's blocks be scheduled during this one. Launched without the attribute both are
// no-ops; before sm_90 and on HIP the function is empty.
// Kernels whose manifest entry says `Pdl::InKernel` call the two halves themselves (each thread
// that touches memory the previous grid may access must wait first).
DSV3_DEV void grid_dependency_wait() {
#if defined(DSV3_CUDA) && defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
DSV3_DEV void grid_dependency_launch() {
#if defined(DSV3_CUDA) && defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
DSV3_DEV void grid_dependency_sync() {
  grid_dependency_wait();
  grid_dependency_launch();
}

// Flat thread index helpers (1-D blocks unless said otherwise).
DSV3_DEV u32 tid() { return threadIdx.x; }
DSV3_DEV u32 nthreads() { return blockDim.x; }
DSV3_DEV u32 lane() { return threadIdx.x % WARP_SIZE; }
DSV3_DEV u32 warp_id() { return threadIdx.x / WARP_SIZE; }
DSV3_DEV u32 nwarps() { return (blockDim.x + WARP_SIZE - 1) / WARP_SIZE; }

// Counter-based random numbers (splitmix64 finaliser): same stream on every vendor.
DSV3_DEV u64 mix64(u64 z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
// Uniform in (0, 1): 24 random bits, never 0 or 1.
DSV3_DEV float uniform01(u64 seed, u64 counter) {
  u64 r = mix64(seed ^ mix64(counter));
  return ((float)(u32)(r >> 40) + 0.5f) * (1.0f / 16777216.0f);
}

}  // namespace dsv3

// ---- timers and traps (the all-reduce barriers' watchdog) ----------------------------------
namespace dsv3 {
// A nanosecond clock that runs at a constant rate on every SM of the device.
DSV3_DEV u64 timer_ns() {
#if defined(DSV3_HIP)
  return __builtin_amdgcn_s_memrealtime() * 10ull;  // gfx9: 100 MHz real-time counter
#else
  u64 t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
#endif
}
// Aborts the kernel (the launch fails with an error the host sees at its next sync).
DSV3_DEV void trap() {
#if defined(DSV3_HIP)
  __builtin_trap();
#else
  asm volatile("trap;");
#endif
}
}  // namespace dsv3
