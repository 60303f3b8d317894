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
//   push:     no barrier; every rank stores its input into its slot of every rank's receive
//             buffer and polls its own buffer until every slot holds data (the buffers are kept
//             at a sentinel pattern between uses). In place is fine. See allreduce_push below.
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
  u32 push_gen;   // offset 12296: receive-buffer generation of this rank's next push call
  u32 push_done;  // offset 12300: blocks of the running push call that have counted in
};

// A spin-wait watchdog: tick() once per spin; traps once the wait exceeds `timeout` ns (0 = never),
// so a missing peer becomes a launch error instead of a hang. The clock is read every 4096 spins.
struct ArWatchdog {
  u64 timeout;
  u64 t0 = 0;
  u32 spins = 0;
  DSV3_DEV explicit ArWatchdog(u64 timeout_ns) : timeout(timeout_ns) {}
  DSV3_DEV void tick() {
    if (timeout != 0 && (++spins & 0xfffu) == 0) {
      const u64 t = timer_ns();
      if (t0 == 0) t0 = t;
      else if (t - t0 > timeout) trap();
    }
  }
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
    ArWatchdog wd(self->timeout_ns);
    while (load_acquire_sys(mine) != v) wd.tick();
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

// ---- push one-shot (Lamport-style: the data is its own flag) ------------------------------------
//
// Every rank owns a receive buffer of AR_PUSH_GENERATIONS generations; a generation holds one slot
// per rank of `slot_cap` bytes (the largest message). Call k of a rank uses generation k mod 3
// (ArSignal::push_gen, in device memory, so CUDA graphs replay correctly). In a call every
// thread owns some 16-byte vectors v of the message; for each it
//   1. reads its input vector and stores it into slot `rank` of every rank's generation (its own
//      included), with 16-byte relaxed system-scope stores;
//   2. polls its own generation until vector v of every slot holds data, sums the slots in f32 in
//      rank order (bit-identical on every rank), writes out[v] (the thread that read in[v] writes
//      out[v], after all its reads: in place is fine) and resets those vectors to the sentinel.
// The block that counts itself in last advances push_gen at its end (every block has read it).
//
// Sentinel: every byte 0xff (f32 0xffffffff, bf16 0xffff: negative NaNs). One fill serves both
// element types, so calls of either dtype share the buffers. An input element with exactly that
// bit pattern is pushed with its sign bit cleared (still a NaN, and a NaN input makes a NaN sum
// anyway); every other value, +0.0 and -0.0 included, is pushed and summed unchanged, so the result
// equals the CPU's rank-order f32 sum bit for bit.
//
// Memory ordering. Nothing but the data is published, so no release/acquire: pushes are
// st.relaxed.sys, polls ld.relaxed.sys (no stale L1 copy; every spin re-reads the memory). A
// 16-byte store may be observed in parts (each aligned 4-byte word is single-copy atomic, the
// vector is not), so the poll checks every element of the vector, not one flag word.
//
// Why the reset cannot lose data or leave stale data (q: this rank, p: any rank, call k uses
// generation g = k mod 3). Facts: (F1) every rank's call k pushes at least one vector to every rank
// (n >= 1) and completes only after it has read every vector of every slot of its generation;
// (F2) stream order: a rank's call k+1 starts after its call k has completed, its stores
// performed in memory.
//  - Stale data: at the start of q's call k, generation g of q is all sentinel. It was last
//    written in call k-3; every vector written then was read by exactly one thread of q, which
//    reset it right after (same thread, same address: the reset follows the data in coherence
//    order). Calls k-2 and k-1 use the other two generations.
//  - Lost data: q resets vector v of slot p in call k after reading p's call-k data there. Only q
//    reads q's buffer, and only this thread reads this vector, so nobody reads it meanwhile. The
//    next write to it is p's push in call k+3; p starts call k+3 after completing call k+2 (F2),
//    which needs q's call-k+2 pushes (F1), which q issues after its calls k and k+1 completed
//    (F2), this reset included. Two generations would already do (p's call k+2 needs q's call
//    k+1); the third puts a whole call of q between the reset and the next write, a margin for
//    the one step that rests on the kernel boundary (a completed kernel's stores to its own GPU's
//    memory are performed there before a peer sees anything of the next kernel) rather than on
//    an explicit system-scope fence.
// HIP: system-scope atomics reach a peer's memory only when it is fine-grained (gfx90a, gfx942:
// hipExtMallocWithFlags(..., hipDeviceMallocFinegrained)); on coarse-grained memory the poll may
// never see the pushes (the watchdog then traps).
constexpr u32 AR_PUSH_GENERATIONS = 3;

DSV3_DEV bool ar_is_sentinel(float x) { return __float_as_uint(x) == 0xffffffffu; }
DSV3_DEV bool ar_is_sentinel(bf16 x) { return x.bits == 0xffffu; }
DSV3_DEV float ar_not_sentinel(float x) { return ar_is_sentinel(x) ? __uint_as_float(0x7fffffffu) : x; }
DSV3_DEV bf16 ar_not_sentinel(bf16 x) {
  if (ar_is_sentinel(x)) x.bits = 0x7fffu;
  return x;
}
// The receive buffers carry raw 16-byte words; these view them as V elements of T.
template <class T, int V> DSV3_DEV bool ar_has_sentinel(const Vec<u32, 4>& w) {
  const Vec<T, V> x = bit_cast<Vec<T, V>>(w);
  bool s = false;
#pragma unroll
  for (int j = 0; j < V; ++j) s = s || ar_is_sentinel(x.v[j]);
  return s;
}
template <class T, int V> DSV3_DEV void ar_to_f32(const Vec<u32, 4>& w, float* f) {
  const Vec<T, V> x = bit_cast<Vec<T, V>>(w);
#pragma unroll
  for (int j = 0; j < V; ++j) f[j] = to_float(x.v[j]);
}

// recv0..recv7: every rank's receive buffer (AR_PUSH_GENERATIONS * world * slot_cap bytes, all
// sentinel when first used); sig: this rank's signal buffer. out may equal inp (not overlap it
// otherwise).
template <class T>
DSV3_DEV void allreduce_push(T* out, const T* inp, u64 recv0, u64 recv1, u64 recv2, u64 recv3, u64 recv4, u64 recv5,
                             u64 recv6, u64 recv7, u64 sig, u32 rank, u32 world, u32 n, u32 slot_cap) {
  constexpr int V = 16 / sizeof(T);
  const u32 nvec = ceil_div(n, (u32)V);
  const u64 slot = (u64)nvec * 16;  // bytes of each rank's slot in this call
  if (world > AR_MAX_RANKS || rank >= world || slot > slot_cap) trap();
  ArSignal* self = reinterpret_cast<ArSignal*>(sig);
  // Plain load: written by the previous push launch on this stream (stream order). Each block
  // then counts itself in (release: after its threads' reads); the block that counts in last
  // advances push_gen at its end (acquire), when every block has read it. The count's result is
  // only consumed at the end: no wait for the atomic before the pushes.
  const u32 gen = self->push_gen;
  __syncthreads();
  u32 arrived = 0;
  if (threadIdx.x == 0) {
    fence_acq_rel_gpu();
    arrived = atomic_add(&self->push_done, 1u);
  }
  const u64 gen_off = (u64)gen * world * slot_cap;
  const u64 recv[AR_MAX_RANKS] = {recv0, recv1, recv2, recv3, recv4, recv5, recv6, recv7};
  const u64 mine = ar_pick(rank, recv0, recv1, recv2, recv3, recv4, recv5, recv6, recv7) + gen_off;
  const bool in_vec = is_aligned<T, V>(inp);
  const bool out_vec = is_aligned<T, V>(out);
  const u32 stride = gridDim.x * blockDim.x;
  const u32 first = blockIdx.x * blockDim.x + threadIdx.x;

  // 1. Push (the tail vector is padded with +0.0).
  for (u32 v = first; v < nvec; v += stride) {
    const u64 e = (u64)v * V;
    Vec<T, V> x;
    if (in_vec && e + V <= n) {
      x = load_vec<T, V>(inp + e);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) x.v[j] = e + j < n ? inp[e + j] : from_float<T>(0.0f);
    }
#pragma unroll
    for (int j = 0; j < V; ++j) x.v[j] = ar_not_sentinel(x.v[j]);
    const Vec<u32, 4> w = bit_cast<Vec<u32, 4>>(x);
    const u64 at = gen_off + rank * slot + (u64)v * 16;
#pragma unroll
    for (u32 p = 0; p < AR_MAX_RANKS; ++p)
      if (p < world) store_relaxed_sys_16(reinterpret_cast<void*>(recv[p] + at), w);
  }

