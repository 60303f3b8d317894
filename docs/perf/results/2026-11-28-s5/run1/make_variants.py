# Experiment variants (not committed): edited copies of kernel headers, compiled to <family>.cubin
# per variant directory, for DSV3_KERNEL_OVERRIDE_DIR.
import os, subprocess, shutil, sys
REPO = '/work/main'
GEN = '/work/target-clean/release/build/dsv3-5e65ea9e3d4f4329/out/kernels/cuda'
NVCC = '/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/nvidia/cu13/bin/nvcc'
OUT = '/work/main/.devrun/exp'

def rd(name):
    return open(os.path.join(REPO, 'kernels', name)).read()

def sub(text, old, new, count=1):
    assert text.count(old) >= 1, old[:80]
    return text.replace(old, new, count)

fp8 = rd('fp8_gemm_wgmma2.cuh')
mla = rd('mla_decode_wgmma.cuh')

WAIT0_OLD = fp8[fp8.index('  issue(pa, true);  // k block 0 of the first tile'):fp8.index('template <class Op, int CL>\nDSV3_DEV void wg2_gemm(')]
WAIT0_NEW = '''  for (u32 idx = c.cluster; idx < c.sched.total; idx += c.clusters) {
    u32 pt, nt;
    c.sched.tile(idx, pt, nt);
    const u32 mt = c.m_tile<CL>(pt);
#pragma unroll
    for (int i = 0; i < 64; ++i) tot[i] = 0.0f;
    for (u32 kb = 0; kb < c.sk; ++kb) {
      issue(pa, true);
      wgmma_wait<0>();
      retire(pa, stage);
      wg2_advance(stage, phase);
    }
    finish();
    wg2_store_tile<Op>(c, tot, mt, nt, c.expert<CL>(mt, pt), w, tw, stg);
  }
}

'''
variants = {
    # family -> {variant: header text}
    'fp8': {
        'base': fp8,
        'nopromo': sub(fp8, 'if constexpr (!Op::WHOLE_K) {\n#pragma unroll\n      for (int j = 0; j < 16; ++j) {\n        wg2_promote', 'if constexpr (false) {\n#pragma unroll\n      for (int j = 0; j < 16; ++j) {\n        wg2_promote'),
        'wait0': sub(fp8, WAIT0_OLD, WAIT0_NEW),
    },
    'mla': {
        'base': mla,
        'nosoft': sub(mla, 'namespace dsv3 {\nnamespace mla_wg {', 'namespace dsv3 {\nDSV3_DEV float exp_stub(float x) { return x; }\nnamespace mla_wg {').replace('fexp2(', 'exp_stub('),
        'nopv': sub(mla, 'for (u32 kk = 0; kk < NT / 16; ++kk) wgmma_m64n256k16_bf16<true, true>(o, dp + kk * 2, dv + kk * (2048 >> 4));', '(void)dv;'),
        'nos': sub(mla, '''        if (ks == 0) wgmma_m64n64k16_bf16<false, false>(s, dq + off, dk + off);
        else wgmma_m64n64k16_bf16<true, false>(s, dq + off, dk + off);''', '        (void)off;'),
    },
}
families = {'fp8': [('fp8_gemm_wgmma2', 'fp8_gemm_wgmma2.cuh'), ('int8_gemm_wgmma2', 'fp8_gemm_wgmma2.cuh')],
            'mla': [('mla_decode_wgmma', 'mla_decode_wgmma.cuh')]}

def build(fam_key, var, text):
    for family, header in families[fam_key]:
        d = os.path.join(OUT, f'{fam_key}-{var}')
        inc = os.path.join('/tmp/exp/inc', f'{fam_key}-{var}')
        os.makedirs(d, exist_ok=True)
        os.makedirs(inc, exist_ok=True)
        open(os.path.join(inc, header), 'w').write(text)
        ptx = os.path.join(inc, family + '.ptx')
        subprocess.run([NVCC, '-ptx', '-std=c++17', '-O3', '-lineinfo', '-arch=compute_90a', '-I', inc, '-I', f'{REPO}/kernels/include', '-I', f'{REPO}/kernels', os.path.join(GEN, family + '.cu'), '-o', ptx], check=True)
        r = subprocess.run([NVCC, '-O3', '-arch=sm_90a', '-cubin', ptx, '-o', os.path.join(d, family + '.cubin'), '-Xptxas', '-v'], check=True, capture_output=True, text=True)
        regs = [l for l in r.stderr.split('\n') if 'registers' in l or 'spill' in l]
        print(fam_key, var, family, regs[:2])

for fam_key, vs in variants.items():
    for var, text in vs.items():
        build(fam_key, var, text)
