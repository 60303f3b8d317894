// Weight-streaming ("swap AB") GEMM for small M: the decode GEMM of FP8 block-scaled, INT8
// (block / channel) and AWQ W4A16 weights, dense and grouped by expert.
//
// It computes exactly what fp8_gemm / int8_gemm / awq_gemm compute (kernels/block_gemm.cuh,
// kernels/quant_gemm.cuh): the same arguments, scales (FP8 and block INT8: each 128-wide K block
// accumulated by the MMAs, promoted with s_a[row, kb]·s_w[n/128, kb]; channel INT8: s32 over the
// split's K, then s_a[row]·s_w[n]; AWQ: (q − z) exact in bf16, the f16 group scale on each 64-wide
// K tile's f32 partial), grouped rows (moe_align_tiles: tile t belongs to expert tile_expert[t],
// row r reads a-row row_ids[r] / a_row_div) and split-K workspace (bg_last_split /
// bg_finish_split), with the grid (ceil(N/128), M tiles, splits) of BM token rows. Only the way the
// weights move differs.
//
// At M ≤ 64 a weight byte carries few FLOPs: the GEMM is a stream of the weights, so they are the
// MMA's 16-row A operand and the few tokens its 8-column B operand (n = 8):
//   - CTA: 8 warps × 16 weight rows = 128 rows (one weight scale block), BM token rows (8 or 64:
//     TG = BM / 8 token groups, those past the tile's last valid row skipped at run time), K in
//     tiles of 128 activation bytes per token (128 8-bit codes, one scale block; or 64 bf16
//     values) over the split's range;
//   - weights: global → a per-warp cp.async ring in shared memory (stream_gemm_ring, below), PF
//     K tiles really in flight per warp, one cp.async group per K tile and a counted wait; how a
//     K tile is copied, laid out and multiplied is the weight streamer's (Stream8: 16 rows × 128
//     8-bit codes; StreamAwq: 16 columns × 64 nibbles with zero points and scales);
//   - activations (and the 8-bit ones' scales): CH K tiles of the CTA's token rows at a time, in
//     the same cp.async groups, NA buffers, read by every warp;
//   - each warp's A fragments of a K tile serve every token group.
// D of every MMA (m16n8, f32 / s32): c0 = (row g, token 2t), c1 = (row g, token 2t+1), c2 / c3 =
// the same for row g + 8 (lane: g = lane / 4, t = lane % 4): out is written transposed,
// out[token][row].
//
// HIP, and any other target without the NVIDIA MMAs: the entries run the tiled GEMMs' portable
// paths (block_gemm_generic, awq_gemm_generic) with BM-row tiles, so every variant computes the
// same function.
#pragma once
#include "dsv3/dsv3.h"
#include "dsv3/mma_sm80.h"
#include "block_gemm.cuh"
#include "quant_gemm.cuh"

