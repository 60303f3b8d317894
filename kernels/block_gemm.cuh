// Shared pieces of the tensor-core GEMMs over K-major operands (kernels/fp8_gemm.cuh,
// kernels/fp8_gemm_wgmma.cuh, kernels/quant_gemm.cuh):
//
//   - BlockGemmArgs and the row bookkeeping of the dense / grouped (fused MoE) modes: M tile t of a
//     grouped launch belongs to expert tile_expert[t] (only tiles < *num_tiles run); row r reads
//     a-row row_ids[r] / a_row_div (−1: padding, zeros) or row r itself;
//   - split-K: partial tiles added into an f32 workspace with atomics, the last CTA of an output
//     tile (arrival counters) converts the sum to bf16 and re-zeroes its workspace tile and counter;
//   - SwzLoader: cp.async copies of 128-byte K slices of ROWS rows into XOR-swizzled shared memory
//     (16-byte chunk c of row r at chunk c ^ (r & 7): ldmatrix reads 8 rows of one chunk without
//     bank conflicts), zero fill past the rows / the K end;
//   - ldsm_rows: ldmatrix.x4 fragments of such a tile (the m16n8k32 8-bit A fragment and the
//     m16n8k16 16-bit A fragment have the same byte layout, so both GEMMs share it);
//   - bg_epilogue: the m16n8 accumulator fragments → bf16 out (or the split-K workspace);
//   - block_gemm_mma: the 8-bit × 8-bit block-scaled main loop (e4m3 or s8 MMAs, chosen by an Op
//     policy: Fp8MmaOp, Int8MmaOp);
//   - block_gemm_mfma (HIP, gfx90a / gfx942: dsv3/mfma.h): the same loop on AMD matrix cores
//     (policies Fp8MfmaOp, Int8MfmaOp), with its own loader / LDS tile / fragments (MfmaStager,
//     shared with quant_gemm.cuh's awq_gemm_mfma) and epilogue (bg_epilogue_mfma);
//   - block_gemm_generic: the portable shared-memory fallback (operand bytes decoded by Fp8Dec /
//     Int8Dec): e4m3fnuz on NVIDIA, and HIP targets without MFMA.
#pragma once
#include "dsv3/dsv3.h"
#include "dsv3/mma_sm80.h"

