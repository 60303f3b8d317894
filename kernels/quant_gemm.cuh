// INT8 (W8A8) and AWQ (W4A16) GEMMs, dense and grouped by expert, on the tile machinery of
// kernels/block_gemm.cuh (the one the FP8 GEMM runs on: cp.async swizzled loader, ldmatrix
// fragments, split-K workspace, moe_align_tiles grouping, bf16 epilogue).
//
// int8_gemm<BM, MODE>: out[m, n] (bf16) from a int8 [M, K] and b int8 [N, K] (a Linear weight):
//   MODE 0 (block INT8): a_scales [M, ceil(K/128)] (dynamic per token group of 128), b_scale
//     [E][ceil(N/128), ceil(K/128)] (weight_scale_inv); each 128-wide K block is accumulated
//     exactly in s32 by mma.sync.m16n8k32.s8 and promoted into the f32 result with s_a·s_w;
//   MODE 1 (channel INT8, w8a8_int8): a_scales [M] (dynamic per token), b_scale [E][N]
//     (weight_scale); s32 over the whole K range of the split, scaled once by s_a[m]·s_w[n].
//   K % 16 == 0 (16-byte rows); N, K need not be multiples of 128. sm_80 / sm_89 / sm_90 all run
//   the s8 mma. HIP gfx942 / gfx90a: block_gemm_mfma (kernels/block_gemm.cuh) with
//   v_mfma_i32_16x16x32_i8 / v_mfma_i32_16x16x16i8, s32 exact as on NVIDIA (compiled, not run on
//   AMD hardware); other HIP targets: block_gemm_generic.
//
// int8_act_quant<T, GROUP, MODE>: dynamic symmetric activation quantization, GROUP 128 (per token
//   group, scales [rows, ceil(cols/128)]) or 0 (per token, scales [rows]); MODE 0: x, MODE 1:
//   silu(gate)·up of a gate_up [rows, 2·cols] row. s = max(amax, eps) / 127 and
//   q = clamp(rint(x / s), −127, 127): an IEEE f32 division and round-half-to-even, bit-identical
//   to the CPU reference (src/ops/int8.rs). GROUP 128: grid of quant_groups128 (act_quant.cuh);
//   per token: grid (rows), block 256.
//
// awq_gemm<BM>: out[m, n] (bf16) = Σ_k a[m, k] · (q[k, n] − z[k/G, n]) · s[k/G, n], a bf16 [M, K],
//   zeros / scales in the checkpoint's layout (qzeros i32 [E][K/G, N/8], nibble order
//   0,4,1,5,2,6,3,7; scales f16 [E][K/G, N]), G ∈ {64, 128}, K % G == 0, N % 8 == 0. qweight is
//   REPACKED at load time (src/backend/quant_gemm.rs `awq_repack`) from [K, N/8] into
//   [E][N/8][K/32][32 lanes] u32: the word of lane (g, t) = (lane / 4, lane % 4) for 8-column
//   group n8 and 32-row k block kb holds column n8·8 + g at k = kb·32 + {2t, 2t+8, 16+2t, 24+2t}
//   in nibbles 0..3 and k + 1 of each in nibbles 4..7 — exactly the B fragments of two m16n8k16
//   MMAs, so a warp reads one coalesced 128-byte line per n tile and k32 step and turns nibble
//   pairs into bf16x2 with a mask, an OR (0x4300 | q = 128 + q) and one fma.bf16x2 that subtracts
//   128 + z: the integer q − z is exact in bf16. The f16 scale is applied to each 64-wide K tile's
//   f32 partial (one group, or half of one), so the weights are never rounded: the only rounding is
//   f32 accumulation and the bf16 output. CTA tile BM × 128, K tile 64, 4-stage cp.async pipeline;
//   BM 16 (decode: split-K over many CTAs), 64, 128 (prefill). HIP gfx90a / gfx942: awq_gemm_mfma,
//   block_gemm_mfma's tile loop (MfmaStager, waves, bg_epilogue_mfma) reading the same repacked
//   words from LDS (one stage, (BM + 32) · 128 bytes), dequantized in registers to exact bf16
//   q − z for v_mfma_f32_16x16x16bf16_1k, the same per-64-K-tile f16 scaling (compiled, not run on
//   AMD hardware); other HIP targets: awq_gemm_generic, a per-output loop.
#pragma once
#include "dsv3/dsv3.h"
#include "block_gemm.cuh"
#include "fused_moe.cuh"
#include "act_quant.cuh"