namespace dsv3 {

constexpr int SG_THREADS = 256;  // 8 warps × 16 weight rows = BG_BN
constexpr int SG_TILE = 128;     // activation bytes per token per K tile
static_assert(SG_THREADS / 32 * 16 == BG_BN, "a CTA covers one 128-row weight scale block");

#if defined(DSV3_CUDA)
// ---- The ring (every format) ------------------------------------------------------------------
//
// Why shared memory (docs/perf/quant_gemm.md "AWQ decode: bytes in flight and issue slots",
// docs/perf/fp8_gemm.md "Streaming kernel: bytes really in flight"): a ring of K tiles in
// registers is not in flight at once — ptxas gives every load of the ring one scoreboard and waits
// for all of them before the first use of the oldest tile, so a warp had one K tile per DRAM round
// trip. cp.async groups retire in order and cp.async.wait_group counts them (DEPBAR.LE SB0, n), so
// here PF K tiles per warp are really in flight:
//   - each warp streams its 16 weight rows through a private ring of NS = PF + 1 stages of WST
//     bytes (the weight streamer W's copies and layout);
//   - the CTA's token rows go through NA buffers of CH K tiles (copies of GR bytes: 4, transposed
//     (AWQ), or 16, in place (8-bit); rows ROW = CH·128 + PAD bytes apart) and, for the block-scaled
//     8-bit formats, their f32 scales [CH][BM];
//   - one cp.async group per K tile (the tile's weights, and at a chunk's first tile the chunk),
//     committed PF tiles ahead; wait_group<PF − 1> then means "tile it has landed". A barrier at
//     each chunk's first tile (the activations are shared) and __syncwarp otherwise (a warp reads
//     what its other lanes copied). NA = 1 + ⌈PF / CH⌉ buffers: a chunk is issued PF tiles before
//     its first tile, after the barrier that retires the chunk that buffer held.
// W::Ring<BM> gives PF, CH, GR, PAD, ASCL (f32 activation scales staged), SCL_ROOM (their room
// kept in each buffer) and WST.
template <int BM_, class W> struct SgRing {
  using P = typename W::template Ring<BM_>;
  static constexpr int BM = BM_;
  static constexpr int TG = BM / 8;
  static constexpr int PF = P::PF;                   // K tiles in flight per warp past the one multiplied
  static constexpr int NS = PF + 1;                  // weight stages per warp
  static constexpr int CH = P::CH;                   // K tiles per activation chunk
  static constexpr int NA = 1 + (PF + CH - 1) / CH;  // activation chunk buffers
  static constexpr int GR = P::GR, PIECES = SG_TILE / GR;
  static constexpr int ROW = CH * SG_TILE + P::PAD;
  static constexpr int ACT = BM * ROW;
  static constexpr bool ASCL = P::ASCL;                     // s_a [CH][BM] staged after the rows
  static constexpr int SCL = P::SCL_ROOM ? CH * BM * 4 : 0;  // (room: 8-bit, channel INT8 too)
  static constexpr int BUF = ACT + SCL;
  static constexpr int WST = P::WST;
  static constexpr int WOFF = NA * BUF;
  static constexpr int SMEM = WOFF + (SG_THREADS / 32) * NS * WST;  // dynamic shared memory (CUDA)
  static constexpr int ROWS_PER_PASS = SG_THREADS / (CH * PIECES);  // token rows one staging pass covers
  // Buffer of a chunk static in the loop unrolled by NS (chunk of its first tile ≡ 0 mod NA).
  static constexpr bool STATIC_A = NS % (CH * NA) == 0;
  static_assert(BM % 8 == 0 && NS % CH == 0 && SG_THREADS % (CH * PIECES) == 0 && BM % ROWS_PER_PASS == 0, "staging");
  static_assert(!ASCL || (SCL > 0 && BM * CH <= SG_THREADS), "one activation scale per thread");
  static_assert(BUF % 16 == 0 && WST % 16 == 0 && (GR == 4 || GR == 16), "cp.async alignment");
  static_assert(SMEM <= 99 * 1024, "fits one CTA of sm_89 (99 KB)");
};

// A value the compiler must keep as computed (not rematerialized or sunk into the loop).
template <class T> DSV3_DEV T sg_keep(T x) {
  if constexpr (sizeof(T) == 8) {
    asm volatile("" : "+l"(x));
  } else {
    asm volatile("" : "+r"(x));
  }
  return x;
}

// What a weight streamer needs of its CTA (built by stream_gemm_ring).
struct SgCta {
  u32 expert, nt_idx, n0, kt0, nk, sk, kend;  // kend: K bytes (= activation bytes) past the split
  u32 warp, ln;
};

// The CTA's result: acc[j][e] = token m0 + 8j + 2t + (e & 1), row row_lo + 8·(e >> 1) (t = lane % 4).
// One split: bf16 out; several: f32 atomics into the workspace (token groups below ntg, the ones
// holding rows), the last split of the tile converts and clears it.
template <int BM>
DSV3_DEV void sg_store(const BlockGemmArgs& g, const float (&acc)[BM / 8][4], u32 ntg, u32 mt_idx, u32 nt_idx, u32 m0,
                       u32 m_end, u32 n0, u32 row_lo, bool wactive) {
  constexpr int TG = BM / 8;
  const u32 N = g.N, tig = lane() % 4;
  auto tok_of = [&](int j, int e) { return (u32)(8 * j) + 2 * tig + (u32)(e & 1); };
  if (g.splits == 1) {
    if (!wactive) return;
#pragma unroll
    for (int j = 0; j < TG; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const u32 r = m0 + tok_of(j, e), n = row_lo + 8 * (e >> 1);
        if (r < m_end && n < N) g.out[(u64)r * N + n] = f32_to_bf16(acc[j][e]);
      }
    return;
  }
  if (wactive) {
#pragma unroll
    for (int j = 0; j < TG; ++j) {
      if ((u32)j >= ntg) break;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const u32 r = m0 + tok_of(j, e), n = row_lo + 8 * (e >> 1);
        if (r < m_end && n < N) atomic_add(g.ws + (u64)r * N + n, acc[j][e]);
      }
    }
  }
  const u32 tile_id = mt_idx * gridDim.x + nt_idx;
  if (bg_last_split(g, tile_id)) bg_finish_split<BM>(g, tile_id, m0, m_end, n0);
}

// The CTA's (M tile, N tile, split) with M tiles fastest; false when the M tile does not run.
DSV3_DEV bool sg_tile(const BlockGemmArgs& g, int BM, u32& mt_idx, u32& nt_idx, u32& split, u32& expert, u32& m_end) {
  const u32 X = gridDim.x, Y = gridDim.y;
  const u32 lin = blockIdx.x + X * (blockIdx.y + Y * blockIdx.z);
  mt_idx = lin % Y;
  nt_idx = (lin / Y) % X;
  split = lin / (X * Y);
  return bg_tile(g, mt_idx, BM, expert, m_end);
}

