#!/usr/bin/env python3
"""Emulates the fp8-cache path of the sm_90a wgmma MLA decode kernel (kernels/mla_decode_wgmma.cuh,
mla_wg::F8Dequant and the kernel's fp8 load_k) on one K buffer, and checks it against a
straightforward reference. No GPU: this checks the index algebra and the in-place ordering, not
the hardware.

What is emulated, byte for byte:
  1. The loads of one page (64 rows of 656 bytes): four TMA boxes of 64 rows x 128 bytes (the cache
     viewed as [pages*64, 656] u8, 128-byte swizzle: 16-byte piece c of box row r lands at
     r*128 + ((c ^ (r & 7)) * 16)) for the latent bands g (bytes 128g..) into chunk 2g + 1, one
     box for the rope (bytes 528..655) into chunk 8, and 64 bulk copies of 16 bytes (the scales,
     bytes 512..527 of each row) into chunk 6: rows 0..31 at its bf16 rows 0..3, rows 32..63 at
     its bf16 rows 32..35 (f8_scale_at). The buffer starts with garbage (a previous tile).
  2. F8Dequant::run of both halves: the other warpgroup (warps 0..3) rows 0..31, the owner
     (warps 4..7) rows 32..63, in one legal interleaving (every warp's step k before any warp's
     step k + 1), with rows >= valid written as zeros and the partial tile's rope rows zeroed.
  3. Race check over all interleavings the kernel allows: the warps of a warpgroup synchronize
     only at its band-3 barrier (after the band-3 scale reads); the two warpgroups only at BAR_DQ
     after both halves; inside a warp, program order plus __syncwarp. Two accesses to one byte by
     different warps, one of them a write, race unless the same warpgroup's band-3 barrier
     separates them; a read of raw data (band bytes or scales) after a write to that byte by the
     same warp (earlier step) reads clobbered data.
  4. Shared-memory bank conflicts of the 16-byte loads and stores (per quarter warp: 8 lanes must
     hit 8 distinct 16-byte bank groups).
Then the buffer is compared with the bf16 [64][576] tile in the layout the wgmma descriptors read
(chunk k = columns 64k.., row r, 16-byte piece c at k*8192 + r*128 + ((c ^ (r & 7)) * 16)):
bf16(e4m3 * s_g) rounded to nearest even for the latent, the rope bf16 copied, zeros past valid.

Run: python3 docs/perf/mla_wgmma_fp8_emulate.py [trials]
"""
import sys

import numpy as np

NT, ROW, CHUNK = 64, 656, 8192
TILE = 9 * CHUNK
BANDS, SCALES_AT, ROPE_AT = 4, 512, 528
SCALE_OFF = 2 * (BANDS - 1) * CHUNK  # chunk 6
HALF = 32
WG = 128


DENSE_SCALES = False  # the variant with all 64 rows' scales in chunk 6's first KiB (rows 0..7)