namespace dsv3 {

// ---- INT8 × INT8 ---------------------------------------------------------------------------
// Entry: grid (ceil(N/128), M tiles, splits), block 256, dynamic smem Int8GemmSmem<BM>::BYTES.
template <int BM> struct Int8GemmSmem {
  static constexpr int STAGE = (BM + BG_BN) * BG_BK;
#if defined(DSV3_HIP)
  static constexpr int BYTES = STAGE;
#else
  static constexpr int BYTES = STAGE * BlockGemmCfg<BM>::STAGES;
#endif
};

template <int BM, int MODE>
DSV3_DEV void int8_gemm(bf16* out, const i8* a, const float* a_scales, const i8* b, const float* b_scale, float* ws,
                        u32* counters, const i32* row_ids, const i32* tile_expert, const i32* num_tiles, u32 M, u32 N,
                        u32 K, u32 a_row_div, u32 splits) {
  const BlockGemmArgs g =
      bg_args(out, a, a_scales, b, b_scale, ws, counters, row_ids, tile_expert, num_tiles, M, N, K, a_row_div, splits);
#if defined(DSV3_CUDA)
  block_gemm_mma<BM, Int8MmaOp<MODE == 0>>(g);
#elif defined(DSV3_MFMA)
  block_gemm_mfma<BM, Int8MfmaOp<MODE == 0>>(g);
#else
  block_gemm_generic<Int8Dec, MODE == 0, BM>(g);
#endif
}

// ---- activation quantization -----------------------------------------------------------------
template <class T, int MODE>
DSV3_DEV float i8q_value(const T* xr, u32 c, u32 cols) {
  if (MODE == 0) return to_float(xr[c]);
  return silu_f(to_float(xr[c])) * to_float(xr[c + cols]);
}

// i8q_code, i8_act_scale, i8q_group128 / i8q_token: act_quant.cuh (shared with norm.cuh).

// Grid: GROUP 128, quant_groups128's (16 groups per 256-thread block); per token, (rows), block
// 256. Rows past *num_tiles · bm (num_tiles non-null: padded MoE rows) are skipped. in_stride: elements between rows of x (MODE 0) or gate_up (MODE 1, up at + cols).
template <class T, int GROUP, int MODE>
DSV3_DEV void int8_act_quant(i8* DSV3_RESTRICT q, float* DSV3_RESTRICT scales, const T* DSV3_RESTRICT x, u32 rows,
                             u32 cols, u32 in_stride, const i32* DSV3_RESTRICT num_tiles, u32 bm, float eps) {
  rows = rows_of_tiles(rows, num_tiles, bm);
  if constexpr (GROUP > 0) {
    static_assert(GROUP == 128, "the vectorized quantizer takes groups of 128");
    quant_groups128<QgInt8, T, MODE>(q, scales, x, rows, cols, in_stride, eps);
  } else {
    const u32 r = blockIdx.x;
    if (r >= rows) return;
    const T* xr = x + (u64)r * in_stride;
    i8* qr = q + (u64)r * cols;
    __shared__ float scratch[32];
    float amax = 0.0f;
    for (u32 c = tid(); c < cols; c += nthreads()) amax = fmaxf(amax, fabsf(i8q_value<T, MODE>(xr, c, cols)));
    amax = block_max(amax, scratch);
    const float s = i8_act_scale(amax, eps);
    for (u32 c = tid(); c < cols; c += nthreads()) qr[c] = i8q_code(i8q_value<T, MODE>(xr, c, cols), s);
    if (tid() == 0) scales[r] = s;
  }
}

// ---- AWQ W4A16 -------------------------------------------------------------------------------
constexpr int AWQ_BK = 64;      // K elements per stage (128 bytes of bf16 per A row)
constexpr int AWQ_STAGES = 4;
constexpr int AWQ_B_BYTES = (BG_BN / 8) * 2 * 128;  // 16 column groups × 2 k32 blocks × 32 words

// HIP: awq_gemm_mfma's one stage of BM activation rows + 32 rows of weight words (the generic
// loop, on HIP targets without MFMA, needs none).
template <int BM> struct AwqSmem {
#if defined(DSV3_HIP)
  static constexpr int BYTES = (BM + 32) * 128;
#else
  static constexpr int BYTES = (BM * 128 + AWQ_B_BYTES) * AWQ_STAGES;
#endif
};

// Nibble position of column c % 8 in an AWQ word (order 0,4,1,5,2,6,3,7: column j at nibble
// ((j & 1) << 2) | (j >> 1)).
DSV3_DEV u32 awq_nib(u32 j) { return ((j & 1u) << 2) | (j >> 1); }

// The zero point of column n in quantization group gi.
DSV3_DEV u32 awq_zero(const u32* qz, u32 gi, u32 n, u32 N) {
  return (qz[(u64)gi * (N / 8) + n / 8] >> (4 * awq_nib(n % 8))) & 15u;
}

// Word index and nibble shift of weight (k, n) in the repacked layout.
DSV3_DEV void awq_repacked_pos(u32 n, u32 k, u32 K, u64& word, u32& shift) {
  const u32 n8 = n / 8, gcol = n % 8, kb = k / 32, kk = k % 32;
  const u32 s = kk / 16, r = kk % 16, t = (r % 8) / 2, hi = r % 2, second = r / 8;
  word = ((u64)n8 * (K / 32) + kb) * 32 + gcol * 4 + t;
  shift = 4 * (s * 2 + second + 4 * hi);
}

#if defined(DSV3_CUDA)
// (x & mask) | c as one LOP3: SASS LOP3 takes one 32-bit immediate, so with both constants
// immediate ptxas emits an AND and an OR; here c is a register (hoisted out of the loops).
template <u32 MASK> DSV3_DEV u32 awq_and_or(u32 x, u32 c) {
  u32 d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(x), "n"(MASK), "r"(c));
  return d;
}

