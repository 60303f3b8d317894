// sm_90a FP8 block-scaled GEMM, v2: the function of kernels/fp8_gemm.cuh (same operands, dense
// and grouped modes; no split-K) as a persistent, warp-specialized TMA + wgmma kernel.
//
// CTA: 384 threads = a producer warpgroup (WG 0, 40 registers) and two consumer warpgroups (WG 1,
// 2; 232 registers) sharing one 128 × 128 output tile (BM = 2 × m64, BN = 128 = the weight's
// scale block, so s_w is one scalar per 128-K block). Grid = at most one CTA per SM; each walks
// the tiles blockIdx.x, + gridDim.x, ... in grouped-M order (bands of 8 M tiles, M fastest inside
// a band: ~8 M tiles × 16 N tiles live at once, so both operands stay in L2).
//
// Pipeline: STAGES slots of (A 128 × 128 bytes, B 128 × 128 bytes, 128 f32 scales), each with a
// `full` mbarrier (128 producer arrivals, + 128 cp.async arrivals when gathering, + the TMA bytes)
// and an `empty` one (one arrival per consumer warp). Stage index and phase run on across tiles,
// identically in every role.
// - Producer, per 128-K block: waits `empty`, thread 0 issues the TMA boxes (B: 3-D map [E, N, K],
//   box (128, 128, 1) at (kb·128, n0, expert); A: 2-D map [rows, K] at (kb·128, m0)) with
//   SWIZZLE_128B — exactly the layout the wgmma descriptors read (dsv3/sm90.h) — and every thread
//   writes its tile row's scale of the block into the stage (the policy's `Scales`: FP8 and block
//   INT8 s_a[row, kb]·s_w[nb, kb], channel INT8 s_a[row]). Rows past the tensor arrive as
//   zeros (TMA out-of-bounds fill), so partial M / N / K blocks need no special case.
//   Grouped rows gathered through row_ids (fused MoE gate_up: rows of x picked per expert) cannot
//   be a TMA box: there the 128 producer threads copy them with cp.async (8 × 16 bytes each, zero
//   fill for padding rows and past K), tracked by the same `full` barrier, and the consumers
//   fence the generic → async proxy before reading. B stays on TMA.
// - Consumers: WG w owns rows [64 w, 64 w + 64). Each 128-K block is 4 × wgmma.m64n128k32 (e4m3
//   into f32, or s8 into s32) into a fresh partial; the consumer waits for it (wait_group 0),
//   releases its stage and promotes it (total += partial · the stage's row scale), then issues
//   the next block: while one warpgroup promotes, the tensor cores run the other's MMAs
//   (DeepGEMM's scheme). A named barrier orders the issue (warpgroup 0's group of a block
//   before 1's, as cuBLASLt's kernel does), so the two groups do not interleave and finish
//   one after the other instead of together. Keeping a second partial set in flight behind the promotion instead
//   (wait_group 1, two sets alternating) measured 3–8% slower (docs/perf/fp8_gemm.md, session 5).
//   Policies whose scale does not change along K (Op::WHOLE_K: channel INT8) skip the promotion:
//   the partial keeps summing the tile's blocks (scale-d 1 after its first block; block kb − 1's
//   stage is freed once kb is queued behind it) and is converted and row-scaled once at the end.
//   The same pipeline without per-block promotion runs 1.2–1.9× faster (session 5 variants): the
//   promotion is what bounds the block-scaled kernels.
// - Epilogue per consumer warpgroup: the tile (times the policy's column scales: channel INT8's
//   s_w[n], none for block scales) goes to bf16 through shared memory (rows padded to 272 bytes:
//   conflict-free fragment writes and 16-byte reads), then coalesced 16-byte global stores (2 B
//   stores where N % 8 != 0); rows ≥ the row bound are not stored.
//
// Pairs (CL = 2, `fp8_gemm_wgmma2_pair_*`): the grid is made of 2-CTA clusters; a cluster walks
// pair tiles (M tiles 2p, 2p + 1 at one N tile) and CTA r of it owns M tile 2p + r. When both
// tiles read the same weights (always in dense mode; grouped: the same expert), each CTA loads
// one 64-row half of the B box and multicasts it into both CTAs' stage, so every CTA reads
// 16 + 8 KB from L2 per 128-K block instead of 16 + 16; otherwise each CTA loads its whole B box
// itself. (Measured 3–8% slower than one CTA per tile: L2 traffic is not the limit, and the plans
// do not take pairs; docs/perf/fp8_gemm.md.) Since a
// multicast writes into the peer's stage, a stage is refilled only once the consumers of BOTH
// CTAs have released it: each consumer warp arrives on the `empty` barrier of both CTAs (16
// arrivals per phase). A pair tile whose second M tile is past the end still runs (zero A rows,
// nothing stored) so that both CTAs walk the same stages. Cluster barriers after the barrier
// setup and before exit keep every remote arrival inside the peer's lifetime.
//
// Every mbarrier wait has a watchdog (dsv3/sm90.h): a protocol bug traps instead of hanging.
// The MMA and the scales are a policy `Op` (Wg2E4m3 here, the s8 ones in
// kernels/int8_gemm_wgmma2.cuh): wg2_gemm<Op, CL> is the one pipeline of FP8 and INT8.
// Off sm_90a (other CUDA archs, NVRTC for compute_90, HIP) the entry traps: the host never
// launches it there (src/backend/fp8_gemm.rs checks for the sm_90a cubin).
#pragma once
#include "dsv3/dsv3.h"
#include "block_gemm.cuh"

