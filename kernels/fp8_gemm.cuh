// FP8 block-scaled GEMM (DeepSeek-V3 linears), dense and grouped by expert:
//
//   out[m, n] (bf16) = Σ_kb  s_a[m, kb] · s_b[n/128, kb] · Σ_{k in block kb} a[m, k] · b[n, k]
//
// a: e4m3 [M, K] with per-token-group scales a_scales [M, ceil(K/128)]; b: e4m3 [N, K] (a Linear
// weight [out, in]) with 128×128 block scales b_scale [ceil(N/128), ceil(K/128)] (weight_scale_inv).
// Each 128-wide K block is accumulated in f32 by the tensor cores, then promoted into the f32
// result with s_a·s_b (DESIGN §5). Edge blocks may be partial in N and K (K % 16 == 0: 16-byte
// rows for cp.async).
//
// One CTA computes a BM × 128 tile of out (BN = 128 = the weight's scale block, so s_b is one
// number per K block). K is walked in 128-byte tiles through a STAGES-deep cp.async pipeline into
// XOR-swizzled shared memory (16-byte chunk c of row r lives at chunk c ^ (r & 7): ldmatrix reads
// 8 rows of one chunk without bank conflicts). Warps read fragments with ldmatrix.x4 and issue
//   sm_89+ (compute_89 PTX, sm_90a SASS): mma.sync.m16n8k32 e4m3·e4m3 → f32;
//   sm_80 (compute_80 PTX): the same e4m3 fragments widened in registers to f16 (exact: an e4m3
//     code shifted into an f16 is the value · 2^-8, subnormals included) and two mma.sync.m16n8k16
//     f16 per k32 step; the 2^16 is folded into the promotion scale. (A100 serves FP8 weights.)
//   HIP (gfx90a / gfx942, e4m3fn or e4m3fnuz): a generic shared-memory tile loop in f32 (compiles
//     from the same source; correct, not fast: MFMA is future work).
//
// Split-K (small M: weights stream from many SMs at once): blockIdx.z takes a contiguous range of
// K tiles; partial tiles are added into an f32 workspace `ws` [rows, N] with atomics, and the last
// CTA of an output tile (counted in `counters`, one per (m tile, n tile)) converts the sum to bf16,
// then re-zeroes its workspace tile and its counter, so `ws` and `counters` stay zero between
// launches (zero them once at allocation). splits == 1 writes bf16 directly and touches neither.
//
// Grouped (fused MoE): with `tile_expert` non-null, M tile t belongs to expert tile_expert[t]
// (b, b_scale offset by that expert) and only tiles < *num_tiles run; with `row_ids` non-null,
// row r of the tile reads a-row row_ids[r] / a_row_div (−1: a padding row, read as zeros); out
// rows are the padded rows r. Tiles never straddle experts (moe_align_tiles pads each expert's
// rows to BM).
#pragma once
#include "dsv3/dsv3.h"

