# Session 5 run 3 variants (not committed): the two consumer warpgroups take turns on the tensor
# cores (block-scaled policies only): pp passes the turn when its block completed, pp2 when the
# first half of its block completed (two commit groups per block).
import os, subprocess
REPO = '/work/main'
GEN = '/work/target-clean/release/build/dsv3-5e65ea9e3d4f4329/out/kernels/cuda'
NVCC = '/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/nvidia/cu13/bin/nvcc'
OUT = '/work/main/.devrun/exp3'
fp8 = open(f'{REPO}/kernels/fp8_gemm_wgmma2.cuh').read()
def sub(t, old, new):
    assert t.count(old) == 1, old[:90]
    return t.replace(old, new)
def variant(split):
    t = fp8
    t = sub(t, '  if (c.cluster >= c.sched.total) return;\n  issue(true);  // k block 0 of the first tile',
'''  bool first_turn = true;
  auto take_turn = [&]() {
    if constexpr (!Op::WHOLE_K) {
      if (!(w == 0 && first_turn)) named_bar_sync(4 + w, 256);
      first_turn = false;
    }
  };
  auto pass_turn = [&](bool last) {
    if constexpr (!Op::WHOLE_K) {
      if (!(last && w == 1)) named_bar_arrive(5 - w, 256);
    }
  };
  if (c.cluster >= c.sched.total) return;
  take_turn();
  issue(true);  // k block 0 of the first tile''')
    wait_pass = ('wgmma_wait<1>();\n        pass_turn(false);\n        wgmma_wait<0>();' if split else 'wgmma_wait<0>();\n        pass_turn(false);')
    t = sub(t, '''        wgmma_wait<0>();
        retire(prev);
        issue(true);''', f'''        {wait_pass}
        retire(prev);
        take_turn();
        issue(true);''')
    last_wait = ('if constexpr (!Op::WHOLE_K) { wgmma_wait<1>(); pass_turn(idx + c.clusters >= c.sched.total); }\n    wgmma_wait<0>();' if split else 'wgmma_wait<0>();\n    pass_turn(idx + c.clusters >= c.sched.total);')
    t = sub(t, '''    wgmma_wait<0>();
    retire(prev);
    finish();''', f'''    {last_wait}
    retire(prev);
    finish();''')
    t = sub(t, '    issue(true);  // the next tile\'s first block', '    take_turn();\n    issue(true);  // the next tile\'s first block')
    if split:
        t = sub(t, '''#pragma unroll
    for (int ks = 1; ks < 4; ++ks) Op::template mma<true>(acc, wgmma_desc_sw128(a + ks * 32), wgmma_desc_sw128(b + ks * 32));''',
'''    Op::template mma<true>(acc, wgmma_desc_sw128(a + 32), wgmma_desc_sw128(b + 32));
    if constexpr (!Op::WHOLE_K) wgmma_commit();
#pragma unroll
    for (int ks = 2; ks < 4; ++ks) Op::template mma<true>(acc, wgmma_desc_sw128(a + ks * 32), wgmma_desc_sw128(b + ks * 32));''')
    return t
for name, split in [('pp', False), ('pp2', True)]:
    inc = f'/tmp/exp/inc3/{name}'; d = f'{OUT}/fp8-{name}'
    os.makedirs(inc, exist_ok=True); os.makedirs(d, exist_ok=True)
    open(f'{inc}/fp8_gemm_wgmma2.cuh', 'w').write(variant(split))
    for family in ['fp8_gemm_wgmma2', 'int8_gemm_wgmma2']:
        ptx = f'{inc}/{family}.ptx'
        subprocess.run([NVCC, '-ptx', '-std=c++17', '-O3', '-lineinfo', '-arch=compute_90a', '-I', inc, '-I', f'{REPO}/kernels/include', '-I', f'{REPO}/kernels', f'{GEN}/{family}.cu', '-o', ptx], check=True)
        r = subprocess.run([NVCC, '-O3', '-arch=sm_90a', '-cubin', ptx, '-o', f'{d}/{family}.cubin', '-Xptxas', '-v'], check=True, capture_output=True, text=True)
        print(name, family, [l.strip() for l in r.stderr.split('\n') if 'registers' in l or 'C75' in l][:3])