  // 2. Poll, sum in rank order, write, reset to the sentinel.
  ArWatchdog wd(self->timeout_ns);
  const Vec<u32, 4> sentinel = {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}};
  for (u32 v = first; v < nvec; v += stride) {
    const u64 e = (u64)v * V;
    Vec<u32, 4> w[AR_MAX_RANKS];
    // All loads in flight at once, then re-read only the slots not complete yet.
#pragma unroll
    for (u32 r = 0; r < AR_MAX_RANKS; ++r)
      if (r < world) w[r] = load_relaxed_sys_16(reinterpret_cast<const void*>(mine + r * slot + (u64)v * 16));
#pragma unroll
    for (u32 r = 0; r < AR_MAX_RANKS; ++r) {
      if (r < world) {
        while (ar_has_sentinel<T, V>(w[r])) {
          wd.tick();
          w[r] = load_relaxed_sys_16(reinterpret_cast<const void*>(mine + r * slot + (u64)v * 16));
        }
      }
    }
    // acc starts at rank 0's value, not at 0.0f (which would turn a sum of -0.0s into +0.0).
    float acc[V];
    ar_to_f32<T, V>(w[0], acc);
#pragma unroll
    for (u32 r = 1; r < AR_MAX_RANKS; ++r) {
      if (r < world) {
        float x[V];
        ar_to_f32<T, V>(w[r], x);
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] += x[j];
      }
    }
    if (out_vec && e + V <= n) {
      store_f32<T, V>(out + e, acc);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j)
        if (e + j < n) out[e + j] = from_float<T>(acc[j]);
    }
#pragma unroll
    for (u32 r = 0; r < AR_MAX_RANKS; ++r)
      if (r < world) store_relaxed_sys_16(reinterpret_cast<void*>(mine + r * slot + (u64)v * 16), sentinel);
  }

  if (threadIdx.x == 0 && arrived == gridDim.x - 1) {
    fence_acq_rel_gpu();
    self->push_done = 0;
    self->push_gen = (gen + 1) % AR_PUSH_GENERATIONS;
  }
}

}  // namespace dsv3
