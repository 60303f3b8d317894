// Hopper (sm_90a) primitives: mbarriers (with a watchdog), TMA tensor copies, proxy fences,
// named barriers, register reallocation (setmaxnreg) and warpgroup MMAs (wgmma) over 128-byte
// swizzled K-major shared-memory tiles. The instructions exist only with the sm_90a feature set
// (compute_90a PTX): everything but TmaMap / DSV3_GRID_CONST is defined under
// DSV3_SM90A, and kernels guard their use of it the same way.
#pragma once
#include "platform.h"

namespace dsv3 {
// A CUtensorMap (TMA descriptor) as a kernel parameter: 128 opaque bytes, encoded on the host by
// the driver (cuTensorMapEncodeTiled). Declared on every vendor so that entry points keep one
// signature; only sm_90a code reads it.
struct alignas(64) TmaMap {
  u64 opaque[16];
};
}  // namespace dsv3

// A TMA descriptor must stay in the kernel's parameter space (its address is handed to the copy
// engine), so the parameter is `const DSV3_GRID_CONST TmaMap`.
#if defined(DSV3_CUDA)
#define DSV3_GRID_CONST __grid_constant__
#else
#define DSV3_GRID_CONST
#endif

#if defined(DSV3_CUDA) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DSV3_SM90A 1
namespace dsv3 {

// ---- mbarrier ----------------------------------------------------------------------------------
// A wait longer than this is a bug (a lost arrival, a wrong parity, a TMA that never lands): the
// kernel traps so the launch fails with an error instead of hanging. Legitimate waits last at
// most one output tile (microseconds).
constexpr u64 MBAR_TIMEOUT_NS = 4000000000ull;

DSV3_DEV void mbar_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
// Makes initialized barriers visible to the other threads and to the async proxy (TMA); follow
// with a CTA barrier.
DSV3_DEV void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
DSV3_DEV void mbar_arrive(u32 bar) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}" ::"r"(bar) : "memory");
}
// One arrival on `bar` by the threads where `pred` holds, as a predicated instruction: no branch,
// so a warpgroup with a wgmma in flight does not diverge (ptxas then serializes the wgmma, C7518).
DSV3_DEV void mbar_arrive_if(u32 bar, bool pred) {
  asm volatile("{\n.reg .pred p;\n.reg .b64 st;\nsetp.ne.b32 p, %1, 0;\n@p mbarrier.arrive.shared::cta.b64 st, [%0];\n}" ::"r"(bar),
               "r"((u32)pred)
               : "memory");
}
// Arrives and adds `bytes` to the transaction count the phase waits for (the TMA copies that
// signal this barrier complete them).
DSV3_DEV void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}" ::"r"(bar), "r"(bytes)
               : "memory");
}
// Adds `bytes` to the transaction count the current phase waits for, without arriving (the
// thread arrives later, e.g. after its own shared-memory writes of the stage).
DSV3_DEV void mbar_expect_tx(u32 bar, u32 bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
// One arrival on `bar` once this thread's cp.async copies issued so far have landed (.noinc: the
// barrier's expected count must include these arrivals).
DSV3_DEV void mbar_arrive_cp_async(u32 bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
}
// True once the phase of parity `parity` has completed (a fresh barrier is in phase 0, so parity
// 1 — "the phase before" — passes at once).
DSV3_DEV bool mbar_try_wait(u32 bar, u32 parity) {
  u32 done;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
DSV3_DEV void mbar_wait(u32 bar, u32 parity) {
  if (mbar_try_wait(bar, parity)) return;
  const u64 t0 = timer_ns();
  while (!mbar_try_wait(bar, parity)) {
    if (timer_ns() - t0 > MBAR_TIMEOUT_NS) trap();
  }
}

// ---- thread-block clusters ----------------------------------------------------------------
// Rank of this CTA in its cluster (0 without a cluster launch).
DSV3_DEV u32 cluster_ctarank() {
  u32 r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
// Barrier over every thread of every CTA in the cluster; release / acquire orders the shared
// memory (and mbarrier) accesses before it with those after it, across the cluster's CTAs.
DSV3_DEV void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
// The shared::cluster address of shared address `addr` (a shared::cta address of this CTA) in
// the CTA of cluster rank `rank` (the same offset in that CTA's shared memory).
DSV3_DEV u32 cluster_map(u32 addr, u32 rank) {
  u32 r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(addr), "r"(rank));
  return r;
}
// One arrival on the mbarrier at shared::cluster address `bar` (possibly another CTA's), with the
// default (CTA-scope) release: a cluster-scope release would first wait for every earlier memory
// operation of the thread (the epilogue's global stores included) to be visible cluster-wide.
// Consumers use it to hand a stage back after their MMAs on it completed (wgmma.wait_group), which
// is all the peer's producer needs before it overwrites the stage.
DSV3_DEV void mbar_arrive_cluster(u32 bar) {
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];" ::"r"(bar) : "memory");
}

// ---- TMA -------------------------------------------------------------------------------------
DSV3_DEV void tma_prefetch(const TmaMap& m) { asm volatile("prefetch.tensormap [%0];" ::"l"(&m) : "memory"); }
// Box at element coordinates (c0 innermost, c1, c2) of `m` → shared memory at `dst` (laid out as
// the map's swizzle says); completes `bytes of the box` on barrier `bar`. Elements outside the
// tensor are zero-filled and still counted.
DSV3_DEV void tma_load_2d(u32 dst, const TmaMap& m, u32 bar, i32 c0, i32 c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];" ::"r"(
          dst),
      "l"(&m), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
}
DSV3_DEV void tma_load_3d(u32 dst, const TmaMap& m, u32 bar, i32 c0, i32 c1, i32 c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], "
      "[%2];" ::"r"(dst),
      "l"(&m), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