namespace dsv3 {

constexpr int WG2_STAGES = 5;
constexpr u32 WG2_GROUP_M = 8;      // M tiles per rasterization band
constexpr u32 WG2_EPI_PITCH = 272;  // bytes per staged output row: 256 + 16
constexpr u32 WG2_ORDER_BAR = 4;     // named barrier of the consumers' issue order (1: gathers, 2, 3: epilogues)

// Shared memory of one CTA, offsets from its 1024-aligned base (the Rust side mirrors BYTES).
struct Wg2Smem {
  static constexpr u32 TILE = 128 * 128;                   // one operand box, bytes
  static constexpr u32 STAGE = 2 * TILE;                   // A, then B
  static constexpr u32 EPI = WG2_STAGES * STAGE;           // 2 × 64 staged output rows
  static constexpr u32 SCALES = EPI + 2 * 64 * WG2_EPI_PITCH;  // [STAGES][128] f32
  static constexpr u32 ROWS = SCALES + WG2_STAGES * 128 * 4;   // [128] i32: a-rows of the tile
  static constexpr u32 BARS = ROWS + 128 * 4;                  // full[STAGES], empty[STAGES]
  static constexpr u32 END = BARS + 2 * WG2_STAGES * 8;
  static constexpr u32 BYTES = END + 1024;                     // + alignment of the base
};

// Output tile order: bands of WG2_GROUP_M M tiles (pair tiles with clusters), M fastest inside a
// band.
struct Wg2Sched {
  u32 m_tiles, n_tiles, total;
  DSV3_DEV void tile(u32 idx, u32& mt, u32& nt) const {
    const u32 band = WG2_GROUP_M * n_tiles;
    const u32 first = idx / band * WG2_GROUP_M;
    const u32 rows = min(m_tiles - first, WG2_GROUP_M);
    const u32 local = idx % band;
    mt = first + local % rows;
    nt = local / rows;
  }
};

#if defined(DSV3_SM90A)
// The pipeline's policy `Op`: `Acc` and `mma<ACC>(Acc[64], da, db)` (one 64 × 128 × 32 wgmma step),
// `to_f32(Acc)` (an accumulator element for the promotion), `Scales` (built by the producer per
// tile row: `load(kb, x, y)` gives the factors of the row's scale for k block kb, x·y) and
// `Columns` (built by the epilogue per tile (its expert) and thread, lane q = lane % 4: `at(j, e)` scales the
// thread's fragment column j·8 + 2q + e of the tile).

// Block scales: s_a[row, kb] · s_w[expert][nb, kb] (a null row pointer: padding, scale 0).
struct Wg2BlockScales {
  const float* a;
  const float* b;
  DSV3_DEV Wg2BlockScales(const BlockGemmArgs& g, i64 arow, u32 expert, u32 nt, u32 sk, u32 sn)
      : a(arow >= 0 ? g.a_scales + (u64)arow * sk : nullptr), b(g.b_scale + ((u64)expert * sn + nt) * sk) {}
  DSV3_DEV void load(u32 kb, float& x, float& y) const {
    x = a != nullptr ? a[kb] : 0.0f;
    y = b[kb];
  }
};

// No per-column scale (the block scales cover it).
struct Wg2NoColumns {
  DSV3_DEV Wg2NoColumns(const BlockGemmArgs&, u32, u32, u32) {}
  DSV3_DEV float at(int, int) const { return 1.0f; }
};

// e4m3 into f32, block scales.
struct Wg2E4m3 {
  static constexpr bool WHOLE_K = false;
  using Acc = float;
  using Scales = Wg2BlockScales;
  using Columns = Wg2NoColumns;
  template <bool ACC> DSV3_DEV static void mma(float (&d)[64], u64 da, u64 db) {
    wgmma_m64n128k32_e4m3<ACC>(d, da, db);
  }
  DSV3_DEV static float to_f32(float x) { return x; }
};

// What a CTA of the TMA-fed block GEMMs (v2 here, the small-M kernels of gemm_wgs.cuh) starts
// from: the arguments, the launch's 128-K blocks (sk) and 128-row N tiles (sn), and its dynamic
// shared memory from the 1024-aligned base.
struct TmaGemmCta {
  BlockGemmArgs g;
  u32 sk, sn;
  u32 base;  // shared address of the aligned base
  u8* smem;  // the same, generic
  DSV3_DEV void init(const BlockGemmArgs& args, u8* dyn_smem) {
    g = args;
    const SmemBase b = smem_base_1024(dyn_smem);
    base = b.addr;
    smem = b.ptr;
    sk = ceil_div(args.K, 128);
    sn = ceil_div(args.N, 128);
  }
};

struct Wg2Ctx : TmaGemmCta {
  Wg2Sched sched;  // over pair tiles (CL M tiles each)
  u32 m_tiles, m_end;
  u32 rank, cluster, clusters;  // this CTA's rank in its cluster, the cluster's index, their count
  DSV3_DEV u32 full(u32 s) const { return base + Wg2Smem::BARS + s * 8; }
  DSV3_DEV u32 empty(u32 s) const { return base + Wg2Smem::BARS + (WG2_STAGES + s) * 8; }
  DSV3_DEV float* scales(u32 s) const { return reinterpret_cast<float*>(smem + Wg2Smem::SCALES) + s * 128; }
  // M tile of this CTA in pair tile `pt`.
  template <int CL> DSV3_DEV u32 m_tile(u32 pt) const { return pt * CL + rank; }
  // Expert of M tile t of pair tile pt (a tile past the end counts as the pair's first).
  template <int CL> DSV3_DEV u32 expert(u32 t, u32 pt) const {
    return g.tile_expert != nullptr ? (u32)g.tile_expert[t < m_tiles ? t : pt * CL] : 0u;
  }
};

DSV3_DEV void wg2_advance(u32& stage, u32& phase) {
  if (++stage == WG2_STAGES) {
    stage = 0;
    phase ^= 1;
  }
}

// Producer warpgroup (thread p = 0..127 is tile row p's scale writer; thread 0 issues the TMA).
// mb's box is 128 × 128 (CL = 1) or 128 × 64 (CL = 2: half a B tile per load).
template <class Op, int CL>
DSV3_DEV void wg2_produce(const Wg2Ctx& c, const TmaMap& ma, const TmaMap& mb) {
  const BlockGemmArgs& g = c.g;
  const u32 p = tid();
  const bool gathered = g.row_ids != nullptr;
  i32* rows = reinterpret_cast<i32*>(c.smem + Wg2Smem::ROWS);
  if (p == 0) {
    tma_prefetch(mb);
    if (!gathered) tma_prefetch(ma);
  }
  u32 stage = 0, phase = 0;
  for (u32 idx = c.cluster; idx < c.sched.total; idx += c.clusters) {
    u32 pt, nt;
    c.sched.tile(idx, pt, nt);
    const u32 mt = c.m_tile<CL>(pt), m0 = mt * 128, n0 = nt * 128;
    const u32 expert = c.expert<CL>(mt, pt);
    // Multicast B halves when both tiles of the pair read the same expert's weights.
    const bool shared = CL > 1 && c.expert<CL>(pt * CL, pt) == c.expert<CL>(pt * CL + 1, pt);
    const i64 arow = bg_a_row(g, m0 + p, c.m_end);
    const typename Op::Scales sc(g, arow, expert, nt, c.sk, c.sn);
    if (gathered) {
      named_bar_sync(1, 128);  // every gather of the previous tile has been issued
      rows[p] = (i32)arow;
      named_bar_sync(1, 128);
    }
    // The scales of block kb + 1 are loaded during block kb (their latency must not pace the
    // producer: one block of MMAs is ~512 cycles).
    float a_next, b_next;
    sc.load(0, a_next, b_next);
    for (u32 kb = 0; kb < c.sk; ++kb) {
      const float s = a_next * b_next;
      if (kb + 1 < c.sk) sc.load(kb + 1, a_next, b_next);
      mbar_wait(c.empty(stage), phase ^ 1);
      const u32 a_dst = c.base + stage * Wg2Smem::STAGE, b_dst = a_dst + Wg2Smem::TILE;
      if (gathered) {
        const u32 ch = p % 8, kbyte = kb * 128 + ch * 16;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const u32 r = p / 8 + 16 * i;
          const i32 ar = rows[r];
          const bool ok = ar >= 0 && kbyte < g.K;
          cp_async_16(a_dst + r * 128 + ((ch ^ (r & 7)) << 4), ok ? (const void*)(g.a + (u64)ar * g.K + kbyte) : (const void*)g.a, ok);
        }
        mbar_arrive_cp_async(c.full(stage));
      }
      c.scales(stage)[p] = s;
      if (p == 0) {
        mbar_arrive_expect_tx(c.full(stage), gathered ? Wg2Smem::TILE : 2 * Wg2Smem::TILE);
        const i32 kc = (i32)(kb * 128);
        if (CL == 1) {
          tma_load_3d(b_dst, mb, c.full(stage), kc, (i32)n0, (i32)expert);
        } else if (shared) {
          // The peer loads the other half into both CTAs: B's bytes on this barrier are whole.
          const u32 h = c.rank * (Wg2Smem::TILE / 2);
          tma_load_3d_multicast(b_dst + h, mb, c.full(stage), kc, (i32)(n0 + c.rank * 64), (i32)expert, 0x3);
        } else {
          tma_load_3d(b_dst, mb, c.full(stage), kc, (i32)n0, (i32)expert);
          tma_load_3d(b_dst + Wg2Smem::TILE / 2, mb, c.full(stage), kc, (i32)(n0 + 64), (i32)expert);
        }
        if (!gathered) tma_load_2d(a_dst, ma, c.full(stage), (i32)(kb * 128), (i32)m0);
      } else {
        mbar_arrive(c.full(stage));
      }
      wg2_advance(stage, phase);
    }
  }
}

