#!/usr/bin/env bash
# Session 10, run 5 (one H200, final): HEAD's plans — the 32-token wgs tile by default at 17-32
# rows (FP8 / INT8) and for FP8 MoE at 9-16 rows per expert, the two 64-token M tiles at 65-128
# rows — under every GEMM and model test; the dense and MoE rows; the slice.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r5.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 240; t gpu_quant_gemm 240; t gpu_model 150; } > $L/tests.log 2>&1
cat $L/tests.log
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=1,16,32,64,128,512 timeout 240 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1; echo "fp8 rc=$?"
grep -E "^(dense|moe) " $L/fp8.log
DSV3_BENCH_TOKENS=1,16,32,64 timeout 200 $B/quant_gemm-* --bench > $L/quant.log 2>&1; echo "quant rc=$?"
grep -E "^(i8blk|i8ch|awq|moe-i8-fused|moe-awq-fused) " $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
timeout 120 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,128,256 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
grep -E "^\| (1|32|128|256|4096) \|" $L/e2e.log
tar -C $L -czf $OUT/logs.tar.gz .
