// sm_90a 8-bit GEMM for small M (decode): the function of the block GEMMs (FP8 block scales,
// INT8 block or channel scales; dense, or grouped by expert over pre-sorted rows) with the weights
// as the wgmma's 64-row A operand and the tokens as its N = NT (16, 64 or 128) columns ("swap
// AB"), streamed by TMA through a deep pipeline and split over K by stream-K.
//
// Why. At M ≤ 128 a weight byte carries ≤ 256 FLOPs: the GEMM is a stream of the weights. The
// mma.sync streaming kernel (kernels/stream_gemm.cuh) is issue-bound from M = 16 on (e4m3
// mma.sync is f16 HMMAs plus conversions on sm_90a), and v2 pads M to 128 rows with no split-K
// (one wave of N / 128 CTAs). Here an m64nNTk32 wgmma consumes a 128-K block of 128 weight rows
// and NT tokens natively, so the tensor work per byte is what the tokens need, and every SM keeps
// up to 10 blocks (~180 KB) of loads in flight.
//
// Work: output tile (mt, nt) = NT tokens × 128 weight rows (one weight scale block), its K in
// sk = ⌈K / 128⌉ blocks. The launch's m_tiles · n_tiles · sk blocks, tile-major (n tiles fastest
// inside an M tile), are cut into gridDim.x equal contiguous ranges, one per CTA (stream-K: no
// ragged wave whatever the shape). A CTA walks its range as segments, one per tile it touches.
// A segment covering its whole tile stores bf16; otherwise it adds its partial sums into the f32
// workspace (atomics) and bumps the tile's counter by its block count; the CTA whose addition
// completes sk converts the tile to bf16 and leaves the workspace and counter zero for the next
// launch. Grouped launches read *num_tiles on the device; every CTA derives the same ranges.
//
// CTA: 384 threads = a producer warpgroup (40 registers) and two consumer warpgroups (232).
// - Producer, per block: waits the stage's `empty` barrier; thread 0 issues the weight box (3-D map
//   [E, N, K], box 128 × 128 at (kb·128, n0, expert)) and the token box (2-D map [rows, K], box
//   NT × 128 at (kb·128, m0)), both SWIZZLE_128B (what the wgmma descriptors read); thread p < NT
//   writes token p's scale of the block into the stage (FP8 / block INT8 s_a[row, kb]·s_w[nb, kb],
//   channel INT8 s_a[row]). Tokens past the rows (and K past the end) arrive as zeros.
// - Consumer warpgroup w owns weight rows [64 w, 64 w + 64) of the tile: per block 4 ×
//   wgmma.m64nNTk32 into a fresh partial, promoted by the column (token) scales into the total
//   (channel INT8: the s32 partial sums the segment's blocks, scaled once at the end, then by
//   the row's s_w[n]). As in v2 (kernels/fp8_gemm_wgmma2.cuh) warpgroup 0 issues each block
//   before warpgroup 1 (named barrier), so one promotes while the other's MMAs run.
// - Flush: thread (row n, token t) fragments go straight to out[t, n] (2-byte stores: the output
//   is small next to the weights) or to the workspace.
//
// Rows must be pre-gathered (no row_ids): the fused MoE sorts the quantized activations first
// (moe_gather_rows), as for v2. Every mbarrier wait has v2's watchdog.
#pragma once
#include "dsv3/dsv3.h"
#include "int8_gemm_wgmma2.cuh"

