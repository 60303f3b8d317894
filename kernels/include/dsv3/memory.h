// Vector loads/stores, atomics and memory fences (including system-scope release/acquire flags
// for cross-GPU signalling).
#pragma once
#include "types.h"

namespace dsv3 {

// N elements of T moved as one aligned access (sizeof(T) * N in {4, 8, 16} bytes).
template <class T, int N> struct alignas(sizeof(T) * N) Vec { T v[N]; };

template <class T, int N> DSV3_DEV Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}
template <class T, int N> DSV3_DEV void store_vec(T* p, const Vec<T, N>& x) {
  *reinterpret_cast<Vec<T, N>*>(p) = x;
}
// The bits of x as a To of the same size (through a union: nvcc, NVRTC and clang define it;
// NVRTC has no __builtin_memcpy).
template <class To, class From> DSV3_DEV To bit_cast(const From& x) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs types of one size");
  union {
    From from;
    To to;
  } u;
  u.from = x;
  return u.to;
}
// Load N elements and widen them to f32.
template <class T, int N> DSV3_DEV void load_f32(const T* p, float* out) {
  Vec<T, N> x = load_vec<T, N>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_float(x.v[i]);
}
template <class T, int N> DSV3_DEV void store_f32(T* p, const float* in) {
  Vec<T, N> x;
#pragma unroll
  for (int i = 0; i < N; ++i) x.v[i] = from_float<T>(in[i]);
  store_vec<T, N>(p, x);
}
// True when p is aligned for a Vec<T, N> access.
template <class T, int N> DSV3_DEV bool is_aligned(const T* p) {
  return (((u64)p) % (sizeof(T) * N)) == 0;
}

DSV3_DEV float atomic_add(float* p, float v) { return atomicAdd(p, v); }
DSV3_DEV int atomic_add(int* p, int v) { return atomicAdd(p, v); }
DSV3_DEV u32 atomic_add(u32* p, u32 v) { return atomicAdd(p, v); }
DSV3_DEV u32 atomic_cas(u32* p, u32 cmp, u32 v) { return atomicCAS(p, cmp, v); }
// f32 max through the integer order of the bit patterns (valid for non-NaN values).
DSV3_DEV void atomic_max(float* p, float v) {
  if (v >= 0.0f) atomicMax(reinterpret_cast<int*>(p), __float_as_int(v));
  else atomicMin(reinterpret_cast<unsigned int*>(p), __float_as_uint(v));
}

DSV3_DEV void fence_block() { __threadfence_block(); }
DSV3_DEV void fence_device() { __threadfence(); }
DSV3_DEV void fence_system() { __threadfence_system(); }
// Acquire-release fence at device scope (lighter than fence_device's sequentially consistent one):
// with a relaxed atomic after it, a release; after one, an acquire.
DSV3_DEV void fence_acq_rel_gpu() {
#if defined(DSV3_HIP)
  __builtin_amdgcn_fence(__ATOMIC_ACQ_REL, "agent");
#else
  asm volatile("fence.acq_rel.gpu;" ::: "memory");
#endif
}

// Release store / acquire load of a flag at system scope (visible to peer GPUs and the host).
DSV3_DEV void store_release_sys(u32* p, u32 v) {
#if defined(DSV3_HIP)
  __atomic_store_n(p, v, __ATOMIC_RELEASE);  // HIP's clang: system scope by default
#else
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
#endif
}
DSV3_DEV u32 load_acquire_sys(const u32* p) {
#if defined(DSV3_HIP)
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
#else
  u32 v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
#endif
}
// Same at device (GPU) scope.
DSV3_DEV void store_release_gpu(u32* p, u32 v) {
#if defined(DSV3_HIP)
  __hip_atomic_store(p, v, __ATOMIC_RELEASE, __HIP_MEMORY_SCOPE_AGENT);
#else
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
#endif
}
DSV3_DEV u32 load_acquire_gpu(const u32* p) {
#if defined(DSV3_HIP)
  return __hip_atomic_load(p, __ATOMIC_ACQUIRE, __HIP_MEMORY_SCOPE_AGENT);
#else
  u32 v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
#endif
}
// 16 bytes (16-byte aligned) loaded / stored relaxed at system scope: no L1 copy, so a spinning
// reader sees a peer GPU's stores. Each aligned 4-byte word is single-copy atomic, the 16 bytes as
// a whole are not: a reader may see some words of a store before the others (HIP: four 4-byte
// atomics).
DSV3_DEV Vec<u32, 4> load_relaxed_sys_16(const void* p) {
  Vec<u32, 4> w;
#if defined(DSV3_HIP)
  u32* q = reinterpret_cast<u32*>(const_cast<void*>(p));
#pragma unroll
  for (int i = 0; i < 4; ++i) w.v[i] = __hip_atomic_load(q + i, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_SYSTEM);
#else
  asm volatile("ld.relaxed.sys.global.v4.b32 {%0, %1, %2, %3}, [%4];"
               : "=r"(w.v[0]), "=r"(w.v[1]), "=r"(w.v[2]), "=r"(w.v[3])
               : "l"(p)
               : "memory");
#endif
  return w;
}
DSV3_DEV void store_relaxed_sys_16(void* p, const Vec<u32, 4>& w) {
#if defined(DSV3_HIP)
  u32* q = reinterpret_cast<u32*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) __hip_atomic_store(q + i, w.v[i], __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_SYSTEM);
#else
  asm volatile("st.relaxed.sys.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(w.v[0]), "r"(w.v[1]), "r"(w.v[2]),
               "r"(w.v[3])
               : "memory");
#endif
}

}  // namespace dsv3