// bf16x2 of −(128 + z): the addend that turns 128 + q into q − z (exact in bf16). nib = the
// zero point's word shifted so that z is its low nibble.
DSV3_DEV u32 awq_zneg(u32 nib) { return awq_and_or<0xFu>(nib, 0xC300u) * 0x10001u; }

// Nibbles h and h + 4 of a repacked word (k and k + 1 of one column) as bf16x2 of q − z: one LOP3
// (mask | 0x43004300) makes 128 + q, one fma.bf16x2 adds zneg (awq_zneg).
DSV3_DEV u32 awq_deq2(u32 w, int h, u32 zneg) {
  return fma_bf16x2(awq_and_or<0x000f000fu>(w >> (4 * h), 0x43004300u), 0x3f803f80u, zneg);
}

template <int BM>
DSV3_DEV void awq_gemm_mma(const BlockGemmArgs& g, const u32* qzeros, const f16* scales, u32 G) {
  using C = BlockGemmCfg<BM>;
  constexpr int BN = BG_BN, STAGES = AWQ_STAGES;
  constexpr int THREADS = 32 * C::WARPS_M * C::WARPS_N;
  static_assert(THREADS == 256, "one B chunk per thread");
  constexpr int WM = BM / C::WARPS_M, WN = BN / C::WARPS_N;
  constexpr int MT = WM / 16, NT = WN / 8;
  constexpr int A_BYTES = BM * 128, STAGE = A_BYTES + AWQ_B_BYTES;
  extern __shared__ __attribute__((aligned(1024))) u8 bg_smem[];

  const u32 nt_idx = blockIdx.x, mt_idx = blockIdx.y;
  u32 expert, m_end, kt0, kt1;
  if (!bg_tile(g, mt_idx, BM, expert, m_end)) return;
  const u32 N = g.N, K = g.K, N8 = N / 8, K32 = K / 32;
  const u32 m0 = mt_idx * BM, n0 = nt_idx * BN;
  const u32* qw = reinterpret_cast<const u32*>(g.b) + (u64)expert * N8 * K32 * 32;
  const u32* qz = qzeros + (u64)expert * (K / G) * N8;
  const f16* sc = scales + (u64)expert * (K / G) * N;
  bg_split_range(g, K / AWQ_BK, blockIdx.z, kt0, kt1);

  const u32 t = tid(), warp = t / 32, ln = t % 32;
  const u32 wm = warp / C::WARPS_N, wn = warp % C::WARPS_N;
  const u32 grp = ln / 4, tig = ln % 4;

  SwzLoader<BM, THREADS> la;
  la.init(t, g.a, 2ull * K, 0, [&](u32 r) { return bg_a_row(g, m0 + r, m_end); });
  // B: thread t copies 16 bytes of column group n0/8 + t/16 (256 contiguous bytes per K tile).
  const u32 b_n8 = n0 / 8 + t / 16;
  const bool b_ok = b_n8 < N8;
  const u32* b_src = qw + (b_ok ? ((u64)b_n8 * K32) * 32 : 0) + (t % 16) * 4;
  const u32 b_dst = A_BYTES + t * 16;
  const u32 smem0 = smem_u32(bg_smem);
  auto load_stage = [&](u32 kt, u32 stage) {
    const u32 sbase = smem0 + stage * STAGE;
    la.issue(t, sbase, kt * 128, 2 * K, g.a);
    cp_async_16(sbase + b_dst, b_ok ? (const void*)(b_src + (u64)kt * 64) : (const void*)g.b, b_ok);
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

  const u32 nk = kt1 > kt0 ? kt1 - kt0 : 0;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if ((u32)s < nk) load_stage(kt0 + s, s);
    cp_async_commit();
  }
  const u32 zshift = 4 * awq_nib(grp);
  for (u32 it = 0; it < nk; ++it) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    {
      const u32 nx = it + STAGES - 1;
      if (nx < nk) load_stage(kt0 + nx, nx % STAGES);
      cp_async_commit();
    }
    const u32 kt = kt0 + it;
    const u32 gi = kt * AWQ_BK / G;
    // Zero of the B-fragment column (n tile j, column grp); scales of the accumulator columns.
    u32 zneg[NT];
    float s0[NT], s1[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const u32 nb = n0 + wn * WN + j * 8;
      const u32 z = nb < N ? qz[(u64)gi * N8 + nb / 8] >> zshift : 0u;
      zneg[j] = awq_zneg(z);
      const u32 nc = nb + 2 * tig;
      s0[j] = nc < N ? to_float(sc[(u64)gi * N + nc]) : 0.0f;
      s1[j] = nc + 1 < N ? to_float(sc[(u64)gi * N + nc + 1]) : 0.0f;
    }
    float part[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) part[i][j][r] = 0.0f;

    const u32 stage = it % STAGES;
    const u32 sbase = smem0 + stage * STAGE;
    const u32* bs = reinterpret_cast<const u32*>(bg_smem + stage * STAGE + A_BYTES);
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      u32 bq[NT][4];
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const u32 w = bs[(wn * NT + j) * 64 + s * 32 + ln];
#pragma unroll
        for (int h = 0; h < 4; ++h)
          bq[j][h] = awq_deq2(w, h, zneg[j]);
      }
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        u32 af[MT][4];
        ldsm_rows<MT>(af, sbase, wm * WM, 2 * s + kk);
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
          for (int j = 0; j < NT; ++j) mma_bf16_16816(part[i][j], af[i], bq[j][2 * kk], bq[j][2 * kk + 1]);
      }
    }
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        acc[i][j][0] += part[i][j][0] * s0[j];
        acc[i][j][1] += part[i][j][1] * s1[j];
        acc[i][j][2] += part[i][j][2] * s0[j];
        acc[i][j][3] += part[i][j][3] * s1[j];
      }
  }
  cp_async_wait<0>();
  bg_epilogue<BM, MT, NT>(g, acc, m0, m_end, n0, wm * WM, wn * WN, mt_idx, nt_idx);
}
#endif  // DSV3_CUDA

