// MLA decode (absorbed form) over a paged bf16 latent cache: split-KV across SMs, tensor cores
// (mma.sync m16n8k16 bf16, cp.async double buffering), combine kernel, and the tiny scheduler
// kernel that computes the split metadata once per decode step.
//
// Shapes (V3: DK = 576 = 512 latent + 64 rope, DV = 512, page = 64 tokens):
//   q           [B, s_q, H, DK] bf16       (q_nope already absorbed: [q_lat | q_pe])
//   cache       [pages, 64, DK] bf16       each token's [c_kv | k_pe]
//   block_table [B, max_pages] i32, seq_lens [B] i32 (keys in the cache, the s_q new ones included)
//   out         [B, s_q, H, DV] (bf16 or f32), lse [B, s_q, H] f32 (natural log of Σ exp(scale·s))
// Query j of a sequence of length L sees keys 0 .. L - s_q + j (causal inside the query block).
//
// Rows: the s_q·H query rows of a sequence are packed into the MMA M dimension, BM = 16·MW rows
// per block (MW = 1, 2, 4); more rows take more row blocks (grid.y). A tile is one 64-key page.
//
// Scheduling (FlashMLA-style): the tiles of all sequences are laid end to end (cum[b] = tiles
// before sequence b) and cut into num_parts equal ranges of T tiles (grid.x = num_parts, sized
// to fill the GPU once). A block walks its range; a sequence wholly inside one range is written
// straight to out / lse; a sequence cut across ranges writes normalized partials (o, lse) to a
// workspace slot (2·part for the range's first segment, 2·part + 1 for its last) and the combine
// kernel merges them. The metadata depends only on seq_lens and num_parts, so one fixed-size
// buffer serves every step of a CUDA graph (mla_decode_metadata runs inside it).
//
// meta (i32): [0] total tiles, [1] T, [2] num_parts, [3] batch, [4 + b] cum[b] for b in 0..=B.
//
// Block of the split kernel: 8 warps. Warp w owns m-tile w % MW and key group g = w / MW of the
// NG = 8 / MW groups: S = Q·Kᵀ for its 16 rows × 8·MW keys (K of 576 in 36 k-steps), softmax
// statistics exchanged through shared memory, P (bf16) through shared memory, then O += P·V for
// its 16 rows × 64·MW of the 512 output columns (V = the first 512 columns of the same K tile,
// read with ldmatrix.trans). Shared memory: Q [BM][576], K [2][64][576] (rows XOR-swizzled in
// 16-byte chunks: conflict-free ldmatrix), P [BM][64], reductions: 16·MW·1152 + 147456 +
// 16·MW·128 + 512 bytes (MW = 4: 229888, fits the H200's 227 KiB; sm_80 / sm_89 PTX runs on it).
//
// HIP (gfx90a, gfx942): the same contract and scheduling on the matrix cores (bf16 MFMA 16x16x16,
// 32-key tiles, 64 KiB of LDS; mla_decode_split_mfma below). Compiled, not run on AMD hardware.
//
// FP8 latent cache (`--kv-cache-dtype fp8_e4m3`, FlashMLA's layout): cache [pages, 64, 656] u8,
// each token row 656 bytes:
//   bytes [0, 512)    the 512 latent values c_kv as e4m3fn, group g = values 128g .. 128g + 127
//   bytes [512, 528)  4 f32 scales, one per group: s_g = max(amax_g, 1e-10) / 448
//                     (dequant: c_kv[i] = e4m3(byte i) * s_{i / 128})
//   bytes [528, 656)  the 64 rope values k_pe as bf16 (not quantized)
// Quantize on write (mla_cache_write_fp8): byte = e4m3fn(x / s_g), round to nearest even,
// saturating to +-448 (the same rule as ops::mla_fp8 on the CPU, bit for bit).
// The fp8 decode kernels (mla_decode_fp8_*, mla_decode_t32_fp8_*) are the same template with the
// cache row type TC = e4m3fn: a 656-byte-row tile goes to a raw staging buffer with cp.async,
// is dequantized into the one bf16 [TN][576] tile (bf16(e4m3 * s), rope copied) that the shared
// mma.sync code reads, and the next tile's raw load overlaps this tile's MMAs. Shared memory:
// 16*MW*1152 + TN*1152 + TN*656 + 16*MW*TN*2 + NG*16*MW*4 bytes.
#pragma once
#include "dsv3/dsv3.h"
#include "dsv3/mma_sm80.h"
#include "dsv3/mfma_bf16.h"
#include "mla_fp8_row.cuh"