// Epilogue of consumer warpgroup w (thread tw of 128): its 64 × 128 f32 fragments (times the
// policy's column scales) → bf16 in padded shared rows (`stg`) → 16-byte coalesced global stores;
// rows ≥ the row bound are not stored.
template <class Op>
DSV3_DEV void wg2_store_tile(const Wg2Ctx& c, const float (&tot)[64], u32 mt, u32 nt, u32 expert, u32 w, u32 tw,
                            u8* stg) {
  const u32 warp = tw / 32, ln = tw % 32;
  const typename Op::Columns cols(c.g, expert, nt, ln % 4);
  named_bar_sync(2 + w, 128);  // the previous tile's rows have been read out
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const u32 row = warp * 16 + ln / 4 + h * 8, col = j * 8 + 2 * (ln % 4);
      const float v0 = tot[4 * j + 2 * h] * cols.at(j, 0), v1 = tot[4 * j + 2 * h + 1] * cols.at(j, 1);
      const u32 pk = (u32)f32_to_bf16(v0).bits | ((u32)f32_to_bf16(v1).bits << 16);
      *reinterpret_cast<u32*>(stg + row * WG2_EPI_PITCH + col * 2) = pk;
    }
  named_bar_sync(2 + w, 128);
  const u32 N = c.g.N, n_ch = tw % 16, n = nt * 128 + n_ch * 8;
  const bool vec = N % 8 == 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const u32 row = i * 8 + tw / 16, grow = mt * 128 + w * 64 + row;
    if (grow >= c.m_end || n >= N) continue;
    const Vec<u32, 4> v = *reinterpret_cast<const Vec<u32, 4>*>(stg + row * WG2_EPI_PITCH + n_ch * 16);
    bf16* dst = c.g.out + (u64)grow * N + n;
    if (vec && n + 8 <= N) {
      store_vec<u32, 4>(reinterpret_cast<u32*>(dst), v);
    } else {
      const bf16* e = reinterpret_cast<const bf16*>(&v);
#pragma unroll
      for (u32 k = 0; k < 8; ++k)
        if (n + k < N) dst[k] = e[k];
    }
  }
}