// The CTA's AWQ tile (grid (ceil(N/128), M tiles, splits)): bg_tile's expert and row bound, the
// tile origin, this split's range of 64-wide K tiles, the expert's weights, zeros and scales.
struct AwqCta {
  u32 expert, m_end, m0, n0, kt0, kt1;
  const u32* qw;
  const u32* qz;
  const f16* sc;
};
// false: the CTA's M tile does not run.
template <int BM>
DSV3_DEV bool awq_cta(const BlockGemmArgs& g, const u32* qzeros, const f16* scales, u32 G, AwqCta& c) {
  if (!bg_tile(g, blockIdx.y, BM, c.expert, c.m_end)) return false;
  const u32 N8 = g.N / 8, sk = g.K / AWQ_BK;
  c.m0 = blockIdx.y * BM;
  c.n0 = blockIdx.x * BG_BN;
  c.qw = reinterpret_cast<const u32*>(g.b) + (u64)c.expert * N8 * (g.K / 32) * 32;
  c.qz = qzeros + (u64)c.expert * (g.K / G) * N8;
  c.sc = scales + (u64)c.expert * (g.K / G) * g.N;
  bg_split_range(g, sk, blockIdx.z, c.kt0, c.kt1);
  return true;
}

#if defined(DSV3_MFMA)
// AMD matrix cores (gfx90a, gfx942): block_gemm_mfma's loop — MfmaStager's register-staged,
// swizzled one-stage LDS tile, MfmaCfg's waves, D = W · Aᵀ, bg_epilogue_mfma — with
// v_mfma_f32_16x16x16bf16_1k on weights dequantized in registers. LDS rows: the BM activation
// rows (128 bytes = one 64-wide K tile), then 32 rows of awq_repack words: row 16·kb + c of K tile
// kt = the 32 words (128 bytes) of column group n0/8 + c, k32 block 2·kt + kb.
// Lane l (n = l % 16, q = l / 16) of the MFMA tile of weight columns nb .. nb + 15 needs, in k16
// step ks = 2·kb + s, W[k][nb + n] at k = 32·kb + 16·s + 4·q + e (the activation fragment's k).
// In the repacked word of lane (g, t) = (n % 8, t) that is word t = 2·(q % 2) + e / 2, nibble
// 2·s + q / 2 + 4·(e % 2) (awq_repacked_pos): one 8-byte read (words 2·(q % 2), +1 = slot
// 2·(n % 8) + q % 2) serves both steps of the k32 block. Shifted right by 4·(q / 2) and masked to
// 0x0f0f0f0f, byte b of a word is nibble 2·b + q / 2, so step s takes bytes s and s + 2 of each:
// v_cvt_f32_ubyte, − z in f32 (exact), and the f32's high half is the bf16 (|q − z| ≤ 15 needs 4
// mantissa bits). The f16 group scale multiplies each K tile's f32 partial, as on CUDA.
DSV3_DEV bf16x4 awq_mfma_deq(u32 x0, u32 x1, int s, float z) {
  const float w0 = (float)((x0 >> (8 * s)) & 0xffu) - z, w1 = (float)((x0 >> (8 * s + 16)) & 0xffu) - z;
  const float w2 = (float)((x1 >> (8 * s)) & 0xffu) - z, w3 = (float)((x1 >> (8 * s + 16)) & 0xffu) - z;
  typedef u32 u32x2 __attribute__((ext_vector_type(2)));
  const u32x2 v = {(__builtin_bit_cast(u32, w0) >> 16) | (__builtin_bit_cast(u32, w1) & 0xffff0000u),
                   (__builtin_bit_cast(u32, w2) >> 16) | (__builtin_bit_cast(u32, w3) & 0xffff0000u)};
  return __builtin_bit_cast(bf16x4, v);
}

