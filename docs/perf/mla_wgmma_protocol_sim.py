"""Randomized interleaving check of the synchronization protocol of kernels/mla_decode_wgmma.cuh
(v2 schedule): the two warpgroups' control flow (mirrored by `program`), named barriers with the
hardware's generation semantics (two warpgroup units per generation, bar.arrive / bar.sync), the
per-buffer mbarriers (cp.async.mbarrier.arrive.noinc), asynchronous wgmma groups (wait_group N)
and cp.async copies landing at random times. `--fp8` runs the fp8-cache variant: both warpgroups
wait for every tile's mbarrier (each with its own parity per buffer) and dequantize half of it in
place (the tile's owner rows 32..63, the other warpgroup rows 0..31 behind its own PV), the other
warpgroup arrives on BAR_DQ, the owner waits on it before S. Checks: no hang, S / P / K buffer / Q / row
statistics always hold the tile their reader expects, no copy lands in a buffer an in-flight
wgmma reads. Usage: python3 docs/perf/mla_wgmma_protocol_sim.py [runs]  (prints "failures 0").
Keep `program` in step with the kernel when the schedule changes.
"""
import random, sys

def program(w, segs, fp8=False):
    """Yields ops of warpgroup w (mirrors the kernel's control flow)."""
    for seg, n in enumerate(segs):
        if n > 0:
            if w == 0:
                yield ('load', 0, ('Q', seg)); yield ('load', 0, (seg, 0))
                yield ('arrive_mb', 0)
            elif n > 1:
                yield ('load', 1, (seg, 1)); yield ('arrive_mb', 1)
            if w == 0:
                yield ('wait_mb', 0)
                if fp8:
                    yield ('dq', (seg, 0)); yield ('sync', 'DQ')
                yield ('issue', 'qk', (seg, 0)); yield ('wait', 0)
            elif fp8:
                yield ('wait_mb', 0); yield ('dq', (seg, 0)); yield ('arrive', 'DQ')
            for i in range(n):
                buf = i & 1
                if buf == w:
                    yield ('softmax', (seg, i))   # reads own S(i): must be complete
                    if i > 0: yield ('sync', 'PFREE')
                    yield ('writeP', (seg, i)); yield ('writeRed', (seg, i))
                    yield ('arrive', 'PFULL')
                    yield ('readRedSelf', (seg, i))
                    yield ('issue', 'pv', (seg, i))
                    if fp8 and i + 1 < n:  # half of the next tile (the other buffer), behind PV
                        yield ('wait_mb', 1 - w); yield ('dq', (seg, i + 1)); yield ('arrive', 'DQ')
                    yield ('wait', 0)
                    yield ('sync', 'VFREE')
                    if i + 1 < n: yield ('arrive', 'PFREE')
                    if i + 2 < n:
                        yield ('load', w, (seg, i + 2)); yield ('arrive_mb', w)
                else:
                    yield ('sync', 'PFULL'); yield ('readRed', (seg, i))
                    yield ('issue', 'pv', (seg, i))
                    if i + 1 < n:
                        yield ('wait_mb', w)
                        if fp8:
                            yield ('dq', (seg, i + 1)); yield ('sync', 'DQ')
                        yield ('issue', 'qk', (seg, i + 1))
                        yield ('wait', 1)
                        yield ('arrive', 'VFREE')
                        yield ('wait', 0)
                    else:
                        yield ('wait', 0); yield ('arrive', 'VFREE')
        yield ('syncthreads',)
        yield ('syncthreads',)  # l exchange
        yield ('syncthreads',)  # end of segment

