#!/usr/bin/env bash
# Session 10, run 4 (one H200): the 32-token wgs tile (forced plans) under the GEMM tests, and its
# rows next to the default plans: dense FP8 / INT8 at 32 and 64 rows, MoE at 16-512 tokens.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r4.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 240; t gpu_quant_gemm 240; } > $L/tests.log 2>&1
cat $L/tests.log
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=16,32,64,128,512 timeout 200 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1; echo "fp8 rc=$?"
grep -E "^(dense|moe)" $L/fp8.log | grep -E "^(dense |dense-wgs32|moe )|wgs"
DSV3_BENCH_TOKENS=32,64 DSV3_BENCH_SHAPES=2,3,4,7 timeout 150 $B/quant_gemm-* --bench > $L/quant.log 2>&1; echo "quant rc=$?"
grep -E "^(i8blk|i8ch)" $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
tar -C $L -czf $OUT/logs.tar.gz .