template <int BM>
DSV3_DEV void awq_gemm_mfma(const BlockGemmArgs& g, const u32* qzeros, const f16* scales, u32 G) {
  using C = MfmaCfg<BM>;
  using Stager = MfmaStager<BM + 32, BM, 2 * 128>;  // weight rows: 2 k32 blocks (256 bytes) per K tile
  constexpr int MT = C::MT, NT = C::NT;
  extern __shared__ __attribute__((aligned(1024))) u8 bg_smem[];

  AwqCta c;
  if (!awq_cta<BM>(g, qzeros, scales, G, c)) return;
  const u32 N = g.N, K = g.K, N8 = N / 8, K32 = K / 32, m0 = c.m0, n0 = c.n0, m_end = c.m_end;
  const u32 t = tid(), ln = t % 64, wave = t / 64, q = ln / 16;
  const u32 row0 = (wave / C::WARPS_N) * C::WM, col0 = (wave % C::WARPS_N) * C::WN;

  Stager st;
  st.init(g.a, [&](u32 r, const u8*& p) {
    if (r < (u32)BM) {
      const i64 ar = bg_a_row(g, m0 + r, m_end);
      p = g.a + (u64)(ar >= 0 ? ar : 0) * 2 * K;
      return ar >= 0;
    }
    const u32 n8 = n0 / 8 + (r - BM) % 16, kb = (r - BM) / 16;
    p = reinterpret_cast<const u8*>(c.qw + ((u64)n8 * K32 + kb) * 32);
    return n8 < N8;
  });
  // Per K tile, loaded with its chunks (one tile ahead): the zero point of this lane's B-operand
  // column n0 + col0 + 16·j + l % 16, and the scales of its 4 accumulator
  // columns n0 + col0 + 16·j + 4·q .. +3 (N % 8 == 0: all in or all out).
  const u32 zshift = 4 * awq_nib(ln % 8);
  u32 zw[NT];
  Vec<u32, 2> sw[NT];
  auto load = [&](u32 kt) {
    st.load(kt, true);  // K % 64 == 0
    const u32 gi = kt * AWQ_BK / G;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const u32 nz = n0 + col0 + 16 * j + ln % 16, ns = n0 + col0 + 16 * j + 4 * q;
      zw[j] = nz < N ? c.qz[(u64)gi * N8 + nz / 8] : 0u;
      sw[j] = ns < N ? load_vec<u32, 2>(reinterpret_cast<const u32*>(c.sc + (u64)gi * N + ns)) : Vec<u32, 2>{{0u, 0u}};
    }
  };

  f32x4 acc[MT][NT];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[i][j] = f32x4{0.0f, 0.0f, 0.0f, 0.0f};

  const u32 nk = c.kt1 > c.kt0 ? c.kt1 - c.kt0 : 0;
  if (nk > 0) load(c.kt0);
  for (u32 it = 0; it < nk; ++it) {
    __syncthreads();  // every wave is done reading the previous tile
    st.store(bg_smem, [](u32 w) { return w; });
    __syncthreads();
    // This tile's zeros and scales, before load() replaces them.
    float z[NT];
    f32x4 sv[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      z[j] = (float)((zw[j] >> zshift) & 15u);
      typedef _Float16 f16x2 __attribute__((ext_vector_type(2)));
      const f16x2 lo = __builtin_bit_cast(f16x2, sw[j].v[0]), hi = __builtin_bit_cast(f16x2, sw[j].v[1]);
      sv[j] = f32x4{(float)lo.x, (float)lo.y, (float)hi.x, (float)hi.y};
    }
    if (it + 1 < nk) load(c.kt0 + it + 1);
    f32x4 part[MT][NT];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j) part[i][j] = f32x4{0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int kb = 0; kb < 2; ++kb) {
      u32 x[NT][2];
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const u32 cn = col0 + 16 * j + ln % 16;
        const u64 w = Stager::frag(bg_smem, BM + 16 * kb + cn / 8, 2 * (cn % 8) + q % 2);
        x[j][0] = ((u32)w >> (4 * (q / 2))) & 0x0f0f0f0fu;
        x[j][1] = ((u32)(w >> 32) >> (4 * (q / 2))) & 0x0f0f0f0fu;
      }
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        u64 ar[MT];
        Stager::row_frags(ar, bg_smem, row0, 4 * (2 * kb + s) + q);
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const bf16x4 wf = awq_mfma_deq(x[j][0], x[j][1], s, z[j]);
#pragma unroll
          for (int i = 0; i < MT; ++i) part[i][j] = mfma_bf16_k16(wf, __builtin_bit_cast(bf16x4, ar[i]), part[i][j]);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j) acc[i][j] += part[i][j] * sv[j];
  }
  bg_epilogue_mfma<BM, MT, NT>(g, acc, m0, m_end, n0, row0, col0, blockIdx.y, blockIdx.x);
}
#else
// Portable path (HIP targets without MFMA): one output element per thread and pass, f32 (correct,
// not fast).
template <int BM>
DSV3_DEV void awq_gemm_generic(const BlockGemmArgs& g, const u32* qzeros, const f16* scales, u32 G) {
  constexpr int BN = BG_BN, THREADS = 256, PER = BM * BN / THREADS;
  static_assert(PER * THREADS == BM * BN, "tile / threads");
  AwqCta c;
  if (!awq_cta<BM>(g, qzeros, scales, G, c)) return;
  const u32 N = g.N, K = g.K, m0 = c.m0, n0 = c.n0, m_end = c.m_end;
  const u32* qw = c.qw;
  const u32* qz = c.qz;
  const f16* sc = c.sc;
  const bf16* A = reinterpret_cast<const bf16*>(g.a);
  for (int o = 0; o < PER; ++o) {
    const u32 idx = tid() + o * THREADS;
    const u32 r = m0 + idx / BN, n = n0 + idx % BN;
    if (r >= m_end || n >= N) continue;
    const i64 ar = bg_a_row(g, r, m_end);
    float acc = 0.0f;
    if (ar >= 0) {
      for (u32 kt = c.kt0; kt < c.kt1; ++kt) {
        const u32 gi = kt * AWQ_BK / G;
        const float z = (float)awq_zero(qz, gi, n, N), s = to_float(sc[(u64)gi * N + n]);
        float part = 0.0f;
        for (u32 k = kt * AWQ_BK; k < (kt + 1) * AWQ_BK; ++k) {
          u64 w;
          u32 sh;
          awq_repacked_pos(n, k, K, w, sh);
          part += to_float(A[(u64)ar * K + k]) * ((float)((qw[w] >> sh) & 15u) - z);
        }
        acc += part * s;
      }
    }
    if (g.splits == 1) g.out[(u64)r * N + n] = f32_to_bf16(acc);
    else atomic_add(g.ws + (u64)r * N + n, acc);
  }
  if (g.splits == 1) return;
  const u32 tile_id = blockIdx.y * gridDim.x + blockIdx.x;
  if (bg_last_split(g, tile_id)) bg_finish_split<BM>(g, tile_id, m0, m_end, n0);
}
#endif  // DSV3_MFMA


// Entry: grid (ceil(N/128), M tiles, splits), block 256, dynamic smem AwqSmem<BM>::BYTES.
template <int BM>
DSV3_DEV void awq_gemm(bf16* out, const bf16* a, const i32* qweight, const i32* qzeros, const f16* scales, float* ws,
                       u32* counters, const i32* row_ids, const i32* tile_expert, const i32* num_tiles, u32 M, u32 N,
                       u32 K, u32 group, u32 a_row_div, u32 splits) {
  const BlockGemmArgs g = bg_args(out, a, nullptr, qweight, nullptr, ws, counters, row_ids, tile_expert, num_tiles, M,
                                  N, K, a_row_div, splits);
  const u32* qz = reinterpret_cast<const u32*>(qzeros);
#if defined(DSV3_CUDA)
  awq_gemm_mma<BM>(g, qz, scales, group);
#elif defined(DSV3_MFMA)
  awq_gemm_mfma<BM>(g, qz, scales, group);
#else
  awq_gemm_generic<BM>(g, qz, scales, group);
#endif
}

}  // namespace dsv3
