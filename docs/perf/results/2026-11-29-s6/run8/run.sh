#!/usr/bin/env bash
# Session 6, run 8 (one H200): decode rows (dense M = 1..128, MoE 1..128 tokens) with this
# session's kernels, and the per-launch breakdown of one MoE decode call (TP-8 1 token, EP-8 16).
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r8.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
F8="$B/fp8_gemm-* --bench"
DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_BENCH_TOKENS=1,16,64,128 timeout 200 $F8 > $L/fp8.log 2>&1
for c in "TP8 1" "EP8 16"; do set -- $c
  DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_BENCH_TOKENS=$2 DSV3_BENCH_SHAPES=$1 timeout 120 $NCU --clock-control none --set basic -c 8 -o $L/moe_$1_$2 -f $F8 > $L/moe_$1_$2.run.log 2>&1
  $NCU -i $L/moe_$1_$2.ncu-rep --page raw --csv > $L/moe_$1_$2.raw.csv 2>&1
done
tar -C $L -czf $OUT/logs.tar.gz .
grep -E "^(dense|moe)" $L/fp8.log
for c in TP8_1 EP8_16; do echo "--- $c"; python3 - $L/moe_$c.raw.csv <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
for r in rows[2:]:
    d = dict(zip(rows[0], r)); print(d['Kernel Name'][:40], d['gpu__time_duration.sum'], d['launch__grid_size'], d['launch__block_size'])
PY
done
