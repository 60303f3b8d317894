// sm_90a 8-bit GEMM for small M (decode): the function of the block GEMMs (FP8 block scales,
// INT8 block or channel scales; dense, or grouped by expert over pre-sorted rows) with the weights
// as the wgmma's 64-row A operand and the tokens as its N = NT (16, 32 or 64) columns ("swap AB"),
// streamed by TMA through a deep pipeline and split over K by stream-K.
//
// Why. At M ≤ 64 a weight byte carries ≤ 128 FLOPs: the GEMM is a stream of the weights. The
// mma.sync streaming kernel (kernels/stream_gemm.cuh) is issue-bound from M = 16 on (e4m3
// mma.sync is f16 HMMAs plus conversions on sm_90a), and v2 pads M to 128 rows with no split-K
// (one wave of N / 128 CTAs). Here an m64nNTk32 wgmma consumes a 128-K block of 128 weight rows
// and NT tokens natively, and every SM keeps ~180 KB of loads in flight. (At 65–128 rows an NT =
// 128 tile measured 1.2–3.5× slower than v2, bound by its split-K atomics; two NT = 64 M tiles beat
// v2 where its one CTA per tile leaves SMs idle: the host's dense_tile.)
//
// Work: output tile (mt, nt) = NT tokens × 128 weight rows (one weight scale block), its K in
// sk = ⌈K / 128⌉ blocks. The launch's m_tiles · n_tiles · sk blocks, tile-major (n tiles fastest
// inside an M tile), are cut into gridDim.x equal contiguous ranges, one per CTA (stream-K: no
// ragged wave whatever the shape). A CTA walks its range as segments, one per tile it touches;
// only the first and the last can be partial. A whole segment stores bf16. A partial one stores its
// sums into the CTA's f32 workspace slot (wgs_slot), and consumer thread 0 bumps the tile's counter by
// the segment's block count (after a CTA barrier and an acq_rel fence: the release of every
// consumer's stores, CUTLASS's split-K semaphore pattern) without waiting for the result; after
// its range, the CTA sums the slots of each tile whose count it completed into bf16 and leaves the
// counter zero for the next launch. Grouped launches read *num_tiles on the device; every
// CTA derives the same ranges.
//
// CTA: 384 threads = a producer warpgroup and two consumer warpgroups.
// - Producer, per block: waits the stage's `empty` barrier; thread 0 issues the weight box (3-D map
//   [E, N, K], box 128 × 128 at (kb·128, n0, expert)) and the token box (2-D map [rows, K], box
//   NT × 128 at (kb·128, m0)), both SWIZZLE_128B (what the wgmma descriptors read); thread 32 + p
//   (p < NT) writes token p's scale of the block into the stage (FP8 / block INT8 s_a[row, kb]·s_w[nb, kb],
//   channel INT8 s_a[row]). Tokens past the rows (and K past the end) arrive as zeros.
// - Consumer warpgroup w owns weight rows [64 w, 64 w + 64) of the tile: per block 4 ×
//   wgmma.m64nNTk32 into a fresh partial, waited for, promoted by the column (token) scales into
//   the total (the other warpgroup's and, at 16 tokens, the SM's second CTA's MMAs overlap it).
//   Channel INT8 does the same with its constant per-token scale (a block's s32 sum is exact in
//   f32) and multiplies the row's s_w[n] in at the flush.
// - Flush: fragment (row n, token t) goes straight to out[t, n] or to the workspace (wgs_flush).
//
// PDL (the manifest's `Pdl::InKernel`): the weights are constants, so before waiting for the
// previous grid thread 0 issues the weight boxes of the range's first STAGES blocks (their stage
// barriers expect the whole stage); the tokens, scales, workspace and output are touched only after
// every thread's griddepcontrol.wait.
//
// NT = 16: 5 stages (93.6 KB) and 68–74 registers per thread (≤ 85), two CTAs per SM (the host's grid);
// NT = 32: 9 stages (187 KB), one CTA per SM; NT = 64: 8 stages (195 KB), one CTA per SM.
// Rows must be pre-gathered (no row_ids): the fused MoE sorts the quantized activations first
// (moe_gather_rows), as for v2. Every mbarrier wait has v2's watchdog.
#pragma once
#include "dsv3/dsv3.h"
#include "int8_gemm_wgmma2.cuh"