def scale_at(r):
    """f8_scale_at: [32][4] f32 per half, in that half's first rows of chunk 6."""
    if DENSE_SCALES:
        return SCALE_OFF + r * 16
    return SCALE_OFF + (r // HALF) * HALF * 128 + (r % HALF) * 16


def e4m3fn_table():
    """float32 value of every e4m3fn byte (NaN for 0x7f / 0xff)."""
    t = np.zeros(256, np.float32)
    for b in range(256):
        e, m = (b >> 3) & 15, b & 7
        if e == 15 and m == 7:
            t[b] = np.nan
            continue
        v = m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
        t[b] = -v if b & 0x80 else v
    return t


E4M3 = e4m3fn_table()


def bf16_rne_bits(x):
    """float32 array -> bf16 bit patterns, round to nearest even (finite inputs)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def random_page(rng, valid):
    """64 rows of 656 bytes: valid quantized rows, then NaN-poisoned unused slots."""
    page = np.zeros((NT, ROW), np.uint8)
    for r in range(NT):
        if r < valid:
            lat = rng.integers(0, 256, 512, dtype=np.uint8)
            lat[(lat & 0x7F) == 0x7F] = 0x7E  # the quantizer saturates: no NaN codes
            sc = (rng.uniform(0.5, 2.0, 4) * 2.0 ** rng.integers(-12, 4, 4) / 448).astype(np.float32)
            rope = bf16_rne_bits(rng.uniform(-1, 1, 64).astype(np.float32))
        else:
            lat = np.where(np.arange(512) % 2 == 0, 0x7F, 0xFF).astype(np.uint8)
            sc = np.full(4, np.nan, np.float32)
            rope = np.full(64, 0x7FC0, np.uint16)  # bf16 NaN
        page[r, :512] = lat
        page[r, 512:528] = sc.view(np.uint8)
        page[r, 528:] = rope.view(np.uint8)
    return page


def reference_tile(page, valid):
    """The bf16 [64][576] tile (bit patterns) the kernel must leave, unswizzled."""
    ref = np.zeros((NT, 576), np.uint16)
    for r in range(min(valid, NT)):
        sc = page[r, 512:528].view(np.float32)
        vals = E4M3[page[r, :512]] * np.repeat(sc, 128)  # float32 product, one rounding
        ref[r, :512] = bf16_rne_bits(vals.astype(np.float32))
        ref[r, 512:] = page[r, 528:].view(np.uint16)
    return ref


def swz(k, r, c):
    """Byte offset of 16-byte piece c of row r in chunk k (what wgmma's 128-byte swizzle reads)."""
    return k * CHUNK + r * 128 + ((c ^ (r & 7)) << 4)


class Smem:
    """A K buffer with an access log: (byte range, warp, epoch, step, kind)."""

    def __init__(self, rng):
        self.b = rng.integers(0, 256, TILE, dtype=np.uint8)  # the previous tile's garbage
        self.writes = {}  # byte -> list of (warp, epoch, step)
        self.reads = {}  # byte -> list of (warp, epoch, step) of raw-data reads
        self.written = np.zeros(TILE, bool)

    def read(self, off, n, warp, epoch, step):
        for x in range(off, off + n):
            for (w, e, s) in self.writes.get(x, []):
                if w == warp and s < step:
                    raise AssertionError(f"byte {x}: read at step {step} after warp {w}'s own write at step {s}")
            self.reads.setdefault(x, []).append((warp, epoch, step))
        return self.b[off:off + n].copy()

    def write(self, off, data, warp, epoch, step):
        for i in range(len(data)):
            self.writes.setdefault(off + i, []).append((warp, epoch, step))
        self.b[off:off + len(data)] = data
        self.written[off:off + len(data)] = True

    def races(self):
        bad = []
        for x, ws in self.writes.items():
            for (w, e, s) in ws:
                for (w2, e2, s2) in self.reads.get(x, []) + ws:
                    if w2 != w and (w2 // 4 != w // 4 or e2 == e):
                        bad.append((x, (w, e, s), (w2, e2, s2)))
        return bad


def tma_box(sm, page, col, dst):
    for r in range(NT):
        for c in range(8):
            sm.b[dst + r * 128 + ((c ^ (r & 7)) << 4):][:16] = page[r, col + 16 * c:col + 16 * c + 16]


def load(sm, page):
    for g in range(BANDS):
        tma_box(sm, page, 128 * g, (2 * g + 1) * CHUNK)
    tma_box(sm, page, ROPE_AT, 2 * BANDS * CHUNK)
    for r in range(NT):
        sm.b[scale_at(r):][:16] = page[r, SCALES_AT:SCALES_AT + 16]


def dq8(w_lo, w_hi, sc, keep):
    """Eight e4m3 (two u32 words, little-endian bytes) * sc -> eight bf16 (16 bytes)."""
    by = np.array([w_lo, w_hi], np.uint32).view(np.uint8)
    v = bf16_rne_bits((E4M3[by] * np.float32(sc)).astype(np.float32)) if keep else np.zeros(8, np.uint16)
    return v.view(np.uint8)


def bank_check(addrs, what):
    for q in range(4):  # quarter warps of a 128-bit access
        groups = [(a >> 4) & 7 for a in addrs[8 * q:8 * q + 8]]
        if len(set(groups)) != 8:
            raise AssertionError(f"{what}: quarter warp {q} bank groups {groups}")


def dequant(sm, valid, barrier=True, swap=True):
    """F8Dequant::run of both halves, every warp's step k before step k + 1 (steps: band reads,
    band writes). barrier / swap False: the variants without the band-3 barrier or the
    store-order swap."""
    thr = []
    for t in range(2 * WG):
        half, tw = t // WG, t % WG
        row, p = HALF * half + tw // 8, tw % 8
        x, hi = row & 7, (p // 4 if swap else 0)
        q = 2 * (p % 4)
        thr.append(dict(
            t=t, row=row, warp=t // 32, hi=hi,
            raw=CHUNK + row * 128 + ((p ^ x) << 4),
            first=(p // 4) * CHUNK + row * 128 + (((q + hi) ^ x) << 4),
            second=(p // 4) * CHUNK + row * 128 + (((q + 1 - hi) ^ x) << 4),
            scale=scale_at(row)))
    step = 0
    for g in range(BANDS):
        epoch_r = 0
        regs = {}
        for h in range(2):  # the loads, all threads (one legal order)
            for th in thr:
                sc = sm.read(th["scale"] + h * 256 + g * 4, 4, th["warp"], epoch_r, step).view(np.float32)[0]
                raw = sm.read(th["raw"] + 2 * g * CHUNK + h * 2048, 16, th["warp"], epoch_r, step).view(np.uint32)
                regs[(th["t"], h)] = (sc, raw)
            for w in range(8):
                bank_check([th["raw"] + 2 * g * CHUNK + h * 2048 for th in thr[32 * w:32 * w + 32]], f"band {g} load h {h}")
        step += 1  # __syncwarp
        epoch_w = 1 if g == BANDS - 1 and barrier else 0  # the band-3 warpgroup barrier
        for h in range(2):
            for th in thr:
                sc, r = regs[(th["t"], h)]
                keep = th["row"] + 16 * h < valid
                w = [r[2], r[3], r[0], r[1]] if th["hi"] else list(r)
                sm.write(th["first"] + 2 * g * CHUNK + h * 2048, dq8(w[0], w[1], sc, keep), th["warp"], epoch_w, step)
                sm.write(th["second"] + 2 * g * CHUNK + h * 2048, dq8(w[2], w[3], sc, keep), th["warp"], epoch_w, step)
            for w in range(8):
                for key in ("first", "second"):
                    bank_check([th[key] + 2 * g * CHUNK + h * 2048 for th in thr[32 * w:32 * w + 32]], f"band {g} store {key} h {h}")
        step += 1
    for half in range(2):  # each half's rope rows past the end
        lo = HALF * half
        if valid < lo + HALF:
            first_row = max(valid, lo)
            for t in range(WG):
                for xx in range(t, (lo + HALF - first_row) * 8, WG):
                    sm.write(2 * BANDS * CHUNK + (first_row + xx // 8) * 128 + (xx % 8) * 16, np.zeros(16, np.uint8), 4 * half + t // 32, 1 if barrier else 0, step)
    # The rope chunk was written by TMA: mark it covered.
    sm.written[2 * BANDS * CHUNK:] = True


def check(rng, valid, **variant):
    page = random_page(rng, valid)
    sm = Smem(rng)
    load(sm, page)
    dequant(sm, valid, **variant)
    races = sm.races()
    assert not races, f"valid {valid}: {len(races)} races, e.g. {races[:3]}"
    assert sm.written.all(), f"valid {valid}: bytes never written: {np.flatnonzero(~sm.written)[:8]}"
    ref = reference_tile(page, valid)
    got = np.zeros((NT, 576), np.uint16)
    for k in range(9):
        for r in range(NT):
            for c in range(8):
                got[r, 64 * k + 8 * c:64 * k + 8 * c + 8] = sm.b[swz(k, r, c):swz(k, r, c) + 16].view(np.uint16)
    bad = np.argwhere(got != ref)
    assert bad.size == 0, f"valid {valid}: {len(bad)} values differ, first (row, col) {bad[:4].tolist()}"
    return got


def main():
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rng = np.random.default_rng(1)
    cases = [64, 1, 0, 17, 63] + [int(v) for v in rng.integers(-3, 70, trials)]
    for valid in cases:
        check(rng, valid)
        print(f"valid {valid:3d}: tile matches the bf16(e4m3 * s) reference in the wgmma layout; no race, no bank conflict")
    print(f"{len(cases)} tiles OK")
    # The checks catch what they should: without the band-3 barrier band 3's stores race with the
    # other warps' scale reads; without the store-order swap lanes p and p + 4 share bank groups;
    # with every row's scales in the first rows of chunk 6 the owner's half reads scales that the
    # other warpgroup overwrites (no barrier between the two warpgroups before BAR_DQ).
    global DENSE_SCALES
    for variant, want in [(dict(barrier=False), "races"), (dict(swap=False), "bank groups"), (dict(dense=True), "races")]:
        label = dict(variant)
        DENSE_SCALES = variant.pop("dense", False)
        try:
            check(rng, 40, **variant)
        except AssertionError as e:
            assert want in str(e), str(e)
            print(f"variant {label}: caught ({str(e)[:90]})")
        else:
            raise SystemExit(f"variant {label}: not caught")
        finally:
            DENSE_SCALES = False


if __name__ == "__main__":
    main()
