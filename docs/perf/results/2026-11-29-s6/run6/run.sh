#!/usr/bin/env bash
# Session 6, run 6 (one H200): after the review mends (bg_cta tile prologue; fp8_gemm's generic
# e4m3fnuz and wgmma v1 SASS changed) — the FP8 / INT8 GEMM and kernel suites, and the M = 4096
# FP8 rows once more.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r6.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 150 wg2; t gpu_fp8_gemm 200 --skip wg2; t gpu_quant_gemm 250; t gpu_kernels 200; } > $L/tests.log 2>&1
DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_BENCH_TOKENS=4096 timeout 200 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1
tar -C $L -czf $OUT/logs.tar.gz .
cat $L/tests.log
grep -E "^(dense|moe)" $L/fp8.log
