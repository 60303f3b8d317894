#!/usr/bin/env bash
# Session 6, run 2 (one H200): the vectorized group-128 quantizers, moe_combine_rows and
# moe_align_tiles — GPU tests (kernels, FP8 GEMM / MoE, quant GEMM / MoE), the MoE breakdown under
# ncu (TP-8 / EP-8, 4096 tokens), the M = 4096 / MoE bench rows (v2 and v2 pairs), and ncu of the
# v2 pair kernel (L2 traffic) on the long-K shape.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r2.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_kernels 200; t gpu_fp8_gemm 200 --skip wgmma --skip wg2; t gpu_fp8_gemm 150 wg2; t gpu_quant_gemm 250; } > $L/tests.log 2>&1
prof() { local n=$1 re=$2 skip=$3 cnt=$4 set=$5; shift 6
  timeout 200 $NCU --clock-control none --set $set -k "regex:$re" --launch-skip $skip -c $cnt -o $L/$n -f "$@" > $L/$n.run.log 2>&1
  $NCU -i $L/$n.ncu-rep --page raw --csv > $L/$n.raw.csv 2>&1
  [ $set = full ] && $NCU -i $L/$n.ncu-rep --page source --csv --print-source sass > $L/$n.sass.csv 2>&1
}
F8="$B/fp8_gemm-* --bench"
DSV3_FP8_BENCH_WGMMA=0 DSV3_BENCH_TOKENS=4096 DSV3_BENCH_SHAPES=TP8 prof moe_tp8 . 0 6 basic -- $F8
DSV3_FP8_BENCH_WGMMA=0 DSV3_BENCH_TOKENS=4096 DSV3_BENCH_SHAPES=EP8 prof moe_ep8 . 0 6 basic -- $F8
DSV3_FP8_BENCH_WGMMA=0 DSV3_BENCH_TOKENS=4096 DSV3_BENCH_SHAPES=7168x16384 prof pair_long pair 5 1 full -- $F8
DSV3_FP8_BENCH_WGMMA=0 DSV3_BENCH_TOKENS=4096 timeout 200 $F8 > $L/fp8.log 2>&1
DSV3_INT8_BENCH_WGMMA2=1 DSV3_BENCH_TOKENS=4096 timeout 200 $B/quant_gemm-* --bench > $L/quant.log 2>&1
tar -C $L -czf $OUT/logs.tar.gz .
cat $L/tests.log
grep -E "^(dense|moe)" $L/fp8.log
grep -E "^(i8blk|i8ch|moe-i8)" $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6}'
for n in moe_tp8 moe_ep8; do echo "--- $n"; python3 - $L/$n.raw.csv <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
for r in rows[2:]:
    d = dict(zip(rows[0], r)); print(d['Kernel Name'][:44], d['gpu__time_duration.sum'], d['launch__grid_size'])
PY
done
