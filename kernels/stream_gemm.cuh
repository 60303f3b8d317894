// Weight-streaming ("swap AB") GEMM for small M: the decode GEMM of FP8 block-scaled and INT8
// (block / channel) weights, dense and grouped by expert.
//
// It computes exactly what fp8_gemm / int8_gemm compute (kernels/block_gemm.cuh): the same
// arguments, scales (FP8 and block INT8: each 128-wide K block accumulated by the MMAs, promoted
// with s_a[row, kb]·s_w[n/128, kb]; channel INT8: s32 over the split's K, then s_a[row]·s_w[n]),
// grouped rows (moe_align_tiles: tile t belongs to expert tile_expert[t], row r reads a-row
// row_ids[r] / a_row_div) and split-K workspace (bg_last_split / bg_finish_split), with the grid
// (ceil(N/128), M tiles, splits) of BM token rows. Only the way the weights move differs.
//
// At M ≤ 64 a weight byte carries 2·M FLOPs: the GEMM is a stream of the weights, so they are the
// MMA's 16-row A operand and the few tokens its 8-column B operand (n = 8):
//   - CTA: 8 warps × 16 weight rows = 128 rows (one weight scale block), BM token rows (8 or 64:
//     TG = BM / 8 token groups, those past the tile's last valid row skipped at run time), K in
//     128-wide tiles (one scale block each) over the split's range;
//   - weights: global → registers, 16-byte loads that bypass L1, PF K tiles ahead of the one
//     being multiplied (no shared memory, no barrier on their path);
//   - activations (and their scales): CH K tiles of the CTA's BM rows at a time, cp.async into
//     shared memory, double buffered, read by every warp;
//   - each warp's A fragments of a K tile serve every token group: TG × 4 MMAs per tile.
//
// Fragment mapping (per lane: g = lane / 4, t = lane % 4). For K tile kt and half h ∈ {0, 1}:
//   wlo[h] = 16 bytes of weight row n0 + 16·warp + g at k = 128·kt + 64·h + 16·t; whi[h] the same
//            bytes of that row + 8;
//   bv[h]  = 16 bytes of the activation row of token 8·j + g (group j) at the same k.
// MMA (h, q), q ∈ {0, 1}, is m16n8k32 with a = {wlo[h][2q], whi[h][2q], wlo[h][2q+1],
// whi[h][2q+1]} and b = {bv[h][2q], bv[h][2q+1]}. The PTX fragments put into a0 / a2 (row g) and
// b0 / b1 (column g) the k slots 4t..4t+3 and 16+4t..16+4t+3; here slot 4t + i holds k = 64h +
// 16t + 8q + i and slot 16 + 4t + i holds k = 64h + 16t + 8q + 4 + i. Over t and i that is bytes
// 8q..8q+7 of each lane's 16, i.e. a permutation of the step's 32 k, the same for A and B, so each
// MMA sums the right products (and the four MMAs of a K tile cover its 128 k once). A warp's load
// reads 8 rows × 64 contiguous bytes (two whole 32-byte sectors per row).
// D (m16n8 f32 / s32): c0 = (row g, token 2t), c1 = (row g, token 2t+1), c2 / c3 = the same for
// row g + 8: out is written transposed, out[token][row].
//
// HIP, and any other target without the NVIDIA MMAs: the entries run block_gemm_generic (the FP8 /
// INT8 GEMMs' portable path) with BM-row tiles, so every variant computes the same function.
#pragma once
#include "dsv3/dsv3.h"
#include "dsv3/mma_sm80.h"
#include "block_gemm.cuh"

