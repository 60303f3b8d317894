#!/usr/bin/env bash
# Two H200s, final run of session 4: every GPU test touched by the session (INT8 / FP8 v2, MLA
# wgmma, model, engine, TP on two GPUs), the MLA table and a TP-2 slice.
export CARGO_MANIFEST_DIR=$PWD NCCL_NVLS_ENABLE=0
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r4.tar.xz
B=/tmp/g/bin
F='^test |test result|panicked|rel error|worst|agree|vs TP'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | head -70; }
(
  export CUDA_VISIBLE_DEVICES=0
  t gpu_quant_gemm 150 wg2
  t gpu_quant_gemm 150 --skip wg2
  t gpu_fp8_gemm 150 --skip wgmma --skip wg2
  t gpu_fp8_gemm 60 wgmma
  t gpu_fp8_gemm 60 wg2
  t gpu_kernels 150
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  t gpu_mla 150
  t gpu_model 120
  t gpu_engine 150
  timeout 150 $B/mla_decode-* --bench > $OUT/mla_bench.log 2>&1; echo "mla bench rc=$?"
) > $OUT/gpu1.log 2>&1 &
wait
( export CUDA_VISIBLE_DEVICES=0,1; t gpu_tp_fast 200; t gpu_tp 200 ) > $OUT/tp.log 2>&1
export CUDA_VISIBLE_DEVICES=0,1
timeout 100 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 8 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096 --tp 2 > $OUT/tp2_e2e.log 2>&1; echo "tp2 rc=$?" >> $OUT/tp.log
cat $OUT/gpu0.log $OUT/gpu1.log $OUT/tp.log
grep -E "^\| 128 \| 128|^\| 128 \| 64 \| 4096|^\| 128 \| 32 \| 4096 \| 2|^\| 1 \||^\| 8 \|" $OUT/mla_bench.log
grep -v breakdown $OUT/tp2_e2e.log | grep "^|"