// Consumer warpgroup w (0, 1) of the tile: rows [64 w, 64 w + 64).
template <class Op, int CL>
DSV3_DEV void wg2_consume(const Wg2Ctx& c) {
  using Acc = typename Op::Acc;
  const BlockGemmArgs& g = c.g;
  const u32 t = tid() - 128, w = t / 128, tw = t % 128, warp = tw / 32, ln = tw % 32;
  const u32 r0 = w * 64 + warp * 16 + ln / 4;  // tile row of fragment registers {0, 1}; r0 + 8: {2, 3}
  const bool gathered = g.row_ids != nullptr;
  u8* stg = c.smem + Wg2Smem::EPI + w * 64 * WG2_EPI_PITCH;
  u32 stage = 0, phase = 0;
  Acc acc[64];
  float tot[64];

  // Waits for the current stage and issues its 4 k32 steps into `acc` (one wgmma group): a fresh
  // partial, or (Op::WHOLE_K, `fresh` false) on top of the tile's earlier blocks.
  // Issue order: warpgroup 0 issues each block before warpgroup 1 (named barrier WG2_ORDER_BAR,
  // synced after 0's issue and before 1's), so the tensor cores run 0's group, then 1's, and each
  // warpgroup promotes while the other's group runs. Unordered, the two groups of a block
  // interleave, finish together and both promote with the tensor cores idle (what cuBLASLt's
  // kernel does, read off its SASS: tensor pipe 84% busy against v2's 62% without the order).
  // Both warpgroups issue the same blocks in the same order, so every sync pairs up.
  auto issue = [&](bool fresh) {
    mbar_wait(c.full(stage), phase);
    if (gathered) fence_proxy_async();  // the A rows were written by cp.async (generic proxy)
    const u32 a = c.base + stage * Wg2Smem::STAGE + w * 64 * 128, b = c.base + stage * Wg2Smem::STAGE + Wg2Smem::TILE;
    // A k32 step advances both tiles by 32 bytes: 2 in the descriptors' address field (addr >> 4).
    const u64 da = wgmma_desc_sw128(a), db = wgmma_desc_sw128(b);
    if (w == 1) named_bar_sync(WG2_ORDER_BAR, 256);
    wgmma_fence();
    if constexpr (Op::WHOLE_K) {
      Op::mma_first(acc, da, db, fresh);
    } else {
      Op::template mma<false>(acc, da, db);
    }
#pragma unroll
    for (int ks = 1; ks < 4; ++ks) Op::template mma<true>(acc, da + 2 * ks, db + 2 * ks);
    wgmma_commit();
    wgmma_pin(acc);
    if (w == 0) named_bar_sync(WG2_ORDER_BAR, 256);
  };
  // Row scales of stage `s`: written by the producer before the stage's `full` barrier, read before
  // waiting for its group, so the load's latency hides behind the MMAs.
  float row_s0 = 0.0f, row_s1 = 0.0f;
  auto scales_of = [&](u32 s) {
    row_s0 = c.scales(s)[r0];
    row_s1 = c.scales(s)[r0 + 8];
  };
  // The group of stage `s` has completed (its row scales loaded): free the stage, and (block
  // scales) promote the partial into the total.
  auto retire = [&](u32 s) {
    wgmma_pin(acc);
    __syncwarp();
    if (ln == 0) {
      mbar_arrive(c.empty(s));
#pragma unroll
      for (u32 r = 0; r < (u32)CL; ++r)
        if (r != c.rank) mbar_arrive_cluster(cluster_map(c.empty(s), r));
    }
    if constexpr (!Op::WHOLE_K) {
#pragma unroll
      for (int i = 0; i < 64; ++i) tot[i] = fmaf(Op::to_f32(acc[i]), i % 4 < 2 ? row_s0 : row_s1, tot[i]);
    }
  };
  // WHOLE_K, after the tile's last block retired: total = the whole-K sum · the row scale.
  auto finish = [&]() {
    if constexpr (Op::WHOLE_K) {
#pragma unroll
      for (int i = 0; i < 64; ++i) tot[i] = Op::sum_to_f32(acc[i]) * (i % 4 < 2 ? row_s0 : row_s1);
    }
  };

  if (c.cluster >= c.sched.total) return;
  issue(true);  // k block 0 of the first tile
  for (u32 idx = c.cluster;;) {
    u32 pt, nt;
    c.sched.tile(idx, pt, nt);
    const u32 mt = c.m_tile<CL>(pt);
    if constexpr (!Op::WHOLE_K) {
#pragma unroll
      for (int i = 0; i < 64; ++i) tot[i] = 0.0f;
    }
    u32 prev = stage;
    wg2_advance(stage, phase);
    for (u32 kb = 1; kb < c.sk; ++kb) {
      if constexpr (Op::WHOLE_K) {
        // One sum over K: block kb queues behind kb − 1, whose stage is freed once it completed.
        issue(false);
        scales_of(prev);
        wgmma_wait<1>();
        retire(prev);
      } else {
        // Promote block kb − 1, then issue kb: the tensor cores run the other warpgroup's MMAs
        // meanwhile (measured 3–8% faster than keeping a second partial set in flight behind the
        // promotion, docs/perf/fp8_gemm.md).
        scales_of(prev);
        wgmma_wait<0>();
        retire(prev);
        issue(true);
      }
      prev = stage;
      wg2_advance(stage, phase);
    }
    scales_of(prev);
    wgmma_wait<0>();
    retire(prev);
    finish();
    idx += c.clusters;
    if (idx >= c.sched.total) {
      wg2_store_tile<Op>(c, tot, mt, nt, c.expert<CL>(mt, pt), w, tw, stg);
      return;
    }
    issue(true);  // the next tile's first block runs on the tensor cores during this epilogue
    wg2_store_tile<Op>(c, tot, mt, nt, c.expert<CL>(mt, pt), w, tw, stg);
  }
}