// `bytes` contiguous bytes (a multiple of 16; both addresses 16-byte aligned) from global `src`
// to shared `dst` by the copy engine (a non-tensor bulk copy); completes `bytes` on barrier `bar`.
DSV3_DEV void bulk_load(u32 dst, const void* src, u32 bytes, u32 bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}

DSV3_DEV void tma_load_4d(u32 dst, const TmaMap& m, u32 bar, i32 c0, i32 c1, i32 c2, i32 c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, "
      "%6}], [%2];" ::"r"(dst),
      "l"(&m), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

// tma_load_3d into every CTA of the cluster whose bit is set in `mask`: the box lands at offset
// `dst` of each of their shared memories and completes its bytes on the mbarrier at offset `bar`
// of each.
DSV3_DEV void tma_load_3d_multicast(u32 dst, const TmaMap& m, u32 bar, i32 c0, i32 c1, i32 c2, u16 mask) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, "
      "{%3, %4, %5}], [%2], %6;" ::"r"(dst),
      "l"(&m), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "h"(mask)
      : "memory");
}

// Orders this thread's generic-proxy shared-memory accesses with async-proxy ones (wgmma, TMA):
// after writing a tile with ordinary stores / cp.async and before the tensor cores read it.
DSV3_DEV void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// Four consecutive floats (16-byte aligned), read at L2 (past this SM's L1: written by other CTAs).
DSV3_DEV float4 ld_cg_f32x4(const float* p) {
  float4 v;
  asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p) : "memory");
  return v;
}

// Barrier `id` (1..15; 0 is __syncthreads) among `count` threads (a multiple of 32).
DSV3_DEV void named_bar_sync(u32 id, u32 count) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count) : "memory"); }
// Arrives on barrier `id` without waiting (producer side of a bar.sync by the other threads of
// the `count`; with release semantics for this thread's earlier memory accesses).
DSV3_DEV void named_bar_arrive(u32 id, u32 count) { asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(count) : "memory"); }