namespace dsv3 {

constexpr int BG_BN = 128;  // N per CTA (= the weights' 128-row scale block)
constexpr int BG_BK = 128;  // bytes of K per pipeline stage (one swizzled smem row)

// Tile configurations: BM rows per CTA, warps along M and N (BN = 128 always), pipeline depth.
template <int BM_> struct BlockGemmCfg;
template <> struct BlockGemmCfg<128> { static constexpr int BM = 128, WARPS_M = 2, WARPS_N = 4, STAGES = 3; };
template <> struct BlockGemmCfg<64> { static constexpr int BM = 64, WARPS_M = 2, WARPS_N = 4, STAGES = 4; };
template <> struct BlockGemmCfg<16> { static constexpr int BM = 16, WARPS_M = 1, WARPS_N = 8, STAGES = 4; };

struct BlockGemmArgs {
  bf16* out;
  const u8* a;
  const float* a_scales;
  const u8* b;
  const float* b_scale;
  float* ws;
  u32* counters;
  const i32* row_ids;
  const i32* tile_expert;
  const i32* num_tiles;
  u32 M, N, K, a_row_div, splits;
};

// Resolves the M tile: expert, row bound. Returns false when the tile does not run.
DSV3_DEV bool bg_tile(const BlockGemmArgs& g, u32 mt, int BM, u32& expert, u32& m_end) {
  expert = 0;
  if (g.tile_expert != nullptr) {
    if ((i32)mt >= *g.num_tiles) return false;
    expert = (u32)g.tile_expert[mt];
    m_end = (u32)(*g.num_tiles) * (u32)BM;
    return true;
  }
  m_end = g.M;
  return mt * (u32)BM < g.M;
}

// The a row of output row r (−1: padding / out of range).
DSV3_DEV i64 bg_a_row(const BlockGemmArgs& g, u32 r, u32 m_end) {
  if (r >= m_end) return -1;
  if (g.row_ids == nullptr) return (i64)r;
  const i32 id = g.row_ids[r];
  return id < 0 ? -1 : (i64)((u32)id / g.a_row_div);
}

// K tiles [kt0, kt1) of split `split` when the sk tiles are cut into g.splits equal ranges (the
// last may be short or empty).
DSV3_DEV void bg_split_range(const BlockGemmArgs& g, u32 sk, u32 split, u32& kt0, u32& kt1) {
  const u32 per = (sk + g.splits - 1) / g.splits;
  kt0 = split * per;
  kt1 = min(sk, kt0 + per);
}

// The CTA's tile of a block-GEMM launch, grid (N tiles, M tiles, splits): bg_tile's expert and
// row bound, the tile origin, the 128-K tiles and this split's range of them, the expert's weight
// and its scales (block scales: this N tile's row of [sn, sk]; per channel: the expert's [N]).
struct BgCta {
  u32 nt_idx, mt_idx, expert, m_end, m0, n0, sk, kt0, kt1;
  const u8* b;
  const float* b_scale;
};
// false: the CTA's M tile does not run.
template <int BM> DSV3_DEV bool bg_cta(const BlockGemmArgs& g, bool per_tile, BgCta& c) {
  c.nt_idx = blockIdx.x;
  c.mt_idx = blockIdx.y;
  if (!bg_tile(g, c.mt_idx, BM, c.expert, c.m_end)) return false;
  const u32 sn = (g.N + BG_BN - 1) / BG_BN;
  c.m0 = c.mt_idx * BM;
  c.n0 = c.nt_idx * BG_BN;
  c.sk = (g.K + BG_BK - 1) / BG_BK;
  c.b = g.b + (u64)c.expert * g.N * g.K;
  c.b_scale = per_tile ? g.b_scale + (u64)c.expert * sn * c.sk + (u64)c.nt_idx * c.sk : g.b_scale + (u64)c.expert * g.N;
  bg_split_range(g, c.sk, blockIdx.z, c.kt0, c.kt1);
  return true;
}

#if defined(DSV3_CUDA)
DSV3_DEV float ld_cg_f32(const float* p) {
  float v;
  asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
  return v;
}
#endif

// Split-K bookkeeping after this CTA's partial tile is in `ws`: true for the CTA that finishes it.
DSV3_DEV bool bg_last_split(const BlockGemmArgs& g, u32 tile_id) {
  __shared__ u32 last;
  fence_device();
  __syncthreads();
  if (tid() == 0) {
    const u32 prev = atomic_add(&g.counters[tile_id], 1u);
    last = (prev == g.splits - 1) ? 1u : 0u;
  }
  __syncthreads();
  if (last) fence_device();
  return last != 0;
}

template <int BM>
DSV3_DEV void bg_finish_split(const BlockGemmArgs& g, u32 tile_id, u32 m0, u32 m_end, u32 n0) {
  // Sum in ws → bf16 out, and leave ws / the counter zero for the next launch.
  const u32 N = g.N;
  for (u32 i = tid(); i < (u32)BM * BG_BN; i += nthreads()) {
    const u32 r = m0 + i / BG_BN, n = n0 + i % BG_BN;
    if (r >= m_end || n >= N) continue;
    float* w = g.ws + (u64)r * N + n;
#if defined(DSV3_CUDA)
    const float v = ld_cg_f32(w);
#else
    const float v = *(volatile float*)w;
#endif
    g.out[(u64)r * N + n] = f32_to_bf16(v);
    *w = 0.0f;
  }
  if (tid() == 0) g.counters[tile_id] = 0u;
}

// Writes a warp's m16n8 accumulator fragments (rows m0 + row0 + i*16 + grp (+8), cols n0 + col0 +
// j*8 + 2*tig (+1)) as bf16, or adds them into the split-K workspace and lets the last split finish.
template <int BM, int MT, int NT>
DSV3_DEV void bg_epilogue(const BlockGemmArgs& g, const float (&acc)[MT][NT][4], u32 m0, u32 m_end, u32 n0, u32 row0,
                          u32 col0, u32 mt_idx, u32 nt_idx) {
  const u32 ln = lane(), grp = ln / 4, tig = ln % 4, N = g.N;
  if (g.splits == 1) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const u32 r = m0 + row0 + i * 16 + grp + h * 8;
        if (r >= m_end) continue;
        bf16* orow = g.out + (u64)r * N;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const u32 n = n0 + col0 + j * 8 + 2 * tig;
          const float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
          if (n + 1 < N && (N % 2 == 0)) {
            const u32 pk = (u32)f32_to_bf16(v0).bits | ((u32)f32_to_bf16(v1).bits << 16);
            *reinterpret_cast<u32*>(orow + n) = pk;
          } else {
            if (n < N) orow[n] = f32_to_bf16(v0);
            if (n + 1 < N) orow[n + 1] = f32_to_bf16(v1);
          }
        }
      }
    return;
  }
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const u32 r = m0 + row0 + i * 16 + grp + h * 8;
      if (r >= m_end) continue;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const u32 n = n0 + col0 + j * 8 + 2 * tig;
        if (n < N) atomic_add(g.ws + (u64)r * N + n, acc[i][j][2 * h]);
        if (n + 1 < N) atomic_add(g.ws + (u64)r * N + n + 1, acc[i][j][2 * h + 1]);
      }
    }
  const u32 tile_id = mt_idx * gridDim.x + nt_idx;
  if (bg_last_split(g, tile_id)) bg_finish_split<BM>(g, tile_id, m0, m_end, n0);
}

