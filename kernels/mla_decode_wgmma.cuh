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
// zero-filled and never written) and walks its KV range 64 keys (one page) at a time. Tile i of a
// segment sits in K buffer i % 2 and is OWNED by warpgroup i % 2 (FlashMLA-style alternation):
//   - the owner computes the whole S(i) = Q·K(i)ᵀ [64 × 64] (36 × wgmma m64n64k16, A = Q, B = the
//     K tile, both K-major 128-byte swizzled in shared memory; 32 f32 of S per thread), does the
//     online softmax in registers (log2 domain, causal mask inside the query block; a row lives
//     in one quad, so the row maximum needs two shuffles and no shared-memory exchange), writes
//     P(i) (bf16, a 64 × 64 swizzled tile) and the row statistics m(i), c(i) = exp2(m(i-1) - m(i))
//     to shared memory;
//   - O [64 × 512] f32 is split by output columns: WG w owns columns 256w .. 256w + 255 (128 f32
//     per thread); both warpgroups do their half of O = c(i)·O + P(i)·V(i) every tile (4 × wgmma
//     m64n256k16, A = P from shared memory, B = V = the first 512 columns of the K tile read
//     MN-major with the transpose bit: the cache is read once);
//   - both warpgroups track the same m (the non-owner reads m(i), c(i)); each keeps a row sum that
//     only the owner's tiles add to; the two are added at the end of a segment.
// The non-owner issues S(i + 1) (its own next tile) right behind its PV(i): the tensor cores run
// PV(i) (both halves) and S(i + 1) back to back, and each warpgroup's O rescale and barrier
// waits run while the other's MMAs do. What stays serialized with the MMAs: the softmax of tile
// i + 1 (it needs S(i + 1), queued behind PV(i)), because S(i + 2) cannot be queued in front of
// it: tile i + 2 goes into the buffer PV(i) just released (two stages, see below).
//
// Per tile i (owner A, other B; named barriers, 256 threads, one side arrives, the other waits):
//   A: softmax(i) → [wait PFREE(i-1)] → P(i), m, c → arrive PFULL(i) → rescale O, PV_A(i) → wait
//      it → wait VFREE(i) → arrive PFREE(i) → cp.async tile i + 2 into buffer i % 2.
//   B: wait PFULL(i) → read m, c; rescale O, PV_B(i) → wait tile i + 1 landed → S(i + 1) →
//      wait PV_B(i) → arrive VFREE(i) → wait S(i + 1) → (B owns i + 1).
// PFULL: P(i) and the statistics are in shared memory. VFREE: B's PV(i) completed (buffer i % 2
// is free for tile i + 2 once A's own PV(i) completed too). PFREE: A's PV(i) completed (P may be
// overwritten by the next owner; B's own PV(i) it waited itself). Each barrier alternates arrive /
// wait roles between the warpgroups every tile, and program order guarantees a warpgroup never
// reaches a barrier's next generation before the other one completed the current one (A waits
// VFREE(i) before it arrives PFREE(i); B waits PFULL(i) before it can arrive PFULL(i + 1)).
// No wgmma group is in flight at the loop edge or at the role branch, and the one branch with a
// group in flight (B's PV(i) around "is there a tile i + 1") touches no accumulator; the
// warpgroup index comes from a shuffle so ptxas sees warp-uniform branches (else C7520: every
// wgmma serialized). ptxas reports no C7514 / C7519 / C7520 for this kernel.
//
// Loads: warpgroup w loads K buffer w (tiles w, w + 2, ...) with TMA: one of its threads issues
// the tile's 9 boxes (a 64-column chunk of the page's 64 rows each; tmap_cache views the cache as
// [pages·64 rows, 1152 bytes] with the 128-byte swizzle wgmma reads) on the buffer's mbarrier,
// the moment the buffer is free (VFREE); only the loader waits on it. The whole page lands: rows
// past the sequence end (the last page's unused slots, NaN-poisoned in the tests) are zeroed by
// the loader after its wait (generic stores, then fence.proxy.async and a warpgroup barrier),
// since P = 0 does not cancel a NaN of V. Q is copied once per segment by WG 0 with cp.async
// (zero fill for the padding query rows), waited and fenced before S(0). The other warpgroup
// reads a tile (V) only after the loader's PFULL arrival, which follows the loader's wait.
// (Until session 5 the K tiles were cp.async copies, 36 per thread and tile, completing the
// mbarrier through cp.async.mbarrier.arrive.noinc.)
//
// Why two K stages and no producer warp: Q (72 KiB) + 2 K tiles (144 KiB) + P (8 KiB) use 225 KiB
// of the 227; a third 72 KiB stage does not fit, and Q is read by every S (as the A operand from
// shared memory; in registers it would take 144 of them per thread). With two stages tile i + 2
// can only be loaded once PV(i) finished (its V is the buffer), which is exactly when the owner
// issues it, so a producer warp would not load earlier. Measured (session 5, a variant that skips
// the reloads): the loads cost 24% at h = 128 (590 vs 449 TFLOPS) and 33% at h·s_q = 32.
//
// Cost model (per 64-row × 64-key tile per SM; 4,096 bf16 FLOP/cycle/SM, 128 B/cycle of shared
// memory): S = 4.7 MFLOP = 1,152 cycles, each m64n64k16 reads 2 KiB of Q + 2 KiB of K per 32
// cycles of math = 128 B/cycle (at the shared-memory limit; the former m64n32 halves needed 192
// B/cycle, ≈ 2/3 of the tensor rate); PV 2 × 512 cycles at 80 B/cycle. With V(i) = end of PV(i),
// L = load latency of a tile, S(i + 1) starts at max(V(i-1) + L, V(i)), the softmax (≈ 250
// cycles with the barriers) is the only serialized non-MMA step:
//   V(i+1) = max(V(i-1) + L, V(i)) + 1,152 + 250 + 1,024 → 2,426 cycles per tile while
//   L ≤ 2,426 (≈ 1.4 µs), else (L + 2,426) / 2.
// Shared memory (1024-aligned): Q [9 chunks][64 rows][128 B], K [2][9][64][128 B], P [64][128 B],
// row statistics [2][64] f32, two mbarriers (64 B): 3·73,728 + 8,192 + 512 + 64 (+ 1,024
// alignment) = 230,976 bytes. A chunk is 64 columns (128 bytes) of 64 rows; 16-byte piece c of
// row r sits at (c ^ (r & 7))·16 (what wgmma's 128-byte swizzle reads; 8-row atoms 1,024 bytes
// apart).
//
// FP8 e4m3 cache (TC = e4m3fn, `mla_decode_wgmma_fp8_*`): the same kernel, shared memory and
// schedule; the K buffers double as the raw tiles' staging area (TMA boxes of the 656-byte rows,
// the scales by bulk copies) and both warpgroups dequantize half of each tile in place right
// behind their PV of the previous tile, joined by one more named barrier (BAR_DQ) before S. See
// "fp8 e4m3 cache" below (mla_wg::F8Dequant).
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
constexpr u32 WG_THREADS = 128;
constexpr u32 CHUNK = 64 * 128;                     // 64 rows × 64 bf16 columns: 8 KiB
constexpr u32 TILE = (mla::DK / 64) * CHUNK;        // Q, or one 64-key K tile: 73,728 bytes
constexpr u32 P_TILE = BM * mla::NT * 2;            // 8 KiB
constexpr u32 ROWBUF = 2 * BM * 4;                  // [2][64] f32: m / c of a tile, or the row sums
constexpr u32 BARS = 64;                            // the two K-tile "full" mbarriers (padded)
constexpr u32 SMEM = 3 * TILE + P_TILE + ROWBUF + BARS + 1024;  // the host's MlaDecodePlan mirrors it
static_assert(SMEM <= 227 * 1024, "one CTA per SM");
static_assert(mla::NT == 64 && mla::DK % 64 == 0 && mla::DV == 512, "page tiles of 64 keys, 9 chunks, 512 outputs");