namespace dsv3 {

constexpr u32 WGS_FLUSH_BAR = 4;    // named barrier of the consumers' split-K hand-off
constexpr u32 WGS_SCALE_AHEAD = 4;  // blocks of scale loads in flight per scale writer
// The 8-bit entries' weight format Q (gemm8_wgs): int8_block, int8_channel (kernels/block_gemm.cuh)
// or this.
constexpr int wgs_e4m3 = 2;

// Shared memory of one CTA, offsets from its 1024-aligned base: STAGES × (a weight box of W
// bytes, a token box of A bytes), STAGES per-stage areas of SC bytes written by the producer
// threads (token scales here; zero points and group scales for AWQ, kernels/awq_gemm_wgs.cuh),
// the mbarriers and the flags that tell the consumers which of their partial tiles they complete.
// Each kernel picks its stage count (src/backend/gemm_wgs.rs mirrors BYTES).
template <u32 W, u32 A, u32 SC, u32 N_STAGES> struct WgsLayout {
  static constexpr u32 W_TILE = W;
  static constexpr u32 A_TILE = A;  // a multiple of 1024: each box starts on a swizzle atom
  static constexpr u32 STAGE = W_TILE + A_TILE;
  static constexpr u32 SC_STAGE = SC;
  static constexpr u32 STAGES = N_STAGES;
  static constexpr u32 SCALES = STAGES * STAGE;
  static constexpr u32 BARS = SCALES + STAGES * SC_STAGE;
  static constexpr u32 FLAGS = BARS + 2 * STAGES * 8;
  static constexpr u32 END = FLAGS + 16;
  static constexpr u32 BYTES = END + 1024;
};

// The 8-bit kernels: a 128 × 128-byte weight box, an NT × 128-byte token box and NT f32 token
// scales per stage, as many stages as fit 96 KB (NT 16: two CTAs per SM, 5 stages) or 192 KB (NT
// 32: 9, NT 64: 8).
template <int NT> struct WgsSmem
    : WgsLayout<128 * 128, NT * 128, NT * 4, (NT == 16 ? 98304 : 196608) / (128 * 128 + NT * 128)> {
  static constexpr u32 CTAS_PER_SM = NT == 16 ? 2 : 1;
};

#if defined(DSV3_SM90A)
// Policies: v2's scales and conversions with the m64nNTk32 step, and whether the weight scale is
// per output row (channel INT8: applied at the flush).
template <int NT> struct WgsE4m3 : Wg2E4m3 {
  static constexpr bool ROW_SCALED = false;
  template <bool ACC> DSV3_DEV static void mma(float (&d)[NT / 2], u64 da, u64 db) { wgmma_e4m3_n<NT, ACC>(d, da, db); }
};
template <int NT, int MODE> struct WgsS8 : Wg2S8<MODE> {
  static constexpr bool ROW_SCALED = MODE == int8_channel;
  template <bool ACC> DSV3_DEV static void mma(i32 (&d)[NT / 2], u64 da, u64 db) { wgmma_s8_n<NT>(d, da, db, ACC); }
};

// The policy of an entry's format Q (gemm8_wgs).
template <int Q, int NT> struct WgsOp {
  using T = WgsS8<NT, Q>;
};
template <int NT> struct WgsOp<wgs_e4m3, NT> {
  using T = WgsE4m3<NT>;
};

// One segment of a CTA's range: blocks [kb0, kb1) of tile `tile` = (mt, nt).
struct WgsSeg {
  u32 tile, mt, nt, kb0, kb1;
};

template <int NT, class L = WgsSmem<NT>> struct WgsCtx : TmaGemmCta {
  using S = L;
  u32 m_end, total, begin, end;  // total: the launch's blocks; [begin, end): this CTA's range
  // The first block of CTA b's range, and the CTA whose range holds block u (the largest b with
  // begin_of(b) ≤ u).
  DSV3_DEV u32 begin_of(u32 b) const { return (u32)((u64)total * b / gridDim.x); }
  DSV3_DEV u32 cta_of(u32 u) const { return (u32)(((u64)(u + 1) * gridDim.x + total - 1) / total) - 1; }
  DSV3_DEV u32 full(u32 s) const { return base + S::BARS + s * 8; }
  DSV3_DEV u32 empty(u32 s) const { return base + S::BARS + (S::STAGES + s) * 8; }
  DSV3_DEV u32* flags() const { return reinterpret_cast<u32*>(smem + S::FLAGS); }
  // Stage s's area of S::SC_STAGE bytes (written by the producer threads, read by the consumers;
  // the 8-bit kernels' NT f32 token scales).
  DSV3_DEV u8* aux(u32 s) const { return smem + S::SCALES + s * S::SC_STAGE; }
  DSV3_DEV float* scales(u32 s) const { return reinterpret_cast<float*>(aux(s)); }
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
  DSV3_DEV static void advance(u32& stage, u32& phase) {
    if (++stage == S::STAGES) {
      stage = 0;
      phase ^= 1;
    }
  }
};

// Thread 0, before the grid dependency wait: the weight boxes of the range's first STAGES blocks
// (each stage's `full` barrier expects the whole stage; this is thread 0's arrival). Returns how
// many it issued.
template <int NT>
DSV3_DEV u32 wgs_prefetch_weights(const WgsCtx<NT>& c, const TmaMap& mb) {
  using S = WgsSmem<NT>;
  u32 n = 0;
  for (u32 u = c.begin; u < c.end && n < S::STAGES;) {
    const WgsSeg sg = c.seg(u);
    for (u32 kb = sg.kb0; kb < sg.kb1 && n < S::STAGES; ++kb, ++n) {
      mbar_arrive_expect_tx(c.full(n), S::STAGE);
      tma_load_3d(c.base + n * S::STAGE, mb, c.full(n), (i32)(kb * 128), (i32)(sg.nt * 128), (i32)c.expert(sg.mt));
    }
    u += sg.kb1 - sg.kb0;
  }
  return n;
}

// Producer warpgroup: thread 32 + r (r < NT) writes token r's scales, thread 0 issues the TMA
// boxes (the weights of the first `pre` blocks are already on their way). Thread 0 writes no
// scale: its TMA issue must not wait for a scale load (at a segment's first block that is a
// global-memory round trip, measured as the kernel's top stall at M = 1).
template <class Op, int NT>
DSV3_DEV void wgs_produce(const WgsCtx<NT>& c, const TmaMap& ma, const TmaMap& mb, u32 pre) {
  using S = WgsSmem<NT>;
  static_assert(NT <= 96, "scale writers are threads 32 .. 32 + NT - 1 of the producer warpgroup");
  const u32 p = tid() - 32;  // the scale writer's token (wraps for warp 0: no token)
  u32 stage = 0, phase = 0, i = 0;
  for (u32 u = c.begin; u < c.end;) {
    const WgsSeg sg = c.seg(u);
    const u32 expert = c.expert(sg.mt), m0 = sg.mt * NT, n0 = sg.nt * 128;
    const bool writer = p < (u32)NT;
    const typename Op::Scales sc(c.g, writer ? bg_a_row(c.g, m0 + p, c.m_end) : -1, expert, sg.nt, c.sk, c.sn);
    // Each writer keeps WGS_SCALE_AHEAD blocks of scale loads in flight (slot j holds block
    // kb + j's): with one, a stage waited a global round trip per block for its writers' arrivals
    // (ncu, docs/perf/fp8_gemm.md). Only writers load: thread 0's TMA issue waits for nothing.
    float sa[WGS_SCALE_AHEAD], sb[WGS_SCALE_AHEAD];
#pragma unroll
    for (u32 j = 0; j < WGS_SCALE_AHEAD; ++j)
      if (writer && sg.kb0 + j < sg.kb1) sc.load(sg.kb0 + j, sa[j], sb[j]);
    for (u32 kb = sg.kb0; kb < sg.kb1; kb += WGS_SCALE_AHEAD) {
#pragma unroll
      for (u32 j = 0; j < WGS_SCALE_AHEAD; ++j, ++i) {
        const u32 k = kb + j;
        if (k >= sg.kb1) break;
        mbar_wait(c.empty(stage), phase ^ 1);
        if (writer) {
          c.scales(stage)[p] = sa[j] * sb[j];
          if (k + WGS_SCALE_AHEAD < sg.kb1) sc.load(k + WGS_SCALE_AHEAD, sa[j], sb[j]);
        }
        if (tid() == 0) {
          const u32 w_dst = c.base + stage * S::STAGE;
          if (i >= pre) {
            mbar_arrive_expect_tx(c.full(stage), S::STAGE);
            tma_load_3d(w_dst, mb, c.full(stage), (i32)(k * 128), (i32)n0, (i32)expert);
          }
          tma_load_2d(w_dst + S::W_TILE, ma, c.full(stage), (i32)(k * 128), (i32)m0);
        } else {
          mbar_arrive(c.full(stage));
        }
        c.advance(stage, phase);
      }
    }
    u += sg.kb1 - sg.kb0;
  }
}

// Consumer thread t (0..255)'s fragment i = 4j + 2h + e in a tile is tile row r0 + 8h (weight row
// nt·128 + r0 + 8h), token column 8j + 2q + e.
struct WgsFrag {
  u32 r0, q;
};
DSV3_DEV WgsFrag wgs_frag(u32 t) { return {(t / 128) * 64 + ((t % 128) / 32) * 16 + (t % 32) / 4, t % 4}; }

// The weight-row scales of fragment rows r0 and r0 + 8 (channel INT8; 1 otherwise, 0 past N).
template <class Op, int NT, class L>
DSV3_DEV void wgs_row_scales(const WgsCtx<NT, L>& c, const WgsSeg& sg, u32 r0, float (&rs)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const u32 n = sg.nt * 128 + r0 + 8 * h;
    rs[h] = 1.0f;
    if constexpr (Op::ROW_SCALED) rs[h] = n < c.g.N ? c.g.b_scale[(u64)c.expert(sg.mt) * c.g.N + n] : 0.0f;
  }
}