// Per-thread register budget of the executing warpgroup (all 4 warps execute it).
template <int N> DSV3_DEV void regs_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N)); }
template <int N> DSV3_DEV void regs_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N)); }

// ---- wgmma -----------------------------------------------------------------------------------
DSV3_DEV void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
DSV3_DEV void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N committed wgmma groups of this warpgroup are in flight.
template <int N> DSV3_DEV void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Keeps the compiler from moving accesses of an accumulator across the asynchronous MMA.
template <int N> DSV3_DEV void wgmma_pin(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N> DSV3_DEV void wgmma_pin(i32 (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(d[i])::"memory");
}

// Descriptor of a K-major operand tile with 128-byte swizzle at shared address `addr`: rows of
// 128 bytes, 16-byte chunk c of row r at chunk c ^ (r & 7) (what a TMA box of 128-byte rows with
// CU_TENSOR_MAP_SWIZZLE_128B, or the cp.async loaders, write), 8-row atoms 1024 bytes apart
// (stride byte offset); tiles start 1024-aligned and a k step inside the atom advances `addr`.
DSV3_DEV u64 wgmma_desc_sw128(u32 addr) {
  u64 d = (u64)((addr & 0x3ffffu) >> 4);  // start address >> 4, 14 bits
  d |= (u64)1 << 16;                      // leading byte offset (unused for swizzled K-major)
  d |= (u64)(1024 >> 4) << 32;            // stride byte offset
  d |= (u64)1 << 62;                      // 128-byte swizzle
  return d;
}

// Descriptor of an MN-major operand (B with the transpose bit: 16-bit types only) with 128-byte
// swizzle at `addr`: each 8-row group along K holds rows of 64 MN-contiguous elements (128 bytes,
// chunk c of row r at c ^ (r & 7)); the next 8 K rows are 1024 bytes on (stride byte offset), the
// next 64 MN elements `mn_atom_bytes` on (leading byte offset). A k step of 16 advances `addr` by
// 2048 bytes (two 8-row groups). CUTLASS's canonical layout Swizzle<3,4,3> o ((8,8,m),(8,k)) :
// ((1,8,LBO),(64,SBO)) in elements.
DSV3_DEV u64 wgmma_desc_sw128_mn(u32 addr, u32 mn_atom_bytes) {
  u64 d = (u64)((addr & 0x3ffffu) >> 4);
  d |= (u64)((mn_atom_bytes >> 4) & 0x3fffu) << 16;  // leading byte offset: next 64 MN elements
  d |= (u64)(1024 >> 4) << 32;                        // stride byte offset: next 8 K rows
  d |= (u64)1 << 62;                                  // 128-byte swizzle
  return d;
}

// d = a · b (ACC false) or d += a · b (ACC true), bf16 inputs, f32 accumulators (the
// warpgroup's fragments: thread t of warp w holds rows 16w + t/4 and + 8, columns 8j + 2(t%4) +
// {0, 1} in d[4j .. 4j + 3]): a 64×16 K-major (descriptor da), b N×16 K-major (TRANS_B false)
// or MN-major (TRANS_B true, descriptor from wgmma_desc_sw128_mn).
template <bool ACC, bool TRANS_B> DSV3_DEV void wgmma_m64n32k16_bf16(float (&d)[16], u64 da, u64 db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
      "}, %16, %17, p, 1, 1, 0, %19;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(da), "l"(db), "n"(ACC ? 1 : 0), "n"(TRANS_B ? 1 : 0));
}
template <bool ACC, bool TRANS_B> DSV3_DEV void wgmma_m64n64k16_bf16(float (&d)[32], u64 da, u64 db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p, 1, 1, 0, %35;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(da), "l"(db), "n"(ACC ? 1 : 0), "n"(TRANS_B ? 1 : 0));
}
template <bool ACC, bool TRANS_B> DSV3_DEV void wgmma_m64n256k16_bf16(float (&d)[128], u64 da, u64 db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "
      "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "
      "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "
      "%59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, "
      "%78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, "
      "%97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, "
      "%113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p, 1, 1, 0, %131;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),
        "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),
        "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),
        "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),
        "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),
        "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]),
        "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]),
        "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]),
        "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]),
        "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]),
        "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]),
        "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]),
        "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]),
        "+f"(d[127])
      : "l"(da), "l"(db), "n"(ACC ? 1 : 0), "n"(TRANS_B ? 1 : 0));
}