// Named barriers (0 is __syncthreads). Each is used between the two warpgroups only: one
// warpgroup arrives (bar.arrive), the other waits (bar.sync), 256 threads per generation.
constexpr u32 BAR_PFULL = 1;   // P(i), m(i), c(i) are in shared memory (owner of tile i arrives)
constexpr u32 BAR_VFREE = 2;   // the non-owner's PV(i) completed (it arrives; the owner may reload buffer i % 2)
constexpr u32 BAR_PFREE = 3;   // the owner's PV(i) completed (it arrives; the next owner may overwrite P)

// The 16-byte pieces one warpgroup's thread copies into a [64][576] bf16 tile of 128-byte
// chunks: piece p = t % 8 of rows t / 8 + 16·h (h = 0..3), in each of the 9 chunks (36 copies).
// The shared offsets are this thread's base plus constants (one address register); 8 threads
// read a 128-byte segment of a row.
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
    for (u32 h = 0; h < BM / (WG_THREADS / 8); ++h) {
      const bool ok = (i32)(row + 16 * h) < rows;
#pragma unroll
      for (u32 k = 0; k < mla::DK / 64; ++k)
        cp_async_16(dst + smem + h * 16 * 128 + k * CHUNK, ok ? g + h * 16 * (mla::DK * 2) + k * 128 : g - gmem, ok);
    }
  }
};

