#!/usr/bin/env python3
"""Emulates kernels/awq_gemm_wgs.cuh (the sm_90a AWQ W4A16 small-M GEMM) thread by thread.

No GPU here: this checks the index algebra of the source, by a hand-written model, against a
float64 reference on random data. Modelled, in the kernel's terms:
- the checkpoint's packing → awq_repack's words (hip_mfma_awq_emulate's pack / repack);
- the host's TMA maps (src/backend/gemm_wgs.rs launch_awq_wgs): the words as bytes
  [E, N/8, K/32, 128] with box (128, 4, 16, 1) at (0, 4·kb, 16·nt, e), the bf16 rows as bytes
  [rows, 2K] with two boxes (128, NT) at (256·kb + 128·b, m0); box rows in order (dim 1 fastest),
  out-of-range elements zero, the 128-byte swizzle (16-byte chunk c of row r at c ^ (r % 8));
- the scales and zeros by TMA (launch_awq_wgs's unswizzled maps: the f16 scales as bytes
  [E, K/G, 2N], box (256, 128/G, 1) at (256·nt, GB·kb, e); qzeros as bytes [E, K/G, N/2], box (64,
  128/G, 1) at (64·nt, GB·kb, e); zero past N or K / G; N % 32 == 0) and the consumer's reads
  (words cg, cg + 1 of row h at byte 64·h + 4·cg, nibble awq_nib(g); scales at 256·h + 2·row)
  and conversions (awq_zneg, f16 → f32);
- the consumer's word addresses ((w_lo + 128 j) ^ 16 j, (w_hi + 128 j) ^ 16 (4 + j)), asserted to
  hit word `lane` of rows 4·cg + j / 4·cg + 4 + j, and the warp's bank pattern;
- awq_deq2 bit by bit (mask | 0x4300, bf16 add of the zneg bits; exactness asserted);
- the register A fragment of m64nNk16 (warp w's rows 16w + lane/4 (+8), k 2(lane%4) + {0, 1}
  (+8)) assembled from every thread and compared with the dequantized weights;
- the B operand through the K-major 128B-swizzle descriptor (start + 32 bytes per k16 step inside
  a box; the hardware XOR of address bits [4:6] with [7:9]) compared with the activations;
- the per-group f32 partials (G 64: steps 0-3 / 4-7; G 128: all 8), the row-scale promotion
  through the accumulator layout (d[4j + 2h + e] = row g + 8h, token 8j + 2q + e);
- the stream-K walk (wgs_init's ranges, WgsCtx::seg) and the split-K hand-off of wgs_flush /
  wgs_finish (whole tile → bf16 out, else the f32 workspace and the tile's counter; the CTA whose
  addition completes sk converts it; modelled at the flush, the kernel converts after its range:
  the same sums), grouped tiles.
It checks the algebra, not the compiled code or the hardware.

Usage: python3 docs/perf/awq_wgs_emulate.py   (numpy; one line per case, exits 1 on error)
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hip_mfma_awq_emulate import awq_nib, bf16_bits_to_f, pack_awq, repack  # noqa: E402


def f_to_bf16_bits(x):
    """Round-to-nearest-even f32 → bf16 bits (the activations are bf16 values already)."""
    b = np.array([x], dtype=np.float32).view(np.uint32)[0]
    return int((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF


def swizzle(off):
    """Byte offset inside a 1024-aligned 128B-swizzled region → where the byte lives."""
    return off ^ (((off >> 7) & 7) << 4)


def tma_box(tensor, coords, box, swz=True):
    """A TMA box of a byte tensor (numpy array, dims outermost first) at `coords` (innermost
    first) into a flat byte buffer, 128B-swizzled (swz) or not; out-of-range bytes are zero."""
    dims = tensor.shape[::-1]  # innermost first
    out = np.zeros(int(np.prod(box)), dtype=np.uint8)
    row = 0
    for idx in np.ndindex(*box[:0:-1]):  # outer dims, dim 1 fastest (ndindex: last fastest)
        outer = idx[::-1]  # (d1, d2, ...)
        full = [coords[i + 1] + outer[i] for i in range(len(outer))]
        for b in range(box[0]):
            c0 = coords[0] + b
            inside = c0 < dims[0] and all(0 <= full[i] < dims[i + 1] for i in range(len(full)))
            if inside:
                off = row * box[0] + b
                out[swizzle(off) if swz else off] = tensor[tuple(full[::-1]) + (c0,)]
        row += 1
    return out


def u32_at(buf, off):
    return int(buf[off]) | int(buf[off + 1]) << 8 | int(buf[off + 2]) << 16 | int(buf[off + 3]) << 24


def deq2(w, h, zneg):
    """awq_deq2: nibbles h, h + 4 → bf16x2 of 128 + q, plus the zneg bf16x2 (1.0 · x + zneg)."""
    x = ((w >> (4 * h)) & 0x000F000F) | 0x43004300
    out = []
    for half in (0, 16):
        a = float(bf16_bits_to_f((x >> half) & 0xFFFF)[0])
        z = float(bf16_bits_to_f((zneg >> half) & 0xFFFF)[0])
        v = a + z  # exact: |q − z| ≤ 15 (checked below by the round trip)
        assert f_to_bf16_bits(v) << 16 == np.array([v], dtype=np.float32).view(np.uint32)[0], "q − z not exact"
        out.append(v)
    return out


def run(NT, G, M, N, K, E, grid, tile_expert, num_tiles, rng):
    GB, SPG = 128 // G, G // 16
    # Weights (checkpoint layout per expert), zeros, f16 scales; activations as bf16 values.
    qv = rng.integers(0, 16, size=(E, K, N))
    zv = rng.integers(0, 16, size=(E, K // G, N))
    sc = rng.uniform(1e-3, 1e-2, size=(E, K // G, N)).astype(np.float16).astype(np.float64)
    grouped = tile_expert is not None
    m_tiles = min(num_tiles, -(-M // NT)) if grouped else -(-M // NT)
    rows = m_tiles * NT if grouped else M
    a = np.array([bf16_bits_to_f(f_to_bf16_bits(v))[0] for v in rng.uniform(-2, 2, size=rows * K)]).reshape(rows, K)
    words = np.stack([repack(pack_awq(qv[e]), K, N) for e in range(E)])  # [E, N/8·K/32·32]
    assert N % 32 == 0, "launch_awq_wgs takes N % 32 == 0 only (the zeros' TMA row stride N/2)"
    zwords = np.stack([pack_awq(zv[e]) for e in range(E)])  # [E, K/G, N/8]
    zbytes = np.ascontiguousarray(zwords).astype(np.uint32).view(np.uint8).reshape(E, K // G, N // 2)
    sbytes = sc.astype(np.float16).view(np.uint8).reshape(E, K // G, 2 * N)
    wbytes = words.view(np.uint8).reshape(E, N // 8, K // 32, 128)
    abits = np.array([f_to_bf16_bits(v) for v in a.ravel()], dtype=np.uint16).reshape(rows, K)
    abytes = abits.view(np.uint8).reshape(rows, 2 * K)
    deqw = [((qv[e] - np.repeat(zv[e], G, axis=0)) * np.repeat(sc[e], G, axis=0)) for e in range(E)]  # [K, N]
    ref = np.zeros((rows, N))
    for mt in range(m_tiles):
        e = tile_expert[mt] if grouped else 0
        r0, r1 = mt * NT, min(mt * NT + NT, rows)
        ref[r0:r1] = a[r0:r1] @ deqw[e]

    sk, sn = -(-K // 128), -(-N // 128)
    total = m_tiles * sn * sk
    out = np.full((rows, N), np.nan)
    ws = np.zeros((rows, N))
    counters = np.zeros(m_tiles * sn, dtype=np.int64)
    worst_bank = 0
    for cta in range(grid):
        begin, end = total * cta // grid, total * (cta + 1) // grid
        u = begin
        while u < end:
            # WgsCtx::seg
            tile, kb0 = u // sk, u % sk
            kb1 = min(sk, kb0 + (end - u))
            mt, nt = tile // sn, tile % sn
            e = tile_expert[mt] if grouped else 0
            m0, n0 = mt * NT, nt * 128
            tot = np.zeros((128, NT))
            for kb in range(kb0, kb1):
                wbox = tma_box(wbytes, (0, 4 * kb, n0 // 8, e), (128, 4, 16, 1))
                tbox = [tma_box(abytes, (256 * kb + 128 * b, m0), (128, NT)) for b in range(2)]
                # The stage's aux area: the scale box, then the zero box (Z_OFF = 256·GB).
                aux = np.concatenate([tma_box(sbytes, (256 * nt, GB * kb, e), (256, GB, 1), swz=False),
                                      tma_box(zbytes, (64 * nt, GB * kb, e), (64, GB, 1), swz=False)])
                z_off = 256 * GB
                # Consumers: A fragments per warpgroup, D = A · Bᵀ per group, promotion.
                for w in range(2):
                    A = np.zeros((8, 64, 16))  # [k16 step][row in the warpgroup][k]
                    scale = np.zeros((GB, 64))
                    for wi in range(4):
                        banks = {}
                        for ln in range(32):
                            g, t = ln // 4, ln % 4
                            cg, row_lo = 8 * w + 2 * wi, 16 * (4 * w + wi) + g
                            w_lo, w_hi = cg * 512 + 4 * ln, cg * 512 + 512 + 4 * ln
                            lo = [u32_at(wbox, (w_lo + 128 * j) ^ (16 * j)) for j in range(4)]
                            hi = [u32_at(wbox, (w_hi + 128 * j) ^ (16 * (4 + j))) for j in range(4)]
                            for j in range(4):
                                # the swizzled address is word `ln` of rows 4 cg + j / 4 (cg + 1) + j
                                assert (w_lo + 128 * j) ^ (16 * j) == swizzle((4 * cg + j) * 128 + 4 * ln)
                                assert (w_hi + 128 * j) ^ (16 * (4 + j)) == swizzle((4 * cg + 4 + j) * 128 + 4 * ln)
                                banks.setdefault(j, []).append(((w_lo + 128 * j) ^ (16 * j)) // 4 % 32)
                            zneg_lo, zneg_hi = [], []
                            for h in range(GB):
                                # One 8-byte read: zero words cg (row_lo) and cg + 1 (row_lo + 8), nibble awq_nib(g).
                                zw = (u32_at(aux, z_off + 64 * h + 4 * cg), u32_at(aux, z_off + 64 * h + 4 * cg + 4))
                                zneg_lo.append((((0xC300 | ((zw[0] >> (4 * awq_nib(g))) & 15)) * 0x10001) & 0xFFFFFFFF))
                                zneg_hi.append((((0xC300 | ((zw[1] >> (4 * awq_nib(g))) & 15)) * 0x10001) & 0xFFFFFFFF))
                                for rr, r in ((row_lo, 16 * wi + g), (row_lo + 8, 16 * wi + g + 8)):
                                    scale[h, r] = float(aux[256 * h + 2 * rr:256 * h + 2 * rr + 2].view(np.float16)[0])
                                    n, gi = n0 + rr, kb * GB + h
                                    want_s = sc[e, gi, n] if n < N and gi < K // G else 0.0
                                    assert scale[h, r] == want_s, (h, rr, scale[h, r], want_s)
                            for j in range(4):
                                h = j * 32 // G
                                zl, zh = zneg_lo[h], zneg_hi[h]
                                for kk in range(2):
                                    a0 = deq2(lo[j], 2 * kk, zl)
                                    a1 = deq2(hi[j], 2 * kk, zh)
                                    a2 = deq2(lo[j], 2 * kk + 1, zl)
                                    a3 = deq2(hi[j], 2 * kk + 1, zh)
                                    s_ = 2 * j + kk
                                    r = 16 * wi + g
                                    A[s_, r, 2 * t:2 * t + 2] = a0
                                    A[s_, r + 8, 2 * t:2 * t + 2] = a1
                                    A[s_, r, 2 * t + 8:2 * t + 10] = a2
                                    A[s_, r + 8, 2 * t + 8:2 * t + 10] = a3
                        for j, b in banks.items():
                            worst_bank = max(worst_bank, max(b.count(x) for x in set(b)))
                    # The A fragments are the integer weights (q − z) of rows n0 + 64 w + r, k = 128 kb + 16 s + i.
                    for s_ in range(8):
                        for r in range(64):
                            n = n0 + 64 * w + r
                            for i in range(16):
                                k = 128 * kb + 16 * s_ + i
                                want = (qv[e, k, n] - zv[e, k // G, n]) if (n < N and k < K) else None
                                if want is not None:
                                    assert A[s_, r, i] == want, (w, s_, r, i)
                    # B through the descriptor: token n, k16 step s.
                    part = np.zeros((GB, 64, NT))
                    for s_ in range(8):
                        box = tbox[s_ // 4]
                        B = np.zeros((NT, 16))
                        for n in range(NT):
                            for i in range(16):
                                off = (n // 8) * 1024 + (n % 8) * 128 + 32 * (s_ % 4) + 2 * i
                                bits = int(box[swizzle(off)]) | int(box[swizzle(off) + 1]) << 8
                                B[n, i] = bf16_bits_to_f(bits)[0]
                                tok, k = m0 + n, 128 * kb + 64 * (s_ // 4) + 16 * (s_ % 4) + i
                                want = a[tok, k] if (tok < rows and k < K) else 0.0
                                assert B[n, i] == want, (s_, n, i)
                        part[s_ // SPG] += A[s_] @ B.T
                    # Promotion through the accumulator layout: thread (warp wi, lane) holds
                    # d[4j + 2h + e] = row 16 wi + g + 8 h, token 8 j + 2 q + e.
                    for wi in range(4):
                        for ln in range(32):
                            g, q = ln // 4, ln % 4
                            for i in range(NT // 2):
                                jj, hh, ee = i // 4, (i // 2) % 2, i % 2
                                r, tok = 16 * wi + g + 8 * hh, 8 * jj + 2 * q + ee
                                for h in range(GB):
                                    tot[64 * w + r, tok] += part[h, r, tok] * scale[h, r]
            # wgs_flush
            whole = kb0 == 0 and kb1 == sk
            for r in range(128):
                n = n0 + r
                for tok in range(NT):
                    row = m0 + tok
                    if n < N and row < rows:
                        if whole:
                            out[row, n] = tot[r, tok]
                        else:
                            ws[row, n] += tot[r, tok]
            if not whole:
                counters[tile] += kb1 - kb0
                if counters[tile] == sk:
                    for r in range(128):
                        for tok in range(NT):
                            if n0 + r < N and m0 + tok < rows:
                                out[m0 + tok, n0 + r] = ws[m0 + tok, n0 + r]
                                ws[m0 + tok, n0 + r] = 0.0
                    counters[tile] = 0
            u += kb1 - kb0
    assert not np.isnan(out).any(), "an output was never written"
    assert not ws.any() and not counters.any(), "the workspace / counters are not left zero"
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref)), worst_bank


def main():
    rng = np.random.default_rng(7)
    bad = 0
    cases = [
        # NT, G, M, N, K, experts, grid (CTAs), tile_expert, num_tiles
        # (N % 32 == 0: the entry's zeros arrive by TMA.)
        (16, 128, 1, 160, 256, 1, 1, None, None),
        (16, 64, 5, 224, 448, 1, 3, None, None),   # K % 128 == 64: a half block; N partial; stream-K
        (64, 128, 20, 128, 384, 1, 2, None, None),
        (64, 64, 64, 288, 192, 1, 4, None, None),
        (16, 64, 17, 96, 64, 1, 2, None, None),    # K < 128, two M tiles, more CTAs than blocks per tile
        (16, 128, 48, 160, 256, 3, 5, [2, 0, 2], 3),  # grouped: three M tiles of two experts
    ]
    for NT, G, M, N, K, E, grid, te, nt in cases:
        err, bank = run(NT, G, M, N, K, E, grid, te, nt, rng)
        ok = err < 1e-12 and bank <= 1
        bad += not ok
        print(f"AWQ wgs NT {NT:2d} G {G:3d} M {M:3d} N {N:3d} K {K:3d} experts {E} CTAs {grid} "
              f"{'grouped' if te else 'dense  '}: rel err {err:.1e} (f64), worst word-read bank multiplicity {bank} "
              f"{'ok' if ok else 'FAIL'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
