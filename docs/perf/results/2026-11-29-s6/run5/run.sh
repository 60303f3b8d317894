#!/usr/bin/env bash
# Session 6, run 5 (one H200, run 4's executables): v2 single CTAs against v2 pairs (2-CTA
# clusters, B multicast), both with the ordered issue, FP8 and INT8 at M = 4096.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r4.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
for i in 1 2; do
  DSV3_FP8_BENCH_WGMMA=0 DSV3_BENCH_TOKENS=4096 DSV3_BENCH_SHAPES=2112,24576,32768,7168x16384,4096,7168x2048 timeout 200 $B/fp8_gemm-* --bench > $L/fp8-$i.log 2>&1
done
DSV3_BENCH_TOKENS=4096 DSV3_BENCH_SHAPES=2112,24576,32768,7168x16384,4096,7168x2048 timeout 200 $B/quant_gemm-* --bench > $L/quant.log 2>&1
tar -C $L -czf $OUT/logs.tar.gz .
for i in 1 2; do grep -E "^dense" $L/fp8-$i.log | awk -v i=$i '{print i, $1, $2, $5, $6}'; done
grep -E "^i8blk|^i8ch" $L/quant.log | grep -v mma | awk '{print $1, $2, $5, $6}'