template <class Op, int CL>
DSV3_DEV void wg2_gemm(const BlockGemmArgs& g, const TmaMap& ma, const TmaMap& mb) {
  extern __shared__ __attribute__((aligned(1024))) u8 wg2_smem[];
  Wg2Ctx c;
  c.init(g, wg2_smem);
  // Grouped: *num_tiles (on the device), never more than the M rows the host sized `out` for.
  const u32 m_tiles = g.tile_expert != nullptr ? min((u32)*g.num_tiles, ceil_div(g.M, 128)) : ceil_div(g.M, 128);
  c.m_tiles = m_tiles;
  c.m_end = g.tile_expert != nullptr ? m_tiles * 128 : g.M;
  const u32 pairs = ceil_div(m_tiles, (u32)CL);
  c.sched = Wg2Sched{pairs, c.sn, pairs * c.sn};
  c.rank = CL > 1 ? cluster_ctarank() : 0u;
  c.cluster = blockIdx.x / CL;
  c.clusters = gridDim.x / CL;
  if (tid() == 0) {
    for (u32 s = 0; s < WG2_STAGES; ++s) {
      // Every producer thread arrives once per use, and once more when its gathered rows land.
      mbar_init(c.full(s), g.row_ids != nullptr ? 256 : 128);
      mbar_init(c.empty(s), 8 * CL);  // one arrival per consumer warp of each CTA
    }
    mbar_init_fence();
  }
  if (CL > 1) {
    cluster_sync();  // the peer's barriers exist before any multicast or remote arrival
  } else {
    __syncthreads();
  }
  if (tid() < 128) {
    regs_dec<40>();
    wg2_produce<Op, CL>(c, ma, mb);
  } else {
    regs_inc<232>();
    wg2_consume<Op, CL>(c);
  }
  if (CL > 1) cluster_sync();  // no remote arrival may reach a CTA that has exited
}
#endif  // DSV3_SM90A

// Entry: grid (min(SMs, tiles)), block 384, dynamic smem Wg2Smem::BYTES. tmap_a: 2-D map of a
// [rows, K] (unused when row_ids gathers); tmap_b: 3-D map of b [E, N, K] (E = 1 dense), box
// 128 × 128 (CL = 1) or 128 × 64 (CL = 2). CL = 2: launched in clusters of 2 CTAs along x, grid
// even and at most 2 × the clusters that fit at once (it is persistent).
template <int CL>
DSV3_DEV void fp8_gemm_wgmma2(bf16* out, const TmaMap& tmap_a, const TmaMap& tmap_b, const e4m3fn* a,
                              const float* a_scales, const float* b_scale, const i32* row_ids, const i32* tile_expert,
                              const i32* num_tiles, u32 M, u32 N, u32 K, u32 a_row_div) {
#if defined(DSV3_SM90A)
  wg2_gemm<Wg2E4m3, CL>(bg_args(out, a, a_scales, nullptr, b_scale, nullptr, nullptr, row_ids, tile_expert, num_tiles, M,
                            N, K, a_row_div, 1),
                    tmap_a, tmap_b);
#else
  trap();
#endif
}

}  // namespace dsv3
