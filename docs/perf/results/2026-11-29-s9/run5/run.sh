#!/usr/bin/env bash
# Session 9, run 5 (one H200, final): the combine's P axis (8 parts in flight only where each
# group has 8+, else 1; whole rows 4) — every gpu_mla / gpu_model test, the MLA bench over the
# issue's whole table, the split kernel alone / two empty launches at the small batches (variants
# nocomb / empty of this source), the slice.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r6.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_mla 200; t gpu_model 120; } > $L/tests.log 2>&1
cat $L/tests.log
timeout 330 $B/mla_decode-* --bench > $L/mla.log 2>&1; echo "mla rc=$?"
grep -E "^B=|^  wgmma: |copy" $L/mla.log | grep -E "^B=(1|8|32|64) |^B=128 h=(16|128) s_k=(4096|16384)|copy" -A1 | grep -v "^--" | head -60
export DSV3_MLA_BENCH_SHAPES=1x16x4096x1,8x16x4096x1,32x16x4096x1,64x16x4096x1,1x128x4096x1,8x128x4096x1,32x128x4096x1,64x128x4096x1
for v in nocomb empty; do
  DSV3_KERNEL_OVERRIDE_DIR=$PWD/.devrun/mlav/$v timeout 100 $B/mla_decode-* --bench > $L/mla-$v.log 2>&1
  echo "== $v"; grep -E "^B=|^  wgmma: " $L/mla-$v.log
done
unset DSV3_MLA_BENCH_SHAPES
timeout 90 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
grep -E "^\| (1|32|256|4096) \|" $L/e2e.log
tar -C $L -czf $OUT/logs.tar.gz .
