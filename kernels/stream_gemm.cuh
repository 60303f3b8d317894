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
//   - weights: global → registers by a weight streamer (Stream8, StreamAwq: the loads of one K
//     tile of a warp's 16 rows, their A fragments, the MMAs of one token group, the scaling), PF
//     K tiles ahead of the one being multiplied (no shared memory, no barrier on their path);
//   - activations (and the 8-bit ones' scales): CH K tiles of the CTA's BM rows at a time,
//     cp.async into shared memory, double buffered, read by every warp;
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
constexpr int SG_CH = 4;         // K tiles per staged activation chunk

// Shared memory of the streaming kernel with weight streamer W: two buffers of BM staged token
// rows (ROW bytes apart: W picks the padding that keeps its B reads free of bank conflicts) and,
// for the 8-bit formats, their f32 scales [CH][BM].
template <int BM_, class W> struct StreamCfg {
  static constexpr int BM = BM_;
  static constexpr int TG = BM / 8;
  static constexpr int ROW = SG_CH * SG_TILE + W::ROW_PAD;
  static constexpr int ACT = BM * ROW;
  static constexpr int SCL = W::ACT_SCALES ? SG_CH * BM * 4 : 0;
  static constexpr int BUF = ACT + SCL;
  static constexpr int SMEM = 2 * BUF;  // dynamic shared memory (CUDA)
  static_assert(BM % 8 == 0 && (BM * SG_CH * 8) % SG_THREADS == 0 && BM * SG_CH <= SG_THREADS, "staging loops");
  static_assert(SG_THREADS / 32 * 16 == BG_BN, "a CTA covers one 128-row weight scale block");
};