#if defined(DSV3_CUDA)
// cp.async loader of one operand: ROWS rows × 128 bytes of K per stage, each thread a fixed set of
// 16-byte chunks. Rows whose global index is < 0 (padding, past M or N) and chunks past the K end
// are zero-filled.
template <int ROWS, int THREADS> struct SwzLoader {
  static constexpr int CHUNKS = ROWS * 8;
  static constexpr int PER = (CHUNKS + THREADS - 1) / THREADS;
  static constexpr bool EXACT = CHUNKS % THREADS == 0;  // every (thread, i) owns a chunk
  const u8* src[PER];
  u32 dst[PER];
  bool ok[PER];

  // row_of(r): global row of tile row r (< 0: zeros); ld: bytes between global rows; off: the
  // operand's byte offset inside a stage.
  template <class RowOf> DSV3_DEV void init(u32 t, const u8* base, u64 ld, u32 off, RowOf row_of) {
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const u32 c = t + i * THREADS;
      const u32 r = c / 8, ch = c % 8;
      const bool in = EXACT || c < (u32)CHUNKS;
      const i64 gr = in ? row_of(r) : -1;
      ok[i] = gr >= 0;
      src[i] = base + (gr >= 0 ? (u64)gr * ld : 0) + ch * 16;
      dst[i] = in ? off + r * BG_BK + ((ch ^ (r & 7)) << 4) : 0xffffffffu;
    }
  }
  // Copies bytes [kbyte, kbyte + 128) of every row into the stage at shared address sbase.
  DSV3_DEV void issue(u32 t, u32 sbase, u32 kbyte, u32 kbytes, const void* dummy) const {
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      if (!EXACT && dst[i] == 0xffffffffu) continue;
      const u32 ch = (t + i * THREADS) % 8;
      const bool v = ok[i] && kbyte + ch * 16 < kbytes;
      cp_async_16(sbase + dst[i], v ? (const void*)(src[i] + kbyte) : dummy, v);
    }
  }
};

// ldmatrix.x4 of MT 16-row fragments of a swizzled tile at shared address base, rows row0 +
// i*16 .., 32-byte K step ks: matrices (rows 0-7, chunk 2ks), (rows 8-15, 2ks), (rows 0-7,
// 2ks+1), (rows 8-15, 2ks+1) — the A fragment of m16n8k32 (8-bit) and of m16n8k16 (16-bit).
template <int MT> DSV3_DEV void ldsm_rows(u32 (&f)[MT][4], u32 base, u32 row0, u32 ks) {
  const u32 ln = lane(), q = ln / 8, lr = ln % 8;
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    const u32 r = row0 + i * 16 + (q & 1) * 8 + lr;
    const u32 ch = 2 * ks + (q >> 1);
    ldmatrix_x4(f[i], base + r * BG_BK + ((ch ^ (r & 7)) << 4));
  }
}

// B fragments (m16n8k32, 8-bit, "col" = rows of a [N, K] tile) of NT 8-row n tiles from col0.
template <int NT> DSV3_DEV void ldsm_cols8(u32 (&f)[NT][2], u32 base, u32 col0, u32 ks) {
  const u32 ln = lane(), q = ln / 8, lr = ln % 8;
#pragma unroll
  for (int j = 0; j < NT; j += 2) {
    // matrices: (n tile j, chunk 2ks), (j, 2ks+1), (j+1, 2ks), (j+1, 2ks+1)
    const u32 r = col0 + (j + (q >> 1)) * 8 + lr;
    const u32 ch = 2 * ks + (q & 1);
    u32 x[4];
    ldmatrix_x4(x, base + r * BG_BK + ((ch ^ (r & 7)) << 4));
    f[j][0] = x[0];
    f[j][1] = x[1];
    f[j + 1][0] = x[2];
    f[j + 1][1] = x[3];
  }
}

// ---- 8-bit block-scaled main loop (NVIDIA tensor cores) --------------------------------------
//
// Op: using Acc (the MMA's accumulator: float for e4m3, i32 for s8); static void mma(Acc c[4],
// const u32 a[4], const u32 b[2]) (m16n8k32, row.col); static constexpr float FIX (a factor folded
// into the scales); static constexpr bool PER_TILE:
//   true  — scales a_scales [rows, ceil(K/128)] and b_scale [E][ceil(N/128), ceil(K/128)]: each
//           128-wide K block is accumulated by the MMAs, then promoted into the f32 result with
//           s_a[row, kb]·s_b[n/128, kb] (DESIGN §5);
//   false — scales a_scales [rows] and b_scale [E][N]: the MMAs accumulate the whole K range
//           (of this split) and the result is scaled once by s_a[row]·s_b[n].
// e4m3fn × e4m3fn → f32, 1×128 / 128×128 block scales.
struct Fp8MmaOp {
  using Acc = float;
  static constexpr bool PER_TILE = true;
  static constexpr float FIX = E4M3_MMA_FIX;
  DSV3_DEV static void mma(float (&c)[4], const u32 (&a)[4], const u32 (&b)[2]) { mma_e4m3_16832(c, a, b); }
};
// s8 × s8 → s32 (exact), block (PER_TILE) or per-channel scales.
template <bool PER_TILE_> struct Int8MmaOp {
  using Acc = i32;
  static constexpr bool PER_TILE = PER_TILE_;
  static constexpr float FIX = 1.0f;
  DSV3_DEV static void mma(i32 (&c)[4], const u32 (&a)[4], const u32 (&b)[2]) { mma_s8_16832(c, a, b); }
};

