# Session 10 run 2 variants of kernels/gemm_wgs.cuh (timing only, not committed to the kernels):
#   nohandoff: a partial segment stores nothing and bumps no counter, and no CTA finishes a tile
#              (the prologue + main loop + whole-tile stores: the kernel without its split-K hand-off)
#   nofinish:  the partial segments are stored and counted as now, but no CTA sums the slots
#              (the hand-off's stores, fence and counter without the completing CTA's reads)
import os, subprocess, glob
REPO = '/work/main'
GEN = sorted(glob.glob('/work/target-clean/release/build/dsv3-*/out/kernels/cuda/gemm_wgs.cu'), key=os.path.getmtime)[-1].rsplit('/', 1)[0]
NVCC = '/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/nvidia/cu13/bin/nvcc'
src = open(f'{REPO}/kernels/gemm_wgs.cuh').read()
flush = '    float* slot = wgs_slot(c, blockIdx.x, c.begin, sg.tile);\n'
finish = '  if (npend == 0) return;\n'
assert src.count(flush) == 1 and src.count(finish) == 1
ret = '    if (c.total != 0xffffffffu) return;\n'
variants = {
    'nohandoff': src.replace(flush, ret + flush).replace(finish, '  if (c.total != 0xffffffffu) return;\n' + finish),
    'nofinish': src.replace(finish, '  if (c.total != 0xffffffffu) return;\n' + finish),
}
for name, s in variants.items():
    inc, out = f'/tmp/wgsv/{name}', f'{REPO}/.devrun/wgsv/{name}'
    os.makedirs(inc, exist_ok=True); os.makedirs(out, exist_ok=True)
    open(f'{inc}/gemm_wgs.cuh', 'w').write(s)
    subprocess.run([NVCC, '-std=c++17', '-O3', '-arch=sm_90a', '-cubin', '-I', inc, '-I', f'{REPO}/kernels/include',
                    '-I', f'{REPO}/kernels', f'{GEN}/gemm_wgs.cu', '-o', f'{out}/gemm_wgs.cubin'], check=True)
    print(name, 'ok', flush=True)
