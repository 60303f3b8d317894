#!/usr/bin/env python3
"""Emulates kernels/block_gemm.cuh's block_gemm_mfma (the HIP MFMA tile loop) lane by lane.

There is no AMD GPU to run the kernel on, so this checks its index algebra instead: the chunk
loader and the XOR-swizzled LDS tile (store and fragment read, including bank conflicts), the
operand preparation of each policy (int8; e4m3fn → e4m3fnuz bits with ×4 in the scale on gfx942;
e4m3 → f16 by the shift / packed-multiply trick on gfx90a), the MFMA semantics as documented by
AMD's Matrix Instruction Calculator (gfx9 formulas, single-block 16×16 instructions):
    A[i][k]: lane 16·(k // KL) + i, element k % KL;  B[k][j]: lane 16·(k // KL) + j, element k % KL;
    D[i][j]: lane 16·(i // 4) + j, register i % 4     (KL = K/4 elements per lane)
and the accumulator → output mapping of the epilogue, for every tile size (BM 8, 16, 64, 128),
with partial N / K blocks, padding rows (grouped MoE row_ids) and split-K, against a float64
reference of the block-scaled GEMM. It is a model of the source, written by hand: it checks the
algebra against the documented layouts, not the compiled code or the hardware.

Usage: python3 docs/perf/hip_mfma_emulate.py   (numpy; prints one line per case, exits 1 on error)
"""
import sys

import numpy as np

BN, BK, THREADS = 128, 128, 256


