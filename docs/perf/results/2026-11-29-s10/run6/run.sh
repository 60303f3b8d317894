#!/usr/bin/env bash
# Session 10, run 6 (one H200): the large-M and MoE-prefill rows of HEAD's plans next to cuBLASLt
# block-scaled FP8 and bf16 cuBLAS in the same session (benches/fp8_baselines.py), for the targets
# tables: dense M = 1 / 64 / 128 / 4096, MoE 1 / 64 / 128 / 4096 tokens, INT8 at M = 4096.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r6.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=1,64,128,4096 timeout 240 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1; echo "fp8 rc=$?"
grep -E "^(dense|moe) " $L/fp8.log
timeout 150 python3 benches/fp8_baselines.py > $L/baselines.log 2>&1; echo "baselines rc=$?"
cat $L/baselines.log | head -40
DSV3_BENCH_TOKENS=4096 timeout 150 $B/quant_gemm-* --bench > $L/quant.log 2>&1; echo "quant rc=$?"
grep -E "^(i8blk|i8ch|moe-i8)" $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
tar -C $L -czf $OUT/logs.tar.gz .
