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
//   - weights: global → registers by a weight streamer (Stream8: the loads of one K tile of a
//     warp's 16 rows, their A fragments, the MMAs of one token group, the scaling), PF K tiles
//     ahead of the one being multiplied (no shared memory, no barrier on their path); AWQ
//     (stream_gemm_awq_mma, below) streams them through a per-warp cp.async ring in shared
//     memory instead, its own loop;
//   - activations (and the 8-bit ones' scales): CH K tiles of the CTA's BM rows at a time,
//     cp.async into shared memory, double buffered, read by every warp;
//   - each warp's A fragments of a K tile serve every token group.
// D of every MMA (m16n8, f32 / s32): c0 = (row g, token 2t), c1 = (row g, token 2t+1), c2 / c3 =
// the same for row g + 8 (lane: g = lane / 4, t = lane % 4): out is written transposed,
// out[token][row].
//
// HIP, and any other target without the NVIDIA MMAs: the entries run the tiled GEMMs' HIP paths
// with BM-row tiles (8-bit: block_gemm_mfma on gfx90a / gfx942, else block_gemm_generic; AWQ:
// awq_gemm_mfma on gfx90a / gfx942, else awq_gemm_generic), so every variant computes the same
// function.
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
  u32 kt0, kt1;
  bg_split_range(g, sk, split, kt0, kt1);
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
  sg_store<BM>(g, acc, ntg, mt_idx, nt_idx, m0, m_end, n0, row_lo, wactive);
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

// ---- AWQ W4A16: m16n8k16 bf16 on dequantized nibbles, weights through shared memory ----------
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
// Why shared memory (docs/perf/quant_gemm.md, "AWQ decode: bytes in flight and issue slots"): a
// ring of K tiles in registers is not in flight at once — ptxas gives every load of the ring one
// scoreboard and waits for all of them before the first use, so a warp had one 512-byte K tile per
// DRAM round trip (≈ 8 KB per SM, ≈ 1 TB/s). cp.async groups retire in order and
// cp.async.wait_group counts them, so here PF K tiles per warp are really in flight:
//   - each warp streams its 16 columns through a private ring of NS = PF + 1 stages of 560 bytes:
//     the K tile's four 128-byte lines (one 16-byte cp.async per lane: segment 2c + b = column
//     group n8 + c, block 2kt + b) and its group's two qzeros words and 16 f16 scales (lanes
//     0..9, 4 bytes each); rows past N are zero-filled (dequantize to 0, scale 0);
//   - the CTA's token rows go through NA buffers of CH K tiles (4-byte cp.async, transposed so that
//     a lane's eight B words of a tile are contiguous: two 16-byte shared reads per token group);
//   - one cp.async group per K tile (the tile's weights, and at a chunk's first tile the chunk),
//     committed PF tiles ahead; wait_group<PF − 1> then means "tile it has landed". A barrier at
//     each chunk's first tile (the activations are shared) and __syncwarp otherwise (a warp reads
//     lines its other lanes copied). NA = 1 + ⌈PF / CH⌉ buffers: a chunk is issued PF tiles
//     before its first tile, after the barrier that retires the chunk that buffer held.
template <int BM> struct AwqStreamCfg {
  static constexpr int TG = BM / 8;
  static constexpr int PF = BM <= 8 ? 7 : 5;        // K tiles in flight per warp past the one multiplied
  static constexpr int NS = PF + 1;                  // weight stages per warp
  static constexpr int CH = BM <= 8 ? 8 : 1;         // K tiles per activation chunk
  static constexpr int NA = 1 + (PF + CH - 1) / CH;  // activation chunk buffers
  static constexpr int ROW = CH * SG_TILE + 16;      // ≡ 16 (mod 128): conflict-free 16-byte B reads
  static constexpr int ACT = BM * ROW;
  static constexpr int WST = 560;  // a warp's stage: words [0, 512), qzeros [512, 520), scales [520, 552)
  static constexpr int WOFF = NA * ACT;
  static constexpr int SMEM = WOFF + (SG_THREADS / 32) * NS * WST;  // dynamic shared memory (CUDA)
  static constexpr int ROWS_PER_PASS = SG_THREADS / (CH * 32);      // token rows one staging pass covers
  // Buffer of a chunk static in the loop unrolled by NS (chunk of its first tile ≡ 0 mod NA).
  static constexpr bool STATIC_A = NS % (CH * NA) == 0;
  static_assert(NS % CH == 0 && SG_THREADS % (CH * 32) == 0 && BM % ROWS_PER_PASS == 0, "staging");
};
static_assert(AwqStreamCfg<8>::SMEM == 52480 && AwqStreamCfg<64>::SMEM == 82176,
              "src/backend/stream_gemm.rs StreamTile::awq_smem_bytes mirrors these");