def cfg(bm):
    wm_ = 2 if bm >= 64 else 1
    wn_ = 4 // wm_
    wmr = max(bm // wm_, 16)
    return wm_, wn_, wmr, BN // wn_, wmr // 16, (BN // wn_) // 16


# ---- float8 ---------------------------------------------------------------------------------
def e4m3_value(b, bias):
    """Exact value of an e4m3 code with exponent bias `bias` (NaN codes not special-cased)."""
    b = int(b)
    e, m = (b >> 3) & 15, b & 7
    v = m / 8 * 2.0 ** (1 - bias) if e == 0 else (1 + m / 8) * 2.0 ** (e - bias)
    return -v if b & 0x80 else v


def fn_to_fnuz_word(w):
    """Fp8MfmaOp<true>::lds on gfx942: 0x80 bytes → 0x00, others unchanged."""
    nz = ((w & 0x7F7F7F7F) + 0x7F7F7F7F) & 0xFFFFFFFF
    return w ^ (w & ~nz & 0x80808080)


def widen_word(w, fn):
    """Fp8MfmaOp::widen on gfx90a: 4 codes → 4 f16 values (numpy float16 arithmetic)."""
    b01 = (w & 0xFF) | ((w & 0xFF00) << 8)
    b23 = ((w >> 16) & 0xFF) | ((w >> 8) & 0xFF0000)
    out = []
    for x in (b01, b23):
        h = (((x & 0x007F007F) << 7) | ((x & 0x00800080) << 8)) & 0xFFFFFFFF
        halves = np.array([h & 0xFFFF, h >> 16], dtype=np.uint16).view(np.float16)
        prod = halves * np.float16(256.0 if fn else 128.0)
        # the MFMA would flush a denormal f16 input: there must be none
        assert all(p == 0 or abs(p) >= np.float16(2.0**-14) for p in prod), prod
        out += [float(p) for p in prod]
    return out


def check_fp8_conversions():
    for b in range(256):
        if b & 0x7F == 0x7F:  # NaN codes (fn: 0x7f / 0xff), not produced by the saturating quantizers
            continue
        w = b | (b << 8) | (b << 16) | (b << 24)
        # gfx942: fn code b as fnuz bits, value · 4 == fn value (−0 → +0)
        nb = fn_to_fnuz_word(w) & 0xFF
        assert nb != 0x80 and e4m3_value(nb, 8) * 2 == e4m3_value(b, 7), b
        # gfx90a: widening is exact for fn and for fnuz (0x80 = fnuz NaN reads as −0)
        assert widen_word(w, True) == [e4m3_value(b, 7)] * 4, b
        assert widen_word(w, False) == [e4m3_value(b, 8) if b != 0x80 else -0.0] * 4, b


# ---- MFMA (documented semantics) --------------------------------------------------------------
def mfma(a_lane, b_lane, c_lane, kdim):
    """One single-block 16×16×kdim MFMA on per-lane element lists; returns the new D registers."""
    kl = kdim // 4
    A = np.zeros((16, kdim))
    B = np.zeros((kdim, 16))
    for k in range(kdim):
        for i in range(16):
            A[i, k] = a_lane[16 * (k // kl) + i][k % kl]
            B[k, i] = b_lane[16 * (k // kl) + i][k % kl]
    D = A @ B
    out = [list(c) for c in c_lane]
    for i in range(16):
        for j in range(16):
            out[16 * (i // 4) + j][i % 4] += D[i, j]
    return out


# ---- the kernel, one CTA at a time ------------------------------------------------------------
def run(kind, arch, bm, M, N, K, splits, row_ids, rng):
    fn = kind == "fp8fn"
    per_tile = kind != "int8ch"
    if kind.startswith("fp8"):
        a = rng.integers(0, 256, size=(M, K), dtype=np.uint8)
        b = rng.integers(0, 256, size=(N, K), dtype=np.uint8)
        for t in (a, b):  # no NaN codes (and no fnuz NaN for fnuz operands)
            t[(t & 0x7F) == 0x7F] = 0x3C
            if not fn:
                t[t == 0x80] = 0x00
        bias = 7 if fn else 8
        lut = np.array([e4m3_value(x, bias) for x in range(256)])
        av, bv = lut[a], lut[b]
    else:
        a = rng.integers(-127, 128, size=(M, K)).astype(np.int8).view(np.uint8)
        b = rng.integers(-127, 128, size=(N, K)).astype(np.int8).view(np.uint8)
        av, bv = a.view(np.int8).astype(np.float64), b.view(np.int8).astype(np.float64)
    sk, sn = -(-K // BK), -(-N // BN)
    sa = rng.uniform(0.5, 2.0, size=(M, sk) if per_tile else (M,))
    sb = rng.uniform(0.5, 2.0, size=(sn, sk) if per_tile else (N,))

    rows = len(row_ids) if row_ids is not None else M
    def a_row(r):
        if r >= rows:
            return -1
        return r if row_ids is None else row_ids[r]

    # reference (float64), rows = output rows
    ref = np.zeros((rows, N))
    for r in range(rows):
        ar = a_row(r)
        if ar < 0:
            continue
        for n in range(N):
            if per_tile:
                ref[r, n] = sum(
                    np.dot(av[ar, kb * BK:(kb + 1) * BK], bv[n, kb * BK:(kb + 1) * BK]) * sa[ar, kb] * sb[n // BN, kb]
                    for kb in range(sk))
            else:
                ref[r, n] = np.dot(av[ar], bv[n]) * sa[ar] * sb[n]

    fix = 4.0 if (arch == "gfx942" and fn) else 1.0
    def lds_word(w):
        return fn_to_fnuz_word(w) if (arch == "gfx942" and fn) else w
    def operand(x8):  # 8 bytes of a lane → element list(s) for the MFMA(s)
        if kind.startswith("fp8"):
            if arch == "gfx942":
                return [[e4m3_value(int(x), 8) for x in x8]]
            w0 = int.from_bytes(bytes(x8[:4]), "little")
            w1 = int.from_bytes(bytes(x8[4:]), "little")
            return [widen_word(w0, fn), widen_word(w1, fn)]
        s = [int(np.int8(np.uint8(x))) for x in x8]
        return [s] if arch == "gfx942" else [s[:4], s[4:]]

    WM_, WN_, WMR, WNC, MT, NT = cfg(bm)
    out = np.full((rows, N), np.nan)
    written = np.zeros((rows, N), dtype=int)
    ws = np.zeros((rows, N))
    mtiles = -(-rows // bm)
    per = -(-sk // splits)
    worst_bank = 0
    chunks = (bm + BN) * 8
    PER = -(-chunks // THREADS)
    for mt_idx in range(mtiles):
        m0 = mt_idx * bm
        m_end = rows
        for nt_idx in range(sn):
            n0 = nt_idx * BN
            for split in range(splits):
                kt0, kt1 = split * per, min(sk, split * per + per)
                lds = np.zeros((bm + BN) * BK, dtype=np.uint8)
                acc = {}
                part = {}
                for kt in range(kt0, kt1):
                    # loader: thread t, chunk i: tile row t/8 + 32 i, K bytes 16 (t % 8) ..
                    for t in range(THREADS):
                        h = t % 8
                        for i in range(PER):
                            r = t // 8 + i * (THREADS // 8)
                            if r >= bm + BN:
                                continue
                            gr = (a_row(m0 + r) if m0 + r < m_end else -1) if r < bm else (n0 + r - bm if n0 + r - bm < N else -1)
                            kb = kt * BK + h * 16
                            src = a if r < bm else b
                            data = src[gr, kb:kb + 16] if (gr >= 0 and kb < K) else np.zeros(16, dtype=np.uint8)
                            for e in range(2):
                                w0 = lds_word(int.from_bytes(bytes(data[8 * e:8 * e + 4]), "little"))
                                w1 = lds_word(int.from_bytes(bytes(data[8 * e + 4:8 * e + 8]), "little"))
                                slot = (2 * h + e) ^ (r & 15)
                                off = r * BK + slot * 8
                                lds[off:off + 4] = np.frombuffer(w0.to_bytes(4, "little"), np.uint8)
                                lds[off + 4:off + 8] = np.frombuffer(w1.to_bytes(4, "little"), np.uint8)
                    for wave in range(4):
                        row0, col0 = (wave // WN_) * WMR, (wave % WN_) * WNC
                        for ks in range(BK // 32):
                            def frag(r_of_lane, zero_of_lane):
                                vals, addrs = [], []
                                for ln in range(64):
                                    r, s = r_of_lane(ln), 4 * ks + ln // 16
                                    off = r * BK + ((s ^ (r & 15)) << 3)
                                    addrs.append(off)
                                    x8 = [0] * 8 if zero_of_lane(ln) else list(lds[off:off + 8])
                                    vals.append(operand(x8))
                                return vals, addrs
                            af, wf = [], []
                            for i in range(MT):
                                v, ad = frag(lambda ln: row0 + i * 16 + ln % 16, lambda ln: row0 + i * 16 + ln % 16 >= bm)
                                af.append(v)
                            for j in range(NT):
                                v, ad = frag(lambda ln: bm + col0 + j * 16 + ln % 16, lambda ln: False)
                                wf.append(v)
                                for q in range(4):  # banks of one 16-lane group's 8-byte reads
                                    banks = [(ad[16 * q + x] // 4 + d) % 32 for x in range(16) for d in range(2)]
                                    worst_bank = max(worst_bank, max(banks.count(bk) for bk in set(banks)))
                            for i in range(MT):
                                for j in range(NT):
                                    c = part.get((wave, i, j), [[0.0] * 4 for _ in range(64)])
                                    for h2 in range(len(wf[j][0])):  # 1 MFMA (gfx942) or 2 (gfx90a)
                                        kdim = 4 * len(wf[j][0][h2])
                                        c = mfma([wf[j][ln][h2] for ln in range(64)], [af[i][ln][h2] for ln in range(64)], c, kdim)
                                    part[(wave, i, j)] = c
                    if per_tile:
                        for wave in range(4):
                            row0 = (wave // WN_) * WMR
                            for i in range(MT):
                                for j in range(NT):
                                    c = part.pop((wave, i, j))
                                    a_ = acc.setdefault((wave, i, j), [[0.0] * 4 for _ in range(64)])
                                    for ln in range(64):
                                        rl = row0 + i * 16 + ln % 16
                                        ar = a_row(m0 + rl) if (rl < bm and m0 + rl < m_end) else -1
                                        s_ = (sa[ar, kt] if ar >= 0 else 0.0) * sb[nt_idx, kt] * fix
                                        for v in range(4):
                                            a_[ln][v] += c[ln][v] * s_
                # (channel) scaling, epilogue
                for wave, i, j, ln, v, r, n in epilogue(bm, m0, m_end, n0, N, cfg(bm)):
                    if per_tile:
                        val = acc.get((wave, i, j), ZERO_FRAG)[ln][v]
                    else:
                        ar = a_row(r)
                        val = part.get((wave, i, j), ZERO_FRAG)[ln][v] * (sb[n] * fix) * (sa[ar] if ar >= 0 else 0.0)
                    if splits == 1:
                        out[r, n] = val
                    else:
                        ws[r, n] += val
                    written[r, n] += 1
    return finish(out, ws, written, splits, ref, worst_bank)


ZERO_FRAG = [[0.0] * 4 for _ in range(64)]


def epilogue(bm, m0, m_end, n0, N, c):
    """bg_epilogue_mfma's walk: (wave, i, j, lane, v, row, column) of every element it stores."""
    _, WN_, WMR, WNC, MT, NT = c
    for wave in range(4):
        row0, col0 = (wave // WN_) * WMR, (wave % WN_) * WNC
        for i in range(MT):
            for j in range(NT):
                for ln in range(64):
                    rl = row0 + i * 16 + ln % 16
                    if rl >= bm or m0 + rl >= m_end:
                        continue
                    n = n0 + col0 + j * 16 + 4 * (ln // 16)
                    for v in range(4):
                        if n + v < N:
                            yield wave, i, j, ln, v, m0 + rl, n + v


def finish(out, ws, written, splits, ref, worst_bank):
    """The split-K sum (or the direct output) checked for coverage, and its error against ref."""
    if splits > 1:
        out = ws
        assert (written == splits).all(), "split-K coverage"
    else:
        assert (written == 1).all(), "every output element written exactly once"
    err = np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)
    return err, worst_bank


def main():
    check_fp8_conversions()
    rng = np.random.default_rng(1)
    bad = 0
    cases = [
        # kind, bm, M, N, K, splits, row_ids
        ("int8", 16, 40, 200, 272, 1, None),
        ("int8", 8, 20, 136, 144, 2, None),
        ("int8ch", 64, 70, 130, 160, 1, None),
        ("fp8fn", 128, 130, 140, 272, 1, None),
        ("fp8fn", 16, 16, 128, 128, 2, [3, -1, 0, 5, 7, 1, -1, 2, 9, 4, 6, 8, -1, 11, 10, 12]),
        ("fp8fnuz", 64, 64, 72, 48, 1, None),
        ("int8ch", 8, 9, 40, 32, 1, None),
    ]
    for arch in ("gfx942", "gfx90a"):
        for kind, bm, M, N, K, splits, rid in cases:
            err, bank = run(kind, arch, bm, M, N, K, splits, rid, rng)
            ok = err < 1e-12 and bank == 1
            bad += not ok
            print(f"{arch} {kind:8s} BM {bm:3d} M {M:3d} N {N:3d} K {K:3d} splits {splits} "
                  f"row_ids {'yes' if rid else 'no '}: rel err {err:.1e}, worst bank multiplicity {bank} "
                  f"{'ok' if ok else 'FAIL'}")
    print("fp8 conversions (all 256 codes, both archs): ok")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