// ---- fp8 e4m3 cache (TC = e4m3fn, the 656-byte rows of mla_fp8_row.cuh) ---------------------
// No staging buffer fits next to Q and the two bf16 K tiles (225 of the 227 KiB), so a K buffer
// is its own tile's staging area. The raw page lands by TMA (the same 128-byte-swizzled boxes of
// 64 rows × 128 bytes, from the cache viewed as [pages·64 rows, 656 bytes]) plus 64 bulk copies:
//   - latent band g (bytes 128g .. 128g + 127 of every row: the 128 e4m3 of scale group g) into
//     chunk 2g + 1 (the odd chunks), 8 KiB each;
//   - the rope (bytes 528 .. 655: 64 bf16) into chunk 8, already in the bf16 tile's layout;
//   - the scales (bytes 512 .. 527 of a row, 16 bytes, cp.async.bulk) as [32 rows][4] f32 per
//     half of the tile into chunk 6 (an even chunk, free until band 3): rows 0..31 in its bf16
//     rows 0..3, rows 32..63 in its bf16 rows 32..35 (each half's scales sit in rows that only
//     that half overwrites);
// 4·8 + 8 KiB + 1 KiB = 41,984 bytes = one page: the same mbarrier expect_tx protocol as bf16.
// Both warpgroups wait for the tile's mbarrier and dequantize half of it in place (F8Dequant):
// the owner (loader) rows 32..63, the other warpgroup rows 0..31, each right behind its own PV
// of the previous tile (the tensor cores run PV(i) meanwhile); the other warpgroup fences and
// arrives on BAR_DQ, the owner waits on BAR_DQ before S. Band g → bf16 chunks 2g (written over the
// free even chunk) and 2g + 1 (written over the band itself). A thread takes 16-byte piece
// p = t % 8 of rows 32·half + t / 8 + 16h: the 8 lanes of a row read the whole 128-byte band row
// before any of them writes it (__syncwarp: a row's lanes are one warp's), and only that row's
// lanes write that row of chunk 2g + 1, so no other thread's raw bytes are overwritten. A half's
// scales are read by all of its warps: one barrier of the warpgroup after the band-3 scale reads,
// before band 3's writes. Values are bf16(e4m3 · s_g) with the conversion of the mma.sync fp8
// kernels (e4m3fn_x4_to_f32, f32 product, round to nearest even); rows past the sequence end are
// written as zeros (their bytes and scales may be NaN; the rope rows too). Checked without a
// GPU by docs/perf/mla_wgmma_fp8_emulate.py (layout, in-place ordering, zero rows, bank groups)
// and docs/perf/mla_wgmma_protocol_sim.py --fp8 (barriers and mbarrier parities).
constexpr u32 F8_BANDS = mla::F8_LATENT / mla::F8_GROUP;             // latent bands = scale groups
constexpr u32 F8_SCALE_OFF = 2 * (F8_BANDS - 1) * CHUNK;             // chunk 6: the scales until band 3
constexpr u32 F8_HALF = mla::NT / 2;                                 // rows per dequantizing warpgroup
constexpr u32 F8_TILE_BYTES = (F8_BANDS + 1) * CHUNK + mla::NT * 16;  // 4 bands + rope + scales
static_assert(F8_TILE_BYTES == mla::NT * mla::F8_ROW, "the boxes and scale copies cover the page");
static_assert(mla::F8_GROUP == 128 && mla::F8_ROPE_DIM == 64 && mla::F8_ROPE + 128 == mla::F8_ROW,
              "a band is one 128-byte box row; the rope one bf16 chunk, the last 128 bytes of a row");
static_assert(F8_HALF * 16 <= 8 * 128 && F8_HALF == 2 * (WG_THREADS / 8), "a half's scales fit 8 of its rows; 2 passes");
constexpr u32 BAR_DQ = 6;  // fp8: the non-owner's half of tile i is dequantized (it arrives; the owner waits before S(i))

// Where the scales of tile row r land: [32][4] f32 per half, in that half's first rows of chunk 6.
DSV3_DEV constexpr u32 f8_scale_at(u32 r) { return F8_SCALE_OFF + (r / F8_HALF) * F8_HALF * 128 + (r % F8_HALF) * 16; }