template <int BM, class Op>
DSV3_DEV void block_gemm_mma(const BlockGemmArgs& g) {
  using C = BlockGemmCfg<BM>;
  using Acc = typename Op::Acc;
  constexpr int BN = BG_BN, BK = BG_BK, STAGES = C::STAGES;
  constexpr int THREADS = 32 * C::WARPS_M * C::WARPS_N;
  constexpr int WM = BM / C::WARPS_M, WN = BN / C::WARPS_N;
  constexpr int MT = WM / 16, NT = WN / 8;
  static_assert(MT >= 1 && NT >= 2 && NT % 2 == 0, "warp tile");
  constexpr int A_BYTES = BM * BK, STAGE = (BM + BN) * BK;
  extern __shared__ __attribute__((aligned(1024))) u8 bg_smem[];

  BgCta c;
  if (!bg_cta<BM>(g, Op::PER_TILE, c)) return;
  const u32 N = g.N, K = g.K;

  const u32 t = tid(), warp = t / 32, ln = t % 32;
  const u32 wm = warp / C::WARPS_N, wn = warp % C::WARPS_N;

  SwzLoader<BM, THREADS> la;
  la.init(t, g.a, K, 0, [&](u32 r) { return bg_a_row(g, c.m0 + r, c.m_end); });
  SwzLoader<BN, THREADS> lb;
  lb.init(t, c.b, K, A_BYTES, [&](u32 r) { return c.n0 + r < N ? (i64)(c.n0 + r) : (i64)-1; });
  const u32 smem0 = smem_u32(bg_smem);

  // PER_TILE: a fresh `part` per K tile, promoted into `acc`; otherwise `whole` sums every K tile.
  float acc[MT][NT][4];
  Acc whole[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        acc[i][j][r] = 0.0f;
        whole[i][j][r] = Acc(0);
      }

  // Rows of this thread's accumulators (for the activation scales): per m16 tile, g and g + 8.
  const u32 grp = ln / 4, tig = ln % 4;
  i32 srow[MT][2];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) srow[i][h] = (i32)bg_a_row(g, c.m0 + wm * WM + i * 16 + grp + h * 8, c.m_end);

  const u32 nk = c.kt1 > c.kt0 ? c.kt1 - c.kt0 : 0;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if ((u32)s < nk) {
      la.issue(t, smem0 + s * STAGE, (c.kt0 + s) * BK, K, g.a);
      lb.issue(t, smem0 + s * STAGE, (c.kt0 + s) * BK, K, g.b);
    }
    cp_async_commit();
  }

  for (u32 it = 0; it < nk; ++it) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    {
      const u32 nx = it + STAGES - 1;
      if (nx < nk) {
        la.issue(t, smem0 + (nx % STAGES) * STAGE, (c.kt0 + nx) * BK, K, g.a);
        lb.issue(t, smem0 + (nx % STAGES) * STAGE, (c.kt0 + nx) * BK, K, g.b);
      }
      cp_async_commit();
    }
    const u32 kt = c.kt0 + it;
    // Scales of this K block (issued early; used after the MMAs).
    float sa[MT][2];
    float sb = 0.0f;
    const u32 sbase = smem0 + (it % STAGES) * STAGE;
    if constexpr (Op::PER_TILE) {
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) sa[i][h] = srow[i][h] >= 0 ? g.a_scales[(u64)srow[i][h] * c.sk + kt] : 0.0f;
      sb = c.b_scale[kt] * Op::FIX;
    }
    Acc tile_part[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) tile_part[i][j][r] = Acc(0);
    Acc(&part)[MT][NT][4] = Op::PER_TILE ? tile_part : whole;
#pragma unroll
    for (int ks = 0; ks < BK / 32; ++ks) {
      u32 af[MT][4], bfr[NT][2];
      ldsm_rows<MT>(af, sbase, wm * WM, ks);
      ldsm_cols8<NT>(bfr, sbase + A_BYTES, wn * WN, ks);
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) Op::mma(part[i][j], af[i], bfr[j]);
    }
    if constexpr (Op::PER_TILE) {
      // Promotion: acc += part · s_a · s_b.
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const float s0 = sa[i][0] * sb, s1 = sa[i][1] * sb;
          acc[i][j][0] += (float)part[i][j][0] * s0;
          acc[i][j][1] += (float)part[i][j][1] * s0;
          acc[i][j][2] += (float)part[i][j][2] * s1;
          acc[i][j][3] += (float)part[i][j][3] * s1;
        }
    }
  }
  cp_async_wait<0>();
  if constexpr (!Op::PER_TILE) {
    // One scale per row and per column, applied once.
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const u32 n = c.n0 + wn * WN + j * 8 + 2 * tig;
      const float sb0 = n < N ? c.b_scale[n] * Op::FIX : 0.0f, sb1 = n + 1 < N ? c.b_scale[n + 1] * Op::FIX : 0.0f;
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float sa = srow[i][h] >= 0 ? g.a_scales[srow[i][h]] : 0.0f;
          acc[i][j][2 * h] = (float)whole[i][j][2 * h] * (sa * sb0);
          acc[i][j][2 * h + 1] = (float)whole[i][j][2 * h + 1] * (sa * sb1);
        }
    }
  }
  bg_epilogue<BM, MT, NT>(g, acc, c.m0, c.m_end, c.n0, wm * WM, wn * WN, c.mt_idx, c.nt_idx);
}
#endif  // DSV3_CUDA

// MODE values of the INT8 GEMMs (the manifest's `Q` axis): block scales (Int8MmaOp<true>) or
// per-channel ones.
constexpr int int8_block = 0, int8_channel = 1;