// A value the compiler must keep as computed (not rematerialized or sunk into the loop).
template <class T> DSV3_DEV T sg_keep(T x) {
  if constexpr (sizeof(T) == 8) {
    asm volatile("" : "+l"(x));
  } else {
    asm volatile("" : "+r"(x));
  }
  return x;
}

template <int BM>
DSV3_DEV void stream_gemm_awq_mma(const BlockGemmArgs& g, const u32* qzeros, const f16* scales, u32 G) {
  using C = AwqStreamCfg<BM>;
  constexpr int TG = C::TG, PF = C::PF, NS = C::NS, CH = C::CH, NA = C::NA, THREADS = SG_THREADS;
  extern __shared__ __attribute__((aligned(16))) u8 sg_smem[];
  __shared__ i32 s_arow[BM];

  u32 mt_idx, nt_idx, split, expert, m_end;
  if (!sg_tile(g, BM, mt_idx, nt_idx, split, expert, m_end)) return;
  const u32 N = g.N, K = g.K, N8 = N / 8, K32 = K / 32, sk = K / AWQ_BK;
  const u32 m0 = mt_idx * BM, n0 = nt_idx * BG_BN;
  u32 kt0, kt1;
  bg_split_range(g, sk, split, kt0, kt1);
  const u32 nk = kt1 > kt0 ? kt1 - kt0 : 0;
  const u32 a_row_bytes = 2 * K, kend = kt1 * SG_TILE;  // K % 64 == 0: kend ≤ a_row_bytes

  const u32 t = tid(), warp = t / 32, ln = t % 32, grp = ln / 4, tig = ln % 4;
  const u32 row_lo = n0 + 16 * warp + grp;
  const bool wactive = n0 + 16 * warp < N;
  for (u32 i = t; i < (u32)BM; i += THREADS) s_arow[i] = (i32)bg_a_row(g, m0 + i, m_end);
  __syncthreads();
  // Valid rows of a tile are a prefix (dense: below M; grouped: the expert's rows before its
  // padding): rows past it are not staged (their B columns only reach outputs never written) and
  // token groups past it are skipped.
  u32 nrows = 0;
#pragma unroll
  for (int r = 0; r < BM; ++r)
    if (s_arow[r] >= 0) nrows = r + 1;
  const u32 ntg = (nrows + 7) / 8;

  // This lane's weight copy: 16 bytes of segment ln / 8 (column group n8w + ln / 16, block
  // 2·kt + (ln / 8) % 2), zero-filled past N. All lanes of inactive warps copy nothing real.
  const u32 n8w = (n0 + 16 * warp) / 8, n8 = n8w + ln / 16;
  const u32 w_bytes = sg_keep(n8 < N8 ? 16u : 0u);
  const u32* w_src = sg_keep(reinterpret_cast<const u32*>(g.b) + (u64)expert * N8 * K32 * 32 +
                             (n8 < N8 ? (u64)n8 * K32 * 32 : 0) + ((ln / 8) % 2) * 32 + (ln % 8) * 4 + (u64)kt0 * 64);
  // Its zero-point / scale copy (lanes 0..9): the qzeros word of n8w + ln (lanes 0, 1), the f16
  // pair of columns n0 + 16·warp + 2·(ln − 2) (lanes 2..9); one group row further per group.
  const u32 gsh = G == 128 ? 1u : 0u;  // K tile → group (G ∈ {64, 128})
  const u32 col = n0 + 16 * warp + 2 * (ln - 2);
  const bool zs_ok = ln < 2 ? n8w + ln < N8 : (ln < 10 && col < N);
  const u32 zs_bytes = sg_keep(zs_ok ? 4u : 0u);
  const u32 zs_stride = sg_keep(ln < 2 ? 4 * N8 : 2 * N);
  const u8* zs_src = sg_keep(!zs_ok ? g.b
                             : ln < 2 ? reinterpret_cast<const u8*>(qzeros + (u64)expert * (K / G) * N8 + n8w + ln)
                                      : reinterpret_cast<const u8*>(scales + (u64)expert * (K / G) * N + col));

  const u32 smem0 = smem_u32(sg_smem);
  const u32 wst0 = smem0 + C::WOFF + warp * (NS * C::WST);  // this warp's stages
  // Lanes 10..31 zero-fill one spare word of the stage (no branch around the copy).
  const u32 w_dst = sg_keep(wst0 + 16 * ln), zs_dst = sg_keep(wst0 + (ln < 10 ? 512 + 4 * ln : 552));

  // Activation chunk c (K tiles kt0 + c·CH ..) into buffer abuf: per token row and K tile, bf16
  // pair i (k = 2i, 2i + 1 of the tile) at word 8·(i % 4) + i / 4, so lane t's B words of the tile
  // are words 8t .. 8t + 7 (pair p: k = 8p + 2t; MMA (kb, kk) takes p = 4kb + 2kk and + 1). A warp
  // copies 128 contiguous bytes of one row; rows past nrows are skipped (warp-uniform), K past
  // the split is zero-filled.
  const u32 st_pi = t % 32, st_tl = (t / 32) % CH, st_r0 = t / (CH * 32);
  const u32 a_dst = sg_keep(smem0 + st_tl * SG_TILE + 4 * (8 * (st_pi % 4) + st_pi / 4) + st_r0 * C::ROW);
  const u32 a_k = sg_keep((kt0 + st_tl) * SG_TILE + 4 * st_pi);
  auto stage = [&](u32 c, u32 abuf) {
    const u32 k = a_k + c * (CH * SG_TILE);
    const u32 kb = k < kend ? 4u : 0u;  // (0: the source is not read)
    // A run-time loop over the valid rows (a warp-uniform trip count): at M = 1 one copy, not BM.
    u32 dst = a_dst + abuf * C::ACT;
#pragma unroll 1
    for (u32 r = st_r0; r < nrows; r += C::ROWS_PER_PASS, dst += C::ROWS_PER_PASS * C::ROW)
      cp_async_4_n(dst, g.a + (u64)(u32)s_arow[r] * a_row_bytes + k, kb);
  };
  // Everything local K tile j needs, into weight slot `slot` (and, at a chunk's first tile, its
  // chunk into buffer abuf): one cp.async group, its copies zero-sized past the split's end.
  auto issue = [&](u32 j, int slot, bool chunk_start, u32 abuf) {
    const bool in = j < nk;
    cp_async_16_n(w_dst + slot * C::WST, w_src + (u64)j * 64, in ? w_bytes : 0u);
    cp_async_4_n(zs_dst + slot * C::WST, zs_src + (u64)((kt0 + j) >> gsh) * zs_stride, in ? zs_bytes : 0u);
    if (chunk_start) stage(j / CH, abuf);
    cp_async_commit();
  };

  float acc[TG][4];
#pragma unroll
  for (int j = 0; j < TG; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;

  // The MMAs of the K tile in weight slot `slot`, tile tl of the chunk in buffer abuf.
  // (Offsets kept as computed, pointers formed at the use: NVVM then knows they are shared.)
  const u32 zshift = sg_keep(4 * awq_nib(grp));
  const u32 wst_o = sg_keep(C::WOFF + warp * (NS * C::WST));
  const u32 wln_o = sg_keep(4 * ln), sc_o = sg_keep(520 + 2 * grp);
  const u32 act_o = sg_keep(grp * C::ROW + 32 * tig);
  auto step = [&](int slot, u32 abuf, int tl) {
    const u8* st = sg_smem + wst_o + slot * C::WST;
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
    const u8* act = sg_smem + act_o + abuf * C::ACT + tl * SG_TILE;
#pragma unroll
    for (int j = 0; j < TG; ++j) {
      if ((u32)j >= ntg) break;
      const u32* brow = reinterpret_cast<const u32*>(act + 8 * j * C::ROW);
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
  sg_store<BM>(g, acc, ntg, mt_idx, nt_idx, m0, m_end, n0, row_lo, wactive);
}
#endif  // DSV3_CUDA

// Entries: grid (ceil(N/128), M tiles of BM rows, splits), block 256, dynamic shared memory
// StreamCfg<BM, W>::SMEM (CUDA) or the tiled paths' (HIP: (BM + 128) · 128 for the 8-bit
// GEMMs, AwqSmem's (BM + 32) · 128 for AWQ). 8-bit: K % 16 == 0; AWQ: as awq_gemm (G ∈ {64, 128}, K % G == 0, N % 8 == 0).
template <int BM>
DSV3_DEV void stream_gemm_fp8(bf16* out, const e4m3fn* a, const float* a_scales, const e4m3fn* b, const float* b_scale,
                              float* ws, u32* counters, const i32* row_ids, const i32* tile_expert, const i32* num_tiles,
                              u32 M, u32 N, u32 K, u32 a_row_div, u32 splits) {
  const BlockGemmArgs g =
      bg_args(out, a, a_scales, b, b_scale, ws, counters, row_ids, tile_expert, num_tiles, M, N, K, a_row_div, splits);
#if defined(DSV3_CUDA)
  stream_gemm_8bit<BM, Fp8MmaOp>(g);
#elif defined(DSV3_MFMA)
  block_gemm_mfma<BM, Fp8MfmaOp<true>>(g);
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
#elif defined(DSV3_MFMA)
  block_gemm_mfma<BM, Int8MfmaOp<MODE == int8_block>>(g);
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
#elif defined(DSV3_MFMA)
  awq_gemm_mfma<BM>(g, qz, scales, group);
#else
  awq_gemm_generic<BM>(g, qz, scales, group);
#endif
}

}  // namespace dsv3