#if defined(DSV3_SM90A)
// One warpgroup's thread in the in-place dequantization of half an fp8 K tile (see above).
struct F8Dequant {
  u32 t, lo;                      // thread in the warpgroup; first row of the half
  u32 raw, first, second, scale;  // offsets of row lo + t / 8: its band piece, its two output pieces, its scales
  DSV3_DEV F8Dequant(u32 t_, u32 half) : t(t_), lo(half * F8_HALF) {
    const u32 row = lo + t / 8, p = t % 8, x = row & 7, hi = p / 4;
    raw = CHUNK + row * 128 + ((p ^ x) << 4);
    // Piece p holds values 16p .. 16p + 15 of the band: bf16 chunk 2g + p / 4, pieces q, q + 1
    // (q = 2(p % 4)). Lanes p >= 4 store the second piece first so that the 8 lanes of a row hit
    // 8 distinct bank groups per store (else lanes p and p + 4 would collide).
    const u32 q = 2 * (p % 4);
    first = hi * CHUNK + row * 128 + (((q + hi) ^ x) << 4);
    second = hi * CHUNK + row * 128 + (((q + 1 - hi) ^ x) << 4);
    scale = f8_scale_at(row);
  }
  // Eight e4m3 (two words) times `sc` → eight bf16 (one 16-byte piece); `keep` = 0 zeroes them.
  static DSV3_DEV Vec<u32, 4> dq8(u32 w0, u32 w1, float sc, u32 keep) {
    float f[4], g[4];
    e4m3fn_x4_to_f32(w0, f);
    e4m3fn_x4_to_f32(w1, g);
    Vec<u32, 4> v;
    v.v[0] = pack_bf16x2(f[0] * sc, f[1] * sc) & keep;
    v.v[1] = pack_bf16x2(f[2] * sc, f[3] * sc) & keep;
    v.v[2] = pack_bf16x2(g[0] * sc, g[1] * sc) & keep;
    v.v[3] = pack_bf16x2(g[2] * sc, g[3] * sc) & keep;
    return v;
  }
  // This half of the raw tile in K buffer `kt` (landed: its mbarrier waited) → the bf16 [64][576]
  // tile's rows lo .. lo + 31 in the same buffer; rows >= `valid` zeroed. `bar`: a named barrier
  // of this warpgroup's 128 threads. Ends with the proxy fence (generic stores before the tensor
  // cores read them); the caller joins the other half (BAR_DQ). Branch-free but for the partial
  // last tile's rope rows: it runs while this warpgroup's PV wgmma is in flight.
  DSV3_DEV void run(unsigned char* kt, i32 valid, u32 bar) const {
    const u32 hi = (t % 8) / 4;
#pragma unroll
    for (u32 g = 0; g < F8_BANDS; ++g) {
      float sc[2];
      Vec<u32, 4> r[2];
#pragma unroll
      for (u32 h = 0; h < 2; ++h) {
        sc[h] = *reinterpret_cast<const float*>(kt + scale + h * 16 * 16 + g * 4);
        r[h] = *reinterpret_cast<const Vec<u32, 4>*>(kt + raw + 2 * g * CHUNK + h * 16 * 128);
      }
      __syncwarp();  // the row's 8 lanes have read its band row before any of them overwrites it
      if (g == F8_BANDS - 1) named_bar_sync(bar, WG_THREADS);  // every scale read before chunk 6 is written
#pragma unroll
      for (u32 h = 0; h < 2; ++h) {
        const u32 keep = (i32)(lo + t / 8 + 16 * h) < valid ? 0xffffffffu : 0u;
        const u32 w0 = hi ? r[h].v[2] : r[h].v[0], w1 = hi ? r[h].v[3] : r[h].v[1];
        const u32 w2 = hi ? r[h].v[0] : r[h].v[2], w3 = hi ? r[h].v[1] : r[h].v[3];
        *reinterpret_cast<Vec<u32, 4>*>(kt + first + 2 * g * CHUNK + h * 16 * 128) = dq8(w0, w1, sc[h], keep);
        *reinterpret_cast<Vec<u32, 4>*>(kt + second + 2 * g * CHUNK + h * 16 * 128) = dq8(w2, w3, sc[h], keep);
      }
    }
    // This half's rope rows past the sequence end (TMA copied them as they are: possibly NaN).
    if (valid < (i32)(lo + F8_HALF)) {
      const u32 first_row = (u32)max(valid, (i32)lo);
      for (u32 x = t; x < (lo + F8_HALF - first_row) * 8; x += WG_THREADS)
        *reinterpret_cast<Vec<u32, 4>*>(kt + 2 * F8_BANDS * CHUNK + (first_row + x / 8) * 128 + (x % 8) * 16) = Vec<u32, 4>{};
    }
    fence_proxy_async();
  }
};
#endif  // DSV3_SM90A

}  // namespace mla_wg