// The 8-bit wgmma steps m64nNk32 (N = 16, 64, 128: the v2 GEMM's 128, the small-M kernel's
// token tiles of kernels/gemm_wgs.cuh) as one macro over N's accumulator count: an operand list
// of R registers is DSV3_WG_OP<R>, its placeholders %0 .. %R-1 DSV3_WG_PH<R>.
#define DSV3_WG_OP4(c, d, i) c(d[i]), c(d[i + 1]), c(d[i + 2]), c(d[i + 3])
#define DSV3_WG_OP8(c, d, i) DSV3_WG_OP4(c, d, i), DSV3_WG_OP4(c, d, i + 4)
#define DSV3_WG_OP16(c, d, i) DSV3_WG_OP8(c, d, i), DSV3_WG_OP8(c, d, i + 8)
#define DSV3_WG_OP32(c, d, i) DSV3_WG_OP16(c, d, i), DSV3_WG_OP16(c, d, i + 16)
#define DSV3_WG_OP64(c, d, i) DSV3_WG_OP32(c, d, i), DSV3_WG_OP32(c, d, i + 32)
#define DSV3_WG_PH8 "%0, %1, %2, %3, %4, %5, %6, %7"
#define DSV3_WG_PH16 DSV3_WG_PH8 ", %8, %9, %10, %11, %12, %13, %14, %15"
#define DSV3_WG_PH32                                                                                    \
  DSV3_WG_PH16 ", %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define DSV3_WG_PH64                                                                                         \
  DSV3_WG_PH32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, " \
               "%50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define DSV3_WG_F(x) "+f"(x)
#define DSV3_WG_R(x) "+r"(x)

// d = a · b (ACC false) or d += a · b (ACC true): a 64×32 e4m3 (K-major, descriptor da), b N×32
// e4m3 (K-major, db), d 64×N f32 (the warpgroup's fragments, R = N / 2 per thread).
// R1, R2 = R + 1, R + 2 (the descriptors' and the flag's placeholders, spelled out: the
// preprocessor cannot add).
#define DSV3_WGMMA_E4M3(N, R, R1, R2)                                                                  \
  template <bool ACC> DSV3_DEV void wgmma_m64n##N##k32_e4m3(float (&d)[R], u64 da, u64 db) {         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #R2 ", 0;\n"                                      \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32.e4m3.e4m3 {" DSV3_WG_PH##R "}, %" #R ", %" #R1 \
                 ", p, 1, 1;\n}\n"                                                                        \
                 : DSV3_WG_OP##R(DSV3_WG_F, d, 0)                                                      \
                 : "l"(da), "l"(db), "n"(ACC ? 1 : 0));                                                \
  }
// The same with s8 operands into exact s32 (same fragment layout; scale-d as a run-time value:
// d = a · b when `accumulate` is 0). The integer form takes no negation or transpose immediates.
#define DSV3_WGMMA_S8(N, R, R1, R2)                                                                          \
  DSV3_DEV void wgmma_m64n##N##k32_s8(i32(&d)[R], u64 da, u64 db, u32 accumulate) {                         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #R2 ", 0;\n"                                          \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k32.s32.s8.s8 {" DSV3_WG_PH##R "}, %" #R ", %" #R1     \
                 ", p;\n}\n"                                                                                 \
                 : DSV3_WG_OP##R(DSV3_WG_R, d, 0)                                                            \
                 : "l"(da), "l"(db), "r"(accumulate));                                                       \
  }
