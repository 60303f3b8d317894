# Session 5 run 2 variants (not committed): MLA without the K-tile reloads; v2 GEMM without promotion
# (on the one-partial-set consumer), for the clock / power comparison.
import os, subprocess
REPO = '/work/main'
GEN = '/work/target-clean/release/build/dsv3-5e65ea9e3d4f4329/out/kernels/cuda'
NVCC = '/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/nvidia/cu13/bin/nvcc'
OUT = '/work/main/.devrun/exp2'
def rd(name):
    return open(os.path.join(REPO, 'kernels', name)).read()
def sub(text, old, new):
    assert old in text, old[:80]
    return text.replace(old, new)
fp8, mla = rd('fp8_gemm_wgmma2.cuh'), rd('mla_decode_wgmma.cuh')
V = {
    ('fp8', 'nopromo'): ('fp8_gemm_wgmma2.cuh', sub(fp8, 'for (int i = 0; i < 64; ++i) tot[i] = fmaf(', 'for (int i = 0; i < 0; ++i) tot[i] = fmaf('), ['fp8_gemm_wgmma2', 'int8_gemm_wgmma2']),
    ('mla', 'noload'): ('mla_decode_wgmma.cuh', sub(mla, 'if (i + 2 < n) load_k(i + 2, page2);', 'if (i + 2 < n) { (void)page2; mbar_arrive_cp_async(full); }'), ['mla_decode_wgmma']),
}
for (fam, var), (header, text, fams) in V.items():
    inc = f'/tmp/exp/inc2/{fam}-{var}'
    d = os.path.join(OUT, f'{fam}-{var}')
    os.makedirs(inc, exist_ok=True); os.makedirs(d, exist_ok=True)
    open(os.path.join(inc, header), 'w').write(text)
    for family in fams:
        ptx = os.path.join(inc, family + '.ptx')
        subprocess.run([NVCC, '-ptx', '-std=c++17', '-O3', '-lineinfo', '-arch=compute_90a', '-I', inc, '-I', f'{REPO}/kernels/include', '-I', f'{REPO}/kernels', os.path.join(GEN, family + '.cu'), '-o', ptx], check=True)
        r = subprocess.run([NVCC, '-O3', '-arch=sm_90a', '-cubin', ptx, '-o', os.path.join(d, family + '.cubin'), '-Xptxas', '-v'], check=True, capture_output=True, text=True)
        print(fam, var, family, [l for l in r.stderr.split('\n') if 'registers' in l][:1])
