#!/usr/bin/env bash
# Two H200s: the FP8 side of the shared v2 consumer after the INT8 whole-K change.
export CARGO_MANIFEST_DIR=$PWD NCCL_NVLS_ENABLE=0
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r9.tar.xz
B=/tmp/g/bin
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "^test |test result|panicked" | grep -v " ok$"; }
( export CUDA_VISIBLE_DEVICES=0; t gpu_fp8_gemm 60 wg2; t gpu_fp8_gemm 90 --skip wgmma --skip wg2 ) > $OUT/a.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1; t gpu_model 90 ) > $OUT/b.log 2>&1 &
wait
( export CUDA_VISIBLE_DEVICES=0,1; t gpu_tp_fast 120 ) > $OUT/c.log 2>&1
cat $OUT/a.log $OUT/b.log $OUT/c.log
