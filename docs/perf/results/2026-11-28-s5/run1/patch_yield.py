# Experiment: flip the SASS yield bit of alternate FFMAs in long FFMA runs (DeepGEMM's observation),
# clearing their register-reuse bits. Usage: patch_yield.py in.cubin out.cubin mode(alt|all) minrun
import struct, sys
src, dst, mode, minrun = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
b = bytearray(open(src, 'rb').read())
shoff, = struct.unpack_from('<Q', b, 0x28)
shentsize, shnum, shstrndx = struct.unpack_from('<HHH', b, 0x3a)
def sh(i):
    return struct.unpack_from('<IIQQQQIIQQ', b, shoff + i * shentsize)
strtab = sh(shstrndx)
def name(off):
    s = strtab[4] + off
    return b[s:b.index(0, s)].decode()
YIELD = 1 << 45
REUSE = 0xF << 58
total = 0
for i in range(shnum):
    h = sh(i)
    n = name(h[0])
    if not n.startswith('.text.'):
        continue
    off, size = h[4], h[5]
    ins = [(off + k, ) for k in range(0, size, 16)]
    def is_ffma(o):
        lo, = struct.unpack_from('<Q', b, o)
        return (lo & 0xfff) == 0x223
    run = []
    def flush():
        global total
        if len(run) >= minrun:
            for j, o in enumerate(run):
                hi, = struct.unpack_from('<Q', b, o + 8)
                # bit 45 set = no yield (nvcc sets it where it reuses an operand): selected FFMAs
                # are made to yield, their reuse flags cleared (DeepGEMM's patch, alternate ones).
                if mode == 'all' or mode == 'alt' and j % 2 == 1:
                    hi &= ~YIELD
                    hi &= ~REUSE
                    struct.pack_into('<Q', b, o + 8, hi)
                    total += 1
        run.clear()
    for k in range(0, size, 16):
        o = off + k
        if is_ffma(o):
            run.append(o)
        else:
            flush()
    flush()
    print(n, 'patched so far', total)
open(dst, 'wb').write(b)