// The kernel, over weight streamer W: K tiles kt0.. of this CTA's split, M tile and N tile from the
// block index (M tiles vary fastest: the CTAs that share weights run together, the second reads
// them from L2). W provides
//   Acc, Extra, Ring<BM>, k_tiles(K), row_bytes(K) (activation bytes per token row);
//   W(g, x, cta): this lane's loop-invariant copy sources / destinations and read offsets;
//   issue(dst, j): this lane's copies of local K tile j into the warp's stage at shared address
//     dst (zero-sized past the split's end);
//   step<C>(acc, whole, st, act, sa, ntg): the MMAs of the staged tile st (generic pointer) with
//     token tile act (row 0 of the chunk buffer, at the tile) and, with ASCL, its s_a (sa[r] of
//     row r);
//   finish(acc, whole, s_arow, row_lo, N): after the K loop (channel INT8 scales).
template <int BM, class W>
DSV3_DEV void stream_gemm_ring(const BlockGemmArgs& g, const typename W::Extra& x) {
  using C = SgRing<BM, W>;
  using Acc = typename W::Acc;
  constexpr int TG = C::TG, PF = C::PF, NS = C::NS, CH = C::CH, NA = C::NA, THREADS = SG_THREADS;
  extern __shared__ __attribute__((aligned(16))) u8 sg_smem[];
  __shared__ i32 s_arow[BM];

  u32 mt_idx, nt_idx, split, expert, m_end;
  if (!sg_tile(g, BM, mt_idx, nt_idx, split, expert, m_end)) return;
  const u32 N = g.N, sk = W::k_tiles(g.K), a_row_bytes = W::row_bytes(g.K);
  const u32 m0 = mt_idx * BM, n0 = nt_idx * BG_BN;
  const u32 per = (sk + g.splits - 1) / g.splits;
  const u32 kt0 = split * per, kt1 = min(sk, kt0 + per);
  const u32 nk = kt1 > kt0 ? kt1 - kt0 : 0;
  const u32 kend = min(a_row_bytes, kt1 * SG_TILE);  // bytes past it are zero-filled (weights too)

  const u32 t = tid(), warp = t / 32, ln = t % 32;
  const u32 row_lo = n0 + 16 * warp + ln / 4;
  const bool wactive = n0 + 16 * warp < N;
  for (u32 i = t; i < (u32)BM; i += THREADS) s_arow[i] = (i32)bg_a_row(g, m0 + i, m_end);
  __syncthreads();
  // Valid rows of a tile are a prefix (dense: below M; grouped: the expert's rows before its
  // padding): token groups past the last one are neither staged nor multiplied; rows of the
  // others past it are staged as zeros.
  u32 ntg = 0;
#pragma unroll
  for (int j = 0; j < TG; ++j)
    if (s_arow[8 * j] >= 0) ntg = j + 1;
  const u32 srows = 8 * ntg;

  const u32 smem0 = smem_u32(sg_smem);
  const u32 wst_o = sg_keep(C::WOFF + warp * (NS * C::WST));  // this warp's stages
  const W w(g, x, SgCta{expert, nt_idx, n0, kt0, nk, sk, kend, warp, ln});

  // Activation chunk c (K tiles kt0 + c·CH ..) into buffer abuf: per token row and K tile, GR-byte
  // piece i at 4·(8·(i % 4) + i / 4) (GR 4: lane t's eight B words of the tile are words 8t ..
  // 8t + 7) or 16·i (GR 16). Rows past srows are skipped (a run-time trip count), rows without a
  // token and K past the split are zero-filled.
  const u32 st_pi = t % C::PIECES, st_tl = (t / C::PIECES) % CH, st_r0 = t / (CH * C::PIECES);
  const u32 st_pos = C::GR == 4 ? 4 * (8 * (st_pi % 4) + st_pi / 4) : C::GR * st_pi;
  const u32 a_dst = sg_keep(smem0 + st_tl * SG_TILE + st_pos + st_r0 * C::ROW);
  const u32 a_k = sg_keep((kt0 + st_tl) * SG_TILE + C::GR * st_pi);
  auto stage = [&](u32 c, u32 abuf) {
    const u32 k = a_k + c * (CH * SG_TILE);
    const bool kin = k < kend;
    u32 dst = a_dst + abuf * C::BUF;
#pragma unroll 1
    for (u32 r = st_r0; r < srows; r += C::ROWS_PER_PASS, dst += C::ROWS_PER_PASS * C::ROW) {
      const i32 ar = s_arow[r];
      const bool v = kin && ar >= 0;
      const u8* src = g.a + (v ? (u64)(u32)ar * a_row_bytes + k : 0);
      if constexpr (C::GR == 4) {
        cp_async_4_n(dst, src, v ? 4u : 0u);
      } else {
        cp_async_16_n(dst, src, v ? 16u : 0u);
      }
    }
    if constexpr (C::ASCL) {
      if (t < (u32)(BM * CH)) {
        const u32 r = t % BM, kt = kt0 + c * CH + t / BM;
        const i32 ar = s_arow[r];
        const bool v = ar >= 0 && kt < kt1;
        cp_async_4(smem0 + abuf * C::BUF + C::ACT + 4 * t, v ? (const void*)(g.a_scales + (u64)ar * sk + kt) : (const void*)g.a_scales, v);
      }
    }
  };
  // Everything local K tile j needs, into weight slot `slot` (and, at a chunk's first tile, its
  // chunk into buffer abuf): one cp.async group.
  auto issue = [&](u32 j, int slot, bool chunk_start, u32 abuf) {
    w.issue(smem0 + wst_o + slot * C::WST, j);
    if (chunk_start) stage(j / CH, abuf);
    cp_async_commit();
  };

  float acc[TG][4];
  Acc whole[TG][4];  // INT8 channel mode: the split's whole K in s32
#pragma unroll
  for (int j = 0; j < TG; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      acc[j][e] = 0.0f;
      whole[j][e] = Acc(0);
    }

  // The MMAs of the K tile in weight slot `slot`, tile tl of the chunk in buffer abuf.
  auto step = [&](int slot, u32 abuf, int tl) {
    const u8* buf = sg_smem + abuf * C::BUF;
    w.template step<C>(acc, whole, sg_smem + wst_o + slot * C::WST, buf + tl * SG_TILE,
                       reinterpret_cast<const float*>(buf + C::ACT) + tl * BM, ntg);
  };

#pragma unroll
  for (int p = 0; p < PF; ++p) issue(p, p, p % CH == 0, (p / CH) % NA);
  for (u32 it0 = 0; it0 < nk; it0 += NS) {
    const u32 c0 = it0 / CH;  // chunk of tile it0 (it0 % CH == 0)
#pragma unroll
    for (int s = 0; s < NS; ++s) {
      const u32 it = it0 + s;
      if (it >= nk) break;
      // Tile it has landed (this thread's copies); the barrier / warp sync makes every lane's
      // copies visible and retires slot (it − 1) % NS (and, at a chunk start, the chunk before).
      cp_async_wait<PF - 1>();
      if (s % CH == 0) {
        __syncthreads();
      } else {
        __syncwarp();
      }
      const int js = s + PF;
      issue(it + PF, js % NS, js % CH == 0, C::STATIC_A ? (u32)((js / CH) % NA) : (c0 + js / CH) % NA);
      if (wactive) step(s, C::STATIC_A ? (u32)((s / CH) % NA) : (c0 + s / CH) % NA, s % CH);
    }
  }
  cp_async_wait<0>();
  w.finish(acc, whole, s_arow, row_lo, N);
  sg_store<BM>(g, acc, ntg, mt_idx, nt_idx, m0, m_end, n0, row_lo, wactive);
}

