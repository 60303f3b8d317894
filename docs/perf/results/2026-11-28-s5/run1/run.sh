#!/usr/bin/env bash
# Session 5, run 1 (one H200): variant timings through DSV3_KERNEL_OVERRIDE_DIR.
# FP8 / INT8 v2: base, no promotion, DeepGEMM-style wait-per-block, FFMA yield-bit patches.
# MLA wgmma: base, softmax without exp, no PV MMAs, no S MMAs.
export CARGO_MANIFEST_DIR=$PWD NCCL_NVLS_ENABLE=0
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r1.tar.xz
B=/tmp/g/bin; E=$PWD/.devrun/exp
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader > $OUT/gpu.txt
for v in base nopromo wait0 base-yalt base-yall wait0-yalt; do
  DSV3_KERNEL_OVERRIDE_DIR=$E/fp8-$v DSV3_BENCH_TOKENS=4096 DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 \
    timeout 60 $B/fp8_gemm-* --bench > $OUT/fp8-$v.log 2>&1; echo "fp8 $v rc=$?"
  grep -E "^(dense|moe) " $OUT/fp8-$v.log | awk -v v=$v '{print v, $0}'
done
for v in base nosoft nopv nos; do
  DSV3_KERNEL_OVERRIDE_DIR=$E/mla-$v DSV3_MLA_BENCH_SHAPES=128x128x4096x1,128x128x16384x1,128x32x16384x1,128x16x16384x2 \
    timeout 60 $B/mla_decode-* --bench > $OUT/mla-$v.log 2>&1; echo "mla $v rc=$?"
done
for v in base base-yalt wait0 wait0-yalt; do
  DSV3_KERNEL_OVERRIDE_DIR=$E/fp8-$v DSV3_BENCH_TOKENS=4096 DSV3_INT8_BENCH_WGMMA2=0 \
    timeout 70 $B/quant_gemm-* --bench > $OUT/int8-$v.log 2>&1; echo "int8 $v rc=$?"
  grep -E "^(i8blk|i8ch|moe-i8) " $OUT/int8-$v.log | awk -v v=$v '{print v, $0}'
done
