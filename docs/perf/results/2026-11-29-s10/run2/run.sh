#!/usr/bin/env bash
# Session 10, run 2 (one H200): the 65-128-row rule (FP8 / block INT8 on the 64-token wgs tile
# where v2 leaves SMs idle and K >= 4096) under every GEMM and model test; the dense rows at
# M = 1 / 16 / 64 / 128 on the default plans; the split-K hand-off's cost (variants nohandoff /
# nofinish of kernels/gemm_wgs.cuh through DSV3_KERNEL_OVERRIDE_DIR); the slice at B = 128.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r2.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 200; t gpu_quant_gemm 200; t gpu_model 150; } > $L/tests.log 2>&1
cat $L/tests.log
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=1,16,64,128 DSV3_BENCH_SHAPES=2,4,7,3 timeout 150 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1; echo "fp8 rc=$?"
grep -E "^dense " $L/fp8.log
export DSV3_BENCH_SHAPES=2112x7168,4096x7168,7168x16384,7168x2048,24576x1536 DSV3_BENCH_TOKENS=1,16,64
for v in nohandoff nofinish; do
  DSV3_KERNEL_OVERRIDE_DIR=$PWD/.devrun/wgsv/$v timeout 100 $B/fp8_gemm-* --bench > $L/fp8-$v.log 2>&1
  echo "== $v"; grep -E "^dense " $L/fp8-$v.log
done
unset DSV3_BENCH_SHAPES DSV3_BENCH_TOKENS
DSV3_BENCH_TOKENS=128 timeout 100 $B/quant_gemm-* --bench > $L/quant.log 2>&1; echo "quant rc=$?"
grep -E "^(i8blk|i8ch) " $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
timeout 120 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,128,256 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
grep -E "^\| (1|32|128|256|4096) \|" $L/e2e.log
tar -C $L -czf $OUT/logs.tar.gz .
