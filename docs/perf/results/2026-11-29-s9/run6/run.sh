#!/usr/bin/env bash
# Session 9, run 6 (one H200): the fused MLA combine (split kernel merges small batches' partials)
# and gemm_wgs's one-round finish by cp.async — every gpu_mla (each case with and without the
# fused combine), gpu_model, gpu_fp8_gemm and gpu_quant_gemm test; the MLA small-batch rows with
# the fused combine (default) and without (DSV3_MLA_FUSED_COMBINE=0); the GEMM rows; the slice.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r8.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_mla 300; t gpu_model 120; t gpu_fp8_gemm 150; t gpu_quant_gemm 150; } > $L/tests.log 2>&1
cat $L/tests.log
export DSV3_MLA_BENCH_SHAPES=1x16x4096x1,1x16x4096x2,8x16x4096x1,32x16x4096x1,64x16x4096x1,1x128x4096x1,1x128x4096x2,8x128x4096x1,32x128x4096x1,128x16x16384x1,128x128x16384x1
timeout 150 $B/mla_decode-* --bench > $L/mla-fused.log 2>&1
DSV3_MLA_FUSED_COMBINE=0 timeout 150 $B/mla_decode-* --bench > $L/mla-sep.log 2>&1
for f in fused sep; do echo "== $f"; grep -E "^B=|^  wgmma: " $L/mla-$f.log; done
unset DSV3_MLA_BENCH_SHAPES
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=1,16,64 timeout 100 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1
DSV3_BENCH_TOKENS=1,16,64 timeout 150 $B/quant_gemm-* --bench > $L/quant.log 2>&1
grep -E "^(dense|moe) " $L/fp8.log
grep -E "^(i8blk|i8ch|awq|moe-i8-fused|moe-awq-fused) " $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
timeout 90 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
grep -E "^\| (1|32|256|4096) \|" $L/e2e.log
tar -C $L -czf $OUT/logs.tar.gz .