// ---- FP8 / INT8: m16n8k32 on 8-bit codes (Op: Fp8MmaOp, Int8MmaOp<>) ----------------------------
//
// K tile = 128 codes. For half h ∈ {0, 1}: lo[h] = 16 bytes of weight row g at k = 128·kt + 64·h
// + 16·t, hi[h] the same bytes of row g + 8; a token group's bv[h] = the same 16 bytes of token
// g's activations. MMA (h, q), q ∈ {0, 1}: a = {lo[h][2q], hi[h][2q], lo[h][2q+1], hi[h][2q+1]},
// b = {bv[h][2q], bv[h][2q+1]}. The PTX fragments put into a0 / a2 (row g) and b0 / b1 (column g)
// the k slots 4t..4t+3 and 16+4t..16+4t+3; here slot 4t + i holds k = 64h + 16t + 8q + i and slot
// 16 + 4t + i holds k = 64h + 16t + 8q + 4 + i. Over t and i that is bytes 8q..8q+7 of each lane's
// 16, a permutation of the step's 32 k, the same for A and B, so each MMA sums the right products
// (and the four MMAs of a K tile cover its 128 k once).
//
// A warp's stage (WST = 2064 bytes): its 16 rows × 128 bytes of the K tile, row r at 128·r, its
// 16-byte piece c at 16·(c ^ 4·(r & 1)) (a quarter-warp's reads — rows 2i, 2i + 1, pieces t or
// 4 + t — then hit 32 distinct banks), and at 2048 the tile's s_w (block modes). One 16-byte
// cp.async per lane and quarter of the tile (row ln / 8 + 4i, piece ln % 8: 128 contiguous bytes
// per row, whole sectors), zero-filled past N and past the split; s_w from lane 0 (the others
// zero-fill the spare word at 2052). Activations: 16-byte pieces in place, rows CH·128 + 64 bytes
// apart (a quarter-warp's B reads: two token rows 64 bytes apart in banks).
template <class Op> struct Stream8 {
  using Acc = typename Op::Acc;
  struct Extra {};
  template <int BM> struct Ring {
    static constexpr int PF = BM <= 8 ? 3 : 2;  // 2 KB per warp and K tile: 6 / 4 KB in flight per warp
    static constexpr int CH = BM <= 8 ? 4 : 1;
    static constexpr int GR = 16, PAD = 64;
    static constexpr bool ASCL = Op::PER_TILE, SCL_ROOM = true;
    static constexpr int WST = 2048 + 16;
  };
  static DSV3_DEV u32 k_tiles(u32 K) { return (K + BG_BK - 1) / BG_BK; }
  static DSV3_DEV u32 row_bytes(u32 K) { return K; }

  const u8* w_src;       // this lane's piece of row ln / 8 at local K tile 0
  u64 w_rows4;           // 4 rows further: 4·K bytes
  const float* b_scale;  // block: this CTA's s_w at local K tile 0; channel: [N] of the expert
  const float* a_scales_;  // channel: s_a [rows]
  u32 w_dst, w_k, kend;  // the piece's stage offset, its k at local K tile 0, the split's end
  u32 w_bytes[4];        // 16 for rows below N, else 0
  u32 sw_dst, sw_bytes, nk;
  u32 a_o, b_o;          // read offsets: A (row g, piece t, swizzled) in a stage, B in a chunk tile

  DSV3_DEV Stream8(const BlockGemmArgs& g, Extra, const SgCta& c) {
    const u32 N = g.N, K = g.K, sn = (N + BG_BN - 1) / BG_BN, ln = c.ln;
    const u32 r0 = c.n0 + 16 * c.warp + ln / 8, pc = ln % 8;
#pragma unroll
    for (int i = 0; i < 4; ++i) w_bytes[i] = sg_keep(r0 + 4 * i < N ? 16u : 0u);
    w_src = sg_keep(g.b + (u64)c.expert * N * K + (r0 < N ? (u64)r0 * K : 0) + (u64)c.kt0 * BG_BK + 16 * pc);
    w_rows4 = sg_keep((u64)4 * K);
    w_dst = sg_keep((ln / 8) * 128 + 16 * (pc ^ (4 * ((ln / 8) & 1))));
    w_k = sg_keep(c.kt0 * BG_BK + 16 * pc);
    kend = c.kend;
    nk = c.nk;
    b_scale = Op::PER_TILE ? g.b_scale + ((u64)c.expert * sn + c.nt_idx) * c.sk + c.kt0 : g.b_scale + (u64)c.expert * N;
    sw_dst = sg_keep(ln == 0 ? 2048u : 2052u);
    a_scales_ = g.a_scales;
    sw_bytes = sg_keep(ln == 0 ? 4u : 0u);
    const u32 grp = ln / 4, tig = ln % 4;
    a_o = sg_keep(grp * 128 + 16 * (tig ^ (4 * (grp & 1))));
    b_o = 16 * tig;
  }
  DSV3_DEV void issue(u32 dst, u32 j) const {
    const bool kin = w_k + j * BG_BK < kend;  // K % 16 == 0: a 16-byte piece is all in or all out
    const u8* p = w_src + (u64)j * BG_BK;
#pragma unroll
    for (int i = 0; i < 4; ++i) cp_async_16_n(dst + w_dst + 512 * i, p + i * w_rows4, kin ? w_bytes[i] : 0u);
    if constexpr (Op::PER_TILE) cp_async_4_n(dst + sw_dst, b_scale + j, j < nk ? sw_bytes : 0u);
  }
  template <class C>
  DSV3_DEV void step(float (&acc)[C::TG][4], Acc (&whole)[C::TG][4], const u8* st, const u8* act, const float* sa,
                     u32 ntg) const {
    // A: rows g (lo) and g + 8 (hi, 1024 bytes on), halves h = 0 (piece t) and 1 (piece 4 + t:
    // offset ^ 64); the MMA operand is four consecutive registers, rows g and g + 8 interleaved.
    const u8* wa = st + a_o;
    const Vec<u32, 4> lo[2] = {load_vec<u32, 4>(reinterpret_cast<const u32*>(wa)),
                               load_vec<u32, 4>(reinterpret_cast<const u32*>(st + (a_o ^ 64)))};
    const Vec<u32, 4> hi[2] = {load_vec<u32, 4>(reinterpret_cast<const u32*>(wa + 1024)),
                               load_vec<u32, 4>(reinterpret_cast<const u32*>(st + (a_o ^ 64) + 1024))};
    u32 a[2][2][4];
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        a[h][q][0] = lo[h].v[2 * q];
        a[h][q][1] = hi[h].v[2 * q];
        a[h][q][2] = lo[h].v[2 * q + 1];
        a[h][q][3] = hi[h].v[2 * q + 1];
      }
    const float sb = Op::PER_TILE ? *reinterpret_cast<const float*>(st + 2048) * Op::FIX : 0.0f;
    const u32 grp = lane() / 4, tig = lane() % 4;
#pragma unroll
    for (int j = 0; j < C::TG; ++j) {
      if ((u32)j >= ntg) break;
      const u8* brow = act + (8 * j + grp) * C::ROW + b_o;
      const Vec<u32, 4> bv[2] = {load_vec<u32, 4>(reinterpret_cast<const u32*>(brow)),
                                 load_vec<u32, 4>(reinterpret_cast<const u32*>(brow + 64))};
      Acc part[4] = {Acc(0), Acc(0), Acc(0), Acc(0)};
      Acc(&d)[4] = Op::PER_TILE ? part : whole[j];
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const u32 b[2] = {bv[h].v[2 * q], bv[h].v[2 * q + 1]};
          Op::mma(d, a[h][q], b);
        }
      if constexpr (Op::PER_TILE) {
        // Promotion: acc += part · s_a · s_w.
        const Vec<float, 2> s2 = load_vec<float, 2>(sa + 8 * j + 2 * tig);
        const float s0 = s2.v[0] * sb, s1 = s2.v[1] * sb;
        acc[j][0] += (float)part[0] * s0;
        acc[j][1] += (float)part[1] * s1;
        acc[j][2] += (float)part[2] * s0;
        acc[j][3] += (float)part[3] * s1;
      }
    }
  }
  // After the K loop, channel mode: acc = whole · s_a[a-row of the token] · s_w[row].
  template <int TG>
  DSV3_DEV void finish(float (&acc)[TG][4], const Acc (&whole)[TG][4], const i32* s_arow, u32 row_lo, u32 N) const {
    if constexpr (!Op::PER_TILE) {
      const u32 tig = lane() % 4;
#pragma unroll
      for (int j = 0; j < TG; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const i32 ar = s_arow[8 * j + 2 * tig + (e & 1)];
          const u32 n = row_lo + 8 * (e >> 1);
          const float sa = ar >= 0 ? a_scales_[ar] : 0.0f, sb = n < N ? b_scale[n] * Op::FIX : 0.0f;
          acc[j][e] = (float)whole[j][e] * (sa * sb);
        }
    }
  }
};

