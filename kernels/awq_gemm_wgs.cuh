// sm_90a AWQ W4A16 GEMM for small M (decode): the function of awq_gemm (kernels/quant_gemm.cuh:
// out[m, n] = Σ_k a[m, k] · (q[k, n] − z[k/G, n]) · s[k/G, n]; dense, or grouped by expert over
// pre-sorted rows) on the pipeline of the 8-bit small-M kernels (kernels/gemm_wgs.cuh: its CTA
// setup wgs_init with the PDL protocol, WgsCtx's stream-K ranges and segments, WgsLayout, the
// split-K hand-off wgs_flush / wgs_finish and the fragment map wgs_frag), with the
// weights dequantized in registers as the wgmma's A operand.
//
// Why. The mma.sync AWQ kernels (stream_gemm_awq_t*, awq_gemm_bm*) reach 0.15–0.40 of the copy
// bandwidth at M ≤ 64: issue- and shared-memory-bound (docs/perf/quant_gemm.md). Here a warp
// dequantizes its 16 weight rows of a 128-K block once (8 words a thread) for all NT tokens, the
// tensor work is one m64nNTk16 wgmma per 16 K, and the TMA keeps 7–15 blocks per SM in flight.
//
// Work: as gemm_wgs (tile (mt, nt) = NT tokens × 128 weight rows, K in 128-wide blocks, the
// launch's blocks cut into gridDim.x equal contiguous ranges; K % G == 0 so the last block may be
// half a block at G = 64: TMA zero-fills the rest).
//
// Stage (AwqWgsSmem): the weight box, the two token boxes, the block's scales and zero words, all
// five TMA copies issued by producer thread 0 and counted on the stage's `full` barrier.
// - Weights: `awq_repack`'s words (layout [E][N/8][K/32][32 lanes], kernels/quant_gemm.cuh),
//   seen by TMA as bytes [E][N/8][K/32][128]: box (128 B, 4 k32 blocks, 16 column groups) at
//   (0, 4·kb, nt·16, expert) = 8 KB, smem row r = 4·cg + j (column group cg of the tile, k32 block
//   j), 128-byte swizzle: word `lane` of row r sits at byte 128·r + 4·(lane ^ 4·(r % 8)). Rows
//   past N / K arrive as zeros.
// - Tokens: bf16 [rows, K] as bytes [rows, 2K]: two boxes of NT rows × 128 bytes (64 K each) at
//   (256·kb, m0) and (256·kb + 128, m0), 128-byte swizzle = what wgmma_desc_sw128 reads for a
//   K-major B; a k16 step is +32 bytes inside a box.
// - Scales: f16 [E, K/G, N] as bytes [E][K/G][2N], unswizzled box (256 B, GB = 128/G group rows)
//   at (256·nt, GB·kb, expert): group h of the block, tile row p at byte 256·h + 2·p.
// - Zeros: qzeros [E, K/G, N/8] as bytes [E][K/G][N/2], unswizzled box (64 B, GB rows) at
//   (64·nt, GB·kb, expert): tile row p's zero point is nibble awq_nib(p % 8) of word p / 8 of row
//   h (byte 64·h + 4·(p / 8)), after the scales (each box 128-byte aligned, as TMA wants).
//   Rows past K/G and columns past N arrive as zeros: scale 0, so they add nothing.
// Why. The scales and zeros used to be loaded by the 128 producer threads (a row each) with plain
// global loads WGS_SCALE_AHEAD blocks ahead, converted and written into the stage: with 8 KB of
// weights per block that lookahead covered ~32 KB per SM per global round trip, and the loads'
// latency paced the pipeline (ncu, 7168×16384 at M = 16: the producer's top stall, 0.40 of the
// copy bandwidth). By TMA they ride in the stage with the weights, as deep as the pipeline; the
// consumers convert them (a few integer ops and two f16 → f32 per group and thread).
// The global row strides must be multiples of 16 bytes: N/2 for the zeros, so N % 32 == 0 (the
// host keeps other N off this entry).
// Producer: thread 0 alone (the other 127 producer threads return after setmaxnreg), so each
// `full` barrier expects one arrival per phase (wgs_init's count); thread 0 waits the stage's
// `empty`, adds the stage's bytes (weights + tokens + scales + zeros; TMA counts a box's
// zero-filled bytes too) to `full`'s transaction count, issues the copies and arrives. One thread
// makes every arrival, each after its wait for the stage's previous use, so no arrival can land
// in a later phase than its own. As in gemm_wgs,
// the weights, scales and zeros of the range's first STAGES blocks (constants) are issued before
// the grid dependency wait (their bytes expected there, the arrival in the loop).
//
// Consumer warpgroup w (232 registers: setmaxnreg, one CTA per SM) owns tile rows [64w, 64w +
// 64); its warp wi rows 16wi + {lane/4, + 8} =
// column groups cg = 8w + 2wi (rows g) and cg + 1 (rows g + 8). The A fragment of m64nNk16 is,
// per warp, mma.sync m16n8k16's A fragment, and `awq_repack` made lane (g, t)'s word of column
// group cg and k32 block j exactly that for rows g (cg) / g + 8 (cg + 1): nibbles (0, 4) = k 2t,
// 2t + 1; (1, 5) = 2t + 8, +9; (2, 6) and (3, 7) the same 16 K on (the stream kernel's mapping,
// docs/perf/quant_gemm.md). So k16 step s = 2j + h takes a = {deq(wlo, 2h), deq(whi, 2h),
// deq(wlo, 2h + 1), deq(whi, 2h + 1)} with deq = awq_deq2 (one LOP3 + one fma.bf16x2 with
// zneg = awq_zneg of the row's zero: the integer q − z, exact in bf16). Per block: 8 LDS.32 of
// words (a warp reads one 128-byte row each: conflict-free), per group one LDS.64 (zero words cg,
// cg + 1: the warp's broadcast) and two LDS.U16 (the rows' scales), 32 awq_deq2, 8 wgmma.
//
// Numerics (as awq_gemm / stream_gemm_awq): each group's 64 or 128 K accumulate into their own f32
// partial (G 64: two partial sets per block), which is scaled by the row's f16 scale (an f32
// FFMA per element) into the total: the weights are never rounded; only the f32 accumulation and
// the bf16 output round (the tests' 2.5e-3).
//
// Pipeline per consumer warpgroup: per block, wait for the next block's stage, issue this one,
// read the next block's words, zero words and scales from shared memory under the MMAs and
// convert the latter (ptxas puts part of that after the wait), wait, promote the partials, free
// the stage, dequantize the next block (ptxas gives it the A registers in flight, so this runs
// after the wait; the other warpgroup's MMAs run meanwhile), and at a segment's end flush
// (wgs_flush; wgs_finish after the range). One block in flight per warpgroup, unlike gemm_wgs's
// two partial sets: a second block would need a second A operand, which ptxas folds onto the
// first (see the loop).
//
// Rows must be pre-gathered (the fused MoE copies the bf16 rows into sorted order first:
// moe_gather_rows). Every mbarrier wait has the watchdog of dsv3/sm90.h.
#pragma once
#include "dsv3/dsv3.h"
#include "gemm_wgs.cuh"
#include "quant_gemm.cuh"

