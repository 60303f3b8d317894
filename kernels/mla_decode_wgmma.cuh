// MLA decode (absorbed form) for sm_90a: the split-KV kernel of kernels/mla_decode.cuh (same
// arguments, scheduler metadata, workspace slots and combine kernel; see its header for the
// contract and the split scheduling) with warpgroup MMAs (wgmma) instead of mma.sync + ldmatrix.
//
// Why: with ≥ 32 query rows per sequence the mma.sync kernel is bound by shared-memory traffic
// (every warp re-reads its Q and K / V fragments through ldmatrix: ≈ 720 KB per 64-row × 64-key
// tile; 243 TFLOPS at h = 128). wgmma reads both operands straight from shared memory once per
// warpgroup instruction, with 64-row M tiles.
//
// CTA: 256 threads = two math warpgroups (WG 0, WG 1), one CTA per SM. The CTA owns BM = 64 query
// rows (row = j·H + h of one sequence; grid.y = ceil(s_q·H / 64) row blocks, padding rows are
// zero-filled and never written) and walks its KV range 64 keys (one page) at a time.
//   - S = Q·Kᵀ [64 × 64]: WG w computes keys 32w .. 32w + 31 (36 × wgmma m64n32k16, A = Q, B =
//     the K tile, both K-major 128-byte swizzled in shared memory): the two warpgroups split the
//     QKᵀ work evenly, each holds 16 f32 of S per thread.
//   - Online softmax in registers (log2 domain, causal mask inside the query block); the row maxima
//     of the two key halves are exchanged through shared memory (64 × 2 floats), so both
//     warpgroups agree on m and on the rescale factor; each writes its half of P (bf16) into a
//     64 × 64 shared tile (128-byte swizzled K-major: one atom width).
//   - O [64 × 512] f32 is split by output columns: WG w owns columns 256w .. 256w + 255 (128 f32
//     per thread), O += P·V by 4 × wgmma m64n256k16 with A = P and B = V = the first 512 columns
//     of the same K tile read MN-major (the transpose bit of 16-bit B): the cache is read once.
//   - Row sums stay per thread until the end of a segment (one exchange per segment).
// Shared memory (1024-aligned): Q [9 chunks][64 rows][128 B], K [2][9][64][128 B], P [64][128 B],
// row maxima [2][64] f32: 3·73,728 + 8,192 + 512 (+ 1,024 alignment) = 230,912 bytes. A chunk is
// 64 columns (128 bytes) of 64 rows; 16-byte piece c of row r sits at (c ^ (r & 7))·16 (what
// wgmma's 128-byte swizzle reads; 8-row atoms 1,024 bytes apart).
//
// Loads: cp.async 16-byte copies by all 256 threads (18 per thread per tile), zero fill past the
// sequence end (the NaN-poisoned unused slots of the last page are never read) and for the
// padding query rows. A paged row is 1,152 contiguous bytes, so a TMA box per page per chunk
// would work too; cp.async keeps the argument list of the mma.sync kernel (no tensor map).
//
// Pipeline per tile t (K double-buffered; Q loaded once per segment):
//   softmax(t) → bar → PV(t) issued → wait tile t + 1 landed → bar → QK(t + 1) issued →
//   wait PV(t) (wgmma.wait_group 1) → bar (buffer t free) → cp.async tile t + 2 into it →
//   wait QK(t + 1).
// The tensor cores run PV(t) and QK(t + 1) back to back; the next tile's load overlaps them and
// the softmax. What the warpgroups do not overlap: the softmax and the O rescale (both warpgroups
// do them at the same time, the tensor cores idle). Next steps (by measurement): alternate which
// warpgroup computes a whole m64n64 S per tile (FlashMLA: half the QKᵀ shared-memory operand
// traffic of two m64n32 halves, and the other warpgroup's PV overlaps the softmax), and 32-key
// sub-tiles for a deeper prefetch.
//
// Off sm_90a (other CUDA archs, NVRTC for compute_90, HIP) the entry traps: the host launches it
// only where the sm_90a cubin of this family was built and loads (src/backend/mla.rs).
#pragma once
#include "mla_decode.cuh"
#include "dsv3/sm90.h"

