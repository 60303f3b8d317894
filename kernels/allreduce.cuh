// Custom all-reduce (sum) over peer memory: one-shot and two-shot, for up to AR_MAX_RANKS GPUs.
//
// Every rank runs the same kernel with the same grid on its own stream. Inputs are read straight
// from the peers' memory (peer access within a process; mapped IPC memory across processes), so
// the pointers `in0..in7` are the SAME list on every rank (rank order), and `sig0..sig7` are the
// ranks' signal buffers (an ArSignal header followed by a scratch area of the registered size).
//
// Determinism: each element is summed in f32 in rank order 0, 1, ..., world-1 and rounded to T
// once, by whichever rank computes it: every rank ends with bit-identical results, equal to a
// CPU loop that does the same.
//
// Barriers: per block, each of the first `world` threads owns one peer. It bumps a local
// monotonic counter (self_counter[block][peer], never reset, so iterations and CUDA-graph
// replays never see stale flags), stores the new value into the peer's slot
// peer_counter[parity][block][rank] with a system-scope release and spins on its own slot
// peer_counter[parity][block][peer] with a system-scope acquire. Two slots (by parity) because
// a fast peer may already signal the next barrier before this rank has read the current one.
// A watchdog (ArSignal::timeout_ns, 0 = off) traps the kernel when a peer never arrives, so a
// missing rank becomes a launch error instead of a hang.
//
//   one-shot: barrier; out[i] = sum_r in_r[i]; barrier (peers are done reading my input).
//             Not in place: out must not alias any rank's input (the host stages in-place calls
//             through the registered buffer).
//   two-shot: barrier; rank r reduces its slice into its scratch; barrier (release/acquire: the
//             slices are visible); every rank gathers all slices into out. In place is fine: all
//             inputs are read before the middle barrier. No end barrier: the next call's start
//             barrier keeps the scratch from being overwritten while a peer still reads it.
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

constexpr u32 AR_MAX_RANKS = 8;
constexpr u32 AR_MAX_BLOCKS = 128;
constexpr u32 AR_THREADS = 512;
// Bytes of the signal header; the scratch area of the two-shot kernel follows it.
constexpr u64 AR_SIGNAL_BYTES = 16384;

struct ArSignal {
  u32 self_counter[AR_MAX_BLOCKS][AR_MAX_RANKS];     // offset 0, 4 KiB: this rank's epochs
  u32 peer_counter[2][AR_MAX_BLOCKS][AR_MAX_RANKS];  // offset 4096, 8 KiB: written by peers
  u64 timeout_ns;                                    // offset 12288: watchdog (0 = off)
};

DSV3_DEV u32 ar_min(u32 a, u32 b) { return a < b ? a : b; }

DSV3_DEV u64 ar_pick(u32 i, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5, u64 a6, u64 a7) {
  switch (i) {
    case 0: return a0;
    case 1: return a1;
    case 2: return a2;
    case 3: return a3;
    case 4: return a4;
    case 5: return a5;
    case 6: return a6;
    default: return a7;
  }
}

// All threads of the block call it. `peer_sig` is the signal buffer of peer threadIdx.x (only
// read by the first `world` threads).
DSV3_DEV void ar_barrier(ArSignal* self, u64 peer_sig, u32 rank, u32 world) {
  __syncthreads();
  if (threadIdx.x < world) {
    const u32 p = threadIdx.x;
    const u32 b = blockIdx.x;
    const u32 v = self->self_counter[b][p] + 1u;
    self->self_counter[b][p] = v;
    ArSignal* peer = reinterpret_cast<ArSignal*>(peer_sig);
    store_release_sys(&peer->peer_counter[v & 1u][b][rank], v);
    const u32* mine = &self->peer_counter[v & 1u][b][p];
    const u64 timeout = self->timeout_ns;
    u64 t0 = 0;
    u32 spins = 0;
    while (load_acquire_sys(mine) != v) {
      if (timeout != 0 && (++spins & 0xfffu) == 0) {
        const u64 t = timer_ns();
        if (t0 == 0) t0 = t;
        else if (t - t0 > timeout) trap();
      }
    }
  }
  __syncthreads();
}

