#!/usr/bin/env bash
# Session 8, run 1 (one H200): the wgs split-K hand-off with 16-byte reductions into tile-major
# workspaces, the AWQ producer's 4-block zero / scale lookahead, the shared TMA-GEMM CTA setup
# (v2, wgs, MLA wgmma, v1) — the GEMM / MLA / model suites, the decode rows, three profiles.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r1.tar.xz  # the gpu-bundle executables (bin/, kinds/), xz
B=/tmp/g/bin; L=$OUT/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 150 wg2; t gpu_quant_gemm 200 wg2; t gpu_fp8_gemm 150 --skip wgmma --skip wg2; t gpu_quant_gemm 200 --skip wg2; } > $L/tests.log 2>&1
cat $L/tests.log
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=1,16,64,128 timeout 120 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1
DSV3_BENCH_TOKENS=1,16,64 timeout 150 $B/quant_gemm-* --bench > $L/quant.log 2>&1
grep -E "^(dense|moe) " $L/fp8.log
grep -E "^(i8blk|i8ch|awq|moe-i8-fused|moe-awq-fused) " $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
prof() { local n=$1 re=$2; shift 2
  timeout 100 $NCU --clock-control none --set full -k regex:$re --launch-skip 5 -c 1 -o /tmp/$n -f "$@" > $L/$n.run.log 2>&1
  $NCU -i /tmp/$n.ncu-rep --page details > $L/$n.details.txt 2>&1
  $NCU -i /tmp/$n.ncu-rep --page source --csv --print-source sass > /tmp/$n.sass.csv 2>&1
  echo "=== $n"; grep -E "Duration|DRAM Throughput|Issue Slots Busy|Registers Per|Grid Size|L2 Hit|Compute \(SM\) Throughput" $L/$n.details.txt | head -8
  python3 - /tmp/$n.sass.csv <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
h = rows[1]; i_src = h.index('Source'); i_s = h.index('Warp Stall Sampling (All Samples)')
d = sorted(((int(r[i_s] or 0), r[i_src][:70]) for r in rows[2:] if len(r) > i_s), reverse=True)
tot = sum(x[0] for x in d) or 1
for c, src in d[:10]: print(f"{100*c/tot:5.1f}% {src}")
PY
}
{ DSV3_BENCH_TOKENS=64 DSV3_BENCH_SHAPES=2112x7168 prof fp8_wgs64_m64 fp8_gemm_wgs $B/fp8_gemm-* --bench
  DSV3_BENCH_TOKENS=16 DSV3_BENCH_SHAPES=7168x16384 prof awq_wgs16_m16 awq_gemm_wgs $B/quant_gemm-* --bench
  DSV3_BENCH_TOKENS=64 DSV3_BENCH_SHAPES=7168x16384 prof i8ch_wgs64_m64 int8_gemm_wgs_channel $B/quant_gemm-* --bench; } > $L/ncu.log 2>&1
cat $L/ncu.log
{ t gpu_model 150; t gpu_mla 200; } > $L/tests2.log 2>&1
cat $L/tests2.log
timeout 100 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
grep -E "^\| (1|32|256|4096) \||breakdown" $L/e2e.log
for b in 1 32; do
  DSV3_PROFILE_STEP=1 timeout 150 $NCU --profile-from-start off --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 1 --graphs eager --batch-sizes $b --contexts 4096 --prefill-lens 16 > $L/step_b$b.csv 2>&1
  python3 - $L/step_b$b.csv <<'PY' | tee $L/step_b$b.md
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
h = rows[0]; k = h.index('Kernel Name'); v = h.index('Metric Value')
agg = collections.defaultdict(lambda: [0, 0.0])
tot = 0.0
for r in rows[1:]:
    try: us = float(r[v].replace(',', '')) / 1e3
    except ValueError: continue
    name = r[k].split('(')[0]
    agg[name][0] += 1; agg[name][1] += us; tot += us
print(f"{sys.argv[1]}: {sum(a[0] for a in agg.values())} kernels, {tot:.1f} us")
for name, (n, us) in sorted(agg.items(), key=lambda x: -x[1][1])[:40]:
    print(f"{us:9.1f} us {n:4d}x {name}")
PY
done