#if defined(DSV3_CUDA)
// ---- FP8 / INT8: m16n8k32 on 8-bit codes (Op: Fp8MmaOp, Int8MmaOp<>) ----------------------------
//
// K tile = 128 codes. For half h ∈ {0, 1}: lo[h] = 16 bytes of weight row g at k = 128·kt + 64·h
// + 16·t, hi[h] the same bytes of row g + 8; a token group's bv[h] = the same 16 bytes of token
// g's activations. MMA (h, q), q ∈ {0, 1}: a = {lo[h][2q], hi[h][2q], lo[h][2q+1], hi[h][2q+1]},
// b = {bv[h][2q], bv[h][2q+1]}. The PTX fragments put into a0 / a2 (row g) and b0 / b1 (column g)
// the k slots 4t..4t+3 and 16+4t..16+4t+3; here slot 4t + i holds k = 64h + 16t + 8q + i and slot
// 16 + 4t + i holds k = 64h + 16t + 8q + 4 + i. Over t and i that is bytes 8q..8q+7 of each lane's
// 16, a permutation of the step's 32 k, the same for A and B, so each MMA sums the right products
// (and the four MMAs of a K tile cover its 128 k once). A warp's load reads 8 rows × 64 contiguous
// bytes (two whole 32-byte sectors per row).
template <class Op> struct Stream8 {
  using Acc = typename Op::Acc;
  static constexpr int PF = 2;           // 2 KB per warp and K tile: 4–6 KB in flight per warp
  static constexpr int ROW_PAD = 64;     // a quarter-warp's 16-byte B reads: two token rows 64 bytes apart in banks
  static constexpr bool ACT_SCALES = Op::PER_TILE;
  struct Tile {
    u32 lo[2][4], hi[2][4];
    float sw;  // block modes: s_w of the tile
  };
  struct Frag {
    u32 a[2][2][4];
    float sb;
  };
  const u8* w_lo;
  const u8* w_hi;
  const float* b_scale;  // block: this CTA's [sk] weight scales; channel: [N]
  u32 K, tig;
  bool ok_lo, ok_hi;

  DSV3_DEV Stream8(const BlockGemmArgs& g, u32 expert, u32 nt_idx, u32 row_lo, u32 tig_) {
    const u32 N = g.N, sk = (g.K + BG_BK - 1) / BG_BK, sn = (N + BG_BN - 1) / BG_BN;
    const u8* B = g.b + (u64)expert * N * g.K;
    K = g.K;
    tig = tig_;
    ok_lo = row_lo < N;
    ok_hi = row_lo + 8 < N;
    w_lo = B + (ok_lo ? (u64)row_lo * K : 0) + 16 * tig;
    w_hi = B + (ok_hi ? (u64)(row_lo + 8) * K : 0) + 16 * tig;
    b_scale = Op::PER_TILE ? g.b_scale + ((u64)expert * sn + nt_idx) * sk : g.b_scale + (u64)expert * N;
  }
  static DSV3_DEV void load16(u32 (&v)[4], const u8* p, bool ok) {
    if (ok) {
      ld_stream_16(v, p);
    } else {
      v[0] = v[1] = v[2] = v[3] = 0u;
    }
  }
  DSV3_DEV void load(Tile& w, u32 kt) const {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const u32 k = kt * BG_BK + 64 * h;
      const bool kin = k + 16 * tig < K;  // K % 16 == 0: a 16-byte piece is all in or all out
      load16(w.lo[h], w_lo + k, ok_lo && kin);
      load16(w.hi[h], w_hi + k, ok_hi && kin);
    }
    if constexpr (Op::PER_TILE) w.sw = b_scale[kt];
  }
  // The MMA operand A is four consecutive registers and a 16-byte load holds one row: rows g and
  // g + 8 interleave, built once per K tile for every token group.
  DSV3_DEV Frag frag(const Tile& w) const {
    Frag f;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        f.a[h][q][0] = w.lo[h][2 * q];
        f.a[h][q][1] = w.hi[h][2 * q];
        f.a[h][q][2] = w.lo[h][2 * q + 1];
        f.a[h][q][3] = w.hi[h][2 * q + 1];
      }
    f.sb = Op::PER_TILE ? w.sw * Op::FIX : 0.0f;
    return f;
  }
  // One token group: brow = token g's staged K tile, sa = s_a of tokens 2t, 2t + 1 (block modes).
  DSV3_DEV void group(float (&acc)[4], Acc (&whole)[4], const Frag& f, const u8* brow, const float* sa) const {
    const Vec<u32, 4> bv[2] = {load_vec<u32, 4>(reinterpret_cast<const u32*>(brow + 16 * tig)),
                               load_vec<u32, 4>(reinterpret_cast<const u32*>(brow + 64 + 16 * tig))};
    Acc part[4] = {Acc(0), Acc(0), Acc(0), Acc(0)};
    Acc(&d)[4] = Op::PER_TILE ? part : whole;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const u32 b[2] = {bv[h].v[2 * q], bv[h].v[2 * q + 1]};
        Op::mma(d, f.a[h][q], b);
      }
    if constexpr (Op::PER_TILE) {
      // Promotion: acc += part · s_a · s_w.
      const Vec<float, 2> s2 = load_vec<float, 2>(sa);
      const float s0 = s2.v[0] * f.sb, s1 = s2.v[1] * f.sb;
      acc[0] += (float)part[0] * s0;
      acc[1] += (float)part[1] * s1;
      acc[2] += (float)part[2] * s0;
      acc[3] += (float)part[3] * s1;
    }
  }
  // After the K loop, channel mode: acc = whole · s_a[a-row of the token] · s_w[row].
  DSV3_DEV void finish(float (&acc)[4], const Acc (&whole)[4], const float* a_scales, i32 ar0, i32 ar1, u32 row_lo, u32 N) const {
    if constexpr (!Op::PER_TILE) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const i32 ar = (e & 1) ? ar1 : ar0;
        const u32 n = row_lo + 8 * (e >> 1);
        const float sa = ar >= 0 ? a_scales[ar] : 0.0f, sb = n < N ? b_scale[n] * Op::FIX : 0.0f;
        acc[e] = (float)whole[e] * (sa * sb);
      }
    }
  }
};

