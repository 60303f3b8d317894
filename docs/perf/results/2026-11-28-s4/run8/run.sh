#!/usr/bin/env bash
# One H200: INT8 v2 with whole-K s32 accumulation for channel scales — tests and the INT8 table.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r8.tar.xz
B=/tmp/g/bin
timeout 150 $B/gpu_quant_gemm-* --include-ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked" > $OUT/tests.log
DSV3_INT8_BENCH_WGMMA2=0 timeout 150 $B/quant_gemm-* --bench > $OUT/quant_bench.log 2>&1; echo "bench rc=$?"
grep -vE " ok$" $OUT/tests.log
grep -E " 4096 " $OUT/quant_bench.log | grep -E "i8ch|i8blk|moe-i8"