namespace dsv3 {

template <int BM_> struct StreamCfg {
  static constexpr int BM = BM_;     // token rows per CTA
  static constexpr int TG = BM / 8;  // token groups (the MMA's n = 8)
  static constexpr int WARPS = 8, THREADS = 32 * WARPS;
  static constexpr int CH = 4;  // K tiles per staged activation chunk
  // Bytes per staged token row: 64 past a multiple of 128, so that the two token rows of a
  // quarter-warp's 16-byte shared loads (4 lanes × 16 bytes each) fall on distinct banks.
  static constexpr int ROW = CH * BG_BK + 64;
  static constexpr int ACT = BM * ROW;
  static constexpr int SCL = CH * BM * 4;  // f32 activation scales of the chunk, [CH][BM]
  static constexpr int BUF = ACT + SCL;
  static constexpr int SMEM = 2 * BUF;  // dynamic shared memory (CUDA)
  // K tiles of weights in flight per warp beyond the one being multiplied: 2 KB each per warp.
  static constexpr int PF = 2;
  static_assert(16 * WARPS == BG_BN, "a CTA covers one 128-row weight scale block");
  static_assert(BM % 8 == 0 && (BM * CH * 8) % THREADS == 0 && BM * CH <= THREADS, "staging loops");
};

#if defined(DSV3_CUDA)
// One warp's weights of one K tile: rows g (lo) and g + 8 (hi), halves h, and the tile's weight
// scale (block modes).
struct StreamW {
  u32 lo[2][4], hi[2][4];
  float sw;
};

DSV3_DEV void sg_load16(u32 (&v)[4], const u8* p, bool ok) {
  if (ok) {
    ld_stream_16(v, p);
  } else {
    v[0] = v[1] = v[2] = v[3] = 0u;
  }
}

template <int BM, class Op>
DSV3_DEV void stream_gemm_mma(const BlockGemmArgs& g) {
  using C = StreamCfg<BM>;
  using Acc = typename Op::Acc;
  constexpr int TG = C::TG, CH = C::CH, PF = C::PF, NBUF = PF + 1, THREADS = C::THREADS;
  extern __shared__ __attribute__((aligned(16))) u8 sg_smem[];
  __shared__ i32 s_arow[BM];

  // M tiles vary fastest: the CTAs of one (n tile, split) run together and share its weights in L2.
  const u32 X = gridDim.x, Y = gridDim.y;
  const u32 lin = blockIdx.x + X * (blockIdx.y + Y * blockIdx.z);
  const u32 mt_idx = lin % Y, nt_idx = (lin / Y) % X, split = lin / (X * Y);
  u32 expert, m_end;
  if (!bg_tile(g, mt_idx, BM, expert, m_end)) return;
  const u32 N = g.N, K = g.K;
  const u32 m0 = mt_idx * BM, n0 = nt_idx * BG_BN;
  const u32 sk = (K + BG_BK - 1) / BG_BK, sn = (N + BG_BN - 1) / BG_BN;
  const u32 per = (sk + g.splits - 1) / g.splits;
  const u32 kt0 = split * per, kt1 = min(sk, kt0 + per);
  const u32 nk = kt1 > kt0 ? kt1 - kt0 : 0;
  const u32 kend = min(K, kt1 * BG_BK);  // activation bytes past it are zero-filled

  const u32 t = tid(), warp = t / 32, ln = t % 32, grp = ln / 4, tig = ln % 4;
  for (u32 i = t; i < (u32)BM; i += THREADS) s_arow[i] = (i32)bg_a_row(g, m0 + i, m_end);
  __syncthreads();
  // Valid rows of a tile are a prefix (dense: below M; grouped: the expert's rows before its
  // padding): groups past the last one hold no token and are skipped.
  u32 ntg = 0;
#pragma unroll
  for (int j = 0; j < TG; ++j)
    if (s_arow[8 * j] >= 0) ntg = j + 1;

  const u8* B = g.b + (u64)expert * N * K;
  const float* b_scale = Op::PER_TILE ? g.b_scale + ((u64)expert * sn + nt_idx) * sk : g.b_scale + (u64)expert * N;
  const u32 row_lo = n0 + 16 * warp + grp, row_hi = row_lo + 8;
  const bool wactive = n0 + 16 * warp < N, ok_lo = row_lo < N, ok_hi = row_hi < N;
  const u8* w_lo = B + (ok_lo ? (u64)row_lo * K : 0) + 16 * tig;
  const u8* w_hi = B + (ok_hi ? (u64)row_hi * K : 0) + 16 * tig;
  auto load_w = [&](StreamW& w, u32 kt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const u32 k = kt * BG_BK + 64 * h;
      const bool kin = k + 16 * tig < K;  // K % 16 == 0: a 16-byte piece is all in or all out
      sg_load16(w.lo[h], w_lo + k, ok_lo && kin);
      sg_load16(w.hi[h], w_hi + k, ok_hi && kin);
    }
    if constexpr (Op::PER_TILE) w.sw = b_scale[kt];
  };