#if defined(DSV3_SM90A)
// TC: the cache row type, bf16 ([pages, 64, 576] bf16) or e4m3fn ([pages, 64, 656] u8: the K
// buffers double as raw staging, dequantized in place by F8Dequant; everything else is shared).
template <class TO, class TC>
DSV3_DEV void mla_decode_wgmma_sm90(TO* DSV3_RESTRICT out, float* DSV3_RESTRICT lse, float* DSV3_RESTRICT o_ws,
                                    float* DSV3_RESTRICT lse_ws, const bf16* DSV3_RESTRICT q,
                                    const typename mla::CacheRow<TC>::elem* DSV3_RESTRICT cache, const i32* DSV3_RESTRICT block_table,
                                    const i32* DSV3_RESTRICT seq_lens, const i32* DSV3_RESTRICT meta, u32 batch,
                                    u32 s_q, u32 heads, u32 max_pages, float scale, const TmaMap& tmap_cache) {
  using namespace mla;
  using namespace mla_wg;
  constexpr bool F8 = CacheRow<TC>::FP8;
  static_assert(CTA_THREADS == 2 * WG_THREADS && WG_THREADS == 8 * 16, "TilePieces, F8Dequant: 8 threads per row, 16 rows per pass");
  extern __shared__ unsigned char smem_raw[];
  const SmemBase aligned = smem_base_1024(smem_raw);
  const u32 base = aligned.addr;
  unsigned char* sbase = aligned.ptr;
  const u32 sq = base, sk0 = base + TILE, sp = base + 3 * TILE;
  unsigned char* p_tile = sbase + 3 * TILE;
  float* red = reinterpret_cast<float*>(sbase + 3 * TILE + P_TILE);  // [2][64]: m(i), c(i); the row sums at the end
  const u32 full0 = base + 3 * TILE + P_TILE + ROWBUF;               // mbarrier of K buffer b: full0 + 8b

  const u32 rb = row_block_longest_first();
  const u32 rows_total = s_q * heads;
  if (rb * BM >= rows_total) return;
  const SplitOut<TO> dst{out, lse, o_ws, lse_ws, rows_total};
  // The warpgroup index through a shuffle: warp-uniform for ptxas, so that branches on it are
  // not divergent paths around wgmma (C7520 would serialize every wgmma).
  const u32 t_id = tid(), wg = __shfl_sync(0xffffffffu, t_id / WG_THREADS, 0), ln = lane();
  const TilePieces pieces(t_id % WG_THREADS);
  const u32 r0 = (t_id % WG_THREADS) / 32 * 16 + ln / 4, r1 = r0 + 8;  // this thread's rows of the 64
  const u32 gr0 = rb * BM + r0, gr1 = rb * BM + r1;
  const float sl2 = scale * 1.4426950408889634f;
  // Descriptors: Q and K (K-major) advance 32 bytes per k step of 16 inside a chunk, a chunk per
  // 4 steps; V (MN-major) 2,048 bytes per 16 keys; P (K-major) 32 bytes per 16 keys. Warpgroup w
  // computes S of the tiles in K buffer w only.
  const u64 dq = wgmma_desc_sw128(sq), dp = wgmma_desc_sw128(sp), dk = wgmma_desc_sw128(sk0 + wg * TILE);

  if (t_id == 0) {
    mbar_init(full0, 1);  // the loader's arrive.expect_tx; the TMA bytes complete the phase
    mbar_init(full0 + 8, 1);
    mbar_init_fence();
  }
  __syncthreads();
  // Warpgroup w loads K buffer w (and Q with tile 0) and is the only one to wait for its mbarrier:
  // the other warpgroup reads the tile (V of PV) only after w's BAR_PFULL arrival, which follows
  // w's wait and proxy fence. Thus no thread fences while its own cp.async copies are in flight
  // (fence.proxy.async is MEMBAR.ALL.CTA + FENCE.VIEW.ASYNC in SASS).
  const u32 full = full0 + 8 * wg;
  u32 phase = 0;  // parity of the next completion of `full` this thread waits for
  auto wait_full = [&]() {
    mbar_wait(full, phase);
    phase ^= 1u;
  };
  // fp8: each warpgroup also waits for every tile of the other buffer (it dequantizes half of
  // it), with its own parity of that mbarrier.
  u32 phase_o = 0;

  for (PartWalk walk(meta, batch, blockIdx.x); !walk.done(); walk.next()) {
    const Segment sg = walk.segment();
    const i32 len = seq_lens[sg.b];
    const i32 vis0 = visible_keys(len, s_q, heads, gr0), vis1 = visible_keys(len, s_q, heads, gr1);
    const i32* bt = block_table + (u64)sg.b * max_pages;
    // Tiles past the causal frontier are skipped.
    const u32 u_begin = sg.t_begin, u_end = min(sg.t_end, causal_tiles(len, s_q, heads, rb, BM, rows_total, NT));
    const u32 n = u_end > u_begin ? u_end - u_begin : 0u;  // tiles of this segment

    // A K tile (page `page`) into K buffer wg: one thread of this warpgroup issues the 9 TMA
    // boxes (64 rows × 128 bytes, 128-byte swizzle: the chunk layout) on the buffer's mbarrier.
    // The whole page lands, slots past the sequence end included (see fix_tail).
    // fp8: the page's raw rows instead (4 latent bands, the rope, the scales: see F8Dequant),
    // issued by the warpgroup's first warp.
    auto load_k = [&](i32 page) {
      if constexpr (F8) {
        if (t_id % WG_THREADS < 32) {
          const u32 kb = sk0 + wg * TILE;
          if (ln == 0) {
            mbar_arrive_expect_tx(full, F8_TILE_BYTES);
#pragma unroll
            for (u32 g = 0; g < F8_BANDS; ++g) tma_load_2d(kb + (2 * g + 1) * CHUNK, tmap_cache, full, (i32)(g * F8_GROUP), page * (i32)NT);
            tma_load_2d(kb + 2 * F8_BANDS * CHUNK, tmap_cache, full, (i32)F8_ROPE, page * (i32)NT);
          }
          __syncwarp();
          const u8* rows = cache + (u64)page * NT * F8_ROW + F8_SCALES;
#pragma unroll
          for (u32 r = ln; r < NT; r += 32) bulk_load(kb + f8_scale_at(r), rows + (u64)r * F8_ROW, 16, full);
        }
      } else {
        if (t_id % WG_THREADS == 0) {
          mbar_arrive_expect_tx(full, TILE);
#pragma unroll
          for (u32 k = 0; k < DK / 64; ++k) tma_load_2d(sk0 + wg * TILE + k * CHUNK, tmap_cache, full, (i32)(k * 128), page * (i32)NT);
        }
      }
    };
    // After tile i landed in this warpgroup's buffer: zero its rows past the sequence end (the
    // unused slots of the last page may hold anything, NaN included, and P = 0 does not cancel a
    // NaN of V in PV), fence those generic writes for the tensor cores, join the warpgroup.
    // fp8: dequantize the owner's half of the landed raw tile in place instead (zero rows
    // included), and wait for the other warpgroup's half (help_dequant).
    auto fix_tail = [&](u32 i) {
      const i32 valid = len - (i32)((u_begin + i) * NT);
      if constexpr (F8) {
        F8Dequant(t_id % WG_THREADS, 1).run(sbase + (1 + wg) * TILE, valid, 4 + wg);
        named_bar_sync(BAR_DQ, CTA_THREADS);
      } else {
        if (valid >= (i32)NT) return;
        const u32 first = (u32)max(valid, 0), rows = NT - first, pieces16 = rows * (DK / 64) * 8;
        for (u32 x = t_id % WG_THREADS; x < pieces16; x += WG_THREADS) {
          const u32 piece = x % 8, row = first + x / 8 % rows, k = x / 8 / rows;
          *reinterpret_cast<Vec<u32, 4>*>(sbase + (1 + wg) * TILE + k * CHUNK + row * 128 + piece * 16) = Vec<u32, 4>{};
        }
        fence_proxy_async();
        named_bar_sync(4 + wg, WG_THREADS);
      }
    };

    // fp8: the other warpgroup's half (rows 0..31) of tile j, in the other K buffer, once it
    // landed; then the fence (in run) and the arrival the owner's fix_tail waits for.
    auto help_dequant = [&](u32 j) {
      if constexpr (F8) {
        mbar_wait(full0 + 8 * (wg ^ 1u), phase_o);
        phase_o ^= 1u;
        F8Dequant(t_id % WG_THREADS, 0).run(sbase + (2 - wg) * TILE, len - (i32)((u_begin + j) * NT), 4 + wg);
        named_bar_arrive(BAR_DQ, CTA_THREADS);
      }
    };

    float s[32], o[128];
#pragma unroll
    for (u32 i = 0; i < 128; ++i) o[i] = 0.0f;
    float m0 = -f32_inf(), m1 = -f32_inf(), l0 = 0.0f, l1 = 0.0f;

    // S = Q · K(buffer wg)ᵀ [64 × 64]: one commit group.
    auto issue_qk = [&]() {
#pragma unroll
      for (u32 ks = 0; ks < DK / 16; ++ks) {
        const u64 off = ((ks / 4) * CHUNK + (ks % 4) * 32) >> 4;
        if (ks == 0) wgmma_m64n64k16_bf16<false, false>(s, dq + off, dk + off);
        else wgmma_m64n64k16_bf16<true, false>(s, dq + off, dk + off);
      }
    };
    // O[:, 256·wg ..] += P · V, V = the first 512 columns of K buffer `buf`.
    auto issue_pv = [&](u32 buf) {
      const u64 dv = wgmma_desc_sw128_mn(sk0 + buf * TILE + wg * 4 * CHUNK, CHUNK);
#pragma unroll
      for (u32 kk = 0; kk < NT / 16; ++kk) wgmma_m64n256k16_bf16<true, true>(o, dp + kk * 2, dv + kk * (2048 >> 4));
    };
    auto rescale = [&](float c0, float c1) {
#pragma unroll
      for (u32 j = 0; j < 32; ++j) {
        o[4 * j] *= c0;
        o[4 * j + 1] *= c0;
        o[4 * j + 2] *= c1;
        o[4 * j + 3] *= c1;
      }
    };

    if (n > 0) {
      // Prologue: warpgroup 0 loads Q and tile 0 (buffer 0), warpgroup 1 tile 1 (buffer 1);
      // warpgroup 0 computes S(0) (fp8: once warpgroup 1 dequantized its half of tile 0 too).
      const i32 page0 = bt[u_begin];
      if (wg == 0) {
        load_k(page0);
        pieces.copy(sq, q + ((u64)sg.b * rows_total + rb * BM) * DK, (i32)(rows_total - rb * BM));
        cp_async_commit();
        cp_async_wait<0>();
        fence_proxy_async();  // Q (cp.async writes: generic proxy) before the tensor cores read it
        named_bar_sync(4, WG_THREADS);
      } else if (n > 1) {
        load_k(bt[u_begin + 1]);
      }
      if (F8 && wg == 1) help_dequant(0);
      if (wg == 0) {
        wait_full();
        fix_tail(0);
        wgmma_fence();
        issue_qk();
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_pin(s);
      }
      // Tile i is owned by warpgroup i % 2: it computed S(i) (in `s`), does the softmax, writes
      // P(i) and the row statistics, and reloads buffer i % 2 with tile i + 2. Both warpgroups
      // do their half of PV(i). No wgmma group is in flight at a branch or at the loop edge.
      for (u32 i = 0; i < n; ++i) {
        const u32 buf = i & 1u;
        if (buf == wg) {
          // ---- owner of tile i ----
          const i32 page2 = i + 2 < n ? bt[u_begin + i + 2] : 0;  // early: hides the table read
          const i32 key0 = (i32)((u_begin + i) * NT + (ln & 3) * 2);
          float mx0 = m0, mx1 = m1;
#pragma unroll
          for (u32 j = 0; j < 8; ++j) {
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
          const float ms0 = mx0 == -f32_inf() ? 0.0f : mx0, ms1 = mx1 == -f32_inf() ? 0.0f : mx1;
          const float c0 = fexp2(m0 - ms0), c1 = fexp2(m1 - ms1);
          m0 = mx0;
          m1 = mx1;
          float ps0 = 0.0f, ps1 = 0.0f;
          u32 pk[16];
#pragma unroll
          for (u32 j = 0; j < 8; ++j) {
            const float p00 = fexp2(s[4 * j] - ms0), p01 = fexp2(s[4 * j + 1] - ms0);
            const float p10 = fexp2(s[4 * j + 2] - ms1), p11 = fexp2(s[4 * j + 3] - ms1);
            ps0 += p00 + p01;
            ps1 += p10 + p11;
            pk[2 * j] = pack_bf16x2(p00, p01);
            pk[2 * j + 1] = pack_bf16x2(p10, p11);
          }
          l0 = l0 * c0 + ps0;
          l1 = l1 * c1 + ps1;
          // P is free once the previous owner's PV(i - 1) completed (ours: waited in the
          // previous step).
          if (i > 0) named_bar_sync(BAR_PFREE, CTA_THREADS);
#pragma unroll
          for (u32 j = 0; j < 8; ++j) {
            const u32 col = j * 8 + (ln & 3) * 2;  // key inside the tile
            *reinterpret_cast<u32*>(p_tile + r0 * 128 + (((col / 8) ^ (r0 & 7)) << 4) + (col % 8) * 2) = pk[2 * j];
            *reinterpret_cast<u32*>(p_tile + r1 * 128 + (((col / 8) ^ (r1 & 7)) << 4) + (col % 8) * 2) = pk[2 * j + 1];
          }
          // Every thread of a quad stores its row's m and c (the same values), and reads c back
          // after the arrive: the O rescale cannot be scheduled before the arrive.
          red[r0] = mx0;
          red[r1] = mx1;
          red[BM + r0] = c0;
          red[BM + r1] = c1;
          fence_proxy_async();  // P (generic stores) before the tensor cores read it
          named_bar_arrive(BAR_PFULL, CTA_THREADS);
          rescale(red[BM + r0], red[BM + r1]);
          wgmma_pin(o);  // the rescale before the fence (else ptxas injects a warpgroup.arrive)
          wgmma_fence();
          issue_pv(buf);
          wgmma_commit();
          // fp8: half of tile i + 1 (the other buffer) while PV(i) runs.
          if (F8 && i + 1 < n) help_dequant(i + 1);
          wgmma_wait<0>();
          wgmma_pin(o);
          // Buffer `buf` is free once the other warpgroup's PV(i) also completed: reload it
          // with tile i + 2; then P may be overwritten by the next owner.
          // (In this order: the other warpgroup can reach its next wait on BAR_VFREE only after
          // the BAR_PFREE arrival, so that generation of BAR_VFREE is complete by then.)
          named_bar_sync(BAR_VFREE, CTA_THREADS);
          if (i + 1 < n) named_bar_arrive(BAR_PFREE, CTA_THREADS);
          if (i + 2 < n) load_k(page2);
        } else {
          // ---- the other warpgroup: its half of PV(i), then S(i + 1) (its own tile) ----
          named_bar_sync(BAR_PFULL, CTA_THREADS);
          const float mn0 = red[r0], mn1 = red[r1], c0 = red[BM + r0], c1 = red[BM + r1];
          // V(i) = tile i is visible: its loader (the owner) waited for its copies and fenced
          // before S(i), then arrived on BAR_PFULL.
          m0 = mn0;
          m1 = mn1;
          l0 *= c0;
          l1 *= c1;
          rescale(c0, c1);
          wgmma_pin(o);  // the rescale before the fence (else ptxas injects a warpgroup.arrive)
          wgmma_fence();
          issue_pv(buf);
          wgmma_commit();
          // S(i + 1) right behind PV(i), once tile i + 1 (loaded by this warpgroup) landed.
          if (i + 1 < n) {
            wait_full();
            fix_tail(i + 1);
            wgmma_fence();
            issue_qk();
            wgmma_commit();
            wgmma_wait<1>();  // PV(i) done: buffer i % 2 and P are no longer read by this warpgroup
            wgmma_pin(o);
            named_bar_arrive(BAR_VFREE, CTA_THREADS);
            wgmma_wait<0>();
            wgmma_pin(s);
          } else {
            wgmma_wait<0>();
            wgmma_pin(o);
            named_bar_arrive(BAR_VFREE, CTA_THREADS);
          }
        }
      }
    }

    // Row sums: across the quad, then the two warpgroups through shared memory (after every
    // thread's last read of m / c there).
    l0 += shfl_xor(l0, 1);
    l0 += shfl_xor(l0, 2);
    l1 += shfl_xor(l1, 1);
    l1 += shfl_xor(l1, 2);
    __syncthreads();
    if ((ln & 3) == 0) {
      red[wg * BM + r0] = l0;
      red[wg * BM + r1] = l1;
    }
    __syncthreads();
    const float L0 = red[r0] + red[BM + r0], L1 = red[r1] + red[BM + r1];
    const float inv0 = row_inv(L0), inv1 = row_inv(L1);
    const u32 col0 = wg * 256 + (ln & 3) * 2;
    // Q, K and P are free: no MMA or TMA copy is in flight, and every thread is past the barriers
    // above. The row buffer lies past them.
    static_assert(STAGE_BYTES<BM> <= 3 * TILE + P_TILE, "staging tile over the Q / K / P buffers");
    dst.rows(sg, [&](auto* ob, float* lb) {
      store_rows<BM, CTA_THREADS, true>(ob, rb, rows_total, reinterpret_cast<float*>(sbase), t_id, [&](auto&& put) {
#pragma unroll
        for (u32 j = 0; j < 32; ++j) {
          put(r0, col0 + j * 8, o[4 * j] * inv0, o[4 * j + 1] * inv0);
          put(r1, col0 + j * 8, o[4 * j + 2] * inv1, o[4 * j + 3] * inv1);
        }
      });
      if (wg == 0 && (ln & 3) == 0) {
        if (gr0 < rows_total) lb[gr0] = row_lse2(m0, L0);
        if (gr1 < rows_total) lb[gr1] = row_lse2(m1, L1);
      }
    });
    fence_proxy_async();  // the staging tile's generic accesses before the next segment's TMA writes
    __syncthreads();  // Q, K, P and the row buffer are reused by the next segment
  }
}
#endif  // DSV3_SM90A

// Entry: grid (num_parts, ceil(s_q·H / 64)), block 256, dynamic smem mla_wg::SMEM.
// TC: the cache row type, bf16 (default) or e4m3fn (the fp8 cache's 656-byte rows, u8 pointer;
// tmap_cache then views it as [pages·64 rows, 656 bytes], same boxes).
template <class TO, class TC = bf16>
DSV3_DEV void mla_decode_wgmma(TO* DSV3_RESTRICT out, float* DSV3_RESTRICT lse, float* DSV3_RESTRICT o_ws,
                               float* DSV3_RESTRICT lse_ws, const bf16* DSV3_RESTRICT q,
                               const typename mla::CacheRow<TC>::elem* DSV3_RESTRICT cache,
                               const i32* DSV3_RESTRICT block_table, const i32* DSV3_RESTRICT seq_lens,
                               const i32* DSV3_RESTRICT meta, u32 batch, u32 s_q, u32 heads, u32 max_pages, float scale,
                               const TmaMap& tmap_cache) {
#if defined(DSV3_SM90A)
  mla_decode_wgmma_sm90<TO, TC>(out, lse, o_ws, lse_ws, q, cache, block_table, seq_lens, meta, batch, s_q, heads, max_pages, scale,
                            tmap_cache);
#else
  trap();
#endif
}

}  // namespace dsv3
