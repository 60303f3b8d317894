#!/usr/bin/env bash
# Session 7, run 4 (one H200): gemm_wgs consumer without serialized wgmma (one partial set, no
# C75xx) and the AWQ small-M wgmma kernel (merged, first run) — their tests, the FP8 / INT8 / AWQ
# decode rows, the suites, the 4-layer slice.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r4.tar.xz  # the gpu-bundle executables (bin/, kinds/), xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 200 wg2_wgs; t gpu_quant_gemm 200 wgs; t gpu_quant_gemm 200 wg2_awq; } > $L/tests.log 2>&1
cat $L/tests.log
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=1,16,32,64,128 timeout 150 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1
DSV3_BENCH_TOKENS=1,16,64 timeout 200 $B/quant_gemm-* --bench > $L/quant.log 2>&1
grep -E "^(dense|moe)" $L/fp8.log | grep -v "dense-alt\|dense-mma\|moe-mma\|dense-st"
grep -E "^(i8blk|i8ch|awq|moe-i8|moe-awq)" $L/quant.log | grep -v -- "-mma\|-st " | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
{ t gpu_quant_gemm 250 awq --skip wg2; t gpu_model 150; t gpu_fp8_gemm 150 --skip wgmma --skip wg2; t gpu_quant_gemm 200 --skip wg2 --skip awq; t gpu_fp8_gemm 150 wg2; t gpu_quant_gemm 200 wg2; } > $L/tests2.log 2>&1
cat $L/tests2.log
timeout 100 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
tar -C $L -czf $OUT/logs.tar.gz .
grep -E "^\| (1|32|256|4096) \|" $L/e2e.log