// The split-K workspace: two slots of NT × 128 f32 per CTA, 2b for CTA b's first segment and 2b + 1
// for its last (only those can be partial), in fragment order (thread t's fragments 4j .. 4j + 3 at
// float (256 j + t) · 4: a warp's 16-byte stores cover 512 contiguous bytes). A partial segment is
// stored, not added: the CTA that completes a tile sums its contributors' slots in CTA order, so
// the result does not depend on timing, and L2 does no read-modify-write (scalar f32 atomics into
// [rows, N] cost ~64 × 128 L2 operations per partial 64-token segment, the 64-token tiles' limit).
// Fragments of tokens past the output (4j group past m_end) are neither stored nor read.
// wgs_slot(c, b, first, tile): the slot of CTA b (whose range begins at block `first`) for its
// segment in `tile`.
template <int NT, class L> DSV3_DEV float* wgs_slot(const WgsCtx<NT, L>& c, u32 b, u32 first, u32 tile) {
  return c.g.ws + (u64)(2 * b + (first / c.sk == tile ? 0 : 1)) * (NT * 128);
}

// Whether thread t's fragments 4j .. 4j + 3 (tokens 8j + 2q, + 1) of M tile mt hold an output token.
template <int NT, class L> DSV3_DEV bool wgs_live(const WgsCtx<NT, L>& c, u32 mt, const WgsFrag& fr, int j) {
  return mt * NT + 8 * j + 2 * fr.q < c.m_end;
}

