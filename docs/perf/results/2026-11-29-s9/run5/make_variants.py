# Session 9 run 4 variants (nocomb, empty only) (not committed to the kernels): timing floors of the MLA decode pair.
#   nocomb:  the combine returns at once (split kernel alone, + an empty launch)
#   empty:   split and combine both return at once (two launches' floor with PDL)
#   nosplit: the split returns at once, the combine runs (its time on stale partials)
import os, subprocess, glob, sys
REPO = '/work/main'
GEN = sorted(glob.glob('/work/target-clean/release/build/dsv3-*/out/kernels/cuda/mla_decode_wgmma.cu'), key=os.path.getmtime)[-1].rsplit('/', 1)[0]
NVCC = '/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/nvidia/cu13/bin/nvcc'
src = open(f'{REPO}/kernels/mla_decode.cuh').read()
wsrc = open(f'{REPO}/kernels/mla_decode_wgmma.cuh').read()
comb = '  constexpr u32 THREADS = 32 * G;\n'
split = '  const u32 rb = row_block_longest_first();\n'
assert src.count(comb) == 1 and src.count(split) == 2 and wsrc.count(split) == 1
noload_k = noload_q = 'unused'
ret = '  if (batch != 0xffffffffu) return;\n'
variants = {
    'nocomb': (src.replace(comb, ret + comb), wsrc),
    'empty': (src.replace(comb, ret + comb).replace(split, ret + split), wsrc.replace(split, ret + split)),
    'nosplit': (src.replace(split, ret + split), wsrc.replace(split, ret + split)),
    # mma.sync kernel: Q and K copies zero-filled without reading global memory (the cp.async
    # source size 0), everything else as is: the split kernel without its DRAM reads.
}
for name, (s, w) in [(k, v) for k, v in variants.items() if k in ('nocomb', 'empty')]:
    inc, out = f'/tmp/mlav/{name}', f'{REPO}/.devrun/mlav/{name}'
    os.makedirs(inc, exist_ok=True); os.makedirs(out, exist_ok=True)
    open(f'{inc}/mla_decode.cuh', 'w').write(s)
    open(f'{inc}/mla_decode_wgmma.cuh', 'w').write(w)
    for tu in ('mla_decode', 'mla_decode_wgmma'):
        subprocess.run([NVCC, '-std=c++17', '-O3', '-arch=sm_90a', '-cubin', '-I', inc, '-I', f'{REPO}/kernels/include',
                        '-I', f'{REPO}/kernels', f'{GEN}/{tu}.cu', '-o', f'{out}/{tu}.cubin'], check=True)
    print(name, 'ok', flush=True)