namespace dsv3 {

// As many stages of `bytes` as fit 192 KB, at most 16.
constexpr u32 awq_wgs_stages(u32 bytes) { return 196608 / bytes < 16 ? 196608 / bytes : 16; }

// A stage's TMA-written aux area (WgsLayout's per-stage SC area): the scale box (GB rows of 128
// f16) and the zero box (GB rows of 16 words) after it, rounded up to 128 bytes (TMA's shared
// destinations are 128-byte aligned: the areas start at a multiple of 1024, each 128-aligned).
template <int G> struct AwqWgsAux {
  static constexpr u32 GB = 128 / G;
  static constexpr u32 SC_BOX = GB * 256;
  static constexpr u32 Z_OFF = SC_BOX;
  static constexpr u32 Z_BOX = GB * 64;
  static constexpr u32 AUX_BYTES = (SC_BOX + Z_BOX + 127) / 128 * 128;
};

// Shared memory (src/backend/gemm_wgs.rs `WgsTile::awq_smem_bytes` mirrors BYTES): per stage an 8 KB
// weight box, 2 · NT · 128 bytes of tokens and the aux area (384 bytes at G 128, 640 at G 64); as
// many stages as fit 192 KB, at most 16 (NT 16: 15; NT 64: 7). TX: the bytes a stage's copies
// complete on its `full` barrier.
template <int NT, int G> struct AwqWgsSmem
    : WgsLayout<8192, NT * 256, AwqWgsAux<G>::AUX_BYTES, awq_wgs_stages(8192 + NT * 256 + AwqWgsAux<G>::AUX_BYTES)>,
      AwqWgsAux<G> {
  static constexpr u32 TX = 8192 + NT * 256 + AwqWgsAux<G>::SC_BOX + AwqWgsAux<G>::Z_BOX;
};

#if defined(DSV3_SM90A)
// The flush's policy: no per-row scale (the group scales are in the totals already).
struct WgsAwq {
  static constexpr bool ROW_SCALED = false;
};

template <int NT, int G> using AwqWgsCtx = WgsCtx<NT, AwqWgsSmem<NT, G>>;

// Block kb's constant copies of tile column nt (expert e) into stage `stage`: the weight box and
// the block's group rows of scales (ms) and zero words (mz).
template <int NT, int G>
DSV3_DEV void awq_wgs_load_weights(const AwqWgsCtx<NT, G>& c, const TmaMap& mb, const TmaMap& ms, const TmaMap& mz,
                                   u32 stage, u32 kb, u32 nt, u32 e) {
  using S = AwqWgsSmem<NT, G>;
  static_assert(S::SCALES % 128 == 0 && S::SC_STAGE % 128 == 0 && S::Z_OFF % 128 == 0,
                "TMA's shared destinations are 128-byte aligned");
  const u32 bar = c.full(stage), aux = c.base + S::SCALES + stage * S::SC_STAGE;
  tma_load_4d(c.base + stage * S::STAGE, mb, bar, 0, (i32)(kb * 4), (i32)(nt * 16), (i32)e);
  tma_load_3d(aux, ms, bar, (i32)(nt * 256), (i32)(kb * S::GB), (i32)e);
  tma_load_3d(aux + S::Z_OFF, mz, bar, (i32)(nt * 64), (i32)(kb * S::GB), (i32)e);
}

// Thread 0, before the grid dependency wait (as wgs_prefetch_weights): the constant copies of the
// range's first STAGES blocks, each stage's `full` barrier expecting the whole stage's bytes.
// Unlike wgs_prefetch_weights it does not arrive: the arrival comes once the token boxes are
// issued too (awq_wgs_produce). Returns how many it issued.
template <int NT, int G>
DSV3_DEV u32 awq_wgs_prefetch_weights(const AwqWgsCtx<NT, G>& c, const TmaMap& mb, const TmaMap& ms,
                                      const TmaMap& mz) {
  using S = AwqWgsSmem<NT, G>;
  tma_prefetch(ms);
  tma_prefetch(mz);
  u32 n = 0;
  for (u32 u = c.begin; u < c.end && n < S::STAGES;) {
    const WgsSeg sg = c.seg(u);
    for (u32 kb = sg.kb0; kb < sg.kb1 && n < S::STAGES; ++kb, ++n) {
      mbar_expect_tx(c.full(n), S::TX);
      awq_wgs_load_weights(c, mb, ms, mz, n, kb, sg.nt, c.expert(sg.mt));
    }
    u += sg.kb1 - sg.kb0;
  }
  return n;
}

// Producer thread 0 (the header's protocol): per block, wait for the stage, expect its bytes and
// issue its constant copies (the first `pre` blocks' are on their way already), issue the token
// boxes, arrive for the whole producer warpgroup.
template <int NT, int G>
DSV3_DEV void awq_wgs_produce(const AwqWgsCtx<NT, G>& c, const TmaMap& ma, const TmaMap& mb, const TmaMap& ms,
                              const TmaMap& mz, u32 pre) {
  using S = AwqWgsSmem<NT, G>;
  u32 stage = 0, phase = 0, i = 0;
  for (u32 u = c.begin; u < c.end;) {
    const WgsSeg sg = c.seg(u);
    const u32 expert = c.expert(sg.mt), m0 = sg.mt * NT;
    for (u32 k = sg.kb0; k < sg.kb1; ++k, ++i) {
      mbar_wait(c.empty(stage), phase ^ 1);
      if (i >= pre) {
        mbar_expect_tx(c.full(stage), S::TX);
        awq_wgs_load_weights(c, mb, ms, mz, stage, k, sg.nt, expert);
      }
      const u32 t_dst = c.base + stage * S::STAGE + S::W_TILE;
      tma_load_2d(t_dst, ma, c.full(stage), (i32)(k * 256), (i32)m0);
      tma_load_2d(t_dst + NT * 128, ma, c.full(stage), (i32)(k * 256 + 128), (i32)m0);
      mbar_arrive(c.full(stage));
      c.advance(stage, phase);
    }
    u += sg.kb1 - sg.kb0;
  }
}

// One block's A operand (8 k16 steps × the 4-register fragment) and its rows' group scales
// (rows g / g + 8 of the warp, per group of the block).
template <int G> struct AwqWgsA {
  u32 a[8][4];
  float s_lo[128 / G], s_hi[128 / G];
};

// One block's shared-memory reads of a consumer thread: its 8 words (k32 block j of rows g / g +
// 8) and, converted, its rows' zneg (awq_zneg) and f32 scale per group.
template <int G> struct AwqWgsWords {
  u32 lo[4], hi[4];
  u32 z_lo[128 / G], z_hi[128 / G];
  float s_lo[128 / G], s_hi[128 / G];
};

// Consumer warpgroups (threads 128..383).
template <int NT, int G>
DSV3_DEV void awq_wgs_consume(const AwqWgsCtx<NT, G>& c) {
  using S = AwqWgsSmem<NT, G>;
  constexpr int R = NT / 2, GB = 128 / G, SPG = G / 16;  // accumulators, groups per block, k16 steps per group
  const u32 t = tid() - 128, w = t / 128, wi = (t % 128) / 32, ln = t % 32;
  // This warp's column groups cg (rows g) and cg + 1 (rows g + 8); k32 block j's words of them at
  // rows 4·cg + j (r % 8 = j) and 4·cg + 4 + j (r % 8 = 4 + j) of the swizzled weight box.
  const u32 cg = 8 * w + 2 * wi, row_lo = 16 * (4 * w + wi) + ln / 4;
  const u32 w_lo = cg * 512 + 4 * ln, w_hi = w_lo + 512;
  // Tile rows row_lo (word cg) and row_lo + 8 (word cg + 1) are both nibble awq_nib(g) of their
  // zero word (row % 8 = g; tile column n0 is a multiple of 128).
  const u32 zshift = 4 * awq_nib(ln / 4);
  float part[GB][R], tot[R];

  // The reads of the block at stage s (issued under the previous block's MMAs), zeros and scales
  // converted there too.
  auto load = [&](u32 s, AwqWgsWords<G>& v) {
    const u8* wt = c.smem + s * S::STAGE;
    const u8* ax = c.aux(s);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v.lo[j] = *reinterpret_cast<const u32*>(wt + ((w_lo + 128 * j) ^ (16 * j)));
      v.hi[j] = *reinterpret_cast<const u32*>(wt + ((w_hi + 128 * j) ^ (16 * (4 + j))));
    }
#pragma unroll
    for (int h = 0; h < GB; ++h) {
      const uint2 z = *reinterpret_cast<const uint2*>(ax + S::Z_OFF + 64 * h + 4 * cg);
      const f16* sc = reinterpret_cast<const f16*>(ax + 256 * h);
      v.z_lo[h] = awq_zneg(z.x >> zshift);
      v.z_hi[h] = awq_zneg(z.y >> zshift);
      v.s_lo[h] = to_float(sc[row_lo]);
      v.s_hi[h] = to_float(sc[row_lo + 8]);
    }
  };
  // Its A operand: k16 step 2j + k from words j (awq_deq2 with the row's zneg), and its scales.
  auto expand = [&](const AwqWgsWords<G>& v, AwqWgsA<G>& x) {
#pragma unroll
    for (int h = 0; h < GB; ++h) {
      x.s_lo[h] = v.s_lo[h];
      x.s_hi[h] = v.s_hi[h];
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int h = j * 32 / G;
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        x.a[2 * j + k][0] = awq_deq2(v.lo[j], 2 * k, v.z_lo[h]);
        x.a[2 * j + k][1] = awq_deq2(v.hi[j], 2 * k, v.z_hi[h]);
        x.a[2 * j + k][2] = awq_deq2(v.lo[j], 2 * k + 1, v.z_lo[h]);
        x.a[2 * j + k][3] = awq_deq2(v.hi[j], 2 * k + 1, v.z_hi[h]);
      }
    }
  };
  // The block at stage s from x: 8 k16 steps, group h's into part[h] (fresh at its first step).
  auto issue = [&](u32 s, const AwqWgsA<G>& x) {
    const u32 tk = c.base + s * S::STAGE + S::W_TILE;
    const u64 db0 = wgmma_desc_sw128(tk), db1 = wgmma_desc_sw128(tk + NT * 128);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const u64 db = (k < 4 ? db0 : db1) + 2 * (k % 4);
      if (k % SPG == 0) {
        wgmma_bf16_rs_n<NT, false>(part[k / SPG], x.a[k], db);
      } else {
        wgmma_bf16_rs_n<NT, true>(part[k / SPG], x.a[k], db);
      }
    }
    wgmma_commit();
