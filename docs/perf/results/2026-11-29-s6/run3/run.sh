#!/usr/bin/env bash
# Session 6, run 3 (one H200): the v2 GEMM's ordered issue + hardware e4m3 encode, merged HIP MFMA
# branches (host change for HIP MLA launches) — GPU tests; M = 4096 / MoE rows (FP8, INT8); MLA
# table rows; ncu of v2 on the long-K shape and the MoE breakdown.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r3.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 150 wg2; t gpu_quant_gemm 250; t gpu_fp8_gemm 200 --skip wgmma --skip wg2; t gpu_kernels 200; t gpu_mla 300; } > $L/tests.log 2>&1
prof() { local n=$1 re=$2 skip=$3 cnt=$4 set=$5; shift 6
  timeout 200 $NCU --clock-control none --set $set -k "regex:$re" --launch-skip $skip -c $cnt -o $L/$n -f "$@" > $L/$n.run.log 2>&1
  $NCU -i $L/$n.ncu-rep --page raw --csv > $L/$n.raw.csv 2>&1
  [ $set = full ] && $NCU -i $L/$n.ncu-rep --page source --csv --print-source sass > $L/$n.sass.csv 2>&1
}
F8="$B/fp8_gemm-* --bench"
DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_BENCH_TOKENS=4096 timeout 200 $F8 > $L/fp8.log 2>&1
DSV3_INT8_BENCH_WGMMA2=0 DSV3_BENCH_TOKENS=4096 timeout 200 $B/quant_gemm-* --bench > $L/quant.log 2>&1
DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_BENCH_TOKENS=4096 DSV3_BENCH_SHAPES=7168x16384 prof v2_long wgmma2 5 1 full -- $F8
DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_BENCH_TOKENS=4096 DSV3_BENCH_SHAPES=EP8 prof moe_ep8 . 0 6 basic -- $F8
DSV3_MLA_BENCH_SHAPES=128x16x16384x1,128x128x16384x1,1x16x4096x1,8x16x4096x1 timeout 120 $B/mla_decode-* --bench > $L/mla.log 2>&1
timeout 100 python3 benches/fp8_baselines.py > $L/baselines.log 2>&1
tar -C $L -czf $OUT/logs.tar.gz .
cat $L/tests.log
grep -E "^(dense|moe)" $L/fp8.log
grep -E "^(i8blk|i8ch|moe-i8)" $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6}'
grep -E "^\| (128|1|8) \|" $L/mla.log | cut -d'|' -f2-6,20-23
grep -E " 4096 " $L/baselines.log
python3 - $L <<'PY'
import csv, sys
L = sys.argv[1]
for n in ['v2_long', 'moe_ep8']:
    rows = list(csv.reader(open(f'{L}/{n}.raw.csv')))
    for r in rows[2:]:
        d = dict(zip(rows[0], r))
        print(n, d['Kernel Name'][:40], d['gpu__time_duration.sum'], d.get('sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active', ''), d.get('sm__cycles_elapsed.avg.per_second', ''))
PY