namespace dsv3 {
namespace mla {

constexpr u32 DK = 576, DV = 512, NT = 64, CHUNKS = DK / 8, ROW_BYTES = DK * 2;
constexpr u32 THREADS = 256, WARPS = THREADS / 32;
constexpr u32 META_HDR = 4;
// Shared memory a split-kernel block may use: 227 KiB of an H100 / H200 SM for the page-tile
// kernel (one block per SM), 113 KiB for the 32-key-tile one (two per SM). The fp8-cache kernel
// takes a second raw tile buffer where it fits (the host's MlaDecodePlan::smem_bytes mirrors it).
constexpr u32 SMEM_PAGE_TILES = 227 * 1024, SMEM_HALF_TILES = 113 * 1024;

// FP8 cache rows: the F8_* layout constants come from mla_fp8_row.cuh (see the top of this file).
static_assert(F8_LATENT == DV && F8_LATENT + F8_ROPE_DIM == DK, "fp8 row widths");

// The cache row formats: TC = bf16 (576 bf16 values) or e4m3fn (the 656-byte fp8 row). `elem` is
// the pointer type of the cache argument.
template <class TC> struct CacheRow;
template <> struct CacheRow<bf16> {
  using elem = bf16;
  static constexpr bool FP8 = false;
};
template <> struct CacheRow<e4m3fn> {
  using elem = u8;
  static constexpr bool FP8 = true;
};

// Elements (of the cache's pointer type) per token row.
DSV3_DEV u64 row_elems(const bf16*) { return DK; }
DSV3_DEV u64 row_elems(const u8*) { return F8_ROW; }

// Byte offset of 16-byte chunk `chunk` of row `row` in a [rows][576] bf16 tile (XOR swizzle of
// the chunk's low 3 bits by the row: 8 consecutive rows at one chunk hit 8 distinct bank groups).
DSV3_DEV u32 swz(u32 row, u32 chunk) { return row * ROW_BYTES + ((chunk ^ (row & 7u)) << 4); }
// Same for the [rows][TN] bf16 P tile (TN / 8 chunks per row): 64 keys XOR the row's low 3 bits;
// 32 keys (4 chunks, two rows per 128 bytes) XOR bits 1..2 of the row.
template <u32 TN> DSV3_DEV u32 pswz(u32 row, u32 chunk) {
  if constexpr (TN == 64) return row * (TN * 2) + ((chunk ^ (row & 7u)) << 4);
  else return row * (TN * 2) + ((chunk ^ ((row >> 1) & 3u)) << 4);
}

DSV3_DEV void store1(float* p, float a) { *p = a; }
DSV3_DEV void store1(bf16* p, float a) { *p = f32_to_bf16(a); }

// The sequence whose tiles hold global tile g: the largest b < batch with cum[b] <= g.
DSV3_DEV u32 find_batch(const i32* cum, u32 batch, u32 g) {
  u32 lo = 0, hi = batch;
  while (hi - lo > 1) {
    const u32 mid = (lo + hi) / 2;
    if ((u32)cum[mid] <= g) lo = mid;
    else hi = mid;
  }
  return lo;
}

// Query row gr (= j·H + h) of a sequence of length len sees keys 0 .. visible_keys - 1 (causal
// inside the query block of s_q tokens).
DSV3_DEV i32 visible_keys(i32 len, u32 s_q, u32 heads, u32 gr) { return len - (i32)s_q + (i32)(gr / heads) + 1; }

// Tiles of `tn` keys holding a key that some row of row block rb (`bm` of the rows_total rows)
// sees: past the block's causal frontier (the keys its last row sees) no row sees any (at
// prefill, half of all tiles).
DSV3_DEV u32 causal_tiles(i32 len, u32 s_q, u32 heads, u32 rb, u32 bm, u32 rows_total, u32 tn) {
  const i32 frontier = visible_keys(len, s_q, heads, min(rb * bm + bm - 1, rows_total - 1));
  return (u32)(max(frontier, 0) + (i32)tn - 1) / tn;
}

// This CTA's row block (grid.y) in reverse order: under the causal mask later query rows see
// more keys, so the longest blocks start first (no long tail at prefill sizes).
DSV3_DEV u32 row_block_longest_first() { return gridDim.y - 1 - blockIdx.y; }

// One piece of a part's tile range that belongs to one sequence: tiles [t_begin, t_end) of
// sequence b (counted from its first page). `full`: the whole sequence (written straight to out
// / lse); else workspace slot `slot` (2·part for the range's first segment, 2·part + 1 for its last).
struct Segment {
  u32 b, t_begin, t_end, slot;
  bool full;
};

// The segments of part `part` (the split kernels' outer loop, shared by every variant):
//   for (PartWalk w(meta, batch, part); !w.done(); w.next()) { const Segment sg = w.segment(); ... }
struct PartWalk {
  const i32* cum;
  u32 part, g0, g1, b;
  bool first;
  DSV3_DEV PartWalk(const i32* meta, u32 batch, u32 part_) : cum(meta + META_HDR), part(part_), first(true) {
    const u32 total = (u32)meta[0], T = (u32)meta[1];
    g0 = part * T;
    g1 = min(g0 + T, total);
    b = g0 < g1 ? find_batch(cum, batch, g0) : 0u;
  }
  DSV3_DEV bool done() const { return g0 >= g1; }
  DSV3_DEV Segment segment() const {
    const u32 cb0 = (u32)cum[b], cb1 = (u32)cum[b + 1];
    const u32 seg_end = min(g1, cb1);
    return Segment{b, g0 - cb0, seg_end - cb0, 2 * part + (first ? 0u : 1u), g0 == cb0 && seg_end == cb1};
  }
  DSV3_DEV void next() {
    g0 = min(g1, (u32)cum[b + 1]);
    first = false;
    if (g0 < g1) {
      ++b;
      while ((u32)cum[b + 1] <= g0) ++b;
    }
  }
};

// Where a segment's normalized rows go: out / lse for a whole sequence, else its workspace slot
// (o_ws [slots, rows, 512] f32, lse_ws [slots, rows]). `rows(sg, f)` calls f(o, l) with o / l the
// segment's row 0 ([rows_total][512] TO or f32, [rows_total] f32); the caller drops rows past
// rows_total (padding). One branch per segment, outside the caller's store loops.
template <class TO> struct SplitOut {
  TO* out;
  float* lse;
  float* o_ws;
  float* lse_ws;
  u32 rows_total;
  template <class F> DSV3_DEV void rows(const Segment& sg, F&& f) const {
    if (sg.full) f(out + (u64)sg.b * rows_total * DV, lse + (u64)sg.b * rows_total);
    else f(o_ws + (u64)sg.slot * rows_total * DV, lse_ws + (u64)sg.slot * rows_total);
  }
};

// Row pitch (floats) of the staging tile of store_rows: a warp's 8-byte stores of 8 rows × 4 lanes
// fall on every bank, in the two wavefronts 256 bytes need.
constexpr u32 STAGE_LD = DV + 8;
template <u32 BM> constexpr u32 STAGE_BYTES = BM * STAGE_LD * 4;

// A segment's normalized rows [rb·BM, rb·BM + BM) ∩ [0, rows_total) to o (the sequence's row 0,
// row pitch DV, TO = bf16 or f32). frags(put) calls put(r, c, a, b) for each pair of the thread's
// values (block row r, columns c and c + 1). STAGED (the kernel's free shared memory at `stage`
// holds STAGE_BYTES<BM>, and every thread is past its reads of it: a CTA barrier before): the
// pairs go to a [BM][STAGE_LD] f32 tile, then after a CTA barrier THR threads write whole rows,
// 16-byte shared reads and 16-byte (f32) / 8-byte (bf16) global stores, a warp covering 512 (256)
// contiguous bytes of a row. The fragments' own stores (8 rows × 32 bytes per warp instruction)
// were the split kernels' top stall at small batches, whose CTAs write a partial per tile or two
// (ncu, LSU throttle: 58% of the samples at B = 1, h = 128; 24% at h = 16).
template <u32 BM, u32 THR, bool STAGED, class TO, class F>
DSV3_DEV void store_rows(TO* o, u32 rb, u32 rows_total, float* stage, u32 t, F&& frags) {
  const u32 row0 = rb * BM;
  if constexpr (STAGED) {
    const u32 rows = min(BM, rows_total - row0);
    TO* ob = o + (u64)row0 * DV;
    frags([&](u32 r, u32 c, float a, float b) { store_vec<float, 2>(stage + r * STAGE_LD + c, Vec<float, 2>{{a, b}}); });
    __syncthreads();
#pragma unroll 4
    for (u32 i = t; i < rows * (DV / 4); i += THR) {
      const u32 r = i / (DV / 4), c = i % (DV / 4) * 4;
      float v[4];
      load_f32<float, 4>(stage + r * STAGE_LD + c, v);
      store_f32<TO, 4>(ob + (u64)r * DV + c, v);
    }
  } else {
    frags([&](u32 r, u32 c, float a, float b) {
      const u32 gr = row0 + r;
      if (gr < rows_total) {
        o[(u64)gr * DV + c] = from_float<TO>(a);
        o[(u64)gr * DV + c + 1] = from_float<TO>(b);
      }
    });
  }
}

// Final statistics of a row from its max m (log2 domain, scaled) and sum L: 1 / L and the natural
// log-sum-exp (0 and -inf for a row that saw no key).
DSV3_DEV float row_inv(float L) { return L > 0.0f ? 1.0f / L : 0.0f; }
DSV3_DEV float row_lse2(float m, float L) { return L > 0.0f ? (m + __log2f(L)) * 0.6931471805599453f : -f32_inf(); }

}  // namespace mla

// Scheduler metadata: one block (any size up to 1024, a multiple of the warp size).
DSV3_DEV void mla_decode_metadata(i32* DSV3_RESTRICT meta, const i32* DSV3_RESTRICT seq_lens, u32 batch, u32 num_parts) {
  __shared__ i32 buf[1024];
  __shared__ i32 carry;
  const u32 n_thr = nthreads(), t = tid();
  if (t == 0) {
    carry = 0;
    meta[mla::META_HDR] = 0;
  }
  __syncthreads();
  for (u32 base = 0; base < batch; base += n_thr) {
    const u32 b = base + t;
    const i32 len = b < batch ? seq_lens[b] : 0;
    buf[t] = len > 0 ? (len + (i32)mla::NT - 1) / (i32)mla::NT : 0;
    __syncthreads();
    for (u32 off = 1; off < n_thr; off <<= 1) {  // inclusive scan (Hillis-Steele)
      const i32 v = t >= off ? buf[t - off] : 0;
      __syncthreads();
      buf[t] += v;
      __syncthreads();
    }
    const i32 c = carry;
    if (b < batch) meta[mla::META_HDR + b + 1] = c + buf[t];
    __syncthreads();
    if (t == n_thr - 1) carry = c + buf[t];
    __syncthreads();
  }
  if (t == 0) {
    const u32 total = (u32)carry;
    const u32 parts = num_parts > 0 ? num_parts : 1u;
    u32 per = (total + parts - 1) / parts;
    meta[0] = (i32)total;
    meta[1] = (i32)(per > 0 ? per : 1u);
    meta[2] = (i32)parts;
    meta[3] = (i32)batch;
  }
}

#if defined(DSV3_CUDA)
// TN keys per tile (64: one page; 32: half a page, for blocks small enough to run two per SM),
// NWARPS warps per block.
// TC: the cache row type (bf16, or e4m3fn for the 656-byte fp8 rows); only the K-tile loads
// differ, everything from the bf16 tile in shared memory on is shared.
template <class TO, int MW, int TN, int NWARPS, class TC>
DSV3_DEV void mla_decode_split_mma(TO* DSV3_RESTRICT out, float* DSV3_RESTRICT lse, float* DSV3_RESTRICT o_ws,
                                   float* DSV3_RESTRICT lse_ws, const bf16* DSV3_RESTRICT q,
                                   const typename mla::CacheRow<TC>::elem* DSV3_RESTRICT cache,
                                   const i32* DSV3_RESTRICT block_table, const i32* DSV3_RESTRICT seq_lens,
                                   const i32* DSV3_RESTRICT meta, u32 batch, u32 s_q, u32 heads, u32 max_pages,
                                   float scale) {
  using namespace mla;
  constexpr u32 THR = 32 * NWARPS, BM = 16 * MW, NG = NWARPS / MW, KW = TN / NG, NK = KW / 8, CW = DV / NG, NO = CW / 8;
  constexpr u32 SUB = NT / TN;  // tiles per page
  constexpr bool F8 = CacheRow<TC>::FP8;
  // bf16 cache: two bf16 K tiles (double buffer). fp8 cache: one bf16 K tile + RAWBUF raw tiles;
  // with two, the raw loads run two tiles ahead, so one stays in flight while a tile is
  // dequantized. Two fit except at 64 rows of 64-key tiles and 32 rows of 32-key tiles.
  constexpr u32 SMEM_CAP = TN == NT ? SMEM_PAGE_TILES : SMEM_HALF_TILES;
  constexpr u32 TWO_RAW_BYTES = BM * ROW_BYTES + TN * ROW_BYTES + 2 * TN * F8_ROW + BM * TN * 2 + NG * BM * 4;
  constexpr u32 KBUF = F8 ? 1 : 2, RAWBUF = F8 ? (TWO_RAW_BYTES <= SMEM_CAP ? 2 : 1) : 0, RAW = RAWBUF * TN * F8_ROW;
  static_assert(NG >= 1 && KW % 8 == 0 && NK >= 1 && NO % 2 == 0 && (TN * CHUNKS) % THR == 0 && NT % TN == 0, "tile split");
  static_assert((TN * (DV / 8)) % THR == 0 && (TN * ((DK - DV) / 8)) % THR == 0, "fp8 dequant split");
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* sq = smem;
  unsigned char* sk = smem + BM * ROW_BYTES;
  unsigned char* sraw = sk + KBUF * TN * ROW_BYTES;
  unsigned char* sp = sraw + RAW;
  float* red = reinterpret_cast<float*>(sp + BM * TN * 2);

  const u32 rb = row_block_longest_first();
  const u32 rows_total = s_q * heads;
  if (rb * BM >= rows_total) return;
  const SplitOut<TO> dst{out, lse, o_ws, lse_ws, rows_total};
  const u32 t_id = tid(), warp = warp_id(), ln = lane();
  const u32 mt = warp % MW, grp = warp / MW;
  const u32 r0 = mt * 16 + ln / 4, r1 = r0 + 8;
  const u32 gr0 = rb * BM + r0, gr1 = rb * BM + r1;
  const float sl2 = scale * 1.4426950408889634f;
  const u32 q_base = smem_u32(sq), k_base0 = smem_u32(sk), p_base = smem_u32(sp);

  for (PartWalk walk(meta, batch, blockIdx.x); !walk.done(); walk.next()) {
    const Segment sg = walk.segment();
    const u32 b = sg.b, t_begin = sg.t_begin, t_end = sg.t_end;
    const i32 len = seq_lens[b];
    const i32 vis0 = visible_keys(len, s_q, heads, gr0), vis1 = visible_keys(len, s_q, heads, gr1);
    const i32* bt = block_table + (u64)b * max_pages;

    // Q rows of this row block (zeros past the last row) and the first K tile: one group.
    {
      const bf16* qb = q + ((u64)b * rows_total + rb * BM) * DK;
      for (u32 idx = t_id; idx < BM * CHUNKS; idx += THR) {
        const u32 row = idx / CHUNKS, c = idx % CHUNKS;
        const bool ok = rb * BM + row < rows_total;
        cp_async_16(q_base + swz(row, c), ok ? (const void*)(qb + (u64)row * DK + c * 8) : (const void*)q, ok);
      }
    }
    // Tile u: keys u·TN .. u·TN + TN - 1 (page u / SUB). Rows past the sequence end are zero
    // filled (never read: the unused slots of a page may hold anything, NaN included); for the
    // fp8 rows that zeroes the scales too, so they dequantize to 0.
    auto load_k = [&](u32 u, u32 buf) {
      const auto* src = cache + ((u64)bt[u / SUB] * NT + (u % SUB) * TN) * row_elems(cache);
      if constexpr (F8) {
        // The raw 656-byte rows, contiguous (TN·41 chunks of 16 bytes), into raw buffer `buf`.
        constexpr u32 N = TN * F8_CHUNKS;
        const u32 dst = smem_u32(sraw + buf * (TN * F8_ROW));
#pragma unroll
        for (u32 i = 0; i < (N + THR - 1) / THR; ++i) {
          const u32 idx = t_id + i * THR;
          if (N % THR == 0 || idx < N) {
            const bool ok = (i32)(u * TN + idx / F8_CHUNKS) < len;
            cp_async_16(dst + idx * 16, src + idx * 16, ok);
          }
        }
      } else {
        const u32 dst = k_base0 + buf * (TN * ROW_BYTES);
#pragma unroll
        for (u32 i = 0; i < TN * CHUNKS / THR; ++i) {
          const u32 idx = t_id + i * THR;
          const u32 row = idx / CHUNKS, c = idx % CHUNKS;
          const bool ok = (i32)(u * TN + row) < len;
          cp_async_16(dst + swz(row, c), src + row * DK + c * 8, ok);
        }
      }
    };
    // fp8: the raw tile -> the bf16 K tile (swizzled as the bf16 loads place it): latent chunks of
    // 8 values = 8 e4m3 bytes times their group's scale, rounded to bf16; rope chunks copied.
    auto dequant_k = [&](u32 buf) {
      if constexpr (F8) {
        const unsigned char* raw = sraw + buf * (TN * F8_ROW);
#pragma unroll 4
        for (u32 i = 0; i < TN * (DV / 8) / THR; ++i) {
          const u32 idx = t_id + i * THR;
          const u32 row = idx / (DV / 8), c = idx % (DV / 8);
          const unsigned char* r = raw + row * F8_ROW;
          const Vec<u32, 2> b = *reinterpret_cast<const Vec<u32, 2>*>(r + c * 8);
          const float sc = reinterpret_cast<const float*>(r + F8_SCALES)[c / (F8_GROUP / 8)];
          float f[4], g[4];
          e4m3fn_x4_to_f32(b.v[0], f);
          e4m3fn_x4_to_f32(b.v[1], g);
          Vec<u32, 4> v;
          v.v[0] = pack_bf16x2(f[0] * sc, f[1] * sc);
          v.v[1] = pack_bf16x2(f[2] * sc, f[3] * sc);
          v.v[2] = pack_bf16x2(g[0] * sc, g[1] * sc);
          v.v[3] = pack_bf16x2(g[2] * sc, g[3] * sc);
          *reinterpret_cast<Vec<u32, 4>*>(sk + swz(row, c)) = v;
        }
#pragma unroll
        for (u32 i = 0; i < TN * ((DK - DV) / 8) / THR; ++i) {
          const u32 idx = t_id + i * THR;
          const u32 row = idx / ((DK - DV) / 8), c = idx % ((DK - DV) / 8);
          *reinterpret_cast<Vec<u32, 4>*>(sk + swz(row, DV / 8 + c)) =
              *reinterpret_cast<const Vec<u32, 4>*>(raw + row * F8_ROW + F8_ROPE + c * 16);
        }
      }
    };
    const u32 u_begin = t_begin * SUB;
    // Tiles past the causal frontier are skipped, keeping the segment's first (the prologue loads it).
    const u32 u_causal = max(causal_tiles(len, s_q, heads, rb, BM, rows_total, TN), u_begin + 1);
    const u32 u_end = min(min(t_end * SUB, ((u32)len + TN - 1) / TN), u_causal);
    load_k(u_begin, 0);
    cp_async_commit();
    if constexpr (RAWBUF == 2) {
      if (u_begin + 1 < u_end) load_k(u_begin + 1, 1);
      cp_async_commit();
    }

    float o[NO][4];
#pragma unroll
    for (u32 j = 0; j < NO; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m0 = -f32_inf(), m1 = -f32_inf(), l0 = 0.0f, l1 = 0.0f;

    for (u32 t = u_begin; t < u_end; ++t) {
      const u32 buf = F8 ? 0u : (t - u_begin) & 1u;
      // Tile t landed (with two raw buffers tile t + 1's group may still be in flight); every
      // warp is past its reads of the tile before.
      if constexpr (RAWBUF == 2) cp_async_wait<1>();
      else cp_async_wait<0>();
      __syncthreads();
      if constexpr (F8) {
        const u32 rbuf = RAWBUF == 2 ? (t - u_begin) & 1u : 0u;
        dequant_k(rbuf);
        __syncthreads();  // the bf16 tile is ready and raw buffer rbuf free
        const u32 next = t + RAWBUF;
        if (next < u_end) load_k(next, rbuf);
      } else if (t + 1 < u_end) {
        load_k(t + 1, buf ^ 1u);
      }
      cp_async_commit();
      const u32 kb = k_base0 + buf * (TN * ROW_BYTES);

      // S = Q·Kᵀ for rows mt·16.. and keys grp·KW..
      // With few n-tiles per warp (MW <= 2) the even and odd k-steps accumulate separately: two
      // independent MMA chains of 18 instead of one of 36 (the chain's latency bounds this loop).
      constexpr bool TWO_ACC = NK <= 2;
      float s[NK][4], s2[NK][4];
#pragma unroll
      for (u32 n = 0; n < NK; ++n) {
        s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        s2[n][0] = s2[n][1] = s2[n][2] = s2[n][3] = 0.0f;
      }
#pragma unroll 6
      for (u32 ks = 0; ks < DK / 16; ks += 2) {
        u32 a0[4], a1[4];
        ldmatrix_x4(a0, q_base + swz(mt * 16 + (ln & 15), 2 * ks + (ln >> 4)));
        ldmatrix_x4(a1, q_base + swz(mt * 16 + (ln & 15), 2 * ks + 2 + (ln >> 4)));
#pragma unroll
        for (u32 n = 0; n < NK; ++n) {
          u32 bb[4];
          ldmatrix_x4(bb, kb + swz(grp * KW + n * 8 + (ln & 7), 2 * ks + (ln >> 3)));
          mma_bf16_16816(s[n], a0, bb[0], bb[1]);
          if constexpr (TWO_ACC) mma_bf16_16816(s2[n], a1, bb[2], bb[3]);
          else mma_bf16_16816(s[n], a1, bb[2], bb[3]);
        }
      }
      if constexpr (TWO_ACC) {
#pragma unroll
        for (u32 n = 0; n < NK; ++n) {
          s[n][0] += s2[n][0];
          s[n][1] += s2[n][1];
          s[n][2] += s2[n][2];
          s[n][3] += s2[n][3];
        }
      }

      // Online softmax (log2 domain), masked by the causal limit of each row.
      const i32 key0 = (i32)(t * TN + grp * KW + (ln & 3) * 2);
      float mx0 = -f32_inf(), mx1 = -f32_inf();
#pragma unroll
      for (u32 n = 0; n < NK; ++n) {
#pragma unroll
        for (u32 e = 0; e < 2; ++e) {
          const i32 key = key0 + (i32)(n * 8 + e);
          s[n][e] = key < vis0 ? s[n][e] * sl2 : -f32_inf();
          s[n][2 + e] = key < vis1 ? s[n][2 + e] * sl2 : -f32_inf();
          mx0 = fmaxf(mx0, s[n][e]);
          mx1 = fmaxf(mx1, s[n][2 + e]);
        }
      }
      mx0 = fmaxf(mx0, shfl_xor(mx0, 1));
      mx0 = fmaxf(mx0, shfl_xor(mx0, 2));
      mx1 = fmaxf(mx1, shfl_xor(mx1, 1));
      mx1 = fmaxf(mx1, shfl_xor(mx1, 2));
      if ((ln & 3) == 0) {
        red[grp * BM + r0] = mx0;
        red[grp * BM + r1] = mx1;
      }
      __syncthreads();
      float tm0 = -f32_inf(), tm1 = -f32_inf();
#pragma unroll
      for (u32 gg = 0; gg < NG; ++gg) {
        tm0 = fmaxf(tm0, red[gg * BM + r0]);
        tm1 = fmaxf(tm1, red[gg * BM + r1]);
      }
      const float mn0 = fmaxf(m0, tm0), mn1 = fmaxf(m1, tm1);
      const float ms0 = mn0 == -f32_inf() ? 0.0f : mn0, ms1 = mn1 == -f32_inf() ? 0.0f : mn1;
      const float c0 = fexp2(m0 - ms0), c1 = fexp2(m1 - ms1);
      m0 = mn0;
      m1 = mn1;
      float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
      for (u32 n = 0; n < NK; ++n) {
        const float p00 = fexp2(s[n][0] - ms0), p01 = fexp2(s[n][1] - ms0);
        const float p10 = fexp2(s[n][2] - ms1), p11 = fexp2(s[n][3] - ms1);
        ps0 += p00 + p01;
        ps1 += p10 + p11;
        const u32 col = grp * KW + n * 8 + (ln & 3) * 2;
        *reinterpret_cast<u32*>(sp + pswz<TN>(r0, col / 8) + (col % 8) * 2) = pack_bf16x2(p00, p01);
        *reinterpret_cast<u32*>(sp + pswz<TN>(r1, col / 8) + (col % 8) * 2) = pack_bf16x2(p10, p11);
      }
      l0 = l0 * c0 + ps0;
      l1 = l1 * c1 + ps1;
#pragma unroll
      for (u32 j = 0; j < NO; ++j) {
        o[j][0] *= c0;
        o[j][1] *= c0;
        o[j][2] *= c1;
        o[j][3] *= c1;
      }
      __syncthreads();

      // O += P·V, V = the first 512 columns of the K tile.
#pragma unroll
      for (u32 ks = 0; ks < TN / 16; ++ks) {
        u32 a[4];
        ldmatrix_x4(a, p_base + pswz<TN>(mt * 16 + (ln & 15), 2 * ks + (ln >> 4)));
#pragma unroll
        for (u32 j = 0; j < NO / 2; ++j) {
          u32 bb[4];
          ldmatrix_x4_trans(bb, kb + swz(ks * 16 + ((ln >> 3) & 1) * 8 + (ln & 7), (grp * CW + j * 16) / 8 + (ln >> 4)));
          mma_bf16_16816(o[2 * j], a, bb[0], bb[1]);
          mma_bf16_16816(o[2 * j + 1], a, bb[2], bb[3]);
        }
      }
    }

    // Row sums across the quad and the key groups.
    l0 += shfl_xor(l0, 1);
    l0 += shfl_xor(l0, 2);
    l1 += shfl_xor(l1, 1);
    l1 += shfl_xor(l1, 2);
    __syncthreads();  // every warp is past its reads of red (max) and of the tiles
    if ((ln & 3) == 0) {
      red[grp * BM + r0] = l0;
      red[grp * BM + r1] = l1;
    }
    __syncthreads();
    float L0 = 0.0f, L1 = 0.0f;
#pragma unroll
    for (u32 gg = 0; gg < NG; ++gg) {
      L0 += red[gg * BM + r0];
      L1 += red[gg * BM + r1];
    }
    const float inv0 = row_inv(L0), inv1 = row_inv(L1);
    const u32 col0 = grp * CW + (ln & 3) * 2;
    // Q, K, the raw tiles and P are free (the barriers above); red lies past them. Not the fp8
    // kernel at 64 rows: at its register limit, staging made it spill (24–28 bytes on sm_90a,
    // 116–156 on sm_80).
    constexpr bool STAGED = STAGE_BYTES<BM> <= BM * ROW_BYTES + KBUF * TN * ROW_BYTES + RAW + BM * TN * 2 && !(F8 && MW == 4);
    dst.rows(sg, [&](auto* ob, float* lb) {
      store_rows<BM, THR, STAGED>(ob, rb, rows_total, reinterpret_cast<float*>(smem), t_id, [&](auto&& put) {
#pragma unroll
        for (u32 j = 0; j < NO; ++j) {
          put(r0, col0 + j * 8, o[j][0] * inv0, o[j][1] * inv0);
          put(r1, col0 + j * 8, o[j][2] * inv1, o[j][3] * inv1);
        }
      });
      if (grp == 0 && (ln & 3) == 0) {
        if (gr0 < rows_total) lb[gr0] = row_lse2(m0, L0);
        if (gr1 < rows_total) lb[gr1] = row_lse2(m1, L1);
      }
    });
    __syncthreads();  // red, Q and K buffers are reused by the next segment
  }
}
#endif

#if defined(DSV3_HIP)
// HIP (gfx90a, gfx942): the same contract and scheduling on the matrix cores, bf16 MFMA
// 16x16x16 (lane layouts: dsv3/mfma_bf16.h). Compiled, not run on AMD hardware.
//
// Block: NW waves (4 for mla_decode_*, 2 for mla_decode_t32_*: the host's 256 / 128 threads),
// BM = 16·MW rows, 32-key tiles (a 64-key bf16 tile alone is 72 KiB, over the 64 KiB of LDS).
// Wave w owns m-tile mt = w % MW and group g = w / MW of NG = NW / MW:
//  - S transposed, Sᵀ = K·Qᵀ (A = K from LDS, B = Q held in registers), 32 keys × the wave's 16
//    rows over the group's share of the 576 columns; with NG > 1 the NG partial Sᵀ of an m-tile
//    are summed through LDS in group order, so its waves hold the same S and run the same softmax.
//  - Sᵀ's accumulator holds, in lane i + 16q, row i and keys 4q .. 4q + 3: the B operand (Pᵀ) of
//    Oᵀ += Vᵀ·Pᵀ as it stands, so P never goes through LDS, and Oᵀ's accumulator holds row i
//    (columns 4q .. 4q + 3) in the lane that has row i's softmax statistics.
//  - O: the wave's 16 rows × the group's 512 / NG columns. V = the first 512 columns of the K
//    tile, read 4 keys × 1 column per lane (2-byte LDS reads; the tile is stored row-major).
// The K tile goes global -> registers (issued before the previous tile's math) -> LDS: bf16 rows
// as they are, fp8 rows dequantized on the way (bf16(e4m3 · s), as the CUDA path). Keys past the
// sequence end are written as zeros, never loaded (unused slots may hold NaN, and 0 · NaN = NaN
// in P·V even where P = 0); the causal / length mask sets their S to -inf.
// LDS: the K tile, 32 × 1152 bytes (rows XOR-swizzled in 16-byte chunks, swz), plus NW · 2 KiB
// of Sᵀ partials when NG > 1: at most 45056 bytes, static (the host launches 0 dynamic bytes).
namespace mla {

constexpr u32 HTN = 32, HSUB = NT / HTN;  // keys per HIP tile, tiles per page
// K steps of Sᵀ between scheduling barriers: bounds the LDS reads
// in flight ahead of the MFMAs (registers) while keeping a few to hide their latency.
constexpr u32 SCHED_KS = 4;

// Byte offset of value d of row `row` in a swizzled [rows][576] bf16 tile.
DSV3_DEV u32 swz_at(u32 row, u32 d) { return swz(row, d / 8) + (d % 8) * 2; }

// The K tile's staging (global -> registers -> LDS) by cache row type, THR threads, N chunks per
// thread: load_chunk(j, src, k0, len) reads chunk j of the tile whose first row is src (key k0),
// store_chunk(j, sk) writes it to the bf16 LDS tile.
template <class TC, u32 THR> struct KStage;

template <u32 THR> struct KStage<bf16, THR> {
  static constexpr u32 N = HTN * CHUNKS / THR;  // 16-byte chunks per thread
  static_assert(HTN * CHUNKS % THR == 0, "K tile split");
  Vec<u32, 4> v[N];
  DSV3_DEV void load_chunk(u32 j, const bf16* src, i32 k0, i32 len) {
    const u32 idx = tid() + j * THR, row = idx / CHUNKS, c = idx % CHUNKS;
    v[j] = k0 + (i32)row < len ? load_vec<u32, 4>(reinterpret_cast<const u32*>(src + row * DK + c * 8)) : Vec<u32, 4>{};
  }
  DSV3_DEV void store_chunk(u32 j, unsigned char* sk) const {
    const u32 idx = tid() + j * THR;
    *reinterpret_cast<Vec<u32, 4>*>(sk + swz(idx / CHUNKS, idx % CHUNKS)) = v[j];
  }
};

// fp8 rows: 40 items per row, 32 latent chunks of 16 e4m3 (group c / 8, its scale loaded with it)
// and 8 rope chunks of 8 bf16.
template <u32 THR> struct KStage<e4m3fn, THR> {
  static constexpr u32 LAT = F8_LATENT / 16, ITEMS = LAT + F8_ROPE_DIM / 8, N = HTN * ITEMS / THR;
  static_assert(HTN * ITEMS % THR == 0, "fp8 K tile split");
  Vec<u32, 4> v[N];
  float sc[N];
  DSV3_DEV void load_chunk(u32 j, const u8* src, i32 k0, i32 len) {
    const u32 idx = tid() + j * THR, row = idx / ITEMS, c = idx % ITEMS;
    const u8* r = src + row * F8_ROW;
    const bool ok = k0 + (i32)row < len;
    v[j] = ok ? load_vec<u32, 4>(reinterpret_cast<const u32*>(r + (c < LAT ? c * 16 : F8_ROPE + (c - LAT) * 16))) : Vec<u32, 4>{};
    sc[j] = ok && c < LAT ? reinterpret_cast<const float*>(r + F8_SCALES)[c / (F8_GROUP / 16)] : 0.0f;
  }
  // Eight e4m3 (two words) times their scale -> eight bf16 (one 16-byte chunk).
  static DSV3_DEV Vec<u32, 4> dequant8(u32 lo, u32 hi, float s) {
    float f[4], g[4];
    e4m3fn_x4_to_f32(lo, f);
    e4m3fn_x4_to_f32(hi, g);
    return Vec<u32, 4>{{pack_bf16x2(f[0] * s, f[1] * s), pack_bf16x2(f[2] * s, f[3] * s), pack_bf16x2(g[0] * s, g[1] * s),
                        pack_bf16x2(g[2] * s, g[3] * s)}};
  }
  DSV3_DEV void store_chunk(u32 j, unsigned char* sk) const {
    const u32 idx = tid() + j * THR, row = idx / ITEMS, c = idx % ITEMS;
    if (c < LAT) {
      *reinterpret_cast<Vec<u32, 4>*>(sk + swz(row, 2 * c)) = dequant8(v[j].v[0], v[j].v[1], sc[j]);
      *reinterpret_cast<Vec<u32, 4>*>(sk + swz(row, 2 * c + 1)) = dequant8(v[j].v[2], v[j].v[3], sc[j]);
    } else {
      *reinterpret_cast<Vec<u32, 4>*>(sk + swz(row, DV / 8 + c - LAT)) = v[j];
    }
  }
};

// The staging loops over a KStage's N chunks: the whole tile into registers and out to LDS
// (prefetch), or copied a few chunks at a time.
template <class S, class E> DSV3_DEV void stage_load(S& st, const E* src, i32 k0, i32 len) {
#pragma unroll
  for (u32 j = 0; j < S::N; ++j) st.load_chunk(j, src, k0, len);
}
template <class S> DSV3_DEV void stage_store(const S& st, unsigned char* sk) {
#pragma unroll
  for (u32 j = 0; j < S::N; ++j) st.store_chunk(j, sk);
}
template <class S, class E> DSV3_DEV void stage_copy(S& st, const E* src, i32 k0, i32 len, unsigned char* sk) {
  constexpr u32 STEP = 3;
#pragma unroll
  for (u32 j0 = 0; j0 < S::N; j0 += STEP) {
    sched_barrier();
#pragma unroll
    for (u32 j = j0; j < j0 + STEP && j < S::N; ++j) st.load_chunk(j, src, k0, len);
#pragma unroll
    for (u32 j = j0; j < j0 + STEP && j < S::N; ++j) st.store_chunk(j, sk);
  }
}

// Q fragments (B operands of Sᵀ) of one lane: row `qrow` (null: a padding row, zeros), columns
// d0 + 16·ks .. + 3 (d0 = the group's first column + 4q).
template <u32 KSG> DSV3_DEV void load_q_frags(mfma_bf16x4 (&qf)[KSG], const bf16* qrow, u32 d0) {
#pragma unroll
  for (u32 ks = 0; ks < KSG; ++ks)
    qf[ks] = qrow ? bit_cast<mfma_bf16x4>(load_vec<u32, 2>(reinterpret_cast<const u32*>(qrow + d0 + 16 * ks))) : mfma_bf16x4{};
}

// Sᵀ of the tile's keys 16·kt + (0..15) × the wave's rows over its columns: A = K rows (lane i:
// key 16·kt + i, columns d0 + 16·ks .. + 3), B = the Q fragments.
template <u32 KSG>
DSV3_DEV void scores_t(mfma_f32x4 (&st)[HTN / 16], const unsigned char* sk, const mfma_bf16x4 (&qf)[KSG], u32 d0, u32 i) {
#pragma unroll
  for (u32 kt = 0; kt < HTN / 16; ++kt) st[kt] = mfma_f32x4{};
#pragma unroll
  for (u32 ks = 0; ks < KSG; ++ks) {
    if (ks % SCHED_KS == 0) sched_barrier();
#pragma unroll
    for (u32 kt = 0; kt < HTN / 16; ++kt)
      st[kt] = mfma_16x16x16_bf16(*reinterpret_cast<const mfma_bf16x4*>(sk + swz_at(16 * kt + i, d0 + 16 * ks)), qf[ks], st[kt]);
  }
}

// NG > 1: the m-tile's NG partial Sᵀ summed through `red` ([NW][8][64] f32), in group order.
template <u32 NG, u32 MW>
DSV3_DEV void sum_partials(mfma_f32x4 (&st)[HTN / 16], float* red, u32 w, u32 mt, u32 ln) {
  if constexpr (NG > 1) {
#pragma unroll
    for (u32 e = 0; e < 4 * (HTN / 16); ++e) red[(w * 8 + e) * 64 + ln] = st[e / 4][e % 4];
    __syncthreads();
#pragma unroll
    for (u32 e = 0; e < 4 * (HTN / 16); ++e) {
      float x = 0.0f;
#pragma unroll
      for (u32 gg = 0; gg < NG; ++gg) x += red[((gg * MW + mt) * 8 + e) * 64 + ln];
      st[e / 4][e % 4] = x;
    }
  }
}

// Online softmax of one tile (log2 domain; key0 = the lane's first key, 16·kt + e after it; keys
// at or past vis masked): P as the Pᵀ operands pf, m and the lane's partial sum l updated;
// returns the factor the accumulated O is scaled by. The row's 4 lanes (xor 16, 32) agree on m.
DSV3_DEV float softmax_tile(mfma_f32x4 (&st)[HTN / 16], mfma_bf16x4 (&pf)[HTN / 16], float& m, float& l, i32 key0, i32 vis, float sl2) {
  float mx = -f32_inf();
#pragma unroll
  for (u32 kt = 0; kt < HTN / 16; ++kt)
#pragma unroll
    for (u32 e = 0; e < 4; ++e) {
      st[kt][e] = key0 + (i32)(16 * kt + e) < vis ? st[kt][e] * sl2 : -f32_inf();
      mx = fmaxf(mx, st[kt][e]);
    }
  mx = fmaxf(mx, shfl_xor(mx, 16));
  mx = fmaxf(mx, shfl_xor(mx, 32));
  const float mn = fmaxf(m, mx), ms = mn == -f32_inf() ? 0.0f : mn, c = fexp2(m - ms);
  m = mn;
  float ps = 0.0f;
#pragma unroll
  for (u32 kt = 0; kt < HTN / 16; ++kt) {
    float p[4];
#pragma unroll
    for (u32 e = 0; e < 4; ++e) {
      p[e] = fexp2(st[kt][e] - ms);
      ps += p[e];
    }
    pf[kt] = pack_bf16x4(p[0], p[1], p[2], p[3]);
  }
  l = l * c + ps;
  return c;
}

// O = c·O + P·V, as Oᵀ += Vᵀ·Pᵀ over the wave's NO column tiles. Column tile n = 4p + r, row m
// (0..15) of Oᵀ is column c0 + 64p + 4m + r: lane i + 16q reads its A operands (V: columns
// c0 + 64p + 4i .. + 3, keys 16·kt + 4q .. + 3) as four 8-byte LDS reads that serve the four
// tiles 4p .. 4p + 3. One quad at a time (scheduling barrier): the rescale of O (held in AGPRs,
// scaled in VGPRs) and the V reads of all quads would otherwise be hoisted together and spill.
template <u32 NO>
DSV3_DEV void pv_t(mfma_f32x4 (&o)[NO], float c, const unsigned char* sk, const mfma_bf16x4 (&pf)[HTN / 16], u32 c0, u32 i, u32 q) {
  static_assert(NO % 4 == 0, "column tiles in fours");
#pragma unroll
  for (u32 p = 0; p < NO / 4; ++p) {
    sched_barrier();
#pragma unroll
    for (u32 r = 0; r < 4; ++r) o[4 * p + r] *= c;
#pragma unroll
    for (u32 kt = 0; kt < HTN / 16; ++kt) {
      Vec<u32, 2> x[4];  // key 16·kt + 4q + e: columns (r = 0, 1 | r = 2, 3)
#pragma unroll
      for (u32 e = 0; e < 4; ++e) x[e] = *reinterpret_cast<const Vec<u32, 2>*>(sk + swz_at(16 * kt + 4 * q + e, c0 + 64 * p + 4 * i));
#pragma unroll
      for (u32 r = 0; r < 4; ++r) {
        const u32 h = r % 2 ? 16 : 0, wd = r / 2;
        typedef u32 u32x2 __attribute__((ext_vector_type(2)));
        const u32x2 v = {((x[0].v[wd] >> h) & 0xffffu) | ((x[1].v[wd] >> h) << 16), ((x[2].v[wd] >> h) & 0xffffu) | ((x[3].v[wd] >> h) << 16)};
        o[4 * p + r] = mfma_16x16x16_bf16(__builtin_bit_cast(mfma_bf16x4, v), pf[kt], o[4 * p + r]);
      }
    }
  }
}

}  // namespace mla

// NW waves per block (see above); TC: the cache row type (bf16 or e4m3fn).
template <class TO, int MW, int NW, class TC>
DSV3_DEV void mla_decode_split_mfma(TO* DSV3_RESTRICT out, float* DSV3_RESTRICT lse, float* DSV3_RESTRICT o_ws,
                                    float* DSV3_RESTRICT lse_ws, const bf16* DSV3_RESTRICT q,
                                    const typename mla::CacheRow<TC>::elem* DSV3_RESTRICT cache,
                                    const i32* DSV3_RESTRICT block_table, const i32* DSV3_RESTRICT seq_lens,
                                    const i32* DSV3_RESTRICT meta, u32 batch, u32 s_q, u32 heads, u32 max_pages,
                                    float scale) {
  using namespace mla;
  constexpr u32 THR = 64 * NW, BM = 16 * MW, NG = NW / MW, KSG = DK / 16 / NG, CG = DV / NG, NO = CG / 16;
  // The next tile is loaded into registers during this tile's math, except where one wave holds
  // a whole m-tile's Q and O (NG = 1: 72 + 128 registers per lane): with a tile in flight too,
  // LLVM 19 (gfx942) spills.
  constexpr bool PREFETCH = NG > 1;
  static_assert(WARP_SIZE == 64 && NW % MW == 0 && (DK / 16) % NG == 0 && CG % 64 == 0, "wave split");
  __shared__ __attribute__((aligned(16))) unsigned char sk[HTN * ROW_BYTES];
  __shared__ float red[NG > 1 ? NW * 8 * 64 : 1];

  const u32 rb = row_block_longest_first();
  const u32 rows_total = s_q * heads;
  if (rb * BM >= rows_total) return;
  const SplitOut<TO> dst{out, lse, o_ws, lse_ws, rows_total};
  const u32 w = warp_id(), ln = lane(), i = ln % 16, qd = ln / 16, mt = w % MW, g = w / MW;
  const u32 gr = rb * BM + mt * 16 + i;               // this lane's query row
  const u32 d0 = g * KSG * 16 + 4 * qd, c0 = g * CG;  // its first S column, the group's first O column
  const float sl2 = scale * 1.4426950408889634f;
  KStage<TC, THR> stage;

  for (PartWalk walk(meta, batch, blockIdx.x); !walk.done(); walk.next()) {
    const Segment sg = walk.segment();
    const i32 len = seq_lens[sg.b];
    const i32 vis = visible_keys(len, s_q, heads, gr);
    const i32* bt = block_table + (u64)sg.b * max_pages;
    mfma_bf16x4 qf[KSG];
    load_q_frags(qf, gr < rows_total ? q + ((u64)sg.b * rows_total + gr) * DK : nullptr, d0);
    const u32 u_begin = sg.t_begin * HSUB;
    // Tiles past the causal frontier are skipped, keeping the segment's first.
    const u32 u_causal = max(causal_tiles(len, s_q, heads, rb, BM, rows_total, HTN), u_begin + 1);
    const u32 u_end = min(min(sg.t_end * HSUB, ((u32)len + HTN - 1) / HTN), u_causal);
    auto load_tile = [&](u32 u) {
      stage_load(stage, cache + ((u64)bt[u / HSUB] * NT + (u % HSUB) * HTN) * row_elems(cache), (i32)(u * HTN), len);
    };
    // Without the prefetch a tile is copied a few chunks at a time (few registers in flight).
    auto copy_tile = [&](u32 u) {
      stage_copy(stage, cache + ((u64)bt[u / HSUB] * NT + (u % HSUB) * HTN) * row_elems(cache), (i32)(u * HTN), len, sk);
    };
    if constexpr (PREFETCH) load_tile(u_begin);
    mfma_f32x4 o[NO];
#pragma unroll
    for (u32 n = 0; n < NO; ++n) o[n] = mfma_f32x4{};
    float m = -f32_inf(), l = 0.0f;

    for (u32 u = u_begin; u < u_end; ++u) {
      __syncthreads();  // every wave is past its reads of the tile before (and of red)
      if constexpr (PREFETCH) stage_store(stage, sk);
      else copy_tile(u);
      __syncthreads();
      if constexpr (PREFETCH) {
        if (u + 1 < u_end) load_tile(u + 1);  // in flight during this tile's math
      }
      mfma_f32x4 st[HTN / 16];
      scores_t(st, sk, qf, d0, i);
      sum_partials<NG, MW>(st, red, w, mt, ln);
      mfma_bf16x4 pf[HTN / 16];
      const float c = softmax_tile(st, pf, m, l, (i32)(u * HTN + 4 * qd), vis, sl2);
      pv_t(o, c, sk, pf, c0, i, qd);
    }

    l += shfl_xor(l, 16);
    l += shfl_xor(l, 32);
    const float inv = row_inv(l);
    dst.rows(sg, [&](auto* ob, float* lb) {
      if (gr >= rows_total) return;
#pragma unroll
      for (u32 n = 0; n < NO; ++n) {  // o[4p + r][e]: column c0 + 64p + 16q + 4e + r (pv_t)
        sched_barrier();  // one tile at a time out of the AGPRs
#pragma unroll
        for (u32 e = 0; e < 4; ++e) store1(ob + (u64)gr * DV + c0 + 64 * (n / 4) + 16 * qd + 4 * e + n % 4, o[n][e] * inv);
      }
      if (g == 0 && qd == 0) lb[gr] = row_lse2(m, l);
    });
  }
}
#endif

// TC: the cache row type, bf16 (default: [pages, 64, 576] bf16) or e4m3fn ([pages, 64, 656] u8).
template <class TO, int MW, class TC = bf16>
DSV3_DEV void mla_decode_split(TO* DSV3_RESTRICT out, float* DSV3_RESTRICT lse, float* DSV3_RESTRICT o_ws,
                               float* DSV3_RESTRICT lse_ws, const bf16* DSV3_RESTRICT q,
                               const typename mla::CacheRow<TC>::elem* DSV3_RESTRICT cache,
                               const i32* DSV3_RESTRICT block_table, const i32* DSV3_RESTRICT seq_lens,
                               const i32* DSV3_RESTRICT meta, u32 batch, u32 s_q, u32 heads, u32 max_pages, float scale) {
#if defined(DSV3_HIP)
  mla_decode_split_mfma<TO, MW, 4, TC>(out, lse, o_ws, lse_ws, q, cache, block_table, seq_lens, meta, batch, s_q, heads, max_pages, scale);
#else
  mla_decode_split_mma<TO, MW, 64, 8, TC>(out, lse, o_ws, lse_ws, q, cache, block_table, seq_lens, meta, batch, s_q, heads, max_pages, scale);
#endif
}

// The same with 32-key tiles and 4 warps (MW = 1, 2): about half the shared memory, so two
// blocks run per SM (four half-page tiles in flight, their barriers interleaved). HIP: the MFMA
// kernel with 2 waves (its LDS, 36–40 KiB, still allows one block per CU).
template <class TO, int MW, class TC = bf16>
DSV3_DEV void mla_decode_split_t32(TO* DSV3_RESTRICT out, float* DSV3_RESTRICT lse, float* DSV3_RESTRICT o_ws,
                                   float* DSV3_RESTRICT lse_ws, const bf16* DSV3_RESTRICT q,
                                   const typename mla::CacheRow<TC>::elem* DSV3_RESTRICT cache,
                                   const i32* DSV3_RESTRICT block_table, const i32* DSV3_RESTRICT seq_lens,
                                   const i32* DSV3_RESTRICT meta, u32 batch, u32 s_q, u32 heads, u32 max_pages,
                                   float scale) {
#if defined(DSV3_HIP)
  mla_decode_split_mfma<TO, MW, 2, TC>(out, lse, o_ws, lse_ws, q, cache, block_table, seq_lens, meta, batch, s_q, heads, max_pages, scale);
#else
  mla_decode_split_mma<TO, MW, 32, 4, TC>(out, lse, o_ws, lse_ws, q, cache, block_table, seq_lens, meta, batch, s_q, heads, max_pages, scale);
#endif
}

// Quantize on write into the fp8 cache: kv [tokens, kv_stride] rows (the first 576 values:
// c_kv | k_pe, f32 or bf16) -> the 656-byte row of slot (token_seq[t], token_pos[t]) through the
// block table (page size 64). grid (tokens), block 128 exactly: thread i quantizes latent values
// 4i .. 4i + 3 (group i / 32) and, for i < 64, copies rope value i.
template <class T>
DSV3_DEV void mla_cache_write_fp8(u8* DSV3_RESTRICT cache, const T* DSV3_RESTRICT kv, const i32* DSV3_RESTRICT block_table,
                                  const i32* DSV3_RESTRICT token_seq, const i32* DSV3_RESTRICT token_pos, u32 tokens,
                                  u32 kv_stride, u32 max_pages) {
  using namespace mla;
  __shared__ float part[128];
  __shared__ float gscale[DV / F8_GROUP];
  const u32 t = blockIdx.x, i = tid();
  if (t >= tokens || nthreads() != 128) return;
  const u32 b = (u32)token_seq[t], p = (u32)token_pos[t];
  const u64 slot = (u64)block_table[(u64)b * max_pages + p / NT] * NT + p % NT;
  u8* row = cache + slot * F8_ROW;
  const T* x = kv + (u64)t * kv_stride;
  float v[4], a = 0.0f;
#pragma unroll
  for (u32 k = 0; k < 4; ++k) {
    v[k] = to_float(x[4 * i + k]);
    a = fmaxf(a, fabsf(v[k]));
  }
  part[i] = a;
  __syncthreads();
  if (i < DV / F8_GROUP) {
    float m = 0.0f;
    for (u32 j = 0; j < F8_GROUP / 4; ++j) m = fmaxf(m, part[i * (F8_GROUP / 4) + j]);
    gscale[i] = fmaxf(m, F8_AMAX_EPS) / F8_QMAX;
  }
  __syncthreads();
  const float sc = gscale[(4 * i) / F8_GROUP];
  u32 w = 0;
#pragma unroll
  for (u32 k = 0; k < 4; ++k) w |= (u32)f32_to_e4m3fn(v[k] / sc).bits << (8 * k);
  reinterpret_cast<u32*>(row)[i] = w;
  if (i < DV / F8_GROUP) reinterpret_cast<float*>(row + F8_SCALES)[i] = gscale[i];
  if (i < DK - DV) reinterpret_cast<bf16*>(row + F8_ROPE)[i] = f32_to_bf16(to_float(x[DV + i]));
}

// Merges the split partials of each (sequence, row); grid (B, s_q·H, 512 / COLS), block 32·G
// threads. Sequences written directly by the split kernel are left alone; empty ones get zeros
// and lse = -inf. Block z owns output columns [z·COLS, (z + 1)·COLS); thread t owns columns
// 4·(t % 32) + 128·i (i < NI) of them for part group g = t / 32, which merges parts pf + g,
// pf + g + G, ... online (a running maximum of their lse, the sum and the columns rescaled when
// it grows), so the part loads need no maximum first: they are the kernel's one round of global
// loads (the loop unrolled, independent loads in flight; a separate maximum pass over the lse
// was a second round trip and a block barrier, the top stall in ncu at B = 1). The G groups are
// then merged in group order through shared memory (deterministic). G = 8 for small batches,
// whose sequences are cut into many parts (the host picks it when there are ≥ 8 parts per
// sequence): there the row is also cut into 4 column blocks (COLS = 128), so that a batch of one
// sequence still spreads its partials' reads over 64+ blocks. G = 1 otherwise (a few parts per
// sequence, many (sequence, row) blocks, whole rows). P: parts per group whose loads are issued
// together (their registers cost occupancy: at B = 8, h = 128 the 4,096 blocks of 8 parts in
// flight per group at 64 registers ran 2.5× slower than at 32; the host takes 8 only where each
// group has ≥ 8 parts).
template <class TO, u32 G, u32 P>
DSV3_DEV void mla_decode_combine(TO* DSV3_RESTRICT out, float* DSV3_RESTRICT lse, const float* DSV3_RESTRICT o_ws,
                                 const float* DSV3_RESTRICT lse_ws, const i32* DSV3_RESTRICT meta, u32 batch,
                                 u32 rows_total) {
  using namespace mla;
  constexpr u32 THREADS = 32 * G;
  constexpr u32 NI = G == 1 ? 4 : 1;  // 128-column slices per thread
  constexpr u32 COLS = 128 * NI;
  __shared__ float group_acc[G][COLS];
  __shared__ float group_m[G], group_sum[G];
  const u32 b = blockIdx.x, row = blockIdx.y, cbase = blockIdx.z * COLS;
  if (b >= batch || row >= rows_total || cbase >= DV || nthreads() != THREADS) return;
  const bool lse_writer = blockIdx.z == 0 && tid() == 0;
  const u32 T = (u32)meta[1];
  const u32 cb0 = (u32)meta[META_HDR + b], cb1 = (u32)meta[META_HDR + b + 1];
  TO* o = out + ((u64)b * rows_total + row) * DV + cbase;
  if (cb1 == cb0) {
    for (u32 c = tid(); c < COLS; c += nthreads()) o[c] = from_float<TO>(0.0f);
    if (lse_writer) lse[(u64)b * rows_total + row] = -f32_inf();
    return;
  }
  const u32 pf = cb0 / T, pl = (cb1 - 1) / T;
  if (pf == pl) return;
  // Slot of part p: its first segment (2p) unless the sequence starts inside p (its last, 2p + 1).
  const u32 first_slot = 2 * pf + (pf * T < cb0 ? 1u : 0u);
  const u32 g = tid() / 32, c0 = 4 * (tid() % 32);
  // P parts per round, their loads issued together (predicated, so none waits for the previous
  // part's arithmetic).
  float m = -f32_inf(), sum = 0.0f, acc[NI][4] = {};
  for (u32 p0 = pf + g; p0 <= pl; p0 += P * G) {
    float li[P], x[P][NI][4];
#pragma unroll
    for (u32 u = 0; u < P; ++u) {
      const u32 p = p0 + u * G;
      const u64 slot = p == pf ? first_slot : 2 * p;
      li[u] = p <= pl ? lse_ws[slot * rows_total + row] : -f32_inf();
      const float* src = o_ws + (slot * rows_total + row) * DV + cbase + c0;
#pragma unroll
      for (u32 i = 0; i < NI; ++i) {
        if (p <= pl) load_f32<float, 4>(src + 128 * i, x[u][i]);
        else x[u][i][0] = x[u][i][1] = x[u][i][2] = x[u][i][3] = 0.0f;
      }
    }
#pragma unroll
    for (u32 u = 0; u < P; ++u) {
      if (p0 + u * G > pl) break;  // the group's parts end here (warp-uniform)
      const float mn = fmaxf(m, li[u]);
      const float keep = m == -f32_inf() ? 0.0f : fexp(m - mn), w = li[u] == -f32_inf() ? 0.0f : fexp(li[u] - mn);
      m = mn;
      sum = sum * keep + w;
      // A part that saw no key (w = 0) may hold 0/0: select, never multiply it in.
#pragma unroll
      for (u32 i = 0; i < NI; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = acc[i][j] * keep + (w > 0.0f ? w * x[u][i][j] : 0.0f);
    }
  }
#pragma unroll
  for (u32 i = 0; i < NI; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) group_acc[g][c0 + 128 * i + j] = acc[i][j];
  if (tid() % 32 == 0) {
    group_m[g] = m;
    group_sum[g] = sum;
  }
  __syncthreads();
  float M = -f32_inf();
#pragma unroll
  for (u32 k = 0; k < G; ++k) M = fmaxf(M, group_m[k]);
  float scale[G], total = 0.0f;
#pragma unroll
  for (u32 k = 0; k < G; ++k) {
    scale[k] = group_m[k] == -f32_inf() ? 0.0f : fexp(group_m[k] - M);
    total += group_sum[k] * scale[k];
  }
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  for (u32 c = tid(); c < COLS; c += THREADS) {
    float v = 0.0f;
#pragma unroll
    for (u32 k = 0; k < G; ++k) v += group_acc[k][c] * scale[k];
    o[c] = from_float<TO>(v * inv);
  }
  if (lse_writer) lse[(u64)b * rows_total + row] = M == -f32_inf() ? -f32_inf() : M + flog(total);
}

}  // namespace dsv3