#pragma unroll
    for (int h = 0; h < GB; ++h) wgmma_pin(part[h]);
  };
  // x's block has retired (wgmma_wait): its partials scaled into the totals (fragment i = 4j +
  // 2r + e is row g + 8r).
  auto promote = [&](const AwqWgsA<G>& x) {
#pragma unroll
    for (int h = 0; h < GB; ++h) {
      wgmma_pin(part[h]);
#pragma unroll
      for (int i = 0; i < R; ++i) tot[i] = fmaf(part[h][i], (i / 2) % 2 ? x.s_hi[h] : x.s_lo[h], tot[i]);
    }
  };
  auto zero_tot = [&]() {
#pragma unroll
    for (int i = 0; i < R; ++i) tot[i] = 0.0f;
  };

  if (c.begin >= c.end) return;
  AwqWgsA<G> x;
  AwqWgsWords<G> v;
  WgsSeg pend0, pend1;  // split-K state (wgs_flush / wgs_finish)
  u32 npend = 0, count0 = 0, count1 = 0;
  u32 stage = 0, phase = 0;
  WgsSeg sg = c.seg(c.begin);
  u32 kb = sg.kb0;
  zero_tot();
  mbar_wait(c.full(stage), phase);
  load(stage, v);
  expand(v, x);
  // Per block u (dequantized in x): wait for block u + 1's stage, issue u, read u + 1's words
  // under u's MMAs, retire u, dequantize u + 1 into x, flush at a segment's end. Between the
  // issue and the wait the code is straight-line (no branch, no barrier loop): at a control-flow
  // join with a wgmma in flight ptxas waits for it (C7517). ptxas also gives the next A operand
  // the registers of the one in flight whatever the source says (a second set, even with a real
  // use of the first after the fill, came out as the fill after the wait), so the dequantization
  // runs after the wait: the other warpgroup's MMAs fill the tensor pipe then.
  for (u32 u = c.begin;; ++u) {
    u32 ns = stage, nph = phase;
    c.advance(ns, nph);
    const bool more = u + 1 < c.end;
    if (more) mbar_wait(c.full(ns), nph);
    issue(stage, x);
    load(more ? ns : stage, v);  // the last block: a harmless re-read of its own stage
    wgmma_wait<0>();
    promote(x);
    __syncwarp();
    if (ln == 0) mbar_arrive(c.empty(stage));
    expand(v, x);
    if (kb + 1 == sg.kb1) {
      wgs_flush<WgsAwq, NT>(c, sg, t, tot, pend0, pend1, npend, count0, count1);
      zero_tot();
      if (!more) break;
      sg = c.seg(u + 1);
      kb = sg.kb0;
    } else {
      ++kb;
    }
    stage = ns;
    phase = nph;
  }
  wgs_finish<WgsAwq, NT>(c, t, pend0, pend1, npend, count0, count1);
}

