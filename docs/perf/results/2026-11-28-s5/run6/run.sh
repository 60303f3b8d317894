#!/usr/bin/env bash
# Session 5, run 6 (one H200): the final review commits (gpu_kernels, gpu_model) and the FP8 v2
# consumer in N halves (variant fp8-halves through DSV3_KERNEL_OVERRIDE_DIR): wg2 tests, M = 4096.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r6.tar.xz
B=/tmp/g/bin; E=$PWD/.devrun/exp6; L=/tmp/logs6; mkdir -p $L
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_kernels 200; t gpu_model 150; t gpu_fp8_gemm 60 wg2
  echo "--- halves"; DSV3_KERNEL_OVERRIDE_DIR=$E/fp8-halves t gpu_fp8_gemm 60 wg2; } > $L/tests.log 2>&1
cat $L/tests.log
for v in built halves; do
  o=""; [ $v != built ] && o=$E/fp8-$v
  DSV3_KERNEL_OVERRIDE_DIR=$o DSV3_BENCH_TOKENS=4096 DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 timeout 60 $B/fp8_gemm-* --bench > $L/fp8-$v.log 2>&1
  grep -E "^(dense|moe) " $L/fp8-$v.log | awk -v v=$v '{print v, $1, $2, $3, $4, $5, $6, $7}'
done
tar -C $L -czf $OUT/logs.tar.gz .
