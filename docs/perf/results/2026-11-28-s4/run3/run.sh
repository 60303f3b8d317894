#!/usr/bin/env bash
# Two H200s: v2 pairs after the arrive fix (FP8, INT8), INT8 grouped failure message, model tests,
# the e2e slice (prefill on pairs).
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r3.tar.xz
B=/tmp/g/bin
F='^test |test result|panicked|rel |worst|Error|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | head -60; }
(
  export CUDA_VISIBLE_DEVICES=0
  echo "=== int8 grouped (full)"; timeout 100 $B/gpu_quant_gemm-* --include-ignored --test-threads 1 wg2_int8_grouped_cases 2>&1 | tail -25
  t gpu_quant_gemm 120 wg2
  t gpu_fp8_gemm 60 wg2
  t gpu_model 120
  timeout 200 $B/quant_gemm-* --bench > $OUT/quant_bench.log 2>&1; echo "quant bench rc=$?"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  DSV3_FP8_BENCH_WGMMA=0 timeout 90 $B/fp8_gemm-* --bench 2>&1 | grep -E "pairs| 128 | 4096 |copy" > $OUT/fp8.log
  timeout 200 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096,16384 --output-file $OUT/e2e.jsonl > $OUT/e2e.log 2>&1; echo "e2e rc=$?"
) > $OUT/gpu1.log 2>&1 &
wait
cat $OUT/gpu0.log; cat $OUT/gpu1.log; cat $OUT/fp8.log
grep -E " 4096 |copy|moe" $OUT/quant_bench.log | head -40
grep -v breakdown $OUT/e2e.log | grep "^|"