template <int G, int NT>
DSV3_DEV void awq_wgs_gemm(const BlockGemmArgs& g, const TmaMap& ma, const TmaMap& mb, const TmaMap& ms,
                           const TmaMap& mz) {
  AwqWgsCtx<NT, G> c;
  const u32 pre =
      wgs_init(c, g, ma, mb, 1, [&](const AwqWgsCtx<NT, G>& cc) { return awq_wgs_prefetch_weights(cc, mb, ms, mz); });
  // One CTA per SM (the entries' launch bounds pin 168 registers, which setmaxnreg needs): the
  // consumers' two partial sets (G 64, NT 64), total, A operand and words need more than 168.
  if (tid() < 128) {
    regs_dec<40>();
    if (tid() == 0) awq_wgs_produce<NT, G>(c, ma, mb, ms, mz, pre);  // the producer is thread 0 alone
  } else {
    regs_inc<232>();
    awq_wgs_consume<NT, G>(c);
  }
}
#endif  // DSV3_SM90A

// Entry: grid (at most one CTA per SM, at most the launch's 128-K blocks), block 384, dynamic
// smem AwqWgsSmem<NT, G>::BYTES. tmap_a: 2-D byte map of the (pre-sorted) bf16 rows [rows, 2K],
// box NT × 128 bytes; tmap_b: 4-D byte map of the repacked qweight [E, N/8, K/32, 128 bytes], box
// (128, 4, 16, 1); tmap_scales: 3-D byte map of the f16 scales [E, K/G, 2N bytes], box (256, 128/G,
// 1); tmap_zeros: 3-D byte map of qzeros [E, K/G, N/2 bytes], box (64, 128/G, 1); both unswizzled.
// ws / counters: the split-K workspace [2 · grid, NT · 128] (wgs_slot; any contents) and counters
// [m tiles · n tiles], zero on entry and left zero. G ∈ {64, 128}, K % G == 0, N % 32 == 0.
template <int G, int NT>
DSV3_DEV void awq_gemm_wgs(bf16* out, const TmaMap& tmap_a, const TmaMap& tmap_b, const TmaMap& tmap_scales,
                           const TmaMap& tmap_zeros, float* ws, u32* counters, const i32* tile_expert,
                           const i32* num_tiles, u32 M, u32 N, u32 K) {
#if defined(DSV3_SM90A)
  awq_wgs_gemm<G, NT>(bg_args(out, nullptr, nullptr, nullptr, nullptr, ws, counters, nullptr, tile_expert, num_tiles,
                              M, N, K, 1, 1),
                      tmap_a, tmap_b, tmap_scales, tmap_zeros);
#else
  grid_dependency_sync();
  trap();
#endif
}

}  // namespace dsv3