// ---- AWQ W4A16: m16n8k16 bf16 on dequantized nibbles ------------------------------------------
//
// K tile = 64 values (128 bytes of bf16 activations per token; one quantization group or half of
// one). The weights are awq_repack's words ([E][N/8][K/32][32 lanes] u32): the word of lane (g, t)
// for column group n8 and 32-row block kb holds column n8·8 + g at k = 32·kb + {2t, 2t+8, 16+2t,
// 24+2t} (nibbles 0..3) and k + 1 of each (nibbles 4..7). With rows g ↔ column group
// n8 = (n0 + 16·warp) / 8 and rows g + 8 ↔ n8 + 1, a lane's words of n8 and n8 + 1 are exactly its
// m16n8k16 A fragments: for K block kb and half kk, a = {deq(lo[kb], 2kk), deq(hi[kb], 2kk),
// deq(lo[kb], 2kk+1), deq(hi[kb], 2kk+1)} (deq(w, h): nibbles h, h + 4 as bf16x2 of q − z,
// awq_deq2), and b = token g's bf16 pairs at k = 32·kb + 16·kk + 2t and + 8 (the standard B
// fragment). The f16 scales of rows g and g + 8 multiply each K tile's f32 partial.
//
// A warp's stage (WST = 560 bytes): the K tile's four 128-byte lines (one 16-byte cp.async per
// lane: segment 2c + b = column group n8 + c, block 2kt + b) at [0, 512), its group's two qzeros
// words at [512, 520) and 16 f16 scales at [520, 552) (lanes 0..9, 4 bytes each; lanes 10..31
// zero-fill a spare word: no branch); rows past N are zero-filled (dequantize to 0, scale 0).
// Activations: 4-byte pieces transposed (lane t's eight B words of a tile contiguous: two 16-byte
// shared reads per token group), rows CH·128 + 16 bytes apart (≡ 16 mod 128: conflict-free).
struct StreamAwq {
  using Acc = float;
  struct Extra {
    const u32* qzeros;
    const f16* scales;
    u32 G;
  };
  template <int BM> struct Ring {
    static constexpr int PF = BM <= 8 ? 7 : 5;
    static constexpr int CH = BM <= 8 ? 8 : 1;
    static constexpr int GR = 4, PAD = 16;
    static constexpr bool ASCL = false, SCL_ROOM = false;
    static constexpr int WST = 560;
  };
  static DSV3_DEV u32 k_tiles(u32 K) { return K / AWQ_BK; }
  static DSV3_DEV u32 row_bytes(u32 K) { return 2 * K; }

