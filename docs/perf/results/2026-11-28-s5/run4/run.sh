#!/usr/bin/env bash
# Session 5, run 4 (one H200): the cp.async weight ring for every streaming tile (FP8 / INT8 / AWQ)
# and the one-partial-set v2 consumer — GPU tests; FP8 and quant GEMM tables; the e2e slice.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r4.tar.xz
B=/tmp/g/bin; L=/tmp/logs4; mkdir -p $L
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{
  t gpu_fp8_gemm 200 --skip wgmma --skip wg2; t gpu_fp8_gemm 60 wg2; t gpu_quant_gemm 200; t gpu_model 150; t gpu_engine 150; t gpu_kernels 150
} > $L/tests.log 2>&1
DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 timeout 150 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1; echo "fp8 bench rc=$?" >> $L/tests.log
DSV3_INT8_BENCH_WGMMA2=0 timeout 150 $B/quant_gemm-* --bench > $L/quant.log 2>&1; echo "quant bench rc=$?" >> $L/tests.log
timeout 150 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?" >> $L/tests.log
tar -C $L -czf $OUT/logs.tar.gz .
cat $L/tests.log
grep -E "^(dense|moe|moe-st|moe-mma) " $L/fp8.log | awk '$3 != 4096 && $4 != 4096 {print $1, $2, $3, $4, $5, $NF}' | head -80
grep -E "^(awq|moe-awq)" $L/quant.log | awk '$3 <= 64 {print $1, $2, $3, $4, $5, $NF}' | head -40
tail -15 $L/e2e.log
