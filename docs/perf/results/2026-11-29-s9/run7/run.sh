#!/usr/bin/env bash
# Session 9, run 7 (one H200): the fused MLA combine with its u32 counters (run 6 refused the i32
# tensor on every fused launch) — every gpu_mla (each case with and without the fused combine)
# and gpu_model test; the MLA small-batch rows fused (default) / separate
# (DSV3_MLA_FUSED_COMBINE=0); the slice both ways.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r9.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error|Error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_mla 300; t gpu_model 120; } > $L/tests.log 2>&1
cat $L/tests.log
export DSV3_MLA_BENCH_SHAPES=1x16x4096x1,1x16x4096x2,8x16x4096x1,8x16x4096x2,32x16x4096x1,64x16x4096x1,1x128x4096x1,1x128x4096x2,8x128x4096x1,32x128x4096x1,128x16x16384x1,128x128x16384x1
timeout 150 $B/mla_decode-* --bench > $L/mla-fused.log 2>&1
DSV3_MLA_FUSED_COMBINE=0 timeout 150 $B/mla_decode-* --bench > $L/mla-sep.log 2>&1
for f in fused sep; do echo "== $f"; grep -E "^B=|^  wgmma: |panicked|Error" $L/mla-$f.log; done
unset DSV3_MLA_BENCH_SHAPES
timeout 90 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
DSV3_MLA_FUSED_COMBINE=0 timeout 60 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32 --contexts 4096 --prefill-lens 4096 > $L/e2e-sep.log 2>&1; echo "e2e-sep rc=$?"
grep -E "^\| (1|32|256|4096) \|" $L/e2e.log $L/e2e-sep.log
tar -C $L -czf $OUT/logs.tar.gz .