template <class T>
DSV3_DEV void allreduce_oneshot(T* out, u64 in0, u64 in1, u64 in2, u64 in3, u64 in4, u64 in5, u64 in6, u64 in7,
                                u64 sig0, u64 sig1, u64 sig2, u64 sig3, u64 sig4, u64 sig5, u64 sig6, u64 sig7,
                                u32 rank, u32 world, u32 n) {
  if (blockIdx.x >= AR_MAX_BLOCKS || world > AR_MAX_RANKS || blockDim.x < world) return;
  ArSignal* self = reinterpret_cast<ArSignal*>(ar_pick(rank, sig0, sig1, sig2, sig3, sig4, sig5, sig6, sig7));
  const u64 peer_sig = ar_pick(threadIdx.x, sig0, sig1, sig2, sig3, sig4, sig5, sig6, sig7);
  const u64 ins[AR_MAX_RANKS] = {in0, in1, in2, in3, in4, in5, in6, in7};
  ar_barrier(self, peer_sig, rank, world);

  constexpr int V = 16 / sizeof(T);
  bool vec_ok = is_aligned<T, V>(out);
#pragma unroll
  for (u32 r = 0; r < AR_MAX_RANKS; ++r)
    if (r < world) vec_ok = vec_ok && is_aligned<T, V>(reinterpret_cast<const T*>(ins[r]));
  const u32 nv = vec_ok ? n / V : 0u;
  const u32 stride = gridDim.x * blockDim.x;
  const u32 first = blockIdx.x * blockDim.x + threadIdx.x;
  for (u32 i = first; i < nv; i += stride) {
    float acc[V];
    load_f32<T, V>(reinterpret_cast<const T*>(ins[0]) + (u64)i * V, acc);
#pragma unroll
    for (u32 r = 1; r < AR_MAX_RANKS; ++r) {
      if (r < world) {
        float x[V];
        load_f32<T, V>(reinterpret_cast<const T*>(ins[r]) + (u64)i * V, x);
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] += x[j];
      }
    }
    store_f32<T, V>(out + (u64)i * V, acc);
  }
  for (u32 i = nv * V + first; i < n; i += stride) {
    float acc = to_float(reinterpret_cast<const T*>(ins[0])[i]);
#pragma unroll
    for (u32 r = 1; r < AR_MAX_RANKS; ++r)
      if (r < world) acc += to_float(reinterpret_cast<const T*>(ins[r])[i]);
    out[i] = from_float<T>(acc);
  }
  ar_barrier(self, peer_sig, rank, world);
}

template <class T>
DSV3_DEV void allreduce_twoshot(T* out, u64 in0, u64 in1, u64 in2, u64 in3, u64 in4, u64 in5, u64 in6, u64 in7,
                                u64 sig0, u64 sig1, u64 sig2, u64 sig3, u64 sig4, u64 sig5, u64 sig6, u64 sig7,
                                u32 rank, u32 world, u32 n) {
  if (blockIdx.x >= AR_MAX_BLOCKS || world > AR_MAX_RANKS || blockDim.x < world) return;
  const u64 sigs[AR_MAX_RANKS] = {sig0, sig1, sig2, sig3, sig4, sig5, sig6, sig7};
  ArSignal* self = reinterpret_cast<ArSignal*>(ar_pick(rank, sig0, sig1, sig2, sig3, sig4, sig5, sig6, sig7));
  const u64 peer_sig = ar_pick(threadIdx.x, sig0, sig1, sig2, sig3, sig4, sig5, sig6, sig7);
  const u64 ins[AR_MAX_RANKS] = {in0, in1, in2, in3, in4, in5, in6, in7};
  ar_barrier(self, peer_sig, rank, world);

  constexpr int V = 16 / sizeof(T);
  // Slice of each rank: a multiple of V elements (so every slice start stays aligned).
  const u32 part = ceil_div(ceil_div(n, world), (u32)V) * (u32)V;
  const u32 stride = gridDim.x * blockDim.x;
  const u32 first = blockIdx.x * blockDim.x + threadIdx.x;

  // Stage 1: reduce my slice of every input into my scratch.
  {
    const u32 lo = ar_min(rank * part, n);
    const u32 len = ar_min(lo + part, n) - lo;
    T* tmp = reinterpret_cast<T*>(reinterpret_cast<char*>(self) + AR_SIGNAL_BYTES);
    bool vec_ok = true;
#pragma unroll
    for (u32 r = 0; r < AR_MAX_RANKS; ++r)
      if (r < world) vec_ok = vec_ok && is_aligned<T, V>(reinterpret_cast<const T*>(ins[r]));
    const u32 nv = vec_ok ? len / V : 0u;
    for (u32 i = first; i < nv; i += stride) {
      const u64 e = (u64)lo + (u64)i * V;
      float acc[V];
      load_f32<T, V>(reinterpret_cast<const T*>(ins[0]) + e, acc);
#pragma unroll
      for (u32 r = 1; r < AR_MAX_RANKS; ++r) {
        if (r < world) {
          float x[V];
          load_f32<T, V>(reinterpret_cast<const T*>(ins[r]) + e, x);
#pragma unroll
          for (int j = 0; j < V; ++j) acc[j] += x[j];
        }
      }
      store_f32<T, V>(tmp + (u64)i * V, acc);
    }
    for (u32 i = nv * V + first; i < len; i += stride) {
      float acc = to_float(reinterpret_cast<const T*>(ins[0])[lo + i]);
#pragma unroll
      for (u32 r = 1; r < AR_MAX_RANKS; ++r)
        if (r < world) acc += to_float(reinterpret_cast<const T*>(ins[r])[lo + i]);
      tmp[i] = from_float<T>(acc);
    }
  }
  ar_barrier(self, peer_sig, rank, world);

  // Stage 2: gather every rank's slice (starting with the next rank, to spread the links).
  const bool out_vec = is_aligned<T, V>(out);
  for (u32 k = 0; k < world; ++k) {
    const u32 p = (rank + k) % world;
    const u32 lo = ar_min(p * part, n);
    const u32 len = ar_min(lo + part, n) - lo;
    const T* src = reinterpret_cast<const T*>(reinterpret_cast<const char*>(sigs[p]) + AR_SIGNAL_BYTES);
    const u32 nv = out_vec ? len / V : 0u;
    for (u32 i = first; i < nv; i += stride)
      store_vec<T, V>(out + (u64)lo + (u64)i * V, load_vec<T, V>(src + (u64)i * V));
    for (u32 i = nv * V + first; i < len; i += stride) out[lo + i] = src[i];
  }
}

}  // namespace dsv3