namespace dsv3 {
namespace mla_wg {

constexpr u32 BM = 64;                              // query rows per CTA: one wgmma M
constexpr u32 CTA_THREADS = 256;                    // two math warpgroups
constexpr u32 CHUNK = 64 * 128;                     // 64 rows × 64 bf16 columns: 8 KiB
constexpr u32 TILE = (mla::DK / 64) * CHUNK;        // Q, or one 64-key K tile: 73,728 bytes
constexpr u32 P_TILE = BM * mla::NT * 2;            // 8 KiB
constexpr u32 SMEM = 3 * TILE + P_TILE + 2 * BM * 4 + 1024;  // the host's MlaDecodePlan mirrors it
static_assert(SMEM <= 227 * 1024, "one CTA per SM");
static_assert(mla::NT == 64 && mla::DK % 64 == 0 && mla::DV == 512, "page tiles of 64 keys, 9 chunks, 512 outputs");

// The 16-byte pieces a thread copies into a [64][576] bf16 tile of 128-byte chunks: piece
// p = t % 8 of rows t / 8 and t / 8 + 32, in each of the 9 chunks (18 copies). The shared offsets
// are this thread's base plus constants (one address register), 8 threads read a 128-byte
// segment of a row.
struct TilePieces {
  u32 row, smem, gmem;  // first row; base offsets in the shared tile and in a row-major [64][576] source (bytes)
  DSV3_DEV explicit TilePieces(u32 t) : row(t / 8) {
    smem = row * 128 + (((t % 8) ^ (row & 7)) << 4);
    gmem = row * (mla::DK * 2) + (t % 8) * 16;
  }
  // Copies the tile from `src` (row-major, 576 bf16 per row) to shared `dst`; rows >= `rows`
  // are zero-filled (not read).
  DSV3_DEV void copy(u32 dst, const bf16* src, i32 rows) const {
    const unsigned char* g = reinterpret_cast<const unsigned char*>(src) + gmem;
#pragma unroll
    for (u32 h = 0; h < 2; ++h) {
      const bool ok = (i32)(row + 32 * h) < rows;
#pragma unroll
      for (u32 k = 0; k < mla::DK / 64; ++k)
        cp_async_16(dst + smem + h * 32 * 128 + k * CHUNK, ok ? g + h * 32 * (mla::DK * 2) + k * 128 : g - gmem, ok);
    }
  }
};

}  // namespace mla_wg

#if defined(DSV3_SM90A)
template <class TO>
DSV3_DEV void mla_decode_wgmma_sm90(TO* DSV3_RESTRICT out, float* DSV3_RESTRICT lse, float* DSV3_RESTRICT o_ws,
                                    float* DSV3_RESTRICT lse_ws, const bf16* DSV3_RESTRICT q,
                                    const bf16* DSV3_RESTRICT cache, const i32* DSV3_RESTRICT block_table,
                                    const i32* DSV3_RESTRICT seq_lens, const i32* DSV3_RESTRICT meta, u32 batch,
                                    u32 s_q, u32 heads, u32 max_pages, float scale) {
  using namespace mla;
  using namespace mla_wg;
  static_assert(CTA_THREADS == 8 * 32, "TilePieces: 8 threads per row, 32 rows per pass");
  extern __shared__ unsigned char smem_raw[];
  const u32 raw = smem_u32(smem_raw);
  const u32 base = (raw + 1023u) & ~1023u;
  unsigned char* sbase = smem_raw + (base - raw);
  const u32 sq = base, sk0 = base + TILE, sp = base + 3 * TILE;
  unsigned char* p_tile = sbase + 3 * TILE;
  float* red = reinterpret_cast<float*>(sbase + 3 * TILE + P_TILE);  // [2][64] row maxima / sums

  const u32 rb = blockIdx.y;
  const u32 rows_total = s_q * heads;
  if (rb * BM >= rows_total) return;
  const SplitOut<TO> dst{out, lse, o_ws, lse_ws, rows_total};
  const u32 t_id = tid(), wg = t_id / 128, ln = lane();
  const TilePieces pieces(t_id);
  const u32 r0 = (t_id % 128) / 32 * 16 + ln / 4, r1 = r0 + 8;  // this thread's rows of the 64
  const u32 gr0 = rb * BM + r0, gr1 = rb * BM + r1;
  const float sl2 = scale * 1.4426950408889634f;
  // Descriptors: Q and K (K-major) advance 32 bytes per k step of 16 inside a chunk, a chunk per
  // 4 steps; V (MN-major) 2,048 bytes per 16 keys; P (K-major) 32 bytes per 16 keys.
  const u64 dq = wgmma_desc_sw128(sq), dp = wgmma_desc_sw128(sp);

  for (PartWalk walk(meta, batch, blockIdx.x); !walk.done(); walk.next()) {
    const Segment sg = walk.segment();
    const i32 len = seq_lens[sg.b];
    const i32 vis0 = visible_keys(len, s_q, heads, gr0), vis1 = visible_keys(len, s_q, heads, gr1);
    const i32* bt = block_table + (u64)sg.b * max_pages;
    const u32 u_begin = sg.t_begin, u_end = min(sg.t_end, ((u32)len + NT - 1) / NT);

    // Tile u = page bt[u]; keys past the sequence end are zero-filled.
    auto load_k = [&](u32 u, u32 buf) { pieces.copy(sk0 + buf * TILE, cache + (u64)bt[u] * NT * DK, len - (i32)(u * NT)); };
    // Q rows of this row block (zeros past the last row) with the first K tile: one group; the
    // second tile: another.
    pieces.copy(sq, q + ((u64)sg.b * rows_total + rb * BM) * DK, (i32)(rows_total - rb * BM));
    if (u_begin < u_end) load_k(u_begin, 0);
    cp_async_commit();
    if (u_begin + 1 < u_end) load_k(u_begin + 1, 1);
    cp_async_commit();

    float s[16], o[128];
#pragma unroll
    for (u32 i = 0; i < 128; ++i) o[i] = 0.0f;
    float m0 = -f32_inf(), m1 = -f32_inf(), l0 = 0.0f, l1 = 0.0f;

    // S = Q · K[keys 32·wg ..]ᵀ of the tile in buffer `buf` (one commit group).
    auto issue_qk = [&](u32 buf) {
      const u64 dk = wgmma_desc_sw128(sk0 + buf * TILE + wg * 32 * 128);
      wgmma_fence();
#pragma unroll
      for (u32 ks = 0; ks < DK / 16; ++ks) {
        const u64 off = ((ks / 4) * CHUNK + (ks % 4) * 32) >> 4;
        if (ks == 0) wgmma_m64n32k16_bf16<false, false>(s, dq + off, dk + off);
        else wgmma_m64n32k16_bf16<true, false>(s, dq + off, dk + off);
      }
      wgmma_commit();
    };
    // O[:, 256·wg ..] += P · V, V = the first 512 columns of the tile in buffer `buf`.
    auto issue_pv = [&](u32 buf) {
      const u64 dv = wgmma_desc_sw128_mn(sk0 + buf * TILE + wg * 4 * CHUNK, CHUNK);
      wgmma_fence();
#pragma unroll
      for (u32 kk = 0; kk < NT / 16; ++kk) wgmma_m64n256k16_bf16<true, true>(o, dp + kk * 2, dv + kk * (2048 >> 4));
      wgmma_commit();
    };

    // Online softmax of S(t) (mask, scale to the log2 domain, row maxima exchanged between the
    // two key halves), its half of P into shared memory, O rescaled; ends with the barrier after
    // which P is complete.
    auto softmax = [&](u32 t) {
      const i32 key0 = (i32)(t * NT + wg * 32 + (ln & 3) * 2);
      float mx0 = -f32_inf(), mx1 = -f32_inf();
#pragma unroll
      for (u32 j = 0; j < 4; ++j) {
#pragma unroll
        for (u32 e = 0; e < 2; ++e) {
          const i32 key = key0 + (i32)(j * 8 + e);
          s[4 * j + e] = key < vis0 ? s[4 * j + e] * sl2 : -f32_inf();
          s[4 * j + 2 + e] = key < vis1 ? s[4 * j + 2 + e] * sl2 : -f32_inf();
          mx0 = fmaxf(mx0, s[4 * j + e]);
          mx1 = fmaxf(mx1, s[4 * j + 2 + e]);
        }
      }
      mx0 = fmaxf(mx0, shfl_xor(mx0, 1));
      mx0 = fmaxf(mx0, shfl_xor(mx0, 2));
      mx1 = fmaxf(mx1, shfl_xor(mx1, 1));
      mx1 = fmaxf(mx1, shfl_xor(mx1, 2));
      if ((ln & 3) == 0) {
        red[wg * BM + r0] = mx0;
        red[wg * BM + r1] = mx1;
      }
      __syncthreads();
      const float mn0 = fmaxf(m0, fmaxf(red[r0], red[BM + r0])), mn1 = fmaxf(m1, fmaxf(red[r1], red[BM + r1]));
      const float ms0 = mn0 == -f32_inf() ? 0.0f : mn0, ms1 = mn1 == -f32_inf() ? 0.0f : mn1;
      const float c0 = fexp2(m0 - ms0), c1 = fexp2(m1 - ms1);
      m0 = mn0;
      m1 = mn1;
      float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
      for (u32 j = 0; j < 4; ++j) {
        const float p00 = fexp2(s[4 * j] - ms0), p01 = fexp2(s[4 * j + 1] - ms0);
        const float p10 = fexp2(s[4 * j + 2] - ms1), p11 = fexp2(s[4 * j + 3] - ms1);
        ps0 += p00 + p01;
        ps1 += p10 + p11;
        const u32 col = wg * 32 + j * 8 + (ln & 3) * 2;  // key inside the tile
        *reinterpret_cast<u32*>(p_tile + r0 * 128 + (((col / 8) ^ (r0 & 7)) << 4) + (col % 8) * 2) = pack_bf16x2(p00, p01);
        *reinterpret_cast<u32*>(p_tile + r1 * 128 + (((col / 8) ^ (r1 & 7)) << 4) + (col % 8) * 2) = pack_bf16x2(p10, p11);
      }
      l0 = l0 * c0 + ps0;
      l1 = l1 * c1 + ps1;
#pragma unroll
      for (u32 j = 0; j < 32; ++j) {
        o[4 * j] *= c0;
        o[4 * j + 1] *= c0;
        o[4 * j + 2] *= c1;
        o[4 * j + 3] *= c1;
      }
      fence_proxy_async();  // P (generic stores) before the tensor cores read it
      __syncthreads();
    };

    if (u_begin < u_end) {
      cp_async_wait<1>();  // Q and the first tile
      fence_proxy_async();
      __syncthreads();
      issue_qk(0);
      wgmma_wait<0>();
      wgmma_pin(s);
      // Every tile but the last: PV(t) and QK(t + 1) back to back on the tensor cores. (The last
      // tile is peeled off so that no wgmma group is in flight across a branch: ptxas would
      // otherwise serialize every wgmma of the kernel.)
      for (u32 t = u_begin; t + 1 < u_end; ++t) {
        const u32 buf = (t - u_begin) & 1u;
        softmax(t);
        issue_pv(buf);
        cp_async_wait<0>();  // tile t + 1 (this thread's pieces)
        fence_proxy_async();
        __syncthreads();
        issue_qk(buf ^ 1u);
        wgmma_wait<1>();  // PV(t) done; QK(t + 1) may still run
        wgmma_pin(o);
        __syncthreads();  // both warpgroups are past PV(t): buffer `buf` and P are free
        if (t + 2 < u_end) load_k(t + 2, buf);
        cp_async_commit();
        wgmma_wait<0>();
        wgmma_pin(s);
      }
      softmax(u_end - 1);
      issue_pv((u_end - 1 - u_begin) & 1u);
      wgmma_wait<0>();
      wgmma_pin(o);
    }
    cp_async_wait<0>();  // a segment without tiles still committed its Q group

    // Row sums: across the quad, then the two key halves through shared memory (every thread is
    // past its reads of the maxima: the barriers after the last softmax).
    l0 += shfl_xor(l0, 1);
    l0 += shfl_xor(l0, 2);
    l1 += shfl_xor(l1, 1);
    l1 += shfl_xor(l1, 2);
    if ((ln & 3) == 0) {
      red[wg * BM + r0] = l0;
      red[wg * BM + r1] = l1;
    }
    __syncthreads();
    const float L0 = red[r0] + red[BM + r0], L1 = red[r1] + red[BM + r1];
    const float inv0 = row_inv(L0), inv1 = row_inv(L1);
    const u32 col0 = wg * 256 + (ln & 3) * 2;
    dst.rows(sg, [&](auto* ob, float* lb) {
#pragma unroll
      for (u32 j = 0; j < 32; ++j) {
        if (gr0 < rows_total) store2(ob + (u64)gr0 * DV + col0 + j * 8, o[4 * j] * inv0, o[4 * j + 1] * inv0);
        if (gr1 < rows_total) store2(ob + (u64)gr1 * DV + col0 + j * 8, o[4 * j + 2] * inv1, o[4 * j + 3] * inv1);
      }
      if (wg == 0 && (ln & 3) == 0) {
        if (gr0 < rows_total) lb[gr0] = row_lse2(m0, L0);
        if (gr1 < rows_total) lb[gr1] = row_lse2(m1, L1);
      }
    });
    __syncthreads();  // Q, K, P and the row buffer are reused by the next segment
  }
}
#endif  // DSV3_SM90A

// Entry: grid (num_parts, ceil(s_q·H / 64)), block 256, dynamic smem mla_wg::SMEM.
template <class TO>
DSV3_DEV void mla_decode_wgmma(TO* DSV3_RESTRICT out, float* DSV3_RESTRICT lse, float* DSV3_RESTRICT o_ws,
                               float* DSV3_RESTRICT lse_ws, const bf16* DSV3_RESTRICT q, const bf16* DSV3_RESTRICT cache,
                               const i32* DSV3_RESTRICT block_table, const i32* DSV3_RESTRICT seq_lens,
                               const i32* DSV3_RESTRICT meta, u32 batch, u32 s_q, u32 heads, u32 max_pages, float scale) {
#if defined(DSV3_SM90A)
  mla_decode_wgmma_sm90<TO>(out, lse, o_ws, lse_ws, q, cache, block_table, seq_lens, meta, batch, s_q, heads, max_pages, scale);
#else
  trap();
#endif
}

}  // namespace dsv3