// ---- AWQ W4A16: m16n8k16 bf16 on dequantized nibbles -----------------------------------------
//
// K tile = 64 values (128 bytes of bf16 activations; one quantization group or half of one). The
// weights are awq_repack's words ([E][N/8][K/32][32 lanes] u32): the word of lane (g, t) for
// column group n8 and 32-row block kb holds column n8·8 + g at k = 32·kb + {2t, 2t+8, 16+2t,
// 24+2t} (nibbles 0..3) and k + 1 of each (nibbles 4..7). With rows g ↔ column group
// n8 = (n0 + 16·warp) / 8 and rows g + 8 ↔ n8 + 1, a lane's words of n8 and n8 + 1 are exactly its
// m16n8k16 A fragments: for K block kb and half kk, a = {deq(lo[kb], 2kk), deq(hi[kb], 2kk),
// deq(lo[kb], 2kk+1), deq(hi[kb], 2kk+1)} (deq(w, h): nibbles h, h + 4 as bf16x2 of q − z,
// awq_deq2), and b = token g's bf16 pairs at k = 32·kb + 16·kk + 2t and + 8 (the standard B
// fragment: 4-byte shared reads). A warp's load is one 128-byte line.
struct StreamAwq {
  using Acc = float;
  static constexpr int PF = 6;        // 512 bytes per warp and K tile (+ zeros, scales)
  static constexpr int ROW_PAD = 16;  // 4-byte B reads: 8 token rows 16 bytes apart in banks
  static constexpr bool ACT_SCALES = false;
  struct Tile {
    u32 lo[2], hi[2];  // words of column groups n8, n8 + 1 for the tile's two 32-row blocks
    u32 z_lo, z_hi;    // their qzeros words
    f16 s_lo, s_hi;    // f16 scales of columns g and g + 8
  };
  struct Frag {
    u32 a[2][2][4];
    float s_lo, s_hi;
  };
  const u32* w_lo;
  const u32* w_hi;
  const u32* qz;
  const f16* sc;
  u32 N, G, n8_lo, col_lo, zshift;
  bool ok_lo, ok_hi;

  DSV3_DEV StreamAwq(const BlockGemmArgs& g, u32 expert, u32 row_lo, u32 lane, const u32* qzeros, const f16* scales, u32 group) {
    N = g.N;
    G = group;
    const u32 N8 = N / 8, K32 = g.K / 32, grp = lane / 4;
    n8_lo = (row_lo - grp) / 8;
    col_lo = row_lo;
    ok_lo = n8_lo < N8;
    ok_hi = n8_lo + 1 < N8;
    const u32* qw = reinterpret_cast<const u32*>(g.b) + (u64)expert * N8 * K32 * 32;
    w_lo = qw + (ok_lo ? (u64)n8_lo * K32 * 32 : 0) + lane;
    w_hi = qw + (ok_hi ? (u64)(n8_lo + 1) * K32 * 32 : 0) + lane;
    qz = qzeros + (u64)expert * (g.K / G) * N8;
    sc = scales + (u64)expert * (g.K / G) * N;
    zshift = 4 * awq_nib(grp);
  }
  DSV3_DEV void load(Tile& w, u32 kt) const {
    const u32 gi = kt * AWQ_BK / G;
#pragma unroll
    for (int kb = 0; kb < 2; ++kb) {
      const u64 off = (u64)(2 * kt + kb) * 32;
      w.lo[kb] = ok_lo ? ld_stream_4(w_lo + off) : 0u;
      w.hi[kb] = ok_hi ? ld_stream_4(w_hi + off) : 0u;
    }
    // Rows past N: code 0 and zero point 0 dequantize to exactly 0, scale 0.
    w.z_lo = ok_lo ? qz[(u64)gi * (N / 8) + n8_lo] : 0u;
    w.z_hi = ok_hi ? qz[(u64)gi * (N / 8) + n8_lo + 1] : 0u;
    w.s_lo.bits = ok_lo ? sc[(u64)gi * N + col_lo].bits : (u16)0;
    w.s_hi.bits = ok_hi ? sc[(u64)gi * N + col_lo + 8].bits : (u16)0;
  }
  DSV3_DEV Frag frag(const Tile& w) const {
    Frag f;
    const u32 zl = awq_zneg((w.z_lo >> zshift) & 15u), zh = awq_zneg((w.z_hi >> zshift) & 15u);
#pragma unroll
    for (int kb = 0; kb < 2; ++kb)
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        f.a[kb][kk][0] = awq_deq2(w.lo[kb], 2 * kk, zl);
        f.a[kb][kk][1] = awq_deq2(w.hi[kb], 2 * kk, zh);
        f.a[kb][kk][2] = awq_deq2(w.lo[kb], 2 * kk + 1, zl);
        f.a[kb][kk][3] = awq_deq2(w.hi[kb], 2 * kk + 1, zh);
      }
    f.s_lo = to_float(w.s_lo);
    f.s_hi = to_float(w.s_hi);
    return f;
  }
  // One token group: brow = token g's staged K tile (64 bf16); the tile's f32 partial takes the
  // rows' f16 scales (acc += part · s[row]).
  DSV3_DEV void group(float (&acc)[4], float (&)[4], const Frag& f, const u8* brow, const float*) const {
    const u32 tig = lane() % 4;
    float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int kb = 0; kb < 2; ++kb)
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        const u32* b = reinterpret_cast<const u32*>(brow + 64 * kb + 32 * kk + 4 * tig);
        mma_bf16_16816(part, f.a[kb][kk], b[0], b[4]);
      }
    acc[0] += part[0] * f.s_lo;
    acc[1] += part[1] * f.s_lo;
    acc[2] += part[2] * f.s_hi;
    acc[3] += part[3] * f.s_hi;
  }
  DSV3_DEV void finish(float (&)[4], const float (&)[4], const float*, i32, i32, u32, u32) const {}
};

