#!/usr/bin/env bash
# Session 6, run 9 (one H200): moe_combine_rows on a (chunk, token) grid and the sized
# moe_align_tiles block — FP8 / quant GEMM + MoE suites, model suite, and the MoE rows.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r9.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 150 wg2; t gpu_fp8_gemm 200 --skip wg2; t gpu_quant_gemm 250; t gpu_model 120; } > $L/tests.log 2>&1
DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_BENCH_TOKENS=1,16,64,128,4096 DSV3_BENCH_SHAPES=TP8,EP8 timeout 200 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1
tar -C $L -czf $OUT/logs.tar.gz .
cat $L/tests.log
grep -E "^moe " $L/fp8.log