namespace dsv3 {

constexpr u32 WGS_ORDER_BAR = 4;  // named barrier of the consumers' issue order
constexpr u32 WGS_FLUSH_BAR = 5;  // named barrier of the consumers' split-K hand-off

// Shared memory of one CTA, offsets from its 1024-aligned base (src/backend/gemm_wgs.rs mirrors
// BYTES): STAGES × (weight box, token box), their token scales, the mbarriers and the flag that
// tells the consumers their CTA finishes the tile.
template <int NT> struct WgsSmem {
  static constexpr u32 W_TILE = 128 * 128;
  static constexpr u32 A_TILE = NT * 128;  // a multiple of 1024: each box starts on a swizzle atom
  static constexpr u32 STAGE = W_TILE + A_TILE;
  static constexpr u32 STAGES = 196608 / STAGE < 10 ? 196608 / STAGE : 10;  // NT 16: 10, 64: 8, 128: 6
  static constexpr u32 SCALES = STAGES * STAGE;
  static constexpr u32 BARS = SCALES + STAGES * NT * 4;
  static constexpr u32 FLAG = BARS + 2 * STAGES * 8;
  static constexpr u32 END = FLAG + 16;
  static constexpr u32 BYTES = END + 1024;
};

#if defined(DSV3_SM90A)
// Policies: v2's (scales, promotion, conversions) with the m64nNTk32 step, and whether the weight
// scale is per output row (channel INT8: applied at the flush).
template <int NT> struct WgsE4m3 : Wg2E4m3 {
  static constexpr bool ROW_SCALED = false;
  template <bool ACC> DSV3_DEV static void mma(float (&d)[NT / 2], u64 da, u64 db) { wgmma_e4m3_n<NT, ACC>(d, da, db); }
};
template <int NT, int MODE> struct WgsS8 : Wg2S8<MODE> {
  static constexpr bool ROW_SCALED = MODE == int8_channel;
  template <bool ACC> DSV3_DEV static void mma(i32 (&d)[NT / 2], u64 da, u64 db) { wgmma_s8_n<NT>(d, da, db, ACC); }
  DSV3_DEV static void mma_first(i32 (&d)[NT / 2], u64 da, u64 db, bool fresh) { wgmma_s8_n<NT>(d, da, db, !fresh); }
};

// One segment of a CTA's range: blocks [kb0, kb1) of tile `tile` = (mt, nt).
struct WgsSeg {
  u32 tile, mt, nt, kb0, kb1;
};

template <int NT> struct WgsCtx {
  using S = WgsSmem<NT>;
  BlockGemmArgs g;
  u32 sk, sn, m_end, begin, end;
  u32 base;  // shared address of the aligned base
  u8* smem;  // the same, generic
  DSV3_DEV u32 full(u32 s) const { return base + S::BARS + s * 8; }
  DSV3_DEV u32 empty(u32 s) const { return base + S::BARS + (S::STAGES + s) * 8; }
  DSV3_DEV float* scales(u32 s) const { return reinterpret_cast<float*>(smem + S::SCALES) + s * NT; }
  DSV3_DEV u32 expert(u32 mt) const { return g.tile_expert != nullptr ? (u32)g.tile_expert[mt] : 0u; }
  // The segment starting at block u of the range.
  DSV3_DEV WgsSeg seg(u32 u) const {
    WgsSeg s;
    s.tile = u / sk;
    s.kb0 = u % sk;
    s.kb1 = min(sk, s.kb0 + (end - u));
    s.mt = s.tile / sn;
    s.nt = s.tile % sn;
    return s;
  }
  DSV3_DEV void advance(u32& stage, u32& phase) const {
    if (++stage == S::STAGES) {
      stage = 0;
      phase ^= 1;
    }
  }
};

// Producer warpgroup: thread p < NT writes token p's scales, thread 0 issues the TMA boxes.
template <class Op, int NT>
DSV3_DEV void wgs_produce(const WgsCtx<NT>& c, const TmaMap& ma, const TmaMap& mb) {
  using S = WgsSmem<NT>;
  const u32 p = tid();
  if (p == 0) {
    tma_prefetch(ma);
    tma_prefetch(mb);
  }
  u32 stage = 0, phase = 0;
  for (u32 u = c.begin; u < c.end;) {
    const WgsSeg sg = c.seg(u);
    const u32 expert = c.expert(sg.mt), m0 = sg.mt * NT, n0 = sg.nt * 128;
    const typename Op::Scales sc(c.g, p < (u32)NT ? bg_a_row(c.g, m0 + p, c.m_end) : -1, expert, sg.nt, c.sk, c.sn);
    // Block kb + 1's scales load during block kb (their latency must not pace the producer).
    float a_next, b_next;
    sc.load(sg.kb0, a_next, b_next);
    for (u32 kb = sg.kb0; kb < sg.kb1; ++kb) {
      const float s = a_next * b_next;
      if (kb + 1 < sg.kb1) sc.load(kb + 1, a_next, b_next);
      mbar_wait(c.empty(stage), phase ^ 1);
      if (p < (u32)NT) c.scales(stage)[p] = s;
      if (p == 0) {
        const u32 w_dst = c.base + stage * S::STAGE;
        mbar_arrive_expect_tx(c.full(stage), S::STAGE);
        tma_load_3d(w_dst, mb, c.full(stage), (i32)(kb * 128), (i32)n0, (i32)expert);
        tma_load_2d(w_dst + S::W_TILE, ma, c.full(stage), (i32)(kb * 128), (i32)m0);
      } else {
        mbar_arrive(c.full(stage));
      }
      c.advance(stage, phase);
    }
    u += sg.kb1 - sg.kb0;
  }
}

// A finished segment's totals (rows n of the consumer's fragments, columns = tokens) → bf16 out
// (whole tile) or the workspace, the tile's counter, and the conversion by the CTA that completes
// it. `t` is the consumer thread (0..255), w its warpgroup.
template <class Op, int NT>
DSV3_DEV void wgs_flush(const WgsCtx<NT>& c, const float (&tot)[NT / 2], const WgsSeg& sg, u32 t) {
  const BlockGemmArgs& g = c.g;
  const u32 w = t / 128, warp = (t % 128) / 32, ln = t % 32, q = ln % 4, N = g.N;
  const u32 m0 = sg.mt * NT, n_row = sg.nt * 128 + w * 64 + warp * 16 + ln / 4;
  float rs[2] = {1.0f, 1.0f};
  if constexpr (Op::ROW_SCALED) {
    const float* sw = g.b_scale + (u64)c.expert(sg.mt) * N;
#pragma unroll
    for (int h = 0; h < 2; ++h) rs[h] = n_row + 8 * h < N ? sw[n_row + 8 * h] : 0.0f;
  }
  // Fragment i = 4j + 2h + e: weight row n_row + 8h, token m0 + 8j + 2q + e.
  auto each = [&](auto&& f) {
#pragma unroll
    for (int j = 0; j < NT / 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const u32 n = n_row + 8 * h, tok = m0 + 8 * j + 2 * q + e;
          if (n < N && tok < c.m_end) f(4 * j + 2 * h + e, (u64)tok * N + n, rs[h]);
        }
  };
  if (sg.kb0 == 0 && sg.kb1 == c.sk) {
    each([&](int i, u64 idx, float r) { g.out[idx] = f32_to_bf16(tot[i] * r); });
    return;
  }
  each([&](int i, u64 idx, float r) { atomic_add(g.ws + idx, tot[i] * r); });
  fence_device();
  named_bar_sync(WGS_FLUSH_BAR, 256);
  u32* last = reinterpret_cast<u32*>(c.smem + WgsSmem<NT>::FLAG);
  if (t == 0) {
    const u32 done = sg.kb1 - sg.kb0;
    *last = atomic_add(&g.counters[sg.tile], done) + done == c.sk ? 1u : 0u;
  }
  named_bar_sync(WGS_FLUSH_BAR, 256);
  if (*last == 0) return;
  fence_device();
  each([&](int, u64 idx, float) {
    g.out[idx] = f32_to_bf16(ld_cg_f32(g.ws + idx));
    g.ws[idx] = 0.0f;
  });
  if (t == 0) g.counters[sg.tile] = 0u;
}

// Consumer warpgroups (threads 128..383).
template <class Op, int NT>
DSV3_DEV void wgs_consume(const WgsCtx<NT>& c) {
  using S = WgsSmem<NT>;
  using Acc = typename Op::Acc;
  constexpr int R = NT / 2;
  const u32 t = tid() - 128, w = t / 128, ln = t % 32, q = ln % 4;
  u32 stage = 0, phase = 0;
  Acc acc[R];
  float tot[R];
  // The stage's scale of this thread's token column 8j + 2q + e (read where it is used: holding
  // all NT / 4 in registers next to the partial and the total makes ptxas serialize the wgmma at
  // NT = 128).
  auto scale = [&](u32 s, int j) { return *reinterpret_cast<const float2*>(c.scales(s) + 8 * j + 2 * q); };

  // Waits for the current stage and issues its 4 k32 steps (v2's issue order, see the header).
  auto issue = [&](bool fresh) {
    mbar_wait(c.full(stage), phase);
    const u32 wt = c.base + stage * S::STAGE;
    const u64 da = wgmma_desc_sw128(wt + w * 64 * 128), db = wgmma_desc_sw128(wt + S::W_TILE);
    if (w == 1) named_bar_sync(WGS_ORDER_BAR, 256);
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
    if (w == 0) named_bar_sync(WGS_ORDER_BAR, 256);
  };
  // Stage `s`'s group has completed: promote the partial (block scales; the scales are read
  // before the stage is handed back), then free the stage.
  auto retire = [&](u32 s) {
    wgmma_pin(acc);
    if constexpr (!Op::WHOLE_K) {
#pragma unroll
      for (int j = 0; j < NT / 8; ++j) {
        const float2 v = scale(s, j);
#pragma unroll
        for (int i = 4 * j; i < 4 * j + 4; ++i) tot[i] = fmaf(Op::to_f32(acc[i]), i % 2 ? v.y : v.x, tot[i]);
      }
    }
    __syncwarp();
    if (ln == 0) mbar_arrive(c.empty(s));
  };

  if (c.begin >= c.end) return;
  issue(true);
  for (u32 u = c.begin;;) {
    const WgsSeg sg = c.seg(u);
    if constexpr (!Op::WHOLE_K) {
#pragma unroll
      for (int i = 0; i < R; ++i) tot[i] = 0.0f;
    }
    u32 prev = stage;
    c.advance(stage, phase);
    for (u32 kb = sg.kb0 + 1; kb < sg.kb1; ++kb) {
      if constexpr (Op::WHOLE_K) {
        issue(false);
        wgmma_wait<1>();
        retire(prev);
      } else {
        wgmma_wait<0>();
        retire(prev);
        issue(true);
      }
      prev = stage;
      c.advance(stage, phase);
    }
    wgmma_wait<0>();
    if constexpr (Op::WHOLE_K) {
      // The per-token scale is the same in every stage (s_a[row]): the last one's.
#pragma unroll
      for (int j = 0; j < NT / 8; ++j) {
        const float2 v = scale(prev, j);
#pragma unroll
        for (int i = 4 * j; i < 4 * j + 4; ++i) tot[i] = Op::sum_to_f32(acc[i]) * (i % 2 ? v.y : v.x);
      }
    }
    retire(prev);
    u += sg.kb1 - sg.kb0;
    const bool more = u < c.end;
    // The next segment's first block runs during this flush, except at NT = 128: there the
    // flush's registers next to the 2 × 64 of the partial and the total make ptxas wait for the
    // wgmma anyway.
    constexpr bool EARLY = NT < 128;
    if (EARLY && more) issue(true);
    wgs_flush<Op, NT>(c, tot, sg, t);
    if (!more) return;
    if (!EARLY) issue(true);
  }
}

template <class Op, int NT>
DSV3_DEV void wgs_gemm(const BlockGemmArgs& g, const TmaMap& ma, const TmaMap& mb) {
  using S = WgsSmem<NT>;
  extern __shared__ __attribute__((aligned(1024))) u8 wgs_smem[];
  WgsCtx<NT> c;
  c.g = g;
  const u32 raw = smem_u32(wgs_smem);
  c.base = (raw + 1023u) & ~1023u;
  c.smem = wgs_smem + (c.base - raw);
  c.sk = ceil_div(g.K, 128);
  c.sn = ceil_div(g.N, 128);
  // Grouped: *num_tiles (on the device), never more than the rows the host sized `out` for.
  const u32 m_tiles = g.tile_expert != nullptr ? min((u32)*g.num_tiles, ceil_div(g.M, NT)) : ceil_div(g.M, NT);
  c.m_end = g.tile_expert != nullptr ? m_tiles * NT : g.M;
  const u64 total = (u64)m_tiles * c.sn * c.sk;
  c.begin = (u32)(total * blockIdx.x / gridDim.x);
  c.end = (u32)(total * (blockIdx.x + 1) / gridDim.x);
  if (tid() == 0) {
    for (u32 s = 0; s < S::STAGES; ++s) {
      mbar_init(c.full(s), 128);  // every producer thread arrives once per use
      mbar_init(c.empty(s), 8);   // one arrival per consumer warp
    }
    mbar_init_fence();
  }
  __syncthreads();
  if (tid() < 128) {
    regs_dec<40>();
    wgs_produce<Op, NT>(c, ma, mb);
  } else {
    regs_inc<232>();
    wgs_consume<Op, NT>(c);
  }
}
#endif  // DSV3_SM90A

// Entries: grid (at most one CTA per SM, at most the launch's blocks), block 384, dynamic smem
// WgsSmem<NT>::BYTES. tmap_a: 2-D map of the (pre-sorted) rows [rows, K], box NT × 128; tmap_b:
// 3-D map of b [E, N, K] (E = 1 dense), box 128 × 128. ws / counters: the split-K workspace
// [rows, N] and counters [m tiles · n tiles], zero on entry and left zero.
template <int NT>
DSV3_DEV void fp8_gemm_wgs(bf16* out, const TmaMap& tmap_a, const TmaMap& tmap_b, const float* a_scales,
                           const float* b_scale, float* ws, u32* counters, const i32* tile_expert, const i32* num_tiles,
                           u32 M, u32 N, u32 K) {
#if defined(DSV3_SM90A)
  wgs_gemm<WgsE4m3<NT>, NT>(bg_args(out, nullptr, a_scales, nullptr, b_scale, ws, counters,
                                    nullptr, tile_expert, num_tiles, M, N, K, 1, 1),
                            tmap_a, tmap_b);
#else
  trap();
#endif
}

template <int MODE, int NT>
DSV3_DEV void int8_gemm_wgs(bf16* out, const TmaMap& tmap_a, const TmaMap& tmap_b, const float* a_scales,
                            const float* b_scale, float* ws, u32* counters, const i32* tile_expert, const i32* num_tiles,
                            u32 M, u32 N, u32 K) {
#if defined(DSV3_SM90A)
  wgs_gemm<WgsS8<NT, MODE>, NT>(bg_args(out, nullptr, a_scales, nullptr, b_scale, ws, counters,
                                        nullptr, tile_expert, num_tiles, M, N, K, 1, 1),
                                tmap_a, tmap_b);
#else
  trap();
#endif
}

}  // namespace dsv3