  const u32* w_src;  // this lane's 16 bytes at local K tile 0
  const u8* zs_src;  // its zero-point / scale word at group 0
  u32 w_bytes, zs_bytes, zs_stride, w_dst, zs_dst, gsh, kt0, nk;
  u32 zshift, wln_o, sc_o, b_o;  // read offsets

  DSV3_DEV StreamAwq(const BlockGemmArgs& g, const Extra& x, const SgCta& c) {
    const u32 N = g.N, K = g.K, N8 = N / 8, K32 = K / 32, ln = c.ln, grp = ln / 4, tig = ln % 4;
    // This lane's weight copy: 16 bytes of segment ln / 8 (column group n8w + ln / 16, block
    // 2·kt + (ln / 8) % 2), zero-filled past N. All lanes of inactive warps copy nothing real.
    const u32 n8w = (c.n0 + 16 * c.warp) / 8, n8 = n8w + ln / 16;
    w_bytes = sg_keep(n8 < N8 ? 16u : 0u);
    w_src = sg_keep(reinterpret_cast<const u32*>(g.b) + (u64)c.expert * N8 * K32 * 32 +
                    (n8 < N8 ? (u64)n8 * K32 * 32 : 0) + ((ln / 8) % 2) * 32 + (ln % 8) * 4 + (u64)c.kt0 * 64);
    // Its zero-point / scale copy (lanes 0..9): the qzeros word of n8w + ln (lanes 0, 1), the f16
    // pair of columns n0 + 16·warp + 2·(ln − 2) (lanes 2..9); one group row further per group.
    gsh = x.G == 128 ? 1u : 0u;  // K tile → group (G ∈ {64, 128})
    const u32 col = c.n0 + 16 * c.warp + 2 * (ln - 2);
    const bool zs_ok = ln < 2 ? n8w + ln < N8 : (ln < 10 && col < N);
    zs_bytes = sg_keep(zs_ok ? 4u : 0u);
    zs_stride = sg_keep(ln < 2 ? 4 * N8 : 2 * N);
    zs_src = sg_keep(!zs_ok ? g.b
                     : ln < 2 ? reinterpret_cast<const u8*>(x.qzeros + (u64)c.expert * (K / x.G) * N8 + n8w + ln)
                              : reinterpret_cast<const u8*>(x.scales + (u64)c.expert * (K / x.G) * N + col));
    w_dst = sg_keep(16 * ln);
    zs_dst = sg_keep(ln < 10 ? 512 + 4 * ln : 552);
    kt0 = c.kt0;
    nk = c.nk;
    zshift = sg_keep(4 * awq_nib(grp));
    wln_o = sg_keep(4 * ln);
    sc_o = sg_keep(520 + 2 * grp);
    b_o = sg_keep(32 * tig);  // lane t's B words 8t .. 8t + 7
  }
  DSV3_DEV void issue(u32 dst, u32 j) const {
    const bool in = j < nk;
    cp_async_16_n(dst + w_dst, w_src + (u64)j * 64, in ? w_bytes : 0u);
    cp_async_4_n(dst + zs_dst, zs_src + (u64)((kt0 + j) >> gsh) * zs_stride, in ? zs_bytes : 0u);
  }
  template <class C>
  DSV3_DEV void step(float (&acc)[C::TG][4], Acc (&)[C::TG][4], const u8* st, const u8* act, const float*, u32 ntg) const {
    const u32* wd = reinterpret_cast<const u32*>(st + wln_o);
    const u32 lo[2] = {wd[0], wd[32]}, hi[2] = {wd[64], wd[96]};
    const Vec<u32, 2> z = load_vec<u32, 2>(reinterpret_cast<const u32*>(st + 512));
    const f16* sc = reinterpret_cast<const f16*>(st + sc_o);
    const float s_lo = to_float(sc[0]), s_hi = to_float(sc[8]);
    const u32 zl = awq_zneg(z.v[0] >> zshift), zh = awq_zneg(z.v[1] >> zshift);
    u32 a[2][2][4];
#pragma unroll
    for (int kb = 0; kb < 2; ++kb)
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        a[kb][kk][0] = awq_deq2(lo[kb], 2 * kk, zl);
        a[kb][kk][1] = awq_deq2(hi[kb], 2 * kk, zh);
        a[kb][kk][2] = awq_deq2(lo[kb], 2 * kk + 1, zl);
        a[kb][kk][3] = awq_deq2(hi[kb], 2 * kk + 1, zh);
      }
    const u32 grp = lane() / 4;
#pragma unroll
    for (int j = 0; j < C::TG; ++j) {
      if ((u32)j >= ntg) break;
      const u32* brow = reinterpret_cast<const u32*>(act + (8 * j + grp) * C::ROW + b_o);
      const Vec<u32, 4> b[2] = {load_vec<u32, 4>(brow), load_vec<u32, 4>(brow + 4)};
      float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int kb = 0; kb < 2; ++kb)
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) mma_bf16_16816(part, a[kb][kk], b[kb].v[2 * kk], b[kb].v[2 * kk + 1]);
      acc[j][0] += part[0] * s_lo;
      acc[j][1] += part[1] * s_lo;
      acc[j][2] += part[2] * s_hi;
      acc[j][3] += part[3] * s_hi;
    }
  }
  template <int TG>
  DSV3_DEV void finish(float (&)[TG][4], const Acc (&)[TG][4], const i32*, u32, u32) const {}
};
static_assert(SgRing<8, StreamAwq>::SMEM == 52480 && SgRing<64, StreamAwq>::SMEM == 82176,
              "src/backend/stream_gemm.rs StreamTile::awq_smem_bytes mirrors these");