// Thread t's fragments of tile sg in v (times the rows' scales rs) to bf16 out, those inside it.
template <int NT, class L>
DSV3_DEV void wgs_store(const WgsCtx<NT, L>& c, const WgsSeg& sg, const WgsFrag& fr, const float (&v)[NT / 2],
                        const float (&rs)[2]) {
  const BlockGemmArgs& g = c.g;
#pragma unroll
  for (int i = 0; i < NT / 2; ++i) {
    const u32 n = sg.nt * 128 + fr.r0 + 8 * ((i / 2) % 2), tok = sg.mt * NT + 8 * (i / 4) + 2 * fr.q + i % 2;
    if (n < g.N && tok < c.m_end) g.out[(u64)tok * g.N + n] = f32_to_bf16(v[i] * rs[(i / 2) % 2]);
  }
}

// A consumer thread's split-K state is its partial segments pend0 / pend1 (at most the range's
// first and last; npend of them) and, in thread 0, each one's tile count after its addition
// (count0 / count1, read after the range: the atomic's latency is not waited for). They are
// separate variables, passed by reference: a struct of them changes the 8-bit entries' SASS.

// Segment sg's last block is in `tot` (consumer thread t): a whole segment stores bf16 (2-byte
// stores: the output is small next to the weights); a partial one goes to this CTA's slot, thread
// 0 bumps the tile's counter by the segment's blocks after the consumers' barrier and an acq_rel
// fence (the release of every consumer's stores), and the segment is remembered for wgs_finish.
template <class Op, int NT, class L>
DSV3_DEV void wgs_flush(const WgsCtx<NT, L>& c, const WgsSeg& sg, u32 t, const float (&tot)[NT / 2], WgsSeg& pend0,
                        WgsSeg& pend1, u32& npend, u32& count0, u32& count1) {
  const BlockGemmArgs& g = c.g;
  const WgsFrag fr = wgs_frag(t);
  float rs[2];
  wgs_row_scales<Op>(c, sg, fr.r0, rs);
  if (sg.kb0 == 0 && sg.kb1 == c.sk) {
    wgs_store(c, sg, fr, tot, rs);
  } else {
    float* slot = wgs_slot(c, blockIdx.x, c.begin, sg.tile);
#pragma unroll
    for (int j = 0; j < NT / 8; ++j)
      if (wgs_live(c, sg.mt, fr, j))
        *reinterpret_cast<float4*>(slot + (256 * j + t) * 4) =
            make_float4(tot[4 * j] * rs[0], tot[4 * j + 1] * rs[0], tot[4 * j + 2] * rs[1], tot[4 * j + 3] * rs[1]);
    named_bar_sync(WGS_FLUSH_BAR, 256);
    u32 count = 0;
    if (t == 0) {
      fence_acq_rel_gpu();
      count = atomic_add(&g.counters[sg.tile], sg.kb1 - sg.kb0) + (sg.kb1 - sg.kb0);
    }
    if (npend++ == 0) {
      pend0 = sg;
      count0 = count;
    } else {
      pend1 = sg;
      count1 = count;
    }
  }
}

