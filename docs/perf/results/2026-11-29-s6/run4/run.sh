#!/usr/bin/env bash
# Session 6, run 4 (one H200): the v2 gate_up GEMM on pre-gathered sorted rows (FP8 and INT8 MoE)
# — GPU tests (FP8 / quant GEMM + MoE, model, engine); MoE rows (512 / 4096 tokens); INT8 MoE rows;
# the MoE EP-8 breakdown under ncu; the 4-layer V3 slice (decode and prefill).
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r4.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 150 wg2; t gpu_fp8_gemm 200 --skip wgmma --skip wg2; t gpu_quant_gemm 250; t gpu_model 200; t gpu_engine 200; } > $L/tests.log 2>&1
F8="$B/fp8_gemm-* --bench"
DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_BENCH_TOKENS=512,4096 DSV3_BENCH_SHAPES=TP8,EP8 timeout 200 $F8 > $L/fp8.log 2>&1
DSV3_INT8_BENCH_WGMMA2=0 DSV3_BENCH_TOKENS=4096 DSV3_BENCH_SHAPES=TP8,EP8 timeout 200 $B/quant_gemm-* --bench > $L/quant.log 2>&1
DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_BENCH_TOKENS=4096 DSV3_BENCH_SHAPES=EP8 timeout 200 $NCU --clock-control none --set basic -c 7 -o $L/moe_ep8 -f $F8 > $L/moe_ep8.run.log 2>&1
$NCU -i $L/moe_ep8.ncu-rep --page raw --csv > $L/moe_ep8.raw.csv 2>&1
timeout 150 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096,16384 > $L/e2e.log 2>&1; echo "e2e rc=$?" >> $L/tests.log
tar -C $L -czf $OUT/logs.tar.gz .
cat $L/tests.log
grep -E "^(moe)" $L/fp8.log
grep -E "^(moe-i8)" $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
python3 - $L/moe_ep8.raw.csv <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
for r in rows[2:]:
    d = dict(zip(rows[0], r)); print(d['Kernel Name'][:44], d['gpu__time_duration.sum'])
PY
tail -25 $L/e2e.log