  // Activation chunk c (K tiles kt0 + c·CH ..) into buffer c & 1: rows past the tile's valid
  // ones, past kend or past K are zeros (the weights there are zeros too).
  const u32 smem0 = smem_u32(sg_smem);
  auto stage = [&](u32 c) {
    const u32 base = smem0 + (c & 1) * C::BUF;
    const u32 kb0 = (kt0 + c * CH) * BG_BK;
#pragma unroll
    for (int i = 0; i < BM * CH * 8 / THREADS; ++i) {
      const u32 p = t + i * THREADS, r = p / (CH * 8), piece = p % (CH * 8);
      const u32 k = kb0 + 16 * piece;
      const i32 ar = s_arow[r];
      const bool v = ar >= 0 && k < kend;
      cp_async_16(base + r * C::ROW + 16 * piece, v ? (const void*)(g.a + (u64)ar * K + k) : (const void*)g.a, v);
    }
    if constexpr (Op::PER_TILE) {
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
  Acc whole[TG][4];  // channel mode: the split's whole K in s32
#pragma unroll
  for (int j = 0; j < TG; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      acc[j][e] = 0.0f;
      whole[j][e] = Acc(0);
    }

  // The MMAs of K tile kl of the staged chunk in buffer buf.
  auto step = [&](const StreamW& w, u32 kl, u32 buf) {
    const u8* act = sg_smem + buf * C::BUF;
    const float* sa = reinterpret_cast<const float*>(act + C::ACT) + kl * BM;
    // The A fragments of MMA (h, q), built once for all token groups (an MMA operand is four
    // consecutive registers, a 16-byte load holds one row: rows g and g + 8 interleave).
    u32 a[2][2][4];
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        a[h][q][0] = w.lo[h][2 * q];
        a[h][q][1] = w.hi[h][2 * q];
        a[h][q][2] = w.lo[h][2 * q + 1];
        a[h][q][3] = w.hi[h][2 * q + 1];
      }
    const float sb = Op::PER_TILE ? w.sw * Op::FIX : 0.0f;
#pragma unroll
    for (int j = 0; j < TG; ++j) {
      if ((u32)j >= ntg) break;
      const u8* brow = act + (8 * j + grp) * C::ROW + kl * BG_BK + 16 * tig;
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
        // Promotion: acc += part · s_a · s_w (tokens 2t and 2t + 1 of the group).
        const Vec<float, 2> s2 = load_vec<float, 2>(sa + 8 * j + 2 * tig);
        const float s0 = s2.v[0] * sb, s1 = s2.v[1] * sb;
        acc[j][0] += (float)part[0] * s0;
        acc[j][1] += (float)part[1] * s1;
        acc[j][2] += (float)part[2] * s0;
        acc[j][3] += (float)part[3] * s1;
      }
    }
  };

  // Ring of NBUF weight tiles in registers, indexed statically: the main loop is unrolled by NBUF.
  StreamW w[NBUF];
#pragma unroll
  for (int p = 0; p < PF; ++p)
    if ((u32)p < nk) load_w(w[p], kt0 + p);
  if (nk > 0) stage(0);
  for (u32 it0 = 0; it0 < nk; it0 += NBUF) {
#pragma unroll
    for (int s = 0; s < NBUF; ++s) {
      const u32 it = it0 + s;
      if (it >= nk) break;
      if (it + PF < nk) load_w(w[(s + PF) % NBUF], kt0 + it + PF);
      if (it % CH == 0) {
        // Chunk it / CH has landed, and every warp is done with the other buffer.
        cp_async_wait<0>();
        __syncthreads();
        if (it + CH < nk) stage(it / CH + 1);
      }
      if (wactive) step(w[s], it % CH, (it / CH) & 1);
    }
  }

  // (token, row) of accumulator e of group j.
  auto tok_of = [&](int j, int e) { return (u32)(8 * j) + 2 * tig + (u32)(e & 1); };
  auto row_of = [&](int e) { return e < 2 ? row_lo : row_hi; };
  if constexpr (!Op::PER_TILE) {
#pragma unroll
    for (int j = 0; j < TG; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const i32 ar = s_arow[tok_of(j, e)];
        const u32 n = row_of(e);
        const float sa = ar >= 0 ? g.a_scales[ar] : 0.0f, sb = n < N ? b_scale[n] * Op::FIX : 0.0f;
        acc[j][e] = (float)whole[j][e] * (sa * sb);
      }
  }
  if (g.splits == 1) {
    if (!wactive) return;
#pragma unroll
    for (int j = 0; j < TG; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const u32 r = m0 + tok_of(j, e), n = row_of(e);
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
        const u32 r = m0 + tok_of(j, e), n = row_of(e);
        if (r < m_end && n < N) atomic_add(g.ws + (u64)r * N + n, acc[j][e]);
      }
    }
  }
  const u32 tile_id = mt_idx * gridDim.x + nt_idx;
  if (bg_last_split(g, tile_id)) bg_finish_split<BM>(g, tile_id, m0, m_end, n0);
}
#endif  // DSV3_CUDA

// Entries: grid (ceil(N/128), M tiles of BM rows, splits), block 256, dynamic shared memory
// StreamCfg<BM>::SMEM (CUDA) or (BM + 128) · 128 (HIP: block_gemm_generic). K % 16 == 0.
template <int BM>
DSV3_DEV void stream_gemm_fp8(bf16* out, const e4m3fn* a, const float* a_scales, const e4m3fn* b, const float* b_scale,
                              float* ws, u32* counters, const i32* row_ids, const i32* tile_expert, const i32* num_tiles,
                              u32 M, u32 N, u32 K, u32 a_row_div, u32 splits) {
  const BlockGemmArgs g =
      bg_args(out, a, a_scales, b, b_scale, ws, counters, row_ids, tile_expert, num_tiles, M, N, K, a_row_div, splits);
#if defined(DSV3_CUDA)
  stream_gemm_mma<BM, Fp8MmaOp>(g);
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
  stream_gemm_mma<BM, Int8MmaOp<MODE == int8_block>>(g);
#else
  block_gemm_generic<Int8Dec, MODE == int8_block, BM>(g);
#endif
}

}  // namespace dsv3