static_assert(SgRing<8, Stream8<Fp8MmaOp>>::SMEM == 75520 && SgRing<64, Stream8<Fp8MmaOp>>::SMEM == 87168 &&
                  SgRing<8, Stream8<Int8MmaOp<false>>>::SMEM == 75520,
              "src/backend/stream_gemm.rs StreamTile::smem_bytes mirrors these");
#endif  // DSV3_CUDA

// Entries: grid (ceil(N/128), M tiles of BM rows, splits), block 256, dynamic shared memory
// SgRing<BM, W>::SMEM (CUDA) or the portable path's (HIP: (BM + 128) · 128 for the 8-bit
// GEMMs, none for AWQ). 8-bit: K % 16 == 0; AWQ: as awq_gemm (G ∈ {64, 128}, K % G == 0, N % 8 == 0).
template <int BM>
DSV3_DEV void stream_gemm_fp8(bf16* out, const e4m3fn* a, const float* a_scales, const e4m3fn* b, const float* b_scale,
                              float* ws, u32* counters, const i32* row_ids, const i32* tile_expert, const i32* num_tiles,
                              u32 M, u32 N, u32 K, u32 a_row_div, u32 splits) {
  const BlockGemmArgs g =
      bg_args(out, a, a_scales, b, b_scale, ws, counters, row_ids, tile_expert, num_tiles, M, N, K, a_row_div, splits);
#if defined(DSV3_CUDA)
  stream_gemm_ring<BM, Stream8<Fp8MmaOp>>(g, {});
#else
  block_gemm_generic<Fp8Dec<e4m3fn>, true, BM>(g);
#endif
}