#if defined(DSV3_MFMA)
// ---- 8-bit block-scaled main loop (AMD matrix cores: gfx90a, gfx942) ---------------------------
//
// Same contract as block_gemm_mma (Op::PER_TILE: per-128-K-block promotion with s_a[row, kb] ·
// s_b[n/128, kb], or per-channel s_a[row] · s_b[n] once), the same grid / split-K / grouping, 256
// threads = 4 wavefronts of 64, dynamic shared memory one stage of (BM + 128) · 128 bytes.
//
// Per K tile (128 bytes of every row): each thread loads its 16-byte chunks of the A (BM rows) and
// B (128 weight rows) tiles into registers one tile ahead, and after a barrier stores them into
// shared memory, 8-byte slot c (0..15) of tile row r at slot c ^ (r & 15): the fragment reads below
// (16 lanes = 16 consecutive rows, one slot each) then touch 16 distinct slots = all 32 banks.
// Wave (wm, wn) owns rows wm·WM .. +WM and columns wn·WN .. +WN of the output tile, in 16 × 16
// MFMA tiles. The MFMA computes D = W · Aᵀ (the weight rows as its A operand, the activation rows
// as its B operand: both read as "8 bytes of row l % 16 at K byte 8·(l / 16)" per k32 step, see
// dsv3/mfma.h), so lane l's 4 accumulator registers v hold output row m = l % 16, columns
// n = 4·(l / 16) + v of the tile: one activation scale per lane and MFMA tile, 4 consecutive bf16
// per store.
//
// Op (like Fp8MmaOp / Int8MmaOp): AccV (4 × f32 or i32); PER_TILE; FIX (folded into the
// weight scale); lds(u32) (4 operand bytes as stored in shared memory); Frag frag(u64) (8 bytes of
// a lane → its MFMA operand); AccV mma(Frag w, Frag a, AccV c) (c += one k32 step).

// Waves along M and N; BM 8 (the streaming entries' tile) uses one 16-row MFMA tile whose rows
// 8..15 are zeros, never stored.
template <int BM> struct MfmaCfg {
  static constexpr int WARPS_M = BM >= 64 ? 2 : 1, WARPS_N = 4 / WARPS_M;
  static constexpr int WM = BM / WARPS_M < 16 ? 16 : BM / WARPS_M, WN = BG_BN / WARPS_N;
  static constexpr int MT = WM / 16, NT = WN / 16;
};

// e4m3 × e4m3 → f32. FN: the operands are e4m3fn (the checkpoint's format), else e4m3fnuz.
template <bool FN> struct Fp8MfmaOp {
  using AccV = f32x4;
  static constexpr bool PER_TILE = true;
#if defined(DSV3_CDNA3)
  // gfx942 multiplies e4m3fnuz. e4m3fn bits read as fnuz are half the value (bias 8, not 7), so
  // the product is a quarter: ×4 in FIX. fn's 0x80 (−0) is fnuz's NaN: made +0 when stored.
  using Frag = u64;
  static constexpr float FIX = FN ? 4.0f : 1.0f;
  DSV3_DEV static u32 lds(u32 w) {
    if (!FN) return w;
    const u32 nz = (w & 0x7f7f7f7fu) + 0x7f7f7f7fu;  // bit 7 of a byte: its low 7 bits are non-zero
    return w ^ (w & ~nz & 0x80808080u);             // 0x80 → 0x00
  }
  DSV3_DEV static Frag frag(u64 x) { return x; }
  DSV3_DEV static AccV mma(Frag w, Frag a, AccV c) { return mfma_fp8_k32(w, a, c); }
#else
  // gfx90a has no FP8 MFMA: the codes are widened to f16, exactly (as sm_80's mma_e4m3_16832): the
  // 7 magnitude bits shifted into an f16 give value · 2^-8 (fn; fnuz: 2^-7), subnormals included,
  // and a packed f16 multiply by 2^8 (2^7) makes every value a normal f16 (e4m3's smallest,
  // 2^-9 / 2^-10, is one): CDNA2's f16 MFMA flushes denormal inputs, so the 2^-8 cannot stay in
  // the operands. Two k16 MFMAs per k32 step. (A fnuz NaN, 0x80, reads as −0.)
  struct Frag {
    f16x4 lo, hi;
  };
  static constexpr float FIX = 1.0f;
  DSV3_DEV static u32 lds(u32 w) { return w; }
  DSV3_DEV static f16x4 widen(u32 w) {
    typedef _Float16 f16x2 __attribute__((ext_vector_type(2)));
    const f16x2 k = (_Float16)(FN ? 256.0f : 128.0f);
    const u32 b01 = (w & 0xffu) | ((w & 0xff00u) << 8), b23 = ((w >> 16) & 0xffu) | ((w >> 8) & 0xff0000u);
    const u32 h01 = ((b01 & 0x007f007fu) << 7) | ((b01 & 0x00800080u) << 8);
    const u32 h23 = ((b23 & 0x007f007fu) << 7) | ((b23 & 0x00800080u) << 8);
    const f16x2 lo = __builtin_bit_cast(f16x2, h01) * k, hi = __builtin_bit_cast(f16x2, h23) * k;
    return f16x4{lo.x, lo.y, hi.x, hi.y};
  }
  DSV3_DEV static Frag frag(u64 x) { return Frag{widen((u32)x), widen((u32)(x >> 32))}; }
  DSV3_DEV static AccV mma(const Frag& w, const Frag& a, AccV c) {
    return mfma_f16_k16(w.hi, a.hi, mfma_f16_k16(w.lo, a.lo, c));
  }
#endif
};

