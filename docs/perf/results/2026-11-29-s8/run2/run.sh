#!/usr/bin/env bash
# Session 8, run 2 (one H200): the wgs split-K with plain stores into per-CTA slots (summed by the
# completing CTA) — GEMM suites, gpu_model, the decode rows, the 4-layer slice with a per-kernel
# profile of one decode step (B = 1, 32), one ncu profile.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r2.tar.xz  # the gpu-bundle executables (bin/, kinds/), xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 150 --skip wgmma --skip wg2; t gpu_quant_gemm 200 --skip wg2; timeout 150 $B/gpu_model-* --include-ignored --test-threads 1 --nocapture fused_norm 2>&1 | grep -E "fused norms|test result|panicked"; t gpu_model 150; } > $L/tests.log 2>&1
cat $L/tests.log
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=1,16,64,128 timeout 120 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1
DSV3_BENCH_TOKENS=1,16,64 timeout 150 $B/quant_gemm-* --bench > $L/quant.log 2>&1
grep -E "^(dense|moe) " $L/fp8.log
grep -E "^(i8blk|i8ch|i8ch-wgs|awq|moe-i8-fused|moe-awq-fused) " $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
timeout 100 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
grep -E "^\| (1|32|256|4096) \||breakdown" $L/e2e.log
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
for b in 1 32; do
  DSV3_PROFILE_STEP=1 timeout 120 $NCU --profile-from-start off --clock-control none --cache-control none --print-units base --metrics gpu__time_duration.sum --csv $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 1 --graphs eager --batch-sizes $b --contexts 4096 --prefill-lens 16 > $L/step_b$b.csv 2>&1
  python3 - $L/step_b$b.csv <<'PY' | tee $L/step_b$b.md
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
start = next(i for i, r in enumerate(rows) if r and r[0] == 'ID')
h = rows[start]; k = h.index('Kernel Name'); v = h.index('Metric Value'); u = h.index('Metric Unit')
agg = collections.defaultdict(lambda: [0, 0.0]); tot = 0.0
for r in rows[start + 1:]:
    if len(r) <= v: continue
    try: x = float(r[v].replace(',', ''))
    except ValueError: continue
    us = x / 1e3 if r[u].startswith('n') else x * 1e-3 if r[u].startswith('p') else x
    name = r[k].split('(')[0].strip()
    agg[name][0] += 1; agg[name][1] += us; tot += us
print(f"{sys.argv[1]}: {sum(a[0] for a in agg.values())} kernels, {tot:.1f} us")
for name, (n, us) in sorted(agg.items(), key=lambda x: -x[1][1])[:45]:
    print(f"{us:9.1f} us {n:4d}x {name}")
PY
done
prof() { local n=$1 re=$2; shift 2
  timeout 100 $NCU --clock-control none --set full -k regex:$re --launch-skip 5 -c 1 -o /tmp/$n -f "$@" > $L/$n.run.log 2>&1
  $NCU -i /tmp/$n.ncu-rep --page details > $L/$n.details.txt 2>&1
  echo "=== $n"; grep -E "Duration|DRAM Throughput|Issue Slots Busy|Registers Per|Grid Size|L2 Hit|Compute \(SM\) Throughput" $L/$n.details.txt | head -8; }
DSV3_BENCH_TOKENS=64 DSV3_BENCH_SHAPES=24576x1536 prof fp8_wgs64_m64 fp8_gemm_wgs $B/fp8_gemm-* --bench
rm -f $L/*.csv
tar -C $L -czf $OUT/logs.tar.gz .
