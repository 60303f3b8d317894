#!/usr/bin/env bash
# Session 9, run 1 (one H200): the kernel clean-up (wgs slot rule, AWQ single arrival, BgCta
# fields) under every GEMM test; the metadata block by batch; the MLA decode pair's floors
# (variants from /tmp/mla_variants.py through DSV3_KERNEL_OVERRIDE_DIR); GEMM rows; the slice.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r1.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 150; t gpu_quant_gemm 150; } > $L/tests.log 2>&1
cat $L/tests.log
export DSV3_MLA_BENCH_SHAPES=1x16x4096x1,8x16x4096x1,32x16x4096x1,64x16x4096x1,1x128x4096x1,8x128x4096x1
timeout 60 $B/mla_decode-* --bench > $L/mla-base.log 2>&1
for v in nocomb empty nosplit noload; do
  DSV3_KERNEL_OVERRIDE_DIR=$PWD/.devrun/mlav/$v timeout 60 $B/mla_decode-* --bench > $L/mla-$v.log 2>&1
done
for f in $L/mla-*.log; do echo "== $f"; grep -E "^B=|^  wgmma: " $f; done
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=1,16,64 timeout 100 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1
DSV3_BENCH_TOKENS=1,16,64 timeout 120 $B/quant_gemm-* --bench > $L/quant.log 2>&1
grep -E "^(dense|moe) " $L/fp8.log
grep -E "^(i8blk|i8ch|awq|moe-i8-fused|moe-awq-fused) " $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
timeout 60 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
grep -E "^\| (1|32|256|4096) \||breakdown" $L/e2e.log
tar -C $L -czf $OUT/logs.tar.gz .