// s8 × s8 → s32 (exact), block (PER_TILE) or per-channel scales.
template <bool PER_TILE_> struct Int8MfmaOp {
  using AccV = i32x4;
  using Frag = u64;
  static constexpr bool PER_TILE = PER_TILE_;
  static constexpr float FIX = 1.0f;
  DSV3_DEV static u32 lds(u32 w) { return w; }
  DSV3_DEV static Frag frag(u64 x) { return x; }
  DSV3_DEV static AccV mma(Frag w, Frag a, AccV c) { return mfma_i8_k32(w, a, c); }
};

template <class V> DSV3_DEV f32x4 to_f32x4(V v) { return __builtin_convertvector(v, f32x4); }

// Writes the MFMA accumulators (lane: row row0 + i·16 + l % 16, columns col0 + j·16 + 4·(l / 16)
// + v) as bf16, or adds them into the split-K workspace and lets the last split finish.
template <int BM, int MT, int NT>
DSV3_DEV void bg_epilogue_mfma(const BlockGemmArgs& g, const f32x4 (&acc)[MT][NT], u32 m0, u32 m_end, u32 n0,
                               u32 row0, u32 col0, u32 mt_idx, u32 nt_idx) {
  const u32 ln = lane(), N = g.N;
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    const u32 rl = row0 + i * 16 + ln % 16, r = m0 + rl;
    if (rl >= (u32)BM || r >= m_end) continue;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const u32 n = n0 + col0 + j * 16 + 4 * (ln / 16);
      const f32x4 v = acc[i][j];
      if (g.splits > 1) {
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (n + e < N) atomic_add(g.ws + (u64)r * N + n + e, v[e]);
      } else if (N % 4 == 0 && n + 3 < N) {
        Vec<bf16, 4> o = {{f32_to_bf16(v[0]), f32_to_bf16(v[1]), f32_to_bf16(v[2]), f32_to_bf16(v[3])}};
        store_vec<bf16, 4>(g.out + (u64)r * N + n, o);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (n + e < N) g.out[(u64)r * N + n + e] = f32_to_bf16(v[e]);
      }
    }
  }
  if (g.splits == 1) return;
  const u32 tile_id = mt_idx * gridDim.x + nt_idx;
  if (bg_last_split(g, tile_id)) bg_finish_split<BM>(g, tile_id, m0, m_end, n0);
}

// The LDS tile of the MFMA loops: ROWS rows of 128 bytes (BM activation rows, then the weight's
// rows), one stage, staged through registers one K tile ahead. Thread t owns the 16-byte chunks
// h = t % 8 of rows t / 8 + 32·i. Row r's chunk of K tile kt is read at src + kt · step, step =
// 128 bytes for rows < ROWS_A and B_STEP for the others (AWQ's weight rows hold two K tiles'
// k32 blocks interleaved); !ok rows are zeros. (A null pointer for those would hide the global
// address space from the compiler: flat loads, counted with the LDS reads.)
template <int ROWS, int ROWS_A, int B_STEP> struct MfmaStager {
  static constexpr int THREADS = 256, CHUNKS = ROWS * 8, PER = (CHUNKS + THREADS - 1) / THREADS;
  const u8* src[PER];
  bool ok[PER];
  Vec<u32, 4> stage[PER];

  DSV3_DEV static u32 row(int i) { return tid() / 8 + i * (THREADS / 8); }
  DSV3_DEV static u32 chunk() { return tid() % 8; }
  // row_src(r, p): false for a zero row, else p = the row's chunk-0 address of K tile 0.
  template <class RowSrc> DSV3_DEV void init(const u8* any, RowSrc row_src) {
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const u8* p = any;
      ok[i] = row(i) < (u32)ROWS && row_src(row(i), p);
      src[i] = (ok[i] ? p : any) + chunk() * 16;
    }
  }
  // Issues K tile kt's loads (kin false: this thread's chunk is past the K end, zeros).
  DSV3_DEV void load(u32 kt, bool kin) {
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const u32 step = row(i) < (u32)ROWS_A ? BG_BK : B_STEP;
      stage[i] = ok[i] && kin ? load_vec<u32, 4>(reinterpret_cast<const u32*>(src[i] + kt * step))
                              : Vec<u32, 4>{{0u, 0u, 0u, 0u}};
    }
  }
  // Stores the staged chunks (each word through lds(u32)), 8-byte slot c of row r at c ^ (r & 15):
  // 16 lanes reading one slot of 16 consecutive rows touch all 32 banks once.
  template <class Lds> DSV3_DEV void store(u8* smem, Lds lds) const {
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const u32 r = row(i);
      if (CHUNKS % THREADS != 0 && r >= (u32)ROWS) continue;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const Vec<u32, 2> w = {{lds(stage[i].v[2 * e]), lds(stage[i].v[2 * e + 1])}};
        store_vec<u32, 2>(reinterpret_cast<u32*>(smem + r * BG_BK + (((2 * chunk() + e) ^ (r & 15)) << 3)), w);
      }
    }
  }
  // 8 bytes of tile row r at K slot s (a lane's fragment).
  DSV3_DEV static u64 frag(const u8* smem, u32 r, u32 s) {
    return *reinterpret_cast<const u64*>(smem + r * BG_BK + ((s ^ (r & 15)) << 3));
  }
  // The activation fragments of MT 16-row MFMA tiles from row0 (lane: row l % 16, slot s); rows
  // past ROWS_A (BM 8: rows 8..15) are zeros.
  template <int MT> DSV3_DEV static void row_frags(u64 (&f)[MT], const u8* smem, u32 row0, u32 s) {
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      const u32 rl = row0 + i * 16 + lane() % 16;
      f[i] = (ROWS_A % 16 == 0 || rl < (u32)ROWS_A) ? frag(smem, rl, s) : 0ull;
    }
  }
};