DSV3_WGMMA_E4M3(16, 8, 9, 10)
DSV3_WGMMA_E4M3(32, 16, 17, 18)
DSV3_WGMMA_E4M3(64, 32, 33, 34)
DSV3_WGMMA_E4M3(128, 64, 65, 66)
DSV3_WGMMA_S8(16, 8, 9, 10)
DSV3_WGMMA_S8(32, 16, 17, 18)
DSV3_WGMMA_S8(64, 32, 33, 34)
DSV3_WGMMA_S8(128, 64, 65, 66)

// d = a · b (ACC false) or d += a · b (ACC true) with A from registers: a 64×16 bf16 tile whose
// warp w's 16 rows are the mma.sync m16n8k16 A fragment in `a` (rows 16w + lane/4 and + 8, k
// 2(lane%4) + {0, 1} and + 8), b N×16 bf16 K-major (descriptor db), d 64×N f32 (R = N / 2 per
// thread). The registers of `a` must not change until the group retires (wgmma_wait). R4, R5 =
// R + 4, R + 5 (the descriptor's and the flag's placeholders).
#define DSV3_WGMMA_BF16_RS(N, R, R1, R2, R3, R4, R5)                                                              \
  template <bool ACC> DSV3_DEV void wgmma_m64n##N##k16_bf16_rs(float (&d)[R], const u32 (&a)[4], u64 db) {        \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #R5 ", 0;\n"                                                  \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 {" DSV3_WG_PH##R "}, {%" #R ", %" #R1 \
                 ", %" #R2 ", %" #R3 "}, %" #R4 ", p, 1, 1, 0;\n}\n"                                                 \
                 : DSV3_WG_OP##R(DSV3_WG_F, d, 0)                                                                  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(ACC ? 1 : 0));                       \
  }
DSV3_WGMMA_BF16_RS(16, 8, 9, 10, 11, 12, 13)
DSV3_WGMMA_BF16_RS(64, 32, 33, 34, 35, 36, 37)

// The steps above by token count N (16, 32, 64 or 128) as a template parameter.
template <int N, bool ACC> DSV3_DEV void wgmma_e4m3_n(float (&d)[N / 2], u64 da, u64 db) {
  static_assert(N == 16 || N == 32 || N == 64 || N == 128, "wgmma_e4m3_n: N is 16, 32, 64 or 128");
  if constexpr (N == 16) {
    wgmma_m64n16k32_e4m3<ACC>(d, da, db);
  } else if constexpr (N == 32) {
    wgmma_m64n32k32_e4m3<ACC>(d, da, db);
  } else if constexpr (N == 64) {
    wgmma_m64n64k32_e4m3<ACC>(d, da, db);
  } else {
    wgmma_m64n128k32_e4m3<ACC>(d, da, db);
  }
}
template <int N> DSV3_DEV void wgmma_s8_n(i32 (&d)[N / 2], u64 da, u64 db, u32 accumulate) {
  static_assert(N == 16 || N == 32 || N == 64 || N == 128, "wgmma_s8_n: N is 16, 32, 64 or 128");
  if constexpr (N == 16) {
    wgmma_m64n16k32_s8(d, da, db, accumulate);
  } else if constexpr (N == 32) {
    wgmma_m64n32k32_s8(d, da, db, accumulate);
  } else if constexpr (N == 64) {
    wgmma_m64n64k32_s8(d, da, db, accumulate);
  } else {
    wgmma_m64n128k32_s8(d, da, db, accumulate);
  }
}

template <int N, bool ACC> DSV3_DEV void wgmma_bf16_rs_n(float (&d)[N / 2], const u32 (&a)[4], u64 db) {
  static_assert(N == 16 || N == 64, "wgmma_bf16_rs_n: N is 16 or 64");
  if constexpr (N == 16) {
    wgmma_m64n16k16_bf16_rs<ACC>(d, a, db);
  } else {
    wgmma_m64n64k16_bf16_rs<ACC>(d, a, db);
  }
}

}  // namespace dsv3
#endif  // sm_90a
