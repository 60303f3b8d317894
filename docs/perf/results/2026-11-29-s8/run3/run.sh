#!/usr/bin/env bash
# Session 8, run 3 (one H200): wgs slots in their own buffer + the finish's loads in flight, AWQ
# zeros / scales by TMA, warp-parallel routing, chunked norm rows, unrolled embedding — every
# GEMM test (the wgs ones are named wg2_*), gpu_kernels, gpu_model, the decode rows, the 4-layer
# slice with its per-kernel step profile, one ncu profile of the AWQ entry.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r3.tar.xz  # the gpu-bundle executables (bin/, kinds/), xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 150; t gpu_quant_gemm 150; t gpu_kernels 150; timeout 60 $B/gpu_model-* --include-ignored --test-threads 1 --nocapture fused_norm 2>&1 | grep -E "fused norms|test result|panicked"; t gpu_model 100; } > $L/tests.log 2>&1
cat $L/tests.log
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=1,16,64 timeout 100 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1
DSV3_BENCH_TOKENS=1,16,64 timeout 120 $B/quant_gemm-* --bench > $L/quant.log 2>&1
grep -E "^(dense|moe) " $L/fp8.log
grep -E "^(i8blk|i8ch|awq|moe-i8-fused|moe-awq-fused) " $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
timeout 90 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
grep -E "^\| (1|32|256|4096) \|" $L/e2e.log
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
DSV3_PROFILE_STEP=1 timeout 80 $NCU --profile-from-start off --clock-control none --cache-control none --print-units base --metrics gpu__time_duration.sum --csv $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 1 --graphs eager --batch-sizes 1 --contexts 4096 --prefill-lens 16 > $L/step_b1.csv 2>&1
python3 - $L/step_b1.csv <<'PY' | tee $L/step_b1.md
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
start = next(i for i, r in enumerate(rows) if r and r[0] == 'ID')
h = rows[start]; k = h.index('Kernel Name'); v = h.index('Metric Value'); u = h.index('Metric Unit')
agg = collections.defaultdict(lambda: [0, 0.0]); tot = 0.0
for r in rows[start + 1:]:
    if len(r) <= v: continue
    try: x = float(r[v].replace(',', ''))
    except ValueError: continue
    us = x / 1e3 if r[u].startswith('n') else x
    name = r[k].split('(')[0].strip()[:60]
    agg[name][0] += 1; agg[name][1] += us; tot += us
print(f"{sys.argv[1]}: {sum(a[0] for a in agg.values())} kernels, {tot:.1f} us")
for name, (n, us) in sorted(agg.items(), key=lambda x: -x[1][1])[:30]:
    print(f"{us:9.1f} us {n:4d}x {name}")
PY
timeout 60 $NCU --clock-control none --set full -k regex:awq_gemm_wgs --launch-skip 5 -c 1 -o /tmp/awq -f env DSV3_BENCH_TOKENS=16 DSV3_BENCH_SHAPES=7168x16384 $B/quant_gemm-* --bench > $L/awq.run.log 2>&1
$NCU -i /tmp/awq.ncu-rep --page details > $L/awq.details.txt 2>&1
grep -E "Duration|DRAM Throughput|Issue Slots Busy|Registers Per" $L/awq.details.txt | head -5
rm -f $L/*.csv
tar -C $L -czf $OUT/logs.tar.gz .
