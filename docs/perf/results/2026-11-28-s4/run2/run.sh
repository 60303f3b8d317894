#!/usr/bin/env bash
# Two H200s: MLA wgmma + combine, INT8 v2, FP8 v2 pairs — tests and benches, split over the GPUs.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r2.tar.xz
B=/tmp/g/bin
F='^test |test result|panicked|error|rel |worst'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | head -60; }
(
  export CUDA_VISIBLE_DEVICES=0
  t gpu_mla 200
  t gpu_model 150
  timeout 200 $B/mla_decode-* --bench > $OUT/mla_bench.log 2>&1; echo "mla bench rc=$?"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  t gpu_fp8_gemm 60 wg2
  t gpu_quant_gemm 150 wg2
  t gpu_quant_gemm 150 --skip wg2
  DSV3_FP8_BENCH_WGMMA=0 timeout 80 $B/fp8_gemm-* --bench 2>&1 | grep -E "pairs|4096|copy" > $OUT/fp8_default.log
  DSV3_FP8_PAIR_CLUSTERS=66 DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 timeout 60 $B/fp8_gemm-* --bench 2>&1 | grep -E "pairs| 4096 " > $OUT/fp8_pair66.log
  timeout 150 $B/quant_gemm-* --bench > $OUT/quant_bench.log 2>&1; echo "quant bench rc=$?"
) > $OUT/gpu1.log 2>&1 &
wait
cat $OUT/gpu0.log; grep -E "^\|" $OUT/mla_bench.log | head -40
cat $OUT/gpu1.log; cat $OUT/fp8_default.log; echo "--- pair 66"; cat $OUT/fp8_pair66.log
grep -E "4096|copy|i8|moe" $OUT/quant_bench.log | head -50