template <int BM, class Op>
DSV3_DEV void block_gemm_mfma(const BlockGemmArgs& g) {
  using C = MfmaCfg<BM>;
  using AccV = typename Op::AccV;
  using Frag = typename Op::Frag;
  using Stager = MfmaStager<BM + BG_BN, BM, BG_BK>;
  constexpr int BN = BG_BN, BK = BG_BK, MT = C::MT, NT = C::NT;

  BgCta c;
  if (!bg_cta<BM>(g, Op::PER_TILE, c)) return;
  const u32 N = g.N, K = g.K;
  extern __shared__ __attribute__((aligned(1024))) u8 bg_smem[];

  const u32 t = tid(), ln = t % 64, wave = t / 64;
  const u32 row0 = (wave / C::WARPS_N) * C::WM, col0 = (wave % C::WARPS_N) * C::WN;

  // Activation row of this lane's accumulators in each MFMA tile (−1: none).
  i32 srow[MT];
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    const u32 rl = row0 + i * 16 + ln % 16;
    srow[i] = rl < (u32)BM ? (i32)bg_a_row(g, c.m0 + rl, c.m_end) : -1;
  }

  // Tile rows: the BM activation rows, then the weight rows n0 .. n0 + 127 (zeros past N).
  Stager st;
  st.init(g.a, [&](u32 r, const u8*& p) {
    const i64 gr = r < (u32)BM ? bg_a_row(g, c.m0 + r, c.m_end) : (c.n0 + r - BM < N ? (i64)(c.n0 + r - BM) : -1);
    p = (r < (u32)BM ? g.a : c.b) + (u64)(gr >= 0 ? gr : 0) * K;
    return gr >= 0;
  });
  // The loads of K tile kt: its chunks, and (PER_TILE) its scales s_a of this lane's rows and s_b.
  // They are in flight during the previous tile's MFMAs and waited for where the chunks are stored.
  // (The compiler puts the zero chunks' loads under branches, after which it cannot count the
  // loads; so nothing else waits for a load in the loop.)
  float sa[MT], sb = 0.0f;
  auto load = [&](u32 kt) {
    st.load(kt, kt * BK + Stager::chunk() * 16 < K);  // K % 16 == 0: a chunk is all in or all out
    if constexpr (Op::PER_TILE) {
#pragma unroll
      for (int i = 0; i < MT; ++i) sa[i] = srow[i] >= 0 ? g.a_scales[(u64)srow[i] * c.sk + kt] : 0.0f;
      sb = c.b_scale[kt];
    }
  };
  auto store = [&]() { st.store(bg_smem, [](u32 w) { return Op::lds(w); }); };
  auto frag = [&](u32 r, u32 s) -> Frag { return Op::frag(Stager::frag(bg_smem, r, s)); };

  f32x4 acc[MT][NT];
  AccV part[MT][NT];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      acc[i][j] = f32x4{0.0f, 0.0f, 0.0f, 0.0f};
      part[i][j] = AccV{0, 0, 0, 0};
    }

  const u32 nk = c.kt1 > c.kt0 ? c.kt1 - c.kt0 : 0;
  if (nk > 0) load(c.kt0);
  for (u32 it = 0; it < nk; ++it) {
    __syncthreads();  // every wave is done reading the previous tile
    store();
    __syncthreads();
    float ps[MT];  // this K block's promotion scales s_a · s_b, before load() replaces them
#pragma unroll
    for (int i = 0; i < MT; ++i) ps[i] = sa[i] * (sb * Op::FIX);
    if (it + 1 < nk) load(c.kt0 + it + 1);
#pragma unroll
    for (int ks = 0; ks < BK / 32; ++ks) {
      const u32 slot = 4 * ks + ln / 16;
      u64 ar[MT];
      Stager::row_frags(ar, bg_smem, row0, slot);
      Frag af[MT], wf[NT];
#pragma unroll
      for (int i = 0; i < MT; ++i) af[i] = Op::frag(ar[i]);
#pragma unroll
      for (int j = 0; j < NT; ++j) wf[j] = frag(BM + col0 + j * 16 + ln % 16, slot);
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) part[i][j] = Op::mma(wf[j], af[i], part[i][j]);
    }
    if constexpr (Op::PER_TILE) {
      // Promotion: acc += part · s_a · s_b, and a fresh part for the next K block.
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          acc[i][j] += to_f32x4(part[i][j]) * ps[i];
          part[i][j] = AccV{0, 0, 0, 0};
        }
    }
  }
  if constexpr (!Op::PER_TILE) {
    // One scale per row and per column, applied once.
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const u32 n = c.n0 + col0 + j * 16 + 4 * (ln / 16);
      f32x4 sbn;
#pragma unroll
      for (int e = 0; e < 4; ++e) sbn[e] = n + e < N ? c.b_scale[n + e] * Op::FIX : 0.0f;
#pragma unroll
      for (int i = 0; i < MT; ++i) acc[i][j] = to_f32x4(part[i][j]) * sbn * (srow[i] >= 0 ? g.a_scales[srow[i]] : 0.0f);
    }
  }
  bg_epilogue_mfma<BM, MT, NT>(g, acc, c.m0, c.m_end, c.n0, row0, col0, c.mt_idx, c.nt_idx);
}
#endif  // DSV3_MFMA