// The kernel: K tiles kt0.. of this CTA's split, M tile and N tile from the block index (M tiles
// vary fastest: the CTAs that share weights run together, the second reads them from L2).
template <int BM, class W>
DSV3_DEV void stream_gemm_run(const BlockGemmArgs& g, u32 sk, u32 a_row_bytes, u32 mt_idx, u32 nt_idx, u32 split,
                              u32 m_end, const W& ws) {
  using C = StreamCfg<BM, W>;
  using Acc = typename W::Acc;
  constexpr int TG = C::TG, CH = SG_CH, PF = W::PF, NBUF = PF + 1, THREADS = SG_THREADS;
  extern __shared__ __attribute__((aligned(16))) u8 sg_smem[];
  __shared__ i32 s_arow[BM];

  const u32 N = g.N;
  const u32 m0 = mt_idx * BM, n0 = nt_idx * BG_BN;
  const u32 per = (sk + g.splits - 1) / g.splits;
  const u32 kt0 = split * per, kt1 = min(sk, kt0 + per);
  const u32 nk = kt1 > kt0 ? kt1 - kt0 : 0;
  const u32 kend = min(a_row_bytes, kt1 * SG_TILE);  // activation bytes past it are zero-filled

  const u32 t = tid(), warp = t / 32, grp = lane() / 4, tig = lane() % 4;
  const u32 row_lo = n0 + 16 * warp + grp;
  const bool wactive = n0 + 16 * warp < N;
  for (u32 i = t; i < (u32)BM; i += THREADS) s_arow[i] = (i32)bg_a_row(g, m0 + i, m_end);
  __syncthreads();
  // Valid rows of a tile are a prefix (dense: below M; grouped: the expert's rows before its
  // padding): groups past the last one hold no token and are skipped.
  u32 ntg = 0;
#pragma unroll
  for (int j = 0; j < TG; ++j)
    if (s_arow[8 * j] >= 0) ntg = j + 1;

  // Activation chunk c (K tiles kt0 + c·CH ..) into buffer c & 1: rows past the tile's valid
  // ones, past kend or past K are zeros (the weights there are zeros too).
  const u32 smem0 = smem_u32(sg_smem);
  const u8* a = g.a;
  auto stage = [&](u32 c) {
    const u32 base = smem0 + (c & 1) * C::BUF;
    const u32 kb0 = (kt0 + c * CH) * SG_TILE;
#pragma unroll
    for (int i = 0; i < BM * CH * 8 / THREADS; ++i) {
      const u32 p = t + i * THREADS, r = p / (CH * 8), piece = p % (CH * 8);
      const u32 k = kb0 + 16 * piece;
      const i32 ar = s_arow[r];
      const bool v = ar >= 0 && k < kend;
      cp_async_16(base + r * C::ROW + 16 * piece, v ? (const void*)(a + (u64)ar * a_row_bytes + k) : (const void*)a, v);
    }
    if constexpr (W::ACT_SCALES) {
      if (t < (u32)(BM * CH)) {
        const u32 r = t % BM, kt = kt0 + c * CH + t / BM;
        const i32 ar = s_arow[r];
        const bool v = ar >= 0 && kt < kt1;
        cp_async_4(base + C::ACT + 4 * t, v ? (const void*)(g.a_scales + (u64)ar * sk + kt) : (const void*)g.a_scales, v);
      }
    }
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

  // The MMAs of K tile kl of the staged chunk in buffer buf.
  auto step = [&](const typename W::Tile& wt, u32 kl, u32 buf) {
    const u8* act = sg_smem + buf * C::BUF;
    const typename W::Frag f = ws.frag(wt);
#pragma unroll
    for (int j = 0; j < TG; ++j) {
      if ((u32)j >= ntg) break;
      const float* sa = reinterpret_cast<const float*>(act + C::ACT) + kl * BM + 8 * j + 2 * tig;
      ws.group(acc[j], whole[j], f, act + (8 * j + grp) * C::ROW + kl * SG_TILE, sa);
    }
  };

  // Ring of NBUF weight tiles in registers, indexed statically: the main loop is unrolled by NBUF.
  typename W::Tile w[NBUF];
#pragma unroll
  for (int p = 0; p < PF; ++p)
    if ((u32)p < nk) ws.load(w[p], kt0 + p);
  if (nk > 0) stage(0);
  for (u32 it0 = 0; it0 < nk; it0 += NBUF) {
#pragma unroll
    for (int s = 0; s < NBUF; ++s) {
      const u32 it = it0 + s;
      if (it >= nk) break;
      if (it + PF < nk) ws.load(w[(s + PF) % NBUF], kt0 + it + PF);
      if (it % CH == 0) {
        // Chunk it / CH has landed, and every warp is done with the other buffer.
        cp_async_wait<0>();
        __syncthreads();
        if (it + CH < nk) stage(it / CH + 1);
      }
      if (wactive) step(w[s], it % CH, (it / CH) & 1);
    }
  }

  // Accumulator e of group j: token 8j + 2t + (e & 1), row row_lo + 8·(e >> 1).
  auto tok_of = [&](int j, int e) { return (u32)(8 * j) + 2 * tig + (u32)(e & 1); };
#pragma unroll
  for (int j = 0; j < TG; ++j) ws.finish(acc[j], whole[j], g.a_scales, s_arow[tok_of(j, 0)], s_arow[tok_of(j, 1)], row_lo, N);
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

template <int BM, class Op>
DSV3_DEV void stream_gemm_8bit(const BlockGemmArgs& g) {
  u32 mt, nt, split, expert, m_end;
  if (!sg_tile(g, BM, mt, nt, split, expert, m_end)) return;
  const Stream8<Op> ws(g, expert, nt, nt * BG_BN + 16 * (tid() / 32) + lane() / 4, lane() % 4);
  stream_gemm_run<BM>(g, (g.K + BG_BK - 1) / BG_BK, g.K, mt, nt, split, m_end, ws);
}

template <int BM>
DSV3_DEV void stream_gemm_awq_mma(const BlockGemmArgs& g, const u32* qzeros, const f16* scales, u32 G) {
  u32 mt, nt, split, expert, m_end;
  if (!sg_tile(g, BM, mt, nt, split, expert, m_end)) return;
  const StreamAwq ws(g, expert, nt * BG_BN + 16 * (tid() / 32) + lane() / 4, lane(), qzeros, scales, G);
  stream_gemm_run<BM>(g, g.K / AWQ_BK, 2 * g.K, mt, nt, split, m_end, ws);
}
#endif  // DSV3_CUDA

// Entries: grid (ceil(N/128), M tiles of BM rows, splits), block 256, dynamic shared memory
// StreamCfg<BM, W>::SMEM (CUDA) or the portable path's (HIP: (BM + 128) · 128 for the 8-bit
// GEMMs, none for AWQ). 8-bit: K % 16 == 0; AWQ: as awq_gemm (G ∈ {64, 128}, K % G == 0, N % 8 == 0).
template <int BM>
DSV3_DEV void stream_gemm_fp8(bf16* out, const e4m3fn* a, const float* a_scales, const e4m3fn* b, const float* b_scale,
                              float* ws, u32* counters, const i32* row_ids, const i32* tile_expert, const i32* num_tiles,
                              u32 M, u32 N, u32 K, u32 a_row_div, u32 splits) {
  const BlockGemmArgs g =
      bg_args(out, a, a_scales, b, b_scale, ws, counters, row_ids, tile_expert, num_tiles, M, N, K, a_row_div, splits);
#if defined(DSV3_CUDA)
  stream_gemm_8bit<BM, Fp8MmaOp>(g);
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
  stream_gemm_8bit<BM, Int8MmaOp<MODE == int8_block>>(g);
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
  stream_gemm_awq_mma<BM>(g, qz, scales, group);
#else
  awq_gemm_generic<BM>(g, qz, scales, group);
#endif
}

}  // namespace dsv3