// After the range: each tile this CTA completed (acquire: thread 0's fence after seeing the count,
// then the barrier) is the sum of its contributors' slots — the CTAs with a non-empty range from
// cta_of(first block) to cta_of(last block), each through the slot of the segment it had there —
// stored as bf16; its counter is left zero.
template <class Op, int NT, class L>
DSV3_DEV void wgs_finish(const WgsCtx<NT, L>& c, u32 t, const WgsSeg& pend0, const WgsSeg& pend1, const u32& npend,
                         const u32& count0, const u32& count1) {
  if (npend == 0) return;
  if (t == 0) {
    const bool last0 = count0 == c.sk, last1 = npend > 1 && count1 == c.sk;
    c.flags()[0] = last0 ? 1u : 0u;
    c.flags()[1] = last1 ? 1u : 0u;
    if (last0 || last1) fence_acq_rel_gpu();  // acquire: only a CTA that completes a tile reads ws
  }
  named_bar_sync(WGS_FLUSH_BAR, 256);
  const WgsFrag fr = wgs_frag(t);
  auto finish = [&](const WgsSeg& sg) {
    float sum[NT / 2];
#pragma unroll
    for (int i = 0; i < NT / 2; ++i) sum[i] = 0.0f;
    // U contributors' loads in flight at once (32 / 64 / 64 registers of them at NT 16 / 32 / 64;
    // NT 16 must stay within the 85 registers of two CTAs per SM): one after another, each an L2
    // round trip, the sum of a
    // tile cut over ~15 short ranges took ~5 µs (run 2).
    constexpr u32 U = NT == 64 ? 2 : 4;
    const u32 u0 = sg.tile * c.sk, b1 = c.cta_of(u0 + c.sk - 1);
    u32 b0 = c.cta_of(u0), first = c.begin_of(b0);  // first: the range start of contributor b
    for (; b0 <= b1; b0 += U) {
      float4 v[U][NT / 8];
#pragma unroll
      for (u32 i = 0; i < U; ++i) {
        // A grouped launch's device-side tile count can leave CTAs with empty ranges between the
        // contributors: they wrote no slot.
        const u32 b = b0 + i, next = c.begin_of(b + 1);
        const bool wrote = b <= b1 && first < next;
        const float* slot = wgs_slot(c, b, first, sg.tile);
        first = next;
#pragma unroll
        for (int j = 0; j < NT / 8; ++j)
          v[i][j] = wrote && wgs_live(c, sg.mt, fr, j) ? ld_cg_f32x4(slot + (256 * j + t) * 4) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (u32 i = 0; i < U; ++i)
#pragma unroll
        for (int j = 0; j < NT / 8; ++j) {
          sum[4 * j] += v[i][j].x;
          sum[4 * j + 1] += v[i][j].y;
          sum[4 * j + 2] += v[i][j].z;
          sum[4 * j + 3] += v[i][j].w;
        }
    }
    wgs_store(c, sg, fr, sum, {1.0f, 1.0f});
    if (t == 0) c.g.counters[sg.tile] = 0u;
  };
  if (c.flags()[0] != 0) finish(pend0);
  if (npend > 1 && c.flags()[1] != 0) finish(pend1);
}

// Consumer warpgroups (threads 128..383): per block, wait for its stage, 4 k32 steps, wait for
// them, promote by the stage's scales of this thread's token columns 8j + 2q + {0, 1}, hand the
// stage back; flush at a segment's end. Nothing is in flight across a branch: at a control-flow
// join with a wgmma in flight ptxas serializes every wgmma of the kernel (C7518; a second partial
// set issued ahead came out serialized, docs/perf/fp8_gemm.md). The tensor pipe is kept busy by
// the other warpgroup and, at 16 tokens, the SM's second CTA.
template <class Op, int NT>
DSV3_DEV void wgs_consume(const WgsCtx<NT>& c) {
  using S = WgsSmem<NT>;
  using Acc = typename Op::Acc;
  constexpr int R = NT / 2;
  const u32 t = tid() - 128, w = t / 128, ln = t % 32, q = ln % 4;
  if (c.begin >= c.end) return;
  u32 stage = 0, phase = 0;
  Acc acc[R];
  float tot[R];
  WgsSeg pend0, pend1;  // split-K state (wgs_flush / wgs_finish)
  u32 npend = 0, count0 = 0, count1 = 0;
  for (u32 u = c.begin; u < c.end;) {
    const WgsSeg sg = c.seg(u);
#pragma unroll
    for (int r = 0; r < R; ++r) tot[r] = 0.0f;
    for (u32 kb = sg.kb0; kb < sg.kb1; ++kb) {
      mbar_wait(c.full(stage), phase);
      const u32 st = c.base + stage * S::STAGE;
      const u64 da = wgmma_desc_sw128(st + w * 64 * 128), db = wgmma_desc_sw128(st + S::W_TILE);
      wgmma_fence();
      Op::template mma<false>(acc, da, db);
#pragma unroll
      for (int ks = 1; ks < 4; ++ks) Op::template mma<true>(acc, da + 2 * ks, db + 2 * ks);
      wgmma_commit();
      wgmma_pin(acc);
      wgmma_wait<0>();
      wgmma_pin(acc);
      const float* sp = c.scales(stage);
#pragma unroll
      for (int j = 0; j < NT / 8; ++j) {
        const float2 v = *reinterpret_cast<const float2*>(sp + 8 * j + 2 * q);
#pragma unroll
        for (int i = 4 * j; i < 4 * j + 4; ++i) tot[i] = fmaf(Op::to_f32(acc[i]), i % 2 ? v.y : v.x, tot[i]);
      }
      __syncwarp();
      mbar_arrive_if(c.empty(stage), ln == 0);
      c.advance(stage, phase);
    }
    wgs_flush<Op, NT>(c, sg, t, tot, pend0, pend1, npend, count0, count1);
    u += sg.kb1 - sg.kb0;
  }
  wgs_finish<Op, NT>(c, t, pend0, pend1, npend, count0, count1);
}

// The CTA's setup, shared by the small-M kernels (the 8-bit ones here, AWQ in
// kernels/awq_gemm_wgs.cuh): the aligned shared base, the launch's blocks cut into gridDim.x equal
// ranges (this CTA's [begin, end)), the pipeline's barriers (each `full` expecting
// `full_arrivals` per phase: one per producer thread that arrives), the PDL protocol (see the
// header): thread 0 runs `prefetch_weights(c)` (the range's first weight boxes; returns how many)
// before the grid dependency wait. Returns that count (thread 0; 0 elsewhere).
template <int NT, class L, class F>
DSV3_DEV u32 wgs_init(WgsCtx<NT, L>& c, const BlockGemmArgs& g, const TmaMap& ma, const TmaMap& mb, u32 full_arrivals,
                      F&& prefetch_weights) {
  using S = L;
  extern __shared__ __attribute__((aligned(1024))) u8 wgs_smem[];
  c.init(g, wgs_smem);
  grid_dependency_launch();  // the next grid's CTAs may take SMs this one leaves
  const bool grouped = g.tile_expert != nullptr;
  u32 pre = 0;
  if (grouped) {
    grid_dependency_wait();  // *num_tiles and the tiles' experts come from the previous grids
  }
  // Grouped: *num_tiles (on the device), never more than the rows the host sized `out` for.
  const u32 m_tiles = grouped ? min((u32)*g.num_tiles, ceil_div(g.M, NT)) : ceil_div(g.M, NT);
  c.m_end = grouped ? m_tiles * NT : g.M;
  c.total = m_tiles * c.sn * c.sk;
  c.begin = c.begin_of(blockIdx.x);
  c.end = c.begin_of(blockIdx.x + 1);
  if (tid() == 0) {
    for (u32 s = 0; s < S::STAGES; ++s) {
      mbar_init(c.full(s), full_arrivals);
      mbar_init(c.empty(s), 8);   // one arrival per consumer warp
    }
    mbar_init_fence();
    tma_prefetch(ma);
    tma_prefetch(mb);
    pre = prefetch_weights(c);
  }
  __syncthreads();
  grid_dependency_wait();
  return pre;
}

template <class Op, int NT>
DSV3_DEV void wgs_gemm(const BlockGemmArgs& g, const TmaMap& ma, const TmaMap& mb) {
  WgsCtx<NT> c;
  // Every producer thread arrives once per use of a stage.
  const u32 pre = wgs_init(c, g, ma, mb, 128, [&](const WgsCtx<NT>& cc) { return wgs_prefetch_weights(cc, mb); });
  if (tid() < 128) {
    wgs_produce<Op, NT>(c, ma, mb, pre);  // only thread 0 reads `pre`
  } else {
    wgs_consume<Op, NT>(c);
  }
}
#endif  // DSV3_SM90A

// Entries (format Q): grid (at most CTAS_PER_SM per SM, at most the launch's blocks), block 384, dynamic smem
// WgsSmem<NT>::BYTES. tmap_a: 2-D map of the (pre-sorted) rows [rows, K], box NT × 128; tmap_b:
// 3-D map of b [E, N, K] (E = 1 dense), box 128 × 128. ws / counters: the split-K workspace
// [2 · grid, NT · 128] (wgs_slot; any contents) and counters [m tiles · n tiles], zero on entry
// and left zero.
template <int Q, int NT>
DSV3_DEV void gemm8_wgs(bf16* out, const TmaMap& tmap_a, const TmaMap& tmap_b, const float* a_scales,
                        const float* b_scale, float* ws, u32* counters, const i32* tile_expert, const i32* num_tiles,
                        u32 M, u32 N, u32 K) {
#if defined(DSV3_SM90A)
  wgs_gemm<typename WgsOp<Q, NT>::T, NT>(bg_args(out, nullptr, a_scales, nullptr, b_scale, ws, counters, nullptr,
                                                 tile_expert, num_tiles, M, N, K, 1, 1),
                                         tmap_a, tmap_b);
#else
  grid_dependency_sync();
  trap();
#endif
}

}  // namespace dsv3