namespace dsv3 {

// Tile configurations: BM rows per CTA, warps along M and N (BN = 128 always), pipeline depth.
template <int BM_> struct Fp8GemmCfg;
template <> struct Fp8GemmCfg<128> { static constexpr int BM = 128, WARPS_M = 2, WARPS_N = 4, STAGES = 3; };
template <> struct Fp8GemmCfg<64> { static constexpr int BM = 64, WARPS_M = 2, WARPS_N = 4, STAGES = 4; };
template <> struct Fp8GemmCfg<16> { static constexpr int BM = 16, WARPS_M = 1, WARPS_N = 8, STAGES = 4; };

constexpr int FP8G_BN = 128;
constexpr int FP8G_BK = 128;

// Dynamic shared memory of one CTA (the Rust dispatch computes the same numbers).
template <int BM> struct Fp8GemmSmem {
  static constexpr int STAGE = (BM + FP8G_BN) * FP8G_BK;
#if defined(DSV3_HIP)
  static constexpr int BYTES = STAGE;
#else
  static constexpr int BYTES = STAGE * Fp8GemmCfg<BM>::STAGES;
#endif
};

// Per-row metadata shared by both code paths.
struct Fp8GemmArgs {
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

#if defined(DSV3_CUDA)
// ---- PTX helpers (NVIDIA) -------------------------------------------------------------------
#if defined(__CUDACC_RTC__)
DSV3_DEV u32 smem_u32(const void* p) {  // NVRTC: no reliance on the intrinsic's declaration
  u64 a;
  asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
  return (u32)a;
}
#else
DSV3_DEV u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }
#endif

DSV3_DEV void cp_async16(u32 dst, const void* src, bool pred) {
  const int n = pred ? 16 : 0;  // 0: zero-fill the 16 bytes
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
DSV3_DEV void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> DSV3_DEV void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

DSV3_DEV void ldmatrix_x4(u32 r[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

#if __CUDA_ARCH__ >= 890
constexpr float FP8G_MMA_FIX = 1.0f;
#else
// The f16 widening below carries 2^-8 per operand.
constexpr float FP8G_MMA_FIX = 65536.0f;
// Two e4m3fn codes (bytes lo, hi of x selected by `sel`) → f16x2 of value · 2^-8.
DSV3_DEV u32 e4m3x2_to_f16x2_scaled(u32 x, u32 sel) {
  u32 p;  // [b_lo, 0, b_hi, 0]
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(p) : "r"(x), "r"(0u), "r"(sel));
  return ((p & 0x007f007fu) << 7) | ((p & 0x00800080u) << 8);
}
DSV3_DEV void mma_f16_16816(float c[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
#endif

// c += a(16×32 e4m3, row) · b(32×8 e4m3, col), f32 accumulate (value · 2^-16 on sm_80).
DSV3_DEV void mma_e4m3_16832(float c[4], const u32 a[4], const u32 b[2]) {
#if __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  // The thread's 4 consecutive k of each fp8 register map to the f16 mma's k pairs
  // {2t, 2t+1} and {2t+8, 2t+9}: the same permutation of k for A and B, so the sum is the same.
  mma_f16_16816(c, e4m3x2_to_f16x2_scaled(a[0], 0x4140u), e4m3x2_to_f16x2_scaled(a[1], 0x4140u),
                e4m3x2_to_f16x2_scaled(a[0], 0x4342u), e4m3x2_to_f16x2_scaled(a[1], 0x4342u),
                e4m3x2_to_f16x2_scaled(b[0], 0x4140u), e4m3x2_to_f16x2_scaled(b[0], 0x4342u));
  mma_f16_16816(c, e4m3x2_to_f16x2_scaled(a[2], 0x4140u), e4m3x2_to_f16x2_scaled(a[3], 0x4140u),
                e4m3x2_to_f16x2_scaled(a[2], 0x4342u), e4m3x2_to_f16x2_scaled(a[3], 0x4342u),
                e4m3x2_to_f16x2_scaled(b[1], 0x4140u), e4m3x2_to_f16x2_scaled(b[1], 0x4342u));
#endif
}

DSV3_DEV float ld_cg_f32(const float* p) {
  float v;
  asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
  return v;
}
#endif  // DSV3_CUDA

// Resolves the M tile: expert, first row, row bound. Returns false when the tile does not run.
DSV3_DEV bool fp8g_tile(const Fp8GemmArgs& g, u32 mt, int BM, u32& expert, u32& m_end) {
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
DSV3_DEV i64 fp8g_a_row(const Fp8GemmArgs& g, u32 r, u32 m_end) {
  if (r >= m_end) return -1;
  if (g.row_ids == nullptr) return (i64)r;
  const i32 id = g.row_ids[r];
  return id < 0 ? -1 : (i64)((u32)id / g.a_row_div);
}

// Split-K bookkeeping after this CTA's partial tile is in `ws`: true for the CTA that finishes it.
DSV3_DEV bool fp8g_last_split(const Fp8GemmArgs& g, u32 tile_id) {
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
DSV3_DEV void fp8g_finish_split(const Fp8GemmArgs& g, u32 tile_id, u32 m0, u32 m_end, u32 n0) {
  // Sum in ws → bf16 out, and leave ws / the counter zero for the next launch.
  const u32 N = g.N;
  for (u32 i = tid(); i < (u32)BM * FP8G_BN; i += nthreads()) {
    const u32 r = m0 + i / FP8G_BN, n = n0 + i % FP8G_BN;
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

#if defined(DSV3_CUDA)
// ---- tensor-core path (NVIDIA) ----------------------------------------------------------------
template <int BM>
DSV3_DEV void fp8_gemm_mma(const Fp8GemmArgs& g) {
  using C = Fp8GemmCfg<BM>;
  constexpr int BN = FP8G_BN, BK = FP8G_BK, STAGES = C::STAGES;
  constexpr int THREADS = 32 * C::WARPS_M * C::WARPS_N;
  constexpr int WM = BM / C::WARPS_M, WN = BN / C::WARPS_N;
  constexpr int MT = WM / 16, NT = WN / 8;
  static_assert(MT >= 1 && NT >= 2 && NT % 2 == 0, "warp tile");
  constexpr int A_BYTES = BM * BK, STAGE = (BM + BN) * BK;
  extern __shared__ __attribute__((aligned(1024))) u8 fp8g_smem[];

  const u32 nt_idx = blockIdx.x, mt_idx = blockIdx.y, split = blockIdx.z;
  u32 expert, m_end;
  if (!fp8g_tile(g, mt_idx, BM, expert, m_end)) return;
  const u32 N = g.N, K = g.K;
  const u32 m0 = mt_idx * BM, n0 = nt_idx * BN;
  const u32 sk = (K + BK - 1) / BK, sn = (N + BN - 1) / BN;
  const u8* B = g.b + (u64)expert * N * K;
  const float* b_scale = g.b_scale + (u64)expert * sn * sk + (u64)nt_idx * sk;

  // K tiles of this split.
  const u32 per = (sk + g.splits - 1) / g.splits;
  const u32 kt0 = split * per, kt1 = min(sk, kt0 + per);

  const u32 t = tid(), warp = t / 32, ln = t % 32;
  const u32 wm = warp / C::WARPS_N, wn = warp % C::WARPS_N;

  // Loader: each thread copies fixed 16-byte chunks of every stage.
  constexpr int A_CHUNKS = BM * 8, B_CHUNKS = BN * 8;
  constexpr int A_PER = (A_CHUNKS + THREADS - 1) / THREADS, B_PER = B_CHUNKS / THREADS;
  const u8* a_src[A_PER];
  u32 a_dst[A_PER];
  bool a_ok[A_PER];
#pragma unroll
  for (int i = 0; i < A_PER; ++i) {
    const u32 c = t + i * THREADS;
    const u32 r = c / 8, ch = c % 8;
    const i64 ar = (c < (u32)A_CHUNKS) ? fp8g_a_row(g, m0 + r, m_end) : -1;
    a_ok[i] = ar >= 0;
    a_src[i] = g.a + (ar >= 0 ? (u64)ar * K : 0) + ch * 16;
    a_dst[i] = (c < (u32)A_CHUNKS) ? r * BK + ((ch ^ (r & 7)) << 4) : 0xffffffffu;
  }
  const u8* b_src[B_PER];
  u32 b_dst[B_PER];
  bool b_ok[B_PER];
#pragma unroll
  for (int i = 0; i < B_PER; ++i) {
    const u32 c = t + i * THREADS;
    const u32 r = c / 8, ch = c % 8;
    b_ok[i] = n0 + r < N;
    b_src[i] = B + (b_ok[i] ? (u64)(n0 + r) * K : 0) + ch * 16;
    b_dst[i] = A_BYTES + r * BK + ((ch ^ (r & 7)) << 4);
  }
  const u32 smem0 = smem_u32(fp8g_smem);
  auto load_stage = [&](u32 kt, u32 stage) {
    const u32 kbase = kt * BK;
    const u32 sbase = smem0 + stage * STAGE;
#pragma unroll
    for (int i = 0; i < A_PER; ++i) {
      if (a_dst[i] == 0xffffffffu) continue;
      const u32 ch = (t + i * THREADS) % 8;
      const bool ok = a_ok[i] && kbase + ch * 16 < K;
      cp_async16(sbase + a_dst[i], ok ? (const void*)(a_src[i] + kbase) : (const void*)g.a, ok);
    }
#pragma unroll
    for (int i = 0; i < B_PER; ++i) {
      const u32 ch = (t + i * THREADS) % 8;
      const bool ok = b_ok[i] && kbase + ch * 16 < K;
      cp_async16(sbase + b_dst[i], ok ? (const void*)(b_src[i] + kbase) : (const void*)g.b, ok);
    }
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

  // Rows of this thread's accumulators (for the activation scales): per m16 tile, g and g + 8.
  const u32 grp = ln / 4, tig = ln % 4;
  i32 srow[MT][2];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) srow[i][h] = (i32)fp8g_a_row(g, m0 + wm * WM + i * 16 + grp + h * 8, m_end);

  const u32 nk = kt1 > kt0 ? kt1 - kt0 : 0;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if ((u32)s < nk) load_stage(kt0 + s, s);
    cp_async_commit();
  }

  // ldmatrix lane addressing: matrix q = lane / 8, row within it lane % 8.
  const u32 q = ln / 8, lr = ln % 8;
  for (u32 it = 0; it < nk; ++it) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    {
      const u32 nx = it + STAGES - 1;
      if (nx < nk) load_stage(kt0 + nx, nx % STAGES);
      cp_async_commit();
    }
    const u32 kt = kt0 + it;
    // Scales of this K block (issued early; used after the MMAs).
    float sa[MT][2];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) sa[i][h] = srow[i][h] >= 0 ? g.a_scales[(u64)srow[i][h] * sk + kt] : 0.0f;
    const float sb = b_scale[kt] * FP8G_MMA_FIX;

    const u32 sbase = smem0 + (it % STAGES) * STAGE;
    float part[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) part[i][j][r] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < BK / 32; ++ks) {
      u32 af[MT][4], bfr[NT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        // matrices: (rows 0-7, chunk 2ks), (rows 8-15, 2ks), (rows 0-7, 2ks+1), (rows 8-15, 2ks+1)
        const u32 r = wm * WM + i * 16 + (q & 1) * 8 + lr;
        const u32 ch = 2 * ks + (q >> 1);
        ldmatrix_x4(af[i], sbase + r * BK + ((ch ^ (r & 7)) << 4));
      }
#pragma unroll
      for (int j = 0; j < NT; j += 2) {
        // matrices: (n tile j, chunk 2ks), (j, 2ks+1), (j+1, 2ks), (j+1, 2ks+1)
        const u32 r = wn * WN + (j + (q >> 1)) * 8 + lr;
        const u32 ch = 2 * ks + (q & 1);
        u32 x[4];
        ldmatrix_x4(x, sbase + A_BYTES + r * BK + ((ch ^ (r & 7)) << 4));
        bfr[j][0] = x[0];
        bfr[j][1] = x[1];
        bfr[j + 1][0] = x[2];
        bfr[j + 1][1] = x[3];
      }
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) mma_e4m3_16832(part[i][j], af[i], bfr[j]);
    }
    // Promotion: acc += part · s_a · s_b.
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const float s0 = sa[i][0] * sb, s1 = sa[i][1] * sb;
        acc[i][j][0] += part[i][j][0] * s0;
        acc[i][j][1] += part[i][j][1] * s0;
        acc[i][j][2] += part[i][j][2] * s1;
        acc[i][j][3] += part[i][j][3] * s1;
      }
  }
  cp_async_wait<0>();

  // Epilogue. Fragment (i, j): rows m0 + wm*WM + i*16 + grp (+8), cols n0 + wn*WN + j*8 + 2*tig (+1).
  if (g.splits == 1) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const u32 r = m0 + wm * WM + i * 16 + grp + h * 8;
        if (r >= m_end) continue;
        bf16* orow = g.out + (u64)r * N;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const u32 n = n0 + wn * WN + j * 8 + 2 * tig;
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
      const u32 r = m0 + wm * WM + i * 16 + grp + h * 8;
      if (r >= m_end) continue;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const u32 n = n0 + wn * WN + j * 8 + 2 * tig;
        if (n < N) atomicAdd(g.ws + (u64)r * N + n, acc[i][j][2 * h]);
        if (n + 1 < N) atomicAdd(g.ws + (u64)r * N + n + 1, acc[i][j][2 * h + 1]);
      }
    }
  const u32 tile_id = mt_idx * gridDim.x + nt_idx;
  if (fp8g_last_split(g, tile_id)) fp8g_finish_split<BM>(g, tile_id, m0, m_end, n0);
}
#endif  // DSV3_CUDA

// ---- generic path (HIP; also any float8 type) ---------------------------------------------------
template <class F8, int BM>
DSV3_DEV void fp8_gemm_generic(const Fp8GemmArgs& g) {
  constexpr int BN = FP8G_BN, BK = FP8G_BK;
  constexpr int THREADS = 256;
  constexpr int PER = BM * BN / THREADS;
  static_assert(PER * THREADS == BM * BN, "tile / threads");
  extern __shared__ __attribute__((aligned(1024))) u8 fp8g_smem[];
  u8* As = fp8g_smem;
  u8* Bs = fp8g_smem + BM * BK;

  const u32 nt_idx = blockIdx.x, mt_idx = blockIdx.y, split = blockIdx.z;
  u32 expert, m_end;
  if (!fp8g_tile(g, mt_idx, BM, expert, m_end)) return;
  const u32 N = g.N, K = g.K;
  const u32 m0 = mt_idx * BM, n0 = nt_idx * BN;
  const u32 sk = (K + BK - 1) / BK, sn = (N + BN - 1) / BN;
  const u8* B = g.b + (u64)expert * N * K;
  const float* b_scale = g.b_scale + (u64)expert * sn * sk + (u64)nt_idx * sk;
  const u32 per = (sk + g.splits - 1) / g.splits;
  const u32 kt0 = split * per, kt1 = min(sk, kt0 + per);
  const u32 t = tid();

  float acc[PER];
#pragma unroll
  for (int i = 0; i < PER; ++i) acc[i] = 0.0f;
  for (u32 kt = kt0; kt < kt1; ++kt) {
    const u32 kbase = kt * BK;
    for (u32 i = t; i < (u32)BM * BK; i += THREADS) {
      const u32 r = i / BK, k = kbase + i % BK;
      const i64 ar = fp8g_a_row(g, m0 + r, m_end);
      As[i] = (ar >= 0 && k < K) ? g.a[(u64)ar * K + k] : (u8)0;
    }
    for (u32 i = t; i < (u32)BN * BK; i += THREADS) {
      const u32 r = i / BK, k = kbase + i % BK;
      Bs[i] = (n0 + r < N && k < K) ? B[(u64)(n0 + r) * K + k] : (u8)0;
    }
    __syncthreads();
    const float sb = b_scale[kt];
#pragma unroll
    for (int o = 0; o < PER; ++o) {
      const u32 idx = t + o * THREADS;
      const u32 r = idx / BN, c = idx % BN;
      float s = 0.0f;
#pragma unroll 4
      for (int k = 0; k < BK; ++k) {
        F8 x, y;
        x.bits = As[r * BK + k];
        y.bits = Bs[c * BK + k];
        s += to_float(x) * to_float(y);
      }
      const i64 ar = fp8g_a_row(g, m0 + r, m_end);
      const float sa = ar >= 0 ? g.a_scales[(u64)ar * sk + kt] : 0.0f;
      acc[o] += s * sa * sb;
    }
    __syncthreads();
  }
#pragma unroll
  for (int o = 0; o < PER; ++o) {
    const u32 idx = t + o * THREADS;
    const u32 r = m0 + idx / BN, n = n0 + idx % BN;
    if (r >= m_end || n >= N) continue;
    if (g.splits == 1) g.out[(u64)r * N + n] = f32_to_bf16(acc[o]);
    else atomic_add(g.ws + (u64)r * N + n, acc[o]);
  }
  if (g.splits == 1) return;
  const u32 tile_id = mt_idx * gridDim.x + nt_idx;
  if (fp8g_last_split(g, tile_id)) fp8g_finish_split<BM>(g, tile_id, m0, m_end, n0);
}

template <class F8> struct Fp8IsFn { static constexpr bool value = false; };
template <> struct Fp8IsFn<e4m3fn> { static constexpr bool value = true; };

// Entry: grid (ceil(N/128), M tiles, splits), block 32·WARPS_M·WARPS_N (CUDA, e4m3fn) or 256
// (generic), dynamic smem Fp8GemmSmem<BM>::BYTES (generic: (BM + 128) · 128).
template <class F8, int BM>
DSV3_DEV void fp8_gemm(bf16* out, const F8* a, const float* a_scales, const F8* b, const float* b_scale, float* ws,
                       u32* counters, const i32* row_ids, const i32* tile_expert, const i32* num_tiles, u32 M, u32 N,
                       u32 K, u32 a_row_div, u32 splits) {
  Fp8GemmArgs g;
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
#if defined(DSV3_CUDA)
  if constexpr (Fp8IsFn<F8>::value) {
    fp8_gemm_mma<BM>(g);
  } else {
    fp8_gemm_generic<F8, BM>(g);
  }
#else
  fp8_gemm_generic<F8, BM>(g);
#endif
}

}  // namespace dsv3
