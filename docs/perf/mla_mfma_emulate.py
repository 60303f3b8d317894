#!/usr/bin/env python3
"""Emulates the HIP MFMA MLA decode kernel (kernels/mla_decode.cuh, mla_decode_split_mfma) on the
CPU: its LDS tile layout (swz), K-tile staging (bf16 rows and fp8 rows dequantized), Q fragment
loads, the documented v_mfma_f32_16x16x16bf16_1k lane layouts (dsv3/mfma_bf16.h), the Sᵀ partial
exchange, the online softmax and the Oᵀ = Vᵀ·Pᵀ accumulator -> output mapping, for one segment
per row block; compares out / lse with a float64 attention over the (dequantized) cache.

It checks the kernel's index algebra, not the hardware: the kernel was compiled, not run on AMD
hardware. Usage: python3 docs/perf/mla_mfma_emulate.py (numpy only).
"""
import numpy as np

DK, DV, NT, HTN, ROW_BYTES, CHUNKS = 576, 512, 64, 32, 1152, 72
F8_ROW, F8_SCALES, F8_ROPE = 656, 512, 528
rng = np.random.default_rng(0)


def bf16_round(x):  # f32 -> bf16 bits (round to nearest even), as f32_to_bf16
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_val(bits):
    return (np.asarray(bits, np.uint32) << 16).view(np.float32)


def e4m3fn_val(b):  # e4m3fn byte -> f32 (0x7f / 0xff NaN)
    b = np.asarray(b, np.uint32)
    e, m = (b >> 3) & 15, b & 7
    mag = np.where(e == 0, m / 8.0 * 2.0 ** -6, (1 + m / 8.0) * 2.0 ** (e.astype(np.float64) - 7))
    v = np.where(b & 0x80, -mag, mag)
    return np.where((b & 0x7F) == 0x7F, np.nan, v).astype(np.float32)


def e4m3fn_enc(x):  # round to nearest e4m3fn (saturating), via the value table
    table = e4m3fn_val(np.arange(256))
    ok = ~np.isnan(table)
    codes, vals = np.arange(256)[ok], table[ok].astype(np.float64)
    x = np.clip(x, -448, 448)
    return codes[np.abs(x[..., None] - vals).argmin(-1)].astype(np.uint8)


def swz(row, chunk):
    return row * ROW_BYTES + ((chunk ^ (row & 7)) << 4)


