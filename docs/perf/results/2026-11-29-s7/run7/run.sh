#!/usr/bin/env bash
# Session 7, run 7 (one H200): the wgs producer with 4 blocks of scale loads in flight per writer
# (only writers load) — the FP8 / INT8 wgs tests and suites, the decode rows.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r7.tar.xz  # the gpu-bundle executables (bin/, kinds/), xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 150 wg2; t gpu_quant_gemm 200 wg2; } > $L/tests.log 2>&1
cat $L/tests.log
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=1,16,64 timeout 120 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1
DSV3_BENCH_TOKENS=1,16,64 DSV3_BENCH_SHAPES=2112x7168,24576x1536,32768x512,7168x16384,4096x7168,7168x2048 timeout 120 $B/quant_gemm-* --bench > $L/quant.log 2>&1
grep -E "^(dense|moe)" $L/fp8.log | grep -v "dense-alt\|dense-mma\|moe-mma\|dense-st"
grep -E "^(i8blk|i8ch) " $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
{ t gpu_fp8_gemm 150 --skip wgmma --skip wg2; t gpu_quant_gemm 200 --skip wg2; t gpu_model 150; } > $L/tests2.log 2>&1
cat $L/tests2.log
tar -C $L -czf $OUT/logs.tar.gz .
