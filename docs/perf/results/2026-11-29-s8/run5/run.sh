#!/usr/bin/env bash
# Session 8, run 5 (one H200): the shortest stream-K range of the wgs entries (DSV3_WGS_MIN_RANGE
# 1 / 4 / 8) on the dense and MoE decode rows, and the wgs tests on range 8.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r5.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0
for r in 1 4 8; do
  DSV3_WGS_MIN_RANGE=$r DSV3_BENCH_TOKENS=16,64 timeout 80 $B/fp8_gemm-* --bench > $L/fp8_r$r.log 2>&1
  echo "=== min range $r"; grep -E "^(dense|moe) " $L/fp8_r$r.log
done
F='^test |test result|panicked|error'
for n in gpu_fp8_gemm gpu_quant_gemm; do echo "=== $n wgs, min range 8"; DSV3_WGS_MIN_RANGE=8 timeout 120 $B/$n-* --include-ignored --test-threads 1 wgs 2>&1 | grep -E "$F" | grep -v " ok$" | head; done
tar -C $L -czf $OUT/logs.tar.gz .