def swz_at(row, d):
    return swz(row, d // 8) + (d % 8) * 2


def mfma(a, b, c):
    """v_mfma_f32_16x16x16bf16_1k on per-lane vectors [64][4]: A[i][4q+e] = a[i+16q][e],
    B[4q+e][j] = b[j+16q][e], D[4q+e][j] = d[j+16q][e] (dsv3/mfma_bf16.h)."""
    A, B, C = np.zeros((16, 16)), np.zeros((16, 16)), np.zeros((16, 16))
    for ln in range(64):
        i, q = ln % 16, ln // 16
        for e in range(4):
            A[i, 4 * q + e] = a[ln][e]
            B[4 * q + e, i] = b[ln][e]
            C[4 * q + e, i] = c[ln][e]
    D = A @ B + C
    return np.array([[D[4 * (ln // 16) + e, ln % 16] for e in range(4)] for ln in range(64)])


class Lds:
    def __init__(self):
        self.b = np.zeros(HTN * ROW_BYTES, np.uint8)
        self.written = np.zeros(HTN * ROW_BYTES, np.int32)

    def write16(self, off, u16s):  # 8 bf16 = one 16-byte chunk
        assert off % 16 == 0
        self.b[off:off + 16] = np.asarray(u16s, np.uint16).view(np.uint8)
        self.written[off:off + 16] += 1

    def read_u16(self, off, n):
        return self.b[off:off + 2 * n].view(np.uint16).copy()


def stage_tile(lds, cache, fp8, page, sub, k0, length, thr):
    """KStage<bf16 | e4m3fn, THR>: every thread's chunks (load_chunk + store_chunk)."""
    rows = cache[page][sub * HTN:(sub + 1) * HTN]
    if not fp8:
        n = HTN * CHUNKS // thr
        for t in range(thr):
            for j in range(n):
                idx = t + j * thr
                row, c = idx // CHUNKS, idx % CHUNKS
                v = rows[row][8 * c:8 * c + 8] if k0 + row < length else np.zeros(8, np.uint16)
                lds.write16(swz(row, c), v)
    else:
        lat, items = 32, 40
        n = HTN * items // thr
        for t in range(thr):
            for j in range(n):
                idx = t + j * thr
                row, c = idx // items, idx % items
                r = rows[row]
                ok = k0 + row < length
                if c < lat:
                    raw = r[16 * c:16 * c + 16] if ok else np.zeros(16, np.uint8)
                    sc = r[F8_SCALES:F8_SCALES + 16].view(np.float32)[c // 8] if ok else np.float32(0)
                    vals = bf16_round(e4m3fn_val(raw) * sc)
                    lds.write16(swz(row, 2 * c), vals[:8])
                    lds.write16(swz(row, 2 * c + 1), vals[8:])
                else:
                    raw = r[F8_ROPE + 16 * (c - lat):F8_ROPE + 16 * (c - lat) + 16] if ok else np.zeros(16, np.uint8)
                    lds.write16(swz(row, DV // 8 + c - lat), raw.view(np.uint16))


def run_block(q, cache, fp8, bt, length, s_q, heads, rb, MW, NW, scale):
    """One row block over one whole sequence (a full segment); returns {row: (out, lse)}."""
    BM, NG = 16 * MW, NW // MW
    KSG, CG = DK // 16 // NG, DV // NG
    NO = CG // 16
    rows_total = s_q * heads
    thr = 64 * NW
    sl2 = scale * 1.4426950408889634
    lanes = np.arange(64)
    li, lq = lanes % 16, lanes // 16
    waves = []
    for w in range(NW):
        mt, g = w % MW, w // MW
        gr = rb * BM + mt * 16 + li
        d0 = g * KSG * 16 + 4 * lq
        qf = np.zeros((KSG, 64, 4))
        for ln in range(64):
            if gr[ln] < rows_total:
                for ks in range(KSG):
                    qf[ks, ln] = bf16_val(q[gr[ln], d0[ln] + 16 * ks:d0[ln] + 16 * ks + 4])
        vis = length - s_q + gr // heads + 1
        waves.append(dict(mt=mt, g=g, gr=gr, d0=d0, c0=g * CG, qf=qf, vis=vis,
                          o=np.zeros((NO, 64, 4)), m=np.full(64, -np.inf), l=np.zeros(64)))
    # tiles: the segment = the whole sequence; causal frontier of the block's last row
    last = min(rb * BM + BM - 1, rows_total - 1)
    frontier = length - s_q + last // heads + 1
    u_causal = max((max(frontier, 0) + HTN - 1) // HTN, 1)
    u_end = min(((length + NT - 1) // NT) * 2, (length + HTN - 1) // HTN, u_causal)
    for u in range(0, u_end):
        lds = Lds()
        stage_tile(lds, cache, fp8, bt[u // 2], u % 2, u * HTN, length, thr)
        assert (lds.written == 1).all(), "every byte of the K tile written exactly once"
        sts = []
        for wv in waves:  # scores_t
            st = np.zeros((2, 64, 4))
            for ks in range(KSG):
                for kt in range(2):
                    a = np.array([bf16_val(lds.read_u16(swz_at(16 * kt + li[ln], wv['d0'][ln] + 16 * ks), 4)) for ln in range(64)])
                    st[kt] = mfma(a, wv['qf'][ks], st[kt])
            sts.append(st)
        red = {}
        for w, wv in enumerate(waves):  # sum_partials writes
            for e in range(8):
                red[(w * 8 + e)] = sts[w][e // 4, :, e % 4].copy()
        for w, wv in enumerate(waves):
            st = sts[w]
            if NG > 1:
                st = np.zeros((2, 64, 4))
                for e in range(8):
                    x = np.zeros(64)
                    for gg in range(NG):
                        x = x + red[(gg * MW + wv['mt']) * 8 + e]
                    st[e // 4, :, e % 4] = x
            # softmax_tile
            key0 = u * HTN + 4 * lq
            mx = np.full(64, -np.inf)
            for kt in range(2):
                for e in range(4):
                    st[kt, :, e] = np.where(key0 + 16 * kt + e < wv['vis'], st[kt, :, e] * sl2, -np.inf)
                    mx = np.maximum(mx, st[kt, :, e])
            mx = np.maximum(mx, mx[lanes ^ 16])
            mx = np.maximum(mx, mx[lanes ^ 32])
            mn = np.maximum(wv['m'], mx)
            ms = np.where(mn == -np.inf, 0.0, mn)
            with np.errstate(invalid='ignore'):
                c = np.exp2(wv['m'] - ms)
            wv['m'] = mn
            pf = np.zeros((2, 64, 4))
            ps = np.zeros(64)
            for kt in range(2):
                p = np.exp2(st[kt] - ms[:, None])
                ps += p.sum(1)
                pf[kt] = bf16_val(bf16_round(p.astype(np.float32)))
            wv['l'] = wv['l'] * c + ps
            # pv_t
            o = wv['o']
            for p in range(NO // 4):
                for r in range(4):
                    o[4 * p + r] *= c[:, None]
                for kt in range(2):
                    x = np.array([[lds.read_u16(swz_at(16 * kt + 4 * lq[ln] + e, wv['c0'] + 64 * p + 4 * li[ln]), 4)
                                   for e in range(4)] for ln in range(64)])  # [lane][e: key][r: column]
                    for r in range(4):
                        v = bf16_val(x[:, :, r])  # element e = key 4q + e, column 4i + r
                        o[4 * p + r] = mfma(v, pf[kt], o[4 * p + r])
    res = {}
    for wv in waves:
        l = wv['l'] + wv['l'][lanes ^ 16]
        l = l + l[lanes ^ 32]
        inv = np.where(l > 0, 1 / np.where(l > 0, l, 1), 0)
        for ln in range(64):
            gr = wv['gr'][ln]
            if gr >= rows_total:
                continue
            out, lse = res.setdefault(gr, (np.full(DV, np.nan), [None]))
            for n in range(NO):
                for e in range(4):
                    col = wv['c0'] + 64 * (n // 4) + 16 * lq[ln] + 4 * e + n % 4
                    assert np.isnan(out[col]), "each output column written once"
                    out[col] = wv['o'][n, ln, e] * inv[ln]
            if wv['g'] == 0 and lq[ln] == 0:
                lse[0] = (wv['m'][ln] + np.log2(l[ln])) * 0.6931471805599453 if l[ln] > 0 else -np.inf
    return res


def check(fp8, MW, NW, s_q, heads, length, seed):
    global rng
    rng = np.random.default_rng(seed)
    pages = (length + NT - 1) // NT
    bt = rng.permutation(pages + 3)[:pages]
    kv = rng.standard_normal((pages + 3, NT, DK)).astype(np.float32)
    if fp8:
        cache = np.zeros((pages + 3, NT, F8_ROW), np.uint8)
        for pg in range(pages + 3):
            for t in range(NT):
                x = kv[pg, t]
                s = np.maximum(np.abs(x[:512].reshape(4, 128)).max(1), 1e-10).astype(np.float32) / np.float32(448)
                cache[pg, t, :512] = e4m3fn_enc((x[:512].reshape(4, 128) / s[:, None]).reshape(-1))
                cache[pg, t, 512:528] = s.view(np.uint8)
                cache[pg, t, 528:] = bf16_round(x[512:]).view(np.uint8)
        deq = np.zeros((pages + 3, NT, DK))
        for pg in range(pages + 3):
            r = cache[pg]
            s = r[:, 512:528].copy().view(np.float32)
            deq[pg, :, :512] = bf16_val(bf16_round(e4m3fn_val(r[:, :512]) * np.repeat(s, 128, 1)))
            deq[pg, :, 512:] = bf16_val(r[:, 528:].copy().view(np.uint16))
        # unused slots of the last page: NaN scales (must never reach the result)
        last = bt[-1]
        cache[last, length - (pages - 1) * NT:, 512:528] = np.frombuffer(np.full(4, np.nan, np.float32).tobytes(), np.uint8)
    else:
        cache = bf16_round(kv)
        deq = bf16_val(cache).astype(np.float64)
        last = bt[-1]
        cache[last, length - (pages - 1) * NT:, :] = 0x7FC0  # NaN in the unused slots
    rows_total = s_q * heads
    q = bf16_round(rng.standard_normal((rows_total, DK)).astype(np.float32) * 0.3)
    scale = 192 ** -0.5
    keys = np.concatenate([deq[p] for p in bt])[:length]
    qv = bf16_val(q).astype(np.float64)
    worst = 0.0
    BM = 16 * MW
    for rb in range((rows_total + BM - 1) // BM):
        res = run_block(q, cache, fp8, bt, length, s_q, heads, rb, MW, NW, scale)
        for gr, (out, lse) in res.items():
            vis = length - s_q + gr // heads + 1
            s = keys[:vis] @ qv[gr] * scale
            p = np.exp(s - s.max())
            ref = p @ keys[:vis, :DV] / p.sum()
            ref_lse = s.max() + np.log(p.sum())
            assert not np.isnan(out).any(), "NaN in the output"
            err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
            worst = max(worst, err, abs(lse[0] - ref_lse) / abs(ref_lse))
    print(f"{'fp8' if fp8 else 'bf16'} MW={MW} NW={NW} s_q={s_q} heads={heads} len={length}: "
          f"worst relative error {worst:.2e}")
    assert worst < 1e-2, worst


if __name__ == "__main__":
    # NW = 4: mla_decode_{bf16,fp8}_*_m{1,2,4}; NW = 2: mla_decode_t32_*_m{1,2}.
    for fp8, MW, NW, s_q, heads, length in [
        (False, 1, 4, 1, 16, 150),   # NG = 4, partial last tile and page
        (False, 2, 4, 2, 13, 97),    # NG = 2, causal s_q = 2, padding rows
        (False, 4, 4, 2, 24, 70),    # NG = 1, 48 rows
        (False, 1, 2, 1, 10, 33),    # t32, NG = 2, padding rows
        (False, 2, 2, 2, 16, 64),    # t32, NG = 1, exactly one page
        (True, 1, 4, 1, 16, 130),
        (True, 4, 4, 1, 64, 45),
        (True, 2, 2, 2, 9, 90),
    ]:
        check(fp8, MW, NW, s_q, heads, length, seed=length)
    print("all emulated variants match the float64 reference")
