#!/usr/bin/env bash
# Two H200s: programmatic dependent launch (PDL) on every sm_90 launch — all GPU tests, and the
# small-batch MLA rows and the e2e slice with PDL on and off (DSV3_PDL=0).
export CARGO_MANIFEST_DIR=$PWD NCCL_NVLS_ENABLE=0
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r5.tar.xz
B=/tmp/g/bin
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -40; }
E="--offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096"
(
  export CUDA_VISIBLE_DEVICES=0
  t gpu_model 120; t gpu_engine 150; t gpu_mla 150; t gpu_kernels 150
  t gpu_fp8_gemm 150 --skip wgmma --skip wg2; t gpu_fp8_gemm 60 wg2; t gpu_quant_gemm 150
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  S=1x16x4096x1,1x16x4096x2,1x128x4096x1,8x16x4096x1,8x128x4096x1
  DSV3_MLA_BENCH_SHAPES=$S timeout 60 $B/mla_decode-* --bench > $OUT/mla_pdl.log 2>&1
  DSV3_PDL=0 DSV3_MLA_BENCH_SHAPES=$S timeout 60 $B/mla_decode-* --bench > $OUT/mla_nopdl.log 2>&1
  timeout 120 $B/bench_one_batch $E > $OUT/e2e_pdl.log 2>&1
  DSV3_PDL=0 timeout 120 $B/bench_one_batch $E > $OUT/e2e_nopdl.log 2>&1
) > $OUT/gpu1.log 2>&1 &
wait
( export CUDA_VISIBLE_DEVICES=0,1; t gpu_tp_fast 200; t gpu_tp 200; t gpu_allreduce 200 ) > $OUT/tp.log 2>&1
export CUDA_VISIBLE_DEVICES=0,1
timeout 100 $B/bench_one_batch $E --tp 2 > $OUT/tp2_pdl.log 2>&1
DSV3_PDL=0 timeout 100 $B/bench_one_batch $E --tp 2 > $OUT/tp2_nopdl.log 2>&1
cat $OUT/gpu0.log $OUT/gpu1.log $OUT/tp.log
for f in mla_pdl mla_nopdl; do echo "--- $f"; grep -E "^\| [18] \|" $OUT/$f.log | cut -d'|' -f2-7,20-21; done
for f in e2e_pdl e2e_nopdl tp2_pdl tp2_nopdl; do echo "--- $f"; grep -v breakdown $OUT/$f.log | grep "^|" | grep -v -- "---"; done
