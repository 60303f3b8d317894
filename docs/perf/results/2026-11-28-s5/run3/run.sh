#!/usr/bin/env bash
# Session 5, run 3 (one H200): consumer warpgroups taking turns on the tensor cores (variants pp,
# pp2 through DSV3_KERNEL_OVERRIDE_DIR) — the wg2 tests under each, FP8 / INT8 M = 4096 rows.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r2.tar.xz
B=/tmp/g/bin; E=$PWD/.devrun/exp3; L=/tmp/logs3; mkdir -p $L
F='^test |test result|panicked'
for v in pp pp2; do
  export DSV3_KERNEL_OVERRIDE_DIR=$E/fp8-$v
  echo "=== $v tests"
  timeout 60 $B/gpu_fp8_gemm-* --include-ignored --test-threads 1 wg2 2>&1 | grep -E "$F" | grep -v " ok$"
  timeout 90 $B/gpu_quant_gemm-* --include-ignored --test-threads 1 wg2 2>&1 | grep -E "$F" | grep -v " ok$"
  unset DSV3_KERNEL_OVERRIDE_DIR
done > $L/tests.log 2>&1
for v in built pp pp2; do
  o=""; [ $v != built ] && o=$E/fp8-$v
  DSV3_KERNEL_OVERRIDE_DIR=$o DSV3_BENCH_TOKENS=4096 DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 timeout 60 $B/fp8_gemm-* --bench > $L/fp8-$v.log 2>&1
  DSV3_KERNEL_OVERRIDE_DIR=$o DSV3_BENCH_TOKENS=4096 DSV3_INT8_BENCH_WGMMA2=0 timeout 80 $B/quant_gemm-* --bench > $L/int8-$v.log 2>&1
done
tar -C $L -czf $OUT/logs.tar.gz .
cat $L/tests.log
for v in built pp pp2; do grep -E "^(dense|moe) " $L/fp8-$v.log | awk -v v=$v '{print v, $1, $2, $3, $4, $6, $7}'; grep -E "^(i8blk|moe-i8) " $L/int8-$v.log | awk -v v=$v '{print v, $1, $2, $3, $4, $6, $7}'; done
