# Session 6 run 7 variants (not committed): mla_decode_metadata with at least TMIN tiles per part
# (fewer, longer parts and fewer partials for the combine at small batches), compiled into the
# mla_decode family cubin for DSV3_KERNEL_OVERRIDE_DIR.
import os, subprocess
REPO = '/work/main'
GEN = '/work/target-clean/release/build/dsv3-5e65ea9e3d4f4329/out/kernels/cuda'
NVCC = '/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/nvidia/cu13/bin/nvcc'
src = open(f'{REPO}/kernels/mla_decode.cuh').read()
old = '    u32 per = (total + parts - 1) / parts;'
assert old in src
for tmin in (2, 4):
    inc, out = f'/tmp/mlav/inc{tmin}', f'{REPO}/.devrun/mla-tmin{tmin}'
    os.makedirs(inc, exist_ok=True); os.makedirs(out, exist_ok=True)
    open(f'{inc}/mla_decode.cuh', 'w').write(src.replace(old, f'    u32 per = max((total + parts - 1) / parts, {tmin}u);'))
    subprocess.run([NVCC, '-std=c++17', '-O3', '-arch=sm_90a', '-cubin', '-I', inc, '-I', f'{REPO}/kernels/include',
                    '-I', f'{REPO}/kernels', f'{GEN}/mla_decode.cu', '-o', f'{out}/mla_decode.cubin'], check=True)