class Sim:
    def __init__(s, segs, seed, fp8=False):
        s.r = random.Random(seed)
        s.fp8 = fp8
        s.progs = [program(0, segs, fp8), program(1, segs, fp8)]
        s.cur = [None, None]; s.done = [False, False]
        s.nb = {k: [0, 0] for k in ('PFULL', 'VFREE', 'PFREE', 'DQ')}  # [count, gen]
        s.nb_wait = [None, None]
        s.cta = [0, 0]; s.cta_gen = 0; s.cta_wait = [None, None]
        s.mb = [{'pending': 0, 'phase': 0} for _ in range(2)]  # completions so far
        s.mb_cnt = [[0, 0], [0, 0]]  # per WG and buffer: phases waited for so far (parity = count & 1)
        s.dq = {}  # tile -> warpgroups whose half is dequantized (fp8)
        s.inflight = []  # (wg, kind, tile, buf)
        s.loads = []  # (buf, tile, arrived?) pending copies
        s.kbuf = [None, None]; s.qtile = None
        s.P = None; s.red = None
        s.S_ready = [None, None]
        s.pv_reading_P = {}  # tile -> set of wgs whose PV(tile) still in flight
    def step_async(s):
        # complete some random in-flight copies / mbarrier phases
        for l in list(s.loads):
            if s.r.random() < 0.3:
                buf, tile, landed = l
                s.loads.remove(l)
                if tile[0] == 'Q':
                    for (wg, kind, t, b) in s.inflight:
                        if kind == 'qk': raise Exception(f"Q overwritten while QK{t} in flight")
                    s.qtile = tile[1]
                else:
                    # hazard: buffer being read by an in-flight wgmma of another tile
                    for (wg, kind, t, b) in s.inflight:
                        if b == buf and t != tile: raise Exception(f"K buffer {buf} overwritten with {tile} while {kind}{t} of wg{wg} reads it")
                    s.kbuf[buf] = tile
        for b in range(2):
            m = s.mb[b]
            if m.get('armed') and not any(l[0] == b for l in s.loads):
                m['armed'] = False; m['phase'] += 1
    def run(s):
        steps = 0
        while not all(s.done):
            steps += 1
            if steps > 100000: raise Exception("no progress (hang)")
            s.step_async()
            w = s.r.randrange(2)
            if s.done[w]: continue
            if s.cur[w] is None:
                try: s.cur[w] = next(s.progs[w])
                except StopIteration: s.done[w] = True; continue
            if s.exec(w, s.cur[w]): s.cur[w] = None
        assert not s.inflight and not s.loads
    def exec(s, w, op):
        k = op[0]
        if k == 'load':
            buf, tile = op[1], op[2]
            if tile[0] != 'Q':
                for (wg, kind, t, b) in s.inflight:
                    if b == buf: raise Exception(f"load {tile} into {buf} while {kind}{t} wg{wg} in flight")
            s.loads.append((buf, tile, False)); return True
        if k == 'arrive_mb':
            s.mb[op[1]]['armed'] = True; return True
        if k == 'wait_mb':
            b = op[1]; need = s.mb_cnt[w][b] + 1
            # A parity wait cannot tell phase `need` from `need + 2`: the barrier must not run ahead.
            if s.mb[b]['phase'] > need: raise Exception(f"wg{w} waits phase {need} of mbarrier {b}, which is at {s.mb[b]['phase']} (parity aliasing)")
            if s.mb[b]['phase'] < need: return False
            s.mb_cnt[w][b] += 1; return True
        if k == 'dq':
            tile = op[1]; buf = tile[1] & 1
            if s.kbuf[buf] != tile: raise Exception(f"dq{tile} wg{w}: buffer holds {s.kbuf[buf]}")
            for (wg, kind, t, b) in s.inflight:
                if b == buf and t != tile: raise Exception(f"dq{tile} wg{w} writes buffer {buf} while {kind}{t} of wg{wg} reads it")
            s.dq.setdefault(tile, set()).add(w); return True
        if k == 'issue':
            kind, tile = op[1], op[2]
            buf = tile[1] & 1
            if s.fp8 and s.dq.get(tile) != {0, 1}: raise Exception(f"{kind}{tile} wg{w}: dequantized halves {s.dq.get(tile)}")
            if kind == 'qk':
                assert buf == w
                if s.kbuf[buf] != tile: raise Exception(f"QK{tile} wg{w}: buffer holds {s.kbuf[buf]}")
                if s.qtile != tile[0]: raise Exception(f"QK{tile}: Q of seg {s.qtile}")
            else:
                if s.kbuf[buf] != tile: raise Exception(f"PV{tile} wg{w}: buffer holds {s.kbuf[buf]}")
                if s.P != tile: raise Exception(f"PV{tile} wg{w}: P holds {s.P}")
                s.pv_reading_P.setdefault(tile, set()).add(w)
            s.inflight.append((w, kind, tile, buf)); return True
        if k == 'wait':
            mine = [x for x in s.inflight if x[0] == w]
            keep = mine[len(mine) - op[1]:] if op[1] else []
            for x in mine:
                if x not in keep:
                    s.inflight.remove(x)
                    if x[1] == 'qk': s.S_ready[w] = x[2]
                    else: s.pv_reading_P[x[2]].discard(w)
            return True
        if k == 'softmax':
            if s.S_ready[w] != op[1]: raise Exception(f"softmax {op[1]} wg{w}: S holds {s.S_ready[w]}")
            return True
        if k == 'writeP':
            t = s.P
            if t is not None and s.pv_reading_P.get(t): raise Exception(f"P{op[1]} written while PV{t} of {s.pv_reading_P[t]} reads it")
            s.P = op[1]; return True
        if k == 'writeRed':
            if s.red is not None and s.red[1] is not None and s.red[1] != set(): raise Exception(f"red overwritten before read {s.red}")
            s.red = (op[1], {0, 1}); return True
        if k in ('readRed', 'readRedSelf'):
            if s.red is None or s.red[0] != op[1]: raise Exception(f"wg{w} reads red {op[1]} holds {s.red}")
            s.red[1].discard(w); return True
        if k == 'arrive' or k == 'sync':
            b = s.nb[op[1]]
            if s.nb_wait[w] is None:
                b[0] += 1
                target = b[1]
                if b[0] == 2: b[0] = 0; b[1] += 1
                if k == 'arrive': return True
                s.nb_wait[w] = (op[1], target)
            name, target = s.nb_wait[w]
            if s.nb[name][1] > target: s.nb_wait[w] = None; return True
            return False
        if k == 'syncthreads':
            if s.cta_wait[w] is None:
                s.cta[0] += 1; s.cta_wait[w] = s.cta_gen
                if s.cta[0] == 2:
                    s.cta[0] = 0; s.cta_gen += 1
                    if s.red is not None and s.red[1]: raise Exception(f"segment end with unread red {s.red}")
                    s.red = None
            if s.cta_gen > s.cta_wait[w]:
                s.cta_wait[w] = None
                return True
            return False
        raise Exception(op)

bad = 0
fp8 = '--fp8' in sys.argv
args = [a for a in sys.argv[1:] if a != '--fp8']
for seed in range(int(args[0]) if args else 4000):
    r = random.Random(seed)
    segs = [r.choice([0, 1, 2, 3, 4, 5, 7, 8]) for _ in range(r.randint(1, 4))]
    try: Sim(segs, seed, fp8).run()
    except Exception as e:
        bad += 1
        if bad < 5: print("seed", seed, segs, e)
print("failures", bad)