template <int BM, int MODE>
DSV3_DEV void stream_gemm_int8(bf16* out, const i8* a, const float* a_scales, const i8* b, const float* b_scale,
                               float* ws, u32* counters, const i32* row_ids, const i32* tile_expert,
                               const i32* num_tiles, u32 M, u32 N, u32 K, u32 a_row_div, u32 splits) {
  const BlockGemmArgs g =
      bg_args(out, a, a_scales, b, b_scale, ws, counters, row_ids, tile_expert, num_tiles, M, N, K, a_row_div, splits);
#if defined(DSV3_CUDA)
  stream_gemm_ring<BM, Stream8<Int8MmaOp<MODE == int8_block>>>(g, {});
#else
  block_gemm_generic<Int8Dec, MODE == int8_block, BM>(g);
#endif
}

template <int BM>
DSV3_DEV void stream_gemm_awq(bf16* out, const bf16* a, const i32* qweight, const i32* qzeros, const f16* scales,
                              float* ws, u32* counters, const i32* row_ids, const i32* tile_expert, const i32* num_tiles,
                              u32 M, u32 N, u32 K, u32 group, u32 a_row_div, u32 splits) {
  const BlockGemmArgs g = bg_args(out, a, nullptr, qweight, nullptr, ws, counters, row_ids, tile_expert, num_tiles, M,
                                  N, K, a_row_div, splits);
  const u32* qz = reinterpret_cast<const u32*>(qzeros);
#if defined(DSV3_CUDA)
  stream_gemm_ring<BM, StreamAwq>(g, StreamAwq::Extra{qz, scales, group});
#else
  awq_gemm_generic<BM>(g, qz, scales, group);
#endif
}

}  // namespace dsv3
