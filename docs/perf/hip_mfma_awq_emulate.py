#!/usr/bin/env python3
"""Emulates kernels/quant_gemm.cuh's awq_gemm_mfma (the HIP MFMA AWQ W4A16 loop) lane by lane.

Sibling of hip_mfma_emulate.py (whose MFMA model, documented lane layouts and tile configuration it
imports). No AMD GPU exists here, so this checks the index algebra of the source, by hand-written
model, against a float64 reference on random data: the checkpoint's AWQ packing (nibble order
0,4,1,5,2,6,3,7) → awq_repack's layout (awq_repacked_pos), MfmaStager's loader for BM activation
rows + 32 weight-word rows (weight rows step 256 bytes per K tile) and its XOR-swizzled LDS tile,
the weight fragment read (one 8-byte read per lane, column and k32 block, bank multiplicity
included), the dequantization bit by bit (shift by 4·(q/2), mask 0x0f0f0f0f, bytes s and s + 2,
q − z in f32, the f32's high half as the bf16 operand — asserted exact), the activation fragment
(hip_mfma_emulate's reader, bf16 values), v_mfma_f32_16x16x16bf16_1k's documented semantics, the
f16 group scale on each 64-wide K tile's partial, and the accumulator → output mapping of
bg_epilogue_mfma, for BM 8 / 16 / 64 / 128, G 64 / 128, partial N tiles, grouped rows (row_ids
with padding) and split-K. It checks the algebra, not the compiled code or the hardware.

Usage: python3 docs/perf/hip_mfma_awq_emulate.py   (numpy; one line per case, exits 1 on error)
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hip_mfma_emulate import BN, BK, THREADS, ZERO_FRAG, cfg, epilogue, finish, mfma  # noqa: E402

AWQ_BK = 64  # K elements per tile (BK = 128 bytes of bf16)
ORDER = [0, 4, 1, 5, 2, 6, 3, 7]  # checkpoint: column j of a word at nibble position ORDER.index(j)


def awq_nib(j):
    return ((j & 1) << 2) | (j >> 1)


def pack_awq(vals):
    """[R, N] of 4-bit values → the checkpoint's int32 [R, N/8] packing."""
    R, N = vals.shape
    out = np.zeros((R, N // 8), dtype=np.uint32)
    for j in range(8):
        out |= vals[:, j::8].astype(np.uint32) << (4 * awq_nib(j))
    return out


def repacked_pos(n, k, K):
    """awq_repacked_pos: word index and nibble shift of weight (k, n)."""
    n8, gcol, kb, kk = n // 8, n % 8, k // 32, k % 32
    s, r = kk // 16, kk % 16
    t, hi, second = (r % 8) // 2, r % 2, r // 8
    return ((n8 * (K // 32) + kb) * 32 + gcol * 4 + t), 4 * (s * 2 + second + 4 * hi)


def repack(qw, K, N):
    """awq_repack (src/backend/quant_gemm.rs) of one expert."""
    out = np.zeros(K * N // 8, dtype=np.uint32)
    for k in range(K):
        for n in range(N):
            q = (int(qw[k, n // 8]) >> (4 * awq_nib(n % 8))) & 15
            w, sh = repacked_pos(n, k, K)
            out[w] |= np.uint32(q << sh)
    return out


def bf16_bits_to_f(bits):
    return np.array([int(b) << 16 for b in np.atleast_1d(bits)], dtype=np.uint32).view(np.float32).astype(np.float64)


def deq(x0, x1, s, z):
    """awq_mfma_deq: bytes s, s + 2 of x0 and x1, − z in f32, high halves as bf16 → 4 values."""
    out = []
    for x in (x0, x1):
        for b in (s, s + 2):
            f = np.float32((x >> (8 * b)) & 0xFF) - np.float32(z)
            bits = int(np.array([f], dtype=np.float32).view(np.uint32)[0])
            assert bits & 0xFFFF == 0, "q − z must be exact in bf16"
            out.append(float(bf16_bits_to_f(bits >> 16)[0]))
    return out


def run(bm, M, N, K, G, E, splits, row_ids, tile_expert, rng):
    # activations: random bf16 (bit patterns of normal values), rows = a rows
    a_bits = ((rng.integers(0, 2, size=(M, K)) << 15) | (rng.integers(0x3C00, 0x4080, size=(M, K)))).astype(np.uint16)
    av = bf16_bits_to_f(a_bits.ravel()).reshape(M, K)
    q = rng.integers(0, 16, size=(E, K, N))
    z = rng.integers(0, 16, size=(E, K // G, N))
    sc = rng.uniform(0.01, 0.1, size=(E, K // G, N)).astype(np.float16)
    qz = np.stack([pack_awq(z[e]) for e in range(E)])
    qw = np.concatenate([repack(pack_awq(q[e]), K, N) for e in range(E)])
    N8, K32 = N // 8, K // 32
    a_bytes = a_bits.view(np.uint8).reshape(M, 2 * K)
    qw_bytes = qw.view(np.uint8)

    rows = len(row_ids) if row_ids is not None else M
    m_end = rows

    def a_row(r):
        if r >= m_end:
            return -1
        return r if row_ids is None else row_ids[r]

    def expert_of(mt):
        return 0 if tile_expert is None else tile_expert[mt]

    ref = np.zeros((rows, N))
    for r in range(rows):
        ar = a_row(r)
        if ar < 0:
            continue
        e = expert_of(r // bm)
        w = (q[e] - np.repeat(z[e], G, axis=0)) * np.repeat(sc[e].astype(np.float64), G, axis=0)
        ref[r] = av[ar] @ w

    WM_, WN_, WMR, WNC, MT, NT = cfg(bm)
    ROWS = bm + 32
    PER = -(-ROWS * 8 // THREADS)
    sk = K // AWQ_BK
    sn = -(-N // BN)
    per = -(-sk // splits)
    out = np.full((rows, N), np.nan)
    written = np.zeros((rows, N), dtype=int)
    ws = np.zeros((rows, N))
    worst_bank = 0
    for mt_idx in range(-(-rows // bm)):
        m0, e = mt_idx * bm, expert_of(mt_idx)
        wbase = e * N8 * K32 * 32 * 4  # bytes
        for nt_idx in range(sn):
            n0 = nt_idx * BN
            for split in range(splits):
                kt0, kt1 = split * per, min(sk, split * per + per)
                acc = {}
                for kt in range(kt0, kt1):
                    lds = np.zeros(ROWS * BK, dtype=np.uint8)
                    for t in range(THREADS):  # MfmaStager: load + store
                        h = t % 8
                        for i in range(PER):
                            r = t // 8 + i * (THREADS // 8)
                            if r >= ROWS:
                                continue
                            if r < bm:
                                ar = a_row(m0 + r)
                                data = a_bytes[ar, kt * BK + 16 * h:kt * BK + 16 * h + 16] if ar >= 0 else np.zeros(16, np.uint8)
                            else:
                                n8, kb = n0 // 8 + (r - bm) % 16, (r - bm) // 16
                                off = wbase + ((n8 * K32 + kb) * 32) * 4 + kt * 256 + 16 * h
                                data = qw_bytes[off:off + 16] if n8 < N8 else np.zeros(16, np.uint8)
                            for e2 in range(2):
                                slot = (2 * h + e2) ^ (r & 15)
                                lds[r * BK + slot * 8:r * BK + slot * 8 + 8] = data[8 * e2:8 * e2 + 8]
                    gi = kt * AWQ_BK // G

                    def frag(r, s):
                        off = r * BK + ((s ^ (r & 15)) << 3)
                        return off, lds[off:off + 8]

                    for wave in range(4):
                        row0, col0 = (wave // WN_) * WMR, (wave % WN_) * WNC
                        part = {(i, j): [[0.0] * 4 for _ in range(64)] for i in range(MT) for j in range(NT)}
                        for kb in range(2):
                            x = {}
                            for j in range(NT):
                                addrs = []
                                for ln in range(64):
                                    qq, cn = ln // 16, col0 + 16 * j + ln % 16
                                    off, w8 = frag(bm + 16 * kb + cn // 8, 2 * (cn % 8) + qq % 2)
                                    addrs.append(off)
                                    w0 = int.from_bytes(bytes(w8[:4]), "little")
                                    w1 = int.from_bytes(bytes(w8[4:]), "little")
                                    sh = 4 * (qq // 2)
                                    x[j, ln] = ((w0 >> sh) & 0x0F0F0F0F, (w1 >> sh) & 0x0F0F0F0F)
                                for qq in range(4):  # banks of one 16-lane group's 8-byte reads
                                    ad = addrs[16 * qq:16 * qq + 16]
                                    # lanes reading the same address are one access (broadcast)
                                    banks = [(o // 4 + d) % 32 for o in sorted(set(ad)) for d in range(2)]
                                    worst_bank = max(worst_bank, max(banks.count(b) for b in set(banks)))
                            for s in range(2):
                                ks = 2 * kb + s
                                af = []
                                for i in range(MT):
                                    lanes = []
                                    for ln in range(64):
                                        rl = row0 + i * 16 + ln % 16
                                        if rl >= bm:
                                            lanes.append([0.0] * 4)
                                            continue
                                        _, b8 = frag(rl, 4 * ks + ln // 16)
                                        lanes.append(list(bf16_bits_to_f(np.frombuffer(bytes(b8), np.uint16))))
                                    af.append(lanes)
                                for j in range(NT):
                                    wf = []
                                    for ln in range(64):
                                        nz = n0 + col0 + 16 * j + ln % 16
                                        zz = (int(qz[e, gi, nz // 8]) >> (4 * awq_nib(ln % 8))) & 15 if nz < N else 0
                                        wf.append(deq(*x[j, ln], s, zz))
                                    for i in range(MT):
                                        part[i, j] = mfma(wf, af[i], part[i, j], 16)
                        for i in range(MT):
                            for j in range(NT):
                                a_ = acc.setdefault((wave, i, j), [[0.0] * 4 for _ in range(64)])
                                for ln in range(64):
                                    ns = n0 + col0 + 16 * j + 4 * (ln // 16)
                                    for v in range(4):
                                        sv = float(sc[e, gi, ns + v]) if ns < N else 0.0
                                        a_[ln][v] += part[i, j][ln][v] * sv
                for wave, i, j, ln, v, r, n in epilogue(bm, m0, m_end, n0, N, cfg(bm)):  # bg_epilogue_mfma
                    val = acc.get((wave, i, j), ZERO_FRAG)[ln][v]
                    if splits == 1:
                        out[r, n] = val
                    else:
                        ws[r, n] += val
                    written[r, n] += 1
    return finish(out, ws, written, splits, ref, worst_bank)


def main():
    rng = np.random.default_rng(2)
    # the repacked position is a bijection (as the Rust test checks) and matches the kernel's lane formula
    K = 64
    seen = set()
    for n in range(16):
        for k in range(K):
            w, sh = repacked_pos(n, k, K)
            seen.add((w, sh))
            kk, qq = k % 32, (k % 16) // 4
            s, e = kk // 16, k % 4
            assert w % 32 == (n % 8) * 4 + 2 * (qq % 2) + e // 2 and sh // 4 == 2 * s + qq // 2 + 4 * (e % 2)
    assert len(seen) == 16 * K
    bad = 0
    cases = [
        # bm, M, N, K, G, experts, splits, row_ids, tile_expert
        (16, 20, 136, 128, 64, 1, 1, None, None),
        (8, 9, 128, 256, 128, 1, 2, None, None),
        (64, 70, 72, 128, 128, 1, 1, None, None),
        (128, 130, 264, 128, 64, 1, 1, None, None),
        (16, 12, 128, 192, 64, 2, 3, [3, -1, 0, 5, 7, 1, -1, 2, 9, 4, 6, 8, -1, 11, 10, -1] + [2, 0, -1, 1] + [-1] * 12, [1, 0]),
    ]
    for bm, M, N, K, G, E, splits, rid, te in cases:
        err, bank = run(bm, M, N, K, G, E, splits, rid, te, rng)
        ok = err < 1e-12 and bank <= 2
        bad += not ok
        print(f"AWQ BM {bm:3d} M {M:3d} N {N:3d} K {K:3d} G {G:3d} experts {E} splits {splits} "
              f"row_ids {'yes' if rid else 'no '}: rel err {err:.1e}, worst weight-read bank multiplicity {bank} "
              f"{'ok' if ok else 'FAIL'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