// ---- generic path (e4m3fnuz on NVIDIA, HIP targets without MFMA) --------------------------------
// Decoders of an operand byte: a float8 code, an int8.
template <class F8> struct Fp8Dec {
  DSV3_DEV static float f(u8 b) {
    F8 x;
    x.bits = b;
    return to_float(x);
  }
};
struct Int8Dec {
  DSV3_DEV static float f(u8 b) { return (float)(i8)b; }
};

// Dec::f(u8) decodes one operand byte to f32; PER_TILE as for block_gemm_mma. 256 threads,
// dynamic smem (BM + 128) · 128 bytes. Correct, not fast.
template <class Dec, bool PER_TILE, int BM>
DSV3_DEV void block_gemm_generic(const BlockGemmArgs& g) {
  constexpr int BN = BG_BN, BK = BG_BK;
  constexpr int THREADS = 256;
  constexpr int PER = BM * BN / THREADS;
  static_assert(PER * THREADS == BM * BN, "tile / threads");
  extern __shared__ __attribute__((aligned(1024))) u8 bg_smem[];
  u8* As = bg_smem;
  u8* Bs = bg_smem + BM * BK;

  BgCta c;
  if (!bg_cta<BM>(g, PER_TILE, c)) return;
  const u32 N = g.N, K = g.K;
  const u32 t = tid();

  float acc[PER];
#pragma unroll
  for (int i = 0; i < PER; ++i) acc[i] = 0.0f;
  for (u32 kt = c.kt0; kt < c.kt1; ++kt) {
    const u32 kbase = kt * BK;
    for (u32 i = t; i < (u32)BM * BK; i += THREADS) {
      const u32 r = i / BK, k = kbase + i % BK;
      const i64 ar = bg_a_row(g, c.m0 + r, c.m_end);
      As[i] = (ar >= 0 && k < K) ? g.a[(u64)ar * K + k] : (u8)0;
    }
    for (u32 i = t; i < (u32)BN * BK; i += THREADS) {
      const u32 r = i / BK, k = kbase + i % BK;
      Bs[i] = (c.n0 + r < N && k < K) ? c.b[(u64)(c.n0 + r) * K + k] : (u8)0;
    }
    __syncthreads();
#pragma unroll
    for (int o = 0; o < PER; ++o) {
      const u32 idx = t + o * THREADS;
      const u32 r = idx / BN, col = idx % BN;
      float s = 0.0f;
#pragma unroll 4
      for (int k = 0; k < BK; ++k) s += Dec::f(As[r * BK + k]) * Dec::f(Bs[col * BK + k]);
      const i64 ar = bg_a_row(g, c.m0 + r, c.m_end);
      float sa = 0.0f, sb = 0.0f;
      if (PER_TILE) {
        sa = ar >= 0 ? g.a_scales[(u64)ar * c.sk + kt] : 0.0f;
        sb = c.b_scale[kt];
      } else {
        sa = ar >= 0 ? g.a_scales[ar] : 0.0f;
        sb = c.n0 + col < N ? c.b_scale[c.n0 + col] : 0.0f;
      }
      acc[o] += s * sa * sb;
    }
    __syncthreads();
  }
#pragma unroll
  for (int o = 0; o < PER; ++o) {
    const u32 idx = t + o * THREADS;
    const u32 r = c.m0 + idx / BN, n = c.n0 + idx % BN;
    if (r >= c.m_end || n >= N) continue;
    if (g.splits == 1) g.out[(u64)r * N + n] = f32_to_bf16(acc[o]);
    else atomic_add(g.ws + (u64)r * N + n, acc[o]);
  }
  if (g.splits == 1) return;
  const u32 tile_id = c.mt_idx * gridDim.x + c.nt_idx;
  if (bg_last_split(g, tile_id)) bg_finish_split<BM>(g, tile_id, c.m0, c.m_end, c.n0);
}

// Fills BlockGemmArgs from an entry point's arguments.
DSV3_DEV BlockGemmArgs bg_args(bf16* out, const void* a, const float* a_scales, const void* b, const float* b_scale,
                               float* ws, u32* counters, const i32* row_ids, const i32* tile_expert,
                               const i32* num_tiles, u32 M, u32 N, u32 K, u32 a_row_div, u32 splits) {
  BlockGemmArgs g;
  g.out = out;
  g.a = reinterpret_cast<const u8*>(a);
  g.a_scales = a_scales;
  g.b = reinterpret_cast<const u8*>(b);
  g.b_scale = b_scale;
  g.ws = ws;
  g.counters = counters;
  g.row_ids = row_ids;
  g.tile_expert = tile_expert;
  g.num_tiles = num_tiles;
  g.M = M;
  g.N = N;
  g.K = K;
  g.a_row_div = a_row_div == 0 ? 1u : a_row_div;
  g.splits = splits == 0 ? 1u : splits;
  return g;
}

}  // namespace dsv3
